"""Per-partition sufficient statistics (pure numpy/scipy; never imports dask).

The random effects are split into

* **local** coefficients: those of the primary factor ``P`` (the one the data are partitioned
  by) and of factors nested in it. All rows of a level of ``P`` sit in one partition, so the
  local part of ``Z'Z`` is block diagonal with one dense block per level of ``P``;
* **global** coefficients: crossed factors whose levels span partitions (``n_G`` columns).

With ``V = [Z_G  X  y]`` (``k = n_G + p + 1`` columns) and rows weighted by ``w``, a partition
contributes, for each level ``l`` of ``P`` with local columns ``Z_l``::

    A_l = Z_l' W Z_l        (s_l x s_l)
    B_l = Z_l' W V          (s_l x k; stored as (s, k, m) for a group of m levels)

and ``G = V' W V`` (``k x k``) summed over partitions. Levels with the same block composition
(how many nested levels of each nested factor they hold) are stacked into one
:class:`LevelGroup` so the evaluation is batched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from daskmm.kernels.level_sums import ONES, level_pair_sums

DENSE_CROSS_LIMIT = 2 ** 25
"""Above this many (level, global column) cells a partition accumulates ``Z_l' W Z_G`` sparsely."""


@dataclass
class Layout:
    """How the random-effect coefficients are laid out (data-free, shipped to workers).

    Attributes
    ----------
    primary : str
        Factor the data are partitioned by.
    nested : list of str
        Factors nested in ``primary`` (local to its levels).
    global_factors : list of str
        Crossed factors; their coefficients form the dense global block.
    q : dict
        Factor -> model columns per level.
    global_levels : dict
        Global factor -> its level keys in code order (raw values or ``"a:b"`` labels).
    p : int
        Number of fixed-effect columns.
    """

    primary: str
    nested: list[str]
    global_factors: list[str]
    q: dict[str, int]
    global_levels: dict[str, np.ndarray] = field(default_factory=dict)
    p: int = 0

    @property
    def global_offsets(self) -> dict[str, int]:
        out, k = {}, 0
        for f in self.global_factors:
            out[f] = k
            k += len(self.global_levels[f]) * self.q[f]
        return out

    @property
    def n_G(self) -> int:
        return sum(len(self.global_levels[f]) * self.q[f] for f in self.global_factors)

    @property
    def k(self) -> int:
        return self.n_G + self.p + 1


@dataclass
class LevelGroup:
    """Levels of the primary factor sharing one block composition.

    Attributes
    ----------
    composition : tuple of int
        Number of levels of each nested factor per primary level.
    levels : ndarray, shape (m,)
        Primary-factor keys.
    nested_levels : list of ndarray, shape (m, c_j)
        Keys of the nested levels, per nested factor, in block order.
    A : ndarray, shape (m, s, s)
    B : ndarray, shape (s, k, m)
        Levels last: every operation on ``B`` runs along the long axis, and
        ``sum_l R_l' R_l = sum_i R[i] R[i]'`` is ``s`` rank-``m`` updates (BLAS syrk).
    """

    composition: tuple[int, ...]
    levels: np.ndarray
    nested_levels: list[np.ndarray]
    A: np.ndarray
    B: np.ndarray

    @property
    def m(self) -> int:
        return len(self.levels)


@dataclass
class PartitionStats:
    """Everything a partition contributes to the profiled objective."""

    groups: list[LevelGroup]
    G: np.ndarray
    n: int
    sum_log_w: float
    n_dropped: int = 0
    ranges: dict | None = None  # response and term-column ranges (daskmm.formula.checks)

    @property
    def nbytes(self) -> int:
        return self.G.nbytes + sum(g.A.nbytes + g.B.nbytes for g in self.groups)


