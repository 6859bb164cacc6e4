"""The LMM criterion of crossed scalar random effects without a factorisation: preconditioned
conjugate gradients for the solves, stochastic Lanczos quadrature for the log determinant
(pure numpy/scipy; issue 31's matrix-free path, Pavlovic and Sigrist's method).

With ``q`` random-effect levels over all factors, ``Lambda = diag(lam)`` (a factor's ``theta``
on each of its levels) and the cross-products ``Z'Z`` (sparse: the diagonal counts and the
factors' crossing tables), ``Z'X``, ``Z'y``, ``X'X``, ``X'y``, ``y'y``::

    A = Lambda Z'Z Lambda + I                      (q x q, applied, never factored)
    c_y = A^-1 Lambda Z'y,   C_X = A^-1 Lambda Z'X  (PCG, p + 1 right-hand sides)
    S = X'X - (Lambda Z'X)' C_X                     (p x p)
    beta = S^-1 (X'y - (Lambda Z'X)' c_y)
    r2 = y'y - (Lambda Z'y)' c_y - beta' (X'y - (Lambda Z'X)' c_y)
    REML = log|A| + log|S| + (n - p)(1 + log(2 pi r2 / (n - p)))
    ML   = log|A|          +  n     (1 + log(2 pi r2 / n))

lme4's criteria (``log|A| = log|L_Z|^2``, ``log|S| = log|R_X|^2``, ``r2`` the penalised
residual sum of squares). The first factor's block of ``A`` is diagonal and is eliminated
exactly (:class:`Reduced`: put the factor with most levels first); the solves run on the
Schur complement of the others. ``log|A|`` is the only estimated part: the eliminated
block's exact ``log|D|`` plus ``log|P| + tr log(P^-1/2 S P^-1/2)`` with the Jacobi
preconditioner ``P = diag(S)``, the trace by Rademacher probes drawn from a fixed seed (so an
evaluation repeats exactly, and the criterion is a smooth function of ``theta``) and Lanczos
quadrature on each; its standard error is the probes' spread over the square root of their
number. No object of size ``q x q`` is formed but ``Z'Z``'s non-zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import scipy.linalg as la
import scipy.sparse as sp

Matvec = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CrossedStats:
    """The cross-products the criterion needs (weights already applied).

    Attributes
    ----------
    ZtZ : scipy.sparse.csr_matrix
        ``q x q``, symmetric: each factor's level counts on the diagonal, the crossing
        tables off it.
    ZtX : numpy.ndarray
        ``q x p``.
    Zty : numpy.ndarray
        ``q``.
    XtX, Xty : numpy.ndarray
        ``p x p``, ``p``.
    yty : float
    n : int
        Rows.
    sizes : tuple of int
        Levels of each factor, in the order of ``ZtZ``'s blocks.
    """

    ZtZ: sp.csr_matrix
    ZtX: np.ndarray
    Zty: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    n: int
    sizes: tuple[int, ...]

    def lam(self, theta: np.ndarray) -> np.ndarray:
        """``diag(Lambda)``: each factor's ``theta`` repeated over its levels."""
        return np.repeat(np.asarray(theta, float), self.sizes)


def crossed_stats(y: np.ndarray, X: np.ndarray, codes: list[np.ndarray],
                  sizes: list[int]) -> CrossedStats:
    """:class:`CrossedStats` of rows: the response, the fixed-effects matrix and, per
    factor, each row's level code (``0 .. sizes[k] - 1``)."""
    n = len(y)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cols = np.concatenate([c + s for c, s in zip(codes, starts)])
    rows = np.tile(np.arange(n), len(codes))
    Z = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(n, int(sum(sizes))))
    return CrossedStats(ZtZ=(Z.T @ Z).tocsr(), ZtX=np.asarray(Z.T @ X), Zty=Z.T @ y,
                        XtX=X.T @ X, Xty=X.T @ y, yty=float(y @ y), n=n,
                        sizes=tuple(int(s) for s in sizes))


def operator(st: CrossedStats, lam: np.ndarray) -> tuple[Matvec, np.ndarray]:
    """``(v -> A v, diag(A))`` for ``A = Lambda Z'Z Lambda + I``."""
    ZtZ = st.ZtZ

    def matvec(v: np.ndarray) -> np.ndarray:
        return v + lam[:, None] * (ZtZ @ (lam[:, None] * v)) if v.ndim == 2 else \
            v + lam * (ZtZ @ (lam * v))
    return matvec, 1.0 + lam * lam * ZtZ.diagonal()


