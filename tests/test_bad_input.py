"""Inputs that used to give silent wrong answers (issue 9, section 2): each now gives a clear ValueError, a fit
flagged for what it is (a warning and a line in summary()), or the right answer."""
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import design

import lmm_helpers as lh
from lmm_helpers.inference import fit_lm, profile_ci, profile_deviance


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


# ---------------------------------------------------------------------- 1. no residual df: unbounded likelihood
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_no_residual_df_left_is_refused(seed, method):
    """6 rows, 3 groups, an intercept and 3 covariates: rank([X, K]) = 6 = n, so every y is fitted exactly by X
    and the random intercepts, and the likelihood grows without bound as sigma -> 0. It used to come back as
    converged with sigma = 1e-8 and p ~ 1e-22 (seed 2), or with false messages or a LinAlgError (other seeds)."""
    rng = np.random.default_rng(seed)
    g = np.repeat([0, 1, 2], 2)
    X = np.column_stack([np.ones(6), rng.normal(size=(6, 3))])
    y = rng.normal(size=6)
    with pytest.raises(ValueError, match=r"fit all 6 observations exactly .*no residual degrees of freedom"):
        _no_warnings(lh.fit_lmm, y, X, g, method)
    with pytest.raises(ValueError, match="no residual degrees of freedom"):
        lh.fit_lmm_dense(y, X, g, method)


def test_y_constant_within_every_group_is_refused():
    """Between-group differences only: nothing is left for sigma, whatever X's within part does."""
    g = np.repeat([0, 1, 2, 3], 3)
    y = np.array([1.0, 4.0, 2.5, 7.0])[g]
    X = np.column_stack([np.ones(12), np.tile([0.0, 1.0, 2.0], 4)])
    with pytest.raises(ValueError, match="y is constant within every group: it has no variation within groups"):
        _no_warnings(lh.fit_lmm, y, X, g)
    # the same once X's within part is fitted: y - X beta constant within every group (to rounding)
    with pytest.raises(ValueError, match="no residual variation within groups once X is fitted"):
        _no_warnings(lh.fit_lmm, y + 0.37 * X[:, 1], X, g)


def test_large_sigma_s_over_sigma_is_fitted_not_called_unbounded():
    """sigma_s / sigma = 1e9 (theta = 1e18, beyond the old search limit of 1e16): the fit is found, and it is the
    fit of the same data in units 1e9 times smaller within groups (the likelihood is invariant to that)."""
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(10), 5)
    u, e = rng.normal(size=10), rng.normal(size=50)
    X = np.ones((50, 1))
    y = 1e5 * u[g] + 1e-4 * e
    big = _no_warnings(lh.fit_lmm, y, X, g)
    assert big.converged and big.sigma_s / big.sigma > 1e8
    # balanced one-way ML in closed form: sigma^2 = SSW / (n - G), sigma_s^2 = (SSB / G - sigma^2) / n_g
    means = y.reshape(10, 5).mean(axis=1)
    ssw = np.sum((y.reshape(10, 5) - means[:, None]) ** 2)
    ssb = 5 * np.sum((means - y.mean()) ** 2)
    assert big.sigma == pytest.approx(np.sqrt(ssw / 40), rel=1e-6)
    assert big.sigma_s == pytest.approx(np.sqrt((ssb / 10 - ssw / 40) / 5), rel=1e-9)


# -------------------------------------------------------------------- 2. REML with X spanning the group indicators
def _spanning(seed):
    rng = np.random.default_rng(seed)
    g = np.repeat([0, 1, 2], 4)
    X = np.column_stack([np.ones(12), g == 1, g == 2, rng.normal(size=12)]).astype(float)
    return rng.normal(size=12), X, g


