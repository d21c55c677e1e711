"""lmm_helpers: the small package behind the LMM from Scratch notebooks.

Modules, one job each:

- :mod:`lmm_helpers.data`: the datasets and R's stored reference outputs
- :mod:`lmm_helpers.design`: design matrices, the indicator matrix K, input checks
- :mod:`lmm_helpers.likelihood`: the log-likelihood, dense (n x n) and grouped (O(n))
- :mod:`lmm_helpers.fit`: :func:`fit_lmm`, its result, and the warnings of a flagged fit (:class:`LMMWarning`)
- :mod:`lmm_helpers.formula`: lme4's formula language, parsed and turned into design matrices
- :mod:`lmm_helpers.slopes`: the profiled deviance with q x q blocks per group (random slopes)
- :mod:`lmm_helpers.mixed`: :func:`lmm` (formula and data) and its result
- :mod:`lmm_helpers.pls`: lme4's penalised least squares for several random terms, with a blocked Cholesky
- :mod:`lmm_helpers.crossed`: :func:`lmm`'s fit when the random terms have several grouping factors
- :mod:`lmm_helpers.inference`: likelihood-ratio tests, the plain linear model, Wald and profile intervals
- :mod:`lmm_helpers.symbolic`: SymPy builders for the toy's Sigma, det Sigma and log-likelihood
- :mod:`lmm_helpers.plotting`: the series' plotting style and its recurring figures
"""
from .data import load_dataset, load_reference, load_toy, r_output, reference_value
from .design import check_inputs, group_codes, indicator_matrix, toy_design
from .fit import (
    ConvergenceWarning,
    DenseFit,
    IdentifiabilityWarning,
    LMMResult,
    LMMWarning,
    SingularFitWarning,
    fit_lmm,
    fit_lmm_dense,
)
from .inference import (
    LMFit,
    LRTResult,
    ProfileInterval,
    fit_lm,
    lm_loglik,
    lrt,
    profile_ci,
    profile_ci_beta,
    profile_deviance,
    spline_limits,
    wald_ci,
)
from .likelihood import covariance_matrix, gls_beta, group_sums, loglik_dense, profiled_deviance
from .mixed import LMMFit, lmm, lmm_criterion

__all__ = [
    "ConvergenceWarning",
    "DenseFit",
    "IdentifiabilityWarning",
    "LMFit",
    "LMMFit",
    "LMMResult",
    "LMMWarning",
    "LRTResult",
    "ProfileInterval",
    "SingularFitWarning",
    "check_inputs",
    "covariance_matrix",
    "fit_lm",
    "fit_lmm",
    "fit_lmm_dense",
    "gls_beta",
    "group_codes",
    "group_sums",
    "indicator_matrix",
    "lm_loglik",
    "lmm",
    "lmm_criterion",
    "load_dataset",
    "load_reference",
    "load_toy",
    "loglik_dense",
    "lrt",
    "profile_ci",
    "profile_ci_beta",
    "profile_deviance",
    "profiled_deviance",
    "r_output",
    "reference_value",
    "spline_limits",
    "toy_design",
    "wald_ci",
]
