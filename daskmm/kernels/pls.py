"""Profiled penalised least squares from blocked cross-products (pure numpy/scipy).

For a given ``theta`` the blocked lower Cholesky factor of

    [ Lambda'Z'Z Lambda + I   Lambda'Z'X   Lambda'Z'y ]
    [ X'Z Lambda              X'X          X'y        ]  =  L L'
    [ y'Z Lambda              y'X          y'y        ]

is taken in two stages (DESIGN.md):

1. per level ``l`` of the primary factor, ``M_l = Lambda_l' A_l Lambda_l + I = L_l L_l'`` and
   ``R_l = L_l^{-1} Lambda_l' B_l`` (:func:`eval_group`, batched over levels, run wherever the
   statistics live);
2. the Schur complement ``S = Lambda~' (G - sum_l R_l' R_l) Lambda~ + diag(I_G, 0)`` of the
   global coefficients, ``X`` and ``y`` is factored densely, ``S = L_S L_S'``
   (:func:`profiled`).

Then ``log|L_ZZ|^2 = sum_l log|L_l|^2 + log|L_GG|^2``, ``log|L_XX|^2`` and ``r^2`` (the last
diagonal entry squared) give lme4's criteria::

    ML:    log|L_ZZ|^2 - sum log w + n (1 + log(2 pi r^2 / n))
    REML:  log|L_ZZ|^2 - sum log w + log|L_XX|^2 + (n-p)(1 + log(2 pi r^2 / (n-p)))

``Lambda~ = blockdiag(Lambda_G, I_{p+1})`` scales the global columns of ``B`` and ``G``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp

from daskmm.kernels.stats import Layout, LevelGroup


def group_Lambda(layout: Layout, lam: dict[str, np.ndarray],
                 composition: tuple[int, ...]) -> np.ndarray:
    """``Lambda`` of one primary level's block: the primary factor's, then each nested level's."""
    blocks = [lam[layout.primary]]
    for f, c in zip(layout.nested, composition):
        blocks.extend([lam[f]] * int(c))
    size = sum(b.shape[0] for b in blocks)
    out = np.zeros((size, size))
    i = 0
    for b in blocks:
        q = b.shape[0]
        out[i:i + q, i:i + q] = b
        i += q
    return out


def lambda_tilde(layout: Layout, lam: dict[str, np.ndarray], tail: float = 1.0
                 ) -> sp.csr_matrix:
    """``blockdiag(Lambda_G, tail I_{p+1})`` as a sparse ``k x k`` matrix (``tail=0`` for its
    derivative along a parameter of a global factor)."""
    if not layout.global_factors:
        return sp.identity(layout.p + 1, format="csr") * tail
    if all(lam[f].shape == (1, 1) for f in layout.global_factors):  # scalar terms: diagonal
        d = [np.full(len(layout.global_levels[f]), float(lam[f][0, 0]))
             for f in layout.global_factors]
        return sp.diags(np.concatenate(d + [np.full(layout.p + 1, float(tail))]), format="csr")
    blocks = [sp.kron(sp.identity(len(layout.global_levels[f])), sp.csr_matrix(lam[f]))
              for f in layout.global_factors]
    blocks.append(sp.identity(layout.p + 1) * tail)
    return sp.block_diag(blocks, format="csr")


SMALL_BLOCK = 8
"""Blocks up to this size are factored with vector operations across levels (a few passes over
``m`` numbers per entry) rather than LAPACK calls per level, which cost ~1 us each."""


SPARSE_B_MIN_K = 256
SPARSE_B_MAX_DENSITY = 0.25
"""A level group whose ``B`` has at least ``SPARSE_B_MIN_K`` columns of which at most this
share are non-zero (crossed factors: each level meets few levels of the others) forms
``sum_l R_l'R_l`` as a sparse product, ``B' blockdiag(T_l'T_l) B``, instead of a dense one."""


def sparse_B(group: LevelGroup) -> sp.csr_matrix | None:
    """``B`` as a sparse ``(m s) x k`` matrix (row ``l s + i``), cached on the group; None when
    it is small or dense."""
    cached = getattr(group, "_B_sparse", False)
    if cached is not False:
        return cached
    s, k, m = group.B.shape
    out = None
    if k >= SPARSE_B_MIN_K:
        flat = np.moveaxis(group.B, -1, 0).reshape(m * s, k)
        if np.count_nonzero(flat) <= SPARSE_B_MAX_DENSITY * flat.size:
            out = sp.csr_matrix(flat)
    group._B_sparse = out
    return out


