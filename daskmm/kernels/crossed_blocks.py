"""The crossed GLMM's first-factor crossing tables held in blocks where the rows are (issue 31's
matrix-free path on a cluster; pure numpy/scipy: the blocks' tasks run through an injected
:class:`BlockRunner`, this module never imports dask).

``A = [[D, B], [B', C]]`` (:class:`~daskmm.kernels.crossed_iter.Reduced`) has ``B``'s rows on
the first factor's levels. Those levels are cut into contiguous blocks; block ``b`` holds its
rows of the crossing tables ``N`` (entries on the fit's fixed pattern; the tables are sorted
by the first factor's level, so each block is one range of each table's entries), their
transpose, and, at a ``theta``, its diagonal blocks ``D_b``. Everything the client does with
``N`` is a sum or a concatenation over blocks:

    B v = [B_b v]_b,   B'w = sum_b B_b' w_b,   S v = C v - sum_b B_b' D_b^-1 B_b v,
    diag(S) = 1 + lam^2 diag(rest) - sum_b diag(B_b' D_b^-1 B_b),

so each product is one task per block and one round trip: a broadcast of a vector on the
other factors' levels (``q - k`` rows) and one sum back. The client keeps only level-sized
arrays (``D``, the counts, the modes) and the other factors' block ``C``; the tables' values
are summed from the partitions' passes into their blocks on the workers (:func:`block_values`,
:func:`fill_block`) and never come to the client. The sums run in a fixed order for a given
number of blocks; against the whole tables they differ only in the order of additions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from daskmm.kernels.crossed_glmm import (
    RowLeverage,
    WeightedPass,
    leverage_entries,
    leverage_starts,
    row_leverage_of,
    rows_by_level,
)
from daskmm.kernels.crossed_iter import (
    CrossedStats,
    Crossing,
    Quadrature,
    Reduced,
    VectorCrossing,
    VectorReduced,
    add_crossed,
    pcg,
    spmm,
)


class BlockRunner(Protocol):
    """Runs a function on each block where the block is (the orchestration's; in process,
    :class:`LocalBlocks`)."""

    def run(self, fn, handles, per: dict | None = None, **kw) -> list:
        """``[fn(block_i, **kw, **{k: per[k][i]})]``, the results here, in block order."""

    def keep(self, fn, handles, per: dict | None = None, **kw) -> list:
        """:meth:`run`'s results left where they are (handles)."""

    def join(self, fn, handles, **kw) -> Any:
        """``fn(list of the handles' values, **kw)``, left where it is (a handle)."""


class LocalBlocks:
    """:class:`BlockRunner` here: each block a value in this process."""

    def run(self, fn, handles, per: dict | None = None, **kw) -> list:
        per = per or {}
        return [fn(h, **kw, **{k: v[i] for k, v in per.items()}) for i, h in enumerate(handles)]

    keep = run

    def join(self, fn, handles, **kw) -> Any:
        return fn(list(handles), **kw)


def block_bounds(per_level: np.ndarray, blocks: int) -> np.ndarray:
    """The first factor's level bounds (``blocks + 1``) cutting ``per_level`` (each level's
    table entries) into ``blocks`` contiguous ranges of near-equal entries (no block
    empty while there are levels to spare)."""
    L = len(per_level)
    blocks = max(1, min(int(blocks), L))
    cum = np.concatenate([[0], np.cumsum(per_level, dtype=float)])
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, blocks) / blocks, side="left")
    bounds = np.concatenate([[0], cuts, [L]]).astype(np.int64)
    for i in range(1, blocks):  # strictly increasing
        bounds[i] = min(max(bounds[i], bounds[i - 1] + 1), L - (blocks - i))
    return bounds


