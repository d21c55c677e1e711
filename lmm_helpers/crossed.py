"""``lmm`` with several grouping factors, crossed or nested: lme4's general algorithm (:mod:`lmm_helpers.pls`).

:func:`lmm_helpers.lmm` decides: one grouping factor goes to its per-group routes (``fit_lmm`` or
:mod:`lmm_helpers.slopes`), two or more come here. The random terms are put in lme4's order (decreasing number of
levels, formula order among equals), theta is optimised within lme4's bounds (0 below every diagonal entry of each
template), and the result is the same :class:`lmm_helpers.mixed.LMMFit` as for one factor, with Satterthwaite's
df computed as lmerTest does (numDeriv's Richardson Hessian of the deviance in (theta, sigma)).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pandas as pd
from scipy import linalg, optimize, sparse
from threadpoolctl import threadpool_limits

from .design import _check_exact_fit, _exactly
from .fit import _quantiles
from .formula import _is_factor, grouping_factor, parse_formula
from .mixed import (_HESS_TOL, _OFFSET_SDS, _SINGULAR_TOL, LMMFit, _centred, _check_levels, _check_rank, _check_values,
                    _check_z, _richardson, _varcorr, _warn_fit)
from .pls import (PLSSums, ReTerm, _term_matrix, conditional_modes, deviance_theta_sigma, merge_pls_sums,
                  pls_evaluate, pls_from_sums, pls_sums)
from .slopes import BlockSums, evaluate, lambda_index

__all__ = ["CrossedSums", "crossed_criterion", "crossed_sums", "fit_crossed", "fit_crossed_sums", "merge_crossed",
           "theta_bounds"]


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


@dataclass(frozen=True, eq=False)
class CrossedSums:
    """The sums over rows of a model of several grouping factors (:func:`crossed_sums`): all rows, or a chunk.

    Attributes
    ----------
    pls : PLSSums
        lme4's sums (:func:`lmm_helpers.pls.pls_sums`), the terms in lme4's order, of ``X - x_shift`` and
        ``y - y_shift``.
    pairs : dict
        ``{(i, j): sparse (m_i, m_j) counts of rows per pair of levels}`` for the pairs of terms (lme4's order)
        of different grouping factors with as many levels and a column in common: whether the two factors group
        the rows alike (:func:`_check_sums`).
    x_shift : ndarray (p,)
        What was subtracted from each column of X (see :func:`_x_shift`).
    y_shift : float
        What was subtracted from y (its mean when X has an intercept, as ``mixed._Model.y_shift``).
    """

    pls: PLSSums
    pairs: dict
    x_shift: np.ndarray
    y_shift: float


@dataclass(frozen=True, eq=False)
class _Terms:
    """What the fit reads of a model besides the sums: names, and the random terms in lme4's order."""

    formula: str
    names: list
    terms: tuple      # RandomTerm, lme4's order
    znames: list      # each term's column names
    labels: list      # each term's levels (pandas Index)
    order: list       # the formula's index of each term

    @property
    def sizes(self) -> list:
        return [len(z) for z in self.znames]


def _lme4_order(n_levels: list) -> list:
    """lme4's order of the terms: decreasing number of levels, formula order among equals (a stable sort)."""
    return sorted(range(len(n_levels)), key=lambda k: -n_levels[k])


def _check_terms(info: _Terms, n: int) -> None:
    """lme4's counts, term by term (levels, random effects against n), and parameters against n."""
    for t, z, lab in zip(info.terms, info.znames, info.labels):
        _check_levels((t,), [len(z)], len(lab), n)
    if len(info.names) + sum(q * (q + 1) // 2 for q in info.sizes) + 1 > n:
        raise ValueError(f"formula {info.formula!r}: more parameters than observations ({n})")


def _numeric_columns(formula: str, is_factor: Callable) -> set:
    """The names of X's columns made of numeric variables only (a covariate ``x``, a product ``x:z``)."""
    return {":".join(t) for t in parse_formula(formula).fixed if not any(is_factor(v) for v in t)}


def _x_shift(names: list, means: dict) -> np.ndarray:
    """What :func:`crossed_sums` subtracts from each column of X: with an intercept, a covariate's (or a product
    of covariates') mean from ``means`` (``{name: mean}``); 0 for the intercept and for columns of factors.

    ``X beta = (X - 1 c^T) beta'`` with ``beta = beta'`` but for the intercept, ``beta_0 = beta'_0 - c^T beta'``:
    the same model, whose cross-products keep their digits when a covariate sits far from 0 (x + 1e6 moved the
    ML log-likelihood of tests/test_dask.py's crossed problem by 0.1, 2e-4 relative, before; 1e-13 after). A
    factor's indicator columns lie in [0, 1] and are left as they are (a product of a covariate and a factor is
    too: centre the covariate before multiplying).
    """
    if "(Intercept)" not in names:
        return np.zeros(len(names))
    return np.array([float(means.get(nm, 0.0)) if nm != "(Intercept)" else 0.0 for nm in names])


def _shift_map(names: list, x_shift: np.ndarray) -> np.ndarray:
    """T with ``beta = T beta'`` (beta' of the shifted X): the identity, but the intercept's row ``-x_shift``."""
    T = np.eye(len(names))
    if np.any(x_shift):
        T[names.index("(Intercept)")] -= x_shift
        T[names.index("(Intercept)"), names.index("(Intercept)")] = 1.0
    return T


def crossed_sums(model, codes: list, n_levels: list, order: list, x_shift: np.ndarray,
                 y_shift: float) -> CrossedSums:
    """The sums over rows of a model of several grouping factors: the same code on all the rows (in memory) and
    on each chunk of them (out of core, :mod:`lmm_helpers.chunked`), whose results add (:func:`merge_crossed`).

    Parameters
    ----------
    model : lmm_helpers.mixed._Model
        y and the columns of X and of each term (formula order), of all the rows or one chunk.
    codes, n_levels : list
        Each term's level of every row and its number of levels (formula order), against the levels of the
        whole data.
    order : list
        lme4's order of the terms (:func:`_lme4_order` of the whole data's level counts).
    x_shift, y_shift
        Subtracted from X's columns and from y (the same for every chunk).
    """
    X = np.column_stack(model.x_cols) - x_shift if len(model.y) else np.zeros((0, len(model.names)))
    y = model.y - y_shift
    terms = [ReTerm(codes=np.asarray(codes[k], dtype=np.intp), n_levels=n_levels[k],
                    Z=np.column_stack(model.z_cols[k]) if len(model.y) else np.zeros((0, len(model.znames[k]))))
             for k in order]
    pairs = {}
    for i in range(len(order)):
        for j in range(i + 1, len(order)):
            a, b = order[i], order[j]
            if (model.terms[a].factor != model.terms[b].factor and n_levels[a] == n_levels[b]
                    and set(model.znames[a]) & set(model.znames[b])):
                pairs[(i, j)] = sparse.csr_array((np.ones(len(y)), (codes[a], codes[b])),
                                                 shape=(n_levels[a], n_levels[b]))
    return CrossedSums(pls=pls_sums(terms, X, y), pairs=pairs, x_shift=x_shift, y_shift=float(y_shift))


def merge_crossed(a: CrossedSums, b: CrossedSums) -> CrossedSums:
    """The sums of two chunks of rows together: they add."""
    if a.y_shift != b.y_shift or not np.array_equal(a.x_shift, b.x_shift):
        raise ValueError("merge_crossed: the chunks were shifted by different values; give every chunk the same")
    return CrossedSums(pls=merge_pls_sums(a.pls, b.pls),
                       pairs={k: sparse.csr_array(a.pairs[k] + b.pairs[k]) for k in a.pairs},
                       x_shift=a.x_shift, y_shift=a.y_shift)


def _in_memory(model, data: pd.DataFrame) -> tuple[_Terms, CrossedSums, list]:
    """Each term's grouping factor and Z (lme4's checks), lme4's order, and the sums of all the rows."""
    built = []
    for t, znames, zc in zip(model.terms, model.znames, model.z_cols):
        codes, labels = grouping_factor(data, t)
        _check_levels((t,), [len(znames)], len(labels), len(model.y))
        built.append((t, codes, labels, list(znames), np.column_stack(zc)))
    order = _lme4_order([len(b[2]) for b in built])
    info = _Terms(formula=model.formula, names=list(model.names), terms=tuple(built[k][0] for k in order),
                  znames=[built[k][3] for k in order], labels=[built[k][2] for k in order], order=order)
    _check_terms(info, len(model.y))
    numeric = _numeric_columns(model.formula, lambda v: _is_factor(data[v]))
    means = {nm: float(np.mean(c)) for nm, c in zip(model.names, model.x_cols) if nm in numeric}
    sums = crossed_sums(model, [b[1] for b in built], [len(b[2]) for b in built], order,
                        _x_shift(model.names, means), model.y_shift)
    return info, sums, [built[k] for k in order]


# Above this many flops (n (p + q)^2, about a second here) or entries (n (p + q), 80 MB) the dense check of
# rank([X, Z]) and of y's residual on [X, Z] is skipped.
_DENSE_CHECK_FLOPS, _DENSE_CHECK_SIZE = 2e9, 1e7


def _check_crossed(model) -> None:
    """The data checks of the one-factor routes (``mixed._check_data``) that need the values, before anything is
    squared: magnitudes of y, of X's and of Z's columns (``design._check_magnitude``), and a constant y. The rest
    read the sums (:func:`_check_sums`)."""
    _check_values(model)
    if np.all(model.y == model.y[0]):
        raise ValueError(f"the response is constant (every value is {model.y[0]:g}): it has no variation, so "
                         "nothing is left for the residual variance")


def _ztz(pls: PLSSums) -> sparse.csr_array:
    """The whole ``Z^T Z`` (terms in the sums' order) from its blocks: ``Z1^T Z1`` block-diagonal, A21, A22."""
    q1, m1 = pls.sizes[0], pls.levels[0]
    g, a, b = np.meshgrid(np.arange(m1), np.arange(q1), np.arange(q1), indexing="ij")
    Z11 = sparse.coo_array((pls.sums1.ztz[a, b, g].ravel(), ((g * q1 + a).ravel(), (g * q1 + b).ravel())),
                           shape=(m1 * q1, m1 * q1))
    return sparse.csr_array(sparse.bmat([[Z11, pls.A21.T], [pls.A21, pls.A22]]))


def _columns_of(pls: PLSSums, k: int) -> np.ndarray:
    """The columns of term k (the sums' order) in Z, (m_k, q_k): level g's q_k columns in row g."""
    off = sum(q * m for q, m in zip(pls.sizes[:k], pls.levels[:k]))
    q, m = pls.sizes[k], pls.levels[k]
    return off + np.arange(m)[:, None] * q + np.arange(q)[None, :]


def _level_blocks(ztz: sparse.csr_array, idx: np.ndarray) -> np.ndarray:
    """``Z_g^T Z_g`` of the columns ``idx`` (G, q: level g's columns in row g), as (q, q, G)."""
    G, q = idx.shape
    flat = idx.ravel()
    sub = sparse.coo_array(ztz[flat][:, flat])
    keep = sub.row // q == sub.col // q
    out = np.zeros((q, q, G))
    np.add.at(out, (sub.row[keep] % q, sub.col[keep] % q, sub.row[keep] // q), sub.data[keep])
    return out


def _check_sums(info: _Terms, sums: CrossedSums, dense_check: Callable | None = None) -> None:
    """The checks that need cross-products, from the sums alone: a slope column far from 0 beside its factor's
    random intercept, X's rank, each grouping factor's random-effect columns told apart (``mixed._check_z``, the
    factor's terms together), two factors that group the rows alike, and a y that X fits exactly; then, when
    ``dense_check`` is given (in memory), :func:`_check_dense`.

    Out of core (:mod:`lmm_helpers.chunked`) there is no ``dense_check``: a y that X and the random effects fit
    exactly, with n > p + q, is not caught there (as in memory above the sizes of :func:`_check_dense`).
    """
    pls, names = sums.pls, info.names
    p, n = pls.p, pls.n
    ztz = _ztz(pls)
    by_factor: dict = {}
    for k, t in enumerate(info.terms):
        by_factor.setdefault(t.factor, []).append(k)
    blocks_of = {f: _level_blocks(ztz, np.hstack([_columns_of(pls, k) for k in ks])) for f, ks in by_factor.items()}
    for factor, ks in by_factor.items():
        znames, blocks = [nm for k in ks for nm in info.znames[k]], blocks_of[factor]
        if "(Intercept)" in znames:  # mixed._check_sums's offset rule: mean and SD of each column from its sums
            i0 = znames.index("(Intercept)")
            owner = [info.terms[k] for k in ks for _ in info.znames[k]]
            for j, nm in enumerate(znames):
                mean, square = float(np.sum(blocks[j, i0])) / n, float(np.sum(blocks[j, j])) / n
                var = square - mean**2
                if nm == "(Intercept)" or var <= 1e-14 * square:
                    continue
                sd = np.sqrt(var)
                if abs(mean) > _OFFSET_SDS * sd:
                    raise ValueError(
                        f"random term {owner[j].text}: column {nm!r} has mean {mean:.6g}, {abs(mean) / sd:.3g} SDs "
                        f"from 0, where the random intercept of {factor!r} is defined: intercept and slope are then "
                        "nearly collinear in every level and cannot be estimated to any accuracy (more than "
                        f"{_OFFSET_SDS:g} SDs is refused). Centre it (subtract its mean, or a round value near it) "
                        "and refit")
    _check_rank(pls.sums1, names)
    for factor, ks in by_factor.items():
        znames = [nm for k in ks for nm in info.znames[k]]
        _check_z(SimpleNamespace(ztz=blocks_of[factor]), znames,
                 SimpleNamespace(factor=factor, terms=tuple(info.terms[k] for k in ks)))
    for (i, j), counts in sums.pairs.items():  # two factors that group the rows alike: their shared columns are one
        if counts.nnz == pls.levels[i]:
            ti, tj = info.terms[i], info.terms[j]
            shared = [nm for nm in info.znames[i] if nm in info.znames[j]]
            raise ValueError(f"random terms {ti.text} and {tj.text}: grouping factors {ti.factor!r} "
                             f"and {tj.factor!r} group the rows identically, so their random effects for "
                             f"{', '.join(map(repr, shared))} cannot be told apart (only their sum is "
                             "estimable); drop one of the terms")
    M = _centred(pls.sums1, names)
    z = np.linalg.solve(np.linalg.cholesky(M[:p, :p]), M[:p, p])
    _check_exact_fit(M[p, p] - z @ z, _yty(sums, names), M[p, p])
    if dense_check is not None:
        dense_check(M[p, p])


def _yty(sums: CrossedSums, names: list) -> float:
    """``y^T y`` of the data's own y, from the sums of ``y - y_shift`` (y_shift is 0 without an intercept)."""
    wtw, p, s = sums.pls.sums1.wtw, sums.pls.p, sums.y_shift
    if not s:
        return float(wtw[p, p])
    return float(wtw[p, p] + 2.0 * s * wtw[names.index("(Intercept)"), p] + sums.pls.n * s * s)


def _check_dense(model, built: list, centred: float) -> None:
    """Residual degrees of freedom left once X and every random effect are fitted, from the rows (in memory only).

    The argument of ``mixed._check_data`` with all of Z: when ``n <= rank([X, Z])``, or y lies in the span
    of ``[X, Z]``, sigma -> 0 (with theta -> infinity) sends the ML likelihood to infinity. rank([X, Z]) <= p + q
    (q random effects), so with ``n > p + q`` only the second can happen; both are decided by one dense
    least-squares solve of y on ``[X, Z]`` with unit-length columns (SVD rank, numpy's tolerance), cheap for
    the sizes where it matters (Penicillin: 144 x 31) and skipped above ``_DENSE_CHECK_FLOPS`` or
    ``_DENSE_CHECK_SIZE`` (InstEval: 73421 x 4100, where n exceeds p + q by a factor 18, so the rank cannot reach
    n); above them a y that X and the random effects fit exactly is not caught, nor, with n <= p + q, a full rank.
    It needs the rows, so the out-of-core route cannot run it.
    """
    n, p = model.X.shape
    k = p + sum(len(b[2]) * len(b[3]) for b in built)
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
    if _exactly(float(r @ r), float(model.y @ model.y), centred, per_value=2.0):
        raise ValueError("y has no residual variation once X and the random effects are fitted (y a sum of "
                         "effects of the grouping factors, say): the residual variance is zero and the likelihood "
                         "is unbounded")


def crossed_criterion(model, data: pd.DataFrame, theta: np.ndarray, method: str) -> float:
    """lme4's ``devfun(theta)`` for a model of several grouping factors (theta in lme4's order of the terms)."""
    _check_crossed(model)
    info, sums, built = _in_memory(model, data)
    _check_sums(info, sums, lambda centred: _check_dense(model, built, centred))
    prob = pls_from_sums(sums.pls)
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
    with threadpool_limits(limits=1, user_api="blas"):  # see fit_crossed_sums
        info, sums, built = _in_memory(model, data)
    X, y = model.X, model.y

    def resid(beta: np.ndarray, modes: list, sigma: float) -> np.ndarray:
        fitted = X @ beta
        for b, mode in zip(built, modes):
            fitted = fitted + np.einsum("ij,ij->i", b[4], mode[b[1]])
        return _quantiles((y - fitted) / sigma, np.array([0.0, 0.25, 0.5, 0.75, 1.0]))

    return fit_crossed_sums(info, sums, method, resid, lambda centred: _check_dense(model, built, centred))


def fit_crossed_sums(info: _Terms, sums: CrossedSums, method: str, resid: Callable | None = None,
             dense_check: Callable | None = None) -> LMMFit:
    """Fit a model of several grouping factors from its sums (all rows', or chunks' merged): lme4's algorithm.

    Parameters
    ----------
    info : _Terms
        Names, and the terms with their levels in lme4's order.
    sums : CrossedSums
    method : {"ML", "REML"}
    resid : callable, optional
        ``resid(beta, modes, sigma)``: min, quartiles and max of the scaled residuals (a pass over the rows, made
        on first use of ``summary()``); without it they are NaN.
    dense_check : callable, optional
        ``dense_check(centred)``: the check of :func:`_check_dense`, which needs the rows (in memory only).
    """
    names, sizes = info.names, info.sizes
    n, p = sums.pls.n, sums.pls.p
    # One BLAS thread: OpenBLAS's threads lose 10-20x when the cores are shared (InstEval: 160-200 s against 6-17 s
    # at a load of 13 on 2 cores, measured here), as their spin-waits compete with other processes; on 2 idle
    # cores they could gain at most 2x on the dense block (1156 square for InstEval), not measurable here.
    with threadpool_limits(limits=1, user_api="blas"):
        _check_sums(info, sums, dense_check)
        prob = pls_from_sums(sums.pls)
        theta, converged = _optimise_scaled(sums.pls, prob, sizes, method)
        ev = pls_evaluate(theta, prob, method)
    groups = _unique_names([t.factor for t in info.terms])
    unident = _unidentified(info, sums.pls, groups) if method == "REML" else ()
    m = n if method == "ML" else n - p
    sigma2 = ev.r2 / m
    sigma = float(np.sqrt(sigma2))
    # beta of the shifted X mapped back (the intercept absorbs the shifts), its covariance by the same linear map
    T = _shift_map(names, sums.x_shift)
    beta = T @ ev.beta
    if sums.y_shift:
        beta[names.index("(Intercept)")] += sums.y_shift
    RXi = np.linalg.solve(ev.RX, T.T)
    vcov = sigma2 * (RXi.T @ RXi)
    modes = conditional_modes(ev, prob)
    rows, cols = lambda_index(sizes)
    singular = bool(np.any(theta[rows == cols] < _SINGULAR_TOL))
    covs, start = [], 0
    for q in sizes:
        Tq = np.zeros((q, q))
        Tq[lambda_index([q])] = theta[start:start + q * (q + 1) // 2]
        covs.append(sigma2 * (Tq @ Tq.T))
        start += q * (q + 1) // 2
    varcorr = _varcorr(covs, [list(z) for z in info.znames], groups, sigma)
    random_effects: dict = {}
    for t, z, lab, mode in zip(info.terms, info.znames, info.labels, modes):
        frame = pd.DataFrame(mode, index=lab, columns=list(z))
        f = t.factor
        if f in random_effects:  # a second term of the factor ((x || a)): its columns beside the first's
            first = random_effects[f]  # same levels in the same order; a repeated column name gets ".1"
            frame = pd.concat([first, frame.rename(columns={c: f"{c}.1" for c in frame if c in first})], axis=1)
        random_effects[f] = frame
    n_groups: dict = {}
    for t, lab in zip(info.terms, info.labels):
        n_groups.setdefault(t.factor, len(lab))
    df = lambda: _one_thread(satterthwaite_pls, prob, method, theta, sigma, T)  # noqa: E731
    if unident:  # as mixed._fit_blocks: what depends on the flat directions of the criterion is meaningless
        for grp, t, z in zip(groups, info.terms, info.znames):
            cols = [nm for nm in z if f"{nm} | {grp}" in unident]
            bad = (varcorr.grp == grp) & (varcorr.var1.isin(cols) | varcorr.var2.isin(cols))
            varcorr.loc[bad, ["vcov", "sdcor"]] = np.nan
            frame = random_effects[t.factor]
            frame[[c for c in frame.columns if c in cols]] = np.nan
        vcov = np.full_like(vcov, np.nan)
        singular = False
        df = lambda: np.full(p, np.nan)  # noqa: E731
    quantiles = (lambda: resid(beta, modes, sigma)) if resid is not None else (lambda: np.full(5, np.nan))
    return LMMFit(formula=info.formula, method=method, names=list(names), beta=beta, vcov=vcov, sigma=sigma,
                  loglik=-0.5 * ev.deviance, theta=theta, varcorr=varcorr, random_effects=random_effects,
                  converged=_warn_fit(converged, singular, unident), singular=singular, n_obs=n,
                  n_groups=n_groups, terms=tuple(t.text for t in info.terms), _df=df, _resid=quantiles,
                  unidentified=unident)


def _unidentified(info: _Terms, pls: PLSSums, groups: list) -> tuple:
    """The random-effect columns whose level-wise parts all lie in X's column space, ``"col | group"`` (REML
    cannot estimate their variances: ``diameter ~ sample + (1 | sample) + ...``), from the sums.

    ``mixed._unidentified`` term by term: column j of a term stands for the columns ``z_j 1_g`` over its levels g;
    what X leaves of them has squared length ``sum_g (|z_gj|^2 - c_gj^T (X^T X)^-1 c_gj)``, ``c_gj = X_g^T z_gj``
    (a row of ``Z^T X``; X shifted by a constant per column spans the same space when it has an intercept).
    """
    p = pls.p
    xtx = pls.sums1.wtw[:p, :p]
    d = np.sqrt(np.diag(xtx))
    L = np.linalg.cholesky(xtx / np.outer(d, d))
    diag = pls.A22.diagonal()
    r1 = pls.sizes[0] * pls.levels[0]
    out = []
    for k, (grp, z) in enumerate(zip(groups, info.znames)):
        idx = _columns_of(pls, k)
        for j, nm in enumerate(z):
            if k == 0:
                C, total = pls.sums1.ztw[j, :p, :], float(np.sum(pls.sums1.ztz[j, j]))
            else:
                C, total = pls.Z2W[idx[:, j] - r1, :p].T, float(np.sum(diag[idx[:, j] - r1]))
            W = np.linalg.solve(L, C / d[:, None])
            if total - float(np.einsum("pg,pg->", W, W)) <= 1e-10 * total:
                out.append(f"{nm} | {grp}")
    return tuple(out)


def _one_thread(f: Callable, *args):
    """Call f on one BLAS thread (see :func:`fit_crossed_sums`)."""
    with threadpool_limits(limits=1, user_api="blas"):
        return f(*args)


def _scaled(pls: PLSSums, scales: list) -> PLSSums:
    """The sums of Z with column j of term k divided by ``scales[k][j]`` (each level's copy of it)."""
    d = np.concatenate([np.tile(sc, m) for sc, m in zip(scales[1:], pls.levels[1:])]) if scales[1:] else np.ones(0)
    s1, sc1 = pls.sums1, scales[0]
    d1 = np.tile(sc1, pls.levels[0])
    sums1 = BlockSums(ztz=s1.ztz / np.outer(sc1, sc1)[:, :, None], ztw=s1.ztw / sc1[:, None, None], wtw=s1.wtw,
                      n=s1.n)
    dinv, d1inv = sparse.diags_array(1.0 / d) if d.size else None, sparse.diags_array(1.0 / d1)
    A22 = sparse.csr_array(dinv @ pls.A22 @ dinv) if d.size else pls.A22
    A21 = sparse.csr_array(dinv @ pls.A21 @ d1inv) if d.size else pls.A21
    return PLSSums(sums1=sums1, A22=A22, Z2W=pls.Z2W / d[:, None] if d.size else pls.Z2W, A21=A21,
                   sizes=pls.sizes, levels=pls.levels)


def _optimise_scaled(pls: PLSSums, prob, sizes: list, method: str) -> tuple[np.ndarray, bool]:
    """:func:`_optimise` with each random-effect column whose root mean square is outside [1e-2, 1e2] divided by
    the power of 2 nearest it (exact in floating point), and theta mapped back (``Lambda = S^-1 Lambda'``), as
    ``mixed._optimise_scaled`` does for one factor; the column sizes and the scaled problem come from the sums.

    The start Lambda = I assumes random effects of SD near sigma over their column's size: with a slope column
    in units 1e6 smaller (Penicillin, ``(x | plate) + (1 | sample)``) the optimiser stopped 15 deviance units
    short and reported convergence. Columns of ordinary size are left alone, so those fits do not change.
    """
    diag, r1 = pls.A22.diagonal(), pls.sizes[0] * pls.levels[0]
    scales = []
    for k in range(len(sizes)):
        if k == 0:
            sq = np.einsum("jjg->j", pls.sums1.ztz)
        else:
            sq = diag[_columns_of(pls, k) - r1].sum(axis=0)
        rms = np.sqrt(sq / prob.n)
        scales.append(np.where((rms > 0) & ((rms < 1e-2) | (rms > 1e2)),
                               2.0 ** np.round(np.log2(np.where(rms > 0, rms, 1.0))), 1.0))
    if all(np.all(sc == 1.0) for sc in scales):
        return _optimise(prob, sizes, method)
    theta, converged = _optimise(pls_from_sums(_scaled(pls, scales)), sizes, method)
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
    """Minimise the profiled criterion over theta within lme4's bounds by L-BFGS-B; theta and ``converged``.

    The gradient is analytic: :func:`lmm_helpers.pls._gradient` with scalar terms only (``(1 | a) + (1 | b) ...``),
    :func:`lmm_helpers.pls._gradient_general` otherwise. Finite differences had served the latter: scipy's in
    L-BFGS-B (5 times the evaluations on sleepstudy's ``(Days | Subject) + (1 | DayF)``), and central ones with
    h = 1e-6 max(|theta|, 1e-2) in the convergence check, whose error is the criterion's rounding divided by 2h:
    near theta = 0 (h = 1e-8) a rounding of 5e-11 on a deviance of 350 already gives 2.5e-3, over lme4's 2e-3.
    Scalar terms start from their one-factor fits, scaled (:func:`_scalar_start`); others from lme4's start.
    :func:`_minimise` runs L-BFGS-B with its safeguards, :func:`_converged` judges the end point.
    """
    start, bounds = theta_bounds(sizes)
    if all(q == 1 for q in sizes):
        start, scale = _scalar_start(prob, method)
    else:
        scale = np.ones_like(start)
    rows, cols = lambda_index(list(sizes))
    theta, grad = _minimise(prob, method, start, scale, bounds, rows == cols)
    lower = np.array([lo if lo is not None else -np.inf for lo, _ in bounds])
    return theta, _converged(lambda t: pls_evaluate(t, prob, method, gradient=True).grad, theta, lower, grad)


def _converged(grad_fn: Callable, theta: np.ndarray, lower: np.ndarray, grad: np.ndarray | None = None,
               tol: float = 2e-3) -> bool:
    """lme4's check.conv.grad at the optimiser's end point, whatever stopped it (L-BFGS-B can end with a failed
    line search at an optimum, where rounding hides any descent, or by its relative reduction of the criterion).

    Converged when each component of the projected gradient (0 where theta sits on its lower bound and the
    gradient pushes it there) is below ``tol`` either in itself or scaled, ``R^-1 g`` with ``H = R^T R`` the
    Hessian in the free components (lme4's ``scgrad <- solve(chol(Hessian), gradient)`` and
    ``max(pmin(abs(scgrad), abs(gradient))) < tol``; ``R^-T g`` would give the Newton decrement, lme4's form is
    kept). The scaled gradient matters for large n: the criterion grows with n, and L-BFGS-B's stop on a relative
    reduction below 1e-12 (ftol) can leave a raw gradient of 2.5e-3 at 4e-10 deviance units from the optimum
    (30000 rows). H, by central differences of the analytic gradient (2 gradients per free component), is
    computed only when the raw gradient alone does not pass; a Hessian that is not positive definite there fails
    the check. ``grad``: the gradient at theta, if already known.
    """
    grad = grad_fn(theta) if grad is None else grad
    free = ~((theta <= lower) & (grad > 0))
    g = np.where(free, grad, 0.0)
    if np.max(np.abs(g)) < tol:
        return True
    idx = np.flatnonzero(free)
    h = 1e-4 * np.maximum(np.abs(theta[idx]), 1e-2)
    H = np.empty((idx.size, idx.size))
    for k, (i, hi) in enumerate(zip(idx, h)):
        e = np.zeros_like(theta)
        e[i] = hi
        H[k] = (grad_fn(theta + e)[idx] - grad_fn(theta - e)[idx]) / (2.0 * hi)
    try:
        R = np.linalg.cholesky(0.5 * (H + H.T)).T
    except np.linalg.LinAlgError:
        return False
    scaled = linalg.solve_triangular(R, g[idx])
    return bool(np.max(np.minimum(np.abs(scaled), np.abs(g[idx]))) < tol)


_GRAD_TOL = 2e-3  # lme4's check.conv.grad


def _projected(theta: np.ndarray, grad: np.ndarray, bounds: list) -> np.ndarray:
    """The gradient less its components that push theta through a lower bound it sits on."""
    lower = np.array([lo if lo is not None else -np.inf for lo, _ in bounds])
    return np.where((theta <= lower) & (grad > 0), 0.0, grad)


def _minimise(prob, method: str, start: np.ndarray, scale: np.ndarray, bounds: list,
              diag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Theta and the gradient there: L-BFGS-B with the analytic gradient, in ``theta / scale``, from ``start``.

    Two safeguards, each a restart of L-BFGS-B (at most two in all). Should it stop (its relative reduction of the
    criterion below ftol) with a projected gradient above lme4's tolerance, it goes on from there (on InstEval and
    the reference datasets the first run ends at most 8e-4). And a diagonal entry of a template (``diag``) that it
    leaves at 0 is probed off the boundary: the criterion is even in each column of a template (the column's sign
    does not change Lambda Lambda^T), so where the rest of the column is 0 its derivative there is 0 whether 0 is a
    minimum or a maximum, and L-BFGS-B, which follows the gradient, cannot tell them apart. From lme4's start it
    stopped at theta_2 = 0 on ``angle ~ temperature + (1 | recipe) + (1 | replicate)`` (cake) and ``height ~ age +
    (1 | Subject) + (1 | occasion)`` (Oxboys), 1.7 and 1.2 deviance units above lme4's optimum, and on the last
    diagonal entry of Chick's template in ChickWeight's ``weight ~ Time + (Time | Diet/Chick)``, 0.32 log-likelihood
    units below lme4. A probe at 0.1, then 0.01, (in units of the scale) that lowers the criterion by more than
    rounding (1e-9 relative) restarts from there.
    """
    opts = {"ftol": 1e-12, "gtol": 1e-8, "maxiter": 1000}
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
        moved = False
        for k in np.flatnonzero(diag & (x <= 0.0)):
            for step in (0.1, 0.01):
                probe = x.copy()
                probe[k] = step
                if pls_evaluate(probe * scale, prob, method).deviance < dev - 1e-9 * abs(dev):
                    x, moved = probe, True
                    break
            if moved:
                break
        if not moved:
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


def satterthwaite_pls(prob, method: str, theta: np.ndarray, sigma: float,
                      T: np.ndarray | None = None) -> np.ndarray:
    """Satterthwaite's df of each fixed effect, as lmerTest: ``df = 2 var^2 / (g^T A g)``.

    With ``T``, of each entry of ``T beta`` (the fixed effects of the data's X, when the problem's X is shifted:
    :func:`_shift_map`).

    ``A = 2 H^-1`` from the Hessian H of the deviance in (theta, sigma) (beta profiled out; a pseudo-inverse over
    eigenvalues above 1e-8), ``g`` the gradient of ``var(beta_j)`` in (theta, sigma): both by numDeriv's Richardson
    schemes, which lmerTest uses; the sigma column of g is analytic.
    """
    p, n = prob.p, prob.n
    Tt = np.eye(p) if T is None else T.T
    cache: dict = {}

    def ev_at(t):
        key = t.tobytes()
        if key not in cache:
            cache[key] = pls_evaluate(t, prob, method)
        return cache[key]

    def dev(vp):
        return deviance_theta_sigma(ev_at(vp[:-1]), vp[-1], n, p, method)

    def vcov_theta(t):
        RXi = np.linalg.solve(ev_at(t).RX, Tt)
        return (sigma**2 * (RXi.T @ RXi)).ravel()

    vp = np.append(theta, sigma)
    H = _hessian_genD(dev, vp)
    evals, evecs = np.linalg.eigh(H)
    pos = evals > _HESS_TOL
    A = 2.0 * (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
    k = len(theta)
    RXi = np.linalg.solve(ev_at(theta).RX, Tt)
    Vb = RXi.T @ RXi
    jac = np.empty((k + 1, p))
    for i in range(k):
        jac[i] = np.diag(_richardson(vcov_theta, theta, i).reshape(p, p))
    jac[k] = 2.0 * sigma * np.diag(Vb)
    var = sigma**2 * np.diag(Vb)
    return 2.0 * var**2 / np.einsum("ij,ik,kj->j", jac, A, jac)
