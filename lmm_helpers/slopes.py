"""Random slopes of one grouping factor: lme4's profiled deviance with q x q blocks per group, in O(G q^3).

With one grouping factor, ``Z`` is block-diagonal: group g's rows see only its own q random effects through
``Z_g`` (n_g x q). In lme4's parametrisation ``b_g = Lambda u_g``, ``u_g ~ N(0, sigma^2 I)``, with the relative
covariance factor ``Lambda`` (q x q lower-triangular, its entries the vector ``theta``, block-diagonal when the
formula has several terms of the same factor), everything the likelihood needs is in per-group cross-products
gathered once, in one O(n) pass (:func:`block_sums`):

    S_g = Z_g^T Z_g (q x q),  Z_g^T [X_g, y_g] (q x (p+1)),  and [X, y]^T [X, y] ((p+1) x (p+1)).

For each theta (:func:`evaluate`): ``L_g = chol(Lambda^T S_g Lambda + I)``, ``C_g = L_g^-1 Lambda^T Z_g^T [X y]``,
and the Cholesky factor of ``[X y]^T [X y] - sum_g C_g^T C_g`` holds ``R_X`` (with ``R_X^T R_X = X^T V^-1 X``) and,
in its last diagonal element, the penalised residual sum of squares ``r^2``. The profiled deviance is

    ML:   sum_g log|L_g|^2 + n (1 + log(2 pi r^2 / n))
    REML: sum_g log|L_g|^2 + log|R_X|^2 + (n - p) (1 + log(2 pi r^2 / (n - p)))

exactly lme4's (Bates et al. 2015, eqs. 34 and 41). The per-group q x q work runs on all groups at once: arrays
of shape (q, q, G), one vectorised operation per matrix entry, so an evaluation costs O(G q^3) with numpy's
per-call overhead paid O(q^3) times rather than G times. The gradient in theta is analytic (:func:`evaluate`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BlockSums", "Evaluation", "block_sums", "evaluate", "lambda_index"]


@dataclass(frozen=True)
class BlockSums:
    """The per-group cross-products of one grouping factor (see the module docstring).

    Attributes
    ----------
    ztz : ndarray (q, q, G)
        ``Z_g^T Z_g``.
    ztw : ndarray (q, p+1, G)
        ``Z_g^T [X_g, y_g]``.
    wtw : ndarray (p+1, p+1)
        ``[X, y]^T [X, y]``.
    n : int
        Number of observations.
    """

    ztz: np.ndarray
    ztw: np.ndarray
    wtw: np.ndarray
    n: int

    @property
    def q(self) -> int:
        return self.ztz.shape[0]

    @property
    def p(self) -> int:
        return self.wtw.shape[0] - 1

    @property
    def n_groups(self) -> int:
        return self.ztz.shape[2]


def block_sums(cols: list, z_cols: list, w_cols: list, codes: np.ndarray, n_groups: int,
               ones: int | None = None) -> BlockSums:
    """One O(n) pass: per-group ``Z_g^T Z_g`` and ``Z_g^T [X_g y_g]``, and ``[X y]^T [X y]``.

    Z and ``W = [X, y]`` usually share columns (the intercept, a covariate with a random slope), so both are given
    as indices into one list of distinct columns, and each distinct product is summed once, by ``np.bincount``
    (no sort: the rows may come in any order).

    Parameters
    ----------
    cols : list of ndarray (n,)
        The distinct columns, each contiguous.
    z_cols, w_cols : list of int
        The columns of Z (q) and of ``[X, y]`` (p + 1) in ``cols``.
    codes : ndarray of int (n,)
        Group of each row, ``0 .. n_groups - 1``.
    n_groups : int
    ones : int, optional
        The index in ``cols`` of a column of ones (its products need no multiplication).
    """
    cache: dict = {}

    def gsum(a: int, b: int) -> np.ndarray:
        key = (min(a, b), max(a, b))
        if key not in cache:
            if a == ones and b == ones:
                cache[key] = np.bincount(codes, minlength=n_groups).astype(float)
            elif a == ones or b == ones:
                cache[key] = np.bincount(codes, weights=cols[b if a == ones else a], minlength=n_groups)
            else:
                cache[key] = np.bincount(codes, weights=cols[a] * cols[b], minlength=n_groups)
        return cache[key]

    q, m = len(z_cols), len(w_cols)
    ztz = np.empty((q, q, n_groups))
    for i in range(q):
        for j in range(i, q):
            ztz[i, j] = ztz[j, i] = gsum(z_cols[i], z_cols[j])
    ztw = np.empty((q, m, n_groups))
    for i in range(q):
        for k in range(m):
            ztw[i, k] = gsum(z_cols[i], w_cols[k])
    if m > 8:  # many fixed-effect columns: one GEMM beats m (m + 1) / 2 dot products of length n
        W = np.column_stack([cols[k] for k in w_cols])
        return BlockSums(ztz=ztz, ztw=ztw, wtw=W.T @ W, n=int(len(codes)))
    wtw = np.empty((m, m))
    for i in range(m):
        for k in range(i, m):
            a, b = w_cols[i], w_cols[k]
            if a == ones and b == ones:
                wtw[i, k] = float(len(codes))
            elif a == ones or b == ones:
                wtw[i, k] = float(np.sum(cols[b if a == ones else a]))
            else:
                wtw[i, k] = float(np.einsum("i,i->", cols[a], cols[b]))  # no BLAS threads (see _dot)
            wtw[k, i] = wtw[i, k]
    return BlockSums(ztz=ztz, ztw=ztw, wtw=wtw, n=int(len(codes)))


def lambda_index(block_sizes: list) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of Lambda that theta fills, in lme4's order (each block's lower triangle by columns).

    Parameters
    ----------
    block_sizes : list of int
        The number of random effects of each term, in the formula's order.
    """
    rows, cols, offset = [], [], 0
    for k in block_sizes:
        for j in range(k):
            for i in range(j, k):
                rows.append(offset + i)
                cols.append(offset + j)
        offset += k
    return np.array(rows, dtype=np.intp), np.array(cols, dtype=np.intp)