@numba.njit(cache=True, parallel=True, nogil=True)
def _csr_matmat(indptr, indices, data, X, out):  # pragma: no cover - compiled
    for i in numba.prange(len(indptr) - 1):
        for j in range(X.shape[1]):
            out[i, j] = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            c = indices[p]
            v = data[p]
            for j in range(X.shape[1]):
                out[i, j] += v * X[c, j]


def spmm(A: sp.csr_matrix, X: np.ndarray) -> np.ndarray:
    """``A @ X`` for a CSR ``A`` and a vector or matrix ``X``, the rows of ``A`` shared out
    over the cores (scipy's product runs on one)."""
    X2 = np.ascontiguousarray(X[:, None] if X.ndim == 1 else X, dtype=float)
    out = np.empty((A.shape[0], X2.shape[1]))
    _csr_matmat(A.indptr, A.indices, A.data, X2, out)
    return out[:, 0] if X.ndim == 1 else out


@dataclass(frozen=True)
class Reduced:
    """``A`` with its first factor's block (diagonal: a scalar term's levels never meet
    each other) eliminated exactly: ``A = [[D, B], [B', C]]``, the Schur complement
    ``S = C - B' D^-1 B`` applied as a product, ``log|A| = sum log D + log|S|``.

    Attributes
    ----------
    k : int
        Levels of the eliminated factor.
    D : numpy.ndarray
        Its diagonal block.
    B : scipy.sparse.csr_matrix
        ``k x (q - k)``: its crossings with the other factors, scaled by ``Lambda``.
    C : scipy.sparse.csr_matrix
        The rest of ``A``.
    BT : scipy.sparse.csr_matrix
        ``B'``, kept in rows (a transposed product would run by columns).
    C_diag : numpy.ndarray or None
        ``C``'s diagonal where ``C`` is diagonal (two factors), to scale by.
    """

    k: int
    D: np.ndarray
    B: sp.csr_matrix
    C: sp.csr_matrix
    BT: sp.csr_matrix
    C_diag: np.ndarray | None

    @classmethod
    def of(cls, st: CrossedStats, lam: np.ndarray) -> Reduced:
        k = st.sizes[0]
        L = sp.diags(lam)
        A = (L @ st.ZtZ @ L + sp.identity(len(lam))).tocsr()
        B, C = A[:k, k:].tocsr(), A[k:, k:].tocsr()
        # one other scalar factor: C is diagonal (its levels never meet each other)
        rows = np.repeat(np.arange(C.shape[0]), np.diff(C.indptr))
        diagonal = bool(np.all(C.indices == rows))
        return cls(k, A.diagonal()[:k].copy(), B, C, B.T.tocsr(),
                   C.diagonal().copy() if diagonal else None)

    def schur(self, v: np.ndarray) -> np.ndarray:
        """``S v``."""
        Dv = self.D[:, None] if v.ndim == 2 else self.D
        Cv = self.C @ v if self.C_diag is None else \
            (self.C_diag[:, None] if v.ndim == 2 else self.C_diag) * v
        return Cv - spmm(self.BT, spmm(self.B, v) / Dv)

    def schur_diag(self) -> np.ndarray:
        """``diag(S)``: the Jacobi preconditioner."""
        return self.C.diagonal() - np.asarray(self.B.multiply(self.B).T @ (1.0 / self.D))

    def solve(self, b: np.ndarray, tol: float) -> tuple[np.ndarray, int]:
        """``A^-1 b`` (``b``: ``q x m``) by block elimination, conjugate gradients on ``S``."""
        b1, b2 = b[:self.k], b[self.k:]
        t = b1 / self.D[:, None]
        x2, iters = pcg(self.schur, b2 - self.B.T @ t, self.schur_diag(), tol=tol)
        x1 = t - (self.B @ x2) / self.D[:, None]
        return np.vstack([x1, x2]), iters


