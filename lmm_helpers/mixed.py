"""``lmm(formula, data)``: lme4's formula, one grouping factor, random intercepts and slopes; and its result.

Two engines, one decision (:func:`lmm`): a lone random intercept ``(1 | g)`` goes to :func:`lmm_helpers.fit_lmm`
(the per-group means of notebook 10, one parameter, pooled by group size); anything else on one grouping factor
to the q x q blocks of :mod:`lmm_helpers.slopes`. Either way the result is an :class:`LMMFit` in lme4's and
lmerTest's conventions.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .design import _aliased, _check_exact_fit, _check_magnitude, _exactly, check_rank
from .fit import (ConvergenceWarning, IdentifiabilityWarning, SingularFitWarning, _coef_table, _quantiles,
                  fit_lmm)
from .formula import ParsedFormula, design_columns, grouping_factor, parse_formula
from .likelihood import _check_method
from .rformat import abbreviate, format_named, format_num, format_table, zapsmall
from .slopes import BlockSums, block_sums, evaluate, lambda_index

__all__ = ["LMMFit", "lmm", "lmm_criterion"]

_SINGULAR_TOL = 1e-4  # lme4's isSingular(tol = 1e-4), on the diagonal entries of theta
_HESS_TOL = 1e-8      # lmerTest's tol for the eigenvalues of the Hessian of the variance parameters
# A random slope whose covariate's mean is more than this many SDs from 0, beside a random intercept, is refused:
# the per-group Z_g^T Z_g then have condition numbers near the square of it. On sleepstudy with Days shifted by c
# (the same model, reparametrised) ML and REML reach the right criterion (to 1e-10) and pass the Newton check up to
# c = 1500 (522 SDs); from c = 2000 (696 SDs) REML fails the check, and at c = 1e4 the slope SD is off by 1e-4
# relative. lme4 is already wrong at c = 100 (36 SDs: a boundary fit, 17 log-likelihood units low).
_OFFSET_SDS = 400.0


@dataclass(frozen=True, eq=False)
class LMMFit:
    """A linear mixed model fitted by :func:`lmm`, in lme4's and lmerTest's conventions.

    Attributes
    ----------
    formula, method : str
    names : list of str
        Fixed-effect columns, as lme4 names and orders them (``"(Intercept)"``, ``"SexMale"``, ``"age:SexMale"``).
    beta : ndarray (p,)
    vcov : ndarray (p, p)
        ``sigma^2 (X^T V^-1 X)^-1``.
    sigma : float
        Residual standard deviation.
    loglik : float
        Log-likelihood (ML) or minus half the REML criterion (REML), as lme4's ``logLik``.
    theta : ndarray
        lme4's ``getME(fit, "theta")``: the entries of the relative covariance factor, term by term, each
        term's lower triangle by columns.
    varcorr : DataFrame
        As R's ``as.data.frame(VarCorr(fit))``: columns grp, var1, var2, vcov, sdcor.
    random_effects : dict
        ``{factor: DataFrame}`` of conditional modes (BLUPs), one row per level, as R's ``ranef(fit)``.
    converged, singular : bool
        The optimiser's check, and lme4's ``isSingular`` (a diagonal entry of theta below 1e-4).
    n_obs : int
    n_groups : dict
        ``{factor: number of levels}``.
    """

    formula: str
    method: str
    names: list
    beta: np.ndarray
    vcov: np.ndarray
    sigma: float
    loglik: float
    theta: np.ndarray
    varcorr: pd.DataFrame
    random_effects: dict = field(repr=False)
    converged: bool
    singular: bool
    n_obs: int
    n_groups: dict
    terms: tuple = field(repr=False)
    _df: Callable = field(repr=False)
    _resid: Callable = field(repr=False)
    unidentified: tuple = ()

    @property
    def identified(self) -> bool:
        """False when REML leaves a random effect's variance unidentified (X spans that column in every group)."""
        return not self.unidentified

    # ---------------------------------------------------------------------------------------- numbers
    @property
    def bse(self) -> np.ndarray:
        """Standard errors of ``beta``."""
        return np.sqrt(np.diag(self.vcov))

    @property
    def tvalues(self) -> np.ndarray:
        return self.beta / self.bse

    @cached_property
    def df(self) -> np.ndarray:
        """Satterthwaite's degrees of freedom of each coefficient, as lmerTest computes them (on first use)."""
        return self._df()

    @property
    def pvalues(self) -> np.ndarray:
        """Two-sided p-values of the t-tests with Satterthwaite's df."""
        return 2.0 * stats.t.sf(np.abs(self.tvalues), self.df)

    @property
    def fe_params(self) -> pd.Series:
        """``beta`` as a Series indexed by the fixed-effect names."""
        return pd.Series(self.beta, index=self.names, name="Estimate")

    @property
    def deviance(self) -> float:
        """``-2 loglik``: lme4's deviance (ML) or REML criterion at convergence."""
        return -2.0 * self.loglik

    @property
    def n_params(self) -> int:
        """Fixed effects, theta and sigma."""
        return len(self.beta) + len(self.theta) + 1

    @property
    def aic(self) -> float:
        return self.deviance + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        return self.deviance + self.n_params * np.log(self.n_obs)

    @cached_property
    def scaled_resid_quantiles(self) -> np.ndarray:
        """Min, quartiles and max of the conditional residuals over sigma (summary's "Scaled residuals")."""
        return self._resid()

    # ---------------------------------------------------------------------------------------- summary
    def summary(self, data: str | None = None) -> str:
        """Text laid out like lmerTest's ``summary()``, numbers formatted as R formats them.

        Parameters
        ----------
        data : str, optional
            The data's name for the ``Data:`` line, as R echoes it.
        """
        how = "maximum likelihood " if self.method == "ML" else "REML"
        lines = [f"Linear mixed model fit by {how}. t-tests use Satterthwaite's method [lmm_helpers]",
                 f"Formula: {self.formula}"]
        if data:
            lines.append(f"   Data: {data}")
        lines.append("")
        if self.method == "ML":
            vals = format_num(np.round([self.aic, self.bic, self.loglik, self.deviance], 1), 7)
            lines += format_named(["AIC", "BIC", "logLik", "deviance", "df.resid"],
                                  [*vals, str(self.n_obs - self.n_params)])
        else:
            lines.append(f"REML criterion at convergence: {self.deviance:.1f}")
        lines += ["", "Scaled residuals: "]
        lines += format_named(["Min", "1Q", "Median", "3Q", "Max"],
                              format_num(zapsmall(self.scaled_resid_quantiles, 5)))
        lines += ["", "Random effects:"] + self._random_table()
        counts = "; ".join(f"{k}, {v}" for k, v in self.n_groups.items())
        lines.append(f"Number of obs: {self.n_obs}, groups:  {counts}")
        lines += ["", "Fixed effects:"]
        lines += _coef_table(self.names, self.beta, self.bse, self.df, self.tvalues, self.pvalues)
        if len(self.beta) > 1 and self.identified:  # lme4: format(round(corr, 3), nsmall = 3), lower triangle
            p = len(self.beta)
            cc = _format_corr(self.vcov / np.outer(self.bse, self.bse), 3)
            cells = [[cc[i * p + j] if j < i else "" for j in range(p - 1)] for i in range(1, p)]
            rows = [abbreviate(n, 11) for n in self.names[1:]]
            lines += ["", "Correlation of Fixed Effects:"]
            lines += format_table(rows, [abbreviate(n) for n in self.names[:-1]], cells, right=False)
        if self.singular:
            lines += ["", "boundary (singular) fit: see help('isSingular')"]
        if self.unidentified:
            lines += ["", f"not identified under REML: {_unidentified_text(self.unidentified)}"]
        elif not self.converged:
            lines += ["", "the optimiser did not converge: treat the estimates with caution"]
        return "\n".join(line.rstrip() for line in lines)

    def _random_table(self) -> list[str]:
        """lme4's ``print(VarCorr(fit))`` (``formatVC``): Variance and Std.Dev. to 4 significant digits, each
        block's correlations rounded to 2 decimals in the lower triangle, columns left-aligned."""
        vc = self.varcorr
        diag = vc[vc.var2.isna()]
        var = [v.replace("nan", "NaN") for v in format_num(diag.vcov.to_numpy(), 4)]  # R's NaN (unidentified)
        sd = [v.replace("nan", "NaN") for v in format_num(diag.sdcor.to_numpy(), 4)]
        grps = list(dict.fromkeys(diag.grp))
        sizes = [int((diag.grp == g).sum()) for g in grps if g != "Residual"]
        width = max(sizes) - 1  # number of Corr columns
        rows = []
        for grp in grps:
            names = list(diag[diag.grp == grp].var1) if grp != "Residual" else [""]
            k = len(names)
            corr = np.eye(k)
            for _, r in vc[(vc.grp == grp) & vc.var2.notna()].iterrows():
                i, j = names.index(r.var1), names.index(r.var2)
                corr[i, j] = corr[j, i] = r.sdcor
            cc = _format_corr(corr) if k > 1 else [""]
            w = max(len(c) for c in cc)
            for a in range(k):
                cells = [cc[a * k + b].rjust(w) if b < a else "" for b in range(k)][:width]
                rows.append([grp if a == 0 else "", names[a], *(cells + [""] * (width - len(cells)))])
        cells = [[g, nm, var[i], sd[i], *rest] for i, (g, nm, *rest) in enumerate(rows)]
        header = ["Groups", "Name", "Variance", "Std.Dev."] + (["Corr"] + [""] * (width - 1) if width else [])
        table = format_table([""] * len(cells), header, cells, right=False)
        return table


