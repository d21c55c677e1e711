"""fit_lmm against real lme4/lmerTest output, closed forms, the dense route, and bad input."""
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import design, r_values

import lmm_helpers as lh
from lmm_helpers.inference import profile_ci
from lmm_helpers.likelihood import centre_sums, profiled_deviance

CASES = [(ds, m) for ds in ["toy", "sleepstudy", "grouseticks", "singular"] for m in ["ML", "REML"]]


@pytest.mark.parametrize("dataset,method", CASES)
def test_estimates_match_lme4(ref, dataset, method):
    y, X, g, names = design(dataset)
    fit = lh.fit_lmm(y, X, g, method, names=names)
    model = f"lmer_{method}"
    rb = r_values(ref, dataset, model, "beta")
    assert list(rb.index) == names
    np.testing.assert_allclose(fit.beta, rb.to_numpy(), rtol=1e-6, atol=1e-9 * np.abs(rb).max())
    assert fit.sigma == pytest.approx(r_values(ref, dataset, model, "sigma").item(), rel=1e-6)
    assert fit.sigma_s == pytest.approx(r_values(ref, dataset, model, "sigma_s").item(), rel=1e-6, abs=1e-12)
    r_ll = r_values(ref, dataset, model, "loglik").item()
    assert fit.loglik == pytest.approx(r_ll, rel=1e-6)
    assert fit.loglik >= r_ll - 1e-9 * abs(r_ll)  # never short of lme4's optimum
    assert fit.converged


@pytest.mark.parametrize("dataset,method", CASES)
def test_inference_matches_lmertest(ref, dataset, method):
    y, X, g, names = design(dataset)
    fit = lh.fit_lmm(y, X, g, method, names=names)
    model = f"lmer_{method}"
    np.testing.assert_allclose(fit.bse, r_values(ref, dataset, model, "se"), rtol=2e-6)
    np.testing.assert_allclose(fit.tvalues, r_values(ref, dataset, model, "t"), rtol=2e-6)
    np.testing.assert_allclose(fit.df, r_values(ref, dataset, model, "df"), rtol=1e-5)
    np.testing.assert_allclose(fit.pvalues, r_values(ref, dataset, model, "p"), rtol=1e-5)
    assert fit.aic == pytest.approx(r_values(ref, dataset, model, "aic").item(), rel=1e-6)
    assert fit.bic == pytest.approx(r_values(ref, dataset, model, "bic").item(), rel=1e-6)
    assert fit.singular == bool(r_values(ref, dataset, model, "singular").item())
    re_r = r_values(ref, dataset, model, "ranef")
    re_py = fit.random_effects.copy()
    re_py.index = re_py.index.astype(str)
    np.testing.assert_allclose(re_py[re_r.index], re_r, rtol=1e-5, atol=1e-6 * fit.sigma_s + 1e-12)


def test_toy_closed_forms():
    """The balanced toy has closed-form estimates: ML sigma^2 = 18, sigma_s^2 = 33.25; REML 36 and 66.5."""
    y, X, g, _ = design("toy")
    ml = lh.fit_lmm(y, X, g, "ML")
    reml = lh.fit_lmm(y, X, g, "REML")
    np.testing.assert_allclose([ml.sigma**2, ml.sigma_s**2], [18.0, 33.25], rtol=1e-12)
    np.testing.assert_allclose([reml.sigma**2, reml.sigma_s**2], [36.0, 66.5], rtol=1e-12)
    np.testing.assert_allclose(ml.beta, [6.5, 9.0], rtol=1e-13)
    # ML deviance in closed form: n log(2 pi) + log det Sigma + quadratic form (= n at the optimum)
    det = (ml.sigma**4 + 2 * ml.sigma_s**2 * ml.sigma**2) ** 2
    assert ml.loglik == pytest.approx(-0.5 * (4 * np.log(2 * np.pi) + np.log(det) + 4), rel=1e-13)
    # REML treatment t equals the paired t: mean difference 9 over sd(diff)/sqrt(2) = 6
    assert reml.tvalues[1] == pytest.approx(1.5, rel=1e-12)
    assert ml.tvalues[1] == pytest.approx(1.5 * np.sqrt(2), rel=1e-12)


