"""Log-likelihoods of the random-intercept model, two ways.

Dense (for teaching and as a cross-check): build the n x n covariance
``Sigma = sigma_s^2 K K^T + sigma^2 I`` and use ``slogdet`` and ``solve``. O(n^3) time, O(n^2) memory.

Grouped (what :func:`lmm_helpers.fit_lmm` uses): each group's block of Sigma is
``sigma^2 (I + theta 1 1^T)`` with ``theta = sigma_s^2 / sigma^2``, whose inverse and determinant are known in
closed form, so the likelihood needs only per-group means and the within-group cross-products of ``[X, y]``:
one O(n) pass over the data, then O(G p^2) per evaluation. Pooling the groups of equal size
(:func:`pool_by_size`) cuts an evaluation to O(U p^2), U the number of distinct group sizes, which is what
the optimiser in :func:`lmm_helpers.fit_lmm` uses (:func:`profiled_criterion`).

Both use lme4's conventions: ML deviance ``-2 log L``; REML criterion
``(n-p) log 2 pi + log|Sigma| + log|X^T Sigma^-1 X| + r^T Sigma^-1 r``.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

__all__ = [
    "covariance_matrix",
    "gls_beta",
    "one_blas_thread",
    "loglik_dense",
    "profiled_loglik_dense",
    "GroupSums",
    "group_sums",
    "Centring",
    "centre_sums",
    "profiled_deviance",
    "ProfiledPoint",
    "SizePooledSums",
    "pool_by_size",
    "profiled_criterion",
]

LOG2PI = float(np.log(2.0 * np.pi))


def _check_method(method: str) -> str:
    if method not in ("ML", "REML"):
        raise ValueError(f"method must be 'ML' or 'REML', got {method!r}")
    return method


# --------------------------------------------------------------------------------------------- dense route
@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the enclosed NumPy linear algebra on one BLAS thread; the previous setting comes back on exit.

    The dense route makes many LAPACK calls on matrices of a few hundred rows. OpenBLAS splits each call over all
    cores, which gains nothing at that size, and on a machine whose cores are busy every call then waits for a
    core to come free: sleepstudy's 180 x 180 fit by ML took 30-64 s with the default threads on two busy cores
    against 0.3 s on one. Wrap such loops (as :func:`lmm_helpers.fit_lmm_dense` does) in ``with one_blas_thread():``.
    """
    from threadpoolctl import threadpool_limits  # imported here: no work at import time

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def covariance_matrix(K: np.ndarray, sigma: float, sigma_s: float) -> np.ndarray:
    """Return ``Sigma = sigma_s^2 K K^T + sigma^2 I``, the n x n covariance of y.

    Parameters
    ----------
    K : array, shape (n, G)
        Group indicator matrix (:func:`lmm_helpers.design.indicator_matrix`).
    sigma, sigma_s : float
        Residual and random-intercept standard deviations (only their squares enter, so an optimiser that
        wanders to a negative value gets the same Sigma as at its absolute value).

    Returns
    -------
    ndarray, shape (n, n)
    """
    K = np.asarray(K, dtype=float)
    if K.ndim != 2:
        raise ValueError(f"K must be 2-D (n rows by G groups), got shape {K.shape}")
    return sigma_s**2 * (K @ K.T) + sigma**2 * np.eye(K.shape[0])


def gls_beta(y: np.ndarray, X: np.ndarray, Sigma: np.ndarray) -> np.ndarray:
    """Generalised least squares ``(X^T Sigma^-1 X)^-1 X^T Sigma^-1 y`` via a Cholesky factor of Sigma.

    With ``Sigma = L L^T`` the problem becomes ordinary least squares of ``L^-1 y`` on ``L^-1 X``, solved by
    ``lstsq`` (an orthogonal factorisation, not the normal equations).

    Parameters
    ----------
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
    Sigma : ndarray, shape (n, n)
        Symmetric positive definite covariance of y.

    Returns
    -------
    ndarray, shape (p,)
    """
    L = np.linalg.cholesky(Sigma)
    Xw = np.linalg.solve(L, X)
    yw = np.linalg.solve(L, y)
    return np.linalg.lstsq(Xw, yw, rcond=None)[0]


