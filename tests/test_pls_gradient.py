"""The analytic gradient of lme4's profiled criterion for terms of any size (pls._gradient_general), against
Richardson-extrapolated central differences of the criterion itself, against the scalar terms' own formulas
(pls._gradient), and the crossed fits that now use it."""
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from threadpoolctl import threadpool_limits
from test_crossed import dense_criterion, problem_terms

import lmm_helpers as lh
from lmm_helpers.crossed import theta_bounds
from lmm_helpers.pls import ReTerm, _gradient, _gradient_general, pls_evaluate, pls_problem


def richardson(f, x: np.ndarray, i: int, h: float) -> float:
    """d f / d x_i by central differences at h, h/2, h/4, h/8, extrapolated three times (error O(h^8))."""
    def central(h):
        e = np.zeros_like(x)
        e[i] = h
        return (f(x + e) - f(x - e)) / (2.0 * h)
    a = [central(h / 2**k) for k in range(4)]
    for m in range(1, 4):
        a = [(a[j + 1] * 4**m - a[j]) / (4**m - 1) for j in range(len(a) - 1)]
    return a[0]


def numeric_gradient(prob, theta: np.ndarray, method: str) -> np.ndarray:
    f = lambda t: pls_evaluate(t, prob, method).deviance  # noqa: E731
    return np.array([richardson(f, theta, i, 1e-2 * max(abs(theta[i]), 0.1)) for i in range(len(theta))])


