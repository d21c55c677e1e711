"""lmm_helpers.symbolic against closed forms, NumPy's dense likelihood and the stored lme4 output."""
import numpy as np
import pytest
import sympy as sp

import lmm_helpers as lh
from lmm_helpers import symbolic
from lmm_helpers.likelihood import loglik_dense


@pytest.fixture(scope="module")
def s():
    return symbolic.toy_symbols()


def _toy_arrays(coding):
    toy = lh.load_toy()
    K = lh.indicator_matrix(toy.Ind.to_numpy() - 1)
    return toy.Resp.to_numpy(float), lh.toy_design(toy, coding), K


def test_symbols_assumptions(s):
    assert s.sigma.is_positive and s.sigma_s.is_positive
    assert s.beta1.is_real and s.beta2.is_real and s.beta1.is_positive is None
    assert s.params == (s.beta1, s.beta2, s.sigma, s.sigma_s)


def test_toy_sigma_matches_numpy(s):
    Sigma = symbolic.toy_sigma_matrix(s)
    _, _, K = _toy_arrays("cellmeans")
    f = sp.lambdify((s.sigma, s.sigma_s), Sigma, "numpy")
    np.testing.assert_allclose(f(1.7, 0.3), lh.covariance_matrix(K, 1.7, 0.3), rtol=1e-15)


def test_determinant_and_inverse_closed_forms(s):
    Sigma = symbolic.toy_sigma_matrix(s)
    closed = (s.sigma**4 + 2 * s.sigma_s**2 * s.sigma**2) ** 2
    assert sp.expand(Sigma.det() - closed) == 0
    # Each 2 x 2 block a I + b J has inverse (I (a + b) - J b) / (a (a + 2b)) with a = sigma^2, b = sigma_s^2
    a, b = s.sigma**2, s.sigma_s**2
    block = sp.Matrix([[a + b, -b], [-b, a + b]]) / (a * (a + 2 * b))
    inv = sp.diag(block, block)
    assert sp.simplify(Sigma * inv - sp.eye(4)) == sp.zeros(4, 4)


def test_article_determinant_is_a_misprint(s):
    det = symbolic.toy_sigma_matrix(s).det()
    wrong = symbolic.article_determinant(s)
    assert sp.expand(wrong - det) != 0
    assert sp.expand(wrong - det - 4 * s.sigma_s**2 * (s.sigma_s**6 - s.sigma**6)) == 0
    # with sigma^6 in place of the misprinted sigma_s^6 the article's expression is right
    fixed = 4 * s.sigma_s**4 * s.sigma**4 + 4 * s.sigma_s**2 * s.sigma**6 + s.sigma**8
    assert sp.expand(fixed - det) == 0


@pytest.mark.parametrize("coding", ["cellmeans", "treatment"])
def test_loglik_expr_matches_loglik_dense(s, coding):
    ll = sp.lambdify(s.params, symbolic.toy_loglik_expr(coding, s), "numpy")
    y, X, K = _toy_arrays(coding)
    rng = np.random.default_rng(20261125)
    for b1, b2, sg, ss in zip(rng.normal(8, 5, 20), rng.normal(8, 5, 20), rng.uniform(0.5, 10, 20),
                              rng.uniform(0.5, 10, 20)):
        assert ll(b1, b2, sg, ss) == pytest.approx(loglik_dense(y, X, K, [b1, b2], sg, ss), rel=1e-12)


def test_article_slips_change_the_value(s):
    pt = {s.beta1: 6.5, s.beta2: 15.5, s.sigma: 3, s.sigma_s: 5}
    good = symbolic.toy_loglik_expr("cellmeans", s)
    one_pi = symbolic.toy_loglik_expr("cellmeans", s, log2pi_count=1)
    assert float((one_pi - good).subs(pt)) == pytest.approx(1.5 * np.log(2 * np.pi), rel=1e-14)
    plus = symbolic.toy_loglik_expr("cellmeans", s, exponent_sign=+1)
    assert sp.limit(plus.subs({s.beta2: 15, s.sigma: 3, s.sigma_s: 5}), s.beta1, sp.oo) == sp.oo
    assert sp.limit(good.subs({s.beta2: 15, s.sigma: 3, s.sigma_s: 5}), s.beta1, sp.oo) == -sp.oo


def test_bad_arguments(s):
    with pytest.raises(ValueError, match="coding"):
        symbolic.toy_loglik_expr("effects", s)
    with pytest.raises(ValueError, match="exponent_sign"):
        symbolic.toy_loglik_expr("cellmeans", s, exponent_sign=2)
    with pytest.raises(ValueError, match="K"):
        symbolic.sigma_matrix(np.array([[0.5, 0.5]]), s.sigma, s.sigma_s)
    with pytest.raises(ValueError, match="beta"):
        symbolic.loglik_expr([1, 2, 3, 4], np.ones((4, 2)), np.eye(4), [s.beta1], s.sigma, s.sigma_s)


def test_closed_form_matches_lme4_and_fit_lmm(ref):
    cf = symbolic.toy_ml_closed_form()
    assert cf["sigma2"] == 18 and cf["sigma_s2"] == sp.Rational(133, 4)
    assert (cf["beta1"], cf["beta2"]) == (sp.Rational(13, 2), sp.Rational(31, 2))
    r_ll = lh.reference_value("toy", "lmer_ML_cellmeans", "loglik")
    assert float(cf["loglik"]) == pytest.approx(r_ll, rel=1e-9)
    for key, q in [("sigma", "sigma"), ("sigma_s", "sigma_s")]:
        assert float(cf[key]) == pytest.approx(lh.reference_value("toy", "lmer_ML_cellmeans", q), rel=1e-8)
    y, X, K = _toy_arrays("cellmeans")
    fit = lh.fit_lmm(y, X, lh.load_toy().Ind)
    np.testing.assert_allclose([fit.sigma, fit.sigma_s, fit.loglik],
                               [float(cf["sigma"]), float(cf["sigma_s"]), float(cf["loglik"])], rtol=1e-12)