def sparse_rtr(Bsp: sp.csr_matrix, W: np.ndarray) -> np.ndarray:
    """``sum_l B_l' W_l B_l`` (dense ``k x k``) for sparse ``B`` and symmetric per-level ``W``
    (m, s, s)."""
    return sparse_rtrs(Bsp, W[None])[0]


def sparse_rtrs(Bsp: sp.csr_matrix, Ws: np.ndarray) -> np.ndarray:
    """:func:`sparse_rtr` for several ``W`` (T, m, s, s) in one pass over ``B``, by the compiled
    :func:`~daskmm.kernels.level_quad.level_quads` (imported here: only large crossed
    problems need it)."""
    from daskmm.kernels.level_quad import level_quads

    if Bsp.indptr.dtype != np.int64:
        Bsp.indptr, Bsp.indices = Bsp.indptr.astype(np.int64), Bsp.indices.astype(np.int64)
    if not Bsp.has_sorted_indices:
        Bsp.sort_indices()
    return level_quads(Bsp.indptr, Bsp.indices, Bsp.data,
                       np.ascontiguousarray(Ws, dtype=float), Bsp.shape[1])


class Workspace:
    """Scratch arrays reused across evaluations of one level group.

    An optimiser evaluates the criterion a hundred times on the same shapes; allocating fresh
    arrays of ``m`` levels each time costs a page fault per 4 KiB on first touch, which on a
    VM is several times the arithmetic itself.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        a = self._arrays.get(name)
        if a is None or a.shape != shape:
            a = self._arrays[name] = np.empty(shape)
        return a


def _chol_levels(Mt: np.ndarray, ws: Workspace | None = None) -> np.ndarray:
    """Cholesky factors of ``s x s`` SPD blocks stored level-minor, ``Mt[i, j, l]``."""
    s, _, m = Mt.shape
    if s > SMALL_BLOCK:
        return np.ascontiguousarray(np.moveaxis(np.linalg.cholesky(np.moveaxis(Mt, -1, 0)), 0, -1))
    ws = ws or Workspace()
    L = ws.get("L", Mt.shape)
    L.fill(0.0)
    tmp = ws.get("chol_tmp", (m,))
    for j in range(s):
        np.copyto(L[j, j], Mt[j, j])
        for k in range(j):
            L[j, j] -= np.multiply(L[j, k], L[j, k], out=tmp)
        np.sqrt(L[j, j], out=L[j, j])
        for i in range(j + 1, s):
            np.copyto(L[i, j], Mt[i, j])
            for k in range(j):
                L[i, j] -= np.multiply(L[i, k], L[j, k], out=tmp)
            L[i, j] /= L[j, j]
    return L


def _solve_levels(L: np.ndarray, rhs: np.ndarray, ws: Workspace | None = None) -> np.ndarray:
    """``L_l^{-1} rhs`` for level-minor lower-triangular ``L`` (s, s, m) and one ``s x s``
    right-hand side shared by all levels; returns (s, s, m)."""
    s, _, m = L.shape
    ws = ws or Workspace()
    T = ws.get("T", (s, s, m))
    tmp = ws.get("solve_tmp", (s, m))
    for i in range(s):
        np.copyto(T[i], rhs[i][:, None])
        for j in range(i):
            T[i] -= np.multiply(T[j], L[i, j], out=tmp)
        T[i] /= L[i, i]
    return T


def backward_solve(L: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Batched ``L^{-T} c`` for lower-triangular ``L`` (m, s, s) and ``c`` (m, s)."""
    s = L.shape[1]
    if s > SMALL_BLOCK:
        return np.linalg.solve(np.swapaxes(L, 1, 2), c[..., None])[..., 0]
    u = np.empty_like(c)
    for i in range(s - 1, -1, -1):
        acc = c[:, i].copy()
        for j in range(i + 1, s):
            acc -= L[:, j, i] * u[:, j]
        u[:, i] = acc / L[:, i, i]
    return u


