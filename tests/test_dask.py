"""lmm() of a Dask DataFrame against lmm() of the same rows in memory; the chunk sums against the whole data's.

The reference for the Dask route is the in-memory route, itself tested against lme4 (tests/test_lmm.py): the
same rows must give the same numbers, whatever the partitioning.
"""
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from lmm_helpers import SingularFitWarning, lmm
from lmm_helpers.chunked import chunk_sums, fit_sums, merge_sums

dd = pytest.importorskip("dask.dataframe", reason="dask is an optional extra: pip install -e '.[dask]'")
dask = pytest.importorskip("dask")


def _problem(seed: int, n_groups: int = 40, slopes: bool = False) -> pd.DataFrame:
    """Unbalanced groups in random order, a numeric covariate, a 3-level string factor, a random slope."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 12, n_groups)
    g = np.repeat(np.arange(n_groups), sizes)
    n = g.size
    x = rng.normal(2.0, 1.5, n)
    f = rng.choice(["lo", "mid", "hi"], n)
    u0 = rng.normal(0, 1.2, n_groups)
    u1 = rng.normal(0, 0.5 if slopes else 0.0, n_groups)
    y = 10.0 + 0.8 * x + (f == "hi") * 0.7 + u0[g] + u1[g] * x + rng.normal(0, 1.0, n)
    order = rng.permutation(n)
    return pd.DataFrame({"y": y[order], "x": x[order], "f": f[order], "g": g[order]})


def _same(a, b):
    """The same fit: the log-likelihood to 1e-10 relative; the parameters to what an optimum determines.

    The criterion is flat to second order at its optimum, so sums that differ in their last bits (added in
    another order) move the optimiser's stopping point by ~1e-8 of the parameters while the log-likelihood agrees
    to ~1e-14: beta within 1e-6 of its SE, the rest to 1e-5 relative.
    """
    assert a.loglik == pytest.approx(b.loglik, rel=1e-10)
    assert a.names == b.names
    assert np.all(np.abs(a.beta - b.beta) <= 1e-6 * b.bse)
    np.testing.assert_allclose(a.bse, b.bse, rtol=1e-6)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(a.df, b.df, rtol=1e-5)
    np.testing.assert_allclose(a.varcorr.vcov, b.varcorr.vcov, rtol=1e-5)
    for k in b.random_effects:
        ra, rb = a.random_effects[k], b.random_effects[k]
        assert list(ra.index) == list(rb.index) and list(ra.columns) == list(rb.columns)
        np.testing.assert_allclose(ra.to_numpy(), rb.to_numpy(), rtol=1e-5, atol=1e-6 * np.abs(rb.to_numpy()).max())
    assert a.n_obs == b.n_obs and a.n_groups == b.n_groups and a.converged and b.converged


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("method", ["ML", "REML"])
@pytest.mark.parametrize("formula,slopes", [("y ~ x + f + (1 | g)", False), ("y ~ x + f + (x | g)", True),
                                            ("y ~ x + (x || g)", True)])
def test_dask_equals_in_memory(seed, method, formula, slopes):
    df = _problem(seed, slopes=slopes)
    ref = lmm(formula, df, method)
    fit = lmm(formula, dd.from_pandas(df, npartitions=4), method)
    _same(fit, ref)
    np.testing.assert_allclose(fit.scaled_resid_quantiles, ref.scaled_resid_quantiles, rtol=1e-6, atol=1e-6)
    assert "nan" not in fit.summary()


def test_chunks_merge_to_the_whole():
    """The sums of two halves, merged, are the sums of the whole: counts and per-label sums exactly, the centred
    cross-products by the parallel-axis rule to rounding; the fit from them equals lmm()'s."""
    df = _problem(7, slopes=True)
    for formula in ["y ~ x + f + (1 | g)", "y ~ x + (x | g)"]:
        whole = chunk_sums(formula, df)
        levels = {"f": pd.Index(["hi", "lo", "mid"], dtype=object)}
        halves = [chunk_sums(formula, part, levels) for part in (df.iloc[:100], df.iloc[100:])]
        merged = merge_sums(*halves)
        assert list(merged.labels) == list(whole.labels)
        for name in vars(whole.sums):
            np.testing.assert_allclose(getattr(merged.sums, name), getattr(whole.sums, name), rtol=1e-12,
                                       atol=1e-10)
        _same(fit_sums(formula, merged), lmm(formula, df))