@pytest.mark.parametrize("seed", range(5))
def test_reml_with_x_spanning_the_groups_is_flagged_not_identified(seed):
    """X holds a fixed effect per group: no between-group df, the REML criterion is flat in sigma_s. sigma_s used
    to come back anywhere from 2e-4 to 155 with SEs following it, negative df and NaN p-values."""
    y, X, g = _spanning(seed)
    with pytest.warns(lh.IdentifiabilityWarning, match="sigma_s is not identified"):
        fit = lh.fit_lmm(y, X, g, "REML", names=["(Intercept)", "g1", "g2", "x"])
    assert not fit.identified and fit.converged and not fit.singular
    assert np.isnan(fit.sigma_s) and np.isnan(fit.theta) and fit.random_effects.isna().all()
    assert np.all(np.isnan(fit.bse[:3])) and np.all(np.isnan(fit.df[:3])) and np.all(np.isnan(fit.pvalues[:3]))
    assert np.isnan(fit.vcov[0, 3]) and fit.vcov[3, 3] == pytest.approx(fit.bse[3] ** 2, rel=1e-12)
    text = fit.summary()
    assert "sigma_s is not identified" in text.splitlines()[-1]
    assert re.search(r"Group +\(Intercept\) +NaN +NaN\n", text) and "nan" not in text  # R prints NaN
    # beta is ordinary least squares, sigma^2 = RSS / (n - p); the covariate, whose least-squares weights sum to
    # zero in every group, keeps lm's SE and an exact t-test on n - p = 8 df (lmerTest prints 8 too)
    lm = fit_lm(y, X, "REML")
    np.testing.assert_allclose(fit.beta, lm.beta, rtol=1e-10)
    assert fit.sigma == pytest.approx(lm.sigma, rel=1e-10)
    sm = pytest.importorskip("statsmodels.api")
    ols = sm.OLS(y, X).fit()
    assert fit.bse[3] == pytest.approx(ols.bse[3], rel=1e-9)
    assert fit.df[3] == 8.0 and fit.pvalues[3] == pytest.approx(ols.pvalues[3], rel=1e-8)
    ml = _no_warnings(lh.fit_lmm, y, X, g, "ML")  # ML is identified: the boundary sigma_s = 0
    assert ml.identified and ml.singular and ml.sigma_s == 0.0


def test_reml_spanning_toy_reproducer_matches_lmertest_where_identified():
    """lmerTest on the seed-0 data (printed by R 4.2): x has Estimate 0.1510, SE 0.4972, df 8, p 0.7691, and
    lme4 warns 'Hessian is numerically singular: parameters are not uniquely determined'."""
    y, X, g = _spanning(0)
    with pytest.warns(lh.IdentifiabilityWarning):
        fit = lh.fit_lmm(y, X, g, "REML")
    assert [round(float(fit.beta[3]), 4), round(float(fit.bse[3]), 4), round(float(fit.pvalues[3]), 4)] == \
        [0.1510, 0.4972, 0.7691]


# ----------------------------------------------------------------------------------------- 3. masked arrays
@pytest.mark.parametrize("which", ["y", "X", "groups"])
def test_masked_arrays_are_refused(which):
    """np.asarray drops the mask: the hidden -999 was used (beta = -120.7). Refused in every entry point."""
    y, X, g, _ = design("sleepstudy")
    args = dict(y=np.asarray(y, float), X=X, groups=np.asarray(g))
    if which == "y":
        args["y"] = np.ma.masked_values(np.r_[args["y"][:5], -999.0, args["y"][6:]], -999.0)
    elif which == "X":
        args["X"] = np.ma.masked_array(X, mask=np.arange(360).reshape(180, 2) == 7)
    else:
        args["groups"] = np.ma.masked_array(args["groups"], mask=np.arange(180) == 7)
    msg = f"{which} is a masked array with 1 masked value"
    with pytest.raises(ValueError, match=msg):
        lh.fit_lmm(**args)
    with pytest.raises(ValueError, match=msg):
        lh.fit_lmm_dense(**args)
    with pytest.raises(ValueError, match=msg):
        profile_deviance(args["y"], args["X"], args["groups"], "sigma", [30.0])
    with pytest.raises(ValueError, match=msg):
        lh.check_inputs(**args)
    if which != "groups":
        with pytest.raises(ValueError, match=msg):
            fit_lm(args["y"], args["X"])
    unmasked = {k: np.ma.masked_array(np.ma.getdata(v)) for k, v in args.items()}  # a masked array with nothing masked is fine
    plain = {k: np.ma.getdata(v) for k, v in args.items()}
    assert lh.fit_lmm(**unmasked).loglik == lh.fit_lmm(**plain).loglik