def loglik_dense(y, X, K, beta, sigma: float, sigma_s: float, method: str = "ML") -> float:
    """Log-likelihood (ML) or restricted log-likelihood (REML) at given parameters, from the dense Sigma.

    Parameters
    ----------
    y : array, shape (n,)
    X : array, shape (n, p)
    K : array, shape (n, G)
        Group indicator matrix.
    beta : array, shape (p,) or None
        Fixed effects, for ML. The restricted likelihood does not depend on beta (it is the likelihood of error
        contrasts, with beta integrated out), so for REML ``beta`` is ignored and the formula's ``y - X beta``
        is taken at the GLS estimate for these variances, as lme4 does.
    sigma, sigma_s : float
        Residual and random-intercept standard deviations.
    method : {"ML", "REML"}

    Returns
    -------
    float
        ``-1/2 (n log 2pi + log|Sigma| + r^T Sigma^-1 r)`` (ML) or
        ``-1/2 ((n-p) log 2pi + log|Sigma| + log|X^T Sigma^-1 X| + r^T Sigma^-1 r)`` (REML), ``r = y - X beta``.
    """
    _check_method(method)
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    Sigma = covariance_matrix(K, sigma, sigma_s)
    if method == "REML":
        beta = gls_beta(y, X, Sigma)
    elif beta is None:
        raise ValueError("beta: the ML log-likelihood needs the fixed effects (only REML integrates them out)")
    r = y - X @ np.asarray(beta, dtype=float)
    _, logdet = np.linalg.slogdet(Sigma)
    quad = float(r @ np.linalg.solve(Sigma, r))
    n, p = X.shape
    if method == "ML":
        return -0.5 * (n * LOG2PI + logdet + quad)
    _, logdet_x = np.linalg.slogdet(X.T @ np.linalg.solve(Sigma, X))
    return -0.5 * ((n - p) * LOG2PI + logdet + logdet_x + quad)


def profiled_loglik_dense(y, X, K, sigma: float, sigma_s: float, method: str = "ML") -> tuple[float, np.ndarray]:
    """Log-likelihood (ML) or restricted log-likelihood (REML) with beta at its GLS value for the given variances.

    Parameters
    ----------
    y : array, shape (n,)
    X : array, shape (n, p)
    K : array, shape (n, G)
        Group indicator matrix.
    sigma, sigma_s : float
        Residual and random-intercept standard deviations.
    method : {"ML", "REML"}

    Returns
    -------
    (loglik, beta)
        The log-likelihood maximised over beta for these variances (ML), or the REML criterion, and the GLS beta.
    """
    Sigma = covariance_matrix(K, sigma, sigma_s)
    beta = gls_beta(np.asarray(y, float), np.asarray(X, float), Sigma)
    return loglik_dense(y, X, K, beta, sigma, sigma_s, method), beta


# ------------------------------------------------------------------------------------------- grouped route
@dataclass(frozen=True)
class GroupSums:
    """Everything the random-intercept likelihood needs from the data, gathered in one O(n) pass.

    Attributes
    ----------
    counts : ndarray, shape (G,)
        Rows per group, n_g.
    means : ndarray, shape (G, p+1)
        Per-group means of the columns of ``[X, y]``.
    within : ndarray, shape (p+1, p+1)
        Within-group cross-products ``sum_g (Z_g - 1 zbar_g^T)^T (Z_g - 1 zbar_g^T)`` of ``Z = [X, y]``.
    """

    counts: np.ndarray
    means: np.ndarray
    within: np.ndarray

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def p(self) -> int:
        return self.within.shape[0] - 1

    @property
    def n_groups(self) -> int:
        return len(self.counts)


def group_sums(y: np.ndarray, X: np.ndarray, codes: np.ndarray, n_groups: int) -> GroupSums:
    """One pass over the data: group sizes, group means and centred within-group cross-products.

    Centring each group on its own mean before taking cross-products keeps the within part free of the
    cancellation that ``X^T X - sum_g n_g xbar_g xbar_g^T`` would suffer.

    Parameters
    ----------
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
    codes : ndarray of int, shape (n,)
        Group index of each row, ``0 .. n_groups-1``, every group present (as from
        :func:`lmm_helpers.design.group_codes`).
    n_groups : int

    Returns
    -------
    GroupSums
    """
    n, p = X.shape
    Z = np.empty((n, p + 1), order="F")
    Z[:, :p] = X
    Z[:, p] = y
    counts = np.bincount(codes, minlength=n_groups).astype(float)
    means = np.empty((n_groups, p + 1))
    for j in range(p + 1):
        col = Z[:, j]
        means[:, j] = np.bincount(codes, weights=col, minlength=n_groups) / counts
        col -= means[codes, j]
    within = Z.T @ Z
    return GroupSums(counts=counts, means=means, within=within)


@dataclass(frozen=True)
class Centring:
    """How :func:`centre_sums` moved the data to their grand means, and how to move beta back.

    ``beta = T beta_c + offset`` and ``Var(beta) = T Var(beta_c) T^T``, with ``beta_c`` fitted to the centred data.
    ``shift`` is what was subtracted from each column of ``[X, y]``; ``intercept`` the index of X's constant
    column (None when X has none: then nothing moved, ``T = I``).
    """

    T: np.ndarray
    offset: np.ndarray
    shift: np.ndarray
    intercept: int | None