# ------------------------------------------------------------------ small matrices over all groups at once
# Arrays of shape (a, b, G) hold one a x b matrix per group. Products of two per-group matrices are O(q^3)
# vectorised operations over G; products with a shared small matrix (Lambda) and sums over the groups go through
# np.einsum's own loops, not BLAS: a multithreaded BLAS on a busy machine turned a dot product of length 5x10^4
# from 0.1 ms into 8-38 ms (its threads wait for cores), and einsum is never worse than 3x a single-threaded BLAS.
def _mm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A_g @ B_g`` for every group; arrays (a, b, G) and (b, c, G)."""
    out = np.empty((A.shape[0], B.shape[1], A.shape[2]))
    for i in range(A.shape[0]):
        for k in range(B.shape[1]):
            acc = A[i, 0] * B[0, k]
            for j in range(1, A.shape[1]):
                acc += A[i, j] * B[j, k]
            out[i, k] = acc
    return out


def _sandwich(Lam: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``Lam S_g Lam^T`` for every group in one pass: vec(Lam S Lam^T) = (Lam kron Lam) vec(S)."""
    q, G = S.shape[0], S.shape[2]
    return np.einsum("ab,bg->ag", np.kron(Lam, Lam), S.reshape(q * q, G)).reshape(Lam.shape[0], Lam.shape[0], G)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Dot product of two vectors by einsum (single-threaded; see above)."""
    return float(np.einsum("g,g->", a, b))


def _sum_mm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``sum_g A_g @ B_g``, arrays (a, b, G) and (b, c, G): a b c dot products of length G (no copies; a reshaped
    GEMM with G as its inner dimension measured 3-4 times slower)."""
    out = np.zeros((A.shape[0], B.shape[1]))
    for i in range(A.shape[0]):
        for k in range(B.shape[1]):
            out[i, k] = sum(_dot(A[i, j], B[j, k]) for j in range(A.shape[1]))
    return out


def _gram(C: np.ndarray) -> np.ndarray:
    """``sum_g C_g^T C_g`` for C (q, m, G): the symmetric m x m matrix from dot products of length G.

    With many columns (m > 8: a factor with many levels among the fixed effects) the m (m + 1) / 2 dot products
    cost more than one GEMM of the stacked (m, q G) matrix, which BLAS then runs efficiently.
    """
    m = C.shape[1]
    if m > 8:
        F = C.transpose(1, 0, 2).reshape(m, -1)
        return F @ F.T
    out = np.empty((m, m))
    for a in range(m):
        for b in range(a, m):
            out[a, b] = out[b, a] = sum(_dot(C[i, a], C[i, b]) for i in range(C.shape[0]))
    return out