@dataclass(frozen=True)
class BlockTemplate:
    """One block's structures, fixed for a fit (:func:`block_template`).

    Attributes
    ----------
    lo, hi : int
        Its first-factor levels.
    r : int
        Columns of the first factor's term.
    places : tuple
        ``(start, stop)`` of its entries on each first-factor table ``(0, k)``.
    lev, cols : numpy.ndarray
        Its entries, level-major: the level (from ``lo``) and the other factors' column.
    order : numpy.ndarray
        Each entry's place among the block's values as the tables give them (table after
        table).
    phi_at : numpy.ndarray
        Each entry's place among all the first-factor tables' entries (table after table):
        :attr:`~daskmm.kernels.crossed_glmm.RowLeverage.phi`'s layout.
    N_indptr, N_indices, N_marks, NT_indptr, NT_indices, NT_marks : numpy.ndarray
        ``N``'s block (rows ``(level, column)``) and its transpose, each entry marking its
        value's place among the block's values (``entries x r``, flattened).
    shape : tuple
        ``N``'s block's shape.
    """

    lo: int
    hi: int
    r: int
    places: tuple
    lev: np.ndarray
    cols: np.ndarray
    order: np.ndarray
    phi_at: np.ndarray
    N_indptr: np.ndarray
    N_indices: np.ndarray
    N_marks: np.ndarray
    NT_indptr: np.ndarray
    NT_indices: np.ndarray
    NT_marks: np.ndarray
    shape: tuple

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + sum(v.nbytes for v in vars(self).values()
                                             if isinstance(v, np.ndarray))


def block_template(csr: dict, sizes: tuple[int, ...], lo: int, hi: int, r: int
                   ) -> BlockTemplate:
    """:class:`BlockTemplate` of levels ``lo:hi`` from the first factor's table patterns
    (``csr``: ``(0, k) -> (indptr, indices)``, :class:`~daskmm.kernels.crossed_glmm.
    Patterns`'s)."""
    offs = np.cumsum([0, *sizes[1:]])
    Lb = hi - lo
    lev, cols, glob, places, base = [], [], [], [], 0
    for k in range(1, len(sizes)):
        ptr, ix = csr[(0, k)]
        a, b = int(ptr[lo]), int(ptr[hi])
        places.append((a, b))
        lev.append(np.repeat(np.arange(Lb), np.diff(ptr[lo:hi + 1])))
        cols.append(np.asarray(ix[a:b], np.int64) + offs[k - 1])
        glob.append(base + np.arange(a, b))
        base += len(ix)
    lev, cols, glob = np.concatenate(lev), np.concatenate(cols), np.concatenate(glob)
    order = np.lexsort((cols, lev))  # level-major, the other factors' columns in order
    lev, cols = lev[order], cols[order]
    t = rows_by_level(lev, cols, order, Lb, r, int(offs[-1]))
    NT = t["NT"]
    return BlockTemplate(lo, hi, r, tuple(places), lev, cols, order, glob[order],
                         t["N_indptr"], t["N_indices"], t["N_marks"],
                         NT.indptr.astype(np.int64), NT.indices, t["NT_marks"], t["N_shape"])


def pass_head(out: WeightedPass) -> WeightedPass:
    """A partition's pass without its first-factor tables (what comes to the client)."""
    return WeightedPass(out.ll, out.counts, {jk: v for jk, v in out.tables.items()
                                             if jk[0] != 0}, out.Ztwr)


def block_values(outs: list[WeightedPass], places: tuple, r: int) -> list[np.ndarray]:
    """The partitions' passes ``outs`` summed on one block's entries (``places``: its range
    on each first-factor table): one array a table, ``entries`` (or ``entries x r``)."""
    out = []
    for k, (a, b) in enumerate(places, start=1):
        ats, vals = [], []
        for p in outs:
            if not math.isfinite(p.ll):
                continue
            at, v = p.tables[(0, k)]
            i0, i1 = np.searchsorted(at, [a, b])
            ats.append(at[i0:i1] - a)
            vals.append(v[i0:i1])
        at = np.concatenate(ats) if ats else np.zeros(0, np.int64)
        v = np.concatenate(vals) if vals else np.zeros((0,) if r == 1 else (0, r))
        if r == 1 and v.ndim == 1:
            out.append(np.bincount(at, weights=v, minlength=b - a))
        else:
            v = v.reshape(len(at), r)
            out.append(np.column_stack([np.bincount(at, weights=v[:, c], minlength=b - a)
                                        for c in range(r)]))
    return out