def random_problem(seed: int, terms: list, n: int = 400):
    """y = X beta + Z b + e with random covariates. Each term is (q, levels, factor, intercept): terms with the same
    factor name share their grouping factor (as (x || g) is (1 | g) + (0 + x | g)); Z is [1, N(0, 1) columns], or
    N(0, 1) columns only without the intercept."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    y = X @ np.array([3.0, 1.0, -0.5]) + rng.normal(size=n)
    codes_of, out = {}, []
    for q, m, factor, intercept in terms:
        codes = codes_of.setdefault(factor, rng.integers(0, m, size=n))
        Z = rng.normal(size=(n, q))
        if intercept:
            Z[:, 0] = 1.0
        y += np.einsum("ij,ij->i", Z, 0.7 * rng.normal(size=(m, q))[codes])
        out.append(ReTerm(codes=codes, n_levels=m, Z=Z))
    return out, X, y


def random_theta(seed: int, sizes: list) -> np.ndarray:
    """An interior theta: diagonal entries in [0.2, 1.5], the others N(0, 0.3^2)."""
    rng = np.random.default_rng(seed)
    start, _ = theta_bounds(sizes)
    return np.where(start == 1.0, rng.uniform(0.2, 1.5, size=start.size), rng.normal(0.0, 0.3, size=start.size))


def sleepstudy(formula: str, keep_order: bool = False):
    terms, X, y = problem_terms("sleepstudy", formula)
    if not keep_order:
        terms.sort(key=lambda t: -t.n_levels)
    return terms, X, y


def penicillin_slopes():
    """Penicillin with a covariate x whose effect varies by plate (tests/test_crossed_bad_input.py's slope_data),
    terms as lmm orders them for diameter ~ x + (x | plate) + (1 | sample): plate (24 levels), then sample (6)."""
    pen = lh.load_dataset("penicillin")
    plate = pd.factorize(pen.plate, sort=True)[0]
    sample = pd.factorize(pen["sample"], sort=True)[0]
    rng = np.random.default_rng(0)
    x = rng.normal(size=len(pen))
    y = (pen.diameter + 0.3 * x * rng.normal(size=24)[plate]).to_numpy(float)
    X = np.column_stack([np.ones(len(pen)), x])
    terms = [ReTerm(codes=plate, n_levels=24, Z=X.copy()), ReTerm(codes=sample, n_levels=6, Z=np.ones((len(pen), 1)))]
    return terms, X, y, pen.assign(x=x, diameter=y)


PROBLEMS = {
    # a q = 2 template first (block-diagonal L11), a scalar term in the dense block
    "sleepstudy (Days | Subject) + (1 | DayF)": lambda: sleepstudy("Reaction ~ Days + (Days | Subject) + (1 | DayF)"),
    # the q = 2 template in the dense block (Lambda2 not diagonal), a scalar first term
    "sleepstudy (1 | DayF) + (Days | Subject)": lambda: sleepstudy("Reaction ~ Days + (1 | DayF) + (Days | Subject)",
                                                                    keep_order=True),
    "penicillin (x | plate) + (1 | sample)": lambda: penicillin_slopes()[:3],
    # q1 = 2 first, a q = 3 template and a scalar term in the dense block
    "random q = 2, 3, 1": lambda: random_problem(1, [(2, 40, "a", True), (3, 12, "b", True),
                                                       (1, 7, "c", True)]),
    # a scalar first term, a q = 2 template in the dense block
    "random q = 1, 2": lambda: random_problem(2, [(1, 50, "a", True), (2, 10, "b", True)]),
    # (x || g) beside a q = 3 first term: (1 | g) + (0 + x | g), one grouping factor for two scalar terms
    "random q = 3, (x || g)": lambda: random_problem(3, [(3, 30, "a", True), (1, 9, "g", True),
                                                           (1, 9, "g", False)]),
}


@pytest.fixture(scope="module", params=list(PROBLEMS))
def problem(request):
    terms, X, y = PROBLEMS[request.param]()
    return pls_problem(terms, X, y)


@pytest.mark.parametrize("method", ["ML", "REML"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_matches_richardson_differences(problem, method, seed):
    """At random interior theta, to 1e-6 of the largest component: measured at most 1.5e-9 on these problems (the
    differences' own rounding); dropping the first term's B_g or the REML part of the formula fails here."""
    theta = random_theta(seed, list(problem.sizes))
    g = pls_evaluate(theta, problem, method, gradient=True).grad
    assert g is not None and g.shape == theta.shape
    num = numeric_gradient(problem, theta, method)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-6 * np.max(np.abs(num)))


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_gradient_on_the_boundary(method):
    """A zero diagonal entry (a zero variance, lme4's bound): the criterion is smooth in the entries of Lambda, so
    central differences across the bound still apply, and the formula needs no inverse of Lambda."""
    terms, X, y = sleepstudy("Reaction ~ Days + (Days | Subject) + (1 | DayF)")
    prob = pls_problem(terms, X, y)
    for theta in ([0.9, 0.02, 0.2, 0.0], [0.0, 0.3, 0.2, 0.4], [0.9, 0.5, 0.0, 0.3]):
        theta = np.array(theta)
        g = pls_evaluate(theta, prob, method, gradient=True).grad
        num = numeric_gradient(prob, theta, method)
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-6 * np.max(np.abs(num)))


@pytest.mark.parametrize("method", ["ML", "REML"])
@pytest.mark.parametrize("formula", ["strength ~ 1 + (1 | batch/cask)", "yield ~ nitro + (1 | Block/Variety)",
                                     "Reaction ~ Days + (Days || Subject) + (1 | DayF)"])
def test_general_formula_reduces_to_the_scalar_one(formula, method):
    """With scalar terms only, the general formula and pls._gradient (derived separately, through 1 / theta_k)
    agree to rounding."""
    dataset = {"strength": "pastes", "yield": "oats", "Reaction": "sleepstudy"}[formula.split()[0]]
    terms, X, y = problem_terms(dataset, formula)
    terms.sort(key=lambda t: -t.n_levels)
    prob = pls_problem(terms, X, y)
    theta = random_theta(4, list(prob.sizes))
    ev = pls_evaluate(theta, prob, method)
    a = 1.0 + theta[0] ** 2 * prob.sums1.ztz[0, 0]
    np.testing.assert_allclose(_gradient_general(ev, prob, method), _gradient(ev, prob, method, a), rtol=1e-9,
                               atol=1e-9)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_penicillin_slope_fit_converges_at_the_dense_optimum(method):
    """(x | plate) + (1 | sample): converged with no warning, and the optimum is the one Nelder-Mead finds on the
    dense criterion (Sigma = I + Z Lambda Lambda^T Z^T, slogdet; independent of pls.py), to its precision."""
    terms, X, y, data = penicillin_slopes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = lh.lmm("diameter ~ x + (x | plate) + (1 | sample)", data, method)
    assert fit.converged
    prob = pls_problem(terms, X, y - y.mean())
    assert np.max(np.abs(pls_evaluate(fit.theta, prob, method, gradient=True).grad)) < 1e-4
    dense = lambda t: dense_criterion(terms, X, y, t, method)  # noqa: E731
    res = optimize.minimize(dense, theta_bounds([2, 1])[0], method="Nelder-Mead",
                            options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000, "maxfev": 20000})
    assert -2.0 * fit.loglik <= res.fun + 1e-9
    assert -2.0 * fit.loglik == pytest.approx(res.fun, abs=1e-7)
    np.testing.assert_allclose(fit.theta, res.x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_one_term_is_slopes_gradient(method):
    """One (Days | Subject) term (no dense block): slopes.evaluate's gradient, derived per group without Z2."""
    from lmm_helpers.slopes import block_sums, evaluate, lambda_index
    terms, X, y = problem_terms("sleepstudy", "Reaction ~ Days + (Days | Subject)")
    theta = np.array([0.95, -0.3, 0.23])
    g = pls_evaluate(theta, pls_problem(terms, X, y), method, gradient=True).grad
    sums = block_sums([X[:, 0], X[:, 1], y], [0, 1], [0, 1, 2], terms[0].codes, terms[0].n_levels, ones=0)
    ref = evaluate(theta, sums, lambda_index([2]), method, gradient=True).grad
    np.testing.assert_allclose(g, ref, rtol=1e-9, atol=1e-9 * np.max(np.abs(ref)))


@pytest.mark.parametrize("H, g, on_bound, expected", [
    ([1e6, 1e6], [5e-3, 1e-4], False, True),    # raw 5e-3 fails; scaled 5e-3 / sqrt(1e6) = 5e-6 passes
    ([1.0, 1e6], [5e-3, 1e-4], False, False),   # the first component fails both ways
    ([1.0, 1.0], [1e-3, -1.9e-3], False, True),  # raw passes: no Hessian needed
    ([1e6, -1.0], [5e-3, 0.0], False, False),   # a saddle: no Cholesky factor, not converged
    ([1.0, 1.0], [1.0, 1e-4], True, True),      # pushed onto the bound theta_1 = 0: projected away
])
def test_convergence_check_is_lme4s(H, g, on_bound, expected):
    """crossed._converged on a quadratic with Hessian diag(H) and gradient g at theta (closed forms): lme4's
    max(pmin(|R^-1 g|, |g|)) < 2e-3 over the free components, H = R^T R."""
    from lmm_helpers.crossed import _converged
    H, g = np.array(H), np.array(g)
    theta = np.array([0.0 if on_bound else 0.5, 0.7])
    opt = theta - g / H
    grad_fn = lambda t: H * (t - opt)  # noqa: E731
    lower = np.array([0.0, -np.inf])
    assert _converged(grad_fn, theta, lower) is expected


def test_large_fit_stopped_by_ftol_is_converged():
    """8000 rows, (x | a) + (x | b) + (1 | c): L-BFGS-B stops on its relative reduction of a criterion of 25000
    (ftol 1e-12) with a raw gradient of 8e-3 (measured here), 2e-8 deviance units from the optimum: converged by
    lme4's scaled gradient, and a tighter run from there gains less than 1e-7."""
    from lmm_helpers.crossed import _optimise
    terms, X, y = random_problem(5, [(2, 400, "a", True), (2, 60, "b", True), (1, 20, "c", True)], n=8000)
    prob = pls_problem(terms, X, y - y.mean())
    fun = lambda t: (lambda ev: (ev.deviance, ev.grad))(pls_evaluate(t, prob, "ML", gradient=True))  # noqa: E731
    with threadpool_limits(limits=1, user_api="blas"):  # as fit_crossed runs it
        theta, converged = _optimise(prob, list(prob.sizes), "ML")
        tight = optimize.minimize(fun, theta, jac=True, method="L-BFGS-B", bounds=theta_bounds(list(prob.sizes))[1],
                                  options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 1000})
    assert converged
    assert 0.0 <= fun(theta)[0] - tight.fun < 1e-7
