"""fit_lmm where data are large or awkward: seeded random problems against the dense route, statsmodels and
closed forms. No timings here: speed is shown by benchmarks/, not asserted by tests."""
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import lmm_helpers as lh
from lmm_helpers.fit import _quantiles
from lmm_helpers.likelihood import (
    group_sums,
    pool_by_size,
    profiled_criterion,
    profiled_deviance,
    profiled_loglik_dense,
)


def simulate(rng, sizes, sigma_s=0.8, sigma=1.0, p=3):
    """y = X beta + u[g] + e with the given group sizes; X has an intercept and p-1 standard normal columns."""
    g = np.repeat(np.arange(len(sizes)), sizes)
    n = len(g)
    X = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1))])
    beta = np.linspace(1.0, -0.5, p)
    y = X @ beta + sigma_s * rng.standard_normal(len(sizes))[g] + sigma * rng.standard_normal(n)
    return y, X, g


# ------------------------------------------------------------------------------ O(n) route against dense
@pytest.mark.parametrize("method", ["ML", "REML"])
@pytest.mark.parametrize("seed", range(12))
def test_grouped_agrees_with_dense_on_random_problems(seed, method):
    """At the same theta the grouped and the dense likelihoods agree to 1e-10; the fits agree to 1e-8."""
    rng = np.random.default_rng([7, seed])
    sizes = rng.integers(1, 9, size=rng.integers(3, 12))
    sizes[0] = max(sizes[0], 2)
    y, X, g = simulate(rng, sizes, sigma_s=rng.uniform(0.3, 2.0), p=int(rng.integers(1, 4)))
    fit = lh.fit_lmm(y, X, g, method)
    # the likelihood at fit_lmm's own estimates, computed densely
    K = lh.indicator_matrix(lh.group_codes(g)[0])
    dense_at_fit = lh.loglik_dense(y, X, K, fit.beta, fit.sigma, fit.sigma_s, method)
    assert fit.loglik == pytest.approx(dense_at_fit, rel=1e-10)
    # beta is the dense GLS estimate at fit_lmm's variances (ML and REML share it), to 1e-9
    Sigma = lh.covariance_matrix(K, fit.sigma, fit.sigma_s)
    np.testing.assert_allclose(fit.beta, lh.gls_beta(y, X, Sigma), rtol=1e-9, atol=1e-9 * fit.sigma)
    if not fit.singular:
        # the dense criterion is stationary at fit_lmm's (log sigma, log sigma_s): central differences vanish
        log_sd = np.log([fit.sigma, fit.sigma_s])
        h = 1e-4
        for k in range(2):
            step = h * np.eye(2)[k]
            up = profiled_loglik_dense(y, X, K, *np.exp(log_sd + step), method=method)[0]
            down = profiled_loglik_dense(y, X, K, *np.exp(log_sd - step), method=method)[0]
            assert abs(up - down) / (2 * h) < 1e-7 * len(y)  # an error of 1e-6 in sigma would give ~1e-6 n
    # the dense optimiser, run independently, reaches the same optimum (it cannot reach a boundary exactly)
    beta_d, sigma_d, sigma_s_d, ll_d = lh.fit_lmm_dense(y, X, g, method)
    assert fit.loglik >= ll_d - 1e-10 * abs(ll_d)
    if not fit.singular:
        assert fit.loglik == pytest.approx(ll_d, rel=1e-8)
        np.testing.assert_allclose(fit.beta, beta_d, rtol=1e-6, atol=1e-6 * fit.sigma)
        assert fit.sigma == pytest.approx(sigma_d, rel=1e-6)
        assert fit.sigma_s == pytest.approx(sigma_s_d, rel=1e-5)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_size_pooled_criterion_equals_per_group(method):
    """Pooling groups of equal size changes nothing but the cost: deviance and derivative match."""
    rng = np.random.default_rng(3)
    y, X, g = simulate(rng, rng.integers(1, 30, size=400))
    sums = group_sums(y, X, g, 400)
    pooled = pool_by_size(sums)
    assert len(pooled.sizes) < 30 and pooled.mult.sum() == 400
    for theta in [0.0, 1e-3, 0.37, 5.0, 1e4]:
        full = profiled_deviance(theta, sums, method)
        dev, grad = profiled_criterion(theta, pooled, method)
        assert dev == pytest.approx(full.deviance, rel=1e-12)
        assert grad == pytest.approx(full.grad, rel=1e-8, abs=1e-10)


