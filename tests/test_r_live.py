"""Cross-check the stored reference outputs against a fresh run of real R (skipped where R is missing)."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _have_r() -> bool:
    if shutil.which("Rscript") is None:
        return False
    probe = subprocess.run(["Rscript", "-e", "library(lme4); library(nlme); library(lmerTest)"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _have_r(), reason="R with lme4, nlme and lmerTest is not installed")
def test_stored_reference_matches_a_fresh_r_run(tmp_path):
    subprocess.run(["Rscript", str(ROOT / "data/reference/make_reference.R"), str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    stored = pd.read_csv(ROOT / "data/reference/r_reference.csv", keep_default_na=False)
    fresh = pd.read_csv(tmp_path / "data/reference/r_reference.csv", keep_default_na=False)
    assert list(stored.columns) == list(fresh.columns)
    assert stored[["dataset", "model", "quantity", "term"]].equals(fresh[["dataset", "model", "quantity", "term"]])
    np.testing.assert_allclose(fresh["value"].astype(float), stored["value"].astype(float), rtol=1e-8, atol=1e-12)
    for csv in (ROOT / "data").glob("*.csv"):
        assert (tmp_path / "data" / csv.name).read_text() == csv.read_text(), csv.name
