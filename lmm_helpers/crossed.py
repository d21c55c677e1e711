"""``lmm`` with several grouping factors, crossed or nested: lme4's general algorithm (:mod:`lmm_helpers.pls`).

:func:`lmm_helpers.lmm` decides: one grouping factor goes to its per-group routes (``fit_lmm`` or
:mod:`lmm_helpers.slopes`), two or more come here. The random terms are put in lme4's order (decreasing number of
levels, formula order among equals), theta is optimised within lme4's bounds (0 below every diagonal entry of each
template), and the result is the same :class:`lmm_helpers.mixed.LMMFit` as for one factor, with Satterthwaite's
df computed as lmerTest does (numDeriv's Richardson Hessian of the deviance in (theta, sigma)).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import numpy as np
import pandas as pd
from scipy import optimize
from threadpoolctl import threadpool_limits

from .design import _check_exact_fit, _check_magnitude, _exactly
from .fit import _quantiles
from .formula import grouping_factor
from .mixed import (_HESS_TOL, _OFFSET_SDS, _SINGULAR_TOL, LMMFit, _centred, _check_levels, _check_rank, _check_z,
                    _richardson, _varcorr, _warn_fit)
from .pls import ReTerm, _term_matrix, conditional_modes, deviance_theta_sigma, pls_evaluate, pls_problem
from .slopes import BlockSums, block_sums, evaluate, lambda_index

__all__ = ["crossed_criterion", "fit_crossed", "theta_bounds"]


def theta_bounds(sizes: list) -> tuple[np.ndarray, list]:
    """lme4's start (each template the identity) and bounds (diagonal entries >= 0) for terms of sizes q_k."""
    rows, cols = lambda_index(list(sizes))
    diag = rows == cols
    return np.where(diag, 1.0, 0.0), [(0.0, None) if d else (None, None) for d in diag]


def _unique_names(names: list) -> list:
    """R's ``make.unique``: the second ``g`` becomes ``g.1``, the third ``g.2``."""
    seen: dict = {}
    out = []
    for nm in names:
        k = seen.get(nm, 0)
        out.append(nm if k == 0 else f"{nm}.{k}")
        seen[nm] = k + 1
    return out