# ------------------------------------------------------------------------------------- awkward data
def test_groups_of_size_one_contribute():
    """Singletons carry information on sigma^2 + sigma_s^2: the fit uses them and matches the dense optimum."""
    rng = np.random.default_rng(11)
    sizes = np.r_[np.ones(20, int), rng.integers(2, 6, size=10)]
    y, X, g = simulate(rng, sizes)
    fit = lh.fit_lmm(y, X, g)
    _, _, _, ll_d = lh.fit_lmm_dense(y, X, g)
    assert fit.n_groups == 30 and fit.converged
    assert fit.loglik == pytest.approx(ll_d, rel=1e-8)
    # Dropping the singletons changes the estimates (not merely the log-likelihood, which drops 20 terms
    # whatever the fit did with them), and the fit without them is the dense fit of the reduced data.
    keep = np.repeat(sizes > 1, sizes)
    reduced = lh.fit_lmm(y[keep], X[keep], g[keep])
    assert reduced.sigma_s != pytest.approx(fit.sigma_s, rel=1e-3)
    assert reduced.loglik == pytest.approx(lh.fit_lmm_dense(y[keep], X[keep], g[keep]).loglik, rel=1e-8)


def test_one_group_holding_half_the_rows():
    rng = np.random.default_rng(12)
    sizes = np.r_[2000, rng.integers(1, 40, size=200)]
    sizes[0] = sizes[1:].sum()
    y, X, g = simulate(rng, sizes)
    fit = lh.fit_lmm(y, X, g)
    res = sm.MixedLM(y, X, groups=g).fit(reml=False)
    assert fit.converged
    assert fit.loglik >= res.llf - 1e-6 * abs(res.llf)
    np.testing.assert_allclose(fit.beta, res.fe_params, rtol=1e-4, atol=1e-4)
    assert fit.sigma**2 == pytest.approx(res.scale, rel=1e-4)


@pytest.mark.parametrize("kind", ["str", "categorical", "object-mixed-case", "sparse-int", "negative-int"])
def test_label_types_give_the_same_fit(kind):
    """Integer, string and categorical labels of the same grouping give the same fit and the same labels."""
    rng = np.random.default_rng(13)
    y, X, g = simulate(rng, rng.integers(1, 8, size=300))
    base = lh.fit_lmm(y, X, g)
    labels = {
        "str": np.array([f"s{k:04d}" for k in g]),
        "categorical": pd.Categorical(np.array([f"c{k}" for k in g])),
        "object-mixed-case": pd.Series([f"G{k}" if k % 2 else f"g{k}" for k in g]),
        "sparse-int": g * 1_000_003,  # too sparse for the counting route: hashed instead
        "negative-int": g - 150,  # compact but negative: counting route with an offset
    }[kind]
    other = lh.fit_lmm(y, X, labels)
    assert other.loglik == pytest.approx(base.loglik, rel=1e-13)
    np.testing.assert_allclose(other.beta, base.beta, rtol=1e-11)
    # the random effects belong to the right labels
    mapping = dict(zip(g, np.asarray(labels)))
    relabelled = base.random_effects.rename(index=mapping)
    np.testing.assert_allclose(other.random_effects[relabelled.index], relabelled, rtol=1e-9, atol=1e-12)


def test_integer_codes_sorted_like_factorize():
    rng = np.random.default_rng(14)
    for g in [rng.integers(0, 50, 500), rng.integers(-20, 20, 500).astype(np.int16),
              rng.integers(0, 10**9, 500), np.array([5, 5, 3, 9], dtype=np.uint32)]:
        codes, labels = lh.group_codes(g)
        ref_codes, ref_labels = pd.factorize(g, sort=True)
        np.testing.assert_array_equal(codes, ref_codes)
        np.testing.assert_array_equal(labels.to_numpy(), ref_labels)


