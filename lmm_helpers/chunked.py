"""``lmm`` chunk by chunk: the sums of notebooks 10 and 11 gathered per chunk of rows, keyed by group label, merged.

Everything the likelihood of a model of one grouping factor needs from the data is a set of sums over rows
(notebook 10: per-group counts, means and within-group cross-products; notebook 11: the per-group ``Z_g^T Z_g``
and ``Z_g^T [X_g y_g]`` and the total ``[X y]^T [X y]``). Sums over rows add across chunks of rows, so a fit is a
map-reduce: :func:`chunk_sums` on each chunk (the very code the in-memory :func:`lmm_helpers.lmm` runs on all of
its data), :func:`merge_sums` to combine two chunks' sums (a tree of them for many chunks), then :func:`fit_sums`,
the in-memory optimiser. :func:`lmm_dask` does this over the partitions of a Dask DataFrame.

Keyed by label, not by position: a chunk holds some groups, and the same group may appear in several chunks; the
merge aligns labels (the union, sorted as :func:`lmm_helpers.design.group_codes` sorts them). Raw per-group sums
(the slopes engine's) simply add. The random-intercept engine keeps its sums centred within groups (to avoid
cancellation when a column sits far from 0), and those merge by the parallel-axis rule (Chan, Golub and LeVeque
1979): for a group met in chunks a and b, with counts ``n_a, n_b`` and means ``m_a, m_b``,

    n = n_a + n_b,   m = (n_a m_a + n_b m_b) / n,   W = W_a + W_b + (n_a n_b / n) (m_a - m_b)(m_a - m_b)^T,

exact in exact arithmetic and free of the cancellation of ``sum x^2 - n m^2``.

Factor columns of the fixed part need their levels before any chunk builds its columns (a chunk may lack a level,
and the columns of every chunk must be the same): :func:`lmm_dask` makes one cheap first pass over those columns
only. The scaled residuals of ``summary()`` need beta and the BLUPs, so they cost passes after the fit: they run
on first use (exact quantiles by a histogram, then only the values in the few bins that hold them).

The checks of the in-memory route run here too, on the same code. Those that read only sums (rank of X, a
constant column beside the intercept, a y that X fits exactly, no residual df, no variation within groups, a
random-effect column that the ones before it determine, a slope column far from 0 beside a random intercept, and
REML identifiability, which makes the fit's ``unidentified`` and NaNs and warns as in memory) run once, on the
reduced sums (:func:`lmm_helpers.fit.fit_group_sums`, :func:`lmm_helpers.mixed._check_sums`). Those that need the
values look at one value at a time (NaN or inf, magnitudes too large or small to square) and run on each chunk in
:func:`chunk_sums`; the magnitude message quotes the largest value of the chunk that failed. A constant response
is named as in memory, from the smallest and largest y of each chunk. lme4's counts (levels, observations,
random effects) run on the merged sums' sizes.

Several grouping factors, crossed or nested (``(1 | a) + (1 | b)``, ``(1 | a/b)``, ``(x | a) + (1 | b:c)``), go to
lme4's algorithm (:mod:`lmm_helpers.crossed`), whose sums over rows (the first term's per-level blocks, ``Z2^T Z2``,
``Z2^T Z1`` and ``Z2^T [X y]`` as sparse or dense matrices, ``[X y]^T [X y]``, n) come from
:func:`lmm_helpers.crossed.crossed_sums`, the code the in-memory route runs on all its rows. Their rows and columns
are levels, so every chunk must index them alike: a first pass collects each grouping factor's levels (for an
interaction ``a:b``, the combinations met), which fixes lme4's order of the terms (decreasing number of levels)
before the sums pass; it also records y's minimum and maximum (a constant response is named as such), y's mean and
the covariates' means (the columns of X are shifted by them, as in memory: :func:`lmm_helpers.crossed._x_shift`).
The sums then add across chunks (sparse matrices too) and :func:`lmm_helpers.crossed.fit_crossed_sums` fits them.
Every check that reads sums runs on the merged ones; the dense least-squares check of y on ``[X, Z]`` (a y that X
and the random effects fit exactly) needs the rows and is not made out of core (in memory it is skipped above a size
too). The scaled residuals of ``summary()`` take the passes of the one-factor route, on first use. A model whose
only grouping factor is an interaction ``a:b`` is refused out of core (add a column of its labels).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd

from .design import group_codes
from .fit import fit_group_sums
from .formula import ParsedFormula, _is_factor, design_columns, parse_formula
from .likelihood import GroupSums, _check_method, group_sums
from .mixed import LMMFit, _check_model, _check_values, _columns, _fit_blocks, _from_fit_lmm, _response
from .slopes import BlockSums, lambda_index

__all__ = ["LabelledSums", "chunk_sums", "merge_sums", "fit_sums", "lmm_dask"]

_PROBS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])


@dataclass(frozen=True)
class LabelledSums:
    """One chunk's (or several merged chunks') sufficient statistics, with the group label of each group.

    Attributes
    ----------
    labels : pandas.Index
        The groups met, sorted as :func:`lmm_helpers.design.group_codes` sorts them.
    sums : GroupSums or BlockSums
        Random intercept alone: :class:`lmm_helpers.likelihood.GroupSums` (centred within groups); otherwise
        :class:`lmm_helpers.slopes.BlockSums`. Their last axis (groups) follows ``labels``.
    names : list of str
        The columns of X.
    znames : list of list of str
        The columns of each random term.
    y_shift : float
        What was subtracted from y before the block sums (the slopes engine centres y on a mean against
        cancellation; chunks must all use the same value for their sums to add). 0 for the random-intercept engine,
        which centres within groups instead.
    y_range : tuple of float
        The smallest and largest y met (a constant response is named as such; ``(inf, -inf)`` for no rows).
    """

    labels: pd.Index
    sums: GroupSums | BlockSums
    names: list
    znames: list
    y_shift: float = 0.0
    y_range: tuple = (np.inf, -np.inf)

    @property
    def n(self) -> int:
        return self.sums.n


def _parse(formula: str) -> ParsedFormula:
    parsed = parse_formula(formula)
    return parsed


def _intercept_only(parsed: ParsedFormula) -> bool:
    return len(parsed.random) == 1 and parsed.random[0].terms == () and parsed.random[0].intercept


def chunk_sums(formula: str, data: pd.DataFrame, levels: dict | None = None, y_shift: float = 0.0) -> LabelledSums:
    """The sufficient statistics of one chunk of rows: the same code :func:`lmm_helpers.lmm` runs on all its data.

    Parameters
    ----------
    formula : str
        As for :func:`lmm_helpers.lmm`.
    data : DataFrame
        A chunk of rows (any number, even none).
    levels : dict, optional
        ``{column: Index}``: the levels of every factor column of the formula in the whole data (see
        :func:`factor_levels`); needed whenever a chunk may lack a level.
    y_shift : float
        Subtracted from y before the block sums of a model with random slopes (the same for every chunk: e.g.
        the mean of y over all the data, from a first pass; 0 keeps y as it is). Ignored with a random intercept
        alone, whose sums are centred within groups.

    Returns
    -------
    LabelledSums
    """
    parsed = _parse(formula)
    model = _columns(formula, parsed, data, levels)
    _check_values(model)  # the only data checks that need the values (magnitudes): value by value, so per chunk
    if _intercept_only(parsed):
        sums = group_sums(model.y, model.X if model.x_cols else np.empty((len(model.y), 0)), model.codes,
                          len(model.labels))
        y_shift = 0.0
    else:
        y_shift = float(y_shift) if "(Intercept)" in model.names else 0.0
        sums = replace(model, y_centre=y_shift).sums
    y_range = (float(np.min(model.y, initial=np.inf)), float(np.max(model.y, initial=-np.inf)))
    return LabelledSums(labels=model.labels, sums=sums, names=model.names, znames=model.znames, y_shift=y_shift,
                        y_range=y_range)


def merge_sums(a: LabelledSums, b: LabelledSums) -> LabelledSums:
    """The sums of two chunks together: per-label sums add, centred ones merge by the parallel-axis rule.

    Parameters
    ----------
    a, b : LabelledSums
        Of the same formula (the same columns of X and Z).

    Returns
    -------
    LabelledSums
    """
    if a.y_shift != b.y_shift:
        raise ValueError(f"merge_sums: the chunks centred y on different values ({a.y_shift}, {b.y_shift}); "
                         "give every chunk the same y_shift")
    if a.names != b.names or a.znames != b.znames:
        raise ValueError(f"merge_sums: the chunks have different columns ({a.names}, {a.znames} and {b.names}, "
                         f"{b.znames}); give every chunk the same factor levels")
    codes, labels = group_codes(a.labels.append(b.labels))
    ia, ib = codes[:len(a.labels)], codes[len(a.labels):]
    G = len(labels)
    if isinstance(a.sums, GroupSums):
        sa, sb = a.sums, b.sums
        counts = np.zeros(G)
        counts[ia] += sa.counts
        counts[ib] += sb.counts
        total = np.zeros((G, sa.means.shape[1]))
        total[ia] += sa.counts[:, None] * sa.means
        total[ib] += sb.counts[:, None] * sb.means
        means = total / counts[:, None]
        # groups in both chunks: the parallel-axis term of each, summed
        both, ja, jb = np.intersect1d(ia, ib, assume_unique=True, return_indices=True)
        na, nb = sa.counts[ja], sb.counts[jb]
        delta = sa.means[ja] - sb.means[jb]
        within = sa.within + sb.within + (delta.T * (na * nb / (na + nb))) @ delta
        # a group met in one chunk only keeps its own mean, bit for bit
        only_a = np.setdiff1d(np.arange(len(ia)), ja, assume_unique=True)
        only_b = np.setdiff1d(np.arange(len(ib)), jb, assume_unique=True)
        means[ia[only_a]] = sa.means[only_a]
        means[ib[only_b]] = sb.means[only_b]
        sums = GroupSums(counts=counts, means=means, within=within)
    else:
        sa, sb = a.sums, b.sums
        ztz = np.zeros(sa.ztz.shape[:2] + (G,))
        ztw = np.zeros(sa.ztw.shape[:2] + (G,))
        ztz[..., ia] += sa.ztz
        ztz[..., ib] += sb.ztz
        ztw[..., ia] += sa.ztw
        ztw[..., ib] += sb.ztw
        sums = BlockSums(ztz=ztz, ztw=ztw, wtw=sa.wtw + sb.wtw, n=sa.n + sb.n)
    return LabelledSums(labels=labels, sums=sums, names=a.names, znames=a.znames, y_shift=a.y_shift,
                        y_range=(min(a.y_range[0], b.y_range[0]), max(a.y_range[1], b.y_range[1])))


@dataclass(frozen=True, eq=False)
class _Summed:
    """What :func:`lmm_helpers.mixed._fit_blocks` reads of a model, from merged sums and a residual pass."""

    formula: str
    names: list
    znames: list
    terms: tuple
    factor: str
    labels: pd.Index
    sums: BlockSums
    resid: Callable
    y_shift: float

    @cached_property
    def index(self) -> tuple[np.ndarray, np.ndarray]:
        return lambda_index([len(z) for z in self.znames])

    def scaled_resid(self, beta: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
        return self.resid(beta, b, sigma)


def fit_sums(formula: str, total: LabelledSums, method: str = "ML",
             resid: Callable | None = None) -> LMMFit:
    """Fit the model from its merged sums with the in-memory optimiser: :func:`lmm_helpers.lmm` without the data.

    Parameters
    ----------
    formula : str
    total : LabelledSums
        The sums of all the data (:func:`chunk_sums` of each chunk, merged by :func:`merge_sums`).
    method : {"ML", "REML"}
    resid : callable, optional
        ``resid(beta, b, sigma)``, b the BLUPs (q, G): min, quartiles and max of the scaled residuals (a pass over
        the data). Without it they are NaN in ``summary()``.

    Returns
    -------
    LMMFit
    """
    _check_method(method)
    parsed = _parse(formula)
    sums, labels = total.sums, total.labels
    _check_model(formula, parsed, total.names, [len(z) for z in total.znames], len(labels), sums.n)
    if total.y_range[0] == total.y_range[1]:  # as in memory (fit_lmm's words, or _check_data's), from y's range
        every = f"(every value is {total.y_range[0]:g})"
        raise ValueError(f"y is constant {every}: it has no variation within groups, so nothing is left for the "
                         "residual variance" if isinstance(sums, GroupSums) else
                         f"the response is constant {every}: it has no variation, so nothing is left for the "
                         "residual variance")
    factor = parsed.random[0].factor
    if resid is None:
        def resid(beta, b, sigma):
            return np.full(5, np.nan)
    if isinstance(sums, GroupSums):
        fit = fit_group_sums(sums, total.names, labels, method)
        # not identified (REML, X spanning the groups): BLUPs NaN, residuals those of X alone, as in memory
        blups = fit.random_effects.to_numpy() if fit.identified else np.zeros(fit.n_groups)
        return _from_fit_lmm(fit, formula, factor, labels, resid=lambda: resid(fit.beta, blups[None, :], fit.sigma))
    model = _Summed(formula=formula, names=total.names, znames=total.znames, terms=parsed.random, factor=factor,
                    labels=labels, sums=sums, resid=resid, y_shift=total.y_shift)
    return _fit_blocks(model, method)


# --------------------------------------------------------------------------------------------------- Dask
def _variables(parsed: ParsedFormula) -> list:
    """Every column the formula reads, in a fixed order, without repeats."""
    names = [parsed.response] + [v for t in parsed.fixed for v in t]
    for r in parsed.random:
        names += [v for t in r.terms for v in t] + list(r.columns)
    return list(dict.fromkeys(names))


def _partition(part: pd.DataFrame, i: int, columns: list) -> pd.DataFrame:
    """The formula's columns of partition i, or a ValueError naming the missing column and the partition."""
    missing = [c for c in columns if c not in part.columns]
    if missing:
        raise ValueError(f"data: partition {i} has no column {missing[0]!r} (its columns: "
                         f"{list(map(str, part.columns))}); every partition needs every column of the formula")
    return part[columns]


