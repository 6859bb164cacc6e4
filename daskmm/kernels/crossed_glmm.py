"""glmer's Laplace criterion for crossed scalar random effects without a dense block (pure
numpy/scipy; issue 31's GLMM paths): the LMM's crossed machinery
(:mod:`daskmm.kernels.crossed_iter`, :mod:`daskmm.kernels.crossed_sparse`) with the Fisher
weights of each PIRLS step in place of the prior weights.

For fixed ``(theta, beta)`` the spherical modes ``u`` (``b = Lambda u``, ``Lambda`` a factor's
``theta`` on each of its levels) minimise the penalised deviance ``-2 sum log p(y | eta) +
|u|^2``, ``eta = X beta + offset + Z Lambda u``. Each PIRLS step takes the Fisher weights
``W`` and working residual ``r = Z Lambda u + (y - mu) / mu_eta`` at the current ``u``
(:func:`weighted_pass`, one pass over the rows: the weighted level counts, the weighted
crossing tables on a pattern fixed for the fit, and ``Z'W r``) and solves

    (Lambda Z'WZ Lambda + I) u_new = Lambda Z'W r,

halving the step while the penalised deviance rises (as lme4). At the modes, with ``A`` at
the weights there, the Laplace criterion is

    -2 sum log p(y | eta) + |u|^2 + log|A|        (lme4's ``nAGQ = 1`` deviance),

the family's normalising constants added by the caller. ``A``'s first factor (the one with
most levels) is eliminated exactly (:class:`~daskmm.kernels.crossed_iter.Reduced`); on the
sparse path the Schur complement of the others is factored by SuperLU (solves and ``log|A|``
exact), on the matrix-free path it is solved by conjugate gradients and ``log|A|`` estimated
by stochastic Lanczos quadrature with probes fixed by a seed (its standard error reported).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from daskmm.kernels import scalar_re as K
from daskmm.kernels.crossed_iter import (
    Crossing,
    Quadrature,
    Reduced,
    VectorCrossing,
    VectorReduced,
    deflation_basis,
    lambda_apply,
    lambda_t,
    level_codes,
    logdet_theta_gradient,
    n_tri,
    slq,
    spmm,
    vector_logdet_gradient,
)
from daskmm.kernels.crossed_leverage_jit import leverage_rows
from daskmm.kernels.crossed_rows_jit import add_first_zb, first_sums, table_sums
from daskmm.kernels.crossed_sparse import SparseFactor
from daskmm.kernels.scalar_re import inverse_link, row_terms_parallel

MAX_ITER = 200
"""PIRLS steps at most in one evaluation."""
TOL_U = 1e-11
"""PIRLS stops when a full step moves no spherical mode by more than ``TOL_U (1 + max|u|)``:
the criterion's error is then far below what the optimiser's finite differences resolve."""
STEP_MARGIN = 3
"""The matrix-free path's Lanczos steps: those its quadratures needed to converge to 1e-10 at
the first evaluation, plus this many (Gauss quadrature converges geometrically: a step more
or less moves the estimate far below its standard error)."""
CG_TOL = 1e-12
"""Conjugate gradients' relative residual on the matrix-free path."""
_W_MIN = 1e-300
_W_MAX = 1e100
_EMPTY, _EMPTY2, _EMPTY3 = np.zeros(0), np.zeros((0, 0)), np.zeros((0, 0, 0))
"""Empty arrays for :func:`~daskmm.kernels.crossed_rows_jit.first_sums`'s skipped sums."""