def _format_corr(corr: np.ndarray, digits: int = 2) -> list[str]:
    """R's ``format(round(corr, digits), nsmall = digits)`` of a whole matrix, flattened by rows: common width."""
    vals = np.round(np.asarray(corr, dtype=float).ravel(), digits) + 0.0  # + 0.0: R prints -0 as 0
    out = [f"{v:.{digits}f}" for v in vals]
    width = max(len(c) for c in out)
    return [c.rjust(width) for c in out]


# ------------------------------------------------------------------------------------------ the fitter
def lmm(formula: str, data: pd.DataFrame, method: str = "ML") -> LMMFit:
    """Fit a linear mixed model written in lme4's formula language, by ML or REML.

    Parameters
    ----------
    formula : str
        ``"y ~ fixed + (expr | g)"``: numeric columns, factors (string, categorical or boolean columns, treatment
        coding against the first level), interactions ``a:b`` and ``a*b``, ``0 +`` or ``- 1``; random terms of one
        grouping factor ``g``: ``(1 | g)``, ``(x | g)``, ``(x + z | g)``, ``(0 + x | g)``, ``(x || g)``, and sums
        of such terms.
    data : DataFrame
        A pandas DataFrame, or a ``dask.dataframe.DataFrame`` (for data larger than memory, e.g. from
        ``dd.read_parquet``): then the sums are gathered partition by partition and reduced, and the same
        optimiser fits them (:func:`lmm_helpers.chunked.lmm_dask`).
    method : {"ML", "REML"}

    Returns
    -------
    LMMFit

    Raises
    ------
    ValueError
        A formula that cannot be read, a column not in data, missing values, a grouping factor with one level or
        as many levels as observations, more random effects than observations, a rank-deficient X.
    """
    _check_method(method)
    if type(data).__module__.split(".")[0] == "dask":  # out of core: chunk sums (lmm_helpers.chunked)
        from .chunked import lmm_dask
        return lmm_dask(formula, data, method)
    model = _build(formula, data)
    if model.crossed:  # several grouping factors: lme4's general algorithm
        from .crossed import fit_crossed

        return fit_crossed(model, method, data)
    if model.intercept_only:  # checks X itself (rank, magnitudes) from its grouped sums
        fit = fit_lmm(model.y, model.X, model.codes, method, names=model.names)
        return _from_fit_lmm(fit, formula, model.factor, model.labels)
    return _fit_blocks(model, method)


