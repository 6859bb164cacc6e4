"""lme4's criterion of crossed scalar random effects, exactly, by a sparse factorisation
(pure numpy/scipy; issue 31's exact sparse path).

With the first factor's diagonal block eliminated (:class:`~daskmm.kernels.crossed_iter.
Reduced`), the Schur complement of the others ``S = C - B' D^-1 B`` is formed as a sparse
matrix (its non-zeros: the pairs of other levels that share a level of the first factor)
and factored by SuperLU (scipy, BSD) in its symmetric mode: a minimum-degree ordering of
``S + S'`` and no pivoting off the diagonal, so ``S = P' L U P`` with ``U``'s diagonal the
pivots of a Cholesky factor squared; ``log|A| = sum log D + sum log U_ii`` to rounding. Where
the crossings are sparse (few rows per level) the factor stays small; where every pair
meets, ``S`` is dense and the matrix-free path (:mod:`daskmm.kernels.crossed_iter`) is
the one that scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from daskmm.kernels.crossed_iter import (
    CrossedStats,
    Crossing,
    Profiled,
    Reduced,
    VectorReduced,
)


def schur_matrix(red: Reduced) -> sp.csc_matrix:
    """``S = C - B' D^-1 B`` as a sparse matrix."""
    x = red.x
    if isinstance(red, VectorReduced):
        B = red.B_matrix()
        lam = sp.diags(red.lam)
        C = sp.identity(len(red.lam), format="csr") + lam @ x.rest @ lam
        return (C - B.T @ red.Dinv_matrix() @ B).tocsc()
    NtDN = (x.NT @ sp.diags(1.0 / red.D) @ x.N).tocsr()
    lam = sp.diags(red.lam)
    C = sp.identity(len(red.lam), format="csr") + lam @ x.rest @ lam
    return (C - red.t1 ** 2 * (lam @ NtDN @ lam)).tocsc()


def schur_nnz_bound(st: CrossedStats | None, crossing: Crossing | None = None) -> int:
    """An upper bound on :func:`schur_matrix`'s non-zeros from the crossing table's row
    counts alone (``sum_i nnz(N_i)^2 + nnz(rest)``: each level of the first factor makes a
    clique of the levels it meets), without forming ``N'N``, which is levels x levels where
    every pair meets. ``st`` may be None when ``crossing`` is given."""
    x = crossing if crossing is not None else Crossing.of(st)
    N = x.N
    r = getattr(x, "r", 1)
    if r > 1:  # a level's pattern: the union of its columns' rows
        N = sum(abs(N[a::r]) for a in range(r)).tocsr()
    per_level = np.diff(N.indptr).astype(np.int64)
    return int(np.sum(per_level ** 2) + x.rest.nnz)