@dataclass
class CrossedRows:
    """One partition's rows for the crossed Laplace criterion, kept where they are for the
    whole fit.

    Attributes
    ----------
    X, y, wt, offset : numpy.ndarray
        Fixed-effects matrix, response (binomial successes), trials or prior weights,
        offset.
    codes : list of numpy.ndarray
        Each factor's level code per row (the factors in the criterion's order: most
        levels first).
    const : float
        The family's log normalising constants, summed.
    n_dropped : object
        Rows dropped for a missing value, by column.
    pos : dict
        ``(j, k) -> (places, index)``: the partition's places on the crossing table's
        pattern and each row's index among them (:func:`with_pattern`).
    Zs : numpy.ndarray or None
        The first factor's term columns (``n x r``, ``r > 1``: random slopes on it), else
        a random intercept.
    """

    X: np.ndarray
    y: np.ndarray
    wt: np.ndarray
    offset: np.ndarray
    codes: list[np.ndarray]
    const: float
    n_dropped: object
    pos: dict = field(default_factory=dict)
    nb_k: float = 0.0
    Zs: np.ndarray | None = None
    _eta0: tuple | None = None

    def zb(self, b: list[np.ndarray]) -> np.ndarray:
        """``Z b`` per row, ``b`` each factor's modes on its levels (the first factor's
        ``(level, column)`` entries, level after level, with random slopes)."""
        zb = np.zeros(len(self.y))
        for j, (c, bk) in enumerate(zip(self.codes, b)):
            if j == 0 and self.Zs is not None:
                r = self.Zs.shape[1]
                add_first_zb(c, self.Zs, np.ascontiguousarray(bk.reshape(-1, r)), zb)
            else:
                zb += bk[c]
        return zb

    def level_sums(self, v: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
        """``Z'v``: each factor's level sums of ``v`` (per column, with random slopes)."""
        out = []
        for j, (c, L) in enumerate(zip(self.codes, sizes)):
            if j == 0 and self.Zs is not None:
                S = np.zeros((L, self.Zs.shape[1]))
                first_sums(c, self.Zs, _EMPTY, np.asarray(v, float), _EMPTY3, S)
                out.append(S.ravel())
            else:
                out.append(np.bincount(c, weights=v, minlength=L))
        return np.concatenate(out)

    def weighted_counts(self, w: np.ndarray, sizes: tuple[int, ...]) -> list[np.ndarray]:
        """``Z'WZ``'s diagonal blocks: each factor's weighted level counts (the first
        factor's ``r x r`` Gram matrices with random slopes)."""
        out = []
        for j, (c, L) in enumerate(zip(self.codes, sizes)):
            if j == 0 and self.Zs is not None:
                r = self.Zs.shape[1]
                G = np.zeros((L, r, r))
                first_sums(c, self.Zs, np.asarray(w, float), _EMPTY, G, _EMPTY2)
                for a in range(r):
                    for b in range(a):
                        G[:, b, a] = G[:, a, b]
                out.append(G)
            else:
                out.append(np.bincount(c, weights=w, minlength=L))
        return out

    def weighted_tables(self, w: np.ndarray) -> dict:
        """``(j, k) -> (places, values)``: the partition's part of each weighted crossing
        table on its pattern (values ``places x r`` for the first factor's tables with
        random slopes)."""
        out = {}
        for (j, k), (at, ix) in self.pos.items():
            if j == 0 and self.Zs is not None:
                vals = np.zeros((len(at), self.Zs.shape[1]))
                table_sums(ix, self.Zs, np.asarray(w, float), vals)
            else:
                vals = np.bincount(ix, weights=w, minlength=len(at))
            out[(j, k)] = (at, vals)
        return out

    def eta_fixed(self, beta: np.ndarray) -> np.ndarray:
        """``X beta + offset``, kept for the last ``beta`` (every PIRLS step of an
        evaluation uses it)."""
        if self._eta0 is not None and np.array_equal(self._eta0[0], beta):
            return self._eta0[1]
        eta0 = self.X @ beta + self.offset
        self._eta0 = (np.array(beta, float), eta0)
        return eta0


def crossed_rows(X: np.ndarray, y: np.ndarray, wt: np.ndarray, offset: np.ndarray,
                 keys: list[np.ndarray], levels: list[np.ndarray], const: float,
                 n_dropped: object, slopes: np.ndarray | None = None) -> CrossedRows:
    """:class:`CrossedRows` of encoded rows, each factor's per-row ``keys`` coded against its
    frozen ``levels``; ``slopes``: the first factor's term columns (random slopes)."""
    codes = level_codes(keys, levels)
    Zs = None if slopes is None else np.ascontiguousarray(slopes, float)
    return CrossedRows(np.ascontiguousarray(X, float), np.asarray(y, float),
                       np.asarray(wt, float), np.asarray(offset, float), codes, float(const),
                       n_dropped, Zs=Zs)


def pair_keys(rows: CrossedRows, sizes: tuple[int, ...]) -> dict:
    """``(j, k) -> `` the distinct ``code_j * sizes[k] + code_k`` of the partition: its part
    of each crossing table's pattern."""
    K = len(rows.codes)
    return {(j, k): _distinct(rows.codes[j] * sizes[k] + rows.codes[k])
            for j in range(K) for k in range(j + 1, K)}


def _distinct(keys: np.ndarray) -> np.ndarray:
    """The sorted distinct values of integer ``keys``, by a sort (``numpy.unique``'s
    hashing takes 1.3 s for 10^6 distinct int64 keys, a sort 0.02 s)."""
    s = np.sort(keys)
    return s[np.concatenate([[True], s[1:] != s[:-1]])] if len(s) else s


def with_pattern(rows: CrossedRows, patterns: dict, sizes: tuple[int, ...]) -> CrossedRows:
    """``rows`` with each row placed in the fit's crossing-table patterns (``(j, k) ->``
    sorted distinct keys over all partitions, :func:`pair_keys`): a new object (a task's
    result, never its input changed in place).

    The rows come back ordered by their first factor's level, then the second's (their
    place on the first crossing table): every pass then reads and writes its level and
    pattern arrays in order, not at random (a table's sums over 10^6 random rows take 8
    times as long). Nothing per row leaves these rows (predictions and residuals come from
    the data as read), and the sums are the same up to their order of addition."""
    order = np.lexsort(rows.codes[1::-1]) if len(rows.codes) > 1 else None
    if order is not None and not np.all(order[1:] > order[:-1]):
        rows = dataclasses.replace(
            rows, X=rows.X[order], y=rows.y[order], wt=rows.wt[order],
            offset=rows.offset[order], codes=[c[order] for c in rows.codes],
            Zs=None if rows.Zs is None else rows.Zs[order])
    pos = {}
    for (j, k), keys in patterns.items():
        # the partition's own places on the pattern, and each row's among them: a pass sends
        # the partition's part of each table, not the whole pattern
        pos[(j, k)] = np.unique(np.searchsorted(keys, rows.codes[j] * sizes[k] + rows.codes[k]),
                                return_inverse=True)
    return dataclasses.replace(rows, pos=pos, _eta0=None)


@dataclass(frozen=True)
class WeightedPass:
    """What one PIRLS step needs of the rows at one ``u`` (summed over partitions by
    :func:`add_passes`).

    Attributes
    ----------
    ll : float
        The log-likelihood without the family's constants (``-inf``: the point is unusable,
        far in a tail).
    counts : list of numpy.ndarray
        Each factor's Fisher-weighted level counts (``diag(Z'WZ)``; with random slopes the
        first factor's ``L x r x r`` Gram matrices).
    tables : dict
        ``(j, k) ->`` the weighted crossing table's values on its pattern (a partition's
        pass: ``(places, values)``, its part of it; :func:`add_passes` makes the whole;
        ``places x r`` values for the first factor's tables with random slopes).
    Ztwr : numpy.ndarray
        ``Z'W r`` (all factors' levels in order).
    crossing : object or None
        Where the first factor's tables are held elsewhere (their values then absent from
        ``tables``): what gives ``A`` at a ``theta`` (``crossing.at(theta, sizes)``, a
        :class:`~daskmm.kernels.crossed_iter.Reduced`; :mod:`daskmm.kernels.
        crossed_blocks`).
    """

    ll: float
    counts: list
    tables: dict
    Ztwr: np.ndarray
    crossing: object | None = None


def weighted_pass(rows: CrossedRows, beta: np.ndarray, b: list[np.ndarray], family: int,
                  link: int, sizes: tuple[int, ...]) -> WeightedPass:
    """:class:`WeightedPass` of a partition at the modes ``b`` (each factor's, on its
    levels): Fisher weights and working residuals by :func:`daskmm.kernels.scalar_re.
    row_terms_parallel`, sums by ``bincount`` (compiled loops with random slopes)."""
    zb = rows.zb(b)
    ll, sc, w = row_terms_parallel(rows.eta_fixed(beta) + zb, rows.y, rows.wt, rows.nb_k,
                                   family, link)
    if not (np.isfinite(ll).all() and np.all(w < _W_MAX)):
        return WeightedPass(-math.inf, [], {}, np.zeros(0))
    w = np.maximum(w, _W_MIN)
    wr = w * zb + sc  # W r, r = Z b + score / W
    if rows.Zs is not None:
        return WeightedPass(float(ll.sum()), rows.weighted_counts(w, sizes),
                            rows.weighted_tables(w), rows.level_sums(wr, sizes))
    return WeightedPass(
        float(ll.sum()),
        [np.bincount(c, weights=w, minlength=L) for c, L in zip(rows.codes, sizes)],
        {jk: (at, np.bincount(ix, weights=w, minlength=len(at)))
         for jk, (at, ix) in rows.pos.items()},
        np.concatenate([np.bincount(c, weights=wr, minlength=L)
                        for c, L in zip(rows.codes, sizes)]))


def add_passes(parts: list[WeightedPass], npattern: dict) -> WeightedPass:
    """The sum of partitions' :func:`weighted_pass` (unusable if any is): each table's parts
    ``(places, values)`` added onto its whole pattern (``npattern``: its non-zeros)."""
    if any(not math.isfinite(p.ll) for p in parts):
        return WeightedPass(-math.inf, [], {}, np.zeros(0))
    first = parts[0]

    def add(jk) -> np.ndarray:
        at = np.concatenate([p.tables[jk][0] for p in parts])
        vals = np.concatenate([p.tables[jk][1] for p in parts])
        if vals.ndim == 1:
            return np.bincount(at, weights=vals, minlength=npattern[jk])
        return np.column_stack([np.bincount(at, weights=v, minlength=npattern[jk])
                                for v in vals.T])
    tables = {jk: add(jk) for jk in first.tables}
    return WeightedPass(float(sum(p.ll for p in parts)),
                        [sum(p.counts[j] for p in parts) for j in range(len(first.counts))],
                        tables, sum(p.Ztwr for p in parts))


def has_gradient(family: int, link: int) -> bool:
    """Whether :meth:`CrossedLaplace.gradient` applies: a canonical link (the binomial's
    logit, the Poisson's log), where PIRLS's weights are the observed information."""
    return (family, link) in ((K.BINOMIAL, K.LOGIT), (K.POISSON, K.LOG))


def _weights_slope(eta: np.ndarray, w: np.ndarray, family: int,
                   link: int) -> np.ndarray:
    """``dW / d eta`` per row for a canonical link: ``W (1 - 2 mu)`` for the binomial's
    logit, ``W`` for the Poisson's log."""
    if family == K.BINOMIAL:
        return w * (1.0 - 2.0 * inverse_link(eta, link))
    return w


def _at_modes(rows: CrossedRows, beta, b, family, link):
    eta = rows.eta_fixed(beta) + rows.zb(b)
    _, sc, w = row_terms_parallel(eta, rows.y, rows.wt, rows.nb_k, family, link)
    return eta, sc, w


def direct_theta(rows: CrossedRows, u: list[np.ndarray]) -> np.ndarray:
    """``Z (d Lambda / d theta_m) u`` per row, one column a ``theta`` entry: ``Z_k u_k`` for
    a random intercept's; with random slopes on the first factor, ``z_a u_{l, b}`` for its
    ``T``'s entry ``(a, b)`` (``l`` the row's level)."""
    cols = []
    for j, (c, uk) in enumerate(zip(rows.codes, u)):
        if j == 0 and rows.Zs is not None:
            r = rows.Zs.shape[1]
            U = uk.reshape(-1, r)[c]
            cols += [rows.Zs[:, a] * U[:, b]
                     for a, b in zip(*np.triu_indices(r)[::-1])]
        else:
            cols.append(uk[c])
    return np.column_stack(cols)


def gradient_sums(rows: CrossedRows, beta: np.ndarray, b: list[np.ndarray],
                  u: list[np.ndarray], family: int, link: int, sizes: tuple[int, ...]
                  ) -> tuple:
    """A partition's sums at the modes for :meth:`CrossedLaplace.gradient`: ``Z's``,
    ``X's``, ``Z'WX`` and, for each ``theta`` entry, ``Z'W Z (d Lambda / d theta_m) u``
    (``s`` the rows' scores, ``u`` the spherical modes, :func:`direct_theta`)."""
    _, sc, w = _at_modes(rows, beta, b, family, link)
    ZtWX = np.column_stack([rows.level_sums(w * rows.X[:, j], sizes)
                            for j in range(rows.X.shape[1])])
    D = direct_theta(rows, u)
    ZtWZu = np.column_stack([rows.level_sums(w * D[:, m], sizes) for m in range(D.shape[1])])
    return rows.level_sums(sc, sizes), rows.X.T @ sc, ZtWX, ZtWZu


@dataclass(frozen=True)
class RowLeverage:
    """What gives each row ``i`` its leverage ``rho_i = m_i' Ahat^-1 m_i`` (``m_i`` row ``i``
    of ``M = Z Lambda``; ``Ahat^-1`` the log determinant's estimator of ``A^-1``: the first
    factor eliminated exactly, ``S^-1``'s identity part and diagonal exactly, the rest by the
    quadrature's deflation basis and probes), so that for any row weights ``v``

        tr(A^-1 M' diag(v) M)  is estimated by  sum_i v_i rho_i,

    the same estimate, term by term, as taking the trace of each weighted ``K = M'VM``
    through the probes (``A^-1 = diag(D^-1, 0) + P S^-1 P'``, ``P = [-F; I]``, ``F =
    D^-1 B``, and ``MP = M_rest - M_1 F`` row by row). Made on the client
    (:func:`leverage_of`) from level and pair quantities; the rows' sums
    (:func:`gradient_traces`) run where the rows are. In ``z``-space: ``z_i`` the row's
    first-factor term columns (1 for a random intercept), ``R_l = T D_l^-1 T'``.

    Attributes
    ----------
    P : numpy.ndarray
        ``L x r x r``: ``R_l + sum_h s_h^2 f_lh f_lh'`` (``f_lh = R_l n_lh lambda_h``, ``s``
        the Jacobi scaling of ``S``), the exact part of ``z_i' . z_i``.
    sig : numpy.ndarray
        ``s_h^2 lambda_h^2`` on the other factors' levels (``h``; all of them in order).
    phi : numpy.ndarray
        ``-2 s_h^2 lambda_h f_lh`` on the crossing tables' patterns, the first factor's
        table with each other factor after the last (``nnz x r``).
    YD, YZ : numpy.ndarray
        ``lambda_h s_h (x_c - z_c)`` and ``lambda_h s_h z_c`` on the other factors' levels
        (``z_c`` the quadrature's start vectors, ``x_c`` their solves; ``q_rest x m``).
    FD, FZ : numpy.ndarray
        ``L x r x m``: ``R_l (N Lambda s (x - z))_l`` and ``R_l (N Lambda s z)_l``.
    gamma : numpy.ndarray
        Each start vector's weight: 1 for the deflation basis's, ``1 / probes`` for the
        probes'.
    h_offsets, p_offsets : numpy.ndarray
        Where each other factor's levels start in ``sig``, ``YD`` and ``YZ``, and its table
        in ``phi``.
    """

    P: np.ndarray
    sig: np.ndarray
    phi: np.ndarray
    YD: np.ndarray
    YZ: np.ndarray
    FD: np.ndarray
    FZ: np.ndarray
    gamma: np.ndarray
    h_offsets: np.ndarray
    p_offsets: np.ndarray

    def __sizeof__(self) -> int:
        """Its arrays' bytes (what ``sys.getsizeof``, and so ``dask.sizeof``, report): a
        map over the partitions then sends it to the cluster once, not inside every
        task."""
        return object.__sizeof__(self) + sum(
            v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))