def partition_stats(y: np.ndarray, X: np.ndarray, w: np.ndarray | None, Z: dict[str, np.ndarray],
                    keys: dict[str, np.ndarray], layout: Layout, n_dropped: int = 0,
                    names: dict[str, list[str]] | None = None) -> PartitionStats:
    """Cross-products of one partition.

    Parameters
    ----------
    y, X, w : ndarray
        Response (offset removed), fixed-effects matrix, prior weights (None: all one).
    Z : dict
        Factor -> ``(n, q_f)`` model columns.
    keys : dict
        Factor -> per-row level keys.
    layout : Layout
    n_dropped : int
        Rows dropped for missing values (carried along for the report).
    names : dict, optional
        ``"X"`` -> fixed-effect column names, factor -> its ``Z`` column names. Columns with
        the same name hold the same values and ``"(Intercept)"`` is all ones, so each distinct
        product is accumulated once (``(x | g)`` with ``y ~ x`` needs 5 sums per level, not 9).
    """
    n = len(y)
    p = layout.p
    weighted = w is not None and not bool(np.all(w == 1.0))
    sw = np.sqrt(w) if weighted else None
    G = np.zeros((layout.k, layout.k))
    nG = layout.n_G
    sum_log_w = float(np.log(w).sum()) if weighted else 0.0
    if n and not layout.nested:
        names = names or {}
        zn = names.get(layout.primary) or [f"__z{i}" for i in range(layout.q[layout.primary])]
        vn = (names.get("X") or [f"__x{j}" for j in range(p)]) + ["__response__"]
        vcols = [X[:, j] for j in range(p)] + [y]
        return _single_factor_stats(keys[layout.primary], Z[layout.primary], zn, vcols, vn,
                                    w if weighted else None, sw, Z, keys, G, layout, n,
                                    sum_log_w, n_dropped)
    Vt = np.empty((p + 1, n))  # [X y]' with rows contiguous
    Vt[:p] = X.T
    Vt[p] = y
    Vs = Vt * sw if weighted else Vt
    ZG = _global_matrix(Z, keys, layout, sw if weighted else np.ones(n))
    if nG:
        G[:nG, :nG] = (ZG.T @ ZG).toarray()
        G[:nG, nG:] = ZG.T @ Vs.T
        G[nG:, :nG] = G[:nG, nG:].T
    if n == 0:
        G[nG:, nG:] = Vs @ Vs.T
        return PartitionStats([], G, 0, 0.0, n_dropped)
    p_codes, p_keys = factorize(keys[layout.primary])
    G[nG:, nG:] = Vs @ Vs.T
    V = Vs.T
    q_P = layout.q[layout.primary]
    m_all = len(p_keys)
    sizes = np.full(m_all, q_P, dtype=np.int64)
    nested_info = []
    for f in layout.nested:
        codes, uniq = factorize(keys[f])
        parent = np.full(len(uniq), -1, dtype=np.int64)
        parent[codes] = p_codes
        if (parent[codes] != p_codes).any():
            raise ValueError(f"factor {f!r} is not nested in {layout.primary!r} in this partition")
        count = np.bincount(parent, minlength=m_all)
        # rank of each nested level among the levels of its parent (codes sorted by key)
        order = np.lexsort((np.arange(len(uniq)), parent))
        first = np.concatenate([[0], np.cumsum(count)[:-1]])
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[order] = np.arange(len(uniq)) - first[parent[order]]
        nested_info.append((codes, uniq, parent, count, rank))
        sizes += count * layout.q[f]
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_loc = int(sizes.sum())

    rows, cols, vals = [], [], []
    ZP = Z[layout.primary]
    for j in range(q_P):
        rows.append(np.arange(n))
        cols.append(base[p_codes] + j)
        vals.append(ZP[:, j] * sw if weighted else ZP[:, j])
    offset_in_block = np.full(m_all, q_P, dtype=np.int64)
    for f, (codes, _, parent, count, rank) in zip(layout.nested, nested_info):
        qf = layout.q[f]
        start = base[parent] + offset_in_block[parent] + rank * qf  # per nested level
        for j in range(qf):
            rows.append(np.arange(n))
            cols.append(start[codes] + j)
            vals.append(Z[f][:, j] * sw if weighted else Z[f][:, j])
        offset_in_block += count * qf
    Zl = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(n, n_loc))
    ZlT = Zl.T.tocsr()
    A = (ZlT @ Zl).tocoo()
    BV = ZlT @ V
    BG = (ZlT @ ZG).toarray() if nG else None

    # --- group levels by composition
    comp = np.stack([info[3] for info in nested_info], axis=1) if nested_info else \
        np.zeros((m_all, 0), dtype=np.int64)
    comp_keys, comp_inv = np.unique(comp, axis=0, return_inverse=True)
    comp_inv = np.asarray(comp_inv).ravel()
    level_of_col = np.repeat(np.arange(m_all), sizes)
    groups = []
    for gi, ck in enumerate(comp_keys):
        lev = np.flatnonzero(comp_inv == gi)
        s = int(sizes[lev[0]])
        pos_in_group = np.full(m_all, -1)
        pos_in_group[lev] = np.arange(len(lev))
        Ag = np.zeros((len(lev), s, s))
        sel = pos_in_group[level_of_col[A.row]] >= 0
        r, c, v = A.row[sel], A.col[sel], A.data[sel]
        li = level_of_col[r]
        Ag[pos_in_group[li], r - base[li], c - base[li]] = v
        idx = (base[lev][:, None] + np.arange(s)[None, :]).ravel()
        Bg = np.empty((s, layout.k, len(lev)))
        if nG:
            Bg[:, :nG, :] = BG[idx].reshape(len(lev), s, nG).transpose(1, 2, 0)
        Bg[:, nG:, :] = BV[idx].reshape(len(lev), s, layout.p + 1).transpose(1, 2, 0)
        nested_levels = []
        for (_, uniq, parent, _, rank), c_j in zip(nested_info, ck):
            # levels of this nested factor under each primary level of the group, in rank order
            mat = np.empty((len(lev), int(c_j)), dtype=object)
            if c_j:
                members = np.flatnonzero(np.isin(parent, lev))
                mat[pos_in_group[parent[members]], rank[members]] = \
                    np.asarray(uniq, dtype=object)[members]
            nested_levels.append(mat)
        groups.append(LevelGroup(tuple(int(x) for x in ck), np.asarray(p_keys)[lev],
                                 nested_levels, Ag, Bg))
    return PartitionStats(groups, G, n, sum_log_w, n_dropped)