@dataclass(frozen=True)
class TableBlock:
    """One block's crossing at one PIRLS step's weights.

    Attributes
    ----------
    tmpl : BlockTemplate or None
        ``None`` for the LMM's blocks (:func:`stats_block`: no pattern, no leverage).
    vals : numpy.ndarray or None
        Its entries' values, table after table (``entries x r``).
    x : Crossing
        Its rows of ``N`` (a :class:`~daskmm.kernels.crossed_iter.VectorCrossing` with random
        slopes): ``k`` its rows, ``n1`` its levels' counts; no other factors' block.
    """

    tmpl: BlockTemplate | None
    vals: np.ndarray | None
    x: Crossing

    def __sizeof__(self) -> int:
        x = self.x
        mats = sum(M.data.nbytes + M.indices.nbytes + M.indptr.nbytes
                   for M in (x.N, x.NT, x.N2_T) if M is not None)
        vals = 0 if self.vals is None else self.vals.nbytes
        return object.__sizeof__(self) + vals + mats + np.asarray(x.n1).nbytes


def fill_block(tmpl: BlockTemplate, partials: list[list[np.ndarray]], counts: np.ndarray
               ) -> TableBlock:
    """:class:`TableBlock` from partial sums of its values (:func:`block_values`, added in
    order) and its levels' weighted counts."""
    tables = [functools.reduce(np.add, [p[k] for p in partials])
              for k in range(len(tmpl.places))]
    r = tmpl.r
    vals = np.concatenate([np.asarray(t, float).reshape(-1, r) for t in tables])
    flat = vals.ravel()
    N = sp.csr_matrix((flat[tmpl.N_marks], tmpl.N_indices, tmpl.N_indptr), shape=tmpl.shape)
    NT = sp.csr_matrix((flat[tmpl.NT_marks], tmpl.NT_indices, tmpl.NT_indptr),
                       shape=tmpl.shape[::-1])
    counts = np.asarray(counts, float)
    if r == 1:
        N2_T = sp.csr_matrix((NT.data * NT.data, NT.indices, NT.indptr), shape=NT.shape)
        x = Crossing(tmpl.shape[0], counts, N, NT, N2_T, None, None, True)
    else:
        x = VectorCrossing(tmpl.shape[0], counts, N, NT, None, None, None, True, r, (),
                           (vals[tmpl.order], tmpl.cols, tmpl.lev))
    return TableBlock(tmpl, vals, x)


@dataclass(frozen=True)
class BlockAt:
    """A block at one ``theta``: its :class:`~daskmm.kernels.crossed_iter.Reduced` (``D_b``
    and ``B_b``)."""

    block: TableBlock
    red: Reduced

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + self.block.__sizeof__() + self.red.D.nbytes


def block_at(block: TableBlock, theta: np.ndarray, sizes: tuple[int, ...]) -> BlockAt:
    """:class:`BlockAt` at ``theta`` (the criterion's layout)."""
    x = block.x
    if isinstance(x, VectorCrossing):
        return BlockAt(block, VectorReduced.at(x, theta, sizes))
    t1 = float(theta[0])
    return BlockAt(block, Reduced(x, t1, np.repeat(theta[1:], sizes[1:]),
                                  1.0 + t1 * t1 * x.n1))


def block_B(at: BlockAt, v: np.ndarray) -> np.ndarray:
    """``B_b v``."""
    return at.red.B(v)


def block_BT(at: BlockAt, w: np.ndarray) -> np.ndarray:
    """``B_b' w_b``."""
    return at.red.BT(w)


def block_schur(at: BlockAt, v: np.ndarray) -> np.ndarray:
    """``B_b' D_b^-1 B_b v``."""
    red = at.red
    return red.BT(red.Ddiv(red.B(v)))


def block_solve_start(at: BlockAt, b1: np.ndarray, x0: np.ndarray | None) -> tuple:
    """What a solve starts from, in one task: ``B_b' D_b^-1 b1_b``, ``diag(B_b' D_b^-1
    B_b)`` and ``B_b' D_b^-1 B_b x0`` (``None`` without a guess)."""
    red = at.red
    return (red.BT(red.Ddiv(b1)), block_diag(at),
            None if x0 is None else block_schur(at, x0))


def block_N(at: BlockAt, X: np.ndarray) -> np.ndarray:
    """``N_b X``."""
    return spmm(at.red.x.N, X)


def block_B2_D(at: BlockAt, d: np.ndarray) -> np.ndarray:
    """``sum_i (B_b)_ij^2 d_i`` (a random intercept)."""
    return at.red.B2_D(d)


def block_quad_cols(at: BlockAt, K: np.ndarray) -> np.ndarray:
    """``sum_l n_lj' K_l n_lj`` over the block's levels (random slopes)."""
    return at.red.quad_cols(K)


