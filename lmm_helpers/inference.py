"""Inference for the random-intercept model: likelihood-ratio tests, the plain linear model, Wald and
profile-likelihood confidence intervals.

Everything follows lme4's conventions so that each number can be held against R:

- :func:`fit_lm` is R's ``lm`` with ``logLik(fit, REML = ...)``: the model with ``sigma_s = 0``.
- :func:`lrt` is ``anova(small, big)``; between an :class:`LMFit` and an :class:`~lmm_helpers.fit.LMMResult`
  with the same fixed effects it is the test of the random effect, whose null value ``sigma_s^2 = 0`` lies on
  the boundary of the parameter space, so the p-value comes from ``1/2 chi2_0 + 1/2 chi2_1``.
- :func:`wald_ci` is ``confint(fit, method = "Wald")`` (or a t-based version with Satterthwaite's df).
- :func:`profile_ci` is ``confint(profile(fit))`` for ``sigma_s`` and ``sigma``: the deviance profiled over
  the standard-deviation scale, turned into the signed square root ``zeta`` and cut at ``qnorm((1 + level) / 2)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import interpolate, optimize, stats

from .design import _numeric, check_inputs
from .fit import LMMResult
from .mixed import LMMFit
from .likelihood import GroupSums, _check_method, centre_sums, group_sums, profiled_deviance

__all__ = [
    "LMFit",
    "LRTResult",
    "ProfileInterval",
    "fit_lm",
    "lm_loglik",
    "lrt",
    "profile_ci",
    "profile_deviance",
    "spline_limits",
    "wald_ci",
]

LOG2PI = float(np.log(2.0 * np.pi))


def _check_level(level: float) -> float:
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise ValueError(f"level must be a number strictly between 0 and 1, got {level!r}")
    return float(level)


# ------------------------------------------------------------------------------------- the linear model
def lm_loglik(rss: float, n: int, p: int, logdet_xtx: float = 0.0, method: str = "ML") -> float:
    """Maximised log-likelihood of the linear model ``y = X beta + e``, as R's ``logLik(lm, REML=)``.

    Parameters
    ----------
    rss : float
        Residual sum of squares of the least-squares fit.
    n, p : int
        Number of observations and of columns of X.
    logdet_xtx : float
        ``log|X^T X|``, needed only for REML.
    method : {"ML", "REML"}
        ML: ``-n/2 (log 2 pi + log(RSS/n) + 1)``. REML (sigma^2 = RSS/(n-p)):
        ``-(n-p)/2 (log 2 pi + log(RSS/(n-p)) + 1) - 1/2 log|X^T X|``, the REML criterion of lme4 at
        ``sigma_s = 0``.
    """
    _check_method(method)
    if not rss > 0:
        raise ValueError(f"rss must be positive, got {rss}")
    m = n if method == "ML" else n - p
    if m <= 0:
        raise ValueError(f"n ({n}) must exceed p ({p}) for a REML log-likelihood")
    ll = -0.5 * m * (LOG2PI + np.log(rss / m) + 1.0)
    if method == "REML":
        ll -= 0.5 * logdet_xtx
    return float(ll)


@dataclass(frozen=True)
class LMFit:
    """The linear model without a random effect, fitted by least squares (R's ``lm``).

    Attributes
    ----------
    beta : ndarray (p,)
    sigma : float
        ``sqrt(RSS / n)`` under ML, ``sqrt(RSS / (n - p))`` under REML (what ``summary(lm)`` prints).
    loglik : float
        ``logLik(lm, REML = method == "REML")``.
    method : str
    names : list of str
    n_obs : int
    """

    beta: np.ndarray
    sigma: float
    loglik: float
    method: str
    names: list
    n_obs: int

    @property
    def n_params(self) -> int:
        """Fixed effects plus the residual variance."""
        return len(self.beta) + 1

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        return -2.0 * self.loglik + self.n_params * np.log(self.n_obs)


def fit_lm(y, X, method: str = "ML", *, names=None) -> LMFit:
    """Least-squares fit of ``y = X beta + e``: the random-intercept model with ``sigma_s = 0``.

    Parameters
    ----------
    y : array-like, shape (n,)
    X : array-like or DataFrame, shape (n, p), with its own intercept column
    method : {"ML", "REML"}
        Which log-likelihood to report (the estimates of beta are the same).
    names : list of str, optional
    """
    _check_method(method)
    if names is None and isinstance(X, pd.DataFrame):
        names = [str(c) for c in X.columns]
    y, X = _numeric("y", y), _numeric("X", X)
    if y.ndim != 1 or X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"y must be 1-D and X 2-D with as many rows; got shapes {y.shape} and {X.shape}")
    n, p = X.shape
    if not 0 < p < n:
        raise ValueError(f"X has {p} columns for {n} rows: need at least one column and fewer columns than rows")
    names = [f"x{j}" for j in range(p)] if names is None else [str(nm) for nm in names]
    if len(names) != p:
        raise ValueError(f"names has {len(names)} entries but X has {p} columns")
    Q, R = np.linalg.qr(X)
    diag = np.abs(np.diag(R))
    if diag.min() <= 1e-10 * diag.max():
        raise ValueError("X is rank-deficient (its columns are linearly dependent)")
    beta = np.linalg.solve(R, Q.T @ y)
    rss = float(np.sum((y - X @ beta) ** 2))
    logdet = 2.0 * float(np.sum(np.log(diag)))
    m = n if method == "ML" else n - p
    return LMFit(beta=beta, sigma=float(np.sqrt(rss / m)), method=method, names=names, n_obs=n,
                 loglik=lm_loglik(rss, n, p, logdet, method))


# ----------------------------------------------------------------------------------- likelihood ratio
@dataclass(frozen=True)
class LRTResult:
    """A likelihood-ratio test between two nested fits, laid out like R's ``anova(small, big)``.

    Attributes
    ----------
    statistic : float
        ``2 (loglik_big - loglik_small)`` (R's ``Chisq``).
    df : int
        Difference in the number of parameters.
    pvalue : float
        ``chi2(df)`` upper tail; on the boundary (a random effect against no random effect) half of it, the
        ``1/2 chi2_0 + 1/2 chi2_1`` mixture.
    boundary : bool
        Whether the mixture reference was used.
    method : str
        "ML" or "REML".
    labels : tuple of str
    npar, aic, bic, loglik : tuple of (small, big)
    """

    statistic: float
    df: int
    pvalue: float
    boundary: bool
    method: str
    labels: tuple
    npar: tuple
    aic: tuple
    bic: tuple
    loglik: tuple
    note: str = ""

    def summary(self) -> str:
        """The table of R's ``anova()``: npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq)."""
        width = max(len(s) for s in self.labels)
        head = f"{'':<{width}} {'npar':>4} {'AIC':>8} {'BIC':>8} {'logLik':>8} {'deviance':>8} " \
               f"{'Chisq':>7} {'Df':>2} {'Pr(>Chisq)':>10}"
        rows = [head]
        for i in range(2):
            row = (f"{self.labels[i]:<{width}} {self.npar[i]:>4d} {self.aic[i]:>8.3f} {self.bic[i]:>8.3f} "
                   f"{self.loglik[i]:>8.3f} {-2 * self.loglik[i]:>8.3f}")
            if i == 1:
                row += f" {self.statistic:>7.4f} {self.df:>2d} {self.pvalue:>10.4g}"
            rows.append(row)
        if self.note:
            rows.append(self.note)
        elif self.boundary:
            rows.append("p-value from the boundary mixture 1/2 chi2_0 + 1/2 chi2_1 (sigma_s^2 = 0 under H0)")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.summary()


def _describe(fit) -> tuple[int, int, str, list]:
    """Number of parameters, n, method and fixed-effect names of an LMFit, LMMResult or LMMFit."""
    if isinstance(fit, LMMFit):
        return fit.n_params, fit.n_obs, fit.method, list(fit.names)
    if isinstance(fit, LMMResult):
        return len(fit.beta) + 2, fit.n_obs, fit.method, list(fit.names)
    if isinstance(fit, LMFit):
        return fit.n_params, fit.n_obs, fit.method, list(fit.names)
    raise ValueError(f"expected an LMMFit (lmm), LMMResult (fit_lmm) or LMFit (fit_lm), got {type(fit).__name__}")


def _n_variances(fit) -> int:
    """Random-effect variances of a fit (0 for the linear model): the diagonal of lme4's relative covariance."""
    if isinstance(fit, LMMFit):
        return int(fit.varcorr.var2.isna().sum()) - 1  # the variance rows, less the residual's
    return 1 if isinstance(fit, LMMResult) else 0


def lrt(small, big, *, labels: tuple[str, str] = ("small", "big")) -> LRTResult:
    """Likelihood-ratio test of ``small`` (H0) against ``big``, the model that contains it.

    Two uses:

    - two ML fits of the random-intercept model with nested fixed effects (R: ``anova(m0, m1)``);
    - an :class:`LMFit` (no random effect) against an :class:`LMMResult` with the same fixed effects: the test of
      ``sigma_s^2 = 0``. The null value lies on the boundary of the parameter space, so the statistic follows
      ``1/2 chi2_0 + 1/2 chi2_1`` and the p-value is ``0.5 * chi2.sf(stat, 1)``. ML or REML (the same fixed
      effects make the REML likelihoods comparable);
    - two fits with the same fixed effects whose random parts are nested, the bigger an :class:`LMMFit` (e.g.
      ``(1 | g)`` against ``(x | g)``): the added variance is 0 under H0, again on the boundary. With one added
      variance and its ``df - 1`` covariances the p-value is from ``1/2 chi2_{df-1} + 1/2 chi2_df``; with more,
      ``chi2_df`` (as R's ``anova``), which is conservative, and ``note`` says so. Only the parameter counts are
      checked: that the random parts are nested is the caller's to ensure.

    Parameters
    ----------
    small, big : LMMFit, LMMResult or LMFit
        The null model and the alternative.
    labels : tuple of str
        Row labels of the table.

    Raises
    ------
    ValueError
        ``small``/``big`` fitted by different methods, to different numbers of observations, not nested by
        parameter count, or REML fits whose fixed effects differ (their restricted likelihoods belong to
        different error contrasts and cannot be compared).
    """
    k0, n0, m0, names0 = _describe(small)
    k1, n1, m1, names1 = _describe(big)
    if m0 != m1:
        raise ValueError(f"small is a {m0} fit and big a {m1} fit: compare fits of the same method (refit by ML)")
    if n0 != n1:
        raise ValueError(f"small has {n0} observations and big {n1}: the fits must use the same data")
    if k0 >= k1:
        raise ValueError(f"small has {k0} parameters and big {k1}: small must be nested in big (fewer parameters)")
    if m0 == "REML" and names0 != names1:
        raise ValueError(
            f"small and big are REML fits with different fixed effects ({names0} vs {names1}): REML likelihoods "
            "of different X are not comparable; refit both by ML (method='ML') to test fixed effects"
        )
    boundary = isinstance(small, LMFit) and isinstance(big, (LMMResult, LMMFit))
    if boundary and names0 != names1:
        raise ValueError(
            f"small (lm) and big (lmm) have different fixed effects ({names0} vs {names1}): the random-effect "
            "test needs the same X in both"
        )
    stat = max(2.0 * (big.loglik - small.loglik), 0.0)
    if boundary and big.singular:
        stat = 0.0  # a boundary fit is the linear model itself; the difference is rounding
    df = k1 - k0
    p = float(stats.chi2.sf(stat, df))
    added = _n_variances(big) - _n_variances(small)
    note = ""
    if names0 == names1 and added > 0 and not isinstance(big, LMMResult):
        # Random parts compared with the same fixed effects (an lmm fit on the big side): under H0 the added
        # variance is 0, on the boundary. One added variance (with its df - 1 covariances): the mixture
        # 1/2 chi2_{df-1} + 1/2 chi2_df (Stram and Lee 1994). More than one: the mixture has no such simple form;
        # the chi2_df p-value (R's anova) is conservative, and the table says so.
        boundary = True
        if added == 1:
            p = 0.5 * p + (0.5 * float(stats.chi2.sf(stat, df - 1)) if df > 1 else 0.0)
            note = (f"p-value from the boundary mixture 1/2 chi2_{df - 1} + 1/2 chi2_{df} (the added variance is 0 "
                    "under H0)")
        else:
            note = (f"boundary: {added} variances are 0 under H0; the chi2_{df} p-value is conservative (too large)")
    elif boundary:
        p *= 0.5
    return LRTResult(statistic=float(stat), df=int(df), pvalue=p, boundary=boundary, method=m0,
                     labels=tuple(labels), npar=(k0, k1), aic=(float(small.aic), float(big.aic)),
                     bic=(float(small.bic), float(big.bic)), loglik=(float(small.loglik), float(big.loglik)),
                     note=note)


# --------------------------------------------------------------------------------------------- Wald
def wald_ci(result: LMMResult, level: float = 0.95, use_t: bool = False) -> pd.DataFrame:
    """Wald confidence intervals for beta: ``beta +/- q * se``.

    Parameters
    ----------
    result : LMMResult
    level : float
        Coverage, e.g. 0.95.
    use_t : bool
        False: ``q`` the normal quantile, as lme4's ``confint(fit, method = "Wald")``.
        True: ``q`` the t quantile with each coefficient's Satterthwaite df (as lmerTest's tests).

    Returns
    -------
    DataFrame indexed by the coefficient names, columns ``lower`` and ``upper``.
    """
    if not isinstance(result, LMMResult):
        raise ValueError(f"result must be an LMMResult from fit_lmm, got {type(result).__name__}")
    level = _check_level(level)
    tail = (1.0 + level) / 2.0
    q = stats.t.ppf(tail, result.df) if use_t else stats.norm.ppf(tail)
    return pd.DataFrame({"lower": result.beta - q * result.bse, "upper": result.beta + q * result.bse},
                        index=result.names)


# ------------------------------------------------------------------------------------------ profiles
def _deviance_at(sums: GroupSums, method: str, sigma: float, sigma_s: float) -> float:
    """Deviance (ML) or REML criterion at given SDs, with beta at its GLS value: lme4's ``-2 log L``."""
    theta = (sigma_s / sigma) ** 2
    pt = profiled_deviance(theta, sums, method)
    m = sums.n if method == "ML" else sums.n - sums.p
    # pt.deviance has sigma^2 = r/m profiled out; put a general sigma^2 back.
    rest = pt.deviance - m * (1.0 + np.log(2.0 * np.pi * pt.r / m))
    return float(rest + m * np.log(2.0 * np.pi * sigma**2) + pt.r / sigma**2)


def _profile_point(sums: GroupSums, method: str, parameter: str, value: float, scale: float) -> float:
    """Minimum of the deviance over the other SD with ``parameter`` held at ``value``."""
    if parameter == "sigma_s":
        def f(log_sigma):
            return _deviance_at(sums, method, float(np.exp(log_sigma)), value)
        c = np.log(scale)
        res = optimize.minimize_scalar(f, bounds=(c - 12.0, c + 12.0), method="bounded",
                                       options={"xatol": 1e-10})
        return float(res.fun)
    # parameter == "sigma": minimise over sigma_s >= 0, the boundary included
    def g(log_s):
        return _deviance_at(sums, method, value, float(np.exp(log_s)))
    c = np.log(scale)
    res = optimize.minimize_scalar(g, bounds=(c - 25.0, c + 12.0), method="bounded", options={"xatol": 1e-10})
    return float(min(res.fun, _deviance_at(sums, method, value, 0.0)))


def profile_deviance(y, X, groups, parameter: str, values, method: str = "ML") -> np.ndarray:
    """The profiled deviance at each of ``values`` of one standard deviation.

    Parameters
    ----------
    y, X, groups
        As for :func:`lmm_helpers.fit_lmm`.
    parameter : {"sigma_s", "sigma"}
        The SD held fixed; the other SD and beta are optimised.
    values : array-like of float
        Values of that SD (``sigma_s`` may be 0, ``sigma`` must be positive).
    method : {"ML", "REML"}

    Returns
    -------
    ndarray: ``min over the rest of -2 log L`` at each value.
    """
    _check_method(method)
    if parameter not in ("sigma_s", "sigma"):
        raise ValueError(f"parameter must be 'sigma_s' or 'sigma', got {parameter!r}")
    values = np.atleast_1d(np.asarray(values, dtype=float))
    low = 0.0 if parameter == "sigma_s" else np.finfo(float).tiny
    if np.any(~np.isfinite(values)) or np.any(values < low):
        raise ValueError(f"values of {parameter} must be finite and {'>= 0' if low == 0 else '> 0'}")
    data = check_inputs(y, X, groups)
    sums = centre_sums(group_sums(data.y, data.X, data.codes, data.n_groups))[0]  # as fit_lmm: same criterion
    scale = float(np.std(data.y)) or 1.0
    return np.array([_profile_point(sums, method, parameter, v, scale) for v in values])


@dataclass(frozen=True)
class ProfileInterval:
    """A profile-likelihood confidence interval for one standard deviation, with the profile itself.

    Attributes
    ----------
    parameter : str
        ``"sigma_s"`` or ``"sigma"``.
    estimate, lower, upper : float
        The estimate and the interval (``lower`` is 0.0 when the profile at 0 stays under the cutoff; ``upper``
        is inf when the profile levels off under it, as a REML profile of ``sigma_s`` can).
    level : float
    values, zeta : ndarray
        A grid of the parameter and the signed root ``zeta = sign(v - estimate) sqrt(dev(v) - dev_min)``
        there, for plotting. The interval is where ``|zeta| <= cutoff``.
    cutoff : float
        ``qnorm((1 + level) / 2)``.
    """

    parameter: str
    estimate: float
    lower: float
    upper: float
    level: float
    cutoff: float
    values: np.ndarray
    zeta: np.ndarray


def profile_ci(y, X, groups, level: float = 0.95, method: str = "ML", *, n_grid: int = 41) -> dict:
    """Profile-likelihood confidence intervals for ``sigma_s`` and ``sigma``, as lme4's ``confint(profile(fit))``.

    For each SD the deviance is minimised over everything else with that SD held fixed; the signed square root
    ``zeta(v) = sign(v - v_hat) sqrt(dev(v) - dev(v_hat))`` is then cut at ``+/- qnorm((1 + level)/2)``. Where
    ``zeta`` never falls to the lower cutoff before ``sigma_s = 0`` (the likelihood at the boundary is still
    plausible), the lower limit is 0, as lme4 reports. lme4 interpolates a spline through its profile points;
    here the crossings are solved exactly, so the two agree to the spline's accuracy (about 1e-5 relative).

    Parameters
    ----------
    y, X, groups
        As for :func:`lmm_helpers.fit_lmm`.
    level : float
        Coverage, e.g. 0.95.
    method : {"ML", "REML"}
        The criterion to profile. lme4's ``confint(profile(fit))`` profiles the ML deviance (on a REML fit too),
        so "ML" reproduces R.
    n_grid : int
        Points of the returned profile curves, spread over a little more than each interval.

    Returns
    -------
    dict with keys ``"sigma_s"`` and ``"sigma"``, each a :class:`ProfileInterval`.
    """
    from .fit import fit_lmm  # the estimate whose profile we take

    level = _check_level(level)
    _check_method(method)
    if not (isinstance(n_grid, (int, np.integer)) and n_grid >= 3):
        raise ValueError(f"n_grid must be an integer >= 3, got {n_grid!r}")
    fit = fit_lmm(y, X, groups, method)
    data = check_inputs(y, X, groups)
    sums = centre_sums(group_sums(data.y, data.X, data.codes, data.n_groups))[0]  # as fit_lmm: same criterion
    dev_min = fit.deviance
    cutoff = float(stats.norm.ppf((1.0 + level) / 2.0))
    out = {}
    for name, est, other in (("sigma_s", fit.sigma_s, fit.sigma), ("sigma", fit.sigma, fit.sigma_s)):
        scale = max(other, est, 1e-300)

        def zeta(v, est=est, name=name, scale=scale):
            d = _profile_point(sums, method, name, v, scale) - dev_min
            return float(np.sign(v - est) * np.sqrt(max(d, 0.0)))

        # upper: step out until zeta passes the cutoff, then solve zeta = cutoff. A REML profile of sigma_s can
        # level off below the cutoff (groups that leave no between-group degrees of freedom once X is fitted):
        # then the data bound sigma_s only from below and the upper limit is infinite.
        hi = max(est, 1e-8 * scale) * 2.0
        while zeta(hi) < cutoff and hi < 1e8 * scale:
            hi *= 2.0
        if zeta(hi) < cutoff:
            upper = float("inf")
        else:
            upper = optimize.brentq(lambda v: zeta(v) - cutoff, est, hi, xtol=1e-12 * hi, rtol=1e-13)
        # lower: sigma_s may stay inside the interval all the way to 0
        floor = 0.0 if name == "sigma_s" else est * 1e-8
        if est == 0.0 or zeta(floor) > -cutoff:
            lower = 0.0 if name == "sigma_s" else floor
        else:
            lower = optimize.brentq(lambda v: zeta(v) + cutoff, floor, est, xtol=1e-12 * est, rtol=1e-13)
        top = upper if np.isfinite(upper) else 10.0 * max(est, scale)  # the plotted stretch of an open profile
        span = top - lower
        start = lower - 0.15 * span
        start = max(start, 0.5 * lower) if name == "sigma" else max(start, 0.0)  # sigma's profile dives near 0
        grid = np.linspace(start, top + 0.15 * span, n_grid)
        grid = np.unique(np.append(grid, est))
        out[name] = ProfileInterval(parameter=name, estimate=float(est), lower=float(lower), upper=float(upper),
                                    level=level, cutoff=cutoff, values=grid,
                                    zeta=np.array([zeta(v) for v in grid]))
    return out


def spline_limits(values, zeta, cutoff: float) -> tuple[float, float]:
    """Interval limits read off a profile the way lme4's ``confint(profile(fit))`` does it.

    lme4 fits a natural interpolating cubic spline of ``zeta`` against the parameter through its profile points
    (``splines::interpSpline``), inverts it into a cubic Hermite spline of the parameter against ``zeta`` with
    the same knots and reciprocal slopes (``backSpline``), and evaluates that at ``-cutoff`` and ``+cutoff``.
    A lower limit of a standard deviation whose profile never reaches ``-cutoff`` (the boundary 0 is inside
    the interval) is 0.

    Parameters
    ----------
    values : array-like of float
        Profile points of one standard deviation (any order, at least 3, distinct).
    zeta : array-like of float
        The signed root of the profiled deviance at each point, increasing with ``values``.
    cutoff : float
        ``qnorm((1 + level) / 2)``, e.g. 1.959964 for 95%.

    Returns
    -------
    (lower, upper)
        NaN for a limit the profile points do not reach (lme4 would extrapolate; compute more points).
    """
    v = np.asarray(values, dtype=float)
    z = np.asarray(zeta, dtype=float)
    if v.ndim != 1 or v.shape != z.shape or len(v) < 3:
        raise ValueError("values and zeta must be 1-D arrays of the same length, at least 3")
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    order = np.argsort(v)
    v, z = v[order], z[order]
    if np.any(np.diff(v) <= 0) or np.any(np.diff(z) <= 0):
        raise ValueError("zeta must increase strictly with values (a monotone profile)")
    forward = interpolate.CubicSpline(v, z, bc_type="natural")
    backward = interpolate.CubicHermiteSpline(z, v, 1.0 / forward(v, 1))
    upper = float(backward(cutoff)) if z[-1] >= cutoff else float("nan")
    lower = float(backward(-cutoff)) if z[0] <= -cutoff else (0.0 if v[0] == 0.0 else float("nan"))
    return lower, upper