def _single_factor_stats(primary_keys, Zp, z_names, vcols, v_names, w, sw, Z, keys, G,
                         layout: Layout, n: int, sum_log_w: float,
                         n_dropped: int) -> PartitionStats:
    """Fast path without nested factors: every block is ``q_P x q_P``, so each entry of ``A``,
    ``B`` and ``V'WV`` is a per-level sum of one product of columns. Each distinct pair of
    column names is summed once (``(x | g)`` with ``y ~ x`` needs 6 sums per level, not 12),
    all of them in one compiled pass over the rows (:func:`level_pair_sums`)."""
    s, k, nG = Zp.shape[1], layout.k, layout.n_G
    col_of: dict[str, int] = {}
    cols: list[np.ndarray] = []
    pair_of: dict[tuple[int, int], int] = {}

    def pair(na: str, a: np.ndarray, nb: str, b: np.ndarray) -> int:
        ids = []
        for name, v in ((na, a), (nb, b)):
            if name == "(Intercept)":
                ids.append(ONES)
                continue
            if name not in col_of:
                col_of[name] = len(cols)
                cols.append(v)
            ids.append(col_of[name])
        key = (min(ids), max(ids))
        return pair_of.setdefault(key, len(pair_of))

    a_idx = {(i, j): pair(z_names[i], Zp[:, i], z_names[j], Zp[:, j])
             for i in range(s) for j in range(i, s)}
    b_idx = {(i, j): pair(z_names[i], Zp[:, i], v_names[j], v)
             for i in range(s) for j, v in enumerate(vcols)}
    g_idx = {(a, b): pair(v_names[a], vcols[a], v_names[b], vcols[b])
             for a in range(len(vcols)) for b in range(a, len(vcols))}
    sums, levels, codes = level_pair_sums(primary_keys, cols, np.array(list(pair_of)), w,
                                          want_codes=bool(nG))
    m = len(levels)
    A = np.empty((m, s, s))
    B = np.empty((s, k, m))
    for (i, j), ix in a_idx.items():
        A[:, i, j] = A[:, j, i] = sums[ix]
    for (i, j), ix in b_idx.items():
        B[i, nG + j] = sums[ix]
    for (a, b), ix in g_idx.items():
        G[nG + a, nG + b] = G[nG + b, nG + a] = sums[ix].sum()
    if not nG:
        return PartitionStats([LevelGroup((), levels, [], A, B)], G, n, sum_log_w, n_dropped)
    ZG = _global_matrix(Z, keys, layout, sw if sw is not None else np.ones(n))
    Vs = np.column_stack(vcols) if sw is None else np.column_stack(vcols) * sw[:, None]
    G[:nG, :nG] = (ZG.T @ ZG).toarray()
    G[:nG, nG:] = ZG.T @ Vs
    G[nG:, :nG] = G[:nG, nG:].T
    Zw = Zp * sw[:, None] if sw is not None else Zp
    if nG and m * nG <= DENSE_CROSS_LIMIT:
        # Z_l' W Z_G entry by entry: one bincount over (level, global column) pairs
        ZGc = ZG.tocoo()
        row_level = codes.astype(np.int64)[ZGc.row] * nG + ZGc.col
        for i in range(s):
            B[i, :nG] = np.bincount(row_level, Zw[ZGc.row, i] * ZGc.data,
                                    minlength=m * nG).reshape(m, nG).T
    elif nG:
        rows = codes.astype(np.int64)
        for i in range(s):
            Zi = sp.csr_matrix((Zw[:, i], (rows, np.arange(n))), shape=(m, n))
            B[i, :nG] = (Zi @ ZG).toarray().T
    return PartitionStats([LevelGroup((), levels, [], A, B)], G, n, sum_log_w, n_dropped)