def eval_group(group: LevelGroup, Lam: np.ndarray, keep_factors: bool = False,
               ws: Workspace | None = None):
    """Stage 1 for one level group.

    ``R_l = L_l^{-1} Lambda_l' B_l`` is formed as ``T_l B_l`` with the small
    ``T_l = L_l^{-1} Lambda_l'`` (one pass over ``B`` per entry of ``T``). ``Lambda~`` is *not*
    applied: it acts on columns and these are row operations, so the caller scales the
    ``k x k`` sum instead, ``Lambda~' (sum R_l'R_l) Lambda~``, which is far cheaper.

    Returns
    -------
    logdet : float
        ``sum_l log|L_l|^2``.
    RtR : ndarray, shape (k, k)
        ``sum_l R_l' R_l`` before ``Lambda~``.
    (L, R) : optional
        The factors, when ``keep_factors`` (then no workspace may be passed: they would be
        overwritten by the next call).
    """
    s, k, m = group.B.shape
    if s > SMALL_BLOCK:
        return _eval_group_batched(group, Lam, keep_factors)
    ws = ws or Workspace()
    # M_l = Lambda' A_l Lambda + I for all levels at once: vec(M) = kron(Lambda, Lambda)' vec(A)
    Mt = ws.get("M", (s, s, m))
    np.matmul(np.kron(Lam, Lam).T, group.A.reshape(m, s * s).T, out=Mt.reshape(s * s, m))
    for i in range(s):
        Mt[i, i] += 1.0
    L = _chol_levels(Mt, ws)
    det = ws.get("det", (m,))
    np.copyto(det, L[0, 0])  # |L_l| per level; diagonal entries of chol(I + PSD) are moderate
    for i in range(1, s):
        det *= L[i, i]
    logdet = 2.0 * np.log(det, out=det).sum()
    T = _solve_levels(L, Lam.T, ws)
    Bsp = None if keep_factors else sparse_B(group)
    if Bsp is not None:  # sum_l B_l' T_l'T_l B_l, sparse
        return logdet, sparse_rtr(Bsp, np.einsum("iam,ibm->mab", T, T))
    B = group.B
    R = ws.get("R", B.shape)
    tmp = ws.get("R_tmp", (k, m))
    for i in range(s):
        np.multiply(B[0], T[i, 0][None, :], out=R[i])
        for j in range(1, s):
            R[i] += np.multiply(B[j], T[i, j][None, :], out=tmp)
    RtR = R[0] @ R[0].T
    for i in range(1, s):
        RtR += R[i] @ R[i].T
    if keep_factors:
        return logdet, RtR, (np.moveaxis(L, -1, 0).copy(), R.copy())
    return logdet, RtR


def _eval_group_batched(group: LevelGroup, Lam: np.ndarray, keep_factors: bool):
    """:func:`eval_group` for blocks above :data:`SMALL_BLOCK`: a handful of batched LAPACK and
    matmul calls over the levels instead of one vector operation per block entry (nested
    factors make blocks of tens of columns, for which the entry loops cost far more)."""
    s, k, m = group.B.shape
    M = Lam.T @ group.A @ Lam  # (m, s, s)
    M[:, np.arange(s), np.arange(s)] += 1.0
    L = np.linalg.cholesky(M)
    logdet = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum()
    T = np.linalg.solve(L, np.broadcast_to(Lam.T, (m, s, s)))  # L_l^{-1} Lambda'
    Bsp = None if keep_factors else sparse_B(group)
    if Bsp is not None:
        return logdet, sparse_rtr(Bsp, np.swapaxes(T, 1, 2) @ T)
    Rm = T @ np.moveaxis(group.B, -1, 0)  # (m, s, k)
    RtR = np.einsum("msk,msj->kj", Rm, Rm)
    if keep_factors:
        return logdet, RtR, (L, np.ascontiguousarray(np.moveaxis(Rm, 0, -1)))
    return logdet, RtR


def diagonal_of(A: sp.spmatrix) -> np.ndarray | None:
    """The diagonal of a square sparse matrix that has no other entries, else None (scalar
    random effects make ``Lambda~`` and its derivatives diagonal)."""
    A = A.tocoo()
    if not np.array_equal(A.row, A.col):
        return None
    out = np.zeros(A.shape[0])
    np.add.at(out, A.row, A.data)
    return out


def scale_sym(Lam: sp.spmatrix, D: np.ndarray) -> np.ndarray:
    """``Lam' D Lam`` for symmetric dense ``D``: two column scalings when ``Lam`` is diagonal
    (a sparse-dense product costs ten times more at ``k`` in the thousands)."""
    d = diagonal_of(Lam)
    if d is not None:
        return d[:, None] * D * d[None, :]
    return np.asarray(Lam.T @ (Lam.T @ D).T)