def _block_K(red: VectorReduced) -> np.ndarray:
    return np.einsum("ab,lbc,dc->lad", red.T, red.Dinv, red.T)  # T D_l^-1 T'


def block_diag(at: BlockAt) -> np.ndarray:
    """``diag(B_b' D_b^-1 B_b)``."""
    red = at.red
    if isinstance(red, VectorReduced):
        return red.lam ** 2 * red.quad_cols(_block_K(red))
    return red.B2_D(1.0 / red.D)


def block_inverse_first(at: BlockAt, P: np.ndarray) -> np.ndarray:
    """The block's levels' part of ``A^-1``'s approximate diagonal (blocks), given ``P =
    diag(S)`` (:meth:`~daskmm.kernels.crossed_iter.Reduced.inverse_first`)."""
    return at.red.inverse_first(P)


def block_leverage(at: BlockAt, s: np.ndarray, lamY: np.ndarray) -> tuple:
    """The block's part of :class:`~daskmm.kernels.crossed_glmm.RowLeverage`: ``(P_b, FY_b,
    phi_b, phi_b's places)``."""
    red, tb = at.red, at.block
    t = tb.tmpl
    r = t.r
    Lb = t.hi - t.lo
    R = _block_K(red) if r > 1 else (red.t1 * red.t1 / red.D)[:, None, None]
    Q, phi = leverage_entries(R, red.lam, s, t.lev, t.cols, tb.vals[t.order])
    FY = np.matmul(R, spmm(red.x.N, lamY).reshape(Lb, r, lamY.shape[1]))
    return R + Q, FY, phi, t.phi_at


def leverage_head(part: tuple) -> tuple:
    """``(P_b, FY_b)`` of :func:`block_leverage`'s result (what comes to the client)."""
    return part[0], part[1]


def join_phi(parts: list[tuple], total: int, r: int) -> np.ndarray:
    """:attr:`~daskmm.kernels.crossed_glmm.RowLeverage.phi` from the blocks' parts."""
    out = np.empty((total, r))
    for p in parts:
        out[p[3]] = p[2]
    return out


def rest_block(csr: dict, sizes: tuple[int, ...], counts: list, tables: dict
               ) -> tuple[sp.csr_matrix, np.ndarray, bool]:
    """``(C's Z'WZ block, its diagonal, whether it is diagonal)``: the other factors' counts
    and their crossing tables' values on their patterns ``csr`` (three factors or more)."""
    mats = {(j, m): sp.csr_matrix((tables[(j, m)], ix, ptr), shape=(sizes[j], sizes[m]))
            for (j, m), (ptr, ix) in csr.items() if j > 0}
    return rest_of_tables(counts, mats)


def rest_of_tables(counts: list, tables: dict) -> tuple[sp.csr_matrix, np.ndarray, bool]:
    """:func:`rest_block` from the other factors' counts and crossing tables (matrices)."""
    K = len(counts)
    diag = np.concatenate([np.asarray(c, float) for c in counts[1:]])
    if K == 2:
        return sp.diags(np.asarray(counts[1], float), format="csr"), diag, True
    blocks: list[list] = [[None] * (K - 1) for _ in range(K - 1)]
    for j in range(1, K):
        blocks[j - 1][j - 1] = sp.diags(np.asarray(counts[j], float))
        for m in range(j + 1, K):
            T = tables[(j, m)]
            blocks[j - 1][m - 1], blocks[m - 1][j - 1] = T, T.T
    return sp.bmat(blocks, format="csr"), diag, False


def stats_head(part: tuple[CrossedStats, float]) -> tuple[CrossedStats, float]:
    """A partition's LMM cross-products without the first factor's crossing tables (what
    comes to the client)."""
    st, slw = part
    return dataclasses.replace(st, tables={jk: T for jk, T in st.tables.items()
                                           if jk[0] != 0}), slw


def add_heads(parts: list[tuple[CrossedStats, float]]) -> tuple[CrossedStats, float]:
    """:func:`~daskmm.kernels.crossed_iter.add_crossed` of :func:`stats_head`'s."""
    return add_crossed([stats_head(p) for p in parts])


def stats_row_entries(st: CrossedStats) -> np.ndarray:
    """Each first-factor level's entries in a partition's crossing tables ``(0, k)`` (for
    balancing the blocks)."""
    r, L = st.cols, st.sizes[0]
    return sum(np.diff(st.tables[(0, k)].indptr).reshape(L, r)[:, 0]
               for k in range(1, len(st.sizes)))