def test_cellmeans_coding_matches_article(ref):
    toy = lh.load_toy()
    fit = lh.fit_lmm(toy.Resp, lh.toy_design(toy, "cellmeans"), toy.Ind)
    np.testing.assert_allclose(fit.beta, r_values(ref, "toy", "lmer_ML_cellmeans", "beta"), rtol=1e-6)
    assert fit.sigma == pytest.approx(4.242640687119285, rel=1e-12)
    assert fit.sigma_s == pytest.approx(np.sqrt(33.25), rel=1e-12)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_dense_route_agrees(method):
    y, X, g, _ = design("sleepstudy")
    fast = lh.fit_lmm(y, X, g, method)
    beta, sigma, sigma_s, loglik = lh.fit_lmm_dense(y, X, g, method)
    np.testing.assert_allclose(beta, fast.beta, rtol=1e-7)
    assert sigma == pytest.approx(fast.sigma, rel=1e-6)
    assert sigma_s == pytest.approx(fast.sigma_s, rel=1e-6)
    assert loglik == pytest.approx(fast.loglik, rel=1e-10)
    assert fast.loglik >= loglik - 1e-10


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_grouped_deviance_equals_dense(method):
    """The O(n) profiled deviance equals the dense n x n likelihood at arbitrary theta."""
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 6, size=12)
    codes = np.repeat(np.arange(12), sizes)
    n = len(codes)
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.normal(size=n)])
    y = X @ [1.0, 2.0, -1.0] + rng.normal(size=12)[codes] + rng.normal(size=n)
    sums = lh.group_sums(y, X, codes, 12)
    K = lh.indicator_matrix(codes, 12)
    for theta in [0.0, 0.3, 2.0, 40.0]:
        pt = lh.profiled_deviance(theta, sums, method)
        sigma = np.sqrt(pt.sigma2)
        ll = lh.loglik_dense(y, X, K, pt.beta, sigma, sigma * np.sqrt(theta), method)
        assert -2 * ll == pytest.approx(pt.deviance, rel=1e-11)
        # analytic derivative against a central difference
        h = 1e-6 * max(theta, 1.0)
        if theta > h:
            fd = (lh.profiled_deviance(theta + h, sums, method).deviance
                  - lh.profiled_deviance(theta - h, sums, method).deviance) / (2 * h)
            assert pt.grad == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_labels_of_any_kind_give_the_same_fit():
    y, X, g, _ = design("sleepstudy")
    base = lh.fit_lmm(y, X, g)
    for labels in [g.astype(str).radd("s"), pd.Categorical(g), list(g), g.to_numpy()]:
        fit = lh.fit_lmm(y, X, labels)
        np.testing.assert_allclose(fit.beta, base.beta, rtol=1e-12)
        assert fit.loglik == pytest.approx(base.loglik, rel=1e-12)


def test_unbalanced_with_singletons_and_a_large_group():
    """Groups of size 1 and one group holding half the rows: grouped and dense routes agree."""
    rng = np.random.default_rng(7)
    sizes = np.array([1, 1, 1, 2, 3, 1, 30])
    codes = np.repeat(np.arange(len(sizes)), sizes)
    n = len(codes)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = X @ [0.5, 1.0] + 1.5 * rng.normal(size=len(sizes))[codes] + rng.normal(size=n)
    for method in ["ML", "REML"]:
        fast = lh.fit_lmm(y, X, codes, method)
        beta, sigma, sigma_s, loglik = lh.fit_lmm_dense(y, X, codes, method)
        assert fast.loglik >= loglik - 1e-10
        assert fast.loglik == pytest.approx(loglik, rel=1e-9)
        np.testing.assert_allclose(fast.beta, beta, rtol=1e-5)