@dataclass
class Profile:
    """Stage 2: the global factor and the profiled criterion at one ``theta``.

    ``L_S`` is lower triangular and exactly zero above its diagonal (LAPACK's ``dpotrf`` with
    ``clean``): :func:`profiled_grad` relies on it to read ``S^{-1}`` from its lower
    triangle."""

    objective: float
    L_S: np.ndarray
    ldL2: float
    ldRX2: float
    pwrss: float
    n: int
    p: int
    n_G: int

    @property
    def L_GG(self) -> np.ndarray:
        return self.L_S[:self.n_G, :self.n_G]

    @property
    def L_XX(self) -> np.ndarray:
        return self.L_S[self.n_G:self.n_G + self.p, self.n_G:self.n_G + self.p]

    def beta(self) -> np.ndarray:
        g, p = self.n_G, self.p
        return la.solve_triangular(self.L_XX.T, self.L_S[-1, g:g + p], lower=False)

    def u_G(self, beta: np.ndarray) -> np.ndarray:
        g, p = self.n_G, self.p
        if not g:
            return np.zeros(0)
        rhs = self.L_S[-1, :g] - self.L_S[g:g + p, :g].T @ beta
        return la.solve_triangular(self.L_GG.T, rhs, lower=False)

    def sigma(self, reml: bool) -> float:
        return float(np.sqrt(self.pwrss / (self.n - self.p if reml else self.n)))


def profiled(G: np.ndarray, RtR: np.ndarray, logdet_loc: float, LamT: sp.csr_matrix,
             n_G: int, p: int, n: int, sum_log_w: float, reml: bool) -> Profile:
    """Stage 2: factor the Schur complement and evaluate lme4's criterion.

    ``S = Lambda~' (G - RtR) Lambda~ + diag(I_G, 0)`` with ``RtR`` from :func:`eval_group`.

    A Schur complement that is not positive definite (``theta`` far outside the useful range)
    gives an objective of ``+inf`` rather than an exception, so the optimiser steps back.
    """
    # in place where it can be: each pass over a k x k array costs ~1 ms at k = 1000, and a
    # new array a page fault per 4 KiB on top
    S = G - RtR
    S += S.T
    d = diagonal_of(LamT) if n_G else None
    if d is not None:  # Lambda~' S Lambda~ / 2, by two scalings
        S *= (0.5 * d)[:, None]
        S *= d[None, :]
    else:
        S *= 0.5
        if n_G:
            S = scale_sym(LamT, S)  # Lambda~' D Lambda~ (D symmetric)
    if n_G:
        S[np.arange(n_G), np.arange(n_G)] += 1.0
    # scipy's LAPACK, as the inverse of profiled_grad: numpy and scipy each bundle an OpenBLAS
    # whose idle threads spin, so alternating between the two costs both several times over.
    # S is symmetric: its transpose is the same matrix in Fortran order, factored in place
    L_S, info = la.lapack.dpotrf(S.T, lower=1, overwrite_a=1, clean=1)
    if info:
        return Profile(np.inf, np.full_like(S, np.nan), np.inf, np.inf, np.inf, n, p, n_G)
    d = np.diagonal(L_S)
    ldL2 = logdet_loc + 2.0 * np.log(d[:n_G]).sum()
    ldRX2 = 2.0 * np.log(d[n_G:n_G + p]).sum()
    pwrss = float(d[-1] ** 2)
    if reml:
        nmp = n - p
        obj = ldL2 - sum_log_w + ldRX2 + nmp * (1.0 + np.log(2.0 * np.pi * pwrss / nmp))
    else:
        obj = ldL2 - sum_log_w + n * (1.0 + np.log(2.0 * np.pi * pwrss / n))
    return Profile(float(obj), L_S, float(ldL2), float(ldRX2), pwrss, n, p, n_G)