@dataclass(frozen=True, eq=False)
class _Model:
    """A formula read against its data: y, the columns of X and of each random block, group codes, block sums."""

    formula: str
    y: np.ndarray
    names: list
    x_cols: list
    znames: list
    z_cols: list
    terms: tuple
    factor: str
    codes: np.ndarray
    labels: pd.Index
    y_centre: float | None = None  # y_shift given from outside: one chunk of data centres on the whole's mean

    @property
    def crossed(self) -> bool:
        """More than one grouping factor (crossed or nested): fitted by :mod:`lmm_helpers.crossed`."""
        return len({t.factor for t in self.terms}) > 1

    @property
    def intercept_only(self) -> bool:
        return len(self.terms) == 1 and self.terms[0].terms == () and self.terms[0].intercept

    @property
    def X(self) -> np.ndarray:
        return np.column_stack(self.x_cols)

    @cached_property
    def index(self) -> tuple[np.ndarray, np.ndarray]:
        return lambda_index([len(z) for z in self.znames])

    def scaled_resid(self, beta: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
        """Min, quartiles and max of the conditional residuals over sigma, given beta and b (q, G)."""
        fitted = sum(bj * x for bj, x in zip(beta, self.x_cols))
        for j, z in enumerate(z for zc in self.z_cols for z in zc):
            fitted = fitted + z * b[j][self.codes]
        return _quantiles((self.y - fitted) / sigma, np.array([0.0, 0.25, 0.5, 0.75, 1.0]))

    @cached_property
    def y_shift(self) -> float:
        """The mean of y, subtracted before the O(n) pass when X has an intercept (else 0).

        ``y - c`` changes only the intercept (by c), not the likelihood; with y far from 0 (Oxboys' heights near
        150) the uncentred cross-products lose digits in ``[X y]^T [X y] - sum_g C_g^T C_g``: the REML criterion
        moved by 2e-12 relative, enough to put the optimum a hair below lme4's.
        """
        if self.y_centre is not None:
            return self.y_centre
        return float(np.mean(self.y)) if "(Intercept)" in self.names else 0.0

    @cached_property
    def sums(self) -> BlockSums:
        """The O(n) pass. Z and [X, y] share columns (a column's name fixes its values): each distinct one once."""
        cols, where = [], {}
        zpairs = [(nm, c) for bn, bc in zip(self.znames, self.z_cols) for nm, c in zip(bn, bc)]
        y = self.y - self.y_shift if self.y_shift else self.y
        for nm, col in [*zip(self.names, self.x_cols), *zpairs, ("\0y", y)]:
            if nm not in where:
                where[nm] = len(cols)
                cols.append(col)
        z_idx = [where[nm] for bn in self.znames for nm in bn]
        w_idx = [where[nm] for nm in self.names] + [where["\0y"]]
        return block_sums(cols, z_idx, w_idx, self.codes, len(self.labels), ones=where.get("(Intercept)"))


def _build(formula: str, data: pd.DataFrame) -> _Model:
    """Parse the formula, check it against data (lme4's checks), and build y, X, Z and the group codes."""
    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    parsed = parse_formula(formula)
    _check_columns(parsed, data, formula)
    if len(data) == 0:  # here, not in _columns: one chunk of the data may have no rows
        raise ValueError("data has no rows")
    model = _columns(formula, parsed, data)
    n_levels = None if model.labels is None else len(model.labels)  # crossed: crossed.py checks term by term
    _check_model(formula, parsed, model.names, [len(z) for z in model.znames], n_levels, len(model.y))
    return model


def _columns(formula: str, parsed: ParsedFormula, data: pd.DataFrame, levels: dict | None = None) -> _Model:
    """y, the columns of X and Z, and the group codes of data (all of it, or one chunk: see
    :mod:`lmm_helpers.chunked`); ``levels`` as for :func:`lmm_helpers.formula.design_columns`."""
    _check_columns(parsed, data, formula)
    y = _response(data, parsed.response)
    names, x_cols = design_columns(data, parsed.fixed, parsed.intercept, "fixed part", stack=False, levels=levels)
    blocks = [design_columns(data, t.terms, t.intercept, f"random term {t.text}", stack=False, levels=levels)
              for t in parsed.random]
    factor, codes, labels = None, None, None
    if len({t.factor for t in parsed.random}) == 1:  # several factors: crossed.py checks term by term
        factor = parsed.random[0].factor
        codes, labels = grouping_factor(data, parsed.random[0])
    return _Model(formula=formula, y=y, names=names, x_cols=x_cols, znames=[list(b[0]) for b in blocks],
                  z_cols=[b[1] for b in blocks], terms=parsed.random, factor=factor, codes=codes, labels=labels)


def _check_model(formula: str, parsed: ParsedFormula, names: list, sizes: list, n_levels: int | None,
                 n: int) -> None:
    """The checks that need the whole data's sizes: a fixed part with columns, and lme4's counts (``n_levels``
    None: several grouping factors, which :mod:`lmm_helpers.crossed` checks term by term)."""
    if not names:
        raise ValueError(f"formula {formula!r}: the fixed part has no columns (lmm needs at least one)")
    if n_levels is not None:
        _check_levels(parsed.random, sizes, n_levels, n)
    if len(names) + len(parsed.random) + 1 > n:
        raise ValueError(f"formula {formula!r}: more parameters than observations ({n})")


def _check_rank(sums: BlockSums, names: list) -> None:
    """Refuse a rank-deficient X, from ``X^T X`` in the block sums (no pass over the data).

    With an intercept column the other columns are centred first (``X_c^T X_c = X^T X - s s^T / n``, s the column
    sums), so a covariate far from 0 does not look collinear with the intercept; a column that centring leaves
    with less than 1e-7 of its length (R's ``lm`` tolerance) is a multiple of the intercept.
    """
    p, n = sums.p, sums.n
    xtx = sums.wtw[:p, :p].copy()
    if "(Intercept)" in names:
        k = names.index("(Intercept)")
        s = xtx[k].copy()
        raw = np.diag(xtx).copy()
        xtx -= np.outer(s, s) / n
        xtx[k, :] = xtx[:, k] = 0.0
        xtx[k, k] = n
        for j in np.flatnonzero(np.diag(xtx) <= 1e-14 * raw):
            raise ValueError(f"X is rank-deficient: column {names[j]!r} is constant, a multiple of the "
                             "intercept column '(Intercept)'")
    check_rank(xtx, names)


def _check_data(model) -> None:
    """fit_lmm's data checks for a model with q x q blocks: magnitudes, a covariate far from 0 beside a random
    intercept, a y that X fits exactly, and no residual df once X and each group's own Z_g are fitted.

    The last is ``fit._check_design``'s argument with Z_g in place of the group indicator: when y is fitted exactly
    by X and a free b_g per group, sigma -> 0 sends the likelihood to infinity (lme4 checks only that there are
    more observations than random effects, and returns a spurious fit).

    Which checks need the data: only the magnitudes (:func:`_check_values`, value by value, so the out-of-core route
    runs them on each chunk as it builds its columns, in :func:`lmm_helpers.chunked.chunk_sums`) and the named
    "constant response" message (out of core, from the range of y each chunk met). Everything else reads the block
    sums alone (:func:`_check_sums`), so the out-of-core route, whose model (``chunked._Summed``) carries merged
    sums and no data, runs it on the reduced sums.
    """
    if isinstance(model, _Model):
        _check_values(model)
        if np.all(model.y == model.y[0]):
            raise ValueError(f"the response is constant (every value is {model.y[0]:g}): it has no variation, so "
                             "nothing is left for the residual variance")
    _check_sums(model)


def _check_values(model: _Model) -> None:
    """Magnitudes of y and of every column of X and Z, before the block sums square anything (one chunk or all)."""
    _check_magnitude("data: the response", model.y)
    for nm, col in [*zip(model.names, model.x_cols),
                    *((nm, c) for bn, bc in zip(model.znames, model.z_cols) for nm, c in zip(bn, bc))]:
        _check_magnitude(f"data: column {nm!r}", col)


def _check_sums(model) -> None:
    """The checks of :func:`_check_data` that read only ``model.sums`` (and names, terms, factor, y_shift)."""
    sums, p = model.sums, model.sums.p
    _check_rank(sums, model.names)
    znames = [nm for bn in model.znames for nm in bn]
    if "(Intercept)" in znames:  # mean and SD of each slope column, from Z_g^T Z_g: its sum and sum of squares
        k = znames.index("(Intercept)")
        for j, nm in enumerate(znames):
            mean, square = float(np.sum(sums.ztz[j, k])) / sums.n, float(np.sum(sums.ztz[j, j])) / sums.n
            var = square - mean**2
            if var <= 1e-14 * square:  # constant (to rounding): left to _check_z, as in memory
                continue
            sd = np.sqrt(var)
            if nm != "(Intercept)" and abs(mean) > _OFFSET_SDS * sd:
                raise ValueError(
                    f"random term(s) {' + '.join(t.text for t in model.terms)}: column {nm!r} has mean "
                    f"{mean:.6g}, {abs(mean) / sd:.3g} SDs from 0, where the random "
                    "intercept is defined: intercept and slope are then nearly collinear in every group and "
                    f"cannot be estimated to any accuracy (more than {_OFFSET_SDS:g} SDs is refused). Centre it "
                    "(subtract its mean, or a round value near it) and refit")
    _check_z(sums, znames, model)
    M = _centred(sums, model.names)
    xtx = M[:p, :p]
    z = np.linalg.solve(np.linalg.cholesky(xtx), M[:p, p])
    # y^T y of the data's own y: the sums hold y - y_shift, and with an intercept (else y_shift = 0) its sum
    shift = model.y_shift
    yty = sums.wtw[p, p] + (2.0 * shift * sums.wtw[model.names.index("(Intercept)"), p] + sums.n * shift**2
                            if shift else 0.0)
    _check_exact_fit(M[p, p] - z @ z, float(yty), M[p, p])
    # X and a free b_g per group: project each group's Z_g out of [X y] (pseudo-inverse: S_g may be singular)
    S = sums.ztz.transpose(2, 0, 1)
    R = sums.wtw - np.einsum("qag,gqr,rbg->ab", sums.ztw, np.linalg.pinv(S, hermitian=True), sums.ztw)
    rank_z = int(np.sum(np.linalg.matrix_rank(S, hermitian=True)))
    kept = [j for j in range(p) if j not in _aliased(R[:p, :p], np.sqrt(np.diag(xtx)))]
    if sums.n - rank_z - len(kept) <= 0:
        raise ValueError(f"X and each group's own random-effect columns fit all {sums.n} observations exactly "
                         f"(rank {rank_z + len(kept)} >= n): no residual degrees of freedom are left, so the "
                         "likelihood is unbounded as sigma -> 0. Use fewer random effects or more observations")
    zw = np.linalg.solve(np.linalg.cholesky(R[np.ix_(kept, kept)]), R[kept, p]) if kept else np.zeros(0)
    if _exactly(R[p, p] - zw @ zw, float(yty), sums.wtw[p, p], per_value=2.0):
        raise ValueError("y has no residual variation once X and each group's own random-effect columns are fitted "
                         "(y constant within every group, say): the residual variance is zero and the likelihood "
                         "is unbounded")


def _check_z(sums: BlockSums, znames: list, model: _Model) -> None:
    """Refuse a random-effect column that is, in every group, a combination of the columns before it (all zeros,
    constant beside a random intercept, constant within each group, a multiple of another): its random effects
    cannot be told apart from theirs, and the fit returned an arbitrary split of the variances (``(C | g)`` with
    C = 5 gave 1829 and 102 with a covariance of -319).
    """
    S = sums.ztz.transpose(2, 0, 1)  # (G, q, q)
    for j in range(len(znames)):
        total = float(np.sum(S[:, j, j]))
        if j:
            proj = np.linalg.pinv(S[:, :j, :j], hermitian=True)
            left = float(np.sum(S[:, j, j] - np.einsum("ga,gab,gb->g", S[:, j, :j], proj, S[:, j, :j])))
        else:
            left = total
        if not left > 1e-10 * total:
            why = ("all zeros" if total == 0 else f"in every group of {model.factor!r} a combination of the columns "
                   f"before it ({', '.join(map(repr, znames[:j]))})")
            raise ValueError(f"random term(s) {' + '.join(t.text for t in model.terms)}: column {znames[j]!r} is "
                             f"{why}, so its random effects cannot be told apart from theirs; drop it from the "
                             "random part")


def _centred(sums: BlockSums, names: list) -> np.ndarray:
    """``[X y]^T [X y]`` with the columns other than the intercept centred (as is), from the block sums."""
    M = sums.wtw.copy()
    if "(Intercept)" in names:
        k = names.index("(Intercept)")
        s = M[k].copy()
        M -= np.outer(s, s) / sums.n
        M[k, :] = M[:, k] = 0.0
        M[k, k] = sums.n
    return M


def _unidentified(model: _Model) -> tuple:
    """The random-effect columns whose group-level parts all lie in X's column space (REML cannot estimate them).

    Column j of Z stands for G columns ``z_j 1_g``; what is left of them once X is projected out has squared
    length ``sum_g (S_g[j, j] - c_gj^T (X^T X)^-1 c_gj)`` with ``c_gj = X_g^T z_gj``, from the block sums alone.
    """
    sums, names, p = model.sums, model.names, model.sums.p
    xtx = sums.wtw[:p, :p]
    d = np.sqrt(np.diag(xtx))
    C = sums.ztw[:, :p, :] / d[None, :, None]  # (q, p, G), X's columns scaled to unit length
    L = np.linalg.cholesky(xtx / np.outer(d, d))
    W = np.linalg.solve(L, C.transpose(1, 0, 2).reshape(p, -1)).reshape(p, C.shape[0], -1)
    explained = np.einsum("pqg,pqg->q", W, W)
    total = np.einsum("qqg->q", sums.ztz)
    flat = [nm for bn in model.znames for nm in bn]
    out = [nm for nm, e, t in zip(flat, explained, total) if t - e <= 1e-10 * t]
    return tuple(dict.fromkeys(out))


def lmm_criterion(formula: str, data: pd.DataFrame, theta, method: str = "ML") -> float:
    """lme4's profiled deviance (ML) or REML criterion of a model at a given theta (``devfun(theta)`` in lme4).

    Parameters
    ----------
    formula, data
        As for :func:`lmm`.
    theta : array-like
        lme4's theta (``getME(fit, "theta")``), one entry per element of the relative covariance factor.
    method : {"ML", "REML"}
    """
    _check_method(method)
    model = _build(formula, data)
    theta = np.asarray(theta, dtype=float)
    if model.crossed:
        from .crossed import crossed_criterion

        return crossed_criterion(model, data, theta, method)
    _check_data(model)  # the data checks of lmm: a clear ValueError rather than a LinAlgError from evaluate
    if theta.shape != model.index[0].shape:
        raise ValueError(f"theta has {theta.size} entries; {formula!r} has {model.index[0].size}")
    return evaluate(theta, model.sums, model.index, method).deviance


def _check_columns(parsed: ParsedFormula, data: pd.DataFrame, formula: str) -> None:
    """Every variable of the formula must be a column of data; name the term that uses one that is not."""
    uses = [(parsed.response, "the response")]
    uses += [(v, f"fixed term {':'.join(t)!r}") for t in parsed.fixed for v in t]
    for r in parsed.random:
        uses += [(v, f"random term {r.text}") for t in r.terms for v in t] + [(v, f"random term {r.text}")
                                                                               for v in r.columns]
    for var, where in uses:
        if var not in data.columns:
            raise ValueError(f"formula {formula!r}: {where} uses {var!r}, which is not a column of data "
                             f"(columns: {list(map(str, data.columns))})")
        if int(np.sum(data.columns == var)) > 1:  # data[var] would be a DataFrame, not a column
            raise ValueError(f"formula {formula!r}: {where} uses {var!r}, which names several columns of data; "
                             "column names must be unique")


def _response(data: pd.DataFrame, name: str) -> np.ndarray:
    col = data[name]
    if not pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        raise ValueError(f"data: the response {name!r} must be numeric, got dtype {col.dtype}")
    y = col.to_numpy(dtype=float, na_value=np.nan)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"data: the response {name!r} contains NaN or inf; drop or impute those rows first")
    return y