def stats_values(parts: list[tuple[CrossedStats, float]], lo: int, hi: int
                 ) -> list[sp.csr_matrix]:
    """The partitions' first-factor crossing tables ``(0, k)`` on levels ``lo:hi`` (rows
    ``(level, column)`` with random slopes), summed: one matrix a table."""
    out = []
    for (st, _) in parts:
        r = st.cols
        rows = [st.tables[(0, k)][lo * r:hi * r] for k in range(1, len(st.sizes))]
        out = rows if not out else [a + b for a, b in zip(out, rows)]
    return out


def stats_block(partials: list[list[sp.csr_matrix]], counts: np.ndarray, r: int
                ) -> TableBlock:
    """The LMM's :class:`TableBlock` (no pattern) from :func:`stats_values`'s sums, added in
    order, and its levels' counts (Grams with random slopes)."""
    tables = [functools.reduce(lambda a, b: a + b, [p[k] for p in partials]).tocsr()
              for k in range(len(partials[0]))]
    N = sp.hstack(tables, format="csr") if len(tables) > 1 else tables[0]
    counts = np.asarray(counts, float)
    both = (counts, np.zeros(N.shape[1]))
    if r > 1:
        x: Crossing = VectorCrossing.of_vector(both, {(0, 1): N}, r)
    else:
        x = Crossing.of_blocks(both, {(0, 1): N})
    return TableBlock(None, None, dataclasses.replace(x, rest=None, rest_diag=None))


def _total(parts: list[np.ndarray]) -> np.ndarray:
    """The blocks' parts added in block order."""
    return functools.reduce(np.add, parts)


@dataclass(frozen=True)
class BlockedCrossing:
    """``Z'WZ`` with the first factor's crossings held in blocks (module docstring): what a
    :class:`~daskmm.kernels.crossed_iter.Crossing` gives the client, less ``N``.

    Attributes
    ----------
    k : int
        Rows of the eliminated block (levels x columns of the first factor's term).
    n1 : numpy.ndarray
        The first factor's counts (``L x r x r`` Grams with random slopes).
    rest, rest_diag, rest_diagonal
        The other factors' block (:func:`rest_block`).
    r : int
    bounds : numpy.ndarray
        The blocks' first-factor level bounds.
    blocks : tuple
        Each block's :class:`TableBlock` (a handle: the runner's).
    runner : BlockRunner
    entries : int
        Entries of all the first factor's tables.
    table_sizes : tuple
        Entries of each.
    """

    k: int
    n1: np.ndarray
    rest: sp.csr_matrix
    rest_diag: np.ndarray
    rest_diagonal: bool
    r: int
    bounds: np.ndarray
    blocks: tuple
    runner: Any
    entries: int
    table_sizes: tuple

    @property
    def levels(self) -> int:
        """Levels of the first factor."""
        return self.k // self.r

    def at(self, theta: np.ndarray, sizes: tuple[int, ...]) -> Reduced:
        """``A`` at ``theta`` (:class:`BlockedReduced` or :class:`BlockedVectorReduced`):
        ``D`` here, each block's ``D_b`` and ``B_b`` where the block is."""
        theta = np.asarray(theta, float)
        handles = tuple(self.runner.keep(block_at, self.blocks, theta=theta,
                                         sizes=tuple(sizes)))
        if self.r > 1:
            v = VectorReduced.at(self, theta, sizes)  # type: ignore[arg-type]
            return BlockedVectorReduced(self, v.t1, v.lam, v.D, v.T, v.Dinv, v.logdet,
                                        at=handles)
        t1 = float(theta[0])
        return BlockedReduced(self, t1, np.repeat(theta[1:], sizes[1:]),
                              1.0 + t1 * t1 * np.asarray(self.n1, float), at=handles)