@dataclass
class SparseFactor:
    """``S``'s LU factors (SuperLU, symmetric mode) and what the criterion needs of them.

    Attributes
    ----------
    red : Reduced
    lu : scipy.sparse.linalg.SuperLU
    logdet : float
        ``log|S|``.
    fill : int
        Non-zeros of ``L`` and ``U``.
    """

    red: Reduced
    lu: object
    logdet: float
    fill: int

    @classmethod
    def of(cls, red: Reduced) -> SparseFactor:
        S = schur_matrix(red)
        lu = splu(S, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                  options={"SymmetricMode": True})
        d = lu.U.diagonal()
        if np.any(d <= 0):
            raise FloatingPointError("the crossed block's sparse factor has a pivot <= 0")
        return cls(red, lu, float(np.sum(np.log(d))), int(lu.L.nnz + lu.U.nnz))

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``A^-1 b`` by block elimination, ``S^-1`` from the factors."""
        red = self.red
        b1, b2 = b[:red.k], b[red.k:]
        t = red.Ddiv(b1)
        x2 = self.lu.solve(np.asfortranarray(b2 - red.BT(t)))
        x1 = t - red.Ddiv(red.B(x2))
        return np.vstack([x1, x2])

    def inverse_diag(self, chunk: int = 512) -> np.ndarray:
        """``diag(A^-1)`` exactly: ``diag(S^-1)`` on the other factors, ``1/D_i + b_i' S^-1
        b_i / D_i^2`` on the first (``b_i`` its row of ``B``), by solves in chunks of
        columns (``q`` solves in all, no ``q x q`` object)."""
        red = self.red
        if isinstance(red, VectorReduced):
            raise ValueError("with random slopes A^-1's diagonal blocks are "
                             "inverse_blocks()")
        rest = self._rest_diag(chunk)
        BT = (red.x.NT @ sp.identity(red.k)).tocsc()  # N' by columns: one level of factor 1
        first = np.empty(red.k)
        lam = red.lam[:, None]
        for s in range(0, red.k, chunk):
            cols = red.t1 * lam * BT[:, s:s + chunk].toarray()  # B' for these levels
            first[s:s + cols.shape[1]] = np.einsum("rc,rc->c", cols, self.lu.solve(cols))
        first = 1.0 / red.D + first / red.D ** 2
        return np.concatenate([first, rest])

    def _rest_diag(self, chunk: int) -> np.ndarray:
        """``diag(S^-1)`` by solves in chunks of columns."""
        r = len(self.red.lam)
        rest = np.empty(r)
        for s in range(0, r, chunk):
            e = np.zeros((r, min(chunk, r - s)))
            e[np.arange(s, s + e.shape[1]), np.arange(e.shape[1])] = 1.0
            rest[s:s + e.shape[1]] = self.lu.solve(e)[np.arange(s, s + e.shape[1]),
                                                      np.arange(e.shape[1])]
        return rest

    def inverse_blocks(self, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """``A^-1``'s diagonal blocks exactly, random slopes on the first factor: its
        levels' ``r x r`` blocks ``D_l^-1 + F_l S^-1 F_l'`` (``F = D^-1 B``, ``F_l`` level
        ``l``'s rows) and ``diag(S^-1)`` on the other factors, by solves in chunks."""
        red = self.red
        r = red.x.r
        rest = self._rest_diag(chunk)
        Ft = (red.Dinv_matrix() @ red.B_matrix()).T.tocsc()  # F' by columns
        first = red.Dinv.copy()
        step = max(chunk // r, 1) * r
        for s in range(0, red.k, step):
            cols = Ft[:, s:s + step].toarray()
            sol = self.lu.solve(np.asfortranarray(cols))
            c = cols.shape[1] // r
            first[s // r:s // r + c] += np.einsum("jca,jcb->cab", cols.reshape(-1, c, r),
                                                  sol.reshape(-1, c, r))
        return first, rest


@dataclass(frozen=True)
class ExactCriterion:
    """One exact evaluation (:func:`exact_criterion`).

    Attributes
    ----------
    objective, logdet_A, logdet_S, r2 : float
    beta, u, S : numpy.ndarray
        As :class:`~daskmm.kernels.crossed_iter.IterativeCriterion`.
    fill : int
        Non-zeros of the sparse factors.
    """

    objective: float
    logdet_A: float
    logdet_S: float
    r2: float
    beta: np.ndarray
    u: np.ndarray
    S: np.ndarray
    fill: int
    factor: SparseFactor

    def S_inverse(self) -> np.ndarray:
        """``S^-1`` of the fixed effects (``sigma^2 S^-1``: their covariance)."""
        return la.cho_solve(la.cho_factor(self.S, lower=True), np.eye(len(self.S)))


def exact_criterion(st: CrossedStats, theta: np.ndarray, reml: bool,
                    crossing: Crossing | None = None) -> ExactCriterion:
    """lme4's REML (``reml``) or ML criterion at ``theta`` (one scalar per factor), its
    log determinant and solves from :class:`SparseFactor`."""
    theta = np.asarray(theta, float)
    red = Reduced.of(st, theta, crossing)
    fac = SparseFactor.of(red)
    pr = Profiled.of(st, theta, fac.solve)
    logdet_A = red.logdet_D() + fac.logdet
    return ExactCriterion(pr.criterion(logdet_A, st, reml), logdet_A, pr.logdet_S, pr.r2,
                          pr.beta, pr.u, pr.S, fac.fill, fac)