def group_modes(group: LevelGroup, Lam: np.ndarray, LamT: sp.csr_matrix, prof: Profile,
                beta: np.ndarray, u_G: np.ndarray, sigma: float, layout: Layout):
    """Conditional modes and conditional covariances of one level group.

    ``u_l = L_l^{-T} (R_ly - R_lG u_G - R_lX beta)``, ``b_l = Lambda_l u_l``; the conditional
    covariance is ``sigma^2 Lambda_l [(L L')^{-1}]_ll Lambda_l'`` where the inverse is of the whole
    random-effects block (lme4's ``condVar``), which with global factors is
    ``L_l^{-T} (I + R_lG (L_GG L_GG')^{-1} R_lG') L_l^{-1}``.

    Returns
    -------
    b : ndarray, shape (m, s)
    cov : ndarray, shape (m, s, s)
    """
    _, _, (L, R) = eval_group(group, Lam, keep_factors=True)
    g, p = prof.n_G, prof.p
    s, _, m = R.shape
    if g:  # apply Lambda_G to the global columns
        for i in range(s):
            R[i, :g] = LamT[:g, :g].T @ R[i, :g]
    c = (R[:, -1, :] - np.einsum("spm,p->sm", R[:, g:g + p, :], beta)).T
    if g:
        c -= np.einsum("sgm,g->sm", R[:, :g, :], u_G).T
    u = backward_solve(L, c)
    b = u @ Lam.T
    Linv = np.linalg.inv(L)
    inner = np.broadcast_to(np.eye(s), (m, s, s)).copy()
    if g:
        T = la.solve_triangular(prof.L_GG, R[:, :g, :].transpose(1, 0, 2).reshape(g, s * m),
                                lower=True)
        T = T.reshape(g, s, m)
        inner += np.einsum("kim,kjm->mij", T, T)
    Minv = np.matmul(np.swapaxes(Linv, 1, 2), np.matmul(inner, Linv))
    cov = sigma ** 2 * np.matmul(Lam, np.matmul(Minv, Lam.T))
    return b, cov