def _partition_levels(part: pd.DataFrame, i: int, columns: list, response: str) -> tuple[dict, float, int]:
    """The first pass on one partition: the values met in each factor column, and the sum and count of y."""
    part = _partition(part, i, columns + [response])
    y = part[response].to_numpy(dtype=float, na_value=np.nan)
    return ({c: pd.unique(part[c].astype(object) if isinstance(part[c].dtype, pd.CategoricalDtype)
                          else part[c]) for c in columns}, float(np.sum(y)), len(y))


def _union_levels(a: tuple, b: tuple) -> tuple[dict, float, int]:
    return ({c: pd.unique(np.concatenate([np.asarray(a[0][c], dtype=object), np.asarray(b[0][c], dtype=object)]))
             for c in a[0]}, a[1] + b[1], a[2] + b[2])


def factor_levels(meta: pd.DataFrame, found: dict) -> dict:
    """Order the levels found in the data as the in-memory route does: a categorical's own order (unused ones
    dropped), else sorted (R's ``factor``). A Dask categorical whose categories are unknown counts as unordered."""
    out = {}
    for c, vals in found.items():
        cats = meta[c].cat.categories if isinstance(meta[c].dtype, pd.CategoricalDtype) else None
        if cats is not None and "__UNKNOWN_CATEGORIES__" not in cats:
            present = set(vals)
            out[c] = pd.Index([v for v in cats if v in present], dtype=object)
        else:
            out[c] = pd.Index(sorted(vals), dtype=object)
    return out


