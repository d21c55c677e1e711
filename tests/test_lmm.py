"""lmm(formula, data): lme4/lmerTest's numbers from the stored R output, fit_lmm's for (1 | g), formula naming,
bad input."""
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import r_values

import lmm_helpers as lh


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_sleepstudy_slopes_match_lme4(ref, method):
    fit = lh.lmm("Reaction ~ Days + (Days | Subject)", lh.load_dataset("sleepstudy"), method)
    model = f"lmer_slopes_{method}"
    rb = r_values(ref, "sleepstudy", model, "beta")
    assert fit.names == list(rb.index)
    np.testing.assert_allclose(fit.beta, rb, rtol=1e-6)
    np.testing.assert_allclose(fit.bse, r_values(ref, "sleepstudy", model, "se"), rtol=1e-4)
    r_ll = r_values(ref, "sleepstudy", model, "loglik").item()
    assert fit.loglik == pytest.approx(r_ll, rel=1e-7)
    assert fit.loglik >= r_ll
    np.testing.assert_allclose(fit.df, r_values(ref, "sleepstudy", model, "df"), rtol=1e-4)
    sd = r_values(ref, "sleepstudy", model, "varcorr")
    np.testing.assert_allclose(fit.varcorr.sdcor, sd, rtol=1e-4)
    assert fit.converged and not fit.singular


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_random_intercept_is_fit_lmm(method):
    """(1 | g) goes through fit_lmm: the same numbers, bit for bit."""
    df = lh.load_dataset("sleepstudy")
    fit = lh.lmm("Reaction ~ Days + (1 | Subject)", df, method)
    ref = lh.fit_lmm(df.Reaction, np.column_stack([np.ones(len(df)), df.Days]), df.Subject, method,
                     names=["(Intercept)", "Days"])
    assert fit.loglik == ref.loglik
    np.testing.assert_array_equal(fit.beta, ref.beta)
    np.testing.assert_array_equal(fit.bse, ref.bse)
    np.testing.assert_array_equal(fit.df, ref.df)
    assert fit.theta[0] == np.sqrt(ref.theta)
    np.testing.assert_array_equal(fit.random_effects["Subject"]["(Intercept)"], ref.random_effects)


BAD = [
    ("Reaction ~ Days + (1 | Foo)", r"random term \(1 \| Foo\) uses 'Foo'"),
    ("Reaction ~ Dayz + (1 | Subject)", "fixed term 'Dayz' uses 'Dayz'"),
    # Subject:Days has one level per row (180): lme4 refuses it; crossed and nested terms are tests/test_crossed.py's.
    ("Reaction ~ Days + (1 | Subject/Days)", r"grouping factor 'Days:Subject' has 180 levels for 180"),
    ("Reaction ~ Days + (1 | Subject:Days)", r"grouping factor 'Subject:Days' has 180 levels for 180"),
    ("Reaction ~ Days + (Days | Subject", "cannot be parsed"),
    ("Reaction ~ Days", "no random term"),
]


@pytest.mark.parametrize("formula,message", BAD)
def test_bad_formula_raises_valueerror_naming_the_term(formula, message):
    with pytest.raises(ValueError, match=message):
        lh.lmm(formula, lh.load_dataset("sleepstudy"))