# ------------------------------------------------------------------------- 4. pandas indexes that disagree
def test_pandas_inputs_with_different_indexes_are_refused():
    """Rows are matched by position; a y sorted differently from X used to be paired with the wrong rows."""
    y, X, g, names = design("sleepstudy")
    Xd = pd.DataFrame(X, columns=names)
    shuffled = y.sample(frac=1.0, random_state=1)
    with pytest.raises(ValueError, match="y and X are pandas objects with different indexes"):
        lh.fit_lmm(shuffled, Xd, g)
    with pytest.raises(ValueError, match="X and groups are pandas objects with different indexes"):
        lh.fit_lmm(y, Xd, g.set_axis(g.index + 1))
    with pytest.raises(ValueError, match="different indexes"):
        fit_lm(shuffled, Xd)
    with pytest.raises(ValueError, match="different indexes"):
        lh.fit_lmm_dense(shuffled, Xd, g)
    # the same index, or pandas beside plain arrays, is what it always was
    assert lh.fit_lmm(y, Xd, g).loglik == lh.fit_lmm(y.to_numpy(), X, g.to_numpy()).loglik
    assert lh.fit_lmm(shuffled.to_numpy(), X, g).loglik == lh.fit_lmm(shuffled.to_numpy(), Xd, g).loglik


# -------------------------------------------------------------------------------- 5. non-convergence surfaced
def test_a_fit_that_did_not_converge_says_so(monkeypatch):
    y, X, g, _ = design("sleepstudy")
    real = lh.fit._minimise_theta
    monkeypatch.setattr(lh.fit, "_minimise_theta", lambda sums, method: (real(sums, method)[0], False))
    with pytest.warns(lh.ConvergenceWarning, match="did not converge"):
        fit = lh.fit_lmm(y, X, g)
    assert not fit.converged
    assert fit.summary().splitlines()[-1].startswith("convergence failed")
    assert issubclass(lh.ConvergenceWarning, lh.LMMWarning) and issubclass(lh.LMMWarning, UserWarning)


def test_ordinary_fits_carry_no_flags_or_notes():
    y, X, g, names = design("sleepstudy")
    fit = _no_warnings(lh.fit_lmm, y, X, g, names=names)
    assert fit.converged and fit.identified
    text = fit.summary()
    assert "convergence" not in text and "identified" not in text


# ----------------------------------------------------------------------------------------- 6. uint64 labels
def test_uint64_labels_beyond_int64():
    y, X, g, _ = design("sleepstudy")
    codes = lh.group_codes(g)[0]
    base = lh.fit_lmm(y, X, codes)
    for labels in (codes.astype(np.uint64) + np.uint64(2**63), codes.astype(np.uint64) * np.uint64(2**58) + np.uint64(2**63)):
        fit = lh.fit_lmm(y, X, labels)  # compact range (counted) and sparse (hashed)
        assert fit.loglik == base.loglik
        assert fit.random_effects.index.dtype == np.uint64
        np.testing.assert_array_equal(fit.random_effects.index.to_numpy(), np.unique(labels))


# ----------------------------------------------------------------------------------------- 7. true messages
@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_magnitude_is_named_for_what_it_is(scale):
    """y * 1e-200 is not 'fitted exactly' and Days * 1e-200 not 'all zeros': both are too small to square;
    y * 1e200 gives its ValueError with no overflow RuntimeWarning printed first."""
    y, X, g, names = design("sleepstudy")
    with pytest.raises(ValueError, match=r"^y has values of magnitude \d\.\de[+-]\d+, too large or too small"):
        _no_warnings(lh.fit_lmm, y * scale, X, g)
    X = X.copy()
    X[:, 1] *= scale
    with pytest.raises(ValueError, match="column 'Days' has values of magnitude"):
        _no_warnings(lh.fit_lmm, y, X, g, names=names)
    with pytest.raises(ValueError, match="column 'Days' has values of magnitude"):
        _no_warnings(fit_lm, y, X, names=names)


@pytest.mark.parametrize("offset", [1e13, 1e14, 1e15])
def test_large_offsets_of_y_are_not_called_an_exact_fit(offset):
    """The toy + 1e14 keeps its values to 0.016 (spacing of doubles there), residual SD about 4: it used to be
    refused as 'fitted exactly by X'. Fitted, it gives the toy's own variances."""
    y, X, g, _ = design("toy")
    base = lh.fit_lmm(y, X, g)
    fit = _no_warnings(lh.fit_lmm, y + offset, X, g)
    assert fit.sigma == pytest.approx(base.sigma, rel=1e-13 * offset / 10)
    assert fit.sigma_s == pytest.approx(base.sigma_s, rel=1e-13 * offset / 10)


