"""lmm_helpers.rformat against R 4.2.2's own output: format(x, digits), format.pval, abbreviate, zapsmall.

The expected strings were printed by R (Rscript, the version make_reference.R records) for exactly these inputs;
summary()'s comparisons with lmerTest exercise these functions only on the few numbers the datasets produce.
"""
import pytest

from lmm_helpers.rformat import abbreviate, format_num, format_pval, zapsmall

FORMAT = [  # x, digits, R's format(x, digits = digits)
    ([1.5, 10.25, 3], 3, [" 1.5", "10.2", " 3.0"]),
    ([1.5, 10.25, 3], 4, [" 1.50", "10.25", " 3.00"]),
    ([0.000123, 5], 4, ["0.000123", "5.000000"]),
    ([123456789, 1], 3, ["1.23e+08", "1.00e+00"]),
    ([123456789, 1], 4, ["123456789", "        1"]),
    ([-0.5, 2.345678], 3, ["-0.50", " 2.35"]),
    ([-0.5, 2.345678], 7, ["-0.500000", " 2.345678"]),
    ([9.99996, 1], 4, ["10", " 1"]),
    ([9.99996, 1], 7, ["9.99996", "1.00000"]),
    ([1e-20, 1], 4, ["1e-20", "1e+00"]),
    ([0, 0.1], 4, ["0.0", "0.1"]),
    ([1e5, 1e-5], 4, ["1e+05", "1e-05"]),
    ([-1.0335, -0.5439, 0, 0.5439, 1.0335], 3, ["-1.034", "-0.544", " 0.000", " 0.544", " 1.034"]),
    ([251.405105, 10.467286], 4, ["251.41", " 10.47"]),
    ([251.405105, 10.467286], 7, ["251.40510", " 10.46729"]),
    ([1e100, 1], 4, ["1e+100", " 1e+00"]),
]


@pytest.mark.parametrize("x, digits, expected", FORMAT)
def test_format_num_is_rs_format(x, digits, expected):
    assert format_num(x, digits) == expected


PVAL = [  # p, digits, R's format.pval(p, digits = digits)
    ([0.4922, 0.0001234], 1, ["0.5", "1e-04"]),
    ([0.4922, 0.0001234], 3, ["0.492200", "0.000123"]),  # 1e-4 <= p < 1e-3 joins the fixed-notation group
    ([0.4922, 0.0001234], 4, ["0.4922000", "0.0001234"]),
    ([1e-20, 0.05], 3, ["<2e-16", "0.05"]),
    ([1e-20, 0.0001234], 1, ["<2e-16", "1e-04"]),
    ([1e-20, 0.0001234], 3, ["< 2e-16", "0.000123"]),  # a space after '<' beside wider p-values
    ([1e-20, 0.0001234], 4, ["< 2.2e-16", "0.0001234"]),
    ([1e-20, 1.2e-05], 3, ["< 2e-16", "1.2e-05"]),
    ([0.3743, 0.1679], 3, ["0.374", "0.168"]),
    ([2e-10], 3, ["2e-10"]),
    ([1e-20], 3, ["<2e-16"]),
    ([1e-20], 4, ["< 2.2e-16"]),
    ([0.00049, 4.9e-06, 0.9], 1, ["5e-04", "5e-06", "0.9"]),
    ([0.00049, 4.9e-06, 0.9], 3, ["0.00049", "4.9e-06", "0.90000"]),
]


@pytest.mark.parametrize("p, digits, expected", PVAL)
def test_format_pval_is_rs_format_pval(p, digits, expected):
    assert format_pval(p, digits) == expected


@pytest.mark.parametrize("name, expected", [("(Intercept)", "(Intr)"), ("Treat", "Treat"), ("Year96", "Year96"),
                                            ("Reaction", "Reactn"), ("Height", "Height")])
def test_abbreviate_is_rs_abbreviate(name, expected):
    assert abbreviate(name, 6) == expected


@pytest.mark.parametrize("x, expected", [([1, 1e-8], [1, 0]), ([123.456, 1e-4], [123.456, 0]),
                                         ([-3.22571, 0.01094, 4.25063], [-3.2257, 0.0109, 4.2506])])
def test_zapsmall_is_rs_zapsmall(x, expected):
    assert list(zapsmall(x, 5)) == expected