def test_groups_split_across_partitions_and_missing_levels():
    """Sorted by the factor, each partition lacks some of its levels and each group may span two partitions."""
    df = _problem(11, slopes=True).sort_values(["f", "x"]).reset_index(drop=True)
    ddf = dd.from_pandas(df, npartitions=6, sort=False)
    parts = [set(p["f"]) for p in (ddf.get_partition(i).compute() for i in range(ddf.npartitions))]
    assert any(len(s) < 3 for s in parts)
    for formula in ["y ~ x + f + (1 | g)", "y ~ x * f + (x | g)"]:
        _same(lmm(formula, ddf), lmm(formula, df))


def test_string_labels_and_categorical_factor():
    df = _problem(5, slopes=True)
    df["g"] = "subject-" + df["g"].astype(str)  # sorted as strings: subject-10 before subject-2
    df["f"] = pd.Categorical(df["f"], categories=["mid", "lo", "hi", "unused"])
    ref = lmm("y ~ x + f + (x | g)", df)
    assert ref.names == ["(Intercept)", "x", "flo", "fhi"]
    fit = lmm("y ~ x + f + (x | g)", dd.from_pandas(df, npartitions=3))
    _same(fit, ref)
    assert list(fit.random_effects["g"].index) == sorted(df["g"].unique())
    np.testing.assert_allclose(fit.scaled_resid_quantiles, ref.scaled_resid_quantiles, rtol=1e-6, atol=1e-6)


def test_parquet_partitions(tmp_path):
    df = _problem(13, slopes=True)
    for i, rows in enumerate(np.array_split(np.arange(len(df)), 5)):
        df.iloc[rows].to_parquet(tmp_path / f"part-{i}.parquet")
    fit = lmm("y ~ x + f + (x | g)", dd.read_parquet(tmp_path), "REML")
    _same(fit, lmm("y ~ x + f + (x | g)", df, "REML"))
    crossed = _crossed(13)
    (tmp_path / "crossed").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(crossed)), 4)):
        crossed.iloc[rows].to_parquet(tmp_path / "crossed" / f"part-{i}.parquet")
    formula = "y ~ x + f + (1 | a) + (1 | b/c)"
    _same(lmm(formula, dd.read_parquet(tmp_path / "crossed"), "REML"), lmm(formula, crossed, "REML"))


def test_errors():
    df = _problem(3)
    good = dask.delayed(df.iloc[:100])
    bad = dask.delayed(df.iloc[100:].drop(columns="x"))
    ddf = dd.from_delayed([good, bad], meta=df.iloc[:0], verify_meta=False)
    with pytest.raises(ValueError, match=r"partition 1 has no column 'x'"):
        lmm("y ~ x + (1 | g)", ddf)
    with pytest.raises(ValueError, match=r"partition 1 has no column 'x'"):
        lmm("y ~ x + (1 | g) + (1 | f)", ddf)
    with pytest.raises(ValueError, match=r"'z', which is not a column of data"):
        lmm("y ~ z + (1 | g)", dd.from_pandas(df, npartitions=2))
    nan = df.assign(y=df.y.where(df.index != 150))
    with pytest.raises(ValueError, match=r"response 'y' contains NaN"):
        lmm("y ~ x + (1 | g)", dd.from_pandas(nan, npartitions=2))
    with pytest.raises(ValueError, match=r"grouping factor 'g' has 1 level"):
        lmm("y ~ x + (1 | g)", dd.from_pandas(df.assign(g=1), npartitions=2))


def test_local_cluster_of_processes():
    distributed = pytest.importorskip("distributed")
    df = _problem(17, slopes=True)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster):
        fit = lmm("y ~ x + f + (x | g)", dd.from_pandas(df, npartitions=4))
        crossed = _crossed(17)
        fit2 = lmm("y ~ x + f + (1 | a) + (1 | b)", dd.from_pandas(crossed, npartitions=4))
    _same(fit, lmm("y ~ x + f + (x | g)", df))
    _same(fit2, lmm("y ~ x + f + (1 | a) + (1 | b)", crossed))


