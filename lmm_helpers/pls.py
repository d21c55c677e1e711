"""lme4's penalised least squares for several random-effect terms, crossed or nested, with a blocked Cholesky.

Bates, Maechler, Bolker and Walker (2015), *Fitting Linear Mixed-Effects Models Using lme4*, JSS 67(1). The random
effects are ``b = Lambda_theta u`` with spherical ``u ~ N(0, sigma^2 I)``; ``Lambda_theta`` (the relative covariance
factor) is block-diagonal, one lower-triangular q_k x q_k template per term repeated over the term's m_k levels.
For each theta, the penalised least-squares problem needs the Cholesky factor ``L`` of
``A = Lambda^T Z^T Z Lambda + I``; with ``C = L^-1 Lambda^T Z^T [X y]`` the Cholesky factor of
``[X y]^T [X y] - C^T C`` holds ``R_X`` and, in its last diagonal element, the penalised residual sum of squares
``r^2``; the profiled deviance is the same as :mod:`lmm_helpers.slopes`'s (eqs. 34 and 41 of the paper).

The factor ``L`` is built in two blocks, as MixedModels.jl does (our own code, same idea): the terms come in lme4's
order (decreasing number of levels); the first term's block ``A11`` is block-diagonal (q_1 x q_1 per level, 1 x 1
for a random intercept), so ``L11`` is computed level by level, all levels at once (:mod:`lmm_helpers.slopes`'s
batched Cholesky). The other terms (r random effects in all) form one dense block. Its Schur complement

    A22 - L21 L21^T = Lambda2^T (Z2^T Z2 - Z2^T Z1 D Z1^T Z2) Lambda2 + I,   D_g = Lambda1 A11_g^-1 Lambda1^T,

is linear in the entries of the per-level q_1 x q_1 matrices D_g, with coefficients that depend only on the
sparsity pattern and values of ``Z2^T Z1`` (fixed for the data). Those coefficients are gathered once into a sparse
matrix (:class:`PLSProblem`), so each evaluation is one sparse matrix-vector product, a scaling by Lambda2 and a
dense Cholesky of size r, plus O(m_1 q_1^3) for the first block: for InstEval (students 2972 levels, lecturers 1128,
dept:service 28), a 1156 x 1156 Cholesky.

Why dense and not a general sparse Cholesky (CHOLMOD through scikit-sparse; not measured here): once the students
are eliminated, InstEval's Schur complement has 22% of its lower triangle nonzero and its Cholesky factor 98%
(in the order of the levels; measured here), so the second block is dense in all but name, and LAPACK's dense
factor needs no further dependency; only the first, largest factor gains from sparsity, and its block is diagonal.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from scipy import linalg, sparse

from .slopes import (BlockSums, _backward, _chol, _crossprod_tri, _forward, _sandwich, _tri_inv, block_sums,
                     lambda_index)

__all__ = ["ReTerm", "PLSSums", "PLSProblem", "PLSEvaluation", "pls_sums", "merge_pls_sums", "pls_from_sums",
           "pls_problem", "pls_evaluate", "conditional_modes", "deviance_theta_sigma", "MAX_DENSE"]

MAX_DENSE = 8000  # random effects outside the first term held in the dense block (8000^2 doubles = 512 MB)


@dataclass(frozen=True)
class ReTerm:
    """One random-effects term: ``q`` columns of Z repeated over the ``n_levels`` levels of a grouping factor.

    Attributes
    ----------
    codes : ndarray of int (n,)
        Level of each row, ``0 .. n_levels - 1``.
    n_levels : int
    Z : ndarray (n, q)
        The term's model matrix (a column of ones for a random intercept).
    """

    codes: np.ndarray
    n_levels: int
    Z: np.ndarray

    @property
    def q(self) -> int:
        return self.Z.shape[1]


@dataclass(frozen=True, eq=False)
class PLSProblem:
    """Everything an evaluation needs that does not depend on theta (built by :func:`pls_from_sums`)."""

    sizes: tuple          # q_k per term
    levels: tuple         # m_k per term
    n: int
    p: int
    sums1: object         # BlockSums of the first term: Z1_g^T Z1_g, Z1_g^T [X y], [X y]^T [X y]
    r: int                # random effects in the dense block
    A22: np.ndarray       # Z2^T Z2 (r, r), lower triangle used
    Z2W: np.ndarray       # Z2^T [X y] (r, p+1)
    A21: sparse.csr_array  # Z2^T Z1 (r, m1 q1), columns level-major
    K: sparse.csc_array   # (r*r, m1 q1 q1): vec(lower(Z2^T Z1 D Z1^T Z2)) = K vec(D)
    lam_rows: np.ndarray  # where theta's entries (lam_tidx) go in Lambda2
    lam_cols: np.ndarray
    lam_tidx: np.ndarray
    lam_diag: bool        # Lambda2 is diagonal (every term after the first is scalar)
    n_theta1: int         # entries of theta in the first term's template

    @property
    def n_theta(self) -> int:
        return sum(k * (k + 1) // 2 for k in self.sizes)

    @property
    def q_total(self) -> int:
        return sum(k * m for k, m in zip(self.sizes, self.levels))

    @cached_property
    def K_lower(self) -> tuple:
        """The entries of the dense block's lower triangle that the data let be nonzero, and K on those only:
        ``(Kc, i, j, w, a22)``, ``Kc vec(D)`` the entries ``(i, j)`` (i >= j) of ``lower(Z2^T Z1 D Z1^T Z2)``,
        ``a22`` those of ``A22``, w 1 on the diagonal and 2 off it (for inner products with a symmetric matrix).

        The entries are K's nonzero rows, A22's nonzeros and the diagonal (K's rows hold A22's nonzeros when Z
        has no zeros, as for random intercepts). InstEval: 145,400 of 668,000 (22%), so a product with Kc writes
        into a vector that stays in cache, and only those entries are set, where ``K vec(D)`` writes every entry.
        Made once from K (its data and column pointers shared), the first time an evaluation needs it.
        """
        K, r = sparse.csc_array(self.K), self.r
        used = np.zeros(K.shape[0], dtype=bool)
        used[K.indices] = True
        nz = np.flatnonzero(self.A22)
        used[nz[nz // r >= nz % r]] = True
        used[np.arange(r) * (r + 1)] = True
        rows = np.flatnonzero(used)
        position = np.empty(K.shape[0], dtype=np.int32)
        position[rows] = np.arange(len(rows), dtype=np.int32)
        Kc = sparse.csc_array((K.data, position[K.indices], K.indptr), shape=(len(rows), K.shape[1]))
        i, j = np.divmod(rows, max(r, 1))
        return Kc, i, j, np.where(i == j, 1.0, 2.0), self.A22[i, j]


def _term_matrix(term: ReTerm, n: int) -> sparse.csc_array:
    """The term's n x (m q) block of Z, columns level-major (level g's q columns together), as lme4 lays it out."""
    q = term.q
    rows = np.tile(np.arange(n), q)
    cols = (term.codes[None, :] * q + np.arange(q)[:, None]).ravel()
    return sparse.csc_array((term.Z.T.ravel(), (rows, cols)), shape=(n, term.n_levels * q))


@dataclass(frozen=True, eq=False)
class PLSSums:
    """The sums over rows that :class:`PLSProblem` is built from (:func:`pls_sums`), for terms in a fixed order.

    Each is a sum over rows, so the sums of two chunks of rows (their codes against the same levels) add
    (:func:`merge_pls_sums`): the reduction of the out-of-core route (:mod:`lmm_helpers.chunked`).

    Attributes
    ----------
    sums1 : BlockSums
        The first term's per-level ``Z1_g^T Z1_g``, ``Z1_g^T [X y]``, and ``[X y]^T [X y]`` and n.
    A22 : sparse.csr_array (r, r)
        ``Z2^T Z2`` of the other terms (both triangles).
    Z2W : ndarray (r, p+1)
        ``Z2^T [X y]``.
    A21 : sparse.csr_array (r, m1 q1)
        ``Z2^T Z1``, columns level-major.
    sizes, levels : tuple
        q_k and m_k of each term, in this order.
    """

    sums1: BlockSums
    A22: sparse.csr_array
    Z2W: np.ndarray
    A21: sparse.csr_array
    sizes: tuple
    levels: tuple

    @property
    def n(self) -> int:
        return self.sums1.n

    @property
    def p(self) -> int:
        return self.sums1.p


def pls_sums(terms: list, X: np.ndarray, y: np.ndarray) -> PLSSums:
    """The sums over rows that lme4's penalised least squares needs, for random terms in a given order.

    Parameters
    ----------
    terms : list of ReTerm
        The first is held block-diagonal (lme4's order puts the term of most levels first).
    X : ndarray (n, p)
    y : ndarray (n,)

    Returns
    -------
    PLSSums
    """
    n, p = X.shape
    W = np.column_stack([X, y])
    first, rest = terms[0], terms[1:]
    q1, m1 = first.q, first.n_levels
    cols = [first.Z[:, j] for j in range(q1)] + [W[:, j] for j in range(p + 1)]
    sums1 = block_sums(cols, list(range(q1)), list(range(q1, q1 + p + 1)), first.codes, m1)
    r = sum(t.q * t.n_levels for t in rest)
    if rest:
        Z1 = _term_matrix(first, n)
        Z2 = sparse.hstack([_term_matrix(t, n) for t in rest], format="csc")
        Z2t = Z2.T.tocsr()
        A22 = sparse.csr_array(Z2t @ Z2)
        Z2W = np.asarray(Z2t @ W)
        A21 = sparse.csr_array(Z2t @ Z1)
    else:
        A22, Z2W = sparse.csr_array((0, 0)), np.zeros((0, p + 1))
        A21 = sparse.csr_array((0, m1 * q1))
    return PLSSums(sums1=sums1, A22=A22, Z2W=Z2W, A21=A21, sizes=tuple(t.q for t in terms),
                   levels=tuple(t.n_levels for t in terms))


def merge_pls_sums(a: PLSSums, b: PLSSums) -> PLSSums:
    """The sums of two chunks of rows together (the same terms, codes against the same levels): they add."""
    if a.sizes != b.sizes or a.levels != b.levels:
        raise ValueError(f"merge_pls_sums: the chunks have different terms (sizes {a.sizes}, {b.sizes}; levels "
                         f"{a.levels}, {b.levels}); give every chunk the same levels")
    s, t = a.sums1, b.sums1
    sums1 = BlockSums(ztz=s.ztz + t.ztz, ztw=s.ztw + t.ztw, wtw=s.wtw + t.wtw, n=s.n + t.n)
    return PLSSums(sums1=sums1, A22=sparse.csr_array(a.A22 + b.A22), Z2W=a.Z2W + b.Z2W,
                   A21=sparse.csr_array(a.A21 + b.A21), sizes=a.sizes, levels=a.levels)


def pls_from_sums(sums: PLSSums) -> PLSProblem:
    """Everything an evaluation needs that does not depend on theta, from the sums alone (no rows).

    Parameters
    ----------
    sums : PLSSums
        Of all the data (one pass, or chunks merged by :func:`merge_pls_sums`).

    Returns
    -------
    PLSProblem
    """
    sizes, levels = sums.sizes, sums.levels
    q1, m1, p = sizes[0], levels[0], sums.p
    r = sum(q * m for q, m in zip(sizes[1:], levels[1:]))
    if r > MAX_DENSE:
        raise ValueError(f"terms: the random terms after the one of the most levels have {r} random effects "
                         f"together, more than the {MAX_DENSE} that lmm's dense block holds (it would take "
                         f"{r * r * 8 / 2**30:.1f} GB); a general sparse Cholesky, which such models need, is not "
                         "implemented here")
    A22 = np.ascontiguousarray(sums.A22.toarray()) if r else np.zeros((0, 0))
    A21 = sparse.csr_array(sums.A21)
    K = _schur_coefficients(A21, r, m1, q1)
    # Lambda2: each later term's template repeated over its levels; theta's entries follow the first term's.
    rows, cols, tidx = [], [], []
    t_off, col_off = q1 * (q1 + 1) // 2, 0
    for q, m in zip(sizes[1:], levels[1:]):
        tr, tc = lambda_index([q])
        for e, (a, b) in enumerate(zip(tr, tc)):
            base = col_off + np.arange(m) * q
            rows.append(base + a)
            cols.append(base + b)
            tidx.append(np.full(m, t_off + e))
        t_off += len(tr)
        col_off += q * m
    cat = (lambda a: np.concatenate(a) if a else np.zeros(0, np.intp))
    lam_rows, lam_cols, lam_tidx = cat(rows), cat(cols), cat(tidx)
    return PLSProblem(sizes=tuple(sizes), levels=tuple(levels), n=sums.n, p=p, sums1=sums.sums1, r=r, A22=A22,
                      Z2W=np.asarray(sums.Z2W), A21=A21, K=K, lam_rows=lam_rows, lam_cols=lam_cols,
                      lam_tidx=lam_tidx, lam_diag=bool(np.all(lam_rows == lam_cols)),
                      n_theta1=q1 * (q1 + 1) // 2)


def pls_problem(terms: list, X: np.ndarray, y: np.ndarray) -> PLSProblem:
    """Gather once everything the profiled deviance needs, for random terms in lme4's order.

    The sums over rows (:func:`pls_sums`, the step a chunk of data runs), then what is built from them
    (:func:`pls_from_sums`).

    Parameters
    ----------
    terms : list of ReTerm
        In lme4's order: decreasing number of levels (the first is held block-diagonal).
    X : ndarray (n, p)
    y : ndarray (n,)

    Returns
    -------
    PLSProblem
    """
    return pls_from_sums(pls_sums(terms, X, y))


def _schur_coefficients(A21: sparse.csr_array, r: int, m1: int, q1: int) -> sparse.csc_array:
    """K with ``vec(lower(A21 blockdiag(D_g) A21^T)) = K vec(D)``, ``vec(D)`` level-major (g, a, b), row-major pos.

    For each level g of the first term, every pair of nonzeros (i, a), (j, b) of its columns with i >= j adds
    ``A21[i, (g, a)] A21[j, (g, b)] D_g[a, b]`` to entry (i, j). The pairs are enumerated level by level, which is
    the column order of K (D_g's entries are consecutive), so K is assembled in compressed-column form without a
    sort when q_1 = 1; for q_1 > 1 scipy sorts the columns.
    """
    Ac = sparse.csc_array(A21)
    Ac.sort_indices()
    row = Ac.indices.astype(np.int64)
    col = np.repeat(np.arange(m1 * q1), np.diff(Ac.indptr))
    val = Ac.data
    if q1 == 1:
        # Rows ascend within each level: entry k of a level pairs with entries 0..k of the same level (i >= j).
        start = Ac.indptr[:-1]
        k_local = np.arange(len(row)) - np.repeat(start, np.diff(Ac.indptr))
        rep = k_local + 1
        e1 = np.repeat(np.arange(len(row)), rep)
        e2 = e1 - k_local[e1] + (np.arange(len(e1)) - np.repeat(np.cumsum(rep) - rep, rep))
        cnt = np.diff(Ac.indptr)
        indptr = np.concatenate([[0], np.cumsum(cnt * (cnt + 1) // 2)])
        return sparse.csc_array((val[e1] * val[e2], row[e1] * r + row[e2], indptr), shape=(r * r, m1))
    grp = col // q1
    order = np.argsort(grp, kind="stable")
    row, col, val, grp = row[order], col[order], val[order], grp[order]
    cnt = np.bincount(grp, minlength=m1)
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    rep = cnt[grp]
    first_e = np.repeat(np.arange(len(row)), rep)
    k = np.arange(len(first_e)) - np.repeat(np.cumsum(rep) - rep, rep)
    second_e = start[grp[first_e]] + k
    keep = row[first_e] >= row[second_e]
    e1, e2 = first_e[keep], second_e[keep]
    didx = grp[e1] * q1 * q1 + (col[e1] % q1) * q1 + (col[e2] % q1)
    return sparse.csc_array((val[e1] * val[e2], (row[e1] * r + row[e2], didx)), shape=(r * r, m1 * q1 * q1))


@dataclass(frozen=True)
class PLSEvaluation:
    """lme4's penalised least squares at one theta: the criterion and the pieces inference needs.

    ``deviance`` is the profiled ML deviance or REML criterion; ``ldL2 = log|L|^2``; ``r2`` the penalised residual
    sum of squares; ``RX`` the lower Cholesky factor of ``X^T V^-1 X`` (V relative to sigma^2); ``beta`` the GLS
    estimate. The rest (Cholesky pieces) lets :func:`conditional_modes` solve for u without refactoring.
    """

    theta: np.ndarray
    deviance: float
    ldL2: float
    ldRX2: float
    r2: float
    RX: np.ndarray
    beta: np.ndarray
    Lam1: np.ndarray
    L1: np.ndarray
    C1: np.ndarray
    U2: np.ndarray | None
    C2: np.ndarray
    lam2: object
    grad: np.ndarray | None = None


def _lambda2(theta: np.ndarray, prob: PLSProblem):
    """Lambda2: a vector (its diagonal) when every later term is scalar, else a sparse matrix."""
    vals = theta[prob.lam_tidx]
    if prob.lam_diag:
        return vals
    return sparse.csr_array((vals, (prob.lam_rows, prob.lam_cols)), shape=(prob.r, prob.r))


def pls_evaluate(theta: np.ndarray, prob: PLSProblem, method: str, gradient: bool = False) -> PLSEvaluation:
    """The profiled deviance (ML) or REML criterion at ``theta`` (lme4's order and meaning of theta).

    Parameters
    ----------
    theta : ndarray
        Each term's template, its lower triangle by columns, terms in lme4's order.
    prob : PLSProblem
    method : {"ML", "REML"}
    gradient : bool
        Also the analytic gradient in theta (:func:`_gradient` when every term is scalar, else
        :func:`_gradient_general`).

    Returns
    -------
    PLSEvaluation
    """
    theta = np.asarray(theta, dtype=float)
    s1, q1, p, n, r = prob.sums1, prob.sizes[0], prob.p, prob.n, prob.r
    m1 = prob.levels[0]
    Lam1 = np.zeros((q1, q1))
    Lam1[lambda_index([q1])] = theta[:prob.n_theta1]
    # First block, level by level: A11_g = Lam1^T S_g Lam1 + I = L1_g L1_g^T.
    if q1 == 1:
        lam = Lam1[0, 0]
        a = 1.0 + lam * lam * s1.ztz[0, 0]
        L1 = np.sqrt(a)[None, None, :]
        D = (lam * lam / a)                                           # Lam1 A11^-1 Lam1^T, (m1,)
        ld1 = float(np.sum(np.log(a)))
        DZW = D[None, :] * s1.ztw[0]                                   # (p+1, m1)
        c1tc1 = s1.ztw[0] @ DZW.T
        Dvec = D
        DZW_flat = DZW.T                                               # (m1, p+1)
    else:
        a = None
        T = np.tensordot(Lam1.T, s1.ztz, axes=(1, 0))
        A = np.tensordot(T, Lam1, axes=(1, 0)).transpose(0, 2, 1)
        A[np.arange(q1), np.arange(q1)] += 1.0
        L1 = _chol(A)
        ld1 = 2.0 * float(np.sum(np.log(L1[np.arange(q1), np.arange(q1)])))
        F = _forward(L1, np.broadcast_to(Lam1.T[:, :, None], A.shape).copy())   # L1^-1 Lam1^T
        D = np.einsum("aig,ajg->ijg", F, F)                           # (q1, q1, m1)
        DZW3 = np.einsum("ijg,jkg->ikg", D, s1.ztw)                   # (q1, p+1, m1)
        c1tc1 = np.einsum("ikg,ilg->kl", s1.ztw, DZW3)
        Dvec = D.transpose(2, 0, 1).ravel()
        DZW_flat = DZW3.transpose(2, 0, 1).reshape(m1 * q1, p + 1)
    C1 = _forward(L1, np.tensordot(Lam1.T, s1.ztw, axes=(1, 0)))    # L1^-1 Lam1^T Z1^T [X y]
    # One Cholesky of the bordered matrix [[Q, H], [H^T, M]] (the dense block, then [X y]) gives L22, C2^T and the
    # factor R of M - C2^T C2 at once, as lme4 and MixedModels.jl treat [X y] as the last block.
    lam2 = _lambda2(theta, prob)
    N = r + p + 1
    F = np.empty((N, N))
    F[r:, r:] = s1.wtw - c1tc1
    if r:
        Q = F[:r, :r]
        Kc, ki, kj, _, a22 = prob.K_lower
        H = prob.Z2W - prob.A21 @ DZW_flat
        if prob.lam_diag:
            # Lambda2 Q Lambda2 is nonzero only at (ki, kj) in the lower triangle: set those, the rest 0
            Q[...] = 0.0
            Q[ki, kj] = (a22 - Kc @ Dvec) * (lam2[ki] * lam2[kj])
            H = lam2[:, None] * H
        else:
            Q[...] = prob.A22
            Q[ki, kj] -= Kc @ Dvec
            Qs = np.tril(Q) + np.tril(Q, -1).T
            Q[...] = (lam2.T @ (lam2.T @ Qs).T).T
            H = lam2.T @ H
        F.flat[:r * (N + 1):N + 1] += 1.0
        F[r:, :r] = H.T
    # F is C-ordered with its lower triangle valid: its transpose (F-ordered, no copy) has the upper one, which
    # LAPACK factors in place; read back in C order, F's lower triangle is then the lower Cholesky factor.
    _, info = linalg.lapack.dpotrf(F.T, lower=0, overwrite_a=1, clean=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"the Cholesky factor of the PLS system failed (info {info})")
    d = np.diag(F)
    ld2 = 2.0 * float(np.sum(np.log(d[:r])))
    R = np.tril(F[r:, r:])
    RX = R[:p, :p]
    r2 = float(R[p, p] ** 2)
    ldL2 = ld1 + ld2
    ldRX2 = 2.0 * float(np.sum(np.log(d[r:r + p])))
    beta = np.linalg.solve(RX.T, R[p, :p])
    U2 = F[:r, :r] if r else None          # lower Cholesky factor L22 (upper triangle not cleaned)
    C2 = F[r:, :r].T                       # L22^-1 Lambda2^T (Z2^T [X y] - ...)
    m = n if method == "ML" else n - p
    deviance = ldL2 + m * (1.0 + np.log(2.0 * np.pi * r2 / m))
    if method == "REML":
        deviance += ldRX2
    ev = PLSEvaluation(theta=theta, deviance=float(deviance), ldL2=ldL2, ldRX2=ldRX2, r2=r2, RX=RX, beta=beta,
                       Lam1=Lam1, L1=L1, C1=C1, U2=U2, C2=C2, lam2=lam2)
    if gradient and all(q == 1 for q in prob.sizes):
        ev = replace(ev, grad=_gradient(ev, prob, method, a))
    elif gradient:
        ev = replace(ev, grad=_gradient_general(ev, prob, method))
    return ev


def _solve_LT(ev: PLSEvaluation, prob: PLSProblem, V1: np.ndarray, V2: np.ndarray,
              L22T: np.ndarray | None = None) -> tuple:
    """Solve ``L^T U = V`` blockwise: ``U2 = L22^-T V2``, then ``U1 = L11^-T (V1 - L11^-1 Lam1^T Z1^T Z2 Lam2 U2)``.

    V1 is (q1, k, m1) and V2 (r, k); returns U1 (q1, k, m1) and ``Lam2 U2`` (r, k). ``L22T``: ``L22^T`` as a
    Fortran-ordered array (its upper triangle used), if the caller has made one.
    """
    q1, m1 = prob.sizes[0], prob.levels[0]
    k = V1.shape[1]
    LU2 = np.zeros((0, k))
    if prob.r:
        # L22^T is the upper triangle of the transposed view (the strict upper part of U2 is not cleaned); LAPACK
        # wants it contiguous: copied (1.4 ms on InstEval), solve_triangular on the view takes 10 ms here
        if L22T is None:
            L22T = np.array(ev.U2.T, order="F")
        U2, info = linalg.lapack.dtrtrs(L22T, V2, lower=0)
        if info != 0:
            raise np.linalg.LinAlgError(f"the triangular solve with L22 failed (info {info})")
        LU2 = ev.lam2[:, None] * U2 if prob.lam_diag else ev.lam2 @ U2
        t = np.asarray(prob.A21.T @ LU2).reshape(m1, q1, k).transpose(1, 2, 0)    # (q1, k, m1)
        V1 = V1 - _forward(ev.L1, np.tensordot(ev.Lam1.T, t, axes=(1, 0)))
    return _backward(ev.L1, V1), LU2


def _gradient(ev: PLSEvaluation, prob: PLSProblem, method: str, a: np.ndarray) -> np.ndarray:
    """The analytic gradient of the criterion when every term is scalar (``Lambda_k = theta_k I``).

    With ``A = Lambda^T Z^T Z Lambda + I``, u the spherical modes and ``P = A^-1 Lambda^T Z^T X``, for theta_k > 0:

        d log|L|^2 / d theta_k   = (2 / theta_k) (m_k - tr_k(A^-1))
        d r^2 / d theta_k        = -(2 / theta_k) sum_k u_j^2            (envelope: u, beta optimal)
        d log|R_X|^2 / d theta_k = -(2 / theta_k) || P_k R_X^-T ||_F^2

    (``tr_k``, ``sum_k``, ``P_k``: the rows of term k). ``A^-1``'s dense block is ``S^-1`` (from the Cholesky factor
    by ``dpotri``); the first term's trace adds ``sum_g 1 / a_g`` and ``<S^-1, Lam2 Z2^T Z1 A11^-2 Lam1^2 Z1^T Z2
    Lam2>``, the latter through the same coefficients K. The criterion is even in each theta_k, so its derivative
    at theta_k = 0 is 0.
    """
    p, n, r = prob.p, prob.n, prob.r
    theta = ev.theta
    L22T = np.array(ev.U2.T, order="F") if r else None     # L22^T, Fortran order (LAPACK's upper triangle)
    U1, LU2 = _solve_LT(ev, prob, ev.C1, ev.C2, L22T)
    coef = np.append(-ev.beta, 1.0)
    u1 = U1[0].T @ coef                                   # (m1,) spherical modes of the first term
    P1 = U1[0].T[:, :p]                                   # (m1, p)
    lam = theta[0]
    tr = [np.sum(1.0 / a)]
    sq_u = [u1 @ u1]
    RXi = linalg.solve_triangular(ev.RX, np.eye(p), lower=True, check_finite=False)   # RX^-1
    sq_p = [np.sum((P1 @ RXi.T) ** 2)]
    if r:
        lam2 = ev.lam2
        with np.errstate(divide="ignore", invalid="ignore"):
            U2 = np.where(lam2[:, None] != 0, LU2 / lam2[:, None], 0.0)
        # S^-1 from the Cholesky factor of S (C order lower = F order upper of the transpose), in L22T's place
        Sinv, _ = linalg.lapack.dpotri(L22T, lower=0, overwrite_c=1)
        Sinv = Sinv.T                                      # C view: lower triangle valid
        diag = np.diag(Sinv).copy()
        # B = Lam2 (Z2^T Z1 diag(lam^2 / a^2) Z1^T Z2) Lam2 is nonzero only where K's rows are (its lower triangle
        # at (ki, kj)), so <S^-1, B> over the symmetric matrices is a sum over those, off-diagonal ones twice.
        Kc, ki, kj, w, _ = prob.K_lower
        B = (Kc @ (lam * lam / a**2)) * (lam2[ki] * lam2[kj])
        tr[0] += float(np.sum(w * B * Sinv[ki, kj]))
        u2 = U2 @ coef
        P2 = U2[:, :p]
        off = 0
        for m in prob.levels[1:]:
            sl = slice(off, off + m)
            tr.append(float(np.sum(diag[sl])))
            sq_u.append(float(u2[sl] @ u2[sl]))
            sq_p.append(float(np.sum((P2[sl] @ RXi.T) ** 2)))
            off += m
    levels = np.array(prob.levels, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(theta > 0, 2.0 / theta, 0.0)
    d_ld = inv * (levels - np.array(tr))
    d_r2 = -inv * np.array(sq_u)
    m = n if method == "ML" else n - p
    g = d_ld + (m / ev.r2) * d_r2
    if method == "REML":
        g = g - inv * np.array(sq_p)
    return np.where(theta > 0, g, 0.0)


def _gradient_general(ev: PLSEvaluation, prob: PLSProblem, method: str) -> np.ndarray:
    """The analytic gradient of the criterion for terms of any size (vector-valued, ``||`` or scalar).

    theta_i is one entry (a, b) of one term's template T_k, so ``dLambda / dtheta_i`` has ones at (a, b) of every
    level's block of that term. Write ``<M, dLambda>`` for the sum of M's entries at those positions (the
    pattern ``lambda_index`` for the first term, ``lam_rows, lam_cols, lam_tidx`` for the dense block). With
    ``A = Lambda^T Z^T Z Lambda + I``, ``V = I + Z Lambda Lambda^T Z^T`` and ``W = [X y]``:

        d log|A|     = tr(A^-1 dA) = 2 <Z^T Z Lambda A^-1, dLambda>
        d r^2        = -2 <Z^T e u^T, dLambda>,   e = y - X beta - Z Lambda u   (envelope: u, beta optimal)
        d log|R_X|^2 = d log|X^T V^-1 X| = -2 <Z^T V^-1 X G^-1 X^T V^-1 Z Lambda, dLambda>,   G = R_X R_X^T.

    The last two share one matrix. ``U = A^-1 Lambda^T Z^T W = L^-T C`` (:func:`_solve_LT`) holds ``P = U[:, :p]``
    and ``u = U c``, ``c = (-beta, 1)``. By the push-through identity ``Lambda^T Z^T V^-1 = A^-1 Lambda^T Z^T``,
    ``Lambda^T Z^T V^-1 X = P`` and ``Z^T V^-1 X = Z^T (X - Z Lambda P)``; and ``Z^T e = Z^T (W - Z Lambda U) c``.
    So with ``E = Z^T (W - Z Lambda U)`` and ``Omega = (m / r^2) c c^T (+ [[G^-1, 0], [0, 0]] for REML)``,

        d criterion = 2 <Z^T Z Lambda A^-1, dLambda> - 2 <E Omega U^T, dLambda>      (m = n, or n - p for REML).

    ``E`` needs ``Z^T Z Lambda U`` only: per level of the first term and through ``Z2^T Z1``, ``Z2^T Z2``. The
    blocks of ``Z^T Z Lambda A^-1`` that the pattern reads come from the blocked inverse of ``A``
    (``S = L22 L22^T`` the Schur complement, ``D_g = Lam1 A11_g^-1 Lam1^T``, ``Q = Z2^T Z2 - Z2^T Z1 D Z1^T Z2``,
    so that ``S = Lam2^T Q Lam2 + I``):

        dense block:       Q Lam2 S^-1
        first term, g:     (S_g + (S_g D_g - I) B_g) Lam1 A11_g^-1,   B_g = [Z1^T Z2 Lam2 S^-1 Lam2^T Z2^T Z1]_gg,

    S^-1 from the Cholesky factor (``dpotri``), ``B_g`` by the transpose of the Schur coefficients K. With scalar
    terms ``Lambda_k = theta_k I`` these reduce to :func:`_gradient`'s formulas (``E = U / theta_k``, ``Q Lam2
    S^-1 = (I - S^-1) / theta_k``); with one term, to :func:`lmm_helpers.slopes.evaluate`'s. No n x n matrix and
    no inverse of Lambda: theta on its bounds (a zero diagonal entry) needs no special case. Cost: ``dpotri`` (r^3/3
    flops, as the factor), products with K and K^T (one each, the evaluation has one) and O(r^2 q) with Lambda2;
    the evaluation with its gradient took 2-4 times the evaluation alone (measured here, 8000-30000 rows, r up to
    660), where finite differences take one more evaluation per entry of theta.
    """
    p, r = prob.p, prob.r
    q1, m1 = prob.sizes[0], prob.levels[0]
    s1, Lam1, L1 = prob.sums1, ev.Lam1, ev.L1
    coef = np.append(-ev.beta, 1.0)
    m = prob.n if method == "ML" else prob.n - p
    Omega = (m / ev.r2) * np.outer(coef, coef)
    if method == "REML":
        RXi = linalg.solve_triangular(ev.RX, np.eye(p), lower=True, check_finite=False)
        Omega[:p, :p] += RXi.T @ RXi                                   # G^-1
    U1, LU2 = _solve_LT(ev, prob, ev.C1, ev.C2)                        # (q1, p+1, m1), Lam2 U2 (r, p+1)
    LU1 = np.tensordot(Lam1, U1, axes=(1, 0))                          # Lam1 U1_g
    E1 = s1.ztw - np.einsum("ijg,jkg->ikg", s1.ztz, LU1)               # Z1_g^T (W - Z Lambda U), first part
    Ainv = _crossprod_tri(_tri_inv(L1))                                # A11_g^-1
    LamAinv = np.einsum("ij,jkg->ikg", Lam1, Ainv)
    T1 = s1.ztz.copy()                                                 # S_g (+ (S_g D_g - I) B_g below)
    grad = np.zeros(prob.n_theta)
    if r:
        lam2 = ev.lam2
        times = (lambda M: lam2[:, None] * M) if prob.lam_diag else (lambda M: lam2 @ M)    # Lam2 M
        times_t = (lambda M: lam2[:, None] * M) if prob.lam_diag else (lambda M: lam2.T @ M)  # Lam2^T M
        U2 = linalg.solve_triangular(ev.U2.T, ev.C2, lower=False, check_finite=False)      # L22^-T C2
        E1 -= np.asarray(prob.A21.T @ LU2).reshape(m1, q1, p + 1).transpose(1, 2, 0)
        A22 = np.tril(prob.A22) + np.tril(prob.A22, -1).T              # Z2^T Z2 (its lower triangle is the data)
        E2 = prob.Z2W - prob.A21 @ LU1.transpose(2, 0, 1).reshape(m1 * q1, p + 1) - A22 @ LU2
        EO2 = E2 @ Omega
        rest2 = np.einsum("ek,ek->e", EO2[prob.lam_rows], U2[prob.lam_cols])
        Sinv, _ = linalg.lapack.dpotri(np.array(ev.U2.T, order="F"), lower=0)
        Sinv = np.triu(Sinv) + np.triu(Sinv, 1).T                      # S^-1, symmetric
        D = _sandwich(Lam1, Ainv)                                      # (q1, q1, m1)
        Q = (prob.K @ D.transpose(2, 0, 1).ravel()).reshape(r, r)
        Q = A22 - (np.tril(Q) + np.tril(Q, -1).T)
        QL = times_t(Q).T                                              # Q Lam2 (Q symmetric)
        ld2 = np.einsum("ek,ek->e", QL[prob.lam_rows], Sinv[prob.lam_cols])
        grad += np.bincount(prob.lam_tidx, weights=2.0 * ld2 - 2.0 * rest2, minlength=prob.n_theta)
        # B_g through K: K^T vec(lower(W)) sums A21[i, ga] A21[j, gb] W[i, j] over i >= j; halving W's diagonal
        # and adding the transpose gives the sum over all i, j.
        Wm = times(times(Sinv).T)                                      # Lam2 S^-1 Lam2^T
        Wm = np.tril(Wm, -1) + 0.5 * np.diag(np.diag(Wm))
        Bh = (prob.K.T @ Wm.ravel()).reshape(m1, q1, q1).transpose(1, 2, 0)
        B = Bh + Bh.transpose(1, 0, 2)
        SD = np.einsum("ijg,jkg->ikg", s1.ztz, D)
        SD[np.arange(q1), np.arange(q1)] -= 1.0
        T1 += np.einsum("ijg,jkg->ikg", SD, B)
    G1 = 2.0 * np.einsum("ijg,jkg->ik", T1, LamAinv)
    G1 -= 2.0 * np.einsum("ilg,jlg->ij", np.einsum("ikg,kl->ilg", E1, Omega), U1)
    grad[:prob.n_theta1] += G1[lambda_index([q1])]
    return grad


def conditional_modes(ev: PLSEvaluation, prob: PLSProblem) -> list:
    """The conditional modes ``b = Lambda u`` of each term at an evaluation, as (m_k, q_k) arrays.

    ``u`` solves ``L^T u = C[:, y] - C[:, X] beta`` (:func:`_solve_LT`: the dense block first, then each level of
    the first term), the solution of the penalised least-squares problem.
    """
    coef = np.append(-ev.beta, 1.0)
    U1, LU2 = _solve_LT(ev, prob, ev.C1, ev.C2)
    out = [(ev.Lam1 @ np.tensordot(U1, coef, axes=(1, 0))).T]
    b2, off = LU2 @ coef, 0
    for q, m in zip(prob.sizes[1:], prob.levels[1:]):
        out.append(b2[off:off + q * m].reshape(m, q))
        off += q * m
    return out


def deviance_theta_sigma(ev: PLSEvaluation, sigma: float, n: int, p: int, method: str) -> float:
    """lmerTest's deviance as a function of (theta, sigma), beta profiled out (its ``devfun_vp``)."""
    s2 = sigma * sigma
    dev = ev.ldL2 + ev.r2 / s2 + n * np.log(2.0 * np.pi * s2)
    if method == "REML":
        dev += ev.ldRX2 - p * np.log(2.0 * np.pi * s2)
    return float(dev)
