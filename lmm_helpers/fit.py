"""Fitting the random-intercept model ``y = X beta + K u + e`` by ML or REML, and the result object."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .design import check_inputs, check_rank, indicator_matrix
from .rformat import abbreviate, format_named, format_num, format_pval, format_table, zapsmall
from .likelihood import (
    Centring,
    GroupSums,
    ProfiledPoint,
    _check_method,
    centre_sums,
    group_sums,
    pool_by_size,
    profiled_criterion,
    profiled_deviance,
    profiled_loglik_dense,
)

__all__ = ["DenseFit", "LMMResult", "fit_group_sums", "fit_lmm", "fit_lmm_dense", "satterthwaite_df"]

# theta = sigma_s^2 / sigma^2 is scale-free, so one fixed grid brackets the optimum for any data.
_THETA_GRID = np.concatenate([[0.0], np.logspace(-8.0, 8.0, 17)])
_THETA_MAX = 1e16


@dataclass(frozen=True)
class LMMResult:
    """A fitted random-intercept model, in lme4's conventions.

    Attributes
    ----------
    beta : ndarray (p,)
        Fixed-effect estimates, one per column of X.
    sigma, sigma_s : float
        Residual and random-intercept standard deviations (``sigma_s`` is 0.0 on a boundary fit).
    loglik : float
        Maximised log-likelihood (ML) or restricted log-likelihood (REML).
    converged : bool
        The optimum was located and checked (derivative zero inside, or non-negative at the boundary).
    singular : bool
        Boundary fit: the random-intercept variance is estimated as 0 (lme4's ``isSingular``).
    bse, tvalues, df, pvalues : ndarray (p,)
        Standard errors from ``sigma^2 (X^T V^-1 X)^-1``, t-values, Satterthwaite degrees of freedom (as lmerTest)
        and two-sided p-values.
    vcov : ndarray (p, p)
        Covariance matrix of ``beta``.
    aic, bic : float
        From ``loglik`` with ``p + 2`` parameters (REML fits use the REML criterion, as lme4 does).
    random_effects : pandas.Series
        Predicted random intercepts (BLUPs), indexed by group label.
    """

    beta: np.ndarray
    sigma: float
    sigma_s: float
    loglik: float
    converged: bool
    singular: bool
    method: str
    theta: float
    bse: np.ndarray
    tvalues: np.ndarray
    df: np.ndarray
    pvalues: np.ndarray
    vcov: np.ndarray
    aic: float
    bic: float
    random_effects: pd.Series
    names: list
    n_obs: int
    n_groups: int
    scaled_resid_quantiles: np.ndarray = field(repr=False)

    @property
    def fe_params(self) -> pd.Series:
        """``beta`` as a Series indexed by the column names of X."""
        return pd.Series(self.beta, index=self.names, name="Estimate")

    @property
    def deviance(self) -> float:
        """``-2 loglik``: lme4's deviance (ML) or REML criterion."""
        return -2.0 * self.loglik

    def summary(self, formula: str | None = None, data: str | None = None, group: str = "Group") -> str:
        """Text laid out like lme4's ``summary()`` with lmerTest's Satterthwaite columns, numbers formatted as R does.

        Parameters
        ----------
        formula, data : str, optional
            Shown on the ``Formula:`` and ``Data:`` lines, as R echoes them.
        group : str
            Name of the grouping factor in the random-effects table.
        """
        how = "maximum likelihood " if self.method == "ML" else "REML"  # lme4's own titles, space and all
        lines = [f"Linear mixed model fit by {how}. t-tests use Satterthwaite's method [lmm_helpers]"]
        if formula:
            lines.append(f"Formula: {formula}")
        if data:
            lines.append(f"   Data: {data}")
        lines.append("")
        if self.method == "ML":
            head = ["AIC", "BIC", "logLik", "deviance", "df.resid"]
            vals = format_num(np.round([self.aic, self.bic, self.loglik, self.deviance], 1), 7)
            lines += format_named(head, [*vals, str(self.n_obs - len(self.beta) - 2)])
        else:
            lines.append(f"REML criterion at convergence: {self.deviance:.1f}")
        lines += ["", "Scaled residuals: "]
        lines += format_named(["Min", "1Q", "Median", "3Q", "Max"], format_num(zapsmall(self.scaled_resid_quantiles, 5)))
        var, sd = format_num([self.sigma_s**2, self.sigma**2]), format_num([self.sigma_s, self.sigma])
        lines += ["", "Random effects:"]
        lines += format_table(["", ""], ["Groups", "Name", "Variance", "Std.Dev."],
                              [[group, "(Intercept)", var[0], sd[0]], ["Residual", "", var[1], sd[1]]], right=False)
        lines.append(f"Number of obs: {self.n_obs}, groups:  {group}, {self.n_groups}")
        lines += ["", "Fixed effects:"]
        lines += _coef_table(self.names, self.beta, self.bse, self.df, self.tvalues, self.pvalues)
        if len(self.beta) > 1:
            corr = self.vcov / np.outer(self.bse, self.bse)
            cols = [abbreviate(n) for n in self.names[:-1]]
            cells = [[f"{corr[i, j]:.3f}" if j < i else "" for j in range(len(cols))]
                     for i in range(1, len(self.names))]
            lines += ["", "Correlation of Fixed Effects:"] + format_table(self.names[1:], cols, cells)
        if self.singular:
            lines += ["", "boundary (singular) fit: the random-intercept variance is estimated as 0"]
        return "\n".join(line.rstrip() for line in lines)


def _coef_table(names: list, beta: np.ndarray, bse: np.ndarray, df: np.ndarray, t: np.ndarray,
                p: np.ndarray) -> list[str]:
    """The fixed-effects table as R's ``printCoefmat`` lays it out for lmerTest (digits 4), with its stars."""
    digits = 4
    cs = np.column_stack([beta, bse, df])
    small = np.abs(cs[np.isfinite(cs) & (cs != 0)])
    # R's floor(log10(min)); a value within rounding of a power of ten (a df of 1 - 2e-16) counts as that power,
    # as it does in R, where the same df comes out a hair above 1.
    digmin = 1 + np.floor(np.log10(small.min()) + 1e-9) if small.size else 1
    cs = np.round(cs, int(max(1, digits - digmin)))
    flat = format_num(cs.ravel(order="F"), digits)
    n = len(beta)
    cols = [flat[i * n:(i + 1) * n] for i in range(3)]
    cols.append(format_num(np.round(t, digits - 1), digits))
    cols.append(format_pval(p, digits - 1))
    header = ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
    stars = any(v < 0.1 for v in p)
    if stars:
        marks = [next(s for cut, s in _STARS if v <= cut).ljust(3) for v in p]
        cols.append(marks)
        header.append("")
    cells = [[c[i] for c in cols] for i in range(n)]
    lines = format_table(list(names), header, cells)
    if stars:
        lines += ["---", "Signif. codes:  0 \u2018***\u2019 0.001 \u2018**\u2019 0.01 \u2018*\u2019 0.05 "
                  "\u2018.\u2019 0.1 \u2018 \u2019 1"]
    return lines


_STARS = [(0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, "."), (1.0, " ")]


# ------------------------------------------------------------------------------------------ optimisation
def _minimise_theta(sums: GroupSums, method: str) -> tuple[ProfiledPoint, bool]:
    """Locate the theta that minimises the profiled deviance; return the point and whether it converged.

    The search runs on the size-pooled criterion (O(U p^2) per evaluation); the full point, with its per-group
    by-products, is evaluated once at the optimum.
    """
    pooled = pool_by_size(sums)

    def crit(t: float) -> tuple[float, float, float]:
        return (t, *profiled_criterion(t, pooled, method))

    points = [crit(t) for t in _THETA_GRID]  # (theta, deviance, grad)
    while points[-1][2] < 0 and points[-1][1] <= min(pt[1] for pt in points):
        if points[-1][0] >= _THETA_MAX:
            raise ValueError(
                "y has no residual variation within groups once X is fitted: the likelihood is unbounded"
            )
        points.append(crit(points[-1][0] * 100.0))
    k = int(np.argmin([pt[1] for pt in points]))
    best = points[k]
    if k == 0 and best[2] >= 0:
        return profiled_deviance(0.0, sums, method), True  # boundary: the deviance rises as theta leaves 0
    # The minimum lies where the derivative changes sign next to the best grid point.
    lo, hi = (points[k], points[k + 1]) if best[2] < 0 else (points[k - 1], points[k])
    if lo[2] < 0 < hi[2]:
        root, info = optimize.brentq(lambda t: crit(t)[2], lo[0], hi[0], xtol=1e-300,
                                     rtol=4 * np.finfo(float).eps, full_output=True, disp=False)
        opt, converged = crit(root), bool(info.converged)
    else:  # derivative too flat to bracket: fall back to a bounded search on log(theta)
        a, b = np.log(max(lo[0], 1e-12)), np.log(hi[0])
        res = optimize.minimize_scalar(lambda v: crit(np.exp(v))[1], bounds=(a, b), method="bounded",
                                       options={"xatol": 1e-12})
        opt, converged = crit(float(np.exp(res.x))), bool(res.success)
    if opt[1] > best[1]:
        opt, converged = best, False
    return profiled_deviance(opt[0], sums, method), converged


# -------------------------------------------------------------------------------------- Satterthwaite df
def satterthwaite_df(sums: GroupSums, point: ProfiledPoint, method: str, contrasts: np.ndarray) -> np.ndarray:
    """Satterthwaite degrees of freedom for each row ``c`` of ``contrasts``, as lmerTest computes them.

    Uses analytic derivatives of the deviance and of ``var(c^T beta) = sigma^2 c^T A^-1 c`` in the variance
    parameters ``(rho, sigma)``, ``rho = sigma_s / sigma`` (lmerTest's parametrisation), and
    ``df = 2 var^2 / (g^T (2 H^-1) g)``.
    """
    p, m = sums.p, sums.n - (sums.p if method == "REML" else 0)
    theta, s2, r, A, d, e = point.theta, point.sigma2, point.r, point.A, point.d, point.resid_means
    xbar = sums.means[:, :p]
    Ainv = np.linalg.inv(A)
    B = (xbar.T * d**2) @ xbar
    h = xbar.T @ (d**2 * e)
    r1 = -np.sum(d**2 * e**2)
    r2 = 2.0 * np.sum(d**3 * e**2) - 2.0 * h @ Ainv @ h
    D_t = np.sum(d) + r1 / s2
    D_tt = -np.sum(d**2) + r2 / s2
    if method == "REML":
        C = (xbar.T * d**3) @ xbar
        D_t -= np.trace(Ainv @ B)
        D_tt += -np.trace(Ainv @ B @ Ainv @ B) + 2.0 * np.trace(Ainv @ C)
    D_s = m / s2 - r / s2**2
    D_ss = -m / s2**2 + 2.0 * r / s2**3
    D_ts = -r1 / s2**2
    rho, sig = np.sqrt(theta), np.sqrt(s2)
    H = np.array([[4 * theta * D_tt + 2 * D_t, 4 * rho * sig * D_ts],
                  [4 * rho * sig * D_ts, 4 * s2 * D_ss + 2 * D_s]])
    contrasts = np.atleast_2d(contrasts)
    var = s2 * np.einsum("ij,jk,ik->i", contrasts, Ainv, contrasts)
    dvar_t = s2 * np.einsum("ij,jk,ik->i", contrasts, Ainv @ B @ Ainv, contrasts)
    dvar_s = var / s2
    g = np.vstack([2 * rho * dvar_t, 2 * sig * dvar_s])  # shape (2, k)
    quad = np.einsum("ik,ij,jk->k", g, np.linalg.inv(H), g)
    with np.errstate(over="ignore", invalid="ignore"):
        df = var**2 / quad
    bad = ~np.isfinite(df)
    if np.any(bad):  # var**2 overflowed (X in tiny units): the same ratio, scaled (not the default: same bits)
        gs = g[:, bad] / var[bad]
        df[bad] = 1.0 / np.einsum("ik,ij,jk->k", gs, np.linalg.inv(H), gs)
    return df


# ---------------------------------------------------------------------------------------------- the fit
def _quantiles(x: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``np.quantile(x, probs)`` (linear interpolation), exactly, in a few passes instead of a full selection.

    A sorted strided sample brackets each order statistic; one pass counts the values below the bracket and
    gathers those inside it, and only that small band is partitioned. If the bracket misses (unlucky or adversarial
    order), that quantile falls back to a full ``np.partition``, so the result is always exact.
    """
    n = x.size
    if n < 20_000:
        return np.quantile(x, probs)
    pos = np.asarray(probs, dtype=float) * (n - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    sample = np.sort(x[:: max(n // 4000, 1)])
    m = sample.size
    out = np.empty(len(pos))
    for i, (k, kh, t) in enumerate(zip(lo, hi, frac)):
        if k == 0 and t == 0.0:
            out[i] = x.min()
            continue
        if k == n - 1:
            out[i] = x.max()
            continue
        j = int(k / (n - 1) * (m - 1))
        low = sample[j - 60] if j >= 60 else -np.inf
        high = sample[j + 61] if j + 61 < m else np.inf
        below = np.count_nonzero(x < low)
        band = x[(x >= low) & (x <= high)]
        if below <= k and kh < below + band.size:
            part = np.partition(band, [k - below, kh - below])
            a, b = part[k - below], part[kh - below]
        else:
            part = np.partition(x, [k, kh])
            a, b = part[k], part[kh]
        out[i] = b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t  # numpy's lerp, for identical results
    return out


def _result(sums: GroupSums, point: ProfiledPoint, method: str, converged: bool, centring: Centring,
            names: list, labels: pd.Index, resid: Callable | None) -> LMMResult:
    """The result in the data's own coordinates, from the fit to the centred sums (see :func:`centre_sums`).

    ``resid(beta, blups, sigma)`` gives the scaled residuals' quantiles (a pass over the data); None leaves them
    NaN (the caller computes them later, as the out-of-core route does).
    """
    p, n = len(names), sums.n
    sigma2 = point.sigma2
    singular = point.theta == 0.0
    T = centring.T
    beta = T @ point.beta + centring.offset
    L = np.linalg.cholesky(point.A)
    Linv = np.linalg.solve(L, np.eye(len(beta)))  # A^-1 = L^-T L^-1 from the Cholesky factor, no general inverse
    LinvT = Linv @ T.T
    vcov = sigma2 * (LinvT.T @ LinvT)
    bse = np.sqrt(np.diag(vcov))
    tvalues = beta / bse
    df = satterthwaite_df(sums, point, method, T)
    pvalues = 2.0 * stats.t.sf(np.abs(tvalues), df)
    loglik = -0.5 * point.deviance
    k = p + 2
    blups = point.theta * point.d * point.resid_means
    scaled = np.full(5, np.nan) if resid is None else resid(beta, blups, float(np.sqrt(sigma2)))
    return LMMResult(
        beta=beta, sigma=float(np.sqrt(sigma2)), sigma_s=float(np.sqrt(point.theta * sigma2)),
        loglik=loglik, converged=converged, singular=singular, method=method, theta=point.theta,
        bse=bse, tvalues=tvalues, df=df, pvalues=pvalues, vcov=vcov,
        aic=-2.0 * loglik + 2 * k, bic=-2.0 * loglik + k * np.log(n),
        random_effects=pd.Series(blups, index=labels, name="(Intercept)"),
        names=list(names), n_obs=n, n_groups=sums.n_groups, scaled_resid_quantiles=scaled,
    )


def fit_lmm(y, X, groups, method: str = "ML", *, names=None) -> LMMResult:
    """Fit ``y = X beta + u[group] + e`` with ``u ~ N(0, sigma_s^2)``, ``e ~ N(0, sigma^2)`` by ML or REML.

    The O(n) route: one pass gathers per-group means and within-group cross-products, then beta and sigma^2
    are profiled out in closed form and the remaining one-dimensional problem in
    ``theta = sigma_s^2 / sigma^2`` is solved to machine precision (a root of its analytic derivative).

    Parameters
    ----------
    y : array-like, shape (n,)
        Response.
    X : array-like or DataFrame, shape (n, p)
        Fixed-effect design, including its own intercept column.
    groups : array-like of hashable, shape (n,)
        Group label of each row (numbers, strings, categorical).
    method : {"ML", "REML"}
    names : list of str, optional
        Names of the columns of X (taken from a DataFrame's columns by default).

    Returns
    -------
    LMMResult

    Raises
    ------
    ValueError
        For bad input: see :func:`lmm_helpers.design.check_inputs`.
    """
    _check_method(method)
    data = check_inputs(y, X, groups, names, rank=False)

    def resid(beta: np.ndarray, blups: np.ndarray, sigma: float) -> np.ndarray:
        scaled = (data.y - data.X @ beta - blups[data.codes]) / sigma
        return _quantiles(scaled, np.array([0.0, 0.25, 0.5, 0.75, 1.0]))

    sums = group_sums(data.y, data.X, data.codes, data.n_groups)
    return fit_group_sums(sums, data.names, data.labels, method, resid)


def fit_group_sums(sums: GroupSums, names: list, labels: pd.Index, method: str = "ML",
                   resid: Callable | None = None) -> LMMResult:
    """:func:`fit_lmm` from the sums alone: what it does after its one pass over the data.

    The out-of-core route (:mod:`lmm_helpers.chunked`) gathers the same :class:`GroupSums` chunk by chunk and
    fits them here, so both routes run the same optimiser on the same numbers.

    Parameters
    ----------
    sums : GroupSums
        Of the uncentred ``[X, y]`` (as :func:`lmm_helpers.likelihood.group_sums` returns them).
    names : list of str
        The columns of X.
    labels : pandas.Index
        The group labels, in the order of the sums.
    method : {"ML", "REML"}
    resid : callable, optional
        ``resid(beta, blups, sigma)``: min, quartiles and max of the scaled conditional residuals; without it they
        are NaN (they need a pass over the data, which the sums cannot replace).

    Returns
    -------
    LMMResult
    """
    _check_method(method)
    centred, centring = centre_sums(sums)
    _check_design(centred, centring, names)
    point, converged = _minimise_theta(centred, method)
    return _result(centred, point, method, converged, centring, names, labels, resid)


def _check_design(sums: GroupSums, centring: Centring, names: list) -> None:
    """Refuse a rank-deficient X, and a y that X fits exactly, from the centred sums.

    The rank comes from ``X_c^T X_c`` (same rank as X, free of the columns' offsets). A column that centring
    leaves with less than 1e-7 of its length (R's ``lm`` tolerance) is, to the digits the data carry, a multiple
    of the intercept column. y is fitted exactly when the least-squares residual sum of squares is below what
    rounding of y itself leaves (a residual SD under about 2e-13 of y's root mean square): a constant y is
    an example, whose centred values are rounding noise, not data.
    """
    p, k, n = sums.p, centring.intercept, sums.n
    with np.errstate(over="ignore", under="ignore"):  # overflow to inf is what the magnitude check looks for
        raw = np.diag(sums.within) + sums.counts @ (sums.means + centring.shift) ** 2  # |[X, y]_j|^2, uncentred
    rms = np.sqrt(raw / n)
    for j in np.flatnonzero((rms > 0) & ~((rms >= 1e-100) & (rms <= 1e100))):
        what = "y" if j == p else f"X: column {names[j]!r}"
        raise ValueError(f"{what} has values of magnitude {rms[j]:.1e}, too large or too small to square in double "
                         "precision; rescale it (change its units)")
    M = sums.within + (sums.means.T * sums.counts) @ sums.means  # [X_c, y_c]^T [X_c, y_c]
    xtx = M[:p, :p]
    if k is not None:
        for j in np.flatnonzero((np.diag(xtx) <= 1e-14 * raw[:p]) & (raw[:p] > 0)):
            if j != k:
                raise ValueError(f"X is rank-deficient: column {names[j]!r} is constant, a multiple of the "
                                 f"intercept column {names[k]!r}")
    check_rank(xtx, names)
    z = np.linalg.solve(np.linalg.cholesky(xtx), M[:p, p])
    rss = M[p, p] - z @ z
    if not rss > (1e3 * np.finfo(float).eps) ** 2 * raw[p]:
        raise ValueError("y is fitted exactly by X (to the precision of its values): the residual variance is zero")


class DenseFit(NamedTuple):
    """What :func:`fit_lmm_dense` finds: a tuple ``(beta, sigma, sigma_s, loglik)`` with those names."""

    beta: np.ndarray
    sigma: float
    sigma_s: float
    loglik: float


def fit_lmm_dense(y, X, groups, method: str = "ML") -> DenseFit:
    """The from-scratch route of notebook 06 for any data: build the n x n Sigma and maximise numerically.

    Optimises over ``(log sigma, log sigma_s)`` with beta at its GLS value; O(n^3). For teaching and as a
    cross-check of :func:`fit_lmm`; cannot reach a boundary fit exactly.

    Parameters
    ----------
    y, X, groups
        As for :func:`fit_lmm`.
    method : {"ML", "REML"}

    Returns
    -------
    DenseFit
        ``beta, sigma, sigma_s, loglik``, by name or unpacked in that order.
    """
    _check_method(method)
    data = check_inputs(y, X, groups)
    K = indicator_matrix(data.codes, data.n_groups)

    def objective(log_sd):
        return -profiled_loglik_dense(data.y, data.X, K, *np.exp(log_sd), method=method)[0]

    sd0 = np.log(np.std(data.y) / np.sqrt(2.0))
    res = optimize.minimize(objective, x0=[sd0, sd0], method="Nelder-Mead",
                            options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 4000})
    sigma, sigma_s = np.exp(res.x)
    loglik, beta = profiled_loglik_dense(data.y, data.X, K, sigma, sigma_s, method=method)
    return DenseFit(beta, float(sigma), float(sigma_s), float(loglik))