def test_the_rest_does_not_import_dask():
    """Dask is imported only when lmm() is given a Dask DataFrame: a pandas fit, even through the chunk code,
    leaves it unimported."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, pandas as pd, lmm_helpers, lmm_helpers.chunked; "
            "g = np.repeat(np.arange(10), 5); y = np.sin(np.arange(50.0)) + g % 3; "
            "lmm_helpers.lmm('y ~ 1 + (1 | g)', pd.DataFrame({'y': y, 'g': g})); print('dask' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _both(formula, df, method="ML"):
    """The in-memory and the Dask fit of df, each with the warnings it gave (by category)."""
    import warnings

    out = []
    for data in (df, dd.from_pandas(df, npartitions=3)):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            fit = lmm(formula, data, method)
        out.append((fit, sorted({x.category.__name__ for x in w})))
    return out


@pytest.mark.parametrize("formula", ["y ~ x + gx + (1 | g)", "y ~ x + gx + (x | g)"])
def test_reml_identifiability_out_of_core(formula):
    """An indicator column per group (X spans the group indicators) leaves the random intercept unidentified
    under REML: the Dask route finds it from the reduced sums and gives what the in-memory route gives."""
    df = _problem(5, n_groups=6, slopes=True)
    gcols = pd.get_dummies(df.g, prefix="G", dtype=float).iloc[:, 1:]
    df = pd.concat([df, gcols], axis=1)
    formula = formula.replace("gx", " + ".join(gcols.columns))
    (mem, wmem), (out, wout) = _both(formula, df, "REML")
    assert "IdentifiabilityWarning" in wmem and wout == wmem
    assert not mem.identified and not out.identified and mem.unidentified == out.unidentified
    assert out.loglik == pytest.approx(mem.loglik, rel=1e-10)
    np.testing.assert_array_equal(np.isnan(out.bse), np.isnan(mem.bse))
    np.testing.assert_allclose(out.scaled_resid_quantiles, mem.scaled_resid_quantiles, rtol=1e-8)


def _refused_alike(formula: str, df: pd.DataFrame, match: str) -> None:
    """Both routes refuse df with the same message (up to the value the magnitude check quotes, the largest of the
    chunk that failed it)."""
    with pytest.raises(ValueError, match=match) as mem:
        lmm(formula, df)
    with pytest.raises(ValueError, match=match) as out:
        lmm(formula, dd.from_pandas(df, npartitions=3))
    same = (lambda s: re.sub(r"magnitude \S+,", "magnitude ...,", s))
    assert same(str(out.value)) == same(str(mem.value))


@pytest.mark.parametrize("formula,change,match", [
    ("y ~ x + (1 | g)", {"y": lambda d: 2.0 + 3.0 * d.x}, r"fit|exactly"),
    ("y ~ x + (x | g)", {"y": lambda d: 2.0 + 3.0 * d.x}, r"fit|exactly"),
    ("y ~ x + (x | g)", {"x": lambda d: d.x + 1e5}, r"SDs from 0"),
    ("y ~ x + x2 + (1 | g)", {"x2": lambda d: 2.0 * d.x}, r"rank-deficient"),
    ("y ~ x + x2 + (x | g)", {"x2": lambda d: 2.0 * d.x}, r"rank-deficient"),
    ("y ~ x + (x | g)", {"x": lambda d: d.x * 1e200}, r"column 'x'"),
])
def test_hardening_checks_out_of_core(formula, change, match):
    """The checks of lmm() that read only the sums run on the Dask route's reduced sums (the magnitudes on each
    chunk): the same data are refused by both routes, with the same message (up to the value the magnitude check
    quotes, the largest of the chunk that failed it)."""
    df = _problem(6, slopes=True).assign(x2=0.0)
    df = df.assign(**{k: f(df) for k, f in change.items()})
    _refused_alike(formula, df, match)


def test_interaction_as_the_only_grouping_factor_is_refused_out_of_core():
    df = _problem(7).assign(h=lambda d: d.index % 5)
    with pytest.raises(ValueError, match=r"interaction a:b as its only grouping factor is not implemented"):
        lmm("y ~ x + (1 | g:h)", dd.from_pandas(df, npartitions=2))


def test_two_factors_in_the_fixed_part():
    """Two factor columns: each gets its own levels (a chunk's levels must not shadow the whole data's)."""
    df = _problem(8).assign(f2=lambda d: np.where(d.x > 2.0, "up", "down"))
    _same(lmm("y ~ f + f2 + (1 | g)", dd.from_pandas(df, npartitions=3)), lmm("y ~ f + f2 + (1 | g)", df))


# --------------------------------------------------------------------------- several grouping factors
def _crossed(seed: int, n: int = 360) -> pd.DataFrame:
    """Two crossed factors (a: 14 integer levels, b: 6 string levels), c nested in b, a covariate with a random
    slope over a, a 3-level string factor; rows in random order."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.integers(0, 14, n), rng.integers(0, 6, n), rng.integers(0, 3, n)
    x = rng.normal(2.0, 1.5, n)
    f = rng.choice(["lo", "mid", "hi"], n)
    y = (5.0 + 0.8 * x + (f == "hi") * 0.7 + rng.normal(0, 1.0, 14)[a] + rng.normal(0, 0.4, 14)[a] * x
         + rng.normal(0, 0.8, 6)[b] + rng.normal(0, 0.6, (6, 3))[b, c] + rng.normal(0, 1.0, n))
    return pd.DataFrame({"y": y, "x": x, "f": f, "a": a, "b": [f"plate-{v}" for v in b], "c": c})


