"""lmm(formula, data) against lme4/lmerTest's stored output, fit_lmm for (1 | g), R's model.matrix, bad input.

Two kinds of comparison with R, because lme4's optimiser stops where its own tolerances let it (bobyqa; on
Orthodont's REML fit 2.8e-6 log-likelihood units short of the optimum, its theta 2.3e-3 off):

- at lme4's own theta (``_fit_blocks(model, method, theta)``, no optimisation), every number lmm() reports is a
  function of theta and the data, and must equal R's to rounding: the criterion to 1e-12 (at most 2.5e-14
  measured; 4e-11 on Oxboys before y was centred, its heights near 150 losing digits in [X y]'[X y] - sum C'C),
  beta, SEs, variances, BLUPs to 1e-7, Satterthwaite's df to 1e-6 (1.6e-7 measured: lmerTest's numDeriv against
  our Richardson scheme on an analytic gradient);
- at our own optimum, the log-likelihood must be at least lme4's and within 1e-7 relative of it; the estimates
  agree as far as lme4's convergence allows (measured at most 4.5e-4 relative, for the df of Orthodont's REML fit;
  1.3e-4 elsewhere), hence rtol 1e-3.
"""
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import r_values

import lmm_helpers as lh
from lmm_helpers import mixed
from test_fit import _tokens_match

CASES = [
    ("sleepstudy", "slopes", "Reaction ~ Days + (Days | Subject)"),
    ("sleepstudy", "uncorr", "Reaction ~ Days + (Days || Subject)"),
    ("orthodont", "slopes", "distance ~ age * Sex + (age | Subject)"),
    ("chickweight", "slopes", "weight ~ Time * Diet + (Time | Chick)"),
    ("chickweight", "early", "weight ~ Time + (Time | Chick)"),
    ("oxboys", "slopes", "height ~ age + (age | Subject)"),
    ("oxboys", "uncorr", "height ~ age + (1 | Subject) + (0 + age | Subject)"),
]
FITS = [(*c, m) for c in CASES for m in ["ML", "REML"]]


def _data(dataset: str, label: str) -> pd.DataFrame:
    df = lh.load_dataset(dataset)
    if dataset == "chickweight":
        df["Diet"] = df["Diet"].astype(str)  # diets 1-4 are a factor in R; a CSV reader sees integers
        if label == "early":
            df = df[df.Time <= 4].reset_index(drop=True)
    return df


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def _r(ref, dataset, label, method, quantity):
    return r_values(ref, dataset, f"lmm_{label}_{method}", quantity)


def _at_r_theta(ref, dataset, label, formula, method):
    model = mixed._build(formula, _data(dataset, label))
    return _quiet(mixed._fit_blocks, model, method, _r(ref, dataset, label, method, "theta").to_numpy())


@pytest.mark.parametrize("dataset,label,formula,method", FITS)
def test_criterion_is_lme4s_at_its_theta(ref, dataset, label, formula, method):
    theta = _r(ref, dataset, label, method, "theta").to_numpy()
    dev = lh.lmm_criterion(formula, _data(dataset, label), theta, method)
    assert dev == pytest.approx(_r(ref, dataset, label, method, "deviance").item(), rel=1e-12)


@pytest.mark.parametrize("dataset,label,formula,method", FITS)
def test_every_number_at_lme4s_theta(ref, dataset, label, formula, method):
    fit = _at_r_theta(ref, dataset, label, formula, method)
    r = lambda q: _r(ref, dataset, label, method, q)  # noqa: E731
    assert fit.names == list(r("beta").index)
    np.testing.assert_allclose(fit.beta, r("beta"), rtol=1e-7, atol=1e-9 * np.abs(r("beta")).max())
    np.testing.assert_allclose(fit.bse, r("se"), rtol=1e-7)
    np.testing.assert_allclose(fit.vcov.ravel(order="F"), r("vcov"), rtol=1e-7, atol=1e-12 * fit.vcov.max())
    assert fit.sigma == pytest.approx(r("sigma").item(), rel=1e-7)
    for q in ["loglik", "aic", "bic"]:
        assert getattr(fit, q) == pytest.approx(r(q).item(), rel=1e-9)
    np.testing.assert_allclose(fit.df, r("df"), rtol=1e-6)
    np.testing.assert_allclose(fit.pvalues, r("p"), rtol=1e-4)  # p ~ 1e-34 moves 1e-5 with df at 1e-7
    keys = [f"{g}|{v1 or ''}|{v2 or ''}" for g, v1, v2 in zip(fit.varcorr.grp, fit.varcorr.var1, fit.varcorr.var2)]
    assert keys == list(r("varcorr_vcov").index)
    np.testing.assert_allclose(fit.varcorr.vcov, r("varcorr_vcov"), rtol=1e-7, atol=1e-12)
    sd = r("varcorr_sdcor").to_numpy()
    np.testing.assert_allclose(fit.varcorr.sdcor, sd, rtol=1e-7, atol=1e-12)
    (factor, re), = fit.random_effects.items()
    long = re.rename(index=str).stack()
    r_re = r("ranef")
    np.testing.assert_allclose(long[[tuple(k.split("|")) for k in r_re.index]], r_re, rtol=1e-6,
                               atol=1e-7 * np.abs(r_re).max())
    assert fit.singular == bool(r("singular").item())