def _tri_inv(L: np.ndarray) -> np.ndarray:
    """``L_g^-1`` for lower-triangular L (q, q, G), column by column (only the lower triangle is filled or read)."""
    q = L.shape[0]
    Li = np.empty_like(L)
    for j in range(q):
        Li[j, j] = 1.0 / L[j, j]
        for i in range(j + 1, q):
            acc = L[i, j] * Li[j, j]
            for k in range(j + 1, i):
                acc += L[i, k] * Li[k, j]
            Li[i, j] = -acc / L[i, i]
    return Li


def _crossprod_tri(Li: np.ndarray) -> np.ndarray:
    """``Li_g^T Li_g`` for lower-triangular Li (q, q, G): ``A_g^-1`` from ``L_g^-1``."""
    q = Li.shape[0]
    out = np.empty_like(Li)
    for i in range(q):
        for k in range(i, q):
            acc = Li[k, i] * Li[k, k]
            for j in range(k + 1, q):
                acc += Li[j, i] * Li[j, k]
            out[i, k] = out[k, i] = acc
    return out


def _chol(A: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of each ``A_g`` (q, q, G); every ``A_g`` is I + a positive semi-definite matrix.

    Only the lower triangle is filled (np.empty: zeroing the rest cost a pass of fresh memory); every reader of L
    here reads only the lower triangle.
    """
    q = A.shape[0]
    L = np.empty_like(A)
    for j in range(q):
        d = A[j, j].copy()
        for k in range(j):
            d -= L[j, k] ** 2
        L[j, j] = np.sqrt(d)
        for i in range(j + 1, q):
            acc = A[i, j].copy()
            for k in range(j):
                acc -= L[i, k] * L[j, k]
            L[i, j] = acc / L[j, j]
    return L


def _forward(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``L_g^-1 B_g`` for lower-triangular L (q, q, G) and B (q, m, G) or (q, G)."""
    C = np.empty_like(B)
    for i in range(L.shape[0]):
        acc = B[i].copy()
        for k in range(i):
            acc -= L[i, k] * C[k]
        C[i] = acc / L[i, i]
    return C


def _backward(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``L_g^-T B_g`` for lower-triangular L (q, q, G) and B (q, m, G) or (q, G)."""
    q = L.shape[0]
    C = np.empty_like(B)
    for i in reversed(range(q)):
        acc = B[i].copy()
        for k in range(i + 1, q):
            acc -= L[k, i] * C[k]
        C[i] = acc / L[i, i]
    return C


@dataclass(frozen=True)
class Evaluation:
    """Everything lme4's penalised least squares gives at one theta.

    ``deviance`` is the profiled criterion (ML deviance or REML criterion); ``ldL2 = sum_g log|L_g|^2``;
    ``r2`` the penalised residual sum of squares; ``RX`` the lower Cholesky factor of ``X^T V^-1 X`` (V relative to
    sigma^2); ``beta`` the GLS estimate; ``u`` the spherical conditional modes (q, G), ``b = Lambda u``; ``grad`` the
    gradient of ``deviance`` in theta (None unless asked for); ``parts`` the gradients of ``ldL2``, ``r2`` and
    ``log|R_X|^2`` in theta (for lmerTest's Hessian).
    """

    theta: np.ndarray
    deviance: float
    ldL2: float
    r2: float
    RX: np.ndarray
    beta: np.ndarray
    u: np.ndarray
    Lam: np.ndarray
    grad: np.ndarray | None
    parts: tuple | None


def evaluate(theta: np.ndarray, sums: BlockSums, index: tuple[np.ndarray, np.ndarray], method: str,
             gradient: bool = False) -> Evaluation:
    """lme4's profiled deviance (ML) or REML criterion at ``theta``, and optionally its gradient.

    Parameters
    ----------
    theta : ndarray
        lme4's theta: the entries of Lambda at ``index``.
    sums : BlockSums
    index : (rows, cols)
        From :func:`lambda_index`.
    method : {"ML", "REML"}
    gradient : bool
        Also return the analytic gradient in theta.

    Returns
    -------
    Evaluation

    Notes
    -----
    The gradient, with ``A_g = Lambda^T S_g Lambda + I``, ``u_g`` the conditional modes and ``v_g = Z_g^T e_g`` the
    projections of the residuals (``e = y - X beta - Z Lambda u``), in the entries of Lambda:
    ``d ldL2 = 2 sum_g S_g Lambda A_g^-1``; ``d r^2 = -2 sum_g v_g u_g^T`` (envelope theorem: beta and u are
    optimal); ``d log|R_X|^2 = -2 sum_g (I - S_g F_g)(P_g G^-1 P_g^T) Lambda A_g^-1`` with ``F_g = Lambda A_g^-1
    Lambda^T``, ``P_g = Z_g^T X_g``, ``G = R_X R_X^T``.
    """
    q, p, n, G = sums.q, sums.p, sums.n, sums.n_groups
    Lam = np.zeros((q, q))
    Lam[index] = theta
    dq = np.arange(q)
    A = _sandwich(Lam.T, sums.ztz)                                       # Lambda^T S_g Lambda
    A[dq, dq] += 1.0
    L = _chol(A)
    B = np.einsum("ji,jmg->img", Lam, sums.ztw)                            # Lambda^T Z_g^T [X y]
    C = _forward(L, B)
    M = sums.wtw - _gram(C)
    R = np.linalg.cholesky(M)
    RX = R[:p, :p]
    r2 = float(R[p, p] ** 2)
    ldL2 = 2.0 * float(np.sum(np.log(L[dq, dq])))
    ldRX2 = 2.0 * float(np.sum(np.log(np.diag(RX))))
    beta = np.linalg.solve(RX.T, R[p, :p])
    u = _backward(L, C[:, p] - np.einsum("p,ipg->ig", beta, C[:, :p]))
    m = n if method == "ML" else n - p
    deviance = ldL2 + m * (1.0 + np.log(2.0 * np.pi * r2 / m))
    if method == "REML":
        deviance += ldRX2
    grad = parts = None
    if gradient:
        rows, cols = index
        Ainv = _crossprod_tri(_tri_inv(L))                               # A_g^-1 = L_g^-T L_g^-1
        LamAinv = np.einsum("ij,jkg->ikg", Lam, Ainv)                     # Lambda A_g^-1
        g_ld = 2.0 * _sum_mm(sums.ztz, LamAinv)
        P = sums.ztw[:, :p]
        resid_z = sums.ztw[:, p] - np.einsum("p,ipg->ig", beta, P)       # Z_g^T (y_g - X_g beta)
        Lu = np.einsum("ij,jg->ig", Lam, u)
        v = resid_z - np.stack([sum(sums.ztz[i, j] * Lu[j] for j in range(q)) for i in range(q)])
        g_r2 = -2.0 * np.array([[_dot(v[i], u[j]) for j in range(q)] for i in range(q)])
        g_rx = np.zeros((q, q))
        if method == "REML":
            Ginv = np.linalg.solve(RX.T, np.linalg.solve(RX, np.eye(p)))
            PG = np.einsum("ab,ibg->iag", Ginv, P)                        # G^-1 P_g^T, per group (q, p, G)
            PGP = np.empty((q, q, G))
            for i in range(q):
                for j in range(i, q):
                    PGP[i, j] = PGP[j, i] = np.einsum("ag,ag->g", PG[i], P[j])
            K = -_mm(sums.ztz, _sandwich(Lam, Ainv))                      # I - S_g Lambda A_g^-1 Lambda^T
            K[dq, dq] += 1.0
            g_rx = -2.0 * _sum_mm(_mm(K, PGP), LamAinv)
        parts = (g_ld[rows, cols], g_r2[rows, cols], g_rx[rows, cols])
        grad = parts[0] + (m / r2) * parts[1] + (parts[2] if method == "REML" else 0.0)
    return Evaluation(theta=np.asarray(theta, float), deviance=float(deviance), ldL2=ldL2, r2=r2, RX=RX,
                      beta=beta, u=u, Lam=Lam, grad=grad, parts=parts)