def _check_levels(terms: tuple, sizes: list, n_levels: int, n: int) -> None:
    """lme4's checks: more than one level, fewer levels than observations, fewer random effects than observations."""
    factor = terms[0].factor
    where = " + ".join(t.text for t in terms)
    if n_levels < 2:
        raise ValueError(f"random term {where}: grouping factor {factor!r} has {n_levels} level; a random "
                         "effect needs at least 2 (lme4: grouping factors must have > 1 sampled level)")
    if n_levels >= n:
        raise ValueError(f"random term {where}: grouping factor {factor!r} has {n_levels} levels for {n} "
                         "observations; lme4 needs fewer levels than observations")
    n_re = sum(sizes) * n_levels
    if n_re >= n:
        raise ValueError(f"random term {where}: {n_re} random effects ({sum(sizes)} per level of {factor!r}) for "
                         f"{n} observations; lme4 needs more observations than random effects (the variances "
                         "are unidentifiable)")


# --------------------------------------------------------------------- the random intercept: fit_lmm
def _from_fit_lmm(fit, formula: str, factor: str, labels: pd.Index, resid: Callable | None = None) -> LMMFit:
    """The LMMFit of a ``(1 | g)`` model fitted by :func:`fit_lmm` (lme4's theta is sigma_s / sigma).

    ``resid()``, if given, computes the scaled residuals' quantiles on first use (the out-of-core route's pass).
    """
    theta = np.array([np.sqrt(fit.theta)])
    varcorr = _varcorr([np.array([[fit.sigma_s**2]])], [["(Intercept)"]], [factor], fit.sigma)
    ranef = pd.DataFrame({"(Intercept)": fit.random_effects.to_numpy()}, index=labels)
    return LMMFit(formula=formula, method=fit.method, names=list(fit.names), beta=fit.beta, vcov=fit.vcov,
                  sigma=fit.sigma, loglik=fit.loglik, theta=theta, varcorr=varcorr, random_effects={factor: ranef},
                  converged=_warn_fit(fit.converged, bool(theta[0] < _SINGULAR_TOL)),
                  singular=bool(theta[0] < _SINGULAR_TOL), n_obs=fit.n_obs, n_groups={factor: fit.n_groups},
                  terms=(f"(1 | {factor})",), _df=lambda: fit.df, _resid=resid or (lambda: fit.scaled_resid_quantiles),
                  unidentified=() if fit.identified else ("(Intercept)",))  # fit_lmm has warned


