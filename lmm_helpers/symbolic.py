"""Symbolic (SymPy) builders for the random-intercept model: Sigma, its determinant, the log-likelihood.

SymPy stands in for the Maple of the original article. The builders return SymPy objects so that a notebook can
show, simplify, differentiate and ``lambdify`` them; :func:`loglik_expr` can also reproduce the article's two
slips in the likelihood (a plus sign in the exponent, and ``-1/2 log 2 pi`` for ``n`` points) so that they can be
put side by side with the correct expression.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from .data import load_toy
from .design import indicator_matrix, toy_design

__all__ = [
    "ToySymbols",
    "toy_symbols",
    "sigma_matrix",
    "toy_sigma_matrix",
    "loglik_expr",
    "toy_loglik_expr",
    "article_determinant",
    "toy_ml_closed_form",
]


@dataclass(frozen=True)
class ToySymbols:
    """The symbols of the toy model.

    Attributes
    ----------
    sigma, sigma_s : sympy.Symbol
        Residual and random-intercept standard deviations (declared positive).
    beta1, beta2 : sympy.Symbol
        The two fixed effects (declared real): untreated and treated means in the cell-means coding,
        intercept and treatment effect in the treatment coding.
    """

    sigma: sp.Symbol
    sigma_s: sp.Symbol
    beta1: sp.Symbol
    beta2: sp.Symbol

    @property
    def beta(self) -> tuple[sp.Symbol, sp.Symbol]:
        """``(beta1, beta2)``."""
        return (self.beta1, self.beta2)

    @property
    def params(self) -> tuple[sp.Symbol, ...]:
        """``(beta1, beta2, sigma, sigma_s)``, the order the article's optimiser uses."""
        return (self.beta1, self.beta2, self.sigma, self.sigma_s)


def toy_symbols() -> ToySymbols:
    """Return the symbols ``sigma``, ``sigma_s`` (positive) and ``beta1``, ``beta2`` (real)."""
    sigma, sigma_s = sp.symbols("sigma sigma_s", positive=True)
    beta1, beta2 = sp.symbols("beta1 beta2", real=True)
    return ToySymbols(sigma=sigma, sigma_s=sigma_s, beta1=beta1, beta2=beta2)


def sigma_matrix(K, sigma: sp.Expr, sigma_s: sp.Expr) -> sp.Matrix:
    """Return ``Sigma = sigma_s**2 K K^T + sigma**2 I`` as a SymPy matrix.

    Parameters
    ----------
    K : array-like of 0/1, shape (n, G)
        Group indicator matrix (see :func:`lmm_helpers.design.indicator_matrix`).
    sigma, sigma_s : sympy expressions
        Residual and random-intercept standard deviations.
    """
    K = np.asarray(K)
    if K.ndim != 2:
        raise ValueError(f"K must be a 2-D indicator matrix, got shape {K.shape}")
    if not np.all((K == 0) | (K == 1)):
        raise ValueError("K must hold only 0 and 1 (one 1 per row)")
    Ks = sp.Matrix(K.astype(int).tolist())
    return sigma_s**2 * (Ks * Ks.T) + sigma**2 * sp.eye(K.shape[0])


def toy_sigma_matrix(symbols: ToySymbols | None = None) -> sp.Matrix:
    """Return the 4 x 4 Sigma of the toy data (rows in the order of ``data/toy.csv``) in ``sigma``, ``sigma_s``.

    Parameters
    ----------
    symbols : ToySymbols, optional
        The symbols to use; :func:`toy_symbols` by default.
    """
    s = toy_symbols() if symbols is None else symbols
    toy = load_toy()
    codes = toy["Ind"].to_numpy() - toy["Ind"].min()
    return sigma_matrix(indicator_matrix(codes), s.sigma, s.sigma_s)