def test_exactly_fitted_y_is_still_refused():
    X = np.column_stack([np.ones(12), np.arange(12.0) * 0.37])
    with pytest.raises(ValueError, match="fitted exactly"):
        lh.fit_lmm(X @ [1e3, 2.0], X, np.repeat([0, 1, 2, 3], 3))


def test_dense_route_refuses_huge_y_and_large_n_without_lapack_noise(capfd):
    y, X, g, _ = design("sleepstudy")
    with pytest.raises(ValueError, match="^y has values of magnitude"):
        _no_warnings(lh.fit_lmm_dense, y * 1e150, X, g)
    assert "DLASCL" not in capfd.readouterr().err
    n = 2001
    with pytest.raises(ValueError, match=r"n = 2001 rows.*use fit_lmm"):
        lh.fit_lmm_dense(np.arange(n) % 7 + 0.5 * np.arange(n), np.ones((n, 1)), np.arange(n) % 50)


def test_profile_deviance_at_extreme_sigma():
    """sigma = 1e-300 used to raise LinAlgError: there the deviance exceeds any double (r / sigma^2 ~ 1e600)."""
    y, X, g, _ = design("toy")
    out = _no_warnings(profile_deviance, y, X, g, "sigma", [1e-300, 1e-200, 4.0])
    assert out[0] == np.inf and out[1] == np.inf and np.isfinite(out[2])
    # sigma_s tiny is the boundary: the same as sigma_s = 0
    tiny = _no_warnings(profile_deviance, y, X, g, "sigma_s", [0.0, 1e-300])
    assert tiny[0] == tiny[1]
    with pytest.raises(ValueError, match="values of sigma_s"):
        profile_deviance(y, X, g, "sigma_s", [1e300])


@pytest.mark.parametrize("value", [0.1, 3.0, 1e6 + 0.3])
def test_fit_lm_refuses_a_constant_y(value):
    """fit_lm on a constant y returned sigma = 7e-16 and a log-likelihood of 2011."""
    with pytest.raises(ValueError, match="fitted exactly"):
        fit_lm(np.full(6, value), np.column_stack([np.ones(6), np.arange(6.0)]))


# ------------------------------------------------------------------------------------------- 8. the rank check
def _near_collinear(step):
    rng = np.random.default_rng(8)
    g = np.repeat(np.arange(12), 5)
    x1 = rng.normal(size=60)
    x2 = x1 + step * rng.normal(size=60)
    y = 1.0 + x1 + rng.normal(size=60) + rng.normal(size=12)[g]
    return y, np.column_stack([np.ones(60), x1, x2]), g


def test_ill_conditioned_design_that_lm_fits_is_fitted():
    """Condition number 3.5e6 (R: kappa(model.matrix, exact = TRUE)); lm and lmer fit it, so must we: the old
    rule (smallest scaled eigenvalue under 1e-12 p) refused it. The fit is the GLS optimum of its variances."""
    y, X, g = _near_collinear(7e-7)
    assert np.linalg.cond(X) == pytest.approx(3.48e6, rel=0.01)
    fit = _no_warnings(lh.fit_lmm, y, X, g)
    K = lh.indicator_matrix(lh.group_codes(g)[0])
    gls = lh.gls_beta(y, X, lh.covariance_matrix(K, fit.sigma, fit.sigma_s))  # QR-based, error ~ cond * eps
    # From cross-products (as lme4 too), the two collinear slopes carry an error ~ cond^2 eps ~ 1e-3 relative: a
    # thousandth of their standard error (lme4's are 0.15% of it off)
    assert np.all(np.abs(fit.beta - gls) < 2e-3 * fit.bse)
    np.testing.assert_allclose(fit_lm(y, X).beta, np.linalg.lstsq(X, y, rcond=None)[0], rtol=1e-7)
    lh.check_inputs(y, X, g)