def _warn_fit(converged: bool, singular: bool, unidentified: tuple = ()) -> bool:
    if unidentified:  # the flat directions of the criterion are why the optimiser could not settle
        warnings.warn(f"not identified under REML: {_unidentified_text(unidentified)}; their variances and "
                      "covariances, the BLUPs and the fixed effects' standard errors are NaN (lme4 warns that the "
                      "Hessian is singular). Drop the group-level columns from the fixed part or fit by ML",
                      IdentifiabilityWarning, stacklevel=4)
        return converged
    if singular:
        warnings.warn("boundary (singular) fit: a random-effect variance is estimated as 0 or a correlation as "
                      "+-1 (lme4's isSingular)", SingularFitWarning, stacklevel=4)
    if not converged:
        warnings.warn("the optimiser did not converge: the estimates may not be the maximum", ConvergenceWarning,
                      stacklevel=4)
    return converged


def _unidentified_text(names: tuple) -> str:
    return (f"the fixed part spans the random effect(s) {', '.join(map(repr, names))} of every group, so no "
            "between-group information is left for them")


def _varcorr(covs: list, znames: list, groups: list, sigma: float) -> pd.DataFrame:
    """R's ``as.data.frame(VarCorr(fit))``: each block's variances, then its covariances; the residual last."""
    rows = []
    for cov, names, grp in zip(covs, znames, groups):
        sd = np.sqrt(np.diag(cov))
        for i, nm in enumerate(names):
            rows.append((grp, nm, None, cov[i, i], sd[i]))
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                denom = sd[i] * sd[j]
                rows.append((grp, names[i], names[j], cov[i, j], cov[i, j] / denom if denom > 0 else np.nan))
    rows.append(("Residual", None, None, sigma**2, sigma))
    df = pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])
    df[["var1", "var2"]] = df[["var1", "var2"]].astype(object)
    df = df.astype({"vcov": float, "sdcor": float})
    return df.where(df.notna(), None).astype({"vcov": float, "sdcor": float})


