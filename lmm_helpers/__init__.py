"""lmm_helpers: the small package behind the LMM from Scratch notebooks.

Modules, one job each:

- :mod:`lmm_helpers.data`: the datasets and R's stored reference outputs
- :mod:`lmm_helpers.design`: design matrices, the indicator matrix K, input checks
- :mod:`lmm_helpers.likelihood`: the log-likelihood, dense (n x n) and grouped (O(n))
- :mod:`lmm_helpers.fit`: :func:`fit_lmm` and its result
"""
from .data import load_dataset, load_reference, load_toy, r_output, reference_value
from .design import check_inputs, group_codes, indicator_matrix, toy_design
from .fit import LMMResult, fit_lmm, fit_lmm_dense
from .likelihood import covariance_matrix, gls_beta, group_sums, loglik_dense, profiled_deviance

__all__ = [
    "LMMResult",
    "check_inputs",
    "covariance_matrix",
    "fit_lmm",
    "fit_lmm_dense",
    "gls_beta",
    "group_codes",
    "group_sums",
    "indicator_matrix",
    "load_dataset",
    "load_reference",
    "load_toy",
    "loglik_dense",
    "profiled_deviance",
    "r_output",
    "reference_value",
    "toy_design",
]