def _tokens_match(ours: str, theirs: str) -> bool:
    """Same words in the same places; numbers equal to the digits printed (lme4's optimiser stops near 1e-7)."""
    if len(ours) != len(theirs):
        return False
    for a, b in zip(ours.split(), theirs.split(), strict=False):
        try:
            if abs(float(a) - float(b)) > 1e-5 * max(1.0, abs(float(b))):
                return False
        except ValueError:
            if a != b:
                return False
    return len(ours.split()) == len(theirs.split())


@pytest.mark.parametrize("dataset, group, formula, r_group", [
    ("toy", "Ind", "Resp ~ Treat + (1 | IndF)", "IndF"),
    ("sleepstudy", "Subject", "Reaction ~ Days + (1 | Subject)", "Subject"),
    ("grouseticks", "Brood", "logTicks ~ Year + Height + (1 | Brood)", "Brood"),
])
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_summary_lines_up_with_lmerTest(dataset, group, formula, r_group, method):
    """Below its header, summary() prints what lmerTest's summary() prints, in the same columns."""
    y, X, g, names = design(dataset)
    ours = lh.fit_lmm(y, X, g, method, names=names).summary(formula, dataset, r_group).splitlines()
    stem = "toy_lmerTest" if dataset == "toy" else f"{dataset}_lmer"
    theirs = [line.rstrip() for line in lh.r_output(f"{stem}_{method}").splitlines()]
    # The title, which R wraps at 80 characters and ends with its class name where ours names the package.
    r_title = " ".join(theirs[:theirs.index(f"Formula: {formula}")])
    r_title = " ".join(r_title.split()).replace("lmerModLmerTest", "lmm_helpers").replace("[ lmm", "[lmm")
    assert ours[0] == r_title
    ours, theirs = ours[ours.index(f"Formula: {formula}") + 2:], theirs[theirs.index(f"Formula: {formula}") + 2:]
    assert len(ours) == len(theirs), "\n".join(ours)
    for a, b in zip(ours, theirs):
        assert _tokens_match(a, b), f"\nours: {a!r}\nR:    {b!r}"