def pcg(matvec: Matvec, b: np.ndarray, precond: np.ndarray, tol: float = 1e-12,
        maxiter: int = 10_000) -> tuple[np.ndarray, int]:
    """Jacobi-preconditioned conjugate gradients for ``A x = b`` (``b``: ``q`` or ``q x k``,
    the columns solved together); stops when every column's residual is below ``tol`` times
    its right-hand side's norm. Returns ``(x, iterations)``; raises ``FloatingPointError``
    when ``maxiter`` passes without that."""
    b2 = b[:, None] if b.ndim == 1 else b
    x = np.zeros_like(b2, dtype=float)
    r = b2.astype(float).copy()
    z = r / precond[:, None]
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    bnorm = np.linalg.norm(b2, axis=0)
    bnorm[bnorm == 0] = 1.0
    for it in range(1, maxiter + 1):
        Ap = matvec(p)
        alpha = rz / np.einsum("ij,ij->j", p, Ap)
        x += alpha * p
        r -= alpha * Ap
        if np.all(np.linalg.norm(r, axis=0) <= tol * bnorm):
            return (x[:, 0] if b.ndim == 1 else x), it
        z = r / precond[:, None]
        rz_new = np.einsum("ij,ij->j", r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    raise FloatingPointError(f"conjugate gradients did not reach {tol:g} in {maxiter} "
                             "iterations")


def lanczos_quadrature(matvec: Matvec, z: np.ndarray, steps: int,
                       f: Callable[[np.ndarray], np.ndarray] = np.log) -> float:
    """``z' f(A) z`` by ``steps`` Lanczos steps from ``z`` (full reorthogonalisation) and
    Gauss quadrature on the tridiagonal matrix."""
    q = len(z)
    k = min(steps, q)
    V = np.zeros((k, q))
    alpha = np.zeros(k)
    beta = np.zeros(k)
    norm = float(np.linalg.norm(z))
    v = z / norm
    for j in range(k):
        V[j] = v
        w = matvec(v)
        alpha[j] = v @ w
        w -= V[:j + 1].T @ (V[:j + 1] @ w)  # full reorthogonalisation
        w -= V[:j + 1].T @ (V[:j + 1] @ w)
        if j + 1 == k:
            break
        beta[j] = float(np.linalg.norm(w))
        if beta[j] < 1e-12 * abs(alpha[j]):  # an invariant subspace: exact
            k = j + 1
            break
        v = w / beta[j]
    theta, U = la.eigh_tridiagonal(alpha[:k], beta[:k - 1])
    return norm * norm * float(np.sum(U[0] ** 2 * f(theta)))


def lanczos_quadratures(matvec: Matvec, Z: np.ndarray, steps: int,
                        f: Callable[[np.ndarray], np.ndarray] = np.log) -> np.ndarray:
    """:func:`lanczos_quadrature` for every column of ``Z`` at once (the columns'
    recurrences side by side: one sparse product per step for all of them)."""
    q, m = Z.shape
    k = min(steps, q)
    V = np.zeros((k, q, m))
    alpha = np.zeros((k, m))
    beta = np.zeros((k, m))
    norms = np.linalg.norm(Z, axis=0)
    length = np.full(m, k)
    v = Z / norms
    for j in range(k):
        V[j] = v
        w = matvec(v)
        alpha[j] = np.einsum("qm,qm->m", v, w)
        for _ in range(2):  # full reorthogonalisation, twice
            w -= np.einsum("kqm,km->qm", V[:j + 1], np.einsum("kqm,qm->km", V[:j + 1], w))
        if j + 1 == k:
            break
        beta[j] = np.linalg.norm(w, axis=0)
        done = (beta[j] < 1e-12 * np.abs(alpha[j])) & (length == k)
        length[done] = j + 1
        beta[j, length <= j + 1] = 0.0
        v = np.where(length > j + 1, w / np.where(beta[j] > 0, beta[j], 1.0), 0.0)
    out = np.empty(m)
    for c in range(m):
        n_c = length[c]
        theta, U = la.eigh_tridiagonal(alpha[:n_c, c], beta[:n_c - 1, c])
        out[c] = norms[c] ** 2 * float(np.sum(U[0] ** 2 * f(theta)))
    return out


def deflation_basis(matvec: Matvec, diag: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """A rough orthonormal basis (``eigsh`` to 1e-3) of the ``k`` smallest eigenvectors of
    ``P^-1/2 A P^-1/2``, ``P = diag``: what :func:`slq_logdet` deflates."""
    from scipy.sparse.linalg import LinearOperator, eigsh
    s = 1.0 / np.sqrt(diag)
    q = len(diag)

    def scaled(v: np.ndarray) -> np.ndarray:
        sv = s if v.ndim == 1 else s[:, None]
        return sv * matvec(sv * v)

    op = LinearOperator((q, q), matvec=scaled, dtype=float)
    _, Q = eigsh(op, k=k, which="SA", tol=1e-3,
                 v0=np.random.default_rng(seed).standard_normal(q))
    return Q


def slq_logdet(matvec: Matvec, diag: np.ndarray, probes: int = 30, steps: int = 40,
               seed: int = 0, deflate: int = 0, basis: np.ndarray | None = None
               ) -> tuple[float, float]:
    """``(estimate, standard error)`` of ``log|A|``: ``log|P|`` plus the stochastic trace of
    ``log(P^-1/2 A P^-1/2)`` over ``probes`` Rademacher vectors of ``SeedSequence(seed)``.

    ``deflate > 0``: a rough basis ``Q`` of the ``deflate`` smallest eigenvectors of the
    scaled matrix (``eigsh`` to 1e-3) is taken by quadrature from each of its columns, and
    the probes see only the rest (projected off ``Q``): unbiased for any ``Q``, and ``log`` is
    steepest there: on a random 400 x 150 crossing, 10 such directions carry 96% of
    ``log``'s off-diagonal mass, which is the estimator's variance."""
    s = 1.0 / np.sqrt(diag)

    def scaled(v: np.ndarray) -> np.ndarray:
        sv = s if v.ndim == 1 else s[:, None]
        return sv * matvec(sv * v)

    q = len(diag)
    rng = np.random.default_rng(seed)
    Z = rng.choice([-1.0, 1.0], size=(probes, q)).T  # probe i: row i of the draws
    k = deflate if 0 < deflate < q - 1 else 0
    if basis is not None or k:
        # tr log = sum_i q_i' log(.) q_i + tr(P log(.) P), P = I - QQ', for any orthonormal
        # Q: the first part by quadrature from each q_i (no randomness), the second by the
        # probes projected off Q. Q near the smallest eigenvectors carries log's steep end,
        # so it needs only a rough eigsh.
        Q = basis if basis is not None else deflation_basis(matvec, diag, k, seed)
        k = Q.shape[1]
        Z = Z - Q @ (Q.T @ Z)
        vals = lanczos_quadratures(scaled, np.hstack([Q, Z]), steps)
        exact, vals = float(np.sum(vals[:k])), vals[k:]
    else:
        exact, vals = 0.0, lanczos_quadratures(scaled, Z, steps)
    se = float(np.std(vals, ddof=1) / math.sqrt(probes)) if probes > 1 else math.inf
    return float(np.sum(np.log(diag)) + exact + vals.mean()), se


@dataclass(frozen=True)
class IterativeCriterion:
    """One evaluation: the criterion and its parts.

    Attributes
    ----------
    objective : float
        REML or ML criterion (lme4's ``REMLcrit`` / ``deviance``), ``log|A|`` estimated.
    se : float
        Its standard error (that of the ``log|A|`` estimate).
    logdet_A, logdet_S, r2 : float
    beta : numpy.ndarray
    iterations : int
        Conjugate-gradient iterations of the solves.
    """

    objective: float
    se: float
    logdet_A: float
    logdet_S: float
    r2: float
    beta: np.ndarray
    iterations: int


def criterion(st: CrossedStats, theta: np.ndarray, reml: bool, probes: int = 30,
              steps: int = 40, seed: int = 0, tol: float = 1e-12, deflate: int = 0,
              basis: np.ndarray | None = None) -> IterativeCriterion:
    """The REML (``reml``) or ML criterion at ``theta`` (one scalar per factor) by
    conjugate gradients and stochastic Lanczos quadrature (module docstring)."""
    lam = st.lam(theta)
    red = Reduced.of(st, lam)
    LZX = lam[:, None] * st.ZtX
    LZy = lam * st.Zty
    sol, iters = red.solve(np.column_stack([LZy, LZX]), tol)
    c_y, C_X = sol[:, 0], sol[:, 1:]
    S = st.XtX - LZX.T @ C_X
    rhs = st.Xty - LZX.T @ c_y
    cS = la.cho_factor(S, lower=True)
    beta = la.cho_solve(cS, rhs)
    r2 = float(st.yty - LZy @ c_y - beta @ rhs)
    logdet_S = 2.0 * float(np.sum(np.log(np.diag(cS[0]))))
    logdet_S_red, se = slq_logdet(red.schur, red.schur_diag(), probes, steps, seed, deflate,
                                  basis)
    logdet_A = float(np.sum(np.log(red.D))) + logdet_S_red
    n, p = st.n, st.XtX.shape[0]
    if reml:
        m = n - p
        obj = logdet_A + logdet_S + m * (1.0 + math.log(2.0 * math.pi * r2 / m))
    else:
        obj = logdet_A + n * (1.0 + math.log(2.0 * math.pi * r2 / n))
    return IterativeCriterion(obj, se, logdet_A, logdet_S, r2, beta, iters)