def leverage_of(red: Reduced, quad: Quadrature, wp: WeightedPass, patterns: Patterns
                ) -> RowLeverage:
    """:class:`RowLeverage` of ``A`` reduced as ``red`` at the weights of the pass ``wp``
    (the modes'), with its log determinant's recurrences ``quad``."""
    sizes = patterns.sizes
    L = sizes[0]
    if isinstance(red, VectorReduced):
        r = red.x.r
        R = np.einsum("ab,lbc,dc->lad", red.T, red.Dinv, red.T)  # T D_l^-1 T'
    else:
        r = 1
        R = (red.t1 * red.t1 / red.D)[:, None, None]
    s, lam = quad.scale, red.lam
    offs = np.concatenate([[0], np.cumsum(sizes[1:])])
    Q = np.zeros((L, r, r))
    tables = []
    for k in range(1, len(sizes)):
        indptr, idx = patterns.csr[(0, k)]
        g = np.repeat(np.arange(L), np.diff(indptr))
        Qk, phi = leverage_entries(R, lam, s, g, offs[k - 1] + idx,
                                   np.asarray(wp.tables[(0, k)], float).reshape(len(idx), r))
        Q += Qk
        tables.append(phi)
    m = quad.starts.shape[1]
    lamY = leverage_starts(quad, lam)
    FY = np.matmul(R, spmm(red.x.N, lamY).reshape(L, r, 2 * m))
    return row_leverage_of(R + Q, FY, lamY, quad, lam, sizes, np.concatenate(tables),
                           [len(t) for t in tables])


