"""Loading the series' datasets and the stored reference outputs of R."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["data_dir", "load_toy", "load_dataset", "load_reference", "reference_value", "r_output"]


def data_dir() -> Path:
    """Return the repository's ``data/`` folder (the package is installed in place with ``pip install -e .``)."""
    path = Path(__file__).resolve().parent.parent / "data"
    if not path.is_dir():
        raise FileNotFoundError(
            f"no data folder at {path}; install lmm_helpers from a clone with `pip install -e .`"
        )
    return path


def load_dataset(name: str) -> pd.DataFrame:
    """Load ``data/<name>.csv`` (``toy``, ``sleepstudy``, ``grouseticks``, ``singular``) as a DataFrame.

    Parameters
    ----------
    name : str
        The file's stem.
    """
    path = data_dir() / f"{name}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in data_dir().glob("*.csv"))
        raise ValueError(f"name: no dataset {name!r}; known datasets are {known}")
    return pd.read_csv(path)


def load_toy() -> pd.DataFrame:
    """Load the article's 4-point toy data: columns ``Ind``, ``Treat``, ``Resp``.

    Individual 1 responds 10 untreated and 25 treated; individual 2 responds 3 and 6.
    """
    return load_dataset("toy")


def load_reference() -> pd.DataFrame:
    """Load every number R produced (``data/reference/r_reference.csv``), one row each.

    Columns ``dataset``, ``model``, ``quantity``, ``term``, ``value``; made by
    ``data/reference/make_reference.R``.
    """
    ref = pd.read_csv(data_dir() / "reference" / "r_reference.csv", keep_default_na=False)
    ref["value"] = ref["value"].astype(float)
    return ref


def reference_value(dataset: str, model: str, quantity: str, term: str = "") -> float:
    """Return one number of R's from the stored reference, e.g. ``("toy", "lmer_ML", "sigma")``."""
    ref = load_reference()
    # Narrow down one argument at a time, so that the error names the first one that matches nothing.
    key = {}
    for arg, value in (("dataset", dataset), ("model", model), ("quantity", quantity), ("term", term)):
        rows = ref[ref[arg] == value]
        if rows.empty:
            where = f" for {key}" if key else ""
            raise ValueError(f"{arg}: no {value!r}{where}; the stored ones are {sorted(set(ref[arg]))}")
        ref, key[arg] = rows, value
    if len(ref) > 1:  # cannot happen with the file make_reference.R writes: one row per key
        raise ValueError(f"{(dataset, model, quantity, term)!r} matches {len(ref)} stored values, not one")
    return float(ref["value"].iloc[0])


def r_output(name: str) -> str:
    """Return R's printed output stored as ``data/reference/<name>.txt`` (e.g. ``"toy_lmer_ML"``)."""
    path = data_dir() / "reference" / f"{name}.txt"
    if not path.is_file():
        raise ValueError(f"name: no stored R output {name!r}")
    return path.read_text()