def _partition_sums(part: pd.DataFrame, i: int, columns: list, formula: str, levels: dict,
                    y_shift: float) -> LabelledSums:
    return chunk_sums(formula, _partition(part, i, columns), levels, y_shift)


def _partition_resid(part: pd.DataFrame, i: int, columns: list, formula: str, levels: dict, beta: np.ndarray,
                     b: np.ndarray, labels: pd.Index, sigma: float) -> np.ndarray:
    """The scaled conditional residuals of one partition, at the fitted beta and BLUPs b (q, G)."""
    model = _columns(formula, _parse(formula), _partition(part, i, columns), levels)
    where = labels.get_indexer(model.labels)
    fitted = np.zeros(len(model.y))
    for bj, x in zip(beta, model.x_cols):
        fitted = fitted + bj * x
    for j, z in enumerate(z for zc in model.z_cols for z in zc):
        fitted = fitted + z * b[j][where][model.codes]
    return (model.y - fitted) / sigma


def _tree(items: list, combine: Callable) -> object:
    """Reduce delayed items pairwise, level by level (depth log2 of their number)."""
    import dask

    merge = dask.delayed(combine, pure=True)
    while len(items) > 1:
        items = [merge(items[k], items[k + 1]) if k + 1 < len(items) else items[k] for k in range(0, len(items), 2)]
    return items[0]