@pytest.mark.parametrize("dataset,label,formula,method", FITS)
def test_optimum_at_least_lme4s(ref, dataset, label, formula, method):
    fit = _quiet(lh.lmm, formula, _data(dataset, label), method)
    r = lambda q: _r(ref, dataset, label, method, q)  # noqa: E731
    r_ll = r("loglik").item()
    assert fit.loglik >= r_ll
    assert fit.loglik == pytest.approx(r_ll, rel=1e-7)
    assert fit.converged  # lme4 warns on ChickWeight's ML fit; we reach a higher log-likelihood and check it
    assert fit.singular == bool(r("singular").item())
    rtol = 1e-3
    np.testing.assert_allclose(fit.beta, r("beta"), rtol=rtol, atol=1e-6 * np.abs(r("beta")).max())
    np.testing.assert_allclose(fit.bse, r("se"), rtol=rtol)
    np.testing.assert_allclose(fit.df, r("df"), rtol=rtol)
    np.testing.assert_allclose(fit.varcorr.sdcor, r("varcorr_sdcor"), rtol=rtol, atol=1e-3 * fit.sigma)
    np.testing.assert_allclose(fit.theta, r("theta"), rtol=5e-3, atol=1e-4)


@pytest.mark.parametrize("dataset,label,formula,method", FITS)
def test_summary_lines_up_with_lmerTest(ref, dataset, label, formula, method):
    """At lme4's theta the printed numbers are R's to the digits shown; below the title, line for line."""
    fit = _at_r_theta(ref, dataset, label, formula, method)
    name = {"sleepstudy": "sleep"}.get(dataset, dataset) + ("_early" if label == "early" else "")
    ours = fit.summary(name).splitlines()
    theirs = [line.rstrip() for line in lh.r_output(f"{dataset}_lmm_{label}_{method}").splitlines()]
    start = theirs.index(f"Formula: {formula}")
    r_title = " ".join(" ".join(theirs[:start]).split()).replace("lmerModLmerTest", "lmm_helpers")
    assert ours[0] == r_title.replace("[ lmm", "[lmm")
    theirs = theirs[start:]
    # lme4's own optimiser messages (convergence code, warnings) are not ours to print
    cut = next((i for i, line in enumerate(theirs) if line.startswith("optimizer (")), len(theirs))
    theirs = theirs[:cut]
    if fit.singular:
        theirs = [*theirs, "", "boundary (singular) fit: see help('isSingular')"]
    ours = ours[1:]
    assert len(ours) == len(theirs), "\n".join(ours)
    for a, b in zip(ours, theirs):
        assert _tokens_match(a, b), f"\nours: {a!r}\nR:    {b!r}"


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_random_intercept_is_fit_lmm(method):
    """(1 | g) goes through fit_lmm: the same numbers, bit for bit."""
    df = lh.load_dataset("sleepstudy")
    fit = lh.lmm("Reaction ~ Days + (1 | Subject)", df, method)
    base = lh.fit_lmm(df.Reaction, np.column_stack([np.ones(len(df)), df.Days]), df.Subject, method,
                      names=["(Intercept)", "Days"])
    assert fit.loglik == base.loglik
    for a in ["beta", "bse", "df", "pvalues", "vcov"]:
        np.testing.assert_array_equal(getattr(fit, a), getattr(base, a))
    assert fit.theta[0] == np.sqrt(base.theta) and fit.sigma == base.sigma
    np.testing.assert_array_equal(fit.random_effects["Subject"]["(Intercept)"], base.random_effects)
    assert fit.varcorr.sdcor.tolist() == [base.sigma_s, base.sigma]


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_random_intercept_matches_lme4(ref, method):
    fit = lh.lmm("Reaction ~ Days + (1 | Subject)", lh.load_dataset("sleepstudy"), method)
    r = lambda q: r_values(ref, "sleepstudy", f"lmer_{method}", q)  # noqa: E731
    assert fit.loglik == pytest.approx(r("loglik").item(), rel=1e-7)
    np.testing.assert_allclose(fit.df, r("df"), rtol=1e-5)
    assert fit.aic == pytest.approx(r("aic").item(), rel=1e-7)