def test_hundred_thousand_groups():
    """10^5 groups of 1 to 5 rows: the fit matches statsmodels' log-likelihood at statsmodels' optimum or better."""
    rng = np.random.default_rng(15)
    y, X, g = simulate(rng, rng.integers(1, 6, size=100_000))
    fit = lh.fit_lmm(y, X, g)
    assert fit.n_groups == 100_000 and fit.converged
    assert fit.sigma_s == pytest.approx(0.8, rel=0.05) and fit.sigma == pytest.approx(1.0, rel=0.02)
    # the reported log-likelihood is the likelihood at the reported estimates, evaluated by statsmodels' own
    # code (cov_re is sigma_s^2 / sigma^2 = theta; sigma^2 is profiled out, which at the optimum is ours)
    model = sm.MixedLM(y, X, groups=g)
    model.reml, model.fe_pen, model.cov_pen = False, None, None  # ML, no penalties (as fit(reml=False) sets)
    params = sm.regression.mixed_linear_model.MixedLMParams.from_components(
        fe_params=fit.beta, cov_re=np.array([[fit.theta]]))
    assert model.loglike(params, profile_fe=False) == pytest.approx(fit.loglik, rel=1e-10)


def test_boundary_fit_at_scale():
    """True sigma_s = 0 with 10^5 rows: a boundary fit, flagged singular, sigma_s exactly 0.0."""
    rng = np.random.default_rng(16)
    n, G = 100_000, 5_000
    g = rng.integers(0, G, n)
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    # sigma_s = 0 and group means of the noise pushed towards zero, so the ML estimate is on the boundary
    e = rng.standard_normal(n)
    e -= 0.5 * (np.bincount(g, weights=e, minlength=G) / np.bincount(g, minlength=G))[g]
    y = X @ [1.0, 2.0] + e
    for method in ["ML", "REML"]:
        fit = lh.fit_lmm(y, X, g, method)
        assert fit.singular and fit.sigma_s == 0.0 and fit.converged
        # at the boundary the fit is ordinary least squares
        beta_ols, rss = np.linalg.lstsq(X, y, rcond=None)[:2]
        np.testing.assert_allclose(fit.beta, beta_ols, rtol=1e-10)
        dof = n if method == "ML" else n - 2
        assert fit.sigma**2 == pytest.approx(rss[0] / dof, rel=1e-10)


def test_against_statsmodels_moderate_problem():
    """5000 rows, 250 groups: fit_lmm's ML optimum is at least statsmodels', and the estimates agree."""
    rng = np.random.default_rng(17)
    y, X, g = simulate(rng, rng.integers(10, 31, size=250))
    fit = lh.fit_lmm(y, X, g)
    res = sm.MixedLM(y, X, groups=g).fit(reml=False)
    assert fit.loglik >= res.llf - 1e-9 * abs(res.llf)
    assert fit.loglik == pytest.approx(res.llf, rel=1e-7)
    np.testing.assert_allclose(fit.beta, res.fe_params, rtol=1e-5)
    assert fit.sigma**2 == pytest.approx(res.scale, rel=1e-4)
    assert fit.sigma_s**2 == pytest.approx(float(np.asarray(res.cov_re)[0, 0]), rel=1e-3)


def test_bad_labels_rejected():
    rng = np.random.default_rng(18)
    y, X, g = simulate(rng, [3, 4, 5])
    labels = np.array(["a"] * 3 + [None] * 4 + ["c"] * 5, dtype=object)
    with pytest.raises(ValueError, match="groups"):
        lh.fit_lmm(y, X, labels)


def test_fast_quantiles_equal_numpy():
    """The scaled-residual quantiles of large fits are computed by a banded selection: exactly numpy's."""
    rng = np.random.default_rng(19)
    probs = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 0.1, 0.999])
    x = rng.standard_normal(100_003)
    cases = [x, np.sort(x), np.sort(x)[::-1].copy(), np.round(x, 1), np.full(50_000, 2.5),
             np.r_[np.zeros(60_000), rng.standard_normal(40_000) * 1e-300], rng.standard_cauchy(30_001)]
    for arr in cases:
        np.testing.assert_array_equal(_quantiles(arr, probs), np.quantile(arr, probs))