def _exact_quantiles(parts: list, n: int, probs: np.ndarray) -> np.ndarray:
    """``np.quantile`` of the values spread over delayed arrays, exactly, in three passes of small results.

    Pass 1: min and max. Pass 2: a histogram of 2^16 equal bins. Pass 3: the values in the (few) bins holding the
    order statistics needed; those are sorted and read as ``np.quantile`` (linear interpolation) reads them.
    """
    import dask

    lo_hi = dask.compute(*[dask.delayed(lambda r: (r.min(initial=np.inf), r.max(initial=-np.inf)))(p)
                           for p in parts])
    lo, hi = min(v[0] for v in lo_hi), max(v[1] for v in lo_hi)
    nbins = 1 << 16
    scale = nbins / (hi - lo) if hi > lo else 0.0

    def bins(r):
        return np.minimum(((r - lo) * scale).astype(np.intp), nbins - 1)

    hist = sum(dask.compute(*[dask.delayed(lambda r: np.bincount(bins(r), minlength=nbins))(p) for p in parts]))
    cum = np.cumsum(hist)
    pos = probs * (n - 1)
    ks = sorted({int(np.floor(x)) for x in pos} | {min(int(np.floor(x)) + 1, n - 1) for x in pos})
    need = np.unique(np.searchsorted(cum, np.array(ks), side="right"))
    picked = dask.compute(*[dask.delayed(lambda r: r[np.isin(bins(r), need)])(p) for p in parts])
    vals = np.sort(np.concatenate(picked))
    start = np.concatenate([[0], cum])[need]  # rank of the first value of each needed bin
    offsets = np.concatenate([[0], np.cumsum(hist[need])])

    def order_stat(k):
        j = int(np.searchsorted(cum, k, side="right"))
        i = int(np.flatnonzero(need == j)[0])
        return vals[offsets[i] + k - start[i]]

    out = np.empty(len(probs))
    for m, x in enumerate(pos):
        k = int(np.floor(x))
        t = x - k
        a, b = order_stat(k), order_stat(min(k + 1, n - 1))
        out[m] = b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t  # numpy's lerp
    return out


