"""lmm_helpers.inference against real R: anova(), logLik(lm), confint(Wald / profile), lme4's profile points."""
import numpy as np
import pytest
from conftest import design, r_values
from scipy import stats

import lmm_helpers as lh
from lmm_helpers.inference import (_beta_profile_deviance, fit_lm, lm_loglik, lrt, profile_ci, profile_ci_beta,
                                   profile_deviance, spline_limits, wald_ci)

Z95 = float(stats.norm.ppf(0.975))


def test_lrt_treat_matches_anova(ref):
    y, X, g, names = design("toy")
    big = lh.fit_lmm(y, X, g, "ML", names=names)
    small = lh.fit_lmm(y, X[:, :1], g, "ML", names=names[:1])
    res = lrt(small, big)
    assert res.statistic == pytest.approx(r_values(ref, "toy", "lrt_treat", "chisq").item(), rel=1e-6)
    assert res.df == r_values(ref, "toy", "lrt_treat", "df").item()
    assert res.pvalue == pytest.approx(r_values(ref, "toy", "lrt_treat", "p").item(), rel=1e-6)
    np.testing.assert_allclose(res.aic, r_values(ref, "toy", "lrt_treat", "aic")[["null", "full"]], rtol=1e-7)
    assert not res.boundary
    text = res.summary()
    assert "2.3573" in text and "34.363" in text and "34.006" in text


def test_lrt_height_on_grouseticks(ref):
    y, X, g, names = design("grouseticks")
    big = lh.fit_lmm(y, X, g, "ML", names=names)
    small = lh.fit_lmm(y, X[:, :3], g, "ML", names=names[:3])
    res = lrt(small, big)
    assert res.statistic == pytest.approx(r_values(ref, "grouseticks", "lrt_height", "chisq").item(), rel=1e-6)
    assert res.pvalue == pytest.approx(r_values(ref, "grouseticks", "lrt_height", "p").item(), rel=1e-5)


@pytest.mark.parametrize("dataset", ["toy", "grouseticks"])
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_lm_loglik_and_random_effect_test(ref, dataset, method):
    y, X, g, names = design(dataset)
    lm = fit_lm(y, X, method, names=names)
    lmm = lh.fit_lmm(y, X, g, method, names=names)
    model = f"lrt_ranef_{method}"
    ll = r_values(ref, dataset, model, "loglik")
    assert lm.loglik == pytest.approx(ll["lm"], rel=1e-10)
    res = lrt(lm, lmm)
    assert res.boundary and res.df == 1
    assert res.statistic == pytest.approx(r_values(ref, dataset, model, "chisq").item(), rel=1e-6)
    assert res.pvalue == pytest.approx(r_values(ref, dataset, model, "p").item(), rel=1e-5)
    assert res.pvalue == pytest.approx(0.5 * stats.chi2.sf(res.statistic, 1), rel=1e-12)


def test_lm_against_statsmodels():
    sm = pytest.importorskip("statsmodels.api")
    y, X, _, names = design("grouseticks")
    ols = sm.OLS(np.asarray(y), X).fit()
    lm = fit_lm(y, X, "ML", names=names)
    np.testing.assert_allclose(lm.beta, ols.params, rtol=1e-10)
    assert lm.loglik == pytest.approx(ols.llf, rel=1e-12)
    assert fit_lm(y, X, "REML").sigma == pytest.approx(np.sqrt(ols.scale), rel=1e-12)


def test_lm_loglik_closed_form_toy():
    """Toy lm: RSS = 205 (residuals +-3.5 and +-9.5); ML loglik = -2 (log 2pi + log(205/4) + 1)."""
    assert lm_loglik(205.0, 4, 2) == pytest.approx(-2 * (np.log(2 * np.pi) + np.log(205 / 4) + 1), rel=1e-14)
    y, X, _, _ = design("toy")
    assert fit_lm(y, X).loglik == pytest.approx(lm_loglik(205.0, 4, 2), rel=1e-14)