def factorize(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes and sorted distinct keys. Integer keys over a compact range are mapped by direct
    indexing (a few passes, no hashing); anything else goes through ``pandas.factorize``."""
    n = len(keys)
    if keys.dtype.kind in "iu" and n:
        lo, hi = int(keys.min()), int(keys.max())
        if hi - lo <= 4 * n + 1024:
            off = keys
            if lo:
                off = keys - lo
            present = np.zeros(hi - lo + 1, dtype=bool)
            present[off] = True
            remap = np.cumsum(present, dtype=np.intp) - 1  # intp: bincount would cast otherwise
            # mode="clip": every offset is in range by construction, and "raise" buffers `out`
            codes = np.take(remap, off, mode="clip")
            return codes, np.flatnonzero(present) + lo
    codes, uniq = pd.factorize(keys, sort=True)
    return codes, np.asarray(uniq)


def _global_matrix(Z, keys, layout: Layout, sw: np.ndarray) -> sp.csr_matrix | None:
    if not layout.global_factors:
        return None
    n = len(sw)
    rows, cols, vals = [], [], []
    for f, off in layout.global_offsets.items():
        lev = layout.global_levels[f]
        codes = pd.Categorical(keys[f], categories=lev).codes.astype(np.int64)
        if (codes < 0).any():
            bad = keys[f][np.flatnonzero(codes < 0)[0]]
            raise ValueError(f"level {bad!r} of factor {f!r} was not seen by the metadata pass")
        qf = layout.q[f]
        for j in range(qf):
            rows.append(np.arange(n))
            cols.append(off + codes * qf + j)
            vals.append(Z[f][:, j] * sw)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n, layout.n_G))


def concat_groups(stats: list[PartitionStats]) -> PartitionStats:
    """Stack the level groups of aligned partitions (each primary level in one partition).

    Levels are sorted by key inside each composition, so the result does not depend on how the
    rows were partitioned.
    """
    by_comp: dict[tuple[int, ...], list[LevelGroup]] = {}
    for s in stats:
        for g in s.groups:
            by_comp.setdefault(g.composition, []).append(g)
    groups = []
    for comp in sorted(by_comp):
        gs = by_comp[comp]
        levels = np.concatenate([g.levels for g in gs])
        order = _argsort_keys(levels)
        groups.append(LevelGroup(
            comp, levels[order],
            [np.concatenate([g.nested_levels[j] for g in gs])[order] for j in range(len(comp))],
            np.concatenate([g.A for g in gs])[order],
            np.ascontiguousarray(np.concatenate([g.B for g in gs], axis=2)[:, :, order])))
    return PartitionStats(groups, sum(s.G for s in stats), sum(s.n for s in stats),
                          sum(s.sum_log_w for s in stats), sum(s.n_dropped for s in stats))


def merge_levels(stats: list[PartitionStats]) -> PartitionStats:
    """Combine partitions whose primary levels overlap, by summing per-level blocks.

    Only valid without nested factors (every block then has the same layout, ``q_P`` columns).
    """
    allg = [g for s in stats for g in s.groups]
    if any(g.composition for g in allg):
        raise ValueError("merge_levels needs partitions aligned on the primary factor when "
                         "there are nested factors")
    if not allg:
        return concat_groups(stats)
    levels = np.concatenate([g.levels for g in allg])
    codes, uniq = pd.factorize(levels, sort=True)
    order = np.argsort(codes, kind="stable")  # partition order within a level: deterministic
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    A = np.add.reduceat(np.concatenate([g.A for g in allg])[order], starts, axis=0)
    B = np.add.reduceat(np.concatenate([g.B for g in allg], axis=2)[:, :, order], starts,
                        axis=2)
    merged = LevelGroup((), np.asarray(uniq), [], A, B)
    return PartitionStats([merged], sum(s.G for s in stats), sum(s.n for s in stats),
                          sum(s.sum_log_w for s in stats), sum(s.n_dropped for s in stats))


def _argsort_keys(keys: np.ndarray) -> np.ndarray:
    try:
        return np.argsort(keys, kind="stable")
    except TypeError:
        return np.argsort(keys.astype(str), kind="stable")