BAD = [
    (dict(y=[1, 2, 3]), "lengths must match"),
    (dict(y=[1, 2, np.nan, 4, 5, 6]), "NaN or inf"),
    (dict(y=[1, 2, np.inf, 4, 5, 6]), "NaN or inf"),
    (dict(y=list("abcdef")), "y must be numeric"),
    (dict(groups=[1, 1, 1, 1, 1, 1]), "at least two groups"),
    (dict(groups=[1, 2, 3, 4, 5, 6]), "every group has one row"),
    (dict(groups=[1, 1, 2, None, 3, 3]), "missing labels"),
    (dict(X=np.column_stack([np.ones(6), np.arange(6), 2 * np.arange(6)])), "rank-deficient"),
    (dict(X=np.column_stack([np.ones(6), np.zeros(6)])), "rank-deficient"),
    (dict(X=np.ones(6)), "X must be 2-D"),
    (dict(X=np.column_stack([np.ones(6), np.arange(6), np.arange(6) ** 2, np.arange(6) ** 3, np.sin(np.arange(6))])),
     "more parameters"),
    (dict(method="OLS"), "method must be"),
    (dict(X=np.column_stack([np.ones(6, bool), np.arange(6) % 2 == 0])), "X must be numeric.*astype"),
    (dict(X=pd.DataFrame({"one": np.ones(6), "even": np.arange(6) % 2 == 0})), r"column 'even'.*dtype bool"),
    (dict(y=pd.Series([1.0, 2.5, None, 4.0, 3.0, 6.5], dtype="Float64")), "y contains NaN"),
    (dict(groups=pd.Series([1, 1, 2, None, 3, 3], dtype="Int64")), "missing labels"),
    (dict(groups=(k for k in [1, 1, 2, 2, 3, 3])), "groups must be an array-like"),
    (dict(y=[], X=np.ones((0, 2)), groups=[]), "no rows"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_input_raises_clear_valueerror(change, message):
    args = dict(y=[1.0, 2.5, 2.0, 4.0, 3.0, 6.5], X=np.column_stack([np.ones(6), np.arange(6)]),
                groups=[1, 1, 2, 2, 3, 3], method="ML")
    args.update(change)
    with pytest.raises(ValueError, match=message):
        lh.fit_lmm(args["y"], args["X"], args["groups"], args["method"])


def test_pandas_nullable_dtypes_are_numbers():
    """Float64/Int64 columns (pandas' nullable dtypes) are numbers: the same fit as from float64 arrays."""
    y, X, g, names = design("sleepstudy")
    base = lh.fit_lmm(y, X, g, names=names)
    fit = lh.fit_lmm(y.astype("Float64"), pd.DataFrame(X, columns=names).astype({"Days": "Int64"}),
                     g.astype("Int64"))
    assert fit.names == names and fit.loglik == base.loglik
    np.testing.assert_array_equal(fit.beta, base.beta)


def test_narrow_integer_labels_do_not_wrap_around():
    """int8 labels -100..100: shifting them by their minimum in int8 would overflow."""
    rng = np.random.default_rng(5)
    labels = rng.integers(-100, 101, size=600).astype(np.int8)
    y = rng.normal(size=600) + 0.5 * rng.normal(size=201)[labels.astype(int) + 100]
    X = np.column_stack([np.ones(600), rng.normal(size=600)])
    fit, wide = lh.fit_lmm(y, X, labels), lh.fit_lmm(y, X, labels.astype(np.int64))
    assert fit.loglik == wide.loglik
    assert fit.random_effects.index.dtype == np.int8
    np.testing.assert_array_equal(fit.random_effects.to_numpy(), wide.random_effects.to_numpy())
    np.testing.assert_array_equal(fit.random_effects.index.to_numpy(), np.unique(labels))


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_offsets_far_from_zero_change_nothing(method):
    """Reaction + 10^8 and Days + 10^7 (a timestamp-like covariate): the same variances, slope, SEs, df and
    log-likelihood as sleepstudy itself. Uncentred, the cross-products lost their leading digits (sigma off by
    7e-5, the log-likelihood by 0.01) and Days + 10^7 was refused as collinear with the intercept."""
    y, X, g, names = design("sleepstudy")
    base = lh.fit_lmm(y, X, g, method, names=names)
    far = X.copy()
    far[:, 1] += 1e7
    fit = lh.fit_lmm(y + 1e8, far, g, method, names=names)
    assert fit.sigma == pytest.approx(base.sigma, rel=1e-9)
    assert fit.sigma_s == pytest.approx(base.sigma_s, rel=1e-9)
    assert fit.loglik == pytest.approx(base.loglik, rel=1e-11)
    assert fit.beta[1] == pytest.approx(base.beta[1], rel=1e-9)
    # the intercept moves by the offsets, 1e8 - 1e7 * slope (to what the slope's 1e-11 error allows at 1e7)
    assert fit.beta[0] == pytest.approx(base.beta[0] + 1e8 - 1e7 * base.beta[1], rel=1e-9)
    assert fit.bse[1] == pytest.approx(base.bse[1], rel=1e-9)
    assert fit.df[1] == pytest.approx(base.df[1], rel=1e-8)
    np.testing.assert_allclose(fit.random_effects, base.random_effects, rtol=1e-8)


def test_dense_route_and_profiles_accept_a_covariate_far_from_zero():
    """check_inputs (the dense route's and the profiles' check) centres too: Treat + 1e6 and Days + 1e7 are not
    collinear with the intercept (their spread is more than 1e-7 of their size, R's lm tolerance)."""
    y, X, g, names = design("toy")
    far = X.copy()
    far[:, 1] += 1e6
    lh.check_inputs(y, far, g, names)
    far[:, 1] += 1e7  # 0/1 at 1.1e7: spread 5e-8 of the size, collinear to R's lm too
    with pytest.raises(ValueError, match="'Treat' is constant"):
        lh.check_inputs(y, far, g, names)
    with pytest.raises(ValueError, match="'x1' is constant, a multiple of the intercept column 'x0'"):
        lh.check_inputs(np.r_[y, y], np.column_stack([np.ones(8), np.full(8, 7.3), np.arange(8)]), np.r_[g, g])
    ys, Xs, gs, _ = design("sleepstudy")
    Xs = Xs.copy()
    Xs[:, 1] += 1e7
    prof = profile_ci(ys, Xs, gs)
    base = profile_ci(*design("sleepstudy")[:3])
    assert prof["sigma_s"].upper == pytest.approx(base["sigma_s"].upper, rel=1e-8)


def test_centring_leaves_the_criterion_unchanged():
    """Centring moves only the group means; the profiled ML and REML criteria are the same functions of theta."""
    y, X, g, _ = design("grouseticks")
    codes, labels = lh.group_codes(g)
    sums = lh.group_sums(np.asarray(y, float), X, codes, len(labels))
    centred, how = centre_sums(sums)
    assert how.intercept == 0 and how.shift[3] != 0.0  # Height (mean 460, SD 20) moved, the intercept not
    for method in ["ML", "REML"]:
        for theta in [0.0, 0.1, 1.0, 30.0]:
            a, b = profiled_deviance(theta, sums, method), profiled_deviance(theta, centred, method)
            assert b.deviance == pytest.approx(a.deviance, rel=1e-12)
            np.testing.assert_allclose(how.T @ b.beta + how.offset, a.beta, rtol=1e-9)


def test_constant_column_besides_the_intercept_is_refused():
    args = dict(y=[1.0, 2.5, 2.0, 4.0, 3.0, 6.5], groups=[1, 1, 2, 2, 3, 3])
    with pytest.raises(ValueError, match="'x1' is constant, a multiple of the intercept column 'x0'"):
        lh.fit_lmm(X=np.column_stack([np.ones(6), np.full(6, 7.3), np.arange(6)]), **args)


@pytest.mark.parametrize("value", [0.1, 3.0, 1e6 + 0.3])
def test_constant_y_is_refused(value):
    """Centred, a constant y is rounding noise (1e-17), not data: refused, not fitted with sigma ~ 1e-17."""
    with pytest.raises(ValueError, match="y is constant"):
        lh.fit_lmm(np.full(6, value), np.column_stack([np.ones(6), np.arange(6.0)]), [1, 1, 2, 2, 3, 3])


@pytest.mark.parametrize("which, scale", [("y", 1e150), ("y", 1e-150), ("X", 1e150), ("X", 1e-150)])
def test_magnitudes_beyond_double_precision_are_refused(which, scale):
    """Squares of 1e150 overflow and of 1e-150 underflow: a ValueError naming y or X's column, not an
    OverflowError, ZeroDivisionError or NaN df."""
    y, X, g, names = design("sleepstudy")
    X = X.copy()
    if which == "X":
        X[:, 1] *= scale
    with pytest.raises(ValueError, match="column 'Days' has values" if which == "X" else "^y has values"):
        lh.fit_lmm(y * (scale if which == "y" else 1.0), X, g, names=names)


def test_tiny_units_of_x_keep_satterthwaite_finite():
    """Days in units of 1e90 days: var(beta)^2 overflows; df and p-values are those of Days in days."""
    y, X, g, names = design("sleepstudy")
    base = lh.fit_lmm(y, X, g)
    X = X.copy()
    X[:, 1] *= 1e-90
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = lh.fit_lmm(y, X, g)
    np.testing.assert_allclose(fit.df, base.df, rtol=1e-12)
    np.testing.assert_allclose(fit.pvalues, base.pvalues, rtol=1e-10)


def test_indicator_matrix_checks_its_codes():
    np.testing.assert_array_equal(lh.indicator_matrix([0, 2, 2], 4), [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]])
    for codes, n_groups, message in [([0, 1, -1], None, ">= 0"), ([0, 1, 2], 2, "< n_groups"),
                                     ([0.0, 1.0], None, "integers"), ([[0, 1]], None, "1-D")]:
        with pytest.raises(ValueError, match=message):
            lh.indicator_matrix(codes, n_groups)


def test_exact_fit_is_refused():
    X = np.column_stack([np.ones(6), np.arange(6.0)])
    with pytest.raises(ValueError, match="residual variance is zero"):
        lh.fit_lmm(X @ [1.0, 2.0], X, [1, 1, 2, 2, 3, 3])


def test_boundary_fit_of_the_toy_with_alike_individuals(ref):
    """Individuals 10/25 and 12/20: lme4 puts sigma_s at 0 and flags the fit singular; so must fit_lmm."""
    toy = lh.load_toy()
    resp = np.array([10.0, 25.0, 12.0, 20.0])  # make_reference.R's `alike`, in the toy's row order
    assert list(zip(toy.Ind, toy.Treat)) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    fit = lh.fit_lmm(resp, lh.toy_design(toy, "cellmeans"), toy.Ind)
    r = lambda q: r_values(ref, "toy_alike", "lmer_ML_cellmeans", q)  # noqa: E731
    assert fit.singular and fit.sigma_s == 0.0 and r("singular").iloc[0] == 1 and r("sigma_s").iloc[0] == 0
    assert fit.sigma == pytest.approx(r("sigma").iloc[0], rel=1e-6)
    assert fit.loglik == pytest.approx(r("loglik").iloc[0], rel=1e-6)
    np.testing.assert_allclose(fit.beta, r("beta").to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(fit.bse, r("se").to_numpy(), rtol=1e-6)


def test_reml_dense_criterion_does_not_depend_on_beta():
    """The restricted likelihood integrates beta out: any beta passed in gives lme4's REML criterion."""
    y, X, g, _ = design("toy")
    K = lh.indicator_matrix(lh.group_codes(g)[0])
    at_gls = lh.loglik_dense(y, X, K, lh.gls_beta(np.asarray(y, float), X, lh.covariance_matrix(K, 6.0, 1.0)),
                             6.0, 1.0, "REML")
    assert lh.loglik_dense(y, X, K, [0.0, 0.0], 6.0, 1.0, "REML") == at_gls
    assert lh.loglik_dense(y, X, K, [0.0, 0.0], 6.0, 1.0, "ML") < lh.loglik_dense(y, X, K, [6.5, 9.0], 6.0, 1.0)
    with pytest.raises(ValueError, match="beta"):
        lh.loglik_dense(y, X, K, None, 6.0, 1.0, "ML")


def test_dense_fit_has_named_fields():
    y, X, g, _ = design("sleepstudy")
    dense = lh.fit_lmm_dense(y, X, g)
    beta, sigma, sigma_s, loglik = dense
    assert (dense.beta is beta) and dense.sigma == sigma and dense.sigma_s == sigma_s and dense.loglik == loglik
    assert loglik == pytest.approx(lh.fit_lmm(y, X, g).loglik, rel=1e-9)


def test_dense_route_runs_blas_on_one_thread(monkeypatch):
    """fit_lmm_dense's hundreds of small n x n LAPACK calls run on one BLAS thread: split over busy cores, each call
    waited for a core (sleepstudy by ML: minutes instead of a second). The caller's setting is restored."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    before, seen = blas_threads(), []
    real = lh.fit.profiled_loglik_dense

    def spy(*args, **kwargs):
        seen.append(blas_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(lh.fit, "profiled_loglik_dense", spy)
    y, X, g, _ = design("toy")
    lh.fit_lmm_dense(y, X, g)
    assert seen and set(seen) == {1}
    assert blas_threads() == before