CROSSED = ["y ~ x + f + (1 | a) + (1 | b)", "y ~ x + (1 | b/c)", "y ~ x + (x | a) + (1 | b)",
           "y ~ x + (1 | a) + (1 | b:c)"]


@pytest.mark.parametrize("method", ["ML", "REML"])
@pytest.mark.parametrize("formula", CROSSED)
def test_crossed_dask_equals_in_memory(formula, method):
    """Crossed, nested (a/b: labels a:b), a vector term beside a scalar one: the Dask fit is the in-memory fit."""
    df = _crossed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)  # b/c: c within b has no variance here
        ref = lmm(formula, df, method)
        fit = lmm(formula, dd.from_pandas(df, npartitions=4), method)
    _same(fit, ref)
    assert fit.terms == ref.terms and list(fit.n_groups) == list(ref.n_groups)
    np.testing.assert_allclose(fit.scaled_resid_quantiles, ref.scaled_resid_quantiles, rtol=1e-6, atol=1e-6)
    assert "nan" not in fit.summary()


def test_crossed_partitions_that_miss_levels():
    """Sorted by a: each partition holds a few of a's levels (and of the interaction b:c); string labels of b
    sort as strings (plate-10 would come before plate-2)."""
    df = _crossed(2, n=420).sort_values(["a", "x"]).reset_index(drop=True)
    ddf = dd.from_pandas(df, npartitions=5, sort=False)
    parts = [ddf.get_partition(i).compute() for i in range(ddf.npartitions)]
    assert all(p["a"].nunique() < df["a"].nunique() for p in parts)
    for formula in ["y ~ x + f + (1 | a) + (1 | b)", "y ~ x + (1 | a) + (1 | b:c)"]:
        ref = lmm(formula, df, "REML")
        fit = lmm(formula, ddf, "REML")
        _same(fit, ref)
        for k in ref.random_effects:
            assert list(fit.random_effects[k].index) == list(ref.random_effects[k].index)