def lmm_dask(formula: str, data, method: str = "ML") -> LMMFit:
    """:func:`lmm_helpers.lmm` of a ``dask.dataframe.DataFrame``: one pass of sums over its partitions, reduced.

    Each partition's sums come from :func:`chunk_sums` (the in-memory code), a tree of :func:`merge_sums` reduces
    them, and :func:`fit_sums` fits them with the in-memory optimiser: the numbers equal the in-memory fit of the
    same rows to rounding. It runs wherever Dask runs (threads, processes, a ``dask.distributed`` cluster).

    Passes over the data: a first one over the factor columns for their levels and over y for its mean (the slopes
    engine centres y on it, as in memory; with a random intercept alone and no factor it is skipped), then one for
    the sums. Several grouping factors (crossed or nested) take the route of :func:`_lmm_dask_crossed`. beta, its
    covariance, Satterthwaite's df, the variance components, the log-likelihood and the BLUPs (``random_effects``)
    all come from the sums; the scaled residuals of ``summary()`` need three more passes, made on first use.

    Parameters
    ----------
    formula : str
    data : dask.dataframe.DataFrame
    method : {"ML", "REML"}

    Returns
    -------
    LMMFit
    """
    import dask

    _check_method(method)
    parsed = _parse(formula)
    meta = data._meta
    columns = _variables(parsed)
    for c in columns:
        if c not in meta.columns:
            raise ValueError(f"formula {formula!r} uses {c!r}, which is not a column of data "
                             f"(columns: {list(map(str, meta.columns))})")
    if len({r.factor for r in parsed.random}) > 1:  # crossed or nested: lme4's algorithm from merged sums
        return _lmm_dask_crossed(formula, parsed, data, method)
    if len(parsed.random[0].columns) > 1:
        raise ValueError(f"formula {formula!r}: out of core (a Dask DataFrame), a model of one grouping factor "
                         "needs it to be a column of data; an interaction a:b as its only grouping factor is not "
                         "implemented out of core yet: add a column of its labels (a + ':' + b) and use that")
    parts = data.to_delayed()
    factors = [c for c in columns if c not in (parsed.response, parsed.random[0].factor) and _is_factor(meta[c])]
    levels, y_shift = {}, 0.0
    if factors or not _intercept_only(parsed):  # the first pass: levels, and the mean of y to centre it on
        found, y_sum, n = _tree([dask.delayed(_partition_levels, pure=True)(p, i, factors, parsed.response)
                                 for i, p in enumerate(parts)], _union_levels).compute()
        levels = factor_levels(meta, found)
        y_shift = y_sum / n if n and np.isfinite(y_sum) else 0.0
    total = _tree([dask.delayed(_partition_sums, pure=True)(p, i, columns, formula, levels, y_shift)
                   for i, p in enumerate(parts)], merge_sums).compute()
    if isinstance(total.labels.dtype, pd.StringDtype):  # Dask reads strings as pyarrow's: label them as pandas
        total = replace(total, labels=total.labels.astype("str"))

    def resid(beta: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
        rs = [dask.delayed(_partition_resid, pure=True)(p, i, columns, formula, levels, beta, b, total.labels,
                                                        sigma) for i, p in enumerate(parts)]
        return _exact_quantiles(rs, total.n, _PROBS)

    return fit_sums(formula, total, method, resid)


# ------------------------------------------------------------------------------ Dask: several grouping factors
def _crossed_first(part: pd.DataFrame, i: int, columns: list, factors: list, grouping: list, response: str,
                   numeric: list) -> dict:
    """The first pass on one partition, for a model of several grouping factors: the values met in each factor
    column, the combinations met of each grouping factor's columns, y's sum, count, min and max, and the sum of
    each column of X made of covariates only (to shift it by its mean: :func:`lmm_helpers.crossed._x_shift`)."""
    part = _partition(part, i, columns)
    y = _response(part, response)
    found = {c: pd.Series(pd.unique(part[c].astype(object) if isinstance(part[c].dtype, pd.CategoricalDtype)
                                    else part[c])) for c in factors}
    groups = {}
    for cols in grouping:
        for c in cols:
            if part[c].isna().any():
                raise ValueError(f"data: grouping factor {c!r} has missing values (partition {i}); drop those rows "
                                 "first")
        groups[cols] = part[list(cols)].drop_duplicates().reset_index(drop=True)
    names, xcols = design_columns(part, numeric, False, "fixed part", stack=False) if numeric else ([], [])
    return {"found": found, "groups": groups, "y": (float(np.sum(y)), len(y), float(np.min(y, initial=np.inf)),
                                                     float(np.max(y, initial=-np.inf))),
            "x": {nm: float(np.sum(c)) for nm, c in zip(names, xcols)}}


def _union_first(a: dict, b: dict) -> dict:
    return {"found": {c: pd.Series(pd.unique(pd.concat([a["found"][c], b["found"][c]], ignore_index=True)))
                      for c in a["found"]},
            "groups": {k: pd.concat([a["groups"][k], b["groups"][k]], ignore_index=True).drop_duplicates()
                       .reset_index(drop=True) for k in a["groups"]},
            "y": (a["y"][0] + b["y"][0], a["y"][1] + b["y"][1], min(a["y"][2], b["y"][2]), max(a["y"][3], b["y"][3])),
            "x": {k: a["x"][k] + b["x"][k] for k in a["x"]}}


@dataclass(frozen=True, eq=False)
class _Coding:
    """A grouping factor's levels in the whole data, as :func:`lmm_helpers.formula.grouping_factor` orders and
    labels them: each column's levels; for an interaction, the combinations present (mixed-radix codes, sorted)."""

    columns: tuple
    levels: list
    combos: np.ndarray | None
    labels: pd.Index

    def codes(self, part: pd.DataFrame) -> np.ndarray:
        """The level of each row of a partition (any subset of the levels)."""
        cs = [lev.get_indexer(part[c].astype(object) if isinstance(part[c].dtype, pd.CategoricalDtype)
                              else part[c]) for c, lev in zip(self.columns, self.levels)]
        for c, k in zip(self.columns, cs):
            if np.any(k < 0):
                raise ValueError(f"data: grouping factor {c!r} has missing values or a value not met in the first "
                                 "pass; drop those rows first")
        if self.combos is None:
            return cs[0].astype(np.intp)
        return np.searchsorted(self.combos, self._combine(cs)).astype(np.intp)

    def _combine(self, cs: list) -> np.ndarray:
        out = np.zeros(len(cs[0]), dtype=np.int64)
        for k, lev in zip(cs, self.levels):
            out = out * len(lev) + k
        return out


def _coding(meta: pd.DataFrame, cols: tuple, rows: pd.DataFrame) -> _Coding:
    """The coding of a grouping factor from the combinations of its columns met in the data (the first pass)."""
    levels = []
    for c in cols:
        vals = rows[c].drop_duplicates()
        cats = meta[c].cat.categories if isinstance(meta[c].dtype, pd.CategoricalDtype) else None
        if cats is not None and "__UNKNOWN_CATEGORIES__" not in cats:
            present = set(vals.astype(object))
            levels.append(pd.Index([v for v in cats if v in present], dtype=object))
        else:
            levels.append(group_codes(vals.reset_index(drop=True))[1])
    if len(cols) == 1:
        return _Coding(columns=cols, levels=levels, combos=None, labels=levels[0])
    coding = _Coding(columns=cols, levels=levels, combos=None, labels=pd.Index([]))
    combos = np.unique(coding._combine([lev.get_indexer(rows[c]) for c, lev in zip(cols, levels)]))
    digits, rest = [], combos
    for lev in levels[::-1]:
        digits.append(rest % len(lev))
        rest = rest // len(lev)
    names = [[str(v) for v in lev] for lev in levels]
    labels = [":".join(names[j][d[k]] for j, d in enumerate(digits[::-1])) for k in range(len(combos))]
    return _Coding(columns=cols, levels=levels, combos=combos, labels=pd.Index(labels))


def _crossed_partition(part: pd.DataFrame, i: int, columns: list, formula: str, levels: dict, codings: list,
                       n_levels: list, order: list, x_shift: np.ndarray, y_shift: float):
    """One partition's sums (:func:`lmm_helpers.crossed.crossed_sums`, the in-memory code) against the whole
    data's levels."""
    from .crossed import crossed_sums

    part = _partition(part, i, columns)
    model = _columns(formula, _parse(formula), part, levels)
    _check_values(model)  # the magnitudes, value by value
    return crossed_sums(model, [c.codes(part) for c in codings], n_levels, order, x_shift, y_shift)


def _crossed_resid(part: pd.DataFrame, i: int, columns: list, formula: str, levels: dict, codings: list,
                   order: list, beta: np.ndarray, modes: list, sigma: float) -> np.ndarray:
    """The scaled conditional residuals of one partition, at the fitted beta and conditional modes."""
    part = _partition(part, i, columns)
    model = _columns(formula, _parse(formula), part, levels)
    fitted = np.zeros(len(model.y))
    for bj, x in zip(beta, model.x_cols):
        fitted = fitted + bj * x
    for k, mode in zip(order, modes):
        codes = codings[k].codes(part)
        for j, z in enumerate(model.z_cols[k]):
            fitted = fitted + z * mode[codes, j]
    return (model.y - fitted) / sigma


def _plain_labels(labels: pd.Index) -> pd.Index:
    """Labels as the in-memory route gives them (Dask reads strings as pyarrow's: as pandas' own)."""
    return labels.astype("str") if isinstance(labels.dtype, pd.StringDtype) else labels


def _lmm_dask_crossed(formula: str, parsed: ParsedFormula, data, method: str) -> LMMFit:
    """:func:`lmm_dask` for several grouping factors: a first pass (levels, combinations, y's range and mean,
    covariates' means), then one pass of :func:`lmm_helpers.crossed.crossed_sums`, reduced, then
    :func:`lmm_helpers.crossed.fit_crossed_sums`; the scaled residuals of ``summary()`` cost three passes more, on
    first use. The dense check of y on ``[X, Z]`` needs the rows and is not made (see
    :func:`lmm_helpers.crossed._check_sums`)."""
    import dask

    from .crossed import (_check_terms, _lme4_order, _numeric_columns, _Terms, _x_shift, fit_crossed_sums,
                          merge_crossed)

    meta = data._meta
    columns = _variables(parsed)
    parts = data.to_delayed()
    used = [v for t in parsed.fixed for v in t] + [v for r in parsed.random for t in r.terms for v in t]
    factors = [c for c in dict.fromkeys(used) if _is_factor(meta[c])]
    grouping = list(dict.fromkeys(r.columns for r in parsed.random))
    numeric_names = _numeric_columns(formula, lambda v: _is_factor(meta[v]))
    numeric = [t for t in parsed.fixed if ":".join(t) in numeric_names]
    first = _tree([dask.delayed(_crossed_first, pure=True)(p, i, columns, factors, grouping, parsed.response,
                                                            numeric) for i, p in enumerate(parts)],
                  _union_first).compute()
    y_sum, n, y_min, y_max = first["y"]
    if n == 0:
        raise ValueError("data has no rows")
    if y_min == y_max:
        raise ValueError(f"the response is constant (every value is {y_min:g}): it has no variation, so nothing is "
                         "left for the residual variance")
    levels = factor_levels(meta, first["found"])
    codings = {cols: _coding(meta, cols, first["groups"][cols]) for cols in grouping}
    codings = [codings[r.columns] for r in parsed.random]
    shape = _columns(formula, parsed, meta, levels)  # the names of X's and Z's columns (no rows)
    _check_model(formula, parsed, shape.names, [len(z) for z in shape.znames], None, n)
    n_levels = [len(c.labels) for c in codings]
    order = _lme4_order(n_levels)
    info = _Terms(formula=formula, names=list(shape.names), terms=tuple(parsed.random[k] for k in order),
                  znames=[list(shape.znames[k]) for k in order],
                  labels=[_plain_labels(codings[k].labels) for k in order], order=order)
    _check_terms(info, n)
    intercept = "(Intercept)" in shape.names
    x_shift = _x_shift(shape.names, {nm: s / n for nm, s in first["x"].items()})
    y_shift = y_sum / n if intercept else 0.0
    total = _tree([dask.delayed(_crossed_partition, pure=True)(p, i, columns, formula, levels, codings, n_levels,
                                                                order, x_shift, y_shift)
                   for i, p in enumerate(parts)], merge_crossed).compute()

    def resid(beta: np.ndarray, modes: list, sigma: float) -> np.ndarray:
        rs = [dask.delayed(_crossed_resid, pure=True)(p, i, columns, formula, levels, codings, order, beta, modes,
                                                      sigma) for i, p in enumerate(parts)]
        return _exact_quantiles(rs, n, _PROBS)

    return fit_crossed_sums(info, total, method, resid)
