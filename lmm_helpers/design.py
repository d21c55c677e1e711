"""Design matrices, the random-effect indicator matrix K, and checking a model's inputs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import linalg

__all__ = ["ModelData", "check_inputs", "check_rank", "group_codes", "indicator_matrix", "toy_design"]

# Largest and smallest magnitude of data the fitters accept: squares and cross-products of values beyond 1e+-100,
# summed over many rows, overflow or underflow double precision (its range is about 1e+-308).
_MAGNITUDE = (1e-100, 1e100)


@dataclass(frozen=True)
class ModelData:
    """Validated inputs of a random-intercept model ``y = X beta + K u + e``.

    Attributes
    ----------
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
    codes : ndarray of int, shape (n,)
        Group index of each row, ``0 .. n_groups-1``.
    labels : pandas.Index
        The group label of each code.
    names : list of str
        Names of the columns of X.
    """

    y: np.ndarray
    X: np.ndarray
    codes: np.ndarray
    labels: pd.Index
    names: list

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def p(self) -> int:
        return self.X.shape[1]

    @property
    def n_groups(self) -> int:
        return len(self.labels)


def _real_dtype(dtype) -> bool:
    """Whether a NumPy or pandas dtype holds real numbers (not bool, complex, text, dates or categories)."""
    return (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
            and not pd.api.types.is_complex_dtype(dtype))


def _refuse_masked(name: str, value) -> None:
    """Refuse a numpy masked array with masked entries: ``np.asarray`` would drop the mask and use the hidden values."""
    if np.ma.isMaskedArray(value) and np.ma.getmaskarray(value).any():
        count = int(np.ma.getmaskarray(value).sum())
        raise ValueError(f"{name} is a masked array with {count} masked value(s); their hidden values would be used: "
                         "drop those rows from y, X and groups alike first (keep = ~np.ma.getmaskarray(...))")


def _check_same_index(**objs) -> None:
    """Refuse pandas inputs whose indexes differ: rows are matched by position, never aligned by label.

    statsmodels refuses the same. Aligning by label silently would reorder or drop rows; reset the indexes
    (``.reset_index(drop=True)``) or reindex the inputs to one another first.
    """
    indexed = [(name, obj.index) for name, obj in objs.items() if isinstance(obj, (pd.Series, pd.DataFrame))]
    for (name0, idx0), (name, idx) in zip(indexed, indexed[1:]):
        if not idx.equals(idx0):
            raise ValueError(f"{name0} and {name} are pandas objects with different indexes; rows are matched by "
                             "position, not by label: reindex them to one another or reset their indexes "
                             "(.reset_index(drop=True)) first")


def _check_magnitude(name: str, arr: np.ndarray, names: list | None = None) -> None:
    """Refuse values too large or too small to square and sum in double precision (see ``_MAGNITUDE``).

    From the largest absolute value of each column (before any square is formed, so no overflow warning is
    printed first); an all-zero column is left to the rank check.
    """
    # column by column: a reduction over axis 0 of a C-ordered (n, p) array is ten times slower (80 ms at 1e6 rows)
    cols = [arr] if arr.ndim == 1 else [arr[:, j] for j in range(arr.shape[1])]
    top = np.array([np.abs(c).max() if c.size else 0.0 for c in cols])
    lo, hi = _MAGNITUDE
    for j in np.flatnonzero((top > 0) & ((top < lo) | (top > hi))):
        what = name if arr.ndim == 1 else f"{name}: column {names[j]!r}"
        size = float(top[j])
        raise ValueError(f"{what} has values of magnitude {size:.1e}, too large or too small to square in double "
                         "precision; rescale it (change its units)")


def _exactly(rss: float, yy: float, centred: float, per_value: float = 16.0) -> bool:
    """Whether a residual sum of squares ``rss`` is rounding rather than data.

    ``yy`` is the uncentred sum of squares of y and ``centred`` the sum of squares ``rss`` was subtracted from.
    Each value of y carries a relative rounding error of about ``eps``, so a residual SD under ``per_value * eps``
    times y's root mean square is rounding; and ``rss``, formed as a difference of cross-products, carries an
    error of a few ``eps * centred``, so a residual under ``1e3 eps`` of that is rounding too.
    """
    eps = np.finfo(float).eps
    return not rss > (per_value * eps) ** 2 * yy + 1e3 * eps * centred


def _check_exact_fit(rss: float, yy: float, centred: float = 0.0) -> None:
    """Refuse a y that X fits exactly, to the precision its values carry (:func:`_exactly`).

    Raises
    ------
    ValueError
        When the residual sum of squares ``rss`` is rounding: a constant y, or y = X b computed in floating point.
    """
    if _exactly(rss, yy, centred):
        raise ValueError("y is fitted exactly by X (to the precision of its values): the residual variance is zero")


def _check_names(names, p: int) -> list:
    """The column names as strings, one per column of X and all different (else fe_params and summary() mix them)."""
    if isinstance(names, str) or not hasattr(names, "__len__"):  # "ab" would name two columns 'a' and 'b'
        raise ValueError(f"names must be a list of column names, one per column of X, got {names!r}")
    names = [str(nm) for nm in names]
    if len(names) != p:
        raise ValueError(f"names has {len(names)} entries but X has {p} columns")
    dup = sorted({nm for nm in names if names.count(nm) > 1})
    if dup:
        raise ValueError(f"the names of the columns of X must be distinct; repeated: {', '.join(map(repr, dup))}")
    return names


def _numeric(name: str, value) -> np.ndarray:
    hint = " (cast 0/1 indicators with .astype(float))"
    _refuse_masked(name, value)
    if isinstance(value, (pd.Series, pd.DataFrame)):
        # Column by column, so that pandas' nullable dtypes (Float64, Int64) count as numbers and pd.NA as NaN,
        # and a DataFrame with one bad column says which.
        dtypes = value.dtypes.items() if isinstance(value, pd.DataFrame) else [(None, value.dtype)]
        for col, dtype in dtypes:
            if not _real_dtype(dtype):
                where = f" (column {col!r})" if col is not None else ""
                raise ValueError(f"{name} must be numeric (real numbers){where}, got dtype {dtype}"
                                 + (hint if pd.api.types.is_bool_dtype(dtype) else ""))
        value = value.to_numpy(dtype=float, na_value=np.nan)
    arr = np.asarray(value)
    if not _real_dtype(arr.dtype):
        raise ValueError(f"{name} must be numeric (real numbers), got dtype {arr.dtype}"
                         + (hint if arr.dtype == bool else ""))
    arr = arr.astype(float, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; drop or impute those rows first")
    return arr


def _integer_codes(groups) -> tuple[np.ndarray, pd.Index] | None:
    """Codes of integer labels with a compact range by counting instead of hashing (O(n), no sort); else None."""
    if isinstance(groups, (pd.Series, pd.Index)) and isinstance(groups.dtype, np.dtype):
        groups = groups.to_numpy()
    if not isinstance(groups, np.ndarray) or groups.dtype.kind not in "iu" or groups.size == 0:
        return None
    lo, hi = int(groups.min()), int(groups.max())
    if hi - lo > 2 * groups.size:  # sparse labels: a table over their range would be wasteful
        return None
    dtype = groups.dtype
    if dtype.itemsize < np.dtype(np.intp).itemsize:  # int8 labels -100..100 minus -100 would wrap around
        groups = groups.astype(np.intp)
    base = groups.dtype.type(lo)  # in the labels' own type: uint64 labels >= 2**63 do not fit a C long
    shifted = (groups - base if lo != 0 else groups).astype(np.intp, copy=False)
    present = np.bincount(shifted, minlength=hi - lo + 1) > 0
    lookup = np.cumsum(present, dtype=np.intp) - 1
    labels = pd.Index((np.flatnonzero(present).astype(groups.dtype) + base).astype(dtype, copy=False))
    return lookup[shifted], labels


def group_codes(groups) -> tuple[np.ndarray, pd.Index]:
    """Turn any hashable group labels into integer codes ``0..G-1`` and the labels in sorted order.

    Parameters
    ----------
    groups : array-like of hashable
        One label per row: numbers, strings, a pandas Categorical or Series.
    """
    _refuse_masked("groups", groups)
    if isinstance(groups, pd.DataFrame) or (isinstance(groups, np.ndarray) and groups.ndim != 1):
        raise ValueError(f"groups must be 1-D (one label per row), got shape {np.shape(groups)}")
    if not isinstance(groups, (pd.Series, pd.Index, np.ndarray, pd.api.extensions.ExtensionArray)):
        groups = pd.Series(list(groups))  # a list or other sequence of hashable labels
    fast = _integer_codes(groups)
    if fast is not None:
        return fast
    try:
        try:
            codes, labels = pd.factorize(groups, sort=True)
        except TypeError:  # labels of mixed types that cannot be ordered
            codes, labels = pd.factorize(groups, sort=False)
    except TypeError as err:  # labels that cannot be hashed: lists, arrays, dicts
        raise ValueError(f"groups must hold one hashable label per row (a number, a string, a tuple): {err}") from None
    if np.any(codes < 0):
        raise ValueError("groups contains missing labels (NaN or None)")
    return codes.astype(np.intp, copy=False), pd.Index(labels)


def _aliased(cross: np.ndarray, scale: np.ndarray, tol: float = 1e-7) -> list[int]:
    """Columns that are linear combinations of the columns before them, to R's ``lm`` tolerance.

    A Cholesky factorisation of the cross-product ``cross = X^T X`` taken in column order: the pivot of column j
    is the squared length of what is left of it after projecting out the kept columns before it, and R's QR
    (``dqrdc2``, ``tol = 1e-7``) declares the column aliased when that length is under ``tol`` times the
    column's length, here ``scale[j]``. Aliased columns are skipped, as R gives them an NA coefficient.

    Parameters
    ----------
    cross : ndarray, shape (p, p)
        A cross-product ``X^T X`` (or a part of one, such as the within-group cross-products).
    scale : ndarray, shape (p,)
        The length each column is measured against (for X itself, ``sqrt(diag(cross))``).
    tol : float
        Relative length under which a column counts as aliased.
    """
    p = cross.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        C = cross / np.outer(scale, scale)
    kept: list[int] = []
    aliased: list[int] = []
    L = np.zeros((p, p))
    for j in range(p):
        if not scale[j] > 0:
            aliased.append(j)
            continue
        k = len(kept)
        row = linalg.solve_triangular(L[:k, :k], C[kept, j], lower=True) if k else np.zeros(0)
        pivot = C[j, j] - row @ row
        if not pivot > tol**2:
            aliased.append(j)
            continue
        L[k, :k] = row
        L[k, k] = np.sqrt(pivot)
        kept.append(j)
    return aliased


def check_rank(xtx: np.ndarray, names: list) -> None:
    """Raise a ValueError when the cross-product ``X^T X`` shows X to be rank-deficient, to R's ``lm`` tolerance.

    Free of the columns' units. A column is refused when less than 1e-7 of its length is left once the columns
    before it are projected out (:func:`_aliased`), R's ``lm`` rule: a design with condition number 2e6 that
    ``lm`` and ``lmer`` fit passes, exactly collinear columns do not.

    Parameters
    ----------
    xtx : ndarray, shape (p, p)
        ``X^T X`` (with X's non-constant columns centred when it has an intercept, as both fitters pass it).
    names : list of str
        Names of the columns of X, for the message.
    """
    scale = np.sqrt(np.diag(xtx))
    if np.any(scale == 0):
        raise ValueError(f"X is rank-deficient: column {names[int(np.argmin(scale))]!r} is all zeros")
    aliased = _aliased(xtx, scale)
    if aliased:
        j = aliased[0]
        raise ValueError(f"X is rank-deficient: column {names[j]!r} is a linear combination of the columns "
                         "before it (R's lm would give it an NA coefficient); drop it")


def _check_rank_dense(X: np.ndarray, names: list) -> None:
    """:func:`check_rank` of X with its non-constant columns centred when X has a constant (intercept) column.

    Centring changes neither the rank nor the column space, but keeps a covariate far from 0 (a calendar year,
    a timestamp) from looking collinear with the intercept; a column that centring leaves with less than 1e-7
    of its length (R's ``lm`` tolerance) is, to the digits the data carry, a multiple of the intercept.
    """
    const = np.flatnonzero((X[0] != 0) & np.all(X == X[0], axis=0))
    if const.size == 0:
        check_rank(X.T @ X, names)
        return
    k = int(const[0])
    shift = X.mean(axis=0)
    shift[k] = 0.0
    Xc = X - shift
    raw, cen = np.einsum("ij,ij->j", X, X), np.einsum("ij,ij->j", Xc, Xc)
    for j in np.flatnonzero((cen <= 1e-14 * raw) & (raw > 0)):
        if j != k:
            raise ValueError(f"X is rank-deficient: column {names[j]!r} is constant, a multiple of the "
                             f"intercept column {names[k]!r}")
    check_rank(Xc.T @ Xc, names)


def check_inputs(y, X, groups, names=None, *, rank: bool = True) -> ModelData:
    """Check the inputs of a random-intercept model and return them as arrays.

    Parameters
    ----------
    y, X, groups, names
        As :func:`lmm_helpers.fit_lmm` takes them.
    rank : bool
        Check that X has full column rank. :func:`lmm_helpers.fit_lmm` passes False and checks the rank from
        its grouped sums instead (:func:`check_rank`), which saves a pass over X.

    Raises
    ------
    ValueError
        Naming the argument and the problem: non-numeric, NaN or inf, a masked array with masked values, pandas
        inputs with different indexes, wrong shapes, mismatched lengths, fewer than two groups, no group with
        two rows, more parameters than observations, values beyond 1e+-100 in magnitude, a constant y,
        rank-deficient X (to R's ``lm`` tolerance).
    """
    if names is None and isinstance(X, pd.DataFrame):
        names = [str(c) for c in X.columns]
    _check_same_index(y=y, X=X, groups=groups)
    y = _numeric("y", y)
    X = _numeric("X", X)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n rows by p columns, with its own intercept column), got shape {X.shape}")
    n, p = X.shape
    if n == 0:
        raise ValueError("y and X have no rows")
    if not hasattr(groups, "__len__"):
        raise ValueError(f"groups must be an array-like with one label per row, got {type(groups).__name__}")
    if len(y) != n:
        raise ValueError(f"y has {len(y)} rows but X has {n}: lengths must match")
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} labels but y has {n} rows: lengths must match")
    if p == 0:
        raise ValueError("X has no columns")
    codes, labels = group_codes(groups)
    n_groups = len(labels)
    if n_groups < 2:
        raise ValueError(f"groups has {n_groups} distinct label(s); a random effect needs at least two groups")
    if n_groups >= n:
        raise ValueError(
            f"groups has {n_groups} labels for {n} rows: every group has one row, so the group variance "
            "and the residual variance cannot be told apart"
        )
    if p + 2 > n:
        raise ValueError(f"more parameters ({p} fixed effects + 2 variances) than observations ({n})")
    if names is None:
        names = [f"x{j}" for j in range(p)]
    names = _check_names(names, p)
    _check_magnitude("y", y)
    _check_magnitude("X", X, names)
    if y.size and np.all(y == y[0]):
        raise ValueError(f"y is constant (every value is {y[0]:g}): it has no variation within groups, so nothing "
                         "is left for the residual variance")
    first = np.empty(n_groups)
    first[codes] = y  # one value of each group (the last written)
    if np.array_equal(first[codes], y):
        raise ValueError("y is constant within every group: it has no variation within groups, so nothing is left "
                         "for the residual variance (the likelihood is unbounded)")
    if rank:
        _check_rank_dense(X, names)
    return ModelData(y=y, X=X, codes=codes, labels=labels, names=names)


def indicator_matrix(codes, n_groups: int | None = None) -> np.ndarray:
    """Return the n x G matrix K with ``K[i, g] = 1`` when row i belongs to group g (dense; for teaching).

    Parameters
    ----------
    codes : array-like of int
        Group index of each row, as from :func:`group_codes`.
    n_groups : int, optional
        Number of groups; defaults to ``max(codes) + 1``.

    Raises
    ------
    ValueError
        If codes are not non-negative integers below ``n_groups``.
    """
    codes = np.asarray(codes)
    if codes.ndim != 1 or codes.dtype.kind not in "iu":
        raise ValueError(f"codes must be a 1-D array of integers (as from group_codes), got {codes.dtype} "
                         f"of shape {codes.shape}")
    if codes.size and codes.min() < 0:  # -1 would silently index the last column
        raise ValueError(f"codes must be >= 0, got {int(codes.min())}")
    if n_groups is None:
        n_groups = int(codes.max()) + 1 if codes.size else 0
    if codes.size and codes.max() >= n_groups:
        raise ValueError(f"codes holds {int(codes.max())} but n_groups is {n_groups}: codes must be < n_groups")
    K = np.zeros((len(codes), n_groups))
    K[np.arange(len(codes)), codes] = 1.0
    return K


def toy_design(df: pd.DataFrame, coding: str = "treatment") -> np.ndarray:
    """Fixed-effect design matrix of the toy data.

    Parameters
    ----------
    df : DataFrame
        With a 0/1 column ``Treat``.
    coding : {"treatment", "cellmeans"}
        ``"treatment"``: columns (1, Treat), so beta = (untreated mean, treatment effect).
        ``"cellmeans"``: columns (1 - Treat, Treat), the article's coding, beta = (untreated mean, treated mean).
    """
    treat = df["Treat"].to_numpy(dtype=float)
    if coding == "treatment":
        return np.column_stack([np.ones_like(treat), treat])
    if coding == "cellmeans":
        return np.column_stack([1.0 - treat, treat])
    raise ValueError(f"coding must be 'treatment' or 'cellmeans', got {coding!r}")