# ---------------------------------------------------------------------------- random slopes: q x q blocks
def _fit_blocks(model: _Model, method: str, theta: np.ndarray | None = None) -> LMMFit:
    """Fit a model of one grouping factor with q x q blocks (:mod:`lmm_helpers.slopes`).

    With ``theta`` given, no optimisation: the result at that theta (the tests hold it against R at R's theta).
    """
    _check_data(model)  # magnitudes first (before the block sums square anything), then the rank and the rest
    names, labels, factor = model.names, model.labels, model.factor
    n, p = model.sums.n, len(names)
    sums, index, znames = model.sums, model.index, model.znames
    unident = _unidentified(model) if method == "REML" else ()
    sizes = [len(bn) for bn in znames]
    if theta is None:
        theta, converged = _optimise_scaled(sums, index, method)
    else:
        theta, converged = np.asarray(theta, dtype=float), True
    ev = evaluate(theta, sums, index, method)
    beta = ev.beta.copy()
    if model.y_shift:
        beta[names.index("(Intercept)")] += model.y_shift
    m = n if method == "ML" else n - p
    sigma2 = ev.r2 / m
    sigma = float(np.sqrt(sigma2))
    RXi = np.linalg.solve(ev.RX, np.eye(p))  # (X^T V^-1 X)^-1 = RX^-T RX^-1
    vcov = sigma2 * (RXi.T @ RXi)
    b = ev.Lam @ ev.u  # (q, G): conditional modes in the data's units
    singular = bool(np.any(theta[index[0] == index[1]] < _SINGULAR_TOL))
    groups = _block_groups(factor, len(znames))
    covs, start = [], 0
    for k in sizes:
        Lb = ev.Lam[start:start + k, start:start + k]
        covs.append(sigma2 * (Lb @ Lb.T))
        start += k
    varcorr = _varcorr(covs, znames, groups, sigma)
    flat = [nm for bn in znames for nm in bn]
    ranef = pd.DataFrame(b.T, index=labels, columns=flat)
    ranef = ranef.loc[:, ~ranef.columns.duplicated()]
    df = lambda: satterthwaite(sums, index, method, theta, sigma)  # noqa: E731
    if unident:  # what depends on the flat directions of the criterion is meaningless
        bad = varcorr.var1.isin(unident) | varcorr.var2.isin(unident)
        varcorr.loc[bad, ["vcov", "sdcor"]] = np.nan
        ranef[[c for c in ranef.columns if c in unident]] = np.nan
        vcov = np.full_like(vcov, np.nan)
        singular = False
        df = lambda: np.full(p, np.nan)  # noqa: E731

    def resid() -> np.ndarray:
        return model.scaled_resid(beta, b, sigma)

    return LMMFit(formula=model.formula, method=method, names=list(names), beta=beta, vcov=vcov, sigma=sigma,
                  loglik=-0.5 * ev.deviance, theta=theta, varcorr=varcorr, random_effects={factor: ranef},
                  converged=_warn_fit(converged, singular, unident), singular=singular, n_obs=n,
                  n_groups={factor: len(labels)}, terms=tuple(t.text for t in model.terms),
                  _df=df, _resid=resid, unidentified=unident)