def centre_sums(sums: GroupSums) -> tuple[GroupSums, Centring]:
    """Move ``y`` and every non-constant column of X to its grand mean, when X has a constant (intercept) column.

    With an intercept column k of value a, ``X_c = X - 1 c^T`` (``c_k = 0``) equals ``X T`` with
    ``T = I - e_k c^T / a`` and ``det T = 1``: the column space of X, the residuals, the likelihood and the REML
    term ``log|X^T V^-1 X|`` are all unchanged. What changes is the arithmetic: cross-products of data far from
    0 (y near 10^6, a covariate such as a calendar year) lose their leading digits to cancellation when beta and
    the residual sum of squares are formed from them; centred, they do not. Columns whose mean is under ten
    times their SD lose at most two digits and are left alone. The within-group cross-products are
    unchanged (each group is already centred on its own mean); only the group means move, in O(G p).
    """
    counts, means = sums.counts, sums.means
    n, p = sums.n, sums.p
    grand = (counts @ means) / n
    tol = 16.0 * np.finfo(float).eps
    k = None
    for j in range(p):
        a = float(grand[j])
        if a != 0.0 and sums.within[j, j] <= n * (tol * a) ** 2 and np.all(np.abs(means[:, j] - a) <= tol * abs(a)):
            k = j
            break
    # Only a column whose mean exceeds ten times its SD is moved: below that the cancellation costs under two
    # digits of the sixteen, and leaving such data alone keeps their results bit for bit as before.
    spread = np.diag(sums.within) + counts @ (means - grand) ** 2  # n times each column's variance
    far = grand**2 > 100.0 * spread / n
    if k is None or not np.any(far):
        return sums, Centring(T=np.eye(p), offset=np.zeros(p), shift=np.zeros(p + 1), intercept=None)
    shift = np.where(far, grand, 0.0)
    shift[k] = 0.0
    a = float(grand[k])
    T = np.eye(p)
    T[k, :] -= shift[:p] / a
    offset = np.zeros(p)
    offset[k] = shift[p] / a
    centred = GroupSums(counts=counts, means=means - shift, within=sums.within)
    return centred, Centring(T=T, offset=offset, shift=shift, intercept=k)


@dataclass(frozen=True)
class ProfiledPoint:
    """The profiled criterion and its by-products at one value of ``theta = sigma_s^2 / sigma^2``.

    ``deviance`` is ``-2 log L`` (ML) or the REML criterion with beta and sigma^2 profiled out;
    ``grad`` its derivative in theta; ``A`` is ``X^T V^-1 X`` with ``V = Sigma / sigma^2``;
    ``r`` the profiled quadratic form, ``resid_means`` the group means of ``y - X beta``.
    """

    theta: float
    deviance: float
    grad: float
    beta: np.ndarray
    sigma2: float
    r: float
    A: np.ndarray
    d: np.ndarray
    resid_means: np.ndarray


