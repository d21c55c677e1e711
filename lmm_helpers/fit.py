"""Fitting the random-intercept model ``y = X beta + K u + e`` by ML or REML, and the result object."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .design import _aliased, _check_exact_fit, _exactly, check_inputs, check_rank, indicator_matrix
from .rformat import abbreviate, format_named, format_num, format_pval, format_table, zapsmall
from .likelihood import (
    Centring,
    GroupSums,
    ProfiledPoint,
    _check_method,
    centre_sums,
    group_sums,
    one_blas_thread,
    pool_by_size,
    profiled_criterion,
    profiled_deviance,
    profiled_loglik_dense,
)

__all__ = ["ConvergenceWarning", "DenseFit", "IdentifiabilityWarning", "LMMResult", "LMMWarning",
           "SingularFitWarning", "fit_group_sums", "fit_lmm", "fit_lmm_dense", "satterthwaite_df"]

# theta = sigma_s^2 / sigma^2 is scale-free, so one fixed grid brackets the optimum for any data.
_THETA_GRID = np.concatenate([[0.0], np.logspace(-8.0, 8.0, 17)])
# The search steps past the grid up to here: data within 1e+-100 (check_inputs) whose within-group residual is
# more than rounding (_check_design) have their optimum far below it (theta at most of order n / eps^2).
_THETA_MAX = 1e60


class LMMWarning(UserWarning):
    """A fit of :func:`fit_lmm` that came back flagged: see :class:`ConvergenceWarning`, :class:`IdentifiabilityWarning`.

    Each is also said on the last lines of :meth:`LMMResult.summary`, as lme4 notes a singular fit there.
    """


class ConvergenceWarning(LMMWarning):
    """The optimum of theta was not located to full precision (``LMMResult.converged`` is False)."""


class SingularFitWarning(LMMWarning):
    """A boundary (singular) fit of :func:`lmm_helpers.lmm`: a variance estimated as 0 or a correlation as +-1.

    A result, not an error (lme4's ``isSingular``); :func:`fit_lmm` says it in ``summary()`` and ``singular`` only.
    """


class IdentifiabilityWarning(LMMWarning):
    """A parameter is not determined by the data (``LMMResult.identified`` is False).

    REML with an X whose columns span the group indicators (a fixed effect per group, or group-level covariates
    as many as the groups allow): no between-group degrees of freedom are left, the REML criterion does not
    depend on ``sigma_s`` at all, and ``sigma_s`` with every standard error that depends on it is NaN.
    """


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
    identified : bool
        False when the data leave ``sigma_s`` undetermined (REML with X spanning the group indicators, see
        :class:`IdentifiabilityWarning`): then ``sigma_s``, ``theta`` and the random effects are NaN, and so are the
        standard errors, t, df and p of the coefficients whose variance depends on ``sigma_s``; those that do not
        keep exact t-tests on ``n - p`` df. Defaults to True.

    A fit that did not converge or is not identified is announced by a warning (:class:`ConvergenceWarning`,
    :class:`IdentifiabilityWarning`) and on the last lines of :meth:`summary`, next to lme4's boundary note.
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
    identified: bool = True

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

        Returns
        -------
        str
            lme4's layout; its last lines note, where they apply, a boundary (singular) fit, a fit that did not
            converge, and a ``sigma_s`` that the data do not identify.
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
        var, sd = ([v.replace("nan", "NaN") for v in col] for col in (var, sd))  # R prints NaN
        lines += ["", "Random effects:"]
        lines += format_table(["", ""], ["Groups", "Name", "Variance", "Std.Dev."],
                              [[group, "(Intercept)", var[0], sd[0]], ["Residual", "", var[1], sd[1]]], right=False)
        lines.append(f"Number of obs: {self.n_obs}, groups:  {group}, {self.n_groups}")
        lines += ["", "Fixed effects:"]
        lines += _coef_table(self.names, self.beta, self.bse, self.df, self.tvalues, self.pvalues)
        if len(self.beta) > 1:
            corr = self.vcov / np.outer(self.bse, self.bse)
            cols = [abbreviate(n) for n in self.names[:-1]]
            cells = [[f"{corr[i, j]:.3f}".replace("nan", "NaN") if j < i else "" for j in range(len(cols))]
                     for i in range(1, len(self.names))]
            lines += ["", "Correlation of Fixed Effects:"] + format_table(self.names[1:], cols, cells)
        notes = []
        if self.singular:
            notes.append("boundary (singular) fit: the random-intercept variance is estimated as 0")
        if not self.converged:
            notes.append("convergence failed: the optimum of sigma_s/sigma was not located to full precision, "
                         "so the estimates may be off (converged is False)")
        if not self.identified:
            notes.append("sigma_s is not identified: X spans the group indicators, no between-group df are left "
                         "and the REML criterion does not depend on sigma_s (NaN where it matters)")
        if notes:
            lines += [""] + notes
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
        marks = [next((s for cut, s in _STARS if v <= cut), " ").ljust(3) for v in p]  # NaN: no star
        cols.append(marks)
        header.append("")
    cells = [["NaN" if x.strip() == "nan" else x for x in (c[i] for c in cols)] for i in range(n)]  # R's NaN
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
                f"sigma_s/sigma exceeds {np.sqrt(_THETA_MAX):.0e}: y's variation within groups, once X is fitted, "
                "is too small beside its variation between groups to estimate the residual variance"
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
    if not 1e-100 < point.sigma2 < 1e100:
        # sigma^2 cubed would underflow or overflow (y in units of 1e-99: ZeroDivisionError). The df does not depend
        # on y's units, so measure y in units of sigma (only then: ordinary fits keep their bits).
        unit = point.sigma2
        point = replace(point, sigma2=1.0, r=point.r / unit, resid_means=point.resid_means / np.sqrt(unit))
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
            names: list, labels: pd.Index, resid: Callable | None, identified: bool = True) -> LMMResult:
    """The result in the data's own coordinates, from the fit to the centred sums (see :func:`centre_sums`).

    ``resid(beta, blups, sigma)`` gives the scaled residuals' quantiles (a pass over the data); None leaves them
    NaN (the caller computes them later, as the out-of-core route does).

    ``identified=False`` (REML, X spanning the group indicators; ``point`` is then at theta = 0, where the flat
    criterion is as good as anywhere): ``sigma_s``, theta and the BLUPs are NaN, and so are the SE, t, df and p of
    each coefficient whose variance depends on ``sigma_s``. A coefficient ``c^T beta`` whose least-squares
    weights ``a = X (X^T X)^-1 c`` sum to zero in every group has variance ``sigma^2 |a|^2`` whatever
    ``sigma_s`` is, and its t has an exact t distribution on ``n - p`` df (the residuals are free of the
    random effects, which X absorbs). The residuals are then those of X alone (``resid`` gets zero BLUPs).
    """
    p, n = len(names), sums.n
    sigma2 = point.sigma2
    singular = point.theta == 0.0
    T = centring.T
    beta = T @ point.beta + centring.offset
    L = np.linalg.cholesky(point.A)
    Linv = np.linalg.solve(L, np.eye(len(beta)))  # A^-1 = L^-T L^-1 from the Cholesky factor, no general inverse
    LinvT = Linv @ T.T
    with np.errstate(over="ignore"):
        vcov = sigma2 * (LinvT.T @ LinvT)
    var = np.diag(vcov)
    for j in np.flatnonzero(~((var > 0) & np.isfinite(var))):  # y in 1e-99 units and a column in 1e99 units
        raise ValueError(f"X: column {names[j]!r} and y are in units so far apart that the variance of its "
                         f"coefficient ({'under 1e-308' if var[j] == 0 else 'over 1e308'}) does not fit in double "
                         "precision; rescale one of them (change its units)")
    bse = np.sqrt(var)
    tvalues = beta / bse
    if identified:
        df = satterthwaite_df(sums, point, method, T)
    else:
        # |K^T a|^2 = sum_g (n_g xbar_g . A^-1 c)^2 against |a|^2 = c^T A^-1 c (A = X^T X at theta = 0)
        w = np.linalg.solve(point.A, T.T)  # A^-1 c for each coefficient's contrast c (a row of T)
        between = np.sum((sums.counts[:, None] * (sums.means[:, :p] @ w)) ** 2, axis=0)
        within = np.einsum("ij,ji->i", T, w)
        free = between <= 1e-10 * sums.counts.max() * within
        df = np.where(free, float(n - p), np.nan)
        vcov = np.where(np.outer(free, free), vcov, np.nan)
        bse = np.where(free, bse, np.nan)
        tvalues = np.where(free, tvalues, np.nan)
    pvalues = 2.0 * stats.t.sf(np.abs(tvalues), df)
    loglik = -0.5 * point.deviance
    k = p + 2
    blups = point.theta * point.d * point.resid_means if identified else np.full(sums.n_groups, np.nan)
    sigma = float(np.sqrt(sigma2))
    scaled = (np.full(5, np.nan) if resid is None
              else resid(beta, blups if identified else np.zeros(sums.n_groups), sigma))
    return LMMResult(
        beta=beta, sigma=float(np.sqrt(sigma2)),
        sigma_s=float(np.sqrt(point.theta * sigma2)) if identified else float("nan"),
        loglik=loglik, converged=converged, singular=singular and identified, method=method,
        theta=point.theta if identified else float("nan"),
        bse=bse, tvalues=tvalues, df=df, pvalues=pvalues, vcov=vcov,
        aic=-2.0 * loglik + 2 * k, bic=-2.0 * loglik + k * np.log(n),
        random_effects=pd.Series(blups, index=labels, name="(Intercept)"),
        names=list(names), n_obs=n, n_groups=sums.n_groups, scaled_resid_quantiles=scaled, identified=identified,
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
        Names of the columns of X (taken from a DataFrame's columns by default), all different.

    Rows of y, X and groups are matched by position: pandas inputs must share one index (else ValueError; they
    are not aligned by label), and a masked array must have no masked values (drop those rows first).

    Returns
    -------
    LMMResult

    Raises
    ------
    ValueError
        For bad input: see :func:`lmm_helpers.design.check_inputs`; also a y that X fits exactly, and X and the
        groups together leaving no residual degrees of freedom (the likelihood is unbounded).

    Warns
    -----
    ConvergenceWarning
        The optimum was not located to full precision (``converged`` is False).
    IdentifiabilityWarning
        REML with X spanning the group indicators: ``sigma_s`` is not identified (``identified`` is False).
    """
    _check_method(method)
    data = check_inputs(y, X, groups, names, rank=False)

    def resid(beta: np.ndarray, blups: np.ndarray, sigma: float) -> np.ndarray:
        scaled = (data.y - data.X @ beta - blups[data.codes]) / sigma
        return _quantiles(scaled, np.array([0.0, 0.25, 0.5, 0.75, 1.0]))

    sums = group_sums(data.y, data.X, data.codes, data.n_groups)
    return _fit_sums(sums, data.names, data.labels, method, resid)


def fit_group_sums(sums: GroupSums, names: list, labels: pd.Index, method: str = "ML",
                   resid: Callable | None = None) -> LMMResult:
    """:func:`fit_lmm` from the sums alone: what it does after its one pass over the data.

    The out-of-core route (:mod:`lmm_helpers.chunked`) gathers the same :class:`GroupSums` chunk by chunk and
    fits them here, so both routes run the same optimiser on the same numbers, and the same checks.

    Which checks need the data: every check of X and y that :func:`fit_lmm` makes after :func:`check_inputs`
    (rank, a constant column beside the intercept, an exact fit, no residual df, no within-group variation, REML
    identifiability) reads only these sums (:func:`_check_design`), so it runs here on the reduced sums. What
    needs the values themselves is :func:`check_inputs` (shapes, NaN/inf, magnitudes, labels): in memory
    :func:`fit_lmm` runs it on all the data; the Dask route runs the per-value checks (NaN/inf, magnitudes) on
    each chunk as it builds its columns, which is the same check since they look at one value at a time.

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

    Raises
    ------
    ValueError
        As :func:`fit_lmm`, for the checks made from the sums.

    Warns
    -----
    IdentifiabilityWarning, ConvergenceWarning
        As :func:`fit_lmm`.
    """
    return _fit_sums(sums, names, labels, method, resid)


def _fit_sums(sums: GroupSums, names: list, labels: pd.Index, method: str, resid: Callable | None) -> LMMResult:
    """The body of :func:`fit_lmm` and :func:`fit_group_sums` (their warnings point at their caller's line)."""
    _check_method(method)
    centred, centring = centre_sums(sums)
    between_df = _check_design(centred, centring, names)
    if method == "REML" and between_df == 0:
        result = _result(centred, profiled_deviance(0.0, centred, method), method, True, centring, names, labels,
                         resid, identified=False)
        warnings.warn("sigma_s is not identified: the columns of X span the group indicators, so no between-group "
                      "degrees of freedom are left and the REML criterion does not depend on sigma_s; sigma_s and "
                      "the standard errors that depend on it are NaN (lme4 warns that the Hessian is singular). "
                      "Drop the group-level columns or fit by ML", IdentifiabilityWarning, stacklevel=3)
        return result
    point, converged = _minimise_theta(centred, method)
    result = _result(centred, point, method, converged, centring, names, labels, resid)
    if not converged:
        warnings.warn("fit_lmm did not converge: the optimum of sigma_s/sigma was not located to full precision, "
                      "so the estimates may be off", ConvergenceWarning, stacklevel=3)
    return result


def _check_design(sums: GroupSums, centring: Centring, names: list) -> int:
    """Refuse a rank-deficient X, a y that X fits exactly, and a model with no residual df; return the between df.

    The rank comes from ``X_c^T X_c`` (same rank as X, free of the columns' offsets). A column that centring
    leaves with less than 1e-7 of its length (R's ``lm`` tolerance) is, to the digits the data carry, a multiple
    of the intercept column. y is fitted exactly when the least-squares residual SD is under 16 eps of y's root
    mean square (:func:`lmm_helpers.design._check_exact_fit`).

    X and the group indicators K together: ``rank([X, K]) = G + r_w``, with ``r_w`` the rank of X's within-group
    cross-products (columns constant within every group add nothing). The residual df left once both are fitted
    are ``n - G - r_w``; at 0 (for example p + G - 1 >= n with a within-group covariate per spare row) every y is
    fitted exactly by X and the random intercepts, sigma -> 0 sends the likelihood to infinity, and the fit is
    refused. lme4 checks only ``n > G`` ("number of observations <= number of random effects") and on such data
    returns a spurious fit with a convergence warning. The same holds for a y without residual variation within
    groups once X's within part is fitted (y constant within every group, say).

    Returns
    -------
    int
        The between-group df ``G + r_w - p`` (``rank([X, K]) - rank(X)``): 0 when X spans the group indicators,
        which leaves ``sigma_s`` unidentified under REML.
    """
    p, k, n, G = sums.p, centring.intercept, sums.n, sums.n_groups
    raw = np.diag(sums.within) + sums.counts @ (sums.means + centring.shift) ** 2  # |[X, y]_j|^2, uncentred
    M = sums.within + (sums.means.T * sums.counts) @ sums.means  # [X_c, y_c]^T [X_c, y_c]
    xtx = M[:p, :p]
    if k is not None:
        for j in np.flatnonzero((np.diag(xtx) <= 1e-14 * raw[:p]) & (raw[:p] > 0)):
            if j != k:
                raise ValueError(f"X is rank-deficient: column {names[j]!r} is constant, a multiple of the "
                                 f"intercept column {names[k]!r}")
    check_rank(xtx, names)
    z = np.linalg.solve(np.linalg.cholesky(xtx), M[:p, p])
    _check_exact_fit(M[p, p] - z @ z, raw[p], M[p, p])
    W = sums.within
    aliased = _aliased(W[:p, :p], np.sqrt(np.diag(xtx)))  # X's columns with no variation of their own in groups
    kept = [j for j in range(p) if j not in aliased]
    resid_df = n - G - len(kept)
    if resid_df <= 0:
        raise ValueError(
            f"X and the {G} groups fit all {n} observations exactly (rank of [X, group indicators] = {G + len(kept)} "
            f">= n): no residual degrees of freedom are left, so the likelihood is unbounded as sigma -> 0. "
            "Use fewer covariates that vary within groups, or more observations"
        )
    zw = np.linalg.solve(np.linalg.cholesky(W[np.ix_(kept, kept)]), W[kept, p]) if kept else np.zeros(0)
    if _exactly(W[p, p] - zw @ zw, raw[p], W[p, p], per_value=2.0):
        raise ValueError("y has no residual variation within groups once X is fitted (y - X beta is constant within "
                         "every group): the residual variance is zero and the likelihood is unbounded")
    return G + len(kept) - p


class DenseFit(NamedTuple):
    """What :func:`fit_lmm_dense` finds: a tuple ``(beta, sigma, sigma_s, loglik)`` with those names."""

    beta: np.ndarray
    sigma: float
    sigma_s: float
    loglik: float


_DENSE_MAX_N = 2000


def fit_lmm_dense(y, X, groups, method: str = "ML") -> DenseFit:
    """The from-scratch route of notebook 06 for any data: build the n x n Sigma and maximise numerically.

    Optimises over ``(log sigma, log sigma_s)`` with beta at its GLS value; O(n^3) per evaluation, so it refuses
    more than 2000 rows (at n = 1000 it already takes minutes; :func:`fit_lmm` fits the same model in O(n)). For
    teaching and as a cross-check of :func:`fit_lmm`; cannot reach a boundary fit exactly.

    The hundreds of evaluations each make a handful of LAPACK calls on n x n matrices. OpenBLAS splits each call
    over all cores, which gains nothing at this size and, on a machine whose cores are busy, makes every call
    wait for a core to come free: sleepstudy (n = 180) by ML took 30-64 s with the default threads on 2 busy
    cores against 0.3 s with one. The optimisation therefore runs with BLAS limited to one thread
    (:func:`lmm_helpers.likelihood.one_blas_thread`), restored on return.

    Parameters
    ----------
    y, X, groups
        As for :func:`fit_lmm`.
    method : {"ML", "REML"}

    Returns
    -------
    DenseFit
        ``beta, sigma, sigma_s, loglik``, by name or unpacked in that order.

    Raises
    ------
    ValueError
        As :func:`fit_lmm` (bad input, an exact fit, no residual df), and for more than 2000 rows.

    Warns
    -----
    IdentifiabilityWarning
        REML with X spanning the group indicators: the sigma_s found is arbitrary.
    """
    _check_method(method)
    data = check_inputs(y, X, groups)
    if data.n > _DENSE_MAX_N:
        raise ValueError(f"y has n = {data.n} rows: the dense route builds n x n matrices at O(n^3) per evaluation "
                         f"and is limited to {_DENSE_MAX_N} rows; use fit_lmm, which fits the same model in O(n)")
    sums, centring = centre_sums(group_sums(data.y, data.X, data.codes, data.n_groups))
    if _check_design(sums, centring, data.names) == 0 and method == "REML":
        warnings.warn("sigma_s is not identified: the columns of X span the group indicators, so the REML "
                      "criterion does not depend on sigma_s and the value found is arbitrary",
                      IdentifiabilityWarning, stacklevel=2)
    K = indicator_matrix(data.codes, data.n_groups)

    def objective(log_sd):
        return -profiled_loglik_dense(data.y, data.X, K, *np.exp(log_sd), method=method)[0]

    sd0 = np.log(np.std(data.y) / np.sqrt(2.0))
    with one_blas_thread():
        res = optimize.minimize(objective, x0=[sd0, sd0], method="Nelder-Mead",
                                options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 4000})
        sigma, sigma_s = np.exp(res.x)
        loglik, beta = profiled_loglik_dense(data.y, data.X, K, sigma, sigma_s, method=method)
    return DenseFit(beta, float(sigma), float(sigma_s), float(loglik))