def _block_groups(factor: str, k: int) -> list:
    """lme4's names of the blocks of one factor in VarCorr: ``g``, ``g.1``, ``g.2`` ..."""
    return [factor if i == 0 else f"{factor}.{i}" for i in range(k)]


def _optimise_scaled(sums: BlockSums, index, method: str) -> tuple[np.ndarray, bool]:
    """:func:`_optimise` with each random-effect column whose root mean square is outside [1e-2, 1e2] divided by
    the power of 2 nearest it (exact in floating point), and theta mapped back (``Lambda = S^-1 Lambda'``).

    The optimiser starts at Lambda = I, which assumes the random effects' SDs near sigma divided by their columns'
    size: with Days in units 1e4 times larger the start was 10^8 too large and the Cholesky factor of
    ``X^T V^-1 X`` lost positive definiteness (LinAlgError); with units 1e6 smaller the optimiser stopped on a
    plateau 4.4 log-likelihood units low. Columns of ordinary size are left alone, so those fits do not change.
    """
    rms = np.sqrt(np.einsum("jjg->j", sums.ztz) / sums.n)
    scale = np.where((rms > 0) & ((rms < 1e-2) | (rms > 1e2)), 2.0 ** np.round(np.log2(np.where(rms > 0, rms, 1.0))),
                     1.0)
    if np.all(scale == 1.0):
        return _optimise(sums, index, method)
    scaled = BlockSums(ztz=sums.ztz / np.outer(scale, scale)[:, :, None], ztw=sums.ztw / scale[:, None, None],
                       wtw=sums.wtw, n=sums.n)
    theta, converged = _optimise(scaled, index, method)
    return theta / scale[index[0]], converged


