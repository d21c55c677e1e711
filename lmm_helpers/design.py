"""Design matrices, the random-effect indicator matrix K, and checking a model's inputs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["ModelData", "check_inputs", "check_rank", "group_codes", "indicator_matrix", "toy_design"]


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


def _numeric(name: str, value) -> np.ndarray:
    hint = " (cast 0/1 indicators with .astype(float))"
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
    shifted = groups - lo if lo != 0 else groups
    present = np.bincount(shifted, minlength=hi - lo + 1) > 0
    lookup = np.cumsum(present, dtype=np.intp) - 1
    labels = pd.Index((np.flatnonzero(present) + lo).astype(dtype, copy=False))
    return lookup[shifted], labels


def group_codes(groups) -> tuple[np.ndarray, pd.Index]:
    """Turn any hashable group labels into integer codes ``0..G-1`` and the labels in sorted order.

    Parameters
    ----------
    groups : array-like of hashable
        One label per row: numbers, strings, a pandas Categorical or Series.
    """
    if isinstance(groups, pd.DataFrame) or (isinstance(groups, np.ndarray) and groups.ndim != 1):
        raise ValueError(f"groups must be 1-D (one label per row), got shape {np.shape(groups)}")
    if not isinstance(groups, (pd.Series, pd.Index, np.ndarray, pd.api.extensions.ExtensionArray)):
        groups = pd.Series(list(groups))  # a list or other sequence of hashable labels
    fast = _integer_codes(groups)
    if fast is not None:
        return fast
    try:
        codes, labels = pd.factorize(groups, sort=True)
    except TypeError:  # labels of mixed types that cannot be ordered
        codes, labels = pd.factorize(groups, sort=False)
    if np.any(codes < 0):
        raise ValueError("groups contains missing labels (NaN or None)")
    return codes.astype(np.intp, copy=False), pd.Index(labels)


def check_rank(xtx: np.ndarray, names: list) -> None:
    """Raise a ValueError when the cross-product ``X^T X`` shows X to be rank-deficient.

    Uses the eigenvalues of the column-scaled ``X^T X``: cheap (p x p) and free of the columns' units.

    Parameters
    ----------
    xtx : ndarray, shape (p, p)
        ``X^T X``.
    names : list of str
        Names of the columns of X, for the message.
    """
    scale = np.sqrt(np.diag(xtx))
    if np.any(scale == 0):
        raise ValueError(f"X is rank-deficient: column {names[int(np.argmin(scale))]!r} is all zeros")
    p = xtx.shape[0]
    eig = np.linalg.eigvalsh(xtx / np.outer(scale, scale))
    if eig[0] < 1e-12 * p:
        raise ValueError(
            f"X is rank-deficient (its columns are linearly dependent, smallest scaled eigenvalue {eig[0]:.1e})"
        )


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
        Naming the argument and the problem: non-numeric, NaN or inf, wrong shapes, mismatched lengths,
        fewer than two groups, no group with two rows, rank-deficient X, more parameters than observations.
    """
    if names is None and isinstance(X, pd.DataFrame):
        names = [str(c) for c in X.columns]
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
    names = [str(nm) for nm in names]
    if len(names) != p:
        raise ValueError(f"names has {len(names)} entries but X has {p} columns")
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