def global_modes(prof: Profile, u_G: np.ndarray, lam: dict[str, np.ndarray], layout: Layout,
                 sigma: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Conditional modes and covariances of the global (crossed) factors' levels."""
    out = {}
    if not prof.n_G:
        return out
    Linv = la.solve_triangular(prof.L_GG, np.eye(prof.n_G), lower=True)
    for f, off in layout.global_offsets.items():
        q, nl = layout.q[f], len(layout.global_levels[f])
        cols = slice(off, off + nl * q)
        Lf = Linv[:, cols].reshape(prof.n_G, nl, q)
        Uinv = np.einsum("kli,klj->lij", Lf, Lf)  # diagonal blocks of (L L')^{-1}
        Lam = lam[f]
        u = u_G[cols].reshape(nl, q)
        out[f] = (u @ Lam.T, sigma ** 2 * np.matmul(Lam, np.matmul(Uinv, Lam.T)))
    return out


# ------------------------------------------------------------------ gradient
def eval_group_grad(group: LevelGroup, Lam: np.ndarray, dLams: list[np.ndarray]):
    """Stage 1 for one level group with its derivatives along ``dLams`` (``dLambda_l /
    dtheta_i`` for the parameters of the primary and nested factors; ``Lambda`` is linear in
    ``theta``, so each is ``Lambda`` at a unit vector).

    With ``M_l = Lambda' A_l Lambda + I``, ``P_l = M_l^{-1} Lambda'`` and ``D = dLambda``:

    * ``d log|M_l| = tr(M_l^{-1} dM_l) = 2 tr(P_l A_l D)``;
    * ``R_l'R_l = B_l' Lambda P_l B_l``, so ``d(R_l'R_l) = B_l' C_l B_l`` with
      ``C_l = D P_l + P_l' D' - P_l' dM_l P_l``, ``dM_l = D' A_l Lambda + Lambda' A_l D``.

    Returns
    -------
    logdet, RtR : as :func:`eval_group`
    dlogdet : ndarray, shape (len(dLams),)
    dRtR : ndarray, shape (len(dLams), k, k)
    """
    s, k, m = group.B.shape
    A = group.A  # (m, s, s)
    AL = A @ Lam
    M = Lam.T @ AL
    M[:, np.arange(s), np.arange(s)] += 1.0
    L = np.linalg.cholesky(M)
    logdet = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum()
    P = np.linalg.solve(M, np.broadcast_to(Lam.T, (m, s, s)))  # M^{-1} Lambda'
    Bsp = sparse_B(group)
    Bm = None if Bsp is not None else np.moveaxis(group.B, -1, 0)  # (m, s, k)
    W = Lam @ P  # Lambda M^{-1} Lambda'
    # sum_l B_l' X_l B_l as one matrix product over the (level, row) pairs (BLAS, not einsum)
    Bf = None if Bm is None else Bm.reshape(m * s, k)

    def quad(X):
        return Bf.T @ (X @ Bm).reshape(m * s, k)
    PA = (P @ A).sum(axis=0)  # sum_l P_l A_l, for the log-determinant derivatives
    dlogdet = np.empty(len(dLams))
    Cs = []
    for i, D in enumerate(dLams):
        dlogdet[i] = 2.0 * float(np.sum(PA * D.T))
        dM = D.T @ AL
        dM = dM + np.swapaxes(dM, 1, 2)
        DP = D @ P
        Cs.append(DP + np.swapaxes(DP, 1, 2) - np.swapaxes(P, 1, 2) @ dM @ P)
    if Bsp is not None:  # one pass over the sparse B for all of them
        quads = sparse_rtrs(Bsp, np.stack([W, *Cs]))
        return logdet, quads[0], dlogdet, quads[1:]
    dRtR = np.empty((len(dLams), k, k))
    for i, C in enumerate(Cs):
        dRtR[i] = quad(C)
    return logdet, quad(W), dlogdet, dRtR


def profiled_grad(prof: Profile, G: np.ndarray, RtR: np.ndarray, dlogdet: np.ndarray,
                  dRtR: np.ndarray, LamT: sp.csr_matrix, dLamT: list, reml: bool
                  ) -> np.ndarray:
    """Gradient of the profiled criterion of :func:`profiled` with respect to ``theta``
    (from :func:`profiled_grad_parts`)."""
    parts = profiled_grad_parts(prof, G, RtR, dlogdet, dRtR, LamT, dLamT)
    n, p = prof.n, prof.p
    if reml:
        return parts[:, 0] + parts[:, 1] + (n - p) * parts[:, 2]
    return parts[:, 0] + n * parts[:, 2]


def profiled_grad_parts(prof: Profile, G: np.ndarray, RtR: np.ndarray, dlogdet: np.ndarray,
                        dRtR: np.ndarray, LamT: sp.csr_matrix, dLamT: list) -> np.ndarray:
    """Derivatives along each ``theta`` of ``log|L_Z|^2``, ``log|R_X|^2`` and
    ``log pwrss``: an array ``(len(theta), 3)``, the pieces of every criterion built from
    them (the profiled REML and ML criteria; the deviance at a given ``sigma``).

    The criterion is a sum of log-determinants of the leading blocks ``S_1`` (global
    coefficients), ``S_2`` (and ``X``) and ``S`` (and ``y``) of the Schur complement:
    ``log|L_ZZ|^2 = logdet_loc + log|S_1|``, ``log|L_XX|^2 = log|S_2| - log|S_1|``,
    ``log r^2 = log|S| - log|S_2|``. Each ``d log|S_j| = tr(S_j^{-1} dS_j)`` is a sum of
    elements of ``S^{-1} dS``: ``S^{-1}`` is formed once from ``L_S``; a leading block's
    inverse differs from the leading block of ``S^{-1}`` by a correction of the rank of the
    trailing rows (the fixed effects and the response), so each derivative costs
    ``O(k^2 (p + 1))`` after the inverse.

    Parameters
    ----------
    dlogdet, dRtR
        Derivatives of stage 1 for the local parameters (:func:`eval_group_grad`, summed).
    dLamT
        For each parameter, in ``theta`` order: None for a local one (stage 1 carries it), or
        ``d Lambda~`` (sparse) for a parameter of a global factor.
    """
    g, p = prof.n_G, prof.p
    K = prof.L_S.shape[0]
    # scipy's LAPACK and BLAS throughout (see profiled); the lower triangle of S^{-1} only:
    # L_S is clean above its diagonal, so Sinv is zero there
    Sinv, info = la.lapack.dpotri(prof.L_S, lower=1)
    if info:
        raise np.linalg.LinAlgError("the Schur complement's factor is singular")
    diag = np.diagonal(Sinv).copy()
    # T = the full S^{-1}'s columns g.. (the fixed effects and the response; few)
    T = np.array(Sinv[g:, :].T, order="C")  # a copy: for g = 0 a view would write into Sinv
    tail = Sinv[g:, g:]
    T[g:, :] = np.tril(tail) + np.tril(tail, -1).T
    # S_j^{-1} of a leading block = S^{-1}[:j, :j] - U V U' with U = S^{-1}[:j, j:] and
    # V = (S^{-1}[j:, j:])^{-1}
    lead = {}
    for j in {g, g + p}:
        if 0 < j < K:
            lead[j] = (T[:j, j - g:], np.linalg.inv(T[j:, j - g:]))

    def traces(dS: np.ndarray) -> tuple[float, float, float]:
        """``tr(S_j^{-1} dS_j)`` for the leading blocks ``j = g, g + p, K`` of a symmetric
        ``dS``: one pass over ``S^{-1} * dS`` and one product with ``T``."""
        P = Sinv * dS  # lower triangle: the full trace sums it twice, less the diagonal
        dd = diag * np.diagonal(dS)
        total = float(P.sum())
        Y = la.blas.dgemm(1.0, dS.T, T) if g < K else None  # dS T (dS.T: Fortran order)
        out = []
        for j in (g, g + p, K):
            if j == 0:
                out.append(0.0)
                continue
            t = 2.0 * (total - float(P[j:, :].sum())) - float(dd[:j].sum())
            if j < K:
                U, V = lead[j]
                Z = Y[:j, j - g:] - dS[:j, j:] @ T[j:, j - g:]  # dS[:j, :j] U
                t -= float(np.sum(V * (U.T @ Z)))
            out.append(t)
        return out[0], out[1], out[2]

    dd_cache = []

    def Dd() -> np.ndarray:
        if not dd_cache:
            D = G - RtR
            dd_cache.append(0.5 * (D + D.T))
        return dd_cache[0]

    lam_d = diagonal_of(LamT) if g else None
    inv_diag = {}  # diagonals of the leading blocks' inverses, when a shortcut needs them

    def lead_diag(j: int) -> np.ndarray:
        if j not in inv_diag:
            if j == K:
                inv_diag[j] = diag
            else:
                U, V = lead[j]
                inv_diag[j] = diag[:j] - np.sum((U @ V) * U, axis=1)
        return inv_diag[j]

    def tr_scalar(j: int, e: np.ndarray) -> float:
        # tr(S_j^{-1} dS_j) for a diagonal Lambda~ and dLambda~ = diag(e) on global columns
        # with lambda > 0 there: Lambda~' D = (S - diag(I_G, 0)) Lambda~^{-1}, so the trace is
        # 2 sum_c (e_c / lambda_c) (1 - [S_j^{-1}]_cc), from the diagonal of S_j^{-1} alone
        if j == 0:
            return 0.0
        c = np.flatnonzero(e[:j])
        return float(2.0 * np.sum(e[c] / lam_d[c] * (1.0 - lead_diag(j)[c])))

    parts = np.empty((len(dLamT), 3))
    k_loc = 0
    for i, dL in enumerate(dLamT):
        e = diagonal_of(dL) if dL is not None and lam_d is not None else None
        if e is not None and np.all(lam_d[e != 0] > 0):
            t1, t2, t3 = tr_scalar(g, e), tr_scalar(g + p, e), tr_scalar(K, e)
            dld = 0.0
        else:
            if dL is None and not g:  # no global factors: Lambda~ is the identity
                dS = -dRtR[k_loc]
                dld = dlogdet[k_loc]
                k_loc += 1
            elif dL is None and lam_d is not None:  # scaled in place: dRtR is not used again
                dS = dRtR[k_loc]
                dS *= (-lam_d)[:, None]
                dS *= lam_d[None, :]
                dld = dlogdet[k_loc]
                k_loc += 1
            elif dL is None:
                dS = -scale_sym(LamT, dRtR[k_loc])
                dld = dlogdet[k_loc]
                k_loc += 1
            else:
                X = np.asarray(LamT.T @ (dL.T @ Dd()).T)  # Lambda~' Dd dLambda~
                dS = X + X.T
                dld = 0.0
            t1, t2, t3 = traces(np.ascontiguousarray(dS))
        parts[i] = (dld + t1, t2 - t1, t3 - t2)
    return parts


def inverse_factor(L: np.ndarray) -> np.ndarray:
    """``L^-1`` of a triangular factor (the fixed-effect block ``L_XX``: ``vcov(beta) =
    sigma^2 L^-T L^-1``)."""
    return np.linalg.inv(L)