def leverage_entries(R: np.ndarray, lam: np.ndarray, s: np.ndarray, g: np.ndarray,
                     col: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The crossing's entries' part of :class:`RowLeverage`: ``Q`` (``L x r x r``: each
    level's ``sum_j s_j^2 f_lj f_lj'``) and ``phi`` (``-2 s_j^2 lam_j f_lj`` per entry),
    ``f_lj = R_l n_lj lam_j`` over the entries at levels ``g`` and other-factor columns
    ``col``, with values ``vals`` (``entries x r``); ``R = T D^-1 T'`` per level."""
    L, r = R.shape[0], R.shape[1]
    f = np.einsum("pab,pb->pa", R[g], vals) * lam[col][:, None]
    s2 = s[col] ** 2
    Q = np.zeros((L, r, r))
    for a in range(r):
        for b in range(a + 1):
            Q[:, a, b] = np.bincount(g, weights=s2 * f[:, a] * f[:, b], minlength=L)
            Q[:, b, a] = Q[:, a, b]
    return Q, (-2.0 * s2 * lam[col])[:, None] * f


def leverage_starts(quad: Quadrature, lam: np.ndarray) -> np.ndarray:
    """``Lambda_r P^-1/2 [x - z, z]``: the log determinant's solves less their starts, then
    the starts, in the model's scale."""
    Y = quad.scale[:, None] * np.hstack([quad.solves - quad.starts, quad.starts])
    return lam[:, None] * Y


def row_leverage_of(P: np.ndarray, FY: np.ndarray, lamY: np.ndarray, quad: Quadrature,
                    lam: np.ndarray, sizes: tuple[int, ...], phi: np.ndarray | None,
                    table_sizes: list[int]) -> RowLeverage:
    """:class:`RowLeverage` from its level-sized parts (``P``, ``FY = R N lamY``) and the
    crossing entries' ``phi`` (``None`` where it is held elsewhere and given to
    :func:`gradient_traces` apart)."""
    s = quad.scale
    m = quad.starts.shape[1]
    offs = np.concatenate([[0], np.cumsum(sizes[1:])])
    probes = m - quad.k
    gamma = np.concatenate([np.ones(quad.k), np.full(probes, 1.0 / max(probes, 1))])
    return RowLeverage(P, (s * lam) ** 2, _EMPTY if phi is None else phi,
                       np.ascontiguousarray(lamY[:, :m]), np.ascontiguousarray(lamY[:, m:]),
                       np.ascontiguousarray(FY[:, :, :m]), np.ascontiguousarray(FY[:, :, m:]),
                       gamma, offs[:-1].astype(np.int64),
                       np.cumsum([0] + list(table_sizes[:-1])).astype(np.int64))


def row_leverage(rows: CrossedRows, lev: RowLeverage) -> np.ndarray:
    """Each row's ``rho_i`` (:class:`RowLeverage`; compiled, the rows shared out over the
    cores: :func:`~daskmm.kernels.crossed_leverage_jit.leverage_rows`)."""
    n, K = len(rows.y), len(rows.codes)
    hq = np.empty((K - 1, n), np.int64)
    pq = np.empty((K - 1, n), np.int64)
    for k in range(1, K):
        at, ix = rows.pos[(0, k)]
        hq[k - 1] = rows.codes[k] + lev.h_offsets[k - 1]
        pq[k - 1] = at[ix] + lev.p_offsets[k - 1]
    z = np.ones((n, 1)) if rows.Zs is None else rows.Zs
    out = np.empty(n)
    leverage_rows(np.asarray(rows.codes[0], np.int64), z, hq, pq, lev.P, lev.FD, lev.FZ,
                  lev.YD, lev.YZ, lev.sig, lev.phi, lev.gamma, out)
    return out


def gradient_traces(rows: CrossedRows, beta: np.ndarray, b: list[np.ndarray],
                    u: list[np.ndarray], bdu: list[np.ndarray], family: int, link: int,
                    lev: RowLeverage, sizes: tuple[int, ...], phi: np.ndarray | None = None
                    ) -> np.ndarray:
    """A partition's part of ``tr(A^-1 M' diag(v_phi) M)`` for each parameter (the ``theta``
    entries, then ``beta``): ``sum_i v_phi,i rho_i`` (:func:`row_leverage`), ``v_phi = W'
    d eta / d phi``, ``d eta / d phi = Z (d Lambda / d theta_m) u`` (:func:`direct_theta`)
    or ``X_j``, plus ``Z Lambda du / d phi`` (``bdu``: each factor's ``Lambda du`` on its
    levels, one column a parameter). With ``t = W' rho`` these are ``t' Z (d Lambda) u``,
    ``X't`` and ``(Z't)' Lambda du``: one pass of level sums of ``t``, no row-sized
    matrix. ``phi``: :attr:`RowLeverage.phi` where it came apart from ``lev``."""
    if phi is not None:
        lev = dataclasses.replace(lev, phi=phi)
    eta, _, w = _at_modes(rows, beta, b, family, link)
    t = _weights_slope(eta, w, family, link) * row_leverage(rows, lev)
    zt = rows.level_sums(t, sizes)
    parts = np.split(zt, np.cumsum([len(uk) for uk in u])[:-1])
    direct = []
    for j, (ztk, uk) in enumerate(zip(parts, u)):
        if j == 0 and rows.Zs is not None:  # T's entry (a, b): sum_l (Z_1't)_{l,a} u_{l,b}
            r = rows.Zs.shape[1]
            Zt1, U1 = ztk.reshape(-1, r), uk.reshape(-1, r)
            direct += [float(Zt1[:, a] @ U1[:, b])
                       for a, b in zip(*np.triu_indices(r)[::-1])]
        else:
            direct.append(float(ztk @ uk))
    return np.concatenate([direct, rows.X.T @ t]) + zt @ np.vstack(bdu)


@dataclass(frozen=True)
class Patterns:
    """The crossing tables' sparsity patterns, fixed for a fit: ``(j, k) -> (indptr,
    indices)`` of the CSR matrix whose values :func:`weighted_pass` gives."""

    sizes: tuple[int, ...]
    csr: dict

    @classmethod
    def of(cls, keys: dict, sizes: tuple[int, ...]) -> Patterns:
        """From the sorted distinct pair keys (:func:`pair_keys`, merged)."""
        csr = {}
        for (j, k), kk in keys.items():
            r = kk // sizes[k]
            csr[(j, k)] = (np.searchsorted(r, np.arange(sizes[j] + 1)).astype(np.int64),
                           (kk % sizes[k]).astype(np.int32))
        return cls(tuple(sizes), csr)

    @property
    def nnz(self) -> dict:
        return {jk: len(ix) for jk, (_, ix) in self.csr.items()}

    def crossing(self, wp: WeightedPass) -> Crossing:
        """:class:`~daskmm.kernels.crossed_iter.Crossing` of ``Z'WZ`` at a pass's weights:
        its matrices' structures (the eliminated factor's crossings, their transpose and
        square, the other factors' block) are made once, each entry marked with where its
        value sits among the counts and table values; each PIRLS step only gathers the
        values (no transpose, product or assembly). With random slopes on the first factor
        (its counts ``L x r x r``) a :class:`~daskmm.kernels.crossed_iter.VectorCrossing`,
        assembled at each step."""
        if np.ndim(wp.counts[0]) == 3:
            return self._vector_crossing(wp)
        t = self._template()
        vals = np.concatenate([np.concatenate([np.asarray(c, float) for c in wp.counts]),
                               *(wp.tables[jk] for jk in sorted(self.csr))])

        def fill(M: sp.csr_matrix, marks: np.ndarray, square: bool = False) -> sp.csr_matrix:
            v = vals[marks]
            return sp.csr_matrix((v * v if square else v, M.indices, M.indptr), shape=M.shape)

        N = fill(t["N"], t["N_marks"])
        rest = fill(t["rest"], t["rest_marks"])
        rest_diag = vals[t["rest_diag_marks"]]
        return Crossing(len(wp.counts[0]), np.asarray(wp.counts[0], float), N,
                        fill(t["NT"], t["NT_marks"]), fill(t["NT"], t["NT_marks"], True),
                        rest, rest_diag, len(self.sizes) == 2)

    def _vector_crossing(self, wp: WeightedPass) -> VectorCrossing:
        """:meth:`crossing` with random slopes on the first factor: ``N`` and its transpose
        gathered into structures made once (:meth:`_vector_template`), the crossing's
        entries by pair of levels kept for :meth:`~daskmm.kernels.crossed_iter.
        VectorCrossing.quad_cols`; the other factors' block assembled (three factors or
        more)."""
        G = np.asarray(wp.counts[0], float)
        r = G.shape[1]
        t = self._vector_template(r)
        K = len(self.sizes)
        vals = np.vstack([np.asarray(wp.tables[(0, k)], float).reshape(-1, r)
                          for k in range(1, K)])
        flat = vals.ravel()
        N = sp.csr_matrix((flat[t["N_marks"]], t["N_indices"], t["N_indptr"]),
                          shape=t["N_shape"])
        NT = sp.csr_matrix((flat[t["NT_marks"]], t["NT"].indices, t["NT"].indptr),
                           shape=t["NT"].shape)
        if K == 2:
            rest = sp.diags(np.asarray(wp.counts[1], float), format="csr")
        else:
            blocks: list[list] = [[None] * (K - 1) for _ in range(K - 1)]
            for j in range(1, K):
                blocks[j - 1][j - 1] = sp.diags(np.asarray(wp.counts[j], float))
                for m in range(j + 1, K):
                    ptr, ix = self.csr[(j, m)]
                    T = sp.csr_matrix((wp.tables[(j, m)], ix, ptr),
                                      shape=(self.sizes[j], self.sizes[m]))
                    blocks[j - 1][m - 1], blocks[m - 1][j - 1] = T, T.T
            rest = sp.bmat(blocks, format="csr")
        rest_diag = np.concatenate([np.asarray(c, float) for c in wp.counts[1:]])
        return VectorCrossing(self.sizes[0] * r, G, N, NT, None, rest, rest_diag, K == 2, r,
                              (), (vals[t["src"]], t["cols"], t["lev"]))

    def drop_templates(self) -> None:
        """Forget the structures :meth:`crossing` made (pattern-sized: where the tables are
        held elsewhere, their client copy would only take memory)."""
        self.__dict__.pop("_cached", None)
        self.__dict__.pop("_vcached", None)

    def _vector_template(self, r: int) -> dict:
        """The structures of :meth:`_vector_crossing` for ``r`` columns, made once: the
        first factor's crossings side by side, level-major (each pattern entry's level,
        other-factors column and place among the tables' values), ``N``'s rows ``(level,
        column)`` and its transpose, each entry marking its value's place."""
        cached = self.__dict__.get("_vcached")
        if cached is not None and cached["r"] == r:
            return cached
        L, K = self.sizes[0], len(self.sizes)
        offs = np.cumsum([0, *self.sizes[1:]])
        lev, cols, src, base = [], [], [], 0
        for k in range(1, K):
            ptr, ix = self.csr[(0, k)]
            lev.append(np.repeat(np.arange(L), np.diff(ptr)))
            cols.append(ix.astype(np.int64) + offs[k - 1])
            src.append(base + np.arange(len(ix)))
            base += len(ix)
        lev, cols, src = np.concatenate(lev), np.concatenate(cols), np.concatenate(src)
        order = np.lexsort((cols, lev))  # level-major, the other factors' levels in order
        lev, cols, src = lev[order], cols[order], src[order]
        out = {"r": r, "lev": lev, "cols": cols, "src": src,
               **rows_by_level(lev, cols, src, L, r, int(offs[-1]))}
        object.__setattr__(self, "_vcached", out)
        return out

    def _template(self) -> dict:
        """The structures of :meth:`crossing`, their entries marking positions in the values
        (``1 +`` the position: a structural entry is never zero)."""
        cached = self.__dict__.get("_cached")
        if cached is not None:
            return cached
        offs = np.concatenate([[0], np.cumsum(self.sizes)])
        pos = int(offs[-1])
        counts = [np.arange(offs[j], offs[j + 1], dtype=float) + 1.0
                  for j in range(len(self.sizes))]
        tables = {}
        for jk in sorted(self.csr):
            ptr, ix = self.csr[jk]
            tables[jk] = sp.csr_matrix((np.arange(pos, pos + len(ix), dtype=float) + 1.0,
                                        ix, ptr), shape=(self.sizes[jk[0]], self.sizes[jk[1]]))
            pos += len(ix)
        x = Crossing.of_blocks(counts, tables)
        for M in (x.N, x.NT, x.rest):
            M.sort_indices()

        def marks(M: sp.csr_matrix) -> np.ndarray:
            return np.rint(M.data).astype(np.int64) - 1

        out = {"N": x.N, "N_marks": marks(x.N), "NT": x.NT, "NT_marks": marks(x.NT),
               "rest": x.rest, "rest_marks": marks(x.rest),
               "rest_diag_marks": np.rint(x.rest_diag).astype(np.int64) - 1}
        object.__setattr__(self, "_cached", out)
        return out


def rows_by_level(lev: np.ndarray, cols: np.ndarray, src: np.ndarray, L: int, r: int,
                  ncols: int) -> dict:
    """The structure of ``N`` with rows ``(level, column)`` (``L r`` of them, level after
    level) and of its transpose, from the crossing's entries sorted level-major (their level
    ``lev``, other-factors column ``cols`` and place ``src`` among the values as the tables
    give them, ``entries x r``): each non-zero marks its value's place in those values,
    flattened (``N_marks``, ``NT_marks``)."""
    per_level = np.bincount(lev, minlength=L)
    starts = np.concatenate([[0], np.cumsum(per_level)])
    row_len = np.repeat(per_level, r)  # row (l, a) holds level l's entries
    indptr = np.concatenate([[0], np.cumsum(row_len)]).astype(np.int64)
    row = np.repeat(np.arange(L * r), row_len)
    pos = starts[row // r] + (np.arange(len(row)) - indptr[row])
    marks = src[pos] * r + row % r
    shape = (L * r, ncols)
    tmpl = sp.csr_matrix((marks + 1.0, cols[pos], indptr), shape=shape)
    NT = tmpl.T.tocsr()
    NT.sort_indices()
    return {"N_marks": marks, "N_indices": cols[pos].astype(np.int32), "N_indptr": indptr,
            "N_shape": shape, "NT": NT, "NT_marks": np.rint(NT.data).astype(np.int64) - 1}


def merge_keys(parts: list[dict]) -> dict:
    """The union of partitions' :func:`pair_keys`."""
    return {jk: _distinct(np.concatenate([p[jk] for p in parts])) for jk in parts[0]}


@dataclass(frozen=True)
class LaplacePoint:
    """One evaluation of the Laplace criterion (:meth:`CrossedLaplace.evaluate`).

    Attributes
    ----------
    value : float
        ``-2 ll + |u|^2 + log|A|`` (no family constants; ``inf`` where unusable).
    ll, uu, logdet, se : float
        Its parts; ``se`` the standard error of ``log|A|`` (0 where exact).
    u : numpy.ndarray
        The spherical modes, all factors' levels in order.
    iterations : int
        PIRLS steps.
    reduced : Reduced or None
        ``A`` at the modes' weights, its first factor eliminated.
    factor : SparseFactor or None
        Its sparse factor (the sparse path).
    quad : Quadrature or None
        Its log determinant's recurrences (the matrix-free path).
    weights : WeightedPass or None
        The pass at the modes (``A``'s weights), for :meth:`CrossedLaplace.gradient`.
    """

    value: float
    ll: float
    uu: float
    logdet: float
    se: float
    u: np.ndarray
    iterations: int
    reduced: Reduced | None = None
    factor: SparseFactor | None = None
    quad: Quadrature | None = None
    weights: WeightedPass | None = None


class CrossedLaplace:
    """The Laplace criterion of ``(theta, beta)`` for crossed random intercepts, by the
    sparse or the matrix-free path (module docstring).

    Parameters
    ----------
    patterns : Patterns
    passes : callable
        ``(beta, b) -> WeightedPass``: one pass over all the rows (the caller maps
        :func:`weighted_pass` over its partitions and adds them).
    path : {"sparse", "matrix-free"}
    probes, steps, deflate, seed : int
        The matrix-free log determinant's estimator (:func:`daskmm.kernels.crossed_iter.
        slq`): the same probes at every evaluation; the deflation basis and the number of
        Lanczos steps are fixed at the first evaluation (``steps`` at most, the number its
        quadratures needed to converge plus :data:`STEP_MARGIN`), so the criterion is one
        smooth function.
    family : (int, int), optional
        The family and link codes (:mod:`daskmm.kernels.scalar_re`), for
        :meth:`gradient`.
    cols : int
        Model columns of the first factor's term (more than 1: random slopes on it;
        ``theta`` then starts with its triangle, :class:`~daskmm.kernels.crossed_iter.
        CrossedStats`'s layout).
    """

    def __init__(self, patterns: Patterns, passes: Callable, path: str, probes: int = 10,
                 steps: int = 40, deflate: int = 10, seed: int = 0,
                 family: tuple[int, int] | None = None, cols: int = 1):
        if path not in ("sparse", "matrix-free"):
            raise ValueError(f"path={path!r}; allowed: 'sparse', 'matrix-free'")
        self.patterns, self.passes, self.path = patterns, passes, path
        self.probes, self.steps, self.deflate, self.seed = probes, steps, deflate, seed
        self.family = family
        self.sizes = patterns.sizes
        self.cols = cols
        self.q_sizes = (self.sizes[0] * cols, *self.sizes[1:])
        self.q = int(sum(self.q_sizes))
        self.u_warm = np.zeros(self.q)
        self.basis: np.ndarray | None = None
        self.fixed_steps: int | None = None
        self.fill: int | None = None
        self.evaluations = 0

    def _split(self, v: np.ndarray) -> list[np.ndarray]:
        return np.split(v, np.cumsum(self.q_sizes)[:-1])

    def _reduced(self, wp: WeightedPass, theta: np.ndarray) -> Reduced:
        if wp.crossing is not None:  # the first factor's tables held in blocks elsewhere
            return wp.crossing.at(theta, self.sizes)
        x = self.patterns.crossing(wp)
        if self.cols > 1:
            return VectorReduced.at(x, theta, self.sizes)
        t1 = float(theta[0])
        return Reduced(x, t1, np.repeat(theta[1:], self.sizes[1:]), 1.0 + t1 * t1 * x.n1)

    def logdet(self, red: Reduced) -> tuple[float, float, SparseFactor | Quadrature]:
        """``(log|A|, its standard error, the sparse factor or the quadrature)`` of ``A`` at
        the modes' weights: on the sparse path from one factorisation (exact; the factor is
        kept for the conditional variances), on the matrix-free path by
        :func:`daskmm.kernels.crossed_iter.slq` (its recurrences kept for the gradient)."""
        if self.path == "sparse":
            fac = SparseFactor.of(red)
            self.fill = fac.fill
            return red.logdet_D() + fac.logdet, 0.0, fac
        if self.deflate and self.basis is None:
            self.basis = deflation_basis(red.schur, red.schur_diag(), self.deflate, self.seed)
        steps = self.fixed_steps or self.steps
        quad = slq(red.schur, red.schur_diag(), self.probes, steps, self.seed,
                   basis=self.basis, rtol=0.0 if self.fixed_steps else 1e-10)
        if self.fixed_steps is None:
            self.fixed_steps = min(self.steps, quad.steps + STEP_MARGIN)
        return red.logdet_D() + quad.logdet, quad.se, quad

    def evaluate(self, theta: np.ndarray, beta: np.ndarray) -> LaplacePoint:
        """PIRLS to the modes at ``(theta, beta)`` (``theta``: one per factor, in the
        patterns' order; with random slopes the first factor's triangle first), from the
        last evaluation's modes, and the criterion there."""
        theta = np.asarray(theta, float)
        beta = np.asarray(beta, float)
        self.evaluations += 1

        def lam(v: np.ndarray) -> np.ndarray:  # b = Lambda u
            return lambda_apply(theta, v, self.sizes, self.cols)
        u = self.u_warm.copy()
        wp = self.passes(beta, self._split(lam(u)))
        if not math.isfinite(wp.ll) and np.any(u):  # the warm start is unusable: from zero
            u = np.zeros(self.q)
            wp = self.passes(beta, self._split(lam(u)))
        if not math.isfinite(wp.ll):
            return LaplacePoint(math.inf, -math.inf, 0.0, math.inf, 0.0, u, 0)
        pdev = -2.0 * wp.ll + float(u @ u)
        it = 0
        while True:
            # every path solves its PIRLS steps by conjugate gradients (the system changes
            # with the weights at each step); the sparse path factors once, at the modes
            red = self._reduced(wp, theta)
            rhs = lambda_t(theta, wp.Ztwr, self.sizes, self.cols)
            # from the current modes: the same stop, fewer conjugate-gradient steps
            target = red.solve(rhs[:, None], CG_TOL, u[:, None])[0][:, 0]
            delta = target - u
            if np.max(np.abs(delta), initial=0.0) <= TOL_U * (1.0 + np.max(np.abs(u),
                                                                             initial=0.0)):
                break
            it += 1
            if it > MAX_ITER:
                break
            t, moved = 1.0, False
            while t >= 1e-8:
                un = u + t * delta
                wn = self.passes(beta, self._split(lam(un)))
                if math.isfinite(wn.ll):
                    pn = -2.0 * wn.ll + float(un @ un)
                    if pn <= pdev + 1e-13 * abs(pdev):
                        u, wp, pdev, moved = un, wn, pn, True
                        break
                t *= 0.5
            if not moved:  # the rounding floor: no step lowers the penalised deviance
                break
        self.u_warm = u
        ld, se, fac = self.logdet(red)
        if isinstance(fac, Quadrature):
            return LaplacePoint(pdev + ld, wp.ll, float(u @ u), ld, se, u, it, red, quad=fac,
                                weights=wp)
        return LaplacePoint(pdev + ld, wp.ll, float(u @ u), ld, se, u, it, red, fac)

    def gradient(self, theta: np.ndarray, beta: np.ndarray, point: LaplacePoint,
                 apply: Callable) -> np.ndarray:
        """The criterion's derivative in ``(theta, beta)`` at an evaluated point of the
        matrix-free path (a canonical link, :func:`has_gradient`). ``apply(fn, **kw)``:
        ``fn`` mapped over the partitions' rows, the results listed.

        With ``M = Z Lambda``, ``A = M'WM + I`` and the modes ``u`` (``M's = u``, ``s`` the
        scores): the penalised deviance's part by the envelope theorem (``-2 X's``;
        ``-2 (Z's)_k . u_k``); ``log|A|``'s explicit part in ``theta``
        (:func:`~daskmm.kernels.crossed_iter.logdet_theta_gradient`); and its part through
        the weights, ``tr(A^-1 M' diag(W' d eta / d phi) M)``, as ``sum_i W'_i (d eta_i /
        d phi) rho_i`` over the rows where they are (:func:`gradient_traces`, the rows'
        leverages :class:`RowLeverage` by the log determinant's probes), with
        ``d eta / d phi`` the direct part plus ``M du / d phi``, ``A du / d phi = E_k Z's -
        M'W Z_k u_k`` (``theta_k``) or ``-M'W X_j`` (``beta_j``), one block of solves.
        With random slopes on the first factor each entry of its ``T`` is a ``theta``
        (``d Lambda`` in place of ``E_k``: :func:`direct_theta`,
        :func:`~daskmm.kernels.crossed_iter.vector_logdet_gradient`). The traces come from
        the log determinant's probes: an estimate, like the criterion."""
        theta = np.asarray(theta, float)
        beta = np.asarray(beta, float)
        red, quad = point.reduced, point.quad
        r, sizes = self.cols, self.sizes
        nt = n_tri(r) + len(sizes) - 1  # theta's entries

        def lam_t(v: np.ndarray) -> np.ndarray:
            return lambda_t(theta, v, sizes, r)
        u = self._split(point.u)
        b = self._split(lambda_apply(theta, point.u, sizes, r))
        fam, link = self.family
        sums = apply(gradient_sums, beta=beta, b=b, u=u, family=fam, link=link, sizes=sizes)
        Zts = sum(x[0] for x in sums)
        Xts = sum(x[1] for x in sums)
        ZtWX = sum(x[2] for x in sums)
        ZtWZu = sum(x[3] for x in sums)
        bounds = np.concatenate([[0], np.cumsum(self.q_sizes)])
        # (d Lambda / d theta_m)' Z's: T's entry (a, b) puts (Z_1's)_{l, a} on row (l, b);
        # another factor's its own block of Z's
        dZts = np.zeros((self.q, nt))
        envelope = np.zeros(nt)
        m = 0
        if r > 1:
            Z1 = Zts[:bounds[1]].reshape(-1, r)
            U1 = u[0].reshape(-1, r)
            for a_, b_ in zip(*np.triu_indices(r)[::-1]):
                col = np.zeros((len(Z1), r))
                col[:, b_] = Z1[:, a_]
                dZts[:bounds[1], m] = col.ravel()
                envelope[m] = -2.0 * float(Z1[:, a_] @ U1[:, b_])
                m += 1
        for k in range(1 if r > 1 else 0, len(sizes)):
            dZts[bounds[k]:bounds[k + 1], m] = Zts[bounds[k]:bounds[k + 1]]
            envelope[m] = -2.0 * float(Zts[bounds[k]:bounds[k + 1]] @ u[k])
            m += 1
        R = np.column_stack([dZts - lam_t(ZtWZu), -lam_t(ZtWX)])
        du = red.solve(R, CG_TOL)[0]
        bdu = self._split(lambda_apply(theta, du, sizes, r))
        if hasattr(red, "leverage"):  # its tables held in blocks: phi stays with them
            lev, phi = red.leverage(quad, sizes)
        else:
            lev, phi = leverage_of(red, quad, point.weights, self.patterns), None
        g = sum(apply(gradient_traces, beta=beta, b=b, u=u, bdu=bdu, family=fam, link=link,
                      lev=lev, sizes=sizes, phi=phi))
        g[:nt] += (vector_logdet_gradient(red, quad, theta, sizes) if r > 1 else
                   logdet_theta_gradient(red, quad, theta, sizes))
        g[:nt] += envelope
        g[nt:] += -2.0 * Xts
        return g

    @staticmethod
    def inverse_blocks(point: LaplacePoint) -> tuple[np.ndarray, np.ndarray]:
        """With random slopes on the first factor: ``A^-1``'s diagonal blocks at a point's
        weights (its levels' ``r x r``, the others' diagonal), exact from the sparse factor,
        else the approximation of :meth:`~daskmm.kernels.crossed_iter.VectorReduced.
        inverse_blocks`."""
        if point.factor is not None:
            return point.factor.inverse_blocks()
        return point.reduced.inverse_blocks()

    @staticmethod
    def inverse_diag(point: LaplacePoint) -> np.ndarray:
        """``diag(A^-1)`` at a point's weights: exact from the sparse factor, else the
        approximation of :meth:`~daskmm.kernels.crossed_iter.Reduced.inverse_diag` (the
        conditional variances are ``theta_k^2 diag(A^-1)``)."""
        if point.factor is not None:
            return point.factor.inverse_diag()
        return point.reduced.inverse_diag()