def loglik_expr(y, X, K, beta, sigma: sp.Expr, sigma_s: sp.Expr, *, exponent_sign: int = -1,
                log2pi_count: int | None = None) -> sp.Expr:
    """Return the Gaussian log-likelihood of ``y ~ N(X beta, sigma_s**2 K K^T + sigma**2 I)`` as a SymPy expression.

    ``log L = -(n/2) log(2 pi) - (1/2) log det Sigma - (1/2) (y - X beta)^T Sigma^-1 (y - X beta)``,
    with ``det Sigma`` factorised and ``Sigma^-1`` simplified before they are combined.

    Parameters
    ----------
    y : array-like, shape (n,)
        Response (numbers, entered exactly as rationals).
    X : array-like, shape (n, p)
        Fixed-effect design.
    K : array-like of 0/1, shape (n, G)
        Group indicator matrix.
    beta : sequence of p sympy symbols
        The fixed effects.
    sigma, sigma_s : sympy expressions
        Residual and random-intercept standard deviations.
    exponent_sign : {-1, +1}
        Sign of the quadratic form in the exponent. ``-1`` is the normal density; ``+1`` reproduces the
        article's slip.
    log2pi_count : int, optional
        How many ``-(1/2) log(2 pi)`` terms to include: ``n`` (the default) is correct; ``1`` reproduces the
        article's slip.
    """
    y = np.asarray(y)
    X = np.asarray(X)
    n = y.shape[0]
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    if X.ndim != 2 or X.shape[0] != n:
        raise ValueError(f"X must be 2-D with {n} rows (one per entry of y), got shape {X.shape}")
    if len(beta) != X.shape[1]:
        raise ValueError(f"beta has {len(beta)} symbols but X has {X.shape[1]} columns")
    if exponent_sign not in (-1, 1):
        raise ValueError(f"exponent_sign must be -1 or +1, got {exponent_sign!r}")
    if log2pi_count is None:
        log2pi_count = n
    Sigma = sigma_matrix(K, sigma, sigma_s)
    if Sigma.shape[0] != n:
        raise ValueError(f"K has {Sigma.shape[0]} rows but y has {n}")
    ys = sp.Matrix([sp.nsimplify(v) for v in y.tolist()])
    Xs = sp.Matrix([[sp.nsimplify(v) for v in row] for row in X.tolist()])
    r = ys - Xs * sp.Matrix(list(beta))
    det = sp.factor(Sigma.det())
    quad = sp.simplify((r.T * sp.simplify(Sigma.inv()) * r)[0, 0])
    return (-sp.Rational(log2pi_count, 2) * sp.log(2 * sp.pi) - sp.log(det) / 2
            + sp.Rational(exponent_sign, 2) * quad)


def toy_loglik_expr(coding: str = "cellmeans", symbols: ToySymbols | None = None, *, exponent_sign: int = -1,
                    log2pi_count: int | None = None) -> sp.Expr:
    """Return the toy data's log-likelihood in ``beta1, beta2, sigma, sigma_s`` (see :func:`loglik_expr`).

    Parameters
    ----------
    coding : {"cellmeans", "treatment"}
        ``"cellmeans"`` (the article's): beta1, beta2 are the untreated and treated means;
        ``"treatment"``: beta1 is the intercept, beta2 the treatment effect.
    symbols : ToySymbols, optional
        The symbols to use; :func:`toy_symbols` by default.
    exponent_sign, log2pi_count
        As in :func:`loglik_expr`; the defaults give the correct log-likelihood.
    """
    s = toy_symbols() if symbols is None else symbols
    toy = load_toy()
    try:
        X = toy_design(toy, coding)
    except ValueError as err:
        raise ValueError(f"coding must be 'cellmeans' or 'treatment', got {coding!r}") from err
    codes = toy["Ind"].to_numpy() - toy["Ind"].min()
    return loglik_expr(toy["Resp"].to_numpy(), X.astype(int), indicator_matrix(codes), s.beta, s.sigma,
                       s.sigma_s, exponent_sign=exponent_sign, log2pi_count=log2pi_count)


def article_determinant(symbols: ToySymbols | None = None) -> sp.Expr:
    """Return det Sigma as the article prints it, ``4 sigma_s^4 sigma^4 + 4 sigma_s^2 sigma_s^6 + sigma^8``.

    It is a misprint (``sigma_s^6`` should be ``sigma^6``); the notebook on the symbolic derivation compares it
    with the true determinant.
    """
    s = toy_symbols() if symbols is None else symbols
    sg, ss = s.sigma, s.sigma_s
    return 4 * ss**4 * sg**4 + 4 * ss**2 * ss**6 + sg**8


def toy_ml_closed_form() -> dict[str, sp.Expr]:
    """Exact ML estimates of the toy model (cell-means coding), by solving the score equations with SymPy.

    The data are balanced, so the GLS estimate of beta is the pair of cell means whatever the variances; with
    ``v = sigma**2`` and ``w = sigma_s**2`` the two variance score equations are then rational and have one
    admissible root.

    Returns
    -------
    dict
        Exact SymPy numbers for ``beta1``, ``beta2``, ``sigma2``, ``sigma_s2``, ``sigma``, ``sigma_s`` and
        ``loglik``.
    """
    s = toy_symbols()
    ll = toy_loglik_expr("cellmeans", s)
    beta_hat = sp.solve([sp.diff(ll, b) for b in s.beta], s.beta, dict=True)[0]
    v, w = sp.symbols("v w", positive=True)
    ll_vw = ll.subs(beta_hat).subs({s.sigma: sp.sqrt(v), s.sigma_s: sp.sqrt(w)})
    sols = sp.solve([sp.diff(ll_vw, v), sp.diff(ll_vw, w)], [v, w], dict=True)
    if len(sols) != 1:
        raise RuntimeError(f"expected one admissible root of the score equations, got {sols}")
    sol = sols[0]
    out = {"beta1": beta_hat[s.beta1], "beta2": beta_hat[s.beta2], "sigma2": sol[v], "sigma_s2": sol[w],
           "sigma": sp.sqrt(sol[v]), "sigma_s": sp.sqrt(sol[w])}
    out["loglik"] = sp.simplify(ll.subs({s.beta1: out["beta1"], s.beta2: out["beta2"], s.sigma: out["sigma"],
                                         s.sigma_s: out["sigma_s"]}))
    return out