def _optimise(sums: BlockSums, index, method: str) -> tuple[np.ndarray, bool]:
    """Minimise the profiled criterion over theta (diagonal entries >= 0), from lme4's start (Lambda = I).

    First without bounds: a Lambda with a negative diagonal entry is as good a factor (flip the signs of that
    column and Lambda Lambda^T is unchanged), and an optimiser that may pass through 0 is not caught at a boundary
    it met on the way (with bounds from the start, ``0 + Days + (Days | Subject)`` stopped at a correlation of 1,
    9 log-likelihood units below lme4). Then the columns are flipped to lme4's signs and, if a diagonal entry is
    near 0, a bounded run settles a boundary optimum exactly at 0. Both runs are L-BFGS-B with the analytic
    gradient. Newton steps with a forward-difference Hessian of that gradient polish and check the optimum
    (converged: a positive definite Hessian in the free entries and a Newton step below 1e-4 of theta's scale).
    """
    rows, cols = index
    diag = rows == cols
    bounds = [(0.0, None) if d else (None, None) for d in diag]
    opts = {"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000, "maxcor": 20}

    def fun(t):
        ev = evaluate(t, sums, index, method, gradient=True)
        return ev.deviance, ev.grad

    free_run = optimize.minimize(fun, np.where(diag, 1.0, 0.0), jac=True, method="L-BFGS-B", options=opts)
    theta, dev, grad = free_run.x.copy(), free_run.fun, free_run.jac
    for j in rows[diag][theta[diag] < 0]:
        theta[cols == j] *= -1.0  # flip column j of Lambda: the same Lambda Lambda^T, the same deviance
    if np.any(theta[diag] < 1e-3 * max(1.0, np.max(np.abs(theta)))):  # near the boundary: settle it there
        res = optimize.minimize(fun, theta, jac=True, method="L-BFGS-B", bounds=bounds, options=opts)
        theta = np.where(diag, np.maximum(res.x, 0.0), res.x)
        dev, grad = fun(theta)
    else:
        grad = fun(theta)[1]  # the gradient at the flipped point (flipping changes its signs)
    converged = False
    for _ in range(4):
        free = ~(diag & (theta <= 0.0) & (grad >= 0.0))
        H = _grad_jacobian(lambda t: fun(t)[1], theta, grad, free)
        try:
            C = np.linalg.cholesky(H[np.ix_(free, free)])
        except np.linalg.LinAlgError:  # not a minimum in the free directions
            converged = False
            break
        step = np.linalg.solve(C.T, np.linalg.solve(C, grad[free]))
        # lme4 checks the Newton step too (its "relative gradient", tolerance 2e-3); theta is on the scale of
        # sigma, so 1e-4 of it is well inside what the data determine.
        size = np.max(np.abs(step)) / max(1.0, np.max(np.abs(theta)))
        converged = bool(size <= 1e-4)
        new = theta.copy()
        new[free] -= step
        new = np.where(diag, np.maximum(new, 0.0), new)
        dev_new, grad_new = fun(new)
        if not dev_new < dev:  # within rounding of the optimum: keep the best point seen
            break
        theta, dev, grad = new, dev_new, grad_new
        if size < 1e-7:  # the next step would be below rounding of the criterion
            break
    return theta, converged


def _grad_jacobian(g: Callable, x: np.ndarray, gx: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Forward-difference Jacobian of the gradient g at x (the Hessian), in the free coordinates; ``gx = g(x)``."""
    k = len(x)
    H = np.zeros((k, k))
    for i in np.flatnonzero(free):
        h = 1e-6 * max(abs(x[i]), 1e-2)
        e = np.zeros(k)
        e[i] = h
        H[:, i] = (g(x + e) - gx) / h
    return 0.5 * (H + H.T)


# ------------------------------------------------------------------------------------- Satterthwaite
def _richardson(f: Callable, x: np.ndarray, i: int) -> np.ndarray:
    """numDeriv's Richardson derivative of vector-valued f in coordinate i (d = 1e-4, r = 4, v = 2)."""
    h = 1e-4 * abs(x[i]) + 1e-4 * (abs(x[i]) < np.sqrt(np.finfo(float).eps / 7e-7))
    a = []
    for _ in range(4):
        e = np.zeros(len(x))
        e[i] = h
        a.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h))
        h /= 2.0
    for m in range(1, 4):
        a = [(a[j + 1] * 4**m - a[j]) / (4**m - 1) for j in range(len(a) - 1)]
    return a[0]


def satterthwaite(sums: BlockSums, index, method: str, theta: np.ndarray, sigma: float) -> np.ndarray:
    """Satterthwaite's df of each fixed effect, as lmerTest: ``df = 2 var^2 / (g^T A g)``.

    lmerTest takes the deviance as a function of ``(theta, sigma)`` (beta profiled out), ``A = 2 H^-1`` from its
    Hessian H (a pseudo-inverse over the eigenvalues above 1e-8), and ``g`` the gradient of ``var(beta_j)`` in
    ``(theta, sigma)``. Here the theta-theta block of H is the Richardson-extrapolated Jacobian of the analytic
    gradient, the sigma rows are analytic, and the theta part of g is Richardson-extrapolated (numDeriv's scheme).
    """
    p, n = sums.p, sums.n
    m = n if method == "ML" else n - p
    s2 = sigma**2

    def derivs(t):  # the theta-gradient of the deviance at fixed sigma, and vcov(beta) at fixed sigma
        ev = evaluate(t, sums, index, method, gradient=True)
        g_ld, g_r2, g_rx = ev.parts
        RXi = np.linalg.solve(ev.RX, np.eye(p))
        grad = g_ld + g_r2 / s2 + (g_rx if method == "REML" else 0.0)
        return np.concatenate([grad, np.diag(s2 * (RXi.T @ RXi))])

    k = len(theta)
    ev = evaluate(theta, sums, index, method, gradient=True)
    d = np.array([_richardson(derivs, theta, i) for i in range(k)])  # (k, k + p): one set of evaluations
    H = np.empty((k + 1, k + 1))
    H[:k, :k] = 0.5 * (d[:, :k] + d[:, :k].T)
    H[:k, k] = H[k, :k] = -2.0 * ev.parts[1] / sigma**3
    H[k, k] = 6.0 * ev.r2 / sigma**4 - 2.0 * m / s2
    evals, evecs = np.linalg.eigh(H)
    pos = evals > _HESS_TOL
    A = 2.0 * (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
    RXi = np.linalg.solve(ev.RX, np.eye(p))
    Vb = RXi.T @ RXi
    jac = np.vstack([d[:, k:], 2.0 * sigma * np.diag(Vb)])  # d var(beta_j) / d(theta, sigma)
    var = s2 * np.diag(Vb)
    return 2.0 * var**2 / np.einsum("ij,ik,kj->j", jac, A, jac)