def _gls_from_cross(M: np.ndarray, n: int, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
    """GLS from the cross-products ``M = [X y]^T V^-1 [X y]``: ``(A, chol(A), beta, r, m)``.

    ``A = X^T V^-1 X``, ``beta = A^-1 X^T V^-1 y``, ``r = y^T V^-1 y - b^T beta`` the generalised residual sum of
    squares, and ``m`` its divisor for ``sigma^2`` (n for ML, n - p for REML).
    """
    p = M.shape[0] - 1
    A, b, yy = M[:p, :p], M[:p, p], M[p, p]
    L = np.linalg.cholesky(A)
    beta = np.linalg.solve(L.T, np.linalg.solve(L, b))
    r = float(yy - b @ beta)
    if not r > 0:
        raise ValueError("y is fitted exactly by X: the residual variance is zero")
    return A, L, beta, r, (n if method == "ML" else n - p)


def profiled_deviance(theta: float, sums: GroupSums, method: str = "ML") -> ProfiledPoint:
    """Profiled deviance at ``theta = sigma_s^2 / sigma^2`` and its derivative, in O(G p^2).

    With ``d_g = n_g / (1 + n_g theta)`` the GLS cross-products are
    ``[X y]^T V^-1 [X y] = within + sum_g d_g zbar_g zbar_g^T``; ``log|V| = sum_g log(1 + n_g theta)``.

    Parameters
    ----------
    theta : float
        ``sigma_s^2 / sigma^2``, >= 0.
    sums : GroupSums
    method : {"ML", "REML"}

    Returns
    -------
    ProfiledPoint
    """
    _check_method(method)
    if not theta >= 0:
        raise ValueError(f"theta must be >= 0, got {theta}")
    counts, means = sums.counts, sums.means
    n, p = sums.n, sums.p
    d = counts / (1.0 + counts * theta)
    M = sums.within + (means.T * d) @ means
    A, L, beta, r, m = _gls_from_cross(M, n, method)
    logdet_v = float(np.sum(np.log1p(counts * theta)))
    deviance = m * (1.0 + np.log(2.0 * np.pi * r / m)) + logdet_v
    e = means[:, p] - means[:, :p] @ beta  # group means of the residuals
    grad = float(np.sum(d) - m * np.sum(d**2 * e**2) / r)
    if method == "REML":
        deviance += 2.0 * float(np.sum(np.log(np.diag(L))))
        xa = np.linalg.solve(L, means[:, :p].T)  # L^-1 xbar_g, shape (p, G)
        grad -= float(np.sum(d**2 * np.sum(xa**2, axis=0)))
    return ProfiledPoint(theta=float(theta), deviance=float(deviance), grad=grad, beta=beta, sigma2=r / m,
                         r=r, A=A, d=d, resid_means=e)


# ------------------------------------------------------------------------- pooled by group size (for speed)
@dataclass(frozen=True)
class SizePooledSums:
    """The grouped sums pooled over groups of equal size: what the profiled criterion needs, in O(U p^2).

    Since ``d_g`` depends on a group only through its size, ``sum_g d_g zbar_g zbar_g^T = sum_u d(u) S_u`` with
    ``S_u`` the sum of ``zbar_g zbar_g^T`` over the groups of size u. U (distinct sizes) is at most
    ``sqrt(2 n)`` and usually a few dozen, however many groups there are.

    Attributes
    ----------
    sizes : ndarray (U,)
        The distinct group sizes.
    mult : ndarray (U,)
        How many groups have each size.
    outer : ndarray (U, p+1, p+1)
        ``S_u``.
    within : ndarray (p+1, p+1)
        As in :class:`GroupSums`.
    """

    sizes: np.ndarray
    mult: np.ndarray
    outer: np.ndarray
    within: np.ndarray

    @property
    def n(self) -> int:
        return int(self.sizes @ self.mult)

    @property
    def p(self) -> int:
        return self.within.shape[0] - 1


def pool_by_size(sums: GroupSums) -> SizePooledSums:
    """Pool the per-group outer products ``zbar_g zbar_g^T`` over groups of equal size, in O(G p^2).

    Parameters
    ----------
    sums : GroupSums

    Returns
    -------
    SizePooledSums
    """
    counts = sums.counts.astype(np.intp)
    mult_all = np.bincount(counts)
    present = mult_all > 0
    sizes = np.flatnonzero(present)
    which = (np.cumsum(present) - 1)[counts]  # index of each group's size among the distinct sizes
    q = sums.means.shape[1]
    outer = np.empty((len(sizes), q, q))
    for i in range(q):
        for j in range(i, q):
            outer[:, i, j] = np.bincount(which, weights=sums.means[:, i] * sums.means[:, j], minlength=len(sizes))
            outer[:, j, i] = outer[:, i, j]
    return SizePooledSums(sizes=sizes.astype(float), mult=mult_all[present].astype(float), outer=outer,
                          within=sums.within)


def profiled_criterion(theta: float, pooled: SizePooledSums, method: str = "ML") -> tuple[float, float]:
    """The profiled deviance and its derivative in theta, as :func:`profiled_deviance`, from size-pooled sums.

    Returns ``(deviance, grad)`` only; O(U p^2) per call, so a fit's many evaluations cost next to nothing.

    Parameters
    ----------
    theta : float
        ``sigma_s^2 / sigma^2``, >= 0.
    pooled : SizePooledSums
    method : {"ML", "REML"}

    Returns
    -------
    (float, float)
        The profiled deviance (or REML criterion) and its derivative in theta.
    """
    u, mult, S = pooled.sizes, pooled.mult, pooled.outer
    n, p = pooled.n, pooled.p
    d = u / (1.0 + u * theta)
    M = pooled.within + np.tensordot(d, S, axes=1)
    _, L, beta, r, m = _gls_from_cross(M, n, method)
    deviance = m * (1.0 + np.log(2.0 * np.pi * r / m)) + float(mult @ np.log1p(u * theta))
    w = np.append(-beta, 1.0)
    e2 = np.einsum("i,uij,j->u", w, S, w)  # sum over the groups of each size of (ybar_g - xbar_g beta)^2
    grad = float(mult @ d - m * (d**2 @ e2) / r)
    if method == "REML":
        deviance += 2.0 * float(np.sum(np.log(np.diag(L))))
        Linv = np.linalg.solve(L, np.eye(p))  # A^-1 = L^-T L^-1, from the Cholesky factor already at hand
        grad -= float(d**2 @ np.einsum("ij,uji->u", Linv.T @ Linv, S[:, :p, :p]))
    return float(deviance), grad