@pytest.mark.parametrize("n", [60, 100_000])
def test_exactly_collinear_design_is_still_refused(n):
    rng = np.random.default_rng(4)
    x1, x2 = rng.normal(size=(2, n))
    X = np.column_stack([np.ones(n), x1, x2, 0.3 * x1 - 1.7 * x2 + 2.0])
    y = x1 + rng.normal(size=n)
    g = np.arange(n) % 12
    msg = "column 'x3' is a linear combination of the columns before it"
    with pytest.raises(ValueError, match=msg):
        lh.fit_lmm(y, X, g)
    with pytest.raises(ValueError, match=msg):
        lh.check_inputs(y, X, g)
    with pytest.raises(ValueError, match=msg):
        fit_lm(y, X)


# ---------------------------------------------------------------------------------------------- more of the kind
@pytest.mark.parametrize("groups", [
    pd.Series(pd.Categorical(["a", "a", "b", None, "c", "c"])),
    pd.Series(["a", "a", "b", None, "c", "c"], dtype=object),
    pd.Series([1.0, 1.0, 2.0, np.nan, 3.0, 3.0]),
])
def test_missing_group_labels_of_any_dtype_are_refused(groups):
    X = np.column_stack([np.ones(6), np.arange(6.0)])
    with pytest.raises(ValueError, match="missing labels"):
        lh.fit_lmm([1.0, 2.5, 2.0, 4.0, 3.0, 6.5], X, groups)


def test_duplicated_column_names_are_refused():
    """Two columns called 'x': fe_params would hold two 'x' and summary() could not tell them apart."""
    X = pd.DataFrame(np.column_stack([np.ones(6), np.arange(6.0), np.arange(6.0) ** 2]), columns=["one", "x", "x"])
    with pytest.raises(ValueError, match="names of the columns of X must be distinct.*'x'"):
        lh.fit_lmm([1.0, 2.5, 2.0, 4.0, 3.0, 6.5], X, [1, 1, 2, 2, 3, 3])
    with pytest.raises(ValueError, match="must be distinct"):
        fit_lm([1.0, 2.5, 2.0, 4.0, 3.0, 6.5], X)


def test_names_given_as_a_string_are_refused():
    """names='ab' used to name two columns 'a' and 'b', character by character."""
    with pytest.raises(ValueError, match="names must be a list of column names"):
        lh.fit_lmm([1.0, 2.5, 2.0, 4.0, 3.0, 6.5], np.column_stack([np.ones(6), np.arange(6.0)]), [1, 1, 2, 2, 3, 3],
                   names="ab")


def test_unhashable_group_labels_are_a_valueerror():
    """A list of one-element lists raised pandas' TypeError 'unhashable type: list'."""
    with pytest.raises(ValueError, match="groups must hold one hashable label per row"):
        lh.fit_lmm([1.0, 2.5, 2.0, 4.0, 3.0, 6.5], np.column_stack([np.ones(6), np.arange(6.0)]),
                   [[1], [1], [2], [2], [3], [3]])


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_y_in_tiny_units_gives_the_same_inference(method):
    """y * 1e-99 is within the accepted magnitudes, but sigma^2 cubed underflowed in Satterthwaite's df
    (ZeroDivisionError). The df, p-values and relative SEs do not depend on y's units."""
    y, X, g, _ = design("sleepstudy")
    base = lh.fit_lmm(y, X, g, method)
    fit = _no_warnings(lh.fit_lmm, y * 1e-99, X, g, method)
    np.testing.assert_allclose(fit.df, base.df, rtol=1e-9)
    np.testing.assert_allclose(fit.pvalues, base.pvalues, rtol=1e-9)
    np.testing.assert_allclose(fit.bse * 1e99, base.bse, rtol=1e-12)


@pytest.mark.parametrize("sy, sx, where", [(1e-99, 1e99, "under"), (1e97, 1e-99, "over")])
def test_units_of_y_and_x_too_far_apart_are_named(sy, sx, where):
    """Each within range, but the coefficient's variance (1e-394, 1e394) is not a double: a divide-by-zero
    RuntimeWarning and t = inf before; now a ValueError naming the column."""
    y, X, g, names = design("sleepstudy")
    X = X * [1.0, sx]
    with pytest.raises(ValueError, match=f"column 'Days' and y are in units so far apart.*{where} 1e"):
        _no_warnings(lh.fit_lmm, y * sy, X, g, names=names)