def test_singular_fit_gives_zero_statistic():
    y, X, g, _ = design("singular")
    res = lrt(fit_lm(y, X), lh.fit_lmm(y, X, g, "ML"))
    assert res.statistic == 0.0 and res.pvalue == 0.5


def test_lrt_refuses_incomparable_fits():
    y, X, g, names = design("toy")
    ml1 = lh.fit_lmm(y, X, g, "ML", names=names)
    ml0 = lh.fit_lmm(y, X[:, :1], g, "ML", names=names[:1])
    reml1 = lh.fit_lmm(y, X, g, "REML", names=names)
    reml0 = lh.fit_lmm(y, X[:, :1], g, "REML", names=names[:1])
    with pytest.raises(ValueError, match="REML likelihoods"):
        lrt(reml0, reml1)
    with pytest.raises(ValueError, match="same method"):
        lrt(ml0, reml1)
    with pytest.raises(ValueError, match="nested"):
        lrt(ml1, ml0)
    yg, Xg, gg, _ = design("grouseticks")
    with pytest.raises(ValueError, match="same data"):
        lrt(lh.fit_lmm(yg[:300], Xg[:300, :3], gg[:300]), lh.fit_lmm(yg, Xg, gg))
    with pytest.raises(ValueError, match="different fixed effects"):
        lrt(fit_lm(y, X[:, :1], names=names[:1]), ml1)
    with pytest.raises(ValueError, match="LMMResult"):
        lrt("a fit", ml1)
    # REML fits with the same X may be compared: the random-effect test
    assert lrt(fit_lm(y, X, "REML", names=names), reml1).boundary


@pytest.mark.parametrize("dataset,method", [("toy", "ML"), ("toy", "REML"), ("grouseticks", "ML")])
def test_wald_ci_matches_confint(ref, dataset, method):
    y, X, g, names = design(dataset)
    fit = lh.fit_lmm(y, X, g, method, names=names)
    ci = wald_ci(fit)
    model = f"lmer_{method}_wald"
    np.testing.assert_allclose(ci["lower"], r_values(ref, dataset, model, "ci_lower")[names], rtol=1e-5)
    np.testing.assert_allclose(ci["upper"], r_values(ref, dataset, model, "ci_upper")[names], rtol=1e-5)


def test_wald_t_ci_uses_satterthwaite_df():
    """With df = 1 the REML Treat interval is the paired t-test's interval (R: t.test(paired = TRUE))."""
    y, X, g, names = design("toy")
    fit = lh.fit_lmm(y, X, g, "REML", names=names)
    ci = wald_ci(fit, use_t=True)
    paired = [lh.reference_value("toy", "t_paired", q) for q in ("ci_lower", "ci_upper")]
    np.testing.assert_allclose(ci.loc["Treat"], paired, rtol=1e-6)


