"""Bad input and unidentifiable models for lmm() with several grouping factors (crossed.py / pls.py): a clear
ValueError or a flagged fit, never a raw LinAlgError, an overflow warning or a silently wrong answer (issue 9
section 2's kinds, as tests/test_lmm_bad_input.py holds them for one grouping factor)."""
import warnings

import numpy as np
import pandas as pd
import pytest

from lmm_helpers import ConvergenceWarning, IdentifiabilityWarning, SingularFitWarning, lmm, lmm_criterion
from lmm_helpers.data import load_dataset

F = "diameter ~ 1 + (1 | plate) + (1 | sample)"


@pytest.fixture(scope="module")
def pen():
    return load_dataset("penicillin")


def _codes(s: pd.Series) -> np.ndarray:
    return pd.factorize(s, sort=True)[0].astype(float)


@pytest.mark.parametrize("response, match", [
    (lambda d: 1.0, "response is constant"),
    (lambda d: d.diameter * 1e-200, "the response has values of magnitude"),
    (lambda d: d.diameter * 1e200, "the response has values of magnitude"),
])
def test_degenerate_response(pen, response, match):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning before the error
        with pytest.raises(ValueError, match=match):
            lmm(F, pen.assign(diameter=response))
        with pytest.raises(ValueError, match=match):
            lmm_criterion(F, pen.assign(diameter=response), [1.0, 1.0])


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_column_of_extreme_magnitude(pen, scale):
    d = pen.assign(x=_codes(pen.plate) * scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="column 'x' has values of magnitude"):
            lmm("diameter ~ x + (1 | plate) + (1 | sample)", d)
        with pytest.raises(ValueError, match="column 'x' has values of magnitude"):
            lmm("diameter ~ 1 + (x | plate) + (1 | sample)", d)


def test_y_fitted_exactly_by_x(pen):
    d = pen.assign(diameter=20.0 + 0.5 * _codes(pen.plate) + 0.25 * _codes(pen["sample"]))
    with pytest.raises(ValueError, match="fitted exactly by X"):
        lmm("diameter ~ plate + sample + (1 | plate) + (1 | sample)", d)
    with pytest.raises(ValueError, match="fitted exactly by X"):
        lmm("diameter ~ x + (1 | plate) + (1 | sample)", d.assign(x=d.diameter * 3.0 - 1.0))