def test_crossed_chunk_sums_merge_to_the_whole():
    """crossed_sums of two halves, merged, are those of all the rows: every block adds."""
    from lmm_helpers.chunked import _crossed_partition, _coding
    from lmm_helpers.crossed import merge_crossed

    df = _crossed(3)
    formula = "y ~ x + (x | a) + (1 | b)"
    codings = [_coding(df, (c,), df[[c]].drop_duplicates()) for c in ("a", "b")]
    n_levels = [len(c.labels) for c in codings]
    args = (["y", "x", "a", "b"], formula, {}, codings, n_levels, [0, 1], np.array([0.0, 2.0]), 5.0)
    whole = _crossed_partition(df, 0, *args)
    merged = merge_crossed(_crossed_partition(df.iloc[:150], 0, *args), _crossed_partition(df.iloc[150:], 1, *args))
    for name in ("ztz", "ztw", "wtw"):
        np.testing.assert_allclose(getattr(merged.pls.sums1, name), getattr(whole.pls.sums1, name), rtol=1e-12,
                                   atol=1e-9)
    for name in ("A22", "A21"):
        np.testing.assert_allclose(getattr(merged.pls, name).toarray(), getattr(whole.pls, name).toarray(),
                                   rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(merged.pls.Z2W, whole.pls.Z2W, rtol=1e-12, atol=1e-9)
    assert merged.pls.n == whole.pls.n == len(df)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_crossed_covariate_far_from_zero(method):
    """x + 1e6: the same model, so the same log-likelihood (to 1e-9 relative; it moved by 2e-4 relative when X's
    columns were not centred), the same slope and SE, and the intercept shifted by -1e6 times the slope; in memory and
    out of core alike."""
    df = _crossed(4)
    formula = "y ~ x + f + (1 | a) + (1 | b)"
    ref = lmm(formula, df, method)
    far = df.assign(x=df.x + 1e6)
    for fit in (lmm(formula, far, method), lmm(formula, dd.from_pandas(far, npartitions=3), method)):
        assert fit.loglik == pytest.approx(ref.loglik, rel=1e-9)
        np.testing.assert_allclose(fit.beta[1:], ref.beta[1:], rtol=1e-6)
        np.testing.assert_allclose(fit.bse[1:], ref.bse[1:], rtol=1e-6)
        assert fit.beta[0] + 1e6 * fit.beta[1] == pytest.approx(ref.beta[0], abs=1e-6 * ref.bse[0])
        # the intercept's variance is that of beta0 - 1e6 beta_x: the linear map of the shifted problem's
        x0 = np.zeros(len(ref.beta))
        x0[0], x0[1] = 1.0, -1e6
        assert fit.vcov[0, 0] == pytest.approx(x0 @ ref.vcov @ x0, rel=1e-6)


@pytest.mark.parametrize("formula,change,match", [
    ("y ~ x + x2 + (1 | a) + (1 | b)", {"x2": lambda d: 2.0 * d.x - 1.0}, r"rank-deficient"),
    ("y ~ x + (1 | a) + (1 | b)", {"y": lambda d: 2.0 + 3.0 * d.x}, r"fitted exactly by X"),
    ("y ~ x + (x | a) + (1 | b)", {"x": lambda d: d.x + 1e5}, r"SDs from 0"),
    ("y ~ x + (x2 | a) + (1 | b)", {"x2": lambda d: 3.0}, r"column 'x2' is in every group"),
    ("y ~ x + (x | a) + (x | a2)", {"a2": lambda d: d.a + 100}, r"group the rows identically"),
    ("y ~ x + (1 | a) + (1 | b)", {"x": lambda d: d.x * 1e200}, r"column 'x'"),
])
def test_crossed_hardening_checks_out_of_core(formula, change, match):
    """The checks of the crossed route that read only sums refuse the same data out of core, with the same
    message (the magnitudes on each chunk)."""
    df = _crossed(6).assign(x2=lambda d: d.x * 0.5 + 1.0, a2=lambda d: d.a)
    df = df.assign(**{k: f(df) for k, f in change.items()})
    _refused_alike(formula, df, match)


@pytest.mark.parametrize("formula", ["y ~ x + (1 | a) + (1 | b)", "y ~ x + (1 | a)", "y ~ 0 + x + (x | a)"])
def test_constant_response_is_named_out_of_core(formula):
    """Named as in memory (it was refused out of core as a y that X fits exactly, or, without an intercept, fitted)."""
    df = _crossed(8).assign(y=2.5)
    with pytest.raises(ValueError, match=r"is constant \(every value is 2.5\)") as mem:
        lmm(formula, df)
    with pytest.raises(ValueError, match=r"is constant \(every value is 2.5\)") as out:
        lmm(formula, dd.from_pandas(df, npartitions=3))
    assert str(out.value) == str(mem.value)