def _problem(model, data: pd.DataFrame) -> tuple[list, list, object]:
    """Each term's grouping factor and Z (lme4's checks), in lme4's order, and the PLS problem they make."""
    formula, y, names, X = model.formula, model.y, model.names, model.X
    n = len(y)
    built = []
    for t, znames, zc in zip(model.terms, model.znames, model.z_cols):
        codes, labels = grouping_factor(data, t)
        _check_levels((t,), [len(znames)], len(labels), n)
        built.append((t, codes, labels, list(znames), np.column_stack(zc)))
    order = sorted(range(len(built)), key=lambda k: -len(built[k][2]))  # stable: formula order among equals
    built = [built[k] for k in order]
    sizes = [len(b[3]) for b in built]
    if len(names) + sum(q * (q + 1) // 2 for q in sizes) + 1 > n:
        raise ValueError(f"formula {formula!r}: more parameters than observations ({n})")
    # y - mean(y) when X has an intercept (model.y_shift, as lmm's one-factor route): with y far from 0 the
    # uncentred [X y]'[X y] - (Schur terms) loses its digits (Penicillin's diameter + 1e6 moved theta by 20%).
    y_c = y - model.y_shift if model.y_shift else y
    prob = pls_problem([ReTerm(codes=b[1], n_levels=len(b[2]), Z=b[4]) for b in built], X, y_c)
    _check_problem(model, built, prob)
    return built, sizes, prob


# Above this many flops (n (p + q)^2, about a second here) or entries (n (p + q), 80 MB) the dense check of
# rank([X, Z]) and of y's residual on [X, Z] is skipped.
_DENSE_CHECK_FLOPS, _DENSE_CHECK_SIZE = 2e9, 1e7


def _check_crossed(model) -> None:
    """The data checks of the one-factor routes (``mixed._check_data``) that can be made before anything is
    squared: magnitudes of y, of X's and of Z's columns (``design._check_magnitude``), and a constant y."""
    _check_magnitude("data: the response", model.y)
    for nm, col in [*zip(model.names, model.x_cols),
                    *((nm, c) for bn, bc in zip(model.znames, model.z_cols) for nm, c in zip(bn, bc))]:
        _check_magnitude(f"data: column {nm!r}", col)
    if np.all(model.y == model.y[0]):
        raise ValueError(f"the response is constant (every value is {model.y[0]:g}): it has no variation, so "
                         "nothing is left for the residual variance")
    for factor in dict.fromkeys(t.factor for t in model.terms):  # mixed._check_data's offset rule, per factor
        which = [k for k, t in enumerate(model.terms) if t.factor == factor]
        pairs = [(nm, c, model.terms[k]) for k in which for nm, c in zip(model.znames[k], model.z_cols[k])]
        if not any(nm == "(Intercept)" for nm, _, _ in pairs):
            continue
        for nm, col, t in pairs:
            sd, mean = float(np.std(col)), float(np.mean(col))
            if nm != "(Intercept)" and abs(mean) > _OFFSET_SDS * sd > 0:
                raise ValueError(
                    f"random term {t.text}: column {nm!r} has mean {mean:.6g}, {abs(mean) / sd:.3g} SDs from 0, "
                    f"where the random intercept of {factor!r} is defined: intercept and slope are then nearly "
                    "collinear in every level and cannot be estimated to any accuracy (more than "
                    f"{_OFFSET_SDS:g} SDs is refused). Centre it (subtract its mean, or a round value near it) "
                    "and refit")


def _check_problem(model, built: list, prob) -> None:
    """The checks that need cross-products (after :func:`_check_crossed`): X's rank, each grouping factor's
    random-effect columns told apart (``mixed._check_z``, the factor's terms together), a y that X fits exactly,
    and residual degrees of freedom left once X and every random effect are fitted.

    The last is ``mixed._check_data``'s argument with all of Z: when ``n <= rank([X, Z])``, or y lies in the span
    of ``[X, Z]``, sigma -> 0 (with theta -> infinity) sends the ML likelihood to infinity. rank([X, Z]) <= p + q
    (q random effects), so with ``n > p + q`` only the second can happen; both are decided by one dense
    least-squares solve of y on ``[X, Z]`` with unit-length columns (SVD rank, numpy's tolerance), cheap for
    the sizes where it matters (Penicillin: 144 x 31) and skipped above ``_DENSE_CHECK_FLOPS`` or
    ``_DENSE_CHECK_SIZE`` (InstEval: 73421 x 4100, where n exceeds p + q by a factor 18, so the rank cannot reach
    n); above them a y that X and the random effects fit exactly is not caught, nor, with n <= p + q, a full rank.
    """
    names, p, n = model.names, prob.p, prob.n
    _check_rank(prob.sums1, names)
    by_factor: dict = {}
    for b in built:
        by_factor.setdefault(b[0].factor, []).append(b)
    for factor, bs in by_factor.items():
        znames = [nm for b in bs for nm in b[3]]
        cols = [b[4][:, j] for b in bs for j in range(b[4].shape[1])]
        sums = block_sums(cols + [model.y], list(range(len(cols))), [len(cols)], bs[0][1], len(bs[0][2]))
        _check_z(sums, znames, SimpleNamespace(factor=factor, terms=tuple(b[0] for b in bs)))
    for i, bi in enumerate(built):  # two factors that group the rows alike: their shared columns are one
        for bj in built[i + 1:]:
            G, shared = len(bi[2]), [nm for nm in bi[3] if nm in bj[3]]
            if (bi[0].factor != bj[0].factor and shared and len(bj[2]) == G
                    and np.unique(bi[1] * G + bj[1]).size == G):
                raise ValueError(f"random terms {bi[0].text} and {bj[0].text}: grouping factors {bi[0].factor!r} "
                                 f"and {bj[0].factor!r} group the rows identically, so their random effects for "
                                 f"{', '.join(map(repr, shared))} cannot be told apart (only their sum is "
                                 "estimable); drop one of the terms")
    M = _centred(prob.sums1, names)
    z = np.linalg.solve(np.linalg.cholesky(M[:p, :p]), M[:p, p])
    _check_exact_fit(M[p, p] - z @ z, float(model.y @ model.y), M[p, p])
    k = p + prob.q_total
    if n * k * k > _DENSE_CHECK_FLOPS or n * k > _DENSE_CHECK_SIZE:
        return
    A = np.column_stack([model.X] + [_term_matrix(ReTerm(codes=b[1], n_levels=len(b[2]), Z=b[4]), n).toarray()
                                     for b in built])
    A = A / np.sqrt(np.einsum("ij,ij->j", A, A))
    coef, _, rank, _ = np.linalg.lstsq(A, model.y, rcond=None)
    if n <= rank:
        raise ValueError(f"X and the random effects fit all {n} observations exactly (rank of [X, Z] {rank} >= n): "
                         "no residual degrees of freedom are left, so the likelihood is unbounded as sigma -> 0. "
                         "Use fewer random effects or more observations")
    r = model.y - A @ coef
    if _exactly(float(r @ r), float(model.y @ model.y), M[p, p], per_value=2.0):
        raise ValueError("y has no residual variation once X and the random effects are fitted (y a sum of "
                         "effects of the grouping factors, say): the residual variance is zero and the likelihood "
                         "is unbounded")


def crossed_criterion(model, data: pd.DataFrame, theta: np.ndarray, method: str) -> float:
    """lme4's ``devfun(theta)`` for a model of several grouping factors (theta in lme4's order of the terms)."""
    _check_crossed(model)
    _, sizes, prob = _problem(model, data)
    if theta.shape != (prob.n_theta,):
        raise ValueError(f"theta has {theta.size} entries; {model.formula!r} has {prob.n_theta}")
    return pls_evaluate(theta, prob, method).deviance


def fit_crossed(model, method: str, data: pd.DataFrame) -> LMMFit:
    """Fit a model whose random terms have more than one grouping factor (called by :func:`lmm`).

    Parameters
    ----------
    model : lmm_helpers.mixed._Model
        The formula read against the data (y, X's and each term's columns).
    method : {"ML", "REML"}
    data : DataFrame
        For the grouping factors (interactions included).
    """
    _check_crossed(model)  # magnitudes first, before anything is squared
    formula, y, names, X = model.formula, model.y, model.names, model.X
    n, p = X.shape
    # One BLAS thread: OpenBLAS's threads lose 10-20x when the cores are shared (InstEval: 160-200 s against 6-17 s
    # at a load of 13 on 2 cores, measured here), as their spin-waits compete with other processes; on 2 idle
    # cores they could gain at most 2x on the dense block (1156 square for InstEval), not measurable here.
    with threadpool_limits(limits=1, user_api="blas"):
        built, sizes, prob = _problem(model, data)
        theta, converged = _optimise_scaled(model, built, prob, sizes, method)
        ev = pls_evaluate(theta, prob, method)
    groups = _unique_names([b[0].factor for b in built])
    unident = _unidentified(model, built, groups) if method == "REML" else ()
    m = n if method == "ML" else n - p
    sigma2 = ev.r2 / m
    sigma = float(np.sqrt(sigma2))
    beta = ev.beta.copy()
    if model.y_shift:
        beta[names.index("(Intercept)")] += model.y_shift
    RXi = np.linalg.solve(ev.RX, np.eye(p))
    vcov = sigma2 * (RXi.T @ RXi)
    modes = conditional_modes(ev, prob)
    rows, cols = lambda_index(sizes)
    singular = bool(np.any(theta[rows == cols] < _SINGULAR_TOL))
    covs, start = [], 0
    for q in sizes:
        T = np.zeros((q, q))
        T[lambda_index([q])] = theta[start:start + q * (q + 1) // 2]
        covs.append(sigma2 * (T @ T.T))
        start += q * (q + 1) // 2
    varcorr = _varcorr(covs, [list(b[3]) for b in built], groups, sigma)
    random_effects: dict = {}
    for b, mode in zip(built, modes):
        frame = pd.DataFrame(mode, index=b[2], columns=list(b[3]))
        f = b[0].factor
        random_effects[f] = frame if f not in random_effects else random_effects[f].join(frame, rsuffix=".1")
    n_groups: dict = {}
    for b in built:
        n_groups.setdefault(b[0].factor, len(b[2]))
    df = lambda: _one_thread(satterthwaite_pls, prob, method, theta, sigma)  # noqa: E731
    if unident:  # as mixed._fit_blocks: what depends on the flat directions of the criterion is meaningless
        for grp, b in zip(groups, built):
            cols = [nm for nm in b[3] if f"{nm} | {grp}" in unident]
            bad = (varcorr.grp == grp) & (varcorr.var1.isin(cols) | varcorr.var2.isin(cols))
            varcorr.loc[bad, ["vcov", "sdcor"]] = np.nan
            frame = random_effects[b[0].factor]
            frame[[c for c in frame.columns if c in cols]] = np.nan
        vcov = np.full_like(vcov, np.nan)
        singular = False
        df = lambda: np.full(p, np.nan)  # noqa: E731

    def resid() -> np.ndarray:
        fitted = X @ beta
        for b, mode in zip(built, modes):
            fitted = fitted + np.einsum("ij,ij->i", b[4], mode[b[1]])
        return _quantiles((y - fitted) / sigma, np.array([0.0, 0.25, 0.5, 0.75, 1.0]))

    return LMMFit(formula=formula, method=method, names=list(names), beta=beta, vcov=vcov, sigma=sigma,
                  loglik=-0.5 * ev.deviance, theta=theta, varcorr=varcorr, random_effects=random_effects,
                  converged=_warn_fit(converged, singular, unident), singular=singular, n_obs=n,
                  n_groups=n_groups, terms=tuple(b[0].text for b in built), _df=df, _resid=resid,
                  unidentified=unident)


def _unidentified(model, built: list, groups: list) -> tuple:
    """The random-effect columns whose level-wise parts all lie in X's column space, ``"col | group"`` (REML
    cannot estimate their variances: ``diameter ~ sample + (1 | sample) + ...``).

    ``mixed._unidentified`` term by term: column j of a term stands for the columns ``z_j 1_g`` over its levels g;
    what X leaves of them has squared length ``sum_g (|z_gj|^2 - c_gj^T (X^T X)^-1 c_gj)``, ``c_gj = X_g^T z_gj``.
    """
    X = model.X
    xtx = X.T @ X
    d = np.sqrt(np.diag(xtx))
    L = np.linalg.cholesky(xtx / np.outer(d, d))
    out = []
    for grp, b in zip(groups, built):
        codes, G, Z = b[1], len(b[2]), b[4]
        for j, nm in enumerate(b[3]):
            C = np.stack([np.bincount(codes, weights=Z[:, j] * X[:, k], minlength=G) for k in range(X.shape[1])])
            W = np.linalg.solve(L, C / d[:, None])
            total = float(Z[:, j] @ Z[:, j])
            if total - float(np.einsum("pg,pg->", W, W)) <= 1e-10 * total:
                out.append(f"{nm} | {grp}")
    return tuple(out)


def _one_thread(f: Callable, *args):
    """Call f on one BLAS thread (see :func:`fit_crossed`)."""
    with threadpool_limits(limits=1, user_api="blas"):
        return f(*args)


def _optimise_scaled(model, built: list, prob, sizes: list, method: str) -> tuple[np.ndarray, bool]:
    """:func:`_optimise` with each random-effect column whose root mean square is outside [1e-2, 1e2] divided by
    the power of 2 nearest it (exact in floating point), and theta mapped back (``Lambda = S^-1 Lambda'``), as
    ``mixed._optimise_scaled`` does for one factor.

    The start Lambda = I assumes random effects of SD near sigma over their column's size: with a slope column
    in units 1e6 smaller (Penicillin, ``(x | plate) + (1 | sample)``) the optimiser stopped 15 deviance units
    short and reported convergence. Columns of ordinary size are left alone, so those fits do not change.
    """
    scales = []
    for b in built:
        rms = np.sqrt(np.einsum("ij,ij->j", b[4], b[4]) / prob.n)
        scales.append(np.where((rms > 0) & ((rms < 1e-2) | (rms > 1e2)),
                               2.0 ** np.round(np.log2(np.where(rms > 0, rms, 1.0))), 1.0))
    if all(np.all(sc == 1.0) for sc in scales):
        return _optimise(prob, sizes, method)
    scaled = pls_problem([ReTerm(codes=b[1], n_levels=len(b[2]), Z=b[4] / sc) for b, sc in zip(built, scales)],
                         model.X, model.y - model.y_shift if model.y_shift else model.y)  # centred as in _problem
    theta, converged = _optimise(scaled, sizes, method)
    return theta / np.concatenate(scales)[lambda_index(sizes)[0]], converged


def _scalar_start(prob, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Start and scale of theta for scalar terms: each term's one-factor fit and its criterion's width there.

    Term k alone (``y ~ X + (z_k | g_k)``) needs only its per-level sums ``z^T z`` and ``z^T [X y]`` and
    ``[X y]^T [X y]``, all in the PLS problem (the first term's ``sums1``; the diagonal of ``A22`` and the rows of
    ``Z2^T [X y]`` for the others), so its fit (:func:`lmm_helpers.slopes.evaluate`, O(m_k) an evaluation) costs
    nothing next to one evaluation of the whole criterion. Its theta is the start (at least 0.1, so that no term
    starts on the boundary, where the criterion is flat in it), and ``1 / sqrt(h_k)``, h_k the second derivative
    of the one-factor criterion there, the scale: the optimiser works in ``theta / scale``, where a unit step
    changes the criterion by about one unit in each direction. A term whose one-factor criterion is flat (no
    better than at theta = 1: X spans its factor under REML, say) keeps lme4's start, unscaled. On InstEval this
    takes L-BFGS-B from 21 evaluations (lme4's start, theta = 1, unscaled) to 7, at the same optimum.
    """
    s1, index = prob.sums1, lambda_index([1])
    per_term = [(s1.ztz[0, 0], s1.ztw[0])]
    diag22, off = np.diag(prob.A22), 0
    for m in prob.levels[1:]:
        per_term.append((diag22[off:off + m], prob.Z2W[off:off + m].T))
        off += m
    start, scale = [], []
    for ztz, ztw in per_term:
        sums = BlockSums(ztz=ztz[None, None, :], ztw=ztw[None, :, :], wtw=s1.wtw, n=prob.n)
        try:
            t, sc = _one_factor_start(sums, index, method)
        except (np.linalg.LinAlgError, FloatingPointError):  # a start is a heuristic: never the reason a fit fails
            t, sc = 1.0, 1.0
        start.append(t)
        scale.append(sc)
    return np.array(start), np.array(scale)


def _one_factor_start(sums, index: tuple, method: str) -> tuple[float, float]:
    """One term's start and scale for :func:`_scalar_start`, from its one-factor sums; (1, 1) when flat."""
    with np.errstate(divide="raise", over="raise", invalid="raise"):
        def crit(t):
            return evaluate(np.array([t]), sums, index, method).deviance

        log_t = optimize.minimize_scalar(lambda x: crit(np.exp(x)), bounds=(np.log(1e-3), np.log(1e3)),
                                         method="bounded").x
        t = float(np.exp(log_t))
        if not crit(1.0) - crit(t) > 1e-8 * abs(crit(t)):  # flat (X spans the factor under REML): lme4's start
            return 1.0, 1.0
        t = max(t, 0.1)
        h = 1e-4 * t
        grad = [evaluate(np.array([t + e]), sums, index, method, gradient=True).grad[0] for e in (h, -h)]
        curv = (grad[0] - grad[1]) / (2.0 * h)
    return t, (1.0 / np.sqrt(curv) if np.isfinite(curv) and curv > 0 else 1.0)


def _optimise(prob, sizes: list, method: str) -> tuple[np.ndarray, bool]:
    """Minimise the profiled criterion over theta within lme4's bounds by L-BFGS-B.

    With scalar terms only (``(1 | a) + (1 | b) ...``): :func:`_optimise_scalar`; otherwise from lme4's start, with
    scipy's finite differences.
    """
    start, bounds = theta_bounds(sizes)
    opts = {"ftol": 1e-12, "gtol": 1e-8, "maxiter": 1000}
    scalar = all(q == 1 for q in sizes)

    def value(t):
        return pls_evaluate(t, prob, method).deviance

    if scalar:
        theta, grad = _optimise_scalar(prob, method, bounds, opts)
    else:
        res = optimize.minimize(value, start, method="L-BFGS-B", bounds=bounds, options=opts)
        theta = res.x
    # Converged: the projected gradient is below lme4's tolerance (check.conv.grad, 0.002), whatever stopped the
    # optimiser (L-BFGS-B can end with a failed line search at an optimum, where rounding hides any descent).
    if not scalar:
        h = 1e-6 * np.maximum(np.abs(theta), 1e-2)
        grad = np.array([(value(theta + e) - value(theta - e)) / (2 * e[i])
                         for i, e in enumerate(np.diag(h))])
    return theta, bool(np.max(np.abs(_projected(theta, grad, bounds))) < _GRAD_TOL)


_GRAD_TOL = 2e-3  # lme4's check.conv.grad


def _projected(theta: np.ndarray, grad: np.ndarray, bounds: list) -> np.ndarray:
    """The gradient less its components that push theta through a lower bound it sits on."""
    lower = np.array([lo if lo is not None else -np.inf for lo, _ in bounds])
    return np.where((theta <= lower) & (grad > 0), 0.0, grad)


def _optimise_scalar(prob, method: str, bounds: list, opts: dict) -> tuple[np.ndarray, np.ndarray]:
    """Theta and the gradient there, for scalar terms: L-BFGS-B from each term's one-factor fit, scaled.

    The gradient is analytic (:func:`lmm_helpers.pls._gradient`), the optimiser works in ``theta / scale``
    (:func:`_scalar_start`).

    Two safeguards, each a restart of L-BFGS-B (at most two in all). Should it stop (its relative reduction of the
    criterion below ftol) with a projected gradient above lme4's tolerance, it goes on from there (on InstEval and
    the reference datasets the first run ends at most 8e-4). And a theta_k it leaves at 0 is probed off the
    boundary: the criterion is even in theta_k, so its derivative there is 0 whether 0 is a minimum in theta_k or
    a maximum, and L-BFGS-B, which follows the gradient, cannot tell them apart (from lme4's start it stopped at
    theta_2 = 0 on ``angle ~ temperature + (1 | recipe) + (1 | replicate)`` (cake) and ``height ~ age +
    (1 | Subject) + (1 | occasion)`` (Oxboys), 1.7 and 1.2 deviance units above lme4's optimum). A probe a tenth of
    the term's scale away that lowers the criterion by more than rounding (1e-9 relative) restarts from there.
    """
    start, scale = _scalar_start(prob, method)
    seen: dict = {}

    def fun(x):
        ev = pls_evaluate(x * scale, prob, method, gradient=True)
        seen[x.tobytes()] = (ev.deviance, ev.grad)
        return ev.deviance, ev.grad * scale

    x = start / scale
    for _ in range(3):
        x = optimize.minimize(fun, x, jac=True, method="L-BFGS-B", bounds=bounds, options=opts).x
        if x.tobytes() not in seen:
            fun(x)
        dev, grad = seen[x.tobytes()]
        if np.max(np.abs(_projected(x, grad, bounds))) >= _GRAD_TOL:
            continue
        for k in np.flatnonzero(x <= 0.0):
            probe = x.copy()
            probe[k] = 0.1
            if pls_evaluate(probe * scale, prob, method).deviance < dev - 1e-9 * abs(dev):
                x = probe
                break
        else:
            break
    if x.tobytes() not in seen:
        fun(x)
    return x * scale, seen[x.tobytes()][1]


def _hessian_genD(f: Callable, x: np.ndarray) -> np.ndarray:
    """numDeriv's ``hessian`` (``genD``, Richardson: d = 0.1, eps = 1e-4, r = 4, v = 2), as lmerTest calls it."""
    k = len(x)
    zero_tol = np.sqrt(np.finfo(float).eps / 7e-7)
    h0 = np.abs(0.1 * x) + 1e-4 * (np.abs(x) < zero_tol)
    f0 = f(x)
    H = np.zeros((k, k))

    def extrapolate(a):
        for m in range(1, 4):
            a = [(a[j + 1] * 4**m - a[j]) / (4**m - 1) for j in range(len(a) - 1)]
        return a[0]

    for i in range(k):
        h, hd = h0.copy(), []
        for _ in range(4):
            e = np.zeros(k)
            e[i] = h[i]
            hd.append((f(x + e) - 2.0 * f0 + f(x - e)) / h[i] ** 2)
            h = h / 2.0
        H[i, i] = extrapolate(hd)
    for i in range(k):
        for j in range(i):
            h, od = h0.copy(), []
            for _ in range(4):
                e = np.zeros(k)
                e[i], e[j] = h[i], h[j]
                od.append((f(x + e) - 2.0 * f0 + f(x - e) - H[i, i] * h[i] ** 2 - H[j, j] * h[j] ** 2)
                          / (2.0 * h[i] * h[j]))
                h = h / 2.0
            H[i, j] = H[j, i] = extrapolate(od)
    return H


def satterthwaite_pls(prob, method: str, theta: np.ndarray, sigma: float) -> np.ndarray:
    """Satterthwaite's df of each fixed effect, as lmerTest: ``df = 2 var^2 / (g^T A g)``.

    ``A = 2 H^-1`` from the Hessian H of the deviance in (theta, sigma) (beta profiled out; a pseudo-inverse over
    eigenvalues above 1e-8), ``g`` the gradient of ``var(beta_j)`` in (theta, sigma): both by numDeriv's Richardson
    schemes, which lmerTest uses; the sigma column of g is analytic.
    """
    p, n = prob.p, prob.n
    cache: dict = {}

    def ev_at(t):
        key = t.tobytes()
        if key not in cache:
            cache[key] = pls_evaluate(t, prob, method)
        return cache[key]

    def dev(vp):
        return deviance_theta_sigma(ev_at(vp[:-1]), vp[-1], n, p, method)

    def vcov_theta(t):
        RXi = np.linalg.solve(ev_at(t).RX, np.eye(p))
        return (sigma**2 * (RXi.T @ RXi)).ravel()

    vp = np.append(theta, sigma)
    H = _hessian_genD(dev, vp)
    evals, evecs = np.linalg.eigh(H)
    pos = evals > _HESS_TOL
    A = 2.0 * (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
    k = len(theta)
    RXi = np.linalg.solve(ev_at(theta).RX, np.eye(p))
    Vb = RXi.T @ RXi
    jac = np.empty((k + 1, p))
    for i in range(k):
        jac[i] = np.diag(_richardson(vcov_theta, theta, i).reshape(p, p))
    jac[k] = 2.0 * sigma * np.diag(Vb)
    var = sigma**2 * np.diag(Vb)
    return 2.0 * var**2 / np.einsum("ij,ik,kj->j", jac, A, jac)