def test_profile_points_match_lme4(ref):
    """Our profiled deviance at lme4's own profile points gives lme4's zeta (no interpolation involved)."""
    y, X, g, _ = design("toy")
    fit = lh.fit_lmm(y, X, g, "ML")
    pts = ref[ref.model == "lmer_ML_profile_points"]
    for key, par, est in [("sd_(Intercept)|IndF", "sigma_s", fit.sigma_s), ("sigma", "sigma", fit.sigma)]:
        mine = pts.term.str.startswith(key + "#")
        v = pts[mine & (pts.quantity == "value")].value.to_numpy()
        z = pts[mine & (pts.quantity == "zeta")].value.to_numpy()
        dev = profile_deviance(y, X, g, par, v)
        zeta = np.sign(v - est) * np.sqrt(np.maximum(dev - fit.deviance, 0.0))
        np.testing.assert_allclose(zeta, z, atol=1e-7)
        # ... and lme4's spline through those points gives confint's numbers exactly
        lo, hi = spline_limits(v, zeta, Z95)
        ci = r_values(ref, "toy", "lmer_ML_profile", "ci_lower")[key], \
            r_values(ref, "toy", "lmer_ML_profile", "ci_upper")[key]
        np.testing.assert_allclose([lo, hi], ci, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dataset,group,rtol", [("toy", "IndF", 3e-4), ("grouseticks", "Brood", 1e-6)])
def test_profile_ci_matches_confint(ref, dataset, group, rtol):
    """Exact crossings of the profile against lme4's spline-interpolated ones."""
    y, X, g, _ = design(dataset)
    prof = profile_ci(y, X, g)
    model = "lmer_ML_profile"
    lo, hi = r_values(ref, dataset, model, "ci_lower"), r_values(ref, dataset, model, "ci_upper")
    for key, par in [(f"sd_(Intercept)|{group}", "sigma_s"), ("sigma", "sigma")]:
        assert prof[par].lower == pytest.approx(lo[key], rel=rtol, abs=1e-12)
        assert prof[par].upper == pytest.approx(hi[key], rel=rtol)
    assert prof["sigma_s"].lower == (0.0 if dataset == "toy" else pytest.approx(lo.iloc[0], rel=rtol))


def test_profile_curve_is_consistent():
    y, X, g, _ = design("toy")
    prof = profile_ci(y, X, g, level=0.9)
    for p in prof.values():
        assert p.cutoff == pytest.approx(stats.norm.ppf(0.95))
        assert np.all(np.diff(p.zeta) > 0)
        assert p.zeta[p.values == p.estimate] == pytest.approx(0.0, abs=1e-6)
        inside = (p.values >= p.lower) & (p.values <= p.upper)
        assert np.all(np.abs(p.zeta[inside]) <= p.cutoff + 1e-9)
        assert np.all(np.abs(p.zeta[~inside]) >= p.cutoff - 1e-9)


def test_bad_arguments():
    y, X, g, _ = design("toy")
    fit = lh.fit_lmm(y, X, g)
    with pytest.raises(ValueError, match="level"):
        wald_ci(fit, level=1.5)
    with pytest.raises(ValueError, match="result"):
        wald_ci("fit")
    with pytest.raises(ValueError, match="level"):
        profile_ci(y, X, g, level=0)
    with pytest.raises(ValueError, match="method"):
        fit_lm(y, X, method="GLS")
    with pytest.raises(ValueError, match="rank-deficient"):
        fit_lm(y, np.column_stack([X, X[:, 1]]))
    with pytest.raises(ValueError, match="y contains NaN"):
        fit_lm(np.r_[y[:3], np.nan], X)
    with pytest.raises(ValueError, match="names"):
        fit_lm(y, X, names=["a"])
    with pytest.raises(ValueError, match="parameter"):
        profile_deviance(y, X, g, "tau", [1.0])
    with pytest.raises(ValueError, match="values"):
        profile_deviance(y, X, g, "sigma", [0.0])
    with pytest.raises(ValueError, match="zeta"):
        spline_limits([1.0, 2.0, 3.0], [0.0, -1.0, 1.0], Z95)


def test_profile_that_levels_off_gives_an_infinite_upper_limit():
    """Two groups and a group-level covariate: once X is fitted no between-group df is left, so the REML
    criterion stays bounded as sigma_s grows; the upper limit is inf (it used to step out until Sigma overflowed)."""
    rng = np.random.default_rng(3)
    g = np.repeat([0, 1], 10)
    X = np.column_stack([np.ones(20), g, rng.normal(size=20)])
    y = X @ [1.0, 2.0, 0.5] + rng.normal(size=20) + np.array([0.3, -0.3])[g]
    with pytest.warns(lh.IdentifiabilityWarning):  # X = [1, g, x] spans the two groups' indicators
        reml = profile_ci(y, X, g, method="REML")
    assert np.isnan(reml["sigma_s"].estimate) and reml["sigma_s"].lower == 0.0
    assert reml["sigma_s"].upper == np.inf and np.all(np.isfinite(reml["sigma_s"].zeta))
    assert np.all(np.abs(reml["sigma_s"].zeta) < reml["sigma_s"].cutoff)
    assert np.isfinite(reml["sigma"].upper)
    ml = profile_ci(y, X, g, method="ML")  # the ML deviance grows with sigma_s: a finite interval
    assert np.isfinite(ml["sigma_s"].upper) and ml["sigma_s"].lower == 0.0


# ------------------------------------------------------------------------------------ profiles of beta
def test_beta_profile_points_match_lme4(ref):
    """At lme4's own profile points for beta our zeta is lme4's, and lme4's spline through them gives its
    confint() exactly: any difference of the intervals below is the spline's, not the profile's."""
    y, X, g, names = design("toy")
    fit = lh.fit_lmm(y, X, g, "ML")
    codes = lh.group_codes(g)[0]
    pts = ref[(ref.dataset == "toy") & (ref.model == "lmer_ML_profile_points")]
    for j, key in enumerate(names):
        mine = pts.term.str.startswith(key + "#")
        v = pts[mine & (pts.quantity == "value")].value.to_numpy()
        z = pts[mine & (pts.quantity == "zeta")].value.to_numpy()
        assert len(v) > 10
        dev = np.array([_beta_profile_deviance(np.asarray(y, float), X, codes, j, b) for b in v])
        zeta = np.sign(v - fit.beta[j]) * np.sqrt(np.maximum(dev - fit.deviance, 0.0))
        np.testing.assert_allclose(zeta, z, atol=1e-7)
        lo, hi = spline_limits(v, zeta, Z95)
        ci = [r_values(ref, "toy", "lmer_ML_profile", q)[key] for q in ("ci_lower", "ci_upper")]
        np.testing.assert_allclose([lo, hi], ci, rtol=1e-7)


@pytest.mark.parametrize("dataset,rtol", [("toy", 2e-3), ("grouseticks", 1e-6), ("sleepstudy", 1e-6)])
def test_profile_ci_beta_matches_confint(ref, dataset, rtol):
    """Exact crossings against lme4's spline: 1.7e-3 relative on the toy's Treat lower limit (0.009 on an
    interval 28 wide; a bent profile with widely spaced points), below 1e-6 with many groups."""
    y, X, g, names = design(dataset)
    prof = profile_ci_beta(y, X, g, names=names)
    lo = r_values(ref, dataset, "lmer_ML_profile", "ci_lower")
    hi = r_values(ref, dataset, "lmer_ML_profile", "ci_upper")
    for nm in names:
        assert prof[nm].lower == pytest.approx(lo[nm], rel=rtol)
        assert prof[nm].upper == pytest.approx(hi[nm], rel=rtol)
    if dataset == "toy":  # the profile interval of Treat contains 0, the Wald interval does not
        assert prof["Treat"].lower < 0 < wald_ci(lh.fit_lmm(y, X, g, "ML", names=names)).loc["Treat", "lower"]


def test_profile_ci_beta_curve_and_arguments():
    y, X, g, names = design("toy")
    prof = profile_ci_beta(y, X, g, level=0.9, names=names, n_grid=15)
    for p in prof.values():
        assert p.cutoff == pytest.approx(stats.norm.ppf(0.95))
        assert np.all(np.diff(p.zeta) > 0) and not np.any(np.signbit(p.zeta[p.zeta == 0]))
        inside = (p.values >= p.lower) & (p.values <= p.upper)
        assert np.all(np.abs(p.zeta[inside]) <= p.cutoff + 1e-9)
        assert np.all(np.abs(p.zeta[~inside]) >= p.cutoff - 1e-9)
    # a single column: only theta is left to profile; the deviance at the estimate is the fit's own
    one = profile_ci_beta(y, X[:, :1], g)["x0"]
    fit1 = lh.fit_lmm(y, X[:, :1], g, "ML")
    assert one.estimate == pytest.approx(fit1.beta[0])
    codes = lh.group_codes(g)[0]
    assert _beta_profile_deviance(np.asarray(y, float), X[:, :1], codes, 0, fit1.beta[0]) == \
        pytest.approx(fit1.deviance, rel=1e-10)
    with pytest.raises(ValueError, match="level"):
        profile_ci_beta(y, X, g, level=1.0)
    with pytest.raises(ValueError, match="n_grid"):
        profile_ci_beta(y, X, g, n_grid=2)