@pytest.mark.parametrize("dataset", ["orthodont", "chickweight"])
def test_fixed_part_is_rs_model_matrix(ref, dataset):
    """Names, order and coding of factors, interactions, 0 + and - 1: R's model.matrix column for column."""
    cs = r_values(ref, dataset, "model_matrix", "colsum")
    data = _data(dataset, "slopes")
    for fm in dict.fromkeys(k.split("|")[0] for k in cs.index):
        parsed = lh.formula.parse_formula(fm + " + (1 | " + ("Subject" if dataset == "orthodont" else "Chick") + ")")
        names, X = lh.formula.design_columns(data, parsed.fixed, parsed.intercept, "fixed part")
        want = cs[[k.startswith(fm + "|") for k in cs.index]]
        assert [f"{fm}|{n}" for n in names] == list(want.index)
        np.testing.assert_allclose(X.sum(axis=0), want.to_numpy(), rtol=1e-12)


def test_orthodont_names_follow_lme4():
    fit = lh.lmm("distance ~ age * Sex + (age | Subject)", lh.load_dataset("orthodont"))
    assert fit.names == ["(Intercept)", "age", "SexMale", "age:SexMale"]
    assert list(fit.fe_params.index) == fit.names
    assert list(fit.random_effects["Subject"].columns) == ["(Intercept)", "age"]
    assert fit.n_groups == {"Subject": 27} and fit.n_obs == 108


def test_double_bar_is_the_sum_of_single_terms():
    """lme4 expands (Days || Subject) to (1 | Subject) + (0 + Days | Subject): the same fit."""
    df = lh.load_dataset("sleepstudy")
    a = lh.lmm("Reaction ~ Days + (Days || Subject)", df)
    b = lh.lmm("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", df)
    assert a.loglik == b.loglik and list(a.varcorr.grp) == ["Subject", "Subject.1", "Residual"]
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.varcorr.var2.isna().all()  # no covariance rows for || terms


def test_categorical_levels_set_the_reference():
    """A pandas categorical keeps its own level order (as an R factor), a string column sorts."""
    df = lh.load_dataset("orthodont")
    cat = df.assign(Sex=pd.Categorical(df.Sex, categories=["Male", "Female"]))
    a = lh.lmm("distance ~ age * Sex + (age | Subject)", df)
    b = lh.lmm("distance ~ age * Sex + (age | Subject)", cat)
    assert b.names == ["(Intercept)", "age", "SexFemale", "age:SexFemale"]
    assert b.loglik == pytest.approx(a.loglik, rel=1e-10)


def test_singular_fit_warns_and_says_so():
    df = _data("chickweight", "early")
    with pytest.warns(UserWarning, match="singular"):
        fit = lh.lmm("weight ~ Time + (Time | Chick)", df)
    assert fit.singular and "boundary (singular) fit" in fit.summary()


def _toy(n_groups=6, per=4, seed=3):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    x = rng.normal(size=g.size)
    return pd.DataFrame({"y": 1 + x + rng.normal(size=n_groups)[g] + rng.normal(size=g.size), "x": x,
                         "z": rng.normal(size=g.size), "g": g, "f": np.where(g % 2, "a", "b"),
                         "one": "same"})


