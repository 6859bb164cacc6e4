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

import numpy as np
import pandas as pd
import scipy.linalg as la
import scipy.sparse as sp

Matvec = Callable[[np.ndarray], np.ndarray]


def n_tri(r: int) -> int:
    """Entries of an ``r x r`` lower triangle."""
    return r * (r + 1) // 2


def tri_matrix(v: np.ndarray, r: int) -> np.ndarray:
    """The ``r x r`` lower-triangular matrix of ``v`` (its lower triangle by columns,
    lme4's order of ``theta``)."""
    T = np.zeros((r, r))
    T[np.triu_indices(r)[::-1]] = v  # (row, col) of the lower triangle, column by column
    return T


def by_level(T: np.ndarray, M: np.ndarray, r: int) -> np.ndarray:
    """``(I (x) T) M``: ``T`` applied to each level's ``r`` rows of ``M`` (level after
    level)."""
    if M.ndim == 1:
        return (M.reshape(-1, r) @ T.T).reshape(M.shape)
    return np.matmul(T, M.reshape(M.shape[0] // r, r, M.shape[1])).reshape(M.shape)


def _lambda(theta: np.ndarray, M: np.ndarray, sizes, cols: int, transpose: bool
            ) -> np.ndarray:
    theta = np.asarray(theta, float)
    nt = n_tri(cols)
    k = sizes[0] * cols
    rest = np.repeat(theta[nt:], sizes[1:])
    rest = rest[:, None] if M.ndim == 2 else rest
    if cols == 1:
        first = theta[0] * M[:k]
    else:
        T = tri_matrix(theta[:nt], cols)
        first = by_level(T.T if transpose else T, M[:k], cols)
    return np.concatenate([first, rest * M[k:]])


def lambda_t(theta: np.ndarray, M: np.ndarray, sizes, cols: int = 1) -> np.ndarray:
    """``Lambda' M`` for ``theta`` laid out as :class:`CrossedStats` says (the first
    factor's triangle of ``cols`` columns, then one per other factor) and factors of
    ``sizes`` levels; ``M``: ``q`` or ``q x m``."""
    return _lambda(theta, M, sizes, cols, True)


def lambda_apply(theta: np.ndarray, M: np.ndarray, sizes, cols: int = 1) -> np.ndarray:
    """``Lambda M`` (:func:`lambda_t`'s layout)."""
    return _lambda(theta, M, sizes, cols, False)


def gram_blocks(G: np.ndarray) -> sp.csr_matrix:
    """The block diagonal of levels' Gram matrices (``L``, or ``L x r x r``) as a sparse
    matrix."""
    G = np.asarray(G, float)
    if G.ndim == 1:
        return sp.diags(G, format="csr")
    L = len(G)
    return sp.bsr_matrix((G, np.arange(L), np.arange(L + 1)),
                         shape=(L * G.shape[1],) * 2).tocsr()


@dataclass(frozen=True)
class CrossedStats:
    """The cross-products the criterion needs (weights already applied).

    Attributes
    ----------
    counts : tuple of numpy.ndarray
        Each factor's (weighted) level counts: the diagonal of ``Z'Z``.
    tables : dict
        ``(j, k) -> Z_j'Z_k`` (``j < k``, CSR): the crossing tables, off the diagonal.
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
        Levels of each factor, in the order of ``Z'Z``'s blocks.
    cols : int
        Model columns of the first factor's term (1: a random intercept; more: random
        slopes, ``(1 + x | g)``). With ``cols = r > 1`` the first factor's rows of ``Z'Z``,
        ``Z'X`` and ``Z'y`` are ``(level, column)`` pairs, level after level; its
        ``counts`` are the levels' ``r x r`` Gram matrices (``L x r x r``); the other
        factors stay scalar. ``theta``: the first factor's ``r (r + 1) / 2`` entries of its
        lower-triangular ``T`` (lme4's order, by columns), then one per other factor.
    """

    counts: tuple
    tables: dict
    ZtX: np.ndarray
    Zty: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    n: int
    sizes: tuple[int, ...]
    cols: int = 1

    @property
    def q_sizes(self) -> tuple[int, ...]:
        """Rows of each factor's block of ``Z'Z``: its levels times its columns."""
        return (self.sizes[0] * self.cols, *self.sizes[1:])

    @property
    def n_theta(self) -> int:
        """Entries of ``theta``: the first factor's ``r (r + 1) / 2``, one per other."""
        return n_tri(self.cols) + len(self.sizes) - 1

    def lam(self, theta: np.ndarray) -> np.ndarray:
        """``diag(Lambda)``: each factor's ``theta`` repeated over its levels (scalar
        terms only: with random slopes ``Lambda`` is not diagonal, :meth:`lam_t`)."""
        if self.cols != 1:
            raise ValueError("Lambda is not diagonal with random slopes; use lam_t")
        return np.repeat(np.asarray(theta, float), self.sizes)

    def first_T(self, theta: np.ndarray) -> np.ndarray:
        """The first factor's ``r x r`` lower-triangular ``T`` (``Lambda = I (x) T`` on its
        levels)."""
        return tri_matrix(np.asarray(theta, float)[:n_tri(self.cols)], self.cols)

    def lam_t(self, theta: np.ndarray, M: np.ndarray) -> np.ndarray:
        """``Lambda' M`` (``M``: ``q`` or ``q x m``)."""
        return lambda_t(theta, M, self.sizes, self.cols)

    def lam_apply(self, theta: np.ndarray, M: np.ndarray) -> np.ndarray:
        """``Lambda M``: ``b = Lambda u``."""
        return lambda_apply(theta, M, self.sizes, self.cols)

    @property
    def ZtZ(self) -> sp.csr_matrix:
        """``Z'Z`` whole (``q x q``, symmetric), assembled from its blocks on request; the
        fit itself works on the blocks (:class:`Crossing`)."""
        K = len(self.sizes)
        blocks: list[list] = [[None] * K for _ in range(K)]
        for j in range(K):
            blocks[j][j] = gram_blocks(self.counts[j]) if j == 0 else sp.diags(self.counts[j])
            for k in range(j + 1, K):
                blocks[j][k], blocks[k][j] = self.tables[(j, k)], self.tables[(j, k)].T
        return sp.bmat(blocks, format="csr")


def theta_lower(st: CrossedStats) -> np.ndarray:
    """Lower bounds of ``theta`` (lme4's): 0 on standard deviations (a triangle's diagonal,
    every scalar), ``-inf`` off the diagonal."""
    r = st.cols
    rows, cols = np.triu_indices(r)[::-1]
    first = np.where(rows == cols, 0.0, -np.inf)
    return np.concatenate([first, np.zeros(len(st.sizes) - 1)])


def crossed_stats(y: np.ndarray, X: np.ndarray, codes: list[np.ndarray], sizes: list[int],
                  w: np.ndarray | None = None, slopes: np.ndarray | None = None
                  ) -> CrossedStats:
    """:class:`CrossedStats` of rows: the response, the fixed-effects matrix and, per
    factor, each row's level code (``0 .. sizes[k] - 1``); ``w``: prior weights (rows
    scaled by their square roots); ``slopes``: the first factor's term columns (``n x r``,
    ``r > 1``: random slopes on that factor), else a random intercept. Level sums by
    ``bincount``, each pair of factors' crossing table by one sparse ``(code, code)`` sum
    (no ``Z`` is formed)."""
    n = len(y)
    sizes = [int(s) for s in sizes]
    codes = [np.asarray(c, np.int64) for c in codes]
    ww = None if w is None else np.asarray(w, float)
    cols = [X[:, j] for j in range(X.shape[1])] + [y]
    if ww is not None:
        cols = [c * ww for c in cols]  # w x and w y: Z'WX and Z'Wy by level
    ones = np.ones(n) if ww is None else ww
    r = 1 if slopes is None else int(slopes.shape[1])
    if slopes is not None and r < 2:
        raise ValueError("slopes: the first factor's term columns, two or more")
    if r > 1:
        L = sizes[0]
        Zs = np.asarray(slopes, float)
        # the first factor's (level, column) rows, level after level
        first = np.stack([np.column_stack([np.bincount(codes[0], weights=Zs[:, a] * v,
                                                       minlength=L) for v in cols])
                          for a in range(r)], axis=1).reshape(L * r, len(cols))
        gram = np.empty((L, r, r))
        for a in range(r):
            for b in range(a + 1):
                gram[:, a, b] = gram[:, b, a] = np.bincount(
                    codes[0], weights=ones * Zs[:, a] * Zs[:, b], minlength=L)
        sums = [first] + [np.column_stack([np.bincount(c, weights=v, minlength=L)
                                           for v in cols])
                          for c, L in zip(codes[1:], sizes[1:])]
        counts = (gram,) + tuple(np.bincount(c, weights=ww, minlength=L).astype(float)
                                 for c, L in zip(codes[1:], sizes[1:]))
    else:
        sums = [np.column_stack([np.bincount(c, weights=v, minlength=L) for v in cols])
                for c, L in zip(codes, sizes)]
        counts = tuple(np.bincount(c, weights=ww, minlength=L).astype(float)
                       for c, L in zip(codes, sizes))
    tables = {}
    for j in range(len(codes)):
        for k in range(j + 1, len(codes)):
            if j == 0 and r > 1:
                rows = (codes[0][:, None] * r + np.arange(r)).ravel()
                vals = (ones[:, None] * Zs).ravel()
                N = sp.coo_matrix((vals, (rows, np.repeat(codes[k], r))),
                                  shape=(sizes[0] * r, sizes[k])).tocsr()
            else:
                N = sp.coo_matrix((ones, (codes[j], codes[k])),
                                  shape=(sizes[j], sizes[k])).tocsr()
            N.sum_duplicates()
            tables[(j, k)] = N
    Zt = np.vstack(sums)
    if ww is None:
        Xw, yw = X, y
    else:
        sw = np.sqrt(ww)
        Xw, yw = X * sw[:, None], y * sw
    return CrossedStats(counts=counts, tables=tables, ZtX=Zt[:, :-1].copy(),
                        Zty=Zt[:, -1].copy(), XtX=Xw.T @ Xw, Xty=Xw.T @ yw,
                        yty=float(yw @ yw), n=n, sizes=tuple(sizes), cols=r)


def level_codes(keys: list[np.ndarray], levels: list[np.ndarray]) -> list[np.ndarray]:
    """Each factor's per-row ``keys`` coded against its frozen ``levels`` (``0 ..``);
    ``ValueError`` for a key the levels do not hold."""
    codes = []
    for k, lev in zip(keys, levels):
        c = pd.Categorical(k, categories=lev).codes.astype(np.int64)
        if (c < 0).any():
            bad = k[np.flatnonzero(c < 0)[0]]
            bad = bad.item() if isinstance(bad, np.generic) else bad
            raise ValueError(f"level {bad!r} was not seen by the metadata pass")
        codes.append(c)
    return codes


def partition_crossed(y: np.ndarray, X: np.ndarray, w: np.ndarray | None,
                      keys: list[np.ndarray], levels: list[np.ndarray],
                      slopes: np.ndarray | None = None) -> tuple[CrossedStats, float]:
    """One partition's :class:`CrossedStats` (each factor's per-row ``keys`` coded against
    its frozen ``levels``; ``slopes``: :func:`crossed_stats`'s) and ``sum log w``; the
    partitions' sum (:func:`add_crossed`) is the whole data's."""
    codes = level_codes(keys, levels)
    sum_log_w = 0.0 if w is None else float(np.sum(np.log(w)))
    return crossed_stats(y, X, codes, [len(lev) for lev in levels], w, slopes), sum_log_w


def add_crossed(parts: list[tuple[CrossedStats, float]]) -> tuple[CrossedStats, float]:
    """The sum of partitions' :func:`partition_crossed`."""
    sts = [st for st, _ in parts]
    first = sts[0]
    tables = {}
    for key in first.tables:
        T = first.tables[key]
        for st in sts[1:]:
            T = T + st.tables[key]
        tables[key] = T.tocsr()
    return CrossedStats(
        counts=tuple(sum(st.counts[j] for st in sts) for j in range(len(first.sizes))),
        tables=tables, ZtX=sum(st.ZtX for st in sts), Zty=sum(st.Zty for st in sts),
        XtX=sum(st.XtX for st in sts), Xty=sum(st.Xty for st in sts),
        yty=float(sum(st.yty for st in sts)), n=int(sum(st.n for st in sts)),
        sizes=first.sizes, cols=first.cols), float(sum(v for _, v in parts))


_KERNELS: dict = {}


def _csr_matmat():
    """The compiled CSR product, made on first use (a process that never fits a crossed
    model matrix-free loads no numba)."""
    if "matmat" not in _KERNELS:
        import numba

        @numba.njit(cache=True, parallel=True, nogil=True)
        def matmat(indptr, indices, data, X, out):  # pragma: no cover - compiled
            for i in numba.prange(len(indptr) - 1):
                for j in range(X.shape[1]):
                    out[i, j] = 0.0
                for p in range(indptr[i], indptr[i + 1]):
                    c = indices[p]
                    v = data[p]
                    for j in range(X.shape[1]):
                        out[i, j] += v * X[c, j]
        _KERNELS["matmat"] = matmat
    return _KERNELS["matmat"]


SPMM_PARALLEL_NNZ = 150_000
""":func:`spmm` shares the rows out over the cores from this many non-zeros; below, scipy's
product on one core costs less than loading the compiled kernel (about half a second in a
new process; a 10^5-row crossing at 2,000 x 2,000 levels stays below, its random-slope
crossing of twice the non-zeros goes over)."""


def spmm(A: sp.csr_matrix, X: np.ndarray) -> np.ndarray:
    """``A @ X`` for a CSR ``A`` and a vector or matrix ``X``, the rows of ``A`` shared out
    over the cores (scipy's product runs on one) for :data:`SPMM_PARALLEL_NNZ` non-zeros
    or more; the same sums in the same order either way."""
    if A.nnz < SPMM_PARALLEL_NNZ:
        return A @ X
    X2 = np.ascontiguousarray(X[:, None] if X.ndim == 1 else X, dtype=float)
    out = np.empty((A.shape[0], X2.shape[1]))
    _csr_matmat()(A.indptr, A.indices, A.data, X2, out)
    return out[:, 0] if X.ndim == 1 else out


@dataclass(frozen=True)
class Crossing:
    """The part of ``A = Lambda Z'Z Lambda + I`` that does not move with ``theta``: ``Z'Z``
    cut at the first factor (``[[diag(n_1), N], [N', N_rest]]``), made once per fit. With
    scalar terms ``Lambda`` is ``theta_k`` on factor ``k``'s levels, so every evaluation
    scales these by numbers and forms no new matrix.

    Attributes
    ----------
    k : int
        Levels of the first (eliminated) factor.
    n1 : numpy.ndarray
        Its level counts.
    N, NT : scipy.sparse.csr_matrix
        Its crossings with the other factors (``k x (q - k)``) and their transpose, each
        kept in rows (a transposed product would run by columns).
    N2_T : scipy.sparse.csr_matrix
        ``(N o N)'``: for the Schur complement's diagonal.
    rest : scipy.sparse.csr_matrix
        ``Z'Z`` of the other factors.
    rest_diag : numpy.ndarray
        Its diagonal.
    rest_diagonal : bool
        Whether ``rest`` is diagonal (one other factor: its levels never meet each other).
    """

    k: int
    n1: np.ndarray
    N: sp.csr_matrix
    NT: sp.csr_matrix
    N2_T: sp.csr_matrix
    rest: sp.csr_matrix
    rest_diag: np.ndarray
    rest_diagonal: bool

    @classmethod
    def of(cls, st: CrossedStats) -> Crossing:
        """Of ``st``'s blocks (:class:`VectorCrossing` where the first factor has random
        slopes)."""
        if st.cols > 1:
            return VectorCrossing.of_vector(st.counts, st.tables, st.cols)
        return cls.of_blocks(st.counts, st.tables)

    @classmethod
    def of_blocks(cls, counts: tuple | list, tables: dict) -> Crossing:
        """From ``Z'Z``'s blocks: each factor's (weighted) level counts and the crossing
        tables ``(j, k) -> Z_j'Z_k`` (:class:`CrossedStats`'s)."""
        K = len(counts)
        k = len(counts[0])
        N = (tables[(0, 1)] if K == 2 else
             sp.hstack([tables[(0, j)] for j in range(1, K)], format="csr"))
        if K == 2:  # one other factor: its levels never meet each other
            rest = sp.diags(counts[1], format="csr")
        else:
            blocks: list[list] = [[None] * (K - 1) for _ in range(K - 1)]
            for j in range(1, K):
                blocks[j - 1][j - 1] = sp.diags(counts[j])
                for m in range(j + 1, K):
                    T = tables[(j, m)]
                    blocks[j - 1][m - 1], blocks[m - 1][j - 1] = T, T.T
            rest = sp.bmat(blocks, format="csr")
        return cls(k, np.asarray(counts[0], float).copy(), N, N.T.tocsr(),
                   N.multiply(N).T.tocsr(), rest,
                   np.concatenate([np.asarray(c, float) for c in counts[1:]]), K == 2)


@dataclass(frozen=True)
class Reduced:
    """``A`` at one ``theta`` with its first factor's block (diagonal: a scalar term's
    levels never meet each other) eliminated exactly: ``A = [[D, B], [B', C]]`` with
    ``D = 1 + theta_1^2 n_1``, ``B = theta_1 N Lambda_r``, ``C = Lambda_r N_rest Lambda_r +
    I``; the Schur complement ``S = C - B' D^-1 B`` applied as a product, ``log|A| = sum
    log D + log|S|``.

    Attributes
    ----------
    x : Crossing
    t1 : float
        ``theta_1``.
    lam : numpy.ndarray
        ``diag(Lambda_r)``: the other factors' ``theta`` on their levels.
    D : numpy.ndarray
    """

    x: Crossing
    t1: float
    lam: np.ndarray
    D: np.ndarray

    @classmethod
    def of(cls, st: CrossedStats, theta: np.ndarray, crossing: Crossing | None = None
           ) -> Reduced:
        """At ``theta`` (:class:`VectorReduced` where the first factor has random
        slopes)."""
        x = crossing if crossing is not None else Crossing.of(st)
        theta = np.asarray(theta, float)
        if hasattr(x, "at"):  # held in blocks elsewhere (daskmm.kernels.crossed_blocks)
            return x.at(theta, st.sizes)
        if st.cols > 1:
            return VectorReduced.at(x, theta, st.sizes)
        return cls(x, float(theta[0]), np.repeat(theta[1:], st.sizes[1:]),
                   1.0 + theta[0] ** 2 * x.n1)

    @property
    def k(self) -> int:
        """Rows of the eliminated block."""
        return self.x.k

    def Ddiv(self, v: np.ndarray) -> np.ndarray:
        """``D^-1 v`` (``v``: the eliminated block's rows)."""
        return v / (self.D[:, None] if v.ndim == 2 else self.D)

    def logdet_D(self) -> float:
        """``log|D|``."""
        return float(np.sum(np.log(self.D)))

    def N_dot(self, X: np.ndarray) -> np.ndarray:
        """``N X``: the first factor's crossings times ``X`` (``q - k`` rows)."""
        return spmm(self.x.N, X)

    def B(self, v: np.ndarray) -> np.ndarray:
        """``B v``."""
        lam = self.lam[:, None] if v.ndim == 2 else self.lam
        return self.t1 * spmm(self.x.N, lam * v)

    def BT(self, w: np.ndarray) -> np.ndarray:
        """``B' w``."""
        lam = self.lam[:, None] if w.ndim == 2 else self.lam
        return self.t1 * lam * spmm(self.x.NT, w)

    def C(self, v: np.ndarray) -> np.ndarray:
        """``C v``."""
        lam = self.lam[:, None] if v.ndim == 2 else self.lam
        if self.x.rest_diagonal:
            d = self.x.rest_diag[:, None] if v.ndim == 2 else self.x.rest_diag
            return v + lam * lam * d * v
        return v + lam * spmm(self.x.rest, lam * v)

    def schur(self, v: np.ndarray) -> np.ndarray:
        """``S v``."""
        return self.C(v) - self.BT(self.Ddiv(self.B(v)))

    def B2_D(self, d: np.ndarray) -> np.ndarray:
        """``sum_i B_ij^2 d_i`` for each column ``j``."""
        return self.t1 ** 2 * self.lam ** 2 * (self.x.N2_T @ d)

    def schur_diag(self) -> np.ndarray:
        """``diag(S)``: the Jacobi preconditioner."""
        return 1.0 + self.lam ** 2 * self.x.rest_diag - self.B2_D(1.0 / self.D)

    def inverse_diag(self) -> np.ndarray:
        """An approximation of ``diag(A^-1)`` (what conditional variances need): exact
        block elimination with ``S^-1`` taken as ``diag(S)^-1``, so ``1/D_i + sum_j
        B_ij^2 / (D_i^2 S_jj)`` on the eliminated factor and ``1 / S_jj`` on the others
        (at most the exact value: ``(S^-1)_jj >= 1 / S_jj`` for a positive definite
        ``S``). Exact where the other factors' levels do not interact through the first."""
        P = self.schur_diag()
        return np.concatenate([self.inverse_first(P), 1.0 / P])

    def inverse_first(self, P: np.ndarray) -> np.ndarray:
        """:meth:`inverse_diag` on the eliminated factor, given ``P = diag(S)``."""
        return 1.0 / self.D + self.t1 ** 2 * spmm(self.x.N.multiply(self.x.N).tocsr(),
                                                  self.lam ** 2 / P) / self.D ** 2

    def solve(self, b: np.ndarray, tol: float, x0: np.ndarray | None = None
              ) -> tuple[np.ndarray, int]:
        """``A^-1 b`` (``b``: ``q x m``) by block elimination, conjugate gradients on ``S``
        (from ``x0``'s rows of the other factors where a guess is given)."""
        b1, b2 = b[:self.k], b[self.k:]
        t = self.Ddiv(b1)
        x2, iters = pcg(self.schur, b2 - self.BT(t), self.schur_diag(), tol=tol,
                        x0=None if x0 is None else x0[self.k:])
        x1 = t - self.Ddiv(self.B(x2))
        return np.vstack([x1, x2]), iters


@dataclass(frozen=True)
class VectorCrossing(Crossing):
    """:class:`Crossing` with random slopes on the first factor: its ``r`` columns make
    ``(level, column)`` rows of ``N`` (``k = L r`` of them, level after level), ``n1`` its
    levels' ``r x r`` Gram matrices; ``pairs``: ``(a, b, (N_a o N_b)')`` for ``a <= b``,
    ``N_a`` column ``a``'s rows (for the Schur complement's diagonal), or ``entries``:
    ``(V, cols, levels)``, the crossing's non-zeros by pair of levels that meet (``V``
    their ``r`` values, ``nnz x r``; the GLMM's crossings, made anew at each PIRLS step,
    where forming ``pairs`` would cost more than using them)."""

    r: int = 1
    pairs: tuple = ()
    entries: tuple | None = None

    def quad_cols(self, K: np.ndarray) -> np.ndarray:
        """``sum_l n_lj' K_l n_lj`` for each column ``j`` of ``N`` (``n_lj``: level ``l``'s
        ``r`` rows of ``N``), ``K``: ``L x r x r`` symmetric."""
        if self.entries is not None:
            from daskmm.kernels.crossed_rows_jit import quad_entries
            V, cols, lev = self.entries
            out = np.zeros(self.N.shape[1])
            quad_entries(V, cols, lev, np.ascontiguousarray(K, float), out)
            return out
        out = np.zeros(self.N.shape[1])
        for a, b, P in self.pairs:
            out += (1.0 if a == b else 2.0) * (P @ K[:, a, b])
        return out

    @classmethod
    def of_vector(cls, counts: tuple | list, tables: dict, r: int) -> VectorCrossing:
        """From ``Z'Z``'s blocks, the first factor's ``counts`` its ``L x r x r`` Grams."""
        base = Crossing.of_blocks((np.zeros(len(counts[0]) * r), *counts[1:]), tables)
        N = base.N
        pairs = tuple((a, b, N[a::r].multiply(N[b::r]).T.tocsr())
                      for a in range(r) for b in range(a, r))
        return cls(base.k, np.asarray(counts[0], float), N, base.NT, base.N2_T, base.rest,
                   base.rest_diag, base.rest_diagonal, r, pairs)

    @property
    def levels(self) -> int:
        """Levels of the first factor."""
        return self.k // self.r


@dataclass(frozen=True)
class VectorReduced(Reduced):
    """:class:`Reduced` with random slopes on the first factor: ``Lambda_1 = I (x) T``,
    so ``D`` is block diagonal (each level's ``T' G_l T + I``, ``r x r``) and is still
    eliminated exactly; ``B = Lambda_1' N Lambda_r``.

    Attributes
    ----------
    T : numpy.ndarray
        The first factor's ``r x r`` lower-triangular factor.
    Dinv : numpy.ndarray
        ``L x r x r``: each level's ``D_l^-1``.
    logdet : float
        ``log|D|``.
    """

    T: np.ndarray | None = None
    Dinv: np.ndarray | None = None
    logdet: float = 0.0

    @classmethod
    def at(cls, x: VectorCrossing, theta: np.ndarray, sizes: tuple[int, ...]
           ) -> VectorReduced:
        r = x.r
        T = tri_matrix(theta[:n_tri(r)], r)
        D = np.einsum("ba,lbc,cd->lad", T, x.n1, T) + np.eye(r)
        C = np.linalg.cholesky(D)
        logdet = 2.0 * float(np.sum(np.log(np.diagonal(C, axis1=1, axis2=2))))
        Dinv = np.linalg.inv(D)
        return cls(x, float("nan"), np.repeat(theta[n_tri(r):], sizes[1:]), D, T, Dinv,
                   logdet)

    def Ddiv(self, v: np.ndarray) -> np.ndarray:
        r = self.x.r
        if v.ndim == 1:
            return np.matmul(self.Dinv, v.reshape(-1, r, 1)).reshape(v.shape)
        return np.matmul(self.Dinv, v.reshape(v.shape[0] // r, r, v.shape[1])).reshape(v.shape)

    def logdet_D(self) -> float:
        return self.logdet

    def B(self, v: np.ndarray) -> np.ndarray:
        lam = self.lam[:, None] if v.ndim == 2 else self.lam
        return by_level(self.T.T, spmm(self.x.N, lam * v), self.x.r)

    def BT(self, w: np.ndarray) -> np.ndarray:
        lam = self.lam[:, None] if w.ndim == 2 else self.lam
        return lam * spmm(self.x.NT, by_level(self.T, w, self.x.r))

    def quad_cols(self, K: np.ndarray) -> np.ndarray:
        """``sum_l n_lj' K_l n_lj`` for each column ``j`` of ``N`` (``n_lj``: level ``l``'s
        ``r`` rows), ``K``: ``L x r x r`` symmetric (:meth:`VectorCrossing.quad_cols`)."""
        return self.x.quad_cols(K)

    def schur_diag(self) -> np.ndarray:
        K = np.einsum("ab,lbc,dc->lad", self.T, self.Dinv, self.T)  # T D_l^-1 T'
        return 1.0 + self.lam ** 2 * (self.x.rest_diag - self.quad_cols(K))

    def B_matrix(self) -> sp.csr_matrix:
        """``B`` as a sparse matrix (``L r x (q - L r)``)."""
        L = self.x.levels
        left = sp.kron(sp.identity(L, format="csr"), sp.csr_matrix(self.T.T), format="csr")
        return (left @ self.x.N @ sp.diags(self.lam)).tocsr()

    def Dinv_matrix(self) -> sp.csr_matrix:
        """``D^-1`` as a sparse block-diagonal matrix."""
        return gram_blocks(self.Dinv)

    def inverse_diag(self) -> np.ndarray:
        raise ValueError("with random slopes A^-1's diagonal blocks are inverse_blocks()")

    def inverse_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """An approximation of ``A^-1``'s diagonal blocks (conditional covariances): the
        first factor's ``r x r`` per level, ``D_l^-1 + F_l diag(S)^-1 F_l'`` with ``F = D^-1
        B`` (exact block elimination with ``S^-1`` taken as ``diag(S)^-1``, as
        :meth:`Reduced.inverse_diag`), and ``1 / S_jj`` on the other factors."""
        P = self.schur_diag()
        return self.inverse_first(P), 1.0 / P

    def inverse_first(self, P: np.ndarray) -> np.ndarray:
        """:meth:`inverse_blocks` on the eliminated factor (``L x r x r``), given ``P =
        diag(S)``."""
        F = (self.Dinv_matrix() @ self.B_matrix()).tocsr()
        r = self.x.r
        first = self.Dinv.copy()
        for a in range(r):
            for b in range(a, r):
                v = F[a::r].multiply(F[b::r]) @ (1.0 / P)
                first[:, a, b] += v
                if a != b:
                    first[:, b, a] += v
        return first


def pcg(matvec: Matvec, b: np.ndarray, precond: np.ndarray, tol: float = 1e-12,
        maxiter: int = 10_000, x0: np.ndarray | None = None, r0: np.ndarray | None = None
        ) -> tuple[np.ndarray, int]:
    """Jacobi-preconditioned conjugate gradients for ``A x = b`` (``b``: ``q`` or ``q x k``,
    the columns solved together), from ``x0`` (a guess, shaped as ``b``) or zero; stops when
    every column's residual is below ``tol`` times its right-hand side's norm (a good guess
    starts nearer: the same stop, fewer steps). ``r0``: ``b - A x0`` where the caller has it
    (one product fewer). Returns ``(x, iterations)``; raises ``FloatingPointError`` when
    ``maxiter`` passes without that."""
    b2 = b[:, None] if b.ndim == 1 else b
    if x0 is None:
        x = np.zeros_like(b2, dtype=float)
        r = b2.astype(float).copy()
    else:
        x = np.array(x0, dtype=float).reshape(b2.shape)
        r = b2 - matvec(x) if r0 is None else np.array(r0, dtype=float).reshape(b2.shape)
    z = r / precond[:, None]
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    bnorm = np.linalg.norm(b2, axis=0)
    bnorm[bnorm == 0] = 1.0
    if np.all(np.linalg.norm(r, axis=0) <= tol * bnorm):
        return (x[:, 0] if b.ndim == 1 else x), 0
    for it in range(1, maxiter + 1):
        Ap = matvec(p)
        pAp = np.einsum("ij,ij->j", p, Ap)
        # a column already solved (a zero right-hand side: a factor at theta = 0) stays put
        alpha = np.divide(rz, pAp, out=np.zeros_like(rz), where=pAp > 0)
        x += alpha * p
        r -= alpha * Ap
        if np.all(np.linalg.norm(r, axis=0) <= tol * bnorm):
            return (x[:, 0] if b.ndim == 1 else x), it
        z = r / precond[:, None]
        rz_new = np.einsum("ij,ij->j", r, z)
        p = z + np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0) * p
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
                        f: Callable[[np.ndarray], np.ndarray] = np.log,
                        solves: bool = False, rtol: float = 0.0,
                        taken: list[int] | None = None
                        ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """:func:`lanczos_quadrature` for every column of ``Z`` at once (the columns'
    recurrences side by side: one sparse product per step for all of them).

    ``steps`` at most; ``rtol > 0`` stops earlier, once a step moves no column's quadrature
    by more than ``rtol`` times the largest of them (Gauss quadrature converges
    geometrically: the next step moves it far less). ``solves``: also return ``A^-1 Z`` as
    the same recurrences give it (``x_c = |z_c| V_c T_c^-1 e_1``, conjugate gradients'
    iterate after the same steps), for the gradient's traces at no further product.
    ``taken``: a list that gets the longest recurrence's number of steps."""
    q, m = Z.shape
    k = min(steps, q)
    V = np.zeros((k, q, m))
    alpha = np.zeros((k, m))
    beta = np.zeros((k, m))
    norms = np.linalg.norm(Z, axis=0)
    length = np.full(m, k)
    v = Z / norms
    last = None
    for j in range(k):
        V[j] = v
        w = matvec(v)
        alpha[j] = np.einsum("qm,qm->m", v, w)
        for _ in range(2):  # full reorthogonalisation, twice
            w -= np.einsum("kqm,km->qm", V[:j + 1], np.einsum("kqm,qm->km", V[:j + 1], w))
        if rtol > 0 and j > 0:
            now = _gauss(alpha, beta, np.minimum(length, j + 1), norms, f)[0]
            if last is not None and np.max(np.abs(now - last)) <= rtol * np.max(np.abs(now)):
                length = np.minimum(length, j + 1)
                break
            last = now
        if j + 1 == k:
            break
        beta[j] = np.linalg.norm(w, axis=0)
        done = (beta[j] < 1e-12 * np.abs(alpha[j])) & (length == k)
        length[done] = j + 1
        beta[j, length <= j + 1] = 0.0
        v = np.where(length > j + 1, w / np.where(beta[j] > 0, beta[j], 1.0), 0.0)
    out, coef = _gauss(alpha, beta, length, norms, f)
    if taken is not None:
        taken.append(int(coef.shape[0]))
    if not solves:
        return out
    return out, np.einsum("kqm,km->qm", V[:coef.shape[0]], coef)


def _gauss(alpha: np.ndarray, beta: np.ndarray, length: np.ndarray, norms: np.ndarray,
           f: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each column's Gauss quadrature ``|z|^2 e_1' f(T) e_1`` on its first ``length``
    Lanczos steps, and ``|z| T^-1 e_1`` (the solve's coefficients on the Lanczos vectors)."""
    m = len(norms)
    out = np.empty(m)
    coef = np.zeros((int(length.max()), m))
    for c in range(m):
        n_c = length[c]
        theta, U = la.eigh_tridiagonal(alpha[:n_c, c], beta[:n_c - 1, c])
        out[c] = norms[c] ** 2 * float(np.sum(U[0] ** 2 * f(theta)))
        coef[:n_c, c] = norms[c] * (U @ (U[0] / theta))
    return out, coef


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


@dataclass(frozen=True)
class Quadrature:
    """One stochastic Lanczos quadrature of ``log|A|`` (:func:`slq`) and what its
    recurrences give besides.

    Attributes
    ----------
    logdet, se : float
        The estimate of ``log|A|`` and its standard error.
    scale : numpy.ndarray
        ``P^-1/2``: the Jacobi scaling, ``A_s = P^-1/2 A P^-1/2``.
    starts, solves : numpy.ndarray
        The recurrences' start vectors (scaled coordinates: the deflation basis's ``k``
        columns, then the probes projected off it) and ``A_s^-1`` applied to each.
    k : int
        Deflation basis columns at the front of ``starts``.
    steps : int
        Lanczos steps of the longest recurrence.
    """

    logdet: float
    se: float
    scale: np.ndarray
    starts: np.ndarray
    solves: np.ndarray
    k: int
    steps: int = 0

    def trace_inverse(self, apply_m: Callable[[np.ndarray], np.ndarray],
                      trace_m: float) -> float:
        """``tr(A_s^-1 M)`` for a symmetric ``M`` (``apply_m``: ``v -> M v`` on a block of
        columns; ``trace_m = tr M``), by the same split as the log determinant: ``tr M``
        plus ``tr((A_s^-1 - I) M)``, exact on the deflation basis and by the projected
        probes on the rest."""
        Mv = apply_m(self.starts)
        return self.trace_values(np.einsum("qm,qm->m", self.solves - self.starts, Mv),
                                 trace_m)

    def trace_values(self, vals: np.ndarray, trace_m: float) -> float:
        """:meth:`trace_inverse` from ``vals``, each start's ``(x - z)' M z`` (``z`` the
        start, ``x`` its solve): exact on the deflation basis, averaged over the probes."""
        exact, probes = vals[:self.k], vals[self.k:]
        return trace_m + float(np.sum(exact)) + (float(probes.mean()) if len(probes) else 0.0)


def slq(matvec: Matvec, diag: np.ndarray, probes: int = 30, steps: int = 40, seed: int = 0,
        deflate: int = 0, basis: np.ndarray | None = None, rtol: float = 1e-10
        ) -> Quadrature:
    """``log|A|`` by stochastic Lanczos quadrature: ``log|P|`` plus the stochastic trace of
    ``log(P^-1/2 A P^-1/2)`` over ``probes`` Rademacher vectors of ``SeedSequence(seed)``,
    with its standard error; and the same recurrences' solves (:class:`Quadrature`).
    ``steps`` Lanczos steps at most, fewer where the quadratures have converged to ``rtol``
    (:func:`lanczos_quadratures`).

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
        starts = np.hstack([Q, Z - Q @ (Q.T @ Z)])
    else:
        k, starts = 0, Z
    taken: list[int] = []
    vals, solves = lanczos_quadratures(scaled, starts, steps, solves=True, rtol=rtol,
                                       taken=taken)
    exact, vals = float(np.sum(vals[:k])), vals[k:]
    if probes == 0:  # the basis alone: exact where it spans the space
        se, rest = (0.0 if k == q else math.inf), 0.0
    else:
        se = float(np.std(vals, ddof=1) / math.sqrt(probes)) if probes > 1 else math.inf
        rest = float(vals.mean())
    return Quadrature(float(np.sum(np.log(diag)) + exact + rest), se, s, starts, solves, k,
                      taken[0])


def slq_logdet(matvec: Matvec, diag: np.ndarray, probes: int = 30, steps: int = 40,
               seed: int = 0, deflate: int = 0, basis: np.ndarray | None = None
               ) -> tuple[float, float]:
    """``(estimate, standard error)`` of ``log|A|`` (:func:`slq`)."""
    quad = slq(matvec, diag, probes, steps, seed, deflate, basis)
    return quad.logdet, quad.se


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
    u : numpy.ndarray
        The spherical conditional modes (``b = Lambda u``), all factors' levels in order.
    S : numpy.ndarray
        ``X' V^-1 X`` (``p x p``; ``sigma^2 S^-1`` is the fixed effects' covariance).
    iterations : int
        Conjugate-gradient iterations of the solves.
    gradient : numpy.ndarray or None
        The criterion's derivative in each ``theta`` (:func:`criterion`'s ``gradient``):
        exact but for ``log|A|``'s traces, estimated from the same probes.
    lanczos_steps : int
        Lanczos steps of the longest recurrence.
    """

    objective: float
    se: float
    logdet_A: float
    logdet_S: float
    r2: float
    beta: np.ndarray
    u: np.ndarray
    S: np.ndarray
    iterations: int
    gradient: np.ndarray | None = None
    lanczos_steps: int = 0

    def S_inverse(self) -> np.ndarray:
        """``S^-1`` (``sigma^2 S^-1``: the fixed effects' covariance)."""
        return la.cho_solve(la.cho_factor(self.S, lower=True), np.eye(len(self.S)))


def criterion(st: CrossedStats, theta: np.ndarray, reml: bool, probes: int = 30,
              steps: int = 40, seed: int = 0, tol: float = 1e-12, deflate: int = 0,
              basis: np.ndarray | None = None, gradient: bool = False,
              crossing: Crossing | None = None, rtol: float = 1e-10) -> IterativeCriterion:
    """The REML (``reml``) or ML criterion at ``theta`` (one scalar per factor) by
    conjugate gradients and stochastic Lanczos quadrature (module docstring).

    ``gradient``: also its derivative in each ``theta_k`` (``E_k``: factor ``k``'s levels,
    ``q_k`` of them; ``u = A^-1 Lambda Z'(y - X beta)``)::

        d log|A|   = 2 / theta_k (q_k - tr(A^-1 E_k))
        d log|S|   = -2 / theta_k tr(S^-1 C_X' E_k C_X)
        d r2       = -2 / theta_k |E_k u|^2

    ``tr(A^-1 E_k)`` from the log determinant's own recurrences (:meth:`Quadrature.
    trace_inverse`): the eliminated factor's ``sum 1/D + tr(S_A^-1 B' D^-2 B)``, another
    factor's ``tr(S_A^-1 E_k)`` (``S_A`` the Schur complement); no further product.
    ``crossing``: :class:`Crossing` of ``st``, made once for many evaluations."""
    theta = np.asarray(theta, float)
    red = Reduced.of(st, theta, crossing)
    iters = [0]

    def solve(b: np.ndarray) -> np.ndarray:
        x, iters[0] = red.solve(b, tol)
        return x

    pr = Profiled.of(st, theta, solve)
    quad = slq(red.schur, red.schur_diag(), probes, steps, seed, deflate, basis, rtol)
    logdet_A = red.logdet_D() + quad.logdet
    obj = pr.criterion(logdet_A, st, reml)
    grad = None
    if gradient:
        m = st.n - st.XtX.shape[0] if reml else st.n
        if st.cols > 1:
            grad = vector_gradient(st, theta, red, quad, pr, m / pr.r2, reml)
        else:
            grad = _gradient(st, theta, red, quad, pr.C_X, pr.cS, pr.u, m / pr.r2, reml)
    return IterativeCriterion(obj, quad.se, logdet_A, pr.logdet_S, pr.r2, pr.beta, pr.u,
                              pr.S, iters[0], grad, quad.steps)


@dataclass(frozen=True)
class Profiled:
    """What the criterion takes from the solves ``A^-1 Lambda Z'[y X]`` (module docstring),
    whichever way they were done (conjugate gradients, a sparse factor).

    Attributes
    ----------
    C_X : numpy.ndarray
        ``A^-1 Lambda Z'X``.
    S : numpy.ndarray
        ``X'V^-1X``; ``cS`` its Cholesky factor (scipy's ``cho_factor``).
    beta, u : numpy.ndarray
    r2, logdet_S : float
    """

    C_X: np.ndarray
    S: np.ndarray
    cS: tuple
    beta: np.ndarray
    u: np.ndarray
    r2: float
    logdet_S: float

    @classmethod
    def of(cls, st: CrossedStats, theta: np.ndarray,
           solve: Callable[[np.ndarray], np.ndarray]) -> Profiled:
        """The solves' parts at ``theta`` (``solve``: ``A^-1`` on a block of columns)."""
        LZX = st.lam_t(theta, st.ZtX)
        LZy = st.lam_t(theta, st.Zty)
        sol = solve(np.column_stack([LZy, LZX]))
        c_y, C_X = sol[:, 0], sol[:, 1:]
        S = st.XtX - LZX.T @ C_X
        rhs = st.Xty - LZX.T @ c_y
        cS = la.cho_factor(S, lower=True)
        beta = la.cho_solve(cS, rhs)
        r2 = float(st.yty - LZy @ c_y - beta @ rhs)
        return cls(C_X, S, cS, beta, c_y - C_X @ beta, r2,
                   2.0 * float(np.sum(np.log(np.diag(cS[0])))))

    def criterion(self, logdet_A: float, st: CrossedStats, reml: bool) -> float:
        """lme4's REML criterion (``reml``) or deviance, given ``log|A|``."""
        n, p = st.n, st.XtX.shape[0]
        m = n - p if reml else n
        obj = logdet_A + m * (1.0 + math.log(2.0 * math.pi * self.r2 / m))
        return obj + self.logdet_S if reml else obj


def logdet_theta_gradient(red: Reduced, quad: Quadrature, theta: np.ndarray,
                          sizes: tuple[int, ...]) -> np.ndarray:
    """``d log|A| / d theta_k`` at fixed ``Z'WZ`` (``A = Lambda Z'WZ Lambda + I``):
    ``2 / theta_k (q_k - tr(A^-1 E_k))``, ``E_k`` factor ``k``'s levels, the traces from the
    log determinant's own recurrences (:meth:`Quadrature.trace_inverse`): the eliminated
    factor's ``sum 1/D + tr(S_A^-1 B' D^-2 B)``, another factor's ``tr(S_A^-1 E_k)``; 0 at
    ``theta_k = 0`` (the criterion is even in ``theta_k``)."""
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    s = quad.scale
    out = np.zeros(len(theta))
    for j, t in enumerate(theta):
        if t <= 0:
            continue
        lo, hi = bounds[j], bounds[j + 1]
        if j == 0:
            # q_1 - tr(A^-1 E_1) = sum (D - 1) / D - tr(S_A^-1 B' D^-2 B)
            D2 = red.D ** 2

            def apply_m(V: np.ndarray, D2: np.ndarray = D2) -> np.ndarray:
                return s[:, None] * red.BT(red.B(s[:, None] * V) / D2[:, None])
            trace_m = float(red.B2_D(1.0 / D2) @ (s * s))
            rest = float(np.sum((red.D - 1.0) / red.D)) - quad.trace_inverse(apply_m,
                                                                              trace_m)
        else:
            # q_k - tr(S_A^-1 E_k) = sum_k (1 - 1/P) - tr((S_A^-1 - P^-1) E_k)
            e = np.zeros(len(s))
            e[lo - red.k:hi - red.k] = 1.0
            m_diag = e * s * s

            def apply_m(V: np.ndarray, m_diag=m_diag) -> np.ndarray:
                return m_diag[:, None] * V
            rest = float(np.sum(e - m_diag)) - (quad.trace_inverse(apply_m, 0.0))
        out[j] = 2.0 / t * rest
    return out


def _gradient(st: CrossedStats, theta: np.ndarray, red: Reduced, quad: Quadrature,
              C_X: np.ndarray, cS: tuple, u: np.ndarray, dr2_scale: float,
              reml: bool) -> np.ndarray:
    """:func:`criterion`'s gradient (its docstring)."""
    bounds = np.concatenate([[0], np.cumsum(st.sizes)])
    grad = logdet_theta_gradient(red, quad, theta, st.sizes)
    for j, t in enumerate(theta):
        if t <= 0:  # the criterion is even in theta_k: flat at 0
            continue
        lo, hi = bounds[j], bounds[j + 1]
        d_r2 = -2.0 / t * float(u[lo:hi] @ u[lo:hi])
        grad[j] += dr2_scale * d_r2
        if reml:
            Ck = C_X[lo:hi]
            grad[j] += -2.0 / t * float(np.trace(la.cho_solve(cS, Ck.T @ Ck)))
    return grad


def vector_logdet_gradient(red: VectorReduced, quad: Quadrature, theta: np.ndarray,
                           sizes: tuple[int, ...]) -> np.ndarray:
    """``d log|A| / d theta`` at fixed ``Z'WZ`` with random slopes on the first factor
    (``Lambda_1 = I (x) T``; ``theta``: ``T``'s entries, then one per other factor). For an
    entry of ``T`` (``dT``: 1 there)::

        d log|A| = sum_l tr(D_l^-1 dD_l) + tr(S_A^-1 M)

    with ``dD_l = dT' G_l T + T' G_l dT`` and, from ``A^-1 = diag(D^-1, 0) + P S_A^-1 P'``
    (``P = [-F; I]``, ``F = D^-1 B``), ``M = F' dD F - F' dA_12 - dA_12' F``, ``dA_12 =
    (I (x) dT') N Lambda_r``: its trace against ``S_A^-1`` from the log determinant's own
    recurrences (:meth:`Quadrature.trace_values`), ``diag(M)`` exactly. As ``B' w = Lambda_r
    N' (I (x) T) w``, ``M v = Lambda_r N' Y`` with, level by level, ``Y_l = T D_l^-1 (dD_l
    (Fv)_l - dT' (N Lambda_r v)_l) - dT (Fv)_l``; so ``(x - z)' M z = sum_l (N Lambda_r
    (x - z))_l . Y_l`` for each start ``z`` and its solve ``x``: two products with ``N``
    for all the entries. Another factor's entry: ``2 / theta_k (q_k - tr(A^-1 E_k))`` as
    :func:`logdet_theta_gradient`'s; 0 at ``theta_k = 0``."""
    x, T, lam, s = red.x, red.T, red.lam, quad.scale
    r, L, k = x.r, x.levels, red.k
    nt = n_tri(r)
    G = x.n1
    W = np.einsum("lab,cb->lac", red.Dinv, T)  # W_l = D_l^-1 T': F's level blocks / N
    GT = np.einsum("lab,bc->lac", G, T)
    m = quad.starts.shape[1]
    sl = (s * lam)[:, None]
    Nz = red.N_dot(sl * quad.starts).reshape(L, r, m)  # N Lambda_r (s z), level by level
    Nd = red.N_dot(sl * (quad.solves - quad.starts)).reshape(L, r, m)
    Fz = np.matmul(W, Nz)  # F (s z)
    TD = np.einsum("ab,lbc->lac", T, red.Dinv)  # T D_l^-1
    out = np.zeros(len(theta))
    rows, cols = np.triu_indices(r)[::-1]
    for e, (a, b) in enumerate(zip(rows, cols)):
        dT = np.zeros((r, r))
        dT[a, b] = 1.0
        dD = np.einsum("ba,lbc->lac", dT, GT)
        dD = dD + dD.transpose(0, 2, 1)
        part1 = float(np.einsum("lab,lba->", red.Dinv, dD))
        WdT = np.einsum("lba,cb->lac", W, dT)  # W_l' dT'
        K = np.einsum("lba,lbc,lcd->lad", W, dD, W) - WdT - WdT.transpose(0, 2, 1)
        trace_m = float(np.sum(s * s * lam ** 2 * red.quad_cols(K)))
        Y = (np.matmul(TD, np.matmul(dD, Fz) - np.matmul(dT.T, Nz))
             - np.matmul(dT, Fz))
        out[e] = part1 + quad.trace_values(np.einsum("lac,lac->c", Nd, Y), trace_m)
    bounds = np.concatenate([[0], np.cumsum([L * r, *sizes[1:]])])
    for j in range(1, len(sizes)):
        t = float(theta[nt + j - 1])
        if t <= 0:  # the criterion is even in theta_j: flat at 0
            continue
        lo, hi = bounds[j], bounds[j + 1]
        # q_j - tr(S_A^-1 E_j) = sum_j (1 - 1/P) - tr((S_A^-1 - P^-1) E_j)
        e = np.zeros(len(s))
        e[lo - k:hi - k] = 1.0
        m_diag = e * s * s

        def apply_e(V: np.ndarray, m_diag: np.ndarray = m_diag) -> np.ndarray:
            return m_diag[:, None] * V
        out[nt + j - 1] = 2.0 / t * (float(np.sum(e - m_diag))
                                     - quad.trace_inverse(apply_e, 0.0))
    return out


def vector_gradient(st: CrossedStats, theta: np.ndarray, red: VectorReduced,
                    quad: Quadrature, pr: Profiled, dr2_scale: float, reml: bool
                    ) -> np.ndarray:
    """:func:`criterion`'s gradient with random slopes on the first factor (``Lambda_1 =
    I (x) T``), in each entry of ``T`` and each other factor's ``theta``.

    ``log|A|``'s part by :func:`vector_logdet_gradient`; for an entry of ``T`` (``dT``: 1
    there), with ``r = y - X beta - Z Lambda u``, ``C = A^-1 Lambda'Z'X`` and ``R_X = Z'X -
    Z'Z Lambda C``::

        d r2      = -2 sum_l (Z_1'r)_l' dT u_l                       (envelope)
        d log|S|  = -2 tr(S^-1 sum_l C_l' dT' (R_X)_l)

    The other factors' entries are the scalar path's (:func:`_gradient`); 0 at
    ``theta_k = 0``."""
    r, L = st.cols, st.sizes[0]
    nt, k = n_tri(r), red.k
    x, T, lam = red.x, red.T, red.lam
    G = x.n1
    p = st.XtX.shape[0]
    u1, ur = pr.u[:k].reshape(L, r), pr.u[k:]
    # Z_1'r and R_X's first block: Z_1'(.) minus G_l T (.)_l minus N Lambda_r (.)_r
    Zr = ((st.Zty - st.ZtX @ pr.beta)[:k].reshape(L, r)
          - np.einsum("lab,lb->la", G, u1 @ T.T) - red.N_dot(lam * ur).reshape(L, r))
    C1, Cr = pr.C_X[:k].reshape(L, r, p), pr.C_X[k:]
    RX1 = (st.ZtX[:k].reshape(L, r, p)
           - np.einsum("lab,lbp->lap", G, np.einsum("ab,lbp->lap", T, C1))
           - red.N_dot(lam[:, None] * Cr).reshape(L, r, p))
    S_inv = la.cho_solve(pr.cS, np.eye(p))
    grad = vector_logdet_gradient(red, quad, theta, st.sizes)
    rows, cols = np.triu_indices(r)[::-1]
    for m, (a, b) in enumerate(zip(rows, cols)):
        dT = np.zeros((r, r))
        dT[a, b] = 1.0
        grad[m] += dr2_scale * -2.0 * float(np.einsum("la,ab,lb->", Zr, dT, u1))
        if reml:
            Y = np.einsum("lap,ba,lbq->pq", C1, dT, RX1)
            grad[m] += -2.0 * float(np.sum(S_inv * Y.T))
    bounds = np.concatenate([[0], np.cumsum(st.q_sizes)])
    for j in range(1, len(st.sizes)):
        t = float(theta[nt + j - 1])
        if t <= 0:
            continue
        lo, hi = bounds[j], bounds[j + 1]
        g = dr2_scale * -2.0 / t * float(ur[lo - k:hi - k] @ ur[lo - k:hi - k])
        if reml:
            Cj = pr.C_X[lo:hi]
            g += -2.0 / t * float(np.trace(la.cho_solve(pr.cS, Cj.T @ Cj)))
        grad[nt + j - 1] += g
    return grad