def test_y_fitted_exactly_by_x_and_the_random_effects(pen):
    """y = plate effect + sample effect with no residual: sigma -> 0 sends the likelihood to infinity (lme4 returns
    a fit with sigma of the order of rounding)."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=24), rng.normal(size=6)
    d = pen.assign(diameter=25.0 + a[_codes(pen.plate).astype(int)] + b[_codes(pen["sample"]).astype(int)])
    with pytest.raises(ValueError, match="no residual variation once X and the random effects"):
        lmm(F, d)


def test_no_residual_df(pen):
    """4 plates x 3 samples, one row each, and 6 covariates: rank([X, Z]) = 7 + (4 + 3 - 1) - 1 = 12 = n, so X and
    every random effect fit all rows and the ML likelihood is unbounded (lme4 checks only 7 random effects < 12)."""
    d = pen[pen.plate.isin(list("abcd")) & pen["sample"].isin(list("ABC"))].reset_index(drop=True)
    x = np.random.default_rng(0).normal(size=(len(d), 6))
    d = d.assign(**{f"x{j}": x[:, j] for j in range(6)})
    with pytest.raises(ValueError, match="no residual degrees of freedom"):
        lmm("diameter ~ x0 + x1 + x2 + x3 + x4 + x5 + (1 | plate) + (1 | sample)", d)


def test_rank_deficient_x(pen):
    d = pen.assign(x=_codes(pen.plate), z=2.0 * _codes(pen.plate) + 1.0)
    with pytest.raises(ValueError, match="X is rank-deficient: column 'z'"):
        lmm("diameter ~ x + z + (1 | plate) + (1 | sample)", d)
    with pytest.raises(ValueError, match="X is rank-deficient: column 'c' is constant"):
        lmm("diameter ~ c + (1 | plate) + (1 | sample)", d.assign(c=3.0))


@pytest.mark.parametrize("formula, column, match", [
    ("diameter ~ 1 + (C | plate) + (1 | sample)", 5.0, "column 'C' is in every group of 'plate' a combination"),
    ("diameter ~ 1 + (C | plate) + (1 | sample)", 0.0, "column 'C' is all zeros"),
    ("diameter ~ 1 + (C | plate) + (1 | sample)", "plate", "column 'C' is in every group of 'plate' a combination"),
    ("diameter ~ 1 + (1 | plate) + (x + C | sample)", "double", "column 'C' is in every group of 'sample' a comb"),
])
def test_random_effect_columns_that_cannot_be_told_apart(pen, formula, column, match):
    x = np.random.default_rng(1).normal(size=len(pen))
    c = {"plate": _codes(pen.plate), "double": 2.0 * x}.get(column, column)
    with pytest.raises(ValueError, match=match):
        lmm(formula, pen.assign(C=c, x=x))


def test_one_level_factor_in_the_fixed_part(pen):
    with pytest.raises(ValueError, match="factor 'F' has only one level"):
        lmm("diameter ~ F + (1 | plate) + (1 | sample)", pen.assign(F="a"))


def test_nested_interaction_with_a_level_per_row_is_refused():
    d = load_dataset("pastes")
    d = d.drop_duplicates(["batch", "cask"]).reset_index(drop=True)
    with pytest.raises(ValueError, match="grouping factor .cask:batch. has 30 levels for 30 observations"):
        lmm("strength ~ 1 + (1 | batch/cask)", d)


def test_reml_with_x_spanning_a_grouping_factor_is_flagged(pen):
    with pytest.warns(IdentifiabilityWarning, match="sample"):
        fit = lmm("diameter ~ sample + (1 | plate) + (1 | sample)", pen, method="REML")
    assert not fit.identified and fit.unidentified == ("(Intercept) | sample",)
    vc = fit.varcorr.set_index("grp")
    assert np.isnan(vc.loc["sample", "vcov"]) and np.isfinite(vc.loc["plate", "vcov"])
    assert np.isfinite(fit.sigma) and not fit.singular
    assert fit.random_effects["sample"].isna().all().all()
    assert fit.random_effects["plate"].notna().all().all()
    assert np.isnan(fit.bse).all() and np.isnan(fit.pvalues).all()
    assert "not identified under REML" in fit.summary()
    # the plate variance and sigma are identified: those of the model without (1 | sample)
    alone = lmm("diameter ~ sample + (1 | plate)", pen, method="REML")
    assert fit.deviance == pytest.approx(alone.deviance, rel=1e-10)
    assert fit.sigma == pytest.approx(alone.sigma, rel=1e-6)
    assert vc.loc["plate", "vcov"] == pytest.approx(alone.varcorr.vcov.iloc[0], rel=1e-6)


def test_ml_with_x_spanning_a_grouping_factor_is_a_boundary_fit(pen):
    """Under ML the sample variance goes to 0 (lme4: 'boundary (singular) fit'): flagged singular, identified,
    and the rest is the fit without (1 | sample)."""
    with pytest.warns(SingularFitWarning, match="boundary"):
        fit = lmm("diameter ~ sample + (1 | plate) + (1 | sample)", pen)
    assert fit.identified and fit.singular
    assert "boundary (singular) fit" in fit.summary()
    alone = lmm("diameter ~ sample + (1 | plate)", pen)
    assert fit.loglik == pytest.approx(alone.loglik, rel=1e-9)


def test_non_convergence_is_a_convergence_warning(pen, monkeypatch):
    import lmm_helpers.crossed as crossed
    real = crossed._optimise
    monkeypatch.setattr(crossed, "_optimise", lambda *a: (real(*a)[0], False))
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        fit = lmm(F, pen, method="REML")
    assert not fit.converged and "did not converge" in fit.summary()


def test_ordinary_fit_has_no_warning(pen):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = lmm(F, pen)
    assert fit.converged and fit.identified and not fit.singular


@pytest.fixture(scope="module")
def slope_data(pen):
    rng = np.random.default_rng(0)
    x = rng.normal(size=len(pen))
    return pen.assign(x=x, diameter=pen.diameter + 0.3 * x * rng.normal(size=24)[_codes(pen.plate).astype(int)])


FS = "diameter ~ x + (x | plate) + (1 | sample)"


@pytest.mark.filterwarnings("ignore:boundary")
@pytest.mark.parametrize("k", [1e-6, 1e4])
def test_slope_column_in_other_units_fits_the_same_model(slope_data, k):
    """x in units 1e6 smaller had stopped 15 deviance units short of the optimum, reported as converged; the
    random-effect columns are now rescaled before optimising, as on the one-factor route. Both fits converge
    (checked with the analytic gradient; a finite-difference check had flagged fits like these)."""
    base = lmm(FS, slope_data)
    fit = lmm(FS, slope_data.assign(x=slope_data.x * k))
    assert base.converged and fit.converged
    assert fit.loglik == pytest.approx(base.loglik, abs=1e-5)
    vx = lambda f: f.varcorr.set_index(["grp", "var1"]).vcov[("plate", "x")]  # noqa: E731
    assert vx(fit) * k**2 == pytest.approx(vx(base), rel=1e-3)


@pytest.mark.parametrize("shift", [1e3, 1e6])
def test_slope_column_far_from_zero_is_refused(slope_data, shift):
    """x + 1000 beside the random intercept had given a fit 15 deviance units low; x + 1e6 a message about
    collinear columns. As on the one-factor route, more than 400 SDs from 0 is refused with a hint."""
    with pytest.raises(ValueError, match="column 'x' has mean .* SDs from 0.*Centre it"):
        lmm(FS, slope_data.assign(x=slope_data.x + shift))


def test_two_factors_that_group_the_rows_alike(pen):
    """plate under a second name: the criterion depends only on the sum of the two variances, and the fit had
    split it evenly without a word (lme4 does the same)."""
    with pytest.raises(ValueError, match="'plate' and 'p2' group the rows identically"):
        lmm("diameter ~ 1 + (1 | plate) + (1 | p2) + (1 | sample)", pen.assign(p2="x" + pen.plate.astype(str)))


def test_too_many_random_effects_for_the_dense_block():
    """Two factors of more than pls.MAX_DENSE levels each: refused before the dense block is allocated, with the
    count and the memory it would take (not a MemoryError or a machine brought to a halt)."""
    from lmm_helpers.pls import MAX_DENSE

    rng = np.random.default_rng(7)
    n = 3 * MAX_DENSE
    b = rng.permutation(np.arange(n) % (MAX_DENSE + 100))  # every level met
    data = pd.DataFrame({"a": np.arange(n) % (MAX_DENSE + 500), "b": b, "y": rng.normal(size=n)})
    data = data.astype({"a": str, "b": str})
    with pytest.raises(ValueError, match=rf"{MAX_DENSE + 100} random effects together, more than the {MAX_DENSE}"):
        lmm("y ~ 1 + (1 | a) + (1 | b)", data)