BAD = [
    ("y ~ x + (1 | foo)", r"random term \(1 \| foo\) uses 'foo', which is not a column"),
    ("y ~ xx + (1 | g)", r"fixed term 'xx' uses 'xx'"),
    ("yy ~ x + (1 | g)", r"the response uses 'yy'"),
    ("y ~ x + (w | g)", r"random term \(w \| g\) uses 'w'"),
    ("y ~ x + (1 | g/f)", "issue 11"),
    ("y ~ x + (1 | g:f)", "issue 11"),
    ("y ~ x + (1 | g) + (1 | f)", "issue 11"),
    ("y ~ x + (x | g", "cannot be parsed"),
    ("y ~ x + (1 | g) +", "cannot be parsed"),
    ("y ~ x", "no random term"),
    ("y ~ log(x) + (1 | g)", "function call"),
    ("y ~ x + (1 | one)", r"grouping factor 'one' has 1 level"),
    ("y ~ 0 + (1 | g)", "fixed part has no columns"),
    ("y ~ x + one + (1 | g)", "factor 'one' has only one level"),
    ("y ~ x + x:z + z + x:z + (1 | g)", None),  # duplicated terms are one term, as in R: no error
]


@pytest.mark.parametrize("formula,message", BAD)
def test_bad_input_raises_valueerror_naming_the_term(formula, message):
    df = _toy()
    if message is None:
        lh.lmm(formula, df)
        return
    with pytest.raises(ValueError, match=message):
        lh.lmm(formula, df)


def test_more_random_effects_than_observations_is_refused():
    df = _toy(n_groups=6, per=3)
    with pytest.raises(ValueError, match=r"random term \(x \+ z \| g\): 18 random effects .* 18 observations"):
        lh.lmm("y ~ x + (x + z | g)", df)
    with pytest.raises(ValueError, match="grouping factor 'x' has 18 levels for 18 observations"):
        lh.lmm("y ~ 1 + (1 | x)", df)


def test_bad_data_is_refused():
    df = _toy()
    with pytest.raises(ValueError, match="data must be a pandas DataFrame"):
        lh.lmm("y ~ x + (1 | g)", df.to_dict())
    with pytest.raises(ValueError, match="response 'y' contains NaN"):
        lh.lmm("y ~ x + (1 | g)", df.assign(y=np.where(df.x > 1, np.nan, df.y)))
    with pytest.raises(ValueError, match="column 'x' .* contains NaN"):
        lh.lmm("y ~ x + (x | g)", df.assign(x=np.where(df.x > 1, np.nan, df.x)))
    with pytest.raises(ValueError, match="grouping factor 'g' has missing values"):
        lh.lmm("y ~ x + (x | g)", df.assign(g=df.g.where(df.x < 1)))
    with pytest.raises(ValueError, match="response 'f' must be numeric"):
        lh.lmm("f ~ x + (1 | g)", df)
    with pytest.raises(ValueError, match="method must be"):
        lh.lmm("y ~ x + (x | g)", df, method="OLS")
    with pytest.raises(ValueError, match="rank-deficient"):
        lh.lmm("y ~ x + x2 + (x | g)", df.assign(x2=2 * df.x))