class _Blocked:
    """What :class:`BlockedReduced` and :class:`BlockedVectorReduced` do through the blocks
    (each a :class:`~daskmm.kernels.crossed_iter.Reduced` otherwise)."""

    x: BlockedCrossing
    at: tuple
    lam: np.ndarray

    def _map(self, fn, per: dict | None = None, **kw) -> list:
        return self.x.runner.run(fn, self.at, per, **kw)

    def _rows(self, v: np.ndarray) -> list[np.ndarray]:
        b = self.x.bounds * self.x.r
        return [v[b[i]:b[i + 1]] for i in range(len(b) - 1)]

    def _levels(self, v: np.ndarray) -> list[np.ndarray]:
        b = self.x.bounds
        return [v[b[i]:b[i + 1]] for i in range(len(b) - 1)]

    def N_dot(self, X: np.ndarray) -> np.ndarray:
        return np.concatenate(self._map(block_N, X=X))

    def B(self, v: np.ndarray) -> np.ndarray:
        return np.concatenate(self._map(block_B, v=v))

    def BT(self, w: np.ndarray) -> np.ndarray:
        return _total(self._map(block_BT, per={"w": self._rows(w)}))

    def schur(self, v: np.ndarray) -> np.ndarray:
        return self.C(v) - _total(self._map(block_schur, v=v))  # type: ignore[attr-defined]

    def B2_D(self, d: np.ndarray) -> np.ndarray:
        return _total(self._map(block_B2_D, per={"d": self._rows(d)}))

    def quad_cols(self, K: np.ndarray) -> np.ndarray:
        return _total(self._map(block_quad_cols, per={"K": self._levels(K)}))

    def schur_diag(self) -> np.ndarray:
        P = self.__dict__.get("_schur_diag")
        if P is None:
            P = self._diag_from(_total(self._map(block_diag)))
        return P

    def _diag_from(self, parts: np.ndarray) -> np.ndarray:
        P = 1.0 + self.lam ** 2 * self.x.rest_diag - parts
        object.__setattr__(self, "_schur_diag", P)  # kept: A at one theta and weights
        return P

    def solve(self, b: np.ndarray, tol: float, x0: np.ndarray | None = None
              ) -> tuple[np.ndarray, int]:
        """:meth:`~daskmm.kernels.crossed_iter.Reduced.solve` with its start (``B' D^-1
        b_1``, ``diag(S)``, ``S x0``'s blocks' part) from one task per block."""
        k = self.k
        b1, b2 = b[:k], b[k:]
        g = None if x0 is None else x0[k:]
        parts = self._map(block_solve_start, per={"b1": self._rows(b1)}, x0=g)
        rhs = b2 - _total([p[0] for p in parts])
        P = self._diag_from(_total([p[1] for p in parts]))
        r0 = None if g is None else rhs - (self.C(g) - _total([p[2] for p in parts]))
        x2, iters = pcg(self.schur, rhs, P, tol=tol, x0=g, r0=r0)
        x1 = self.Ddiv(b1) - self.Ddiv(self.B(x2))
        return np.vstack([x1, x2]), iters

    def inverse_first(self, P: np.ndarray) -> np.ndarray:
        return np.concatenate(self._map(block_inverse_first, P=P))

    def leverage(self, quad: Quadrature, sizes: tuple[int, ...]
                 ) -> tuple[RowLeverage, Any]:
        """:class:`~daskmm.kernels.crossed_glmm.RowLeverage` of the log determinant's
        quadrature ``quad`` without its pattern-sized ``phi``, and ``phi`` joined where the
        blocks are (a handle for :func:`~daskmm.kernels.crossed_glmm.gradient_traces`)."""
        run = self.x.runner
        lamY = leverage_starts(quad, self.lam)
        parts = run.keep(block_leverage, self.at, s=quad.scale, lamY=lamY)
        heads = run.run(leverage_head, parts)
        P = np.concatenate([h[0] for h in heads])
        FY = np.concatenate([h[1] for h in heads])
        phi = run.join(join_phi, parts, total=self.x.entries, r=self.x.r)
        return row_leverage_of(P, FY, lamY, quad, self.lam, sizes, None,
                               list(self.x.table_sizes)), phi


@dataclass(frozen=True)
class BlockedReduced(_Blocked, Reduced):
    """:class:`~daskmm.kernels.crossed_iter.Reduced` (random intercepts) over a
    :class:`BlockedCrossing`; ``at``: each block's :class:`BlockAt` (handles)."""

    at: tuple = ()


@dataclass(frozen=True)
class BlockedVectorReduced(_Blocked, VectorReduced):
    """:class:`~daskmm.kernels.crossed_iter.VectorReduced` (random slopes on the first
    factor) over a :class:`BlockedCrossing`."""

    at: tuple = ()

    def B_matrix(self) -> sp.csr_matrix:
        raise ValueError("B is held in blocks; its products are B(), BT() and N_dot()")