def test_lrt_of_the_random_slope(ref):
    """(1 | Subject) against (Days | Subject), ML: R's statistic (from the stored log-likelihoods) and the
    boundary mixture 1/2 chi2_1 + 1/2 chi2_2 for one added variance and its covariance."""
    from scipy import stats

    df = lh.load_dataset("sleepstudy")
    small = lh.lmm("Reaction ~ Days + (1 | Subject)", df)
    big = lh.lmm("Reaction ~ Days + (Days | Subject)", df)
    res = lh.lrt(small, big)
    r_stat = 2 * (r_values(ref, "sleepstudy", "lmm_slopes_ML", "loglik").item()
                  - r_values(ref, "sleepstudy", "lmer_ML", "loglik").item())
    assert res.statistic == pytest.approx(r_stat, rel=1e-7) and res.df == 2 and res.boundary
    assert res.pvalue == pytest.approx(0.5 * stats.chi2.sf(r_stat, 2) + 0.5 * stats.chi2.sf(r_stat, 1), rel=1e-6)
    assert "1/2 chi2_1 + 1/2 chi2_2" in res.summary()
    # the covariance alone is not on the boundary: chi2_1, as anova()
    unc = lh.lmm("Reaction ~ Days + (Days || Subject)", df)
    res = lh.lrt(unc, big)
    assert not res.boundary and res.pvalue == pytest.approx(stats.chi2.sf(res.statistic, 1), rel=1e-12)
    # the linear model against (Days | Subject): two variances at 0 under H0, chi2_3 flagged as conservative
    lm = lh.fit_lm(df.Reaction, np.column_stack([np.ones(len(df)), df.Days]), names=["(Intercept)", "Days"])
    res = lh.lrt(lm, big)
    assert res.boundary and res.pvalue == stats.chi2.sf(res.statistic, 3) and "conservative" in res.summary()
    with pytest.raises(ValueError, match="same method"):
        lh.lrt(small, lh.lmm("Reaction ~ Days + (Days | Subject)", df, "REML"))


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_random_intercept_summary_is_lmerTests(method):
    """The (1 | g) route prints what lmerTest prints for Reaction ~ Days + (1 | Subject)."""
    formula = "Reaction ~ Days + (1 | Subject)"
    ours = lh.lmm(formula, lh.load_dataset("sleepstudy"), method).summary("sleepstudy").splitlines()
    theirs = [line.rstrip() for line in lh.r_output(f"sleepstudy_lmer_{method}").splitlines()]
    theirs = theirs[theirs.index(f"Formula: {formula}"):]
    assert len(ours[1:]) == len(theirs), "\n".join(ours)
    for a, b in zip(ours[1:], theirs):
        assert _tokens_match(a, b), f"\nours: {a!r}\nR:    {b!r}"


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_block_engine_agrees_with_fit_lmm_and_the_dense_likelihood(method):
    """Two independent routes to the same numbers: the q x q block engine on a (1 | g) model against fit_lmm's
    per-group means; and on (x | g) against the dense n x n likelihood with V = I + Z Lambda Lambda' Z'."""
    df = _toy(n_groups=9, per=5, seed=11)
    model = mixed._build("y ~ x + (1 | g)", df)
    blocks = _quiet(mixed._fit_blocks, model, method)
    route = lh.lmm("y ~ x + (1 | g)", df, method)
    assert blocks.loglik == pytest.approx(route.loglik, rel=1e-10)
    np.testing.assert_allclose(blocks.beta, route.beta, rtol=1e-6)
    np.testing.assert_allclose(blocks.df, route.df, rtol=1e-5)
    # dense: profiled deviance at an arbitrary theta
    model = mixed._build("y ~ x + (x | g)", df)
    theta = np.array([0.9, -0.3, 0.5])
    n, G = len(df), 9
    Z = np.zeros((n, 2 * G))
    Z[np.arange(n), 2 * model.codes] = 1.0
    Z[np.arange(n), 2 * model.codes + 1] = df.x
    Lam = np.kron(np.eye(G), np.array([[0.9, 0.0], [-0.3, 0.5]]))
    V = np.eye(n) + Z @ Lam @ Lam.T @ Z.T
    X, y = model.X, df.y.to_numpy()
    Vi = np.linalg.inv(V)
    A = X.T @ Vi @ X
    beta = np.linalg.solve(A, X.T @ Vi @ y)
    r = y - X @ beta
    m = n if method == "ML" else n - 2
    dev = np.linalg.slogdet(V)[1] + m * (1 + np.log(2 * np.pi * (r @ Vi @ r) / m))
    if method == "REML":
        dev += np.linalg.slogdet(A)[1]
    assert lh.lmm_criterion("y ~ x + (x | g)", df, theta, method) == pytest.approx(dev, rel=1e-12)


def test_lmm_criterion_checks_theta():
    with pytest.raises(ValueError, match="theta has 2 entries"):
        lh.lmm_criterion("y ~ x + (x | g)", _toy(), [1.0, 0.5])


def test_labels_of_any_kind_give_the_same_fit():
    """Grouping labels as integers, strings or a categorical: the same fit, ranef indexed by the labels."""
    df = lh.load_dataset("sleepstudy")
    base = lh.lmm("Reaction ~ Days + (Days | Subject)", df)
    for labels in [df.Subject.astype(str).radd("s"), pd.Categorical(df.Subject)]:
        fit = lh.lmm("Reaction ~ Days + (Days | Subject)", df.assign(Subject=labels))
        assert fit.loglik == pytest.approx(base.loglik, rel=1e-12)
        assert len(fit.random_effects["Subject"]) == 18


def test_non_convergence_warns_and_says_so(monkeypatch):
    """Where the Newton check fails (here forced), a warning and a summary line say so."""
    real = mixed._optimise
    monkeypatch.setattr(mixed, "_optimise", lambda *a: (real(*a)[0], False))
    with pytest.warns(UserWarning, match="did not converge"):
        fit = lh.lmm("Reaction ~ Days + (Days | Subject)", lh.load_dataset("sleepstudy"))
    assert not fit.converged and "did not converge" in fit.summary()
