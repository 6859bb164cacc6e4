"""Penalised iteratively reweighted least squares (PIRLS) for the Laplace approximation, for any
random-effect structure the LMM engine accepts (pure numpy/scipy; never imports dask).

For fixed ``(theta, beta)`` the conditional modes ``u*`` (spherical: ``b = Lambda u``) minimise
the penalised deviance

    pdev(u) = -2 sum_i log p(y_i | eta_i) + |u|^2,   eta = X beta + offset + Z Lambda u.

Each PIRLS step solves the penalised weighted least-squares problem at the current Fisher
weights ``W`` and working residual ``r = Z b + (y - mu) / mu_eta``,

    (Lambda' Z' W Z Lambda + I) u_new = Lambda' Z' W r,

which is exactly the LMM's blocked system with no fixed-effect columns (``p = 0``) and ``r`` as
the response: the same per-level statistics (:func:`~daskmm.kernels.stats.partition_stats`),
the same batched per-level factors (:func:`~daskmm.kernels.pls.eval_group`) and, for crossed
factors, the same dense Schur block. The step is halved while ``pdev`` increases (as lme4). At
the modes, with ``L L' = Lambda' Z' W Z Lambda + I`` at the weights there, the Laplace
approximation to ``-2 log`` of the marginal likelihood is

    -2 sum_i log p(y_i | eta_i(u*)) + |u*|^2 + log|L|^2        (lme4's ``nAGQ = 1`` deviance),

normalising constants of the family included by the caller.

Local coefficients (the primary factor and factors nested in it) live with their partition;
every primary level's block is independent, so without crossed factors a partition runs PIRLS
to convergence on its own (:func:`local_laplace`). Crossed factors couple the partitions: the
caller iterates over local and crossed modes together, each step one map of
:func:`crossed_try` over the partitions' :class:`CrossedState` and one small dense solve of the
global block (:func:`global_step`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg as la
import scipy.sparse as sp

from daskmm.kernels.block_chol import (
    block_layout,
    chol_blocks,
    crossed_pass,
    crossed_pass_two,
    crossed_scalar_pass,
    normal_blocks,
    solve_blocks,
)
from daskmm.kernels.laplace_grad import gradient_pass, gradient_pass_two, local_inverse
from daskmm.kernels.pls import backward_solve, eval_group, group_Lambda
from daskmm.kernels.scalar_re import row_terms
from daskmm.kernels.stats import Layout, LevelGroup, partition_stats

MAX_ITER = 200
STALL = 1e-8
"""Steps below ``STALL (1 + max|u|)`` that stop shrinking twice running end PIRLS (the rounding
floor of its target), though above :data:`TOL_U`."""
TOL_U = 1e-12
"""Stop when a full PIRLS step moves no spherical mode by more than ``TOL_U (1 + max|u|)``."""
_W_MIN = 1e-300
_W_MAX = 1e100  # weights beyond this overflow the cross-products: the point is rejected


@dataclass
class PirlsData:
    """One partition's encoded rows, kept on a worker for the whole fit.

    ``Z[f]``, ``keys[f]``: model columns and level keys of each grouping factor; ``wt``: binomial
    trials or prior weights (ones without); ``const``: sum of the family's log normalising
    constants; ``nb_k``: the negative binomial's size at the current evaluation (unused by the
    other families).
    ``u_warm`` caches the local modes of the last evaluation (a warm start; results do not
    depend on it beyond the PIRLS tolerance).
    """

    X: np.ndarray
    y: np.ndarray
    wt: np.ndarray
    offset: np.ndarray
    Z: dict[str, np.ndarray]
    keys: dict[str, np.ndarray]
    const: float
    n_dropped: int
    primary: str = ""
    index: ReIndex | None = None  # set by build_index
    u_warm: list[np.ndarray] | np.ndarray | None = None
    warm_groups: list[LevelGroup] | None = None  # the level groups u_warm is laid out by
    g_groups: list[LevelGroup] | None = None  # the level groups (of the keys), build_index's
    nb_k: float = 0.0


@dataclass
class ReIndex:
    """Where each row's coefficients sit: ``start[f][i]`` is the position in the flattened local
    ``b`` (level groups in order, each ``(m, s)`` row-major) or, for a crossed factor, in
    ``b_G``, of row ``i``'s first column on factor ``f``."""

    start: dict[str, np.ndarray]
    group_shapes: list[tuple[int, int]]
    compositions: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
    Z_loc: sp.csr_matrix | None = None  # rows x local coefficients, in the flattened order


@dataclass
class Point:
    """PIRLS quantities of one partition at one ``u``: the local modes ``u`` (per level group),
    the log-likelihood ``ll`` (no family constants), ``uu = |u_loc|^2``, the local
    ``log|L_l|^2`` sum, ``R'R``, ``G`` (``k = n_G + 1`` columns: global, working residual) and
    the per-group factors ``(L, R)`` at the weights there."""

    u: list[np.ndarray]
    ll: float
    uu: float
    logdet: float
    RtR: np.ndarray
    G: np.ndarray
    factors: list[tuple[np.ndarray, np.ndarray]]
    groups: list[LevelGroup]
    step: tuple[float, float] = (0.0, 0.0)  # (max |u change|, max |u|) from the last point

    def summary(self) -> tuple[float, float, float, np.ndarray, np.ndarray]:
        return self.ll, self.uu, self.logdet, self.RtR, self.G


def pls_layout(layout: Layout) -> Layout:
    """The layout of the PIRLS system: the model's, without fixed-effect columns."""
    return dataclasses.replace(layout, p=0)


def _index(data: PirlsData, groups: list[LevelGroup], layout: Layout) -> ReIndex:
    start: dict[str, np.ndarray] = {}
    base = 0
    keys: dict[str, list] = {f: [] for f in [layout.primary, *layout.nested]}
    starts: dict[str, list] = {f: [] for f in keys}
    shapes = []
    qP = layout.q[layout.primary]
    for g in groups:
        m, s = g.A.shape[0], g.A.shape[1]
        first = base + np.arange(m) * s
        keys[layout.primary].append(g.levels)
        starts[layout.primary].append(first)
        off = qP
        for f, c, nl in zip(layout.nested, g.composition, g.nested_levels):
            for r in range(int(c)):
                keys[f].append(nl[:, r])
                starts[f].append(first + off + r * layout.q[f])
            off += int(c) * layout.q[f]
        base += m * s
        shapes.append((m, s))
    for f in keys:
        k = np.concatenate(keys[f]) if keys[f] else np.array([])
        pos = pd.Index(k).get_indexer(data.keys[f])
        start[f] = np.concatenate(starts[f])[pos] if len(pos) else np.zeros(0, dtype=np.int64)
    for f, off in layout.global_offsets.items():
        codes = pd.Index(layout.global_levels[f]).get_indexer(data.keys[f])
        start[f] = off + codes * layout.q[f]
    n, rows, cols, vals = len(data.y), [], [], []
    for f in [layout.primary, *layout.nested]:
        for j in range(layout.q[f]):
            rows.append(np.arange(n))
            cols.append(start[f] + j)
            vals.append(data.Z[f][:, j])
    n_loc = base
    Z_loc = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n, n_loc)) if n else sp.csr_matrix((0, n_loc))
    return ReIndex(start, shapes, [g.composition for g in groups], Z_loc)


def _z_names(data: PirlsData) -> dict[str, list[str]]:
    return {f: [f"{f}#{j}" for j in range(z.shape[1])] for f, z in data.Z.items()}


def build_index(data: PirlsData, layout: Layout) -> None:
    """Attach :class:`ReIndex` to ``data`` (once, when the partition is prepared). Level groups
    depend only on the keys, so every later :func:`point` sees the same groups in the same
    order."""
    n = len(data.y)
    stats = partition_stats(np.zeros(n), np.empty((n, 0)), None, data.Z, data.keys, layout,
                            names=_z_names(data))
    data.primary = layout.primary
    data.index = _index(data, stats.groups, layout)
    data.g_groups = stats.groups  # the level groups every later point is laid out by


def _zb(data: PirlsData, layout: Layout, b_loc: np.ndarray | None,
        b_G: np.ndarray | None) -> np.ndarray:
    """``Z b`` per row from the flattened local ``b`` and the global ``b_G``."""
    out = np.zeros(len(data.y))
    idx = data.index
    for f in [layout.primary, *layout.nested]:
        if b_loc is None:
            break
        for j in range(layout.q[f]):
            out += data.Z[f][:, j] * b_loc[idx.start[f] + j]
    for f in layout.global_factors:
        if b_G is None:
            break
        for j in range(layout.q[f]):
            out += data.Z[f][:, j] * b_G[idx.start[f] + j]
    return out


def _group_lams(groups: list[LevelGroup], layout: Layout,
                lam: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Each group's block ``Lambda`` (built once per composition)."""
    cache: dict[tuple[int, ...], np.ndarray] = {}
    for g in groups:
        if g.composition not in cache:
            cache[g.composition] = group_Lambda(layout, lam, g.composition)
    return [cache[g.composition] for g in groups]


def _b_flat(u: list[np.ndarray], groups: list[LevelGroup], layout: Layout,
            lam: dict[str, np.ndarray]) -> np.ndarray:
    lams = _group_lams(groups, layout, lam)
    parts = [ug @ Lg.T for ug, Lg in zip(u, lams)]
    return np.concatenate([p.ravel() for p in parts]) if parts else np.zeros(0)


def point(data: PirlsData, layout: Layout, lam: dict[str, np.ndarray], eta_fixed: np.ndarray,
          u: list[np.ndarray] | None, b_G: np.ndarray | None, family: int, link: int,
          groups: list[LevelGroup] | None = None) -> Point:
    """PIRLS quantities at local modes ``u`` (None: zero) and global ``b_G = Lambda_G u_G``.

    ``layout`` is the PIRLS layout (:func:`pls_layout`); ``groups`` (the level groups of an
    earlier point of this partition) are needed when ``u`` is given."""
    b_loc = _b_flat(u, groups, layout, lam) if u is not None else None
    zb = _zb(data, layout, b_loc, b_G)
    eta = eta_fixed + zb
    ll, sc, w = row_terms(eta, data.y, data.wt, data.nb_k, family, link)
    if u is None:
        u = [np.zeros(s) for s in data.index.group_shapes]
    uu = float(sum(np.dot(x.ravel(), x.ravel()) for x in u))
    k = layout.k
    rejected = Point(u, -np.inf, uu, np.inf, np.full((k, k), np.nan), np.full((k, k), np.nan),
                     [], groups or [])
    if not (np.isfinite(ll).all() and np.all(w < _W_MAX)):  # far in a tail: reject the point
        return rejected
    w = np.maximum(w, _W_MIN)
    r = zb + sc / w
    stats = partition_stats(r, np.empty((len(r), 0)), w, data.Z, data.keys, layout,
                            names=_z_names(data))
    logdet, RtR, factors = 0.0, np.zeros((k, k)), []
    with np.errstate(invalid="ignore", divide="ignore"):
        for g, Lg in zip(stats.groups, _group_lams(stats.groups, layout, lam)):
            try:
                ld, rr, (L, R) = eval_group(g, Lg, keep_factors=True)
            except np.linalg.LinAlgError:  # weights so extreme that rounding breaks Cholesky
                return rejected
            logdet += ld
            RtR += rr
            factors.append((L, R))
    if not (np.isfinite(logdet) and np.isfinite(RtR).all()):
        return rejected
    return Point(u, float(ll.sum()), uu, logdet, RtR, stats.G, factors, stats.groups)


def local_modes(pt: Point, layout: Layout, b_G: np.ndarray | None) -> list[np.ndarray]:
    """The PLS solution for the local modes given the global ``b_G``:
    ``u_l = L_l^{-T} (R_l,r - R_l,G b_G)``."""
    g = layout.n_G
    out = []
    for L, R in pt.factors:
        c = R[:, -1, :].T.copy()
        if g and b_G is not None:
            c -= np.einsum("sgm,g->ms", R[:, :g, :], b_G)
        out.append(backward_solve(L, c))
    return out


def spherical_length2(b: np.ndarray, lam: np.ndarray) -> float:
    """``sum |u|^2`` of one factor's modes ``b`` (levels x columns), ``u = Lambda^+ b`` a
    level: the minimum-norm ``u`` where ``Lambda`` is singular, as PIRLS's penalty makes it."""
    u = np.asarray(b, dtype=float) @ np.linalg.pinv(np.asarray(lam, dtype=float)).T
    return float(np.sum(u * u))


def pdev(ll: float, uu: float) -> float:
    """Penalised deviance without the family constants."""
    return -2.0 * ll + uu


def _lambda_loc(index: ReIndex, layout: Layout, lam: dict[str, np.ndarray]) -> sp.csr_matrix:
    """The partition's local ``Lambda``: each level group's block, once per level.

    The structure (every entry a block's ``Lambda`` may hold, repeated per level, and which
    entry of which factor's ``Lambda`` it is) is built once per partition and cached on
    ``index``; an evaluation is one gather of the values."""
    names = sorted(lam)
    pattern = getattr(index, "_lambda_pattern", None)
    if pattern is None:
        offs, pos = {}, 0
        for f in names:
            offs[f] = pos
            pos += lam[f].size
        marks = {f: np.tril(offs[f] + 1.0 + np.arange(lam[f].size).reshape(lam[f].shape))
                 for f in names}  # 1 + position in the flat vector; 0: a structural zero
        rows, cols, src, base = [], [], [], 0
        for (m, s), comp in zip(index.group_shapes, index.compositions):
            block = group_Lambda(layout, marks, comp)
            r, c = np.nonzero(block)
            offs_l = base + np.arange(m)[:, None] * s
            rows.append((offs_l + r).ravel())
            cols.append((offs_l + c).ravel())
            src.append(np.tile(block[r, c].astype(np.int64) - 1, m))
            base += m * s
        cat = (lambda parts: np.concatenate(parts) if parts else  # noqa: E731
               np.zeros(0, dtype=np.int64))
        shell = sp.csr_matrix((np.arange(len(cat(src)), dtype=float), (cat(rows), cat(cols))),
                              shape=(base, base))
        order = shell.data.astype(np.int64)  # where each stored entry came from
        pattern = (shell.indices, shell.indptr, cat(src)[order], base)
        index._lambda_pattern = pattern
    indices, indptr, src, n = pattern
    flat = np.concatenate([lam[f].ravel() for f in names]) if names else np.zeros(0)
    return sp.csr_matrix((flat[src], indices, indptr), shape=(n, n))


def rounding_floor(extra: int, step: float, last: float | None) -> bool:
    """Whether to take one more PIRLS step past the tolerance (at most ``extra`` more): while
    the steps still shrink to under half the last one (Fisher scoring converges linearly
    for a non-canonical link); a step that no longer does is at the rounding floor."""
    return extra > 0 and (last is None or step < 0.5 * last)


def newton_done(prev: float | None, step: float, scale: float,
                c_known: float | None = None) -> bool:
    """After two full Newton steps of sizes ``prev`` then ``step``, whether the point reached
    is within the tolerance of the modes: Newton's error after a step is ``C step^2``, with
    ``C`` estimated as ``step / prev^2`` and taken as at least 1 (:func:`newton_constant`).
    After one step (``prev`` None) only with ``c_known``, an estimate from an earlier solve
    of the same model."""
    if prev is not None and prev > 0:
        c = newton_constant(prev, step)
    elif prev is None and c_known is not None:
        c = c_known
    else:
        return False
    return c * step ** 2 < TOL_U * (1.0 + scale)


def newton_constant(prev: float, step: float) -> float:
    """``C`` of Newton's ``|e_new| <= C |e|^2`` from two full steps, at least 1."""
    return max(1.0, step / prev ** 2) if prev > 0 else 1.0


def local_laplace(data: PirlsData, layout: Layout, lam: dict[str, np.ndarray],
                  beta: np.ndarray, family: int, link: int,
                  eta_extra: np.ndarray | None = None, newton: bool = False,
                  with_dev: bool = False, extra: int = 0) -> float | tuple[float, float]:
    """PIRLS to convergence inside one partition over its local modes (``eta_extra``: a fixed
    addition to the linear predictor, the crossed factors' ``Z_G b_G``); returns the
    partition's Laplace deviance without the family constants (the local part of it).

    With ``Z~ = Z Lambda`` (sparse, block diagonal by primary level in its columns) each step
    solves ``(Z~' W Z~ + I) u_new = Z~' (W Z~ u + score)`` block by block
    (:mod:`daskmm.kernels.block_chol`: one compiled pass accumulates the dense blocks, one
    factors and solves them), and ``log|L|^2`` is the sum over the blocks. Levels are
    independent, so halving the step on the partition's total ``pdev`` is a valid (if
    conservative) line search; the stopping rule is per coefficient. With ``newton`` (a
    canonical link, for which these steps are Newton's) it also stops once a full step leaves
    ``C step^2`` below the tolerance (:func:`newton_done`), saving the step that would only
    confirm it. With ``with_dev`` it returns ``(value, -2 sum ll)`` at the modes (the
    deviance of a family with a dispersion, whose criterion is not linear in it), and with
    ``extra`` goes on past the tolerance to the rounding floor (:func:`rounding_floor`): that
    criterion is not stationary in the modes (their error enters the deviance to first
    order, times ``d aic / d deviance``, ~1e5 for a Gamma dispersion of 1e-5), so the modes
    must be at rounding, not at the tolerance, for the Hessian's differences."""
    if with_dev:
        value = local_laplace(data, layout, lam, beta, family, link, eta_extra, newton,
                              extra=extra)
        if not np.isfinite(value):
            return value, np.nan
        u = data.u_warm
        return value, float(data._last_pdev - (u @ u if len(u) else 0.0))
    eta_fixed = data.X @ beta + data.offset
    if eta_extra is not None:
        eta_fixed = eta_fixed + eta_extra
    ZL, ZLT, blocks = local_system(data, layout, lam)  # Z~ once per Lambda
    n_loc = ZL.shape[1]
    start, size, off, col_block = blocks
    total = int(np.sum(size * size))

    def at(u):
        eta = eta_fixed + ZL @ u
        ll, sc, w = row_terms(eta, data.y, data.wt, data.nb_k, family, link)
        if not (np.isfinite(ll).all() and np.all(w < _W_MAX)):
            return np.inf, None, None
        return -2.0 * ll.sum() + u @ u, sc, w

    def solve(w, rhs):
        M = normal_blocks(ZL.indptr, ZL.indices, ZL.data, w, col_block, start, size, off,
                          total)
        logdet, ok = chol_blocks(M, start, size, off)
        if not ok:
            raise RuntimeError("not positive definite")
        return solve_blocks(M, start, size, off, rhs[:, None])[:, 0], logdet

    u = None
    # a family with a dispersion (extra) starts cold: from a warm start PIRLS stops at the
    # tolerance on a slightly different point, and its criterion, not stationary in the modes,
    # then differs by ~1e-7 between evaluations (the Hessian's differences saw the jumps)
    if extra <= 0 and isinstance(data.u_warm, np.ndarray) and len(data.u_warm) == n_loc:
        u = data.u_warm
        p0, sc, w = at(u)
    if u is None or not np.isfinite(p0):
        u = np.zeros(n_loc)
        p0, sc, w = at(u)
    if not np.isfinite(p0):
        return np.inf
    prev = None  # the last full step's size
    last_small = None  # the last step below the tolerance (with ``extra``)
    last_step, stalled = None, 0
    for _ in range(MAX_ITER + max(extra, 0)):
        try:
            target, _ = solve(w, ZLT @ (w * (ZL @ u) + sc))
        except RuntimeError:  # singular: weights so extreme that rounding broke it
            return np.inf
        step = float(np.max(np.abs(target - u))) if n_loc else 0.0
        scale = float(np.max(np.abs(u))) if n_loc else 0.0
        tiny = step < TOL_U * (1.0 + scale)
        t = 1.0
        while True:
            cand = u + t * (target - u)
            p, sc_c, w_c = at(cand)
            if p <= p0 + 1e-12 * abs(p0) or t < 1e-8 or tiny:
                break
            t *= 0.5
        if not np.isfinite(p):
            return np.inf
        if tiny and not p <= p0 + 1e-12 * abs(p0):
            break  # a step below the tolerance that does not lower pdev: rounding
        # steps that no longer shrink, far below any visible change: the iteration has met
        # the rounding of its own target (Oxide's Gamma fit: steps of 5e-11 on modes of
        # 7e-3, pdev changing in its 16th digit) and would go on to MAX_ITER, halving each
        stalled = stalled + 1 if (last_step is not None and step < STALL * (1.0 + scale)
                                  and step > 0.5 * last_step) else 0
        last_step = step
        if stalled >= 2:
            if p <= p0 + 1e-12 * abs(p0):
                u, p0, sc, w = cand, p, sc_c, w_c
            break
        u, p0, sc, w = cand, p, sc_c, w_c
        if step < TOL_U * (1.0 + scale):  # the full PLS step is tiny
            if not rounding_floor(extra, step, last_small):
                break
            extra -= 1
            last_small = step
            continue
        if newton and t == 1.0 and newton_done(prev, step, scale):
            break
        prev = step if t == 1.0 else None
    data.u_warm = u
    data._last_pdev = p0
    logdet = solve(w, np.zeros(n_loc))[1] if n_loc else 0.0
    return p0 + logdet


@dataclass
class JointState:
    """One partition's PIRLS state over ``(u, beta)`` at one point (nAGQ = 0): the modes, the
    penalised deviance, ``log|M|`` and the pieces of the fixed-effect Schur complement,
    ``M^{-1} C`` and ``M^{-1} c`` with ``C = Z~' W X``, ``c = Z~' W r``."""

    u: np.ndarray
    beta: np.ndarray
    pdev: float
    logdet: float
    Minv_C: np.ndarray
    Minv_c: np.ndarray
    Sx: np.ndarray
    sx: np.ndarray
    dev: float = 0.0  # -2 sum ll: the deviance of a family with a dispersion


def _blocks(idx: ReIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The block layout of ``M``: one block per primary level, in the flattened order."""
    blocks = getattr(idx, "_blocks", None)
    if blocks is None:
        blocks = idx._blocks = block_layout(np.concatenate(
            [np.full(m, s, dtype=np.int64) for m, s in idx.group_shapes] or [np.zeros(0)]))
    return blocks


def local_system(data: PirlsData, layout: Layout, lam: dict[str, np.ndarray]):
    """``Z~ = Z Lambda`` (CSR), its transpose and the block layout of ``M``."""
    idx = data.index
    blocks = _blocks(idx)
    # every PIRLS step of one evaluation has the same Lambda: build Z~ once for it
    key = tuple((f, lam[f].tobytes()) for f in sorted(lam))
    cached = getattr(idx, "_ZL", None)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2], blocks
    ZL = (idx.Z_loc @ _lambda_loc(idx, layout, lam)).tocsr()
    ZL.sum_duplicates()
    ZL.indptr, ZL.indices = ZL.indptr.astype(np.int64), ZL.indices.astype(np.int64)
    ZLT = ZL.T.tocsr()
    idx._ZL = (key, ZL, ZLT)
    return ZL, ZLT, blocks


def joint_state(data: PirlsData, ZL, ZLT, blocks, u: np.ndarray, beta: np.ndarray,
                family: int, link: int) -> JointState | None:
    """The joint PIRLS state at ``(u, beta)``; None when the point is unusable (weights
    overflow, a block not positive definite)."""
    eta = data.X @ beta + data.offset + ZL @ u
    ll, sc, w = row_terms(eta, data.y, data.wt, data.nb_k, family, link)
    if not (np.isfinite(ll).all() and np.all(w < _W_MAX)):
        return None
    w = np.maximum(w, _W_MIN)
    start, size, off, col_block = blocks
    total = int(np.sum(size * size))
    M = normal_blocks(ZL.indptr, ZL.indices, ZL.data, w, col_block, start, size, off, total)
    logdet, ok = chol_blocks(M, start, size, off)
    if not ok:
        return None
    r = ZL @ u + data.X @ beta + sc / w  # working response, without the offset
    WX = data.X * w[:, None]
    C = np.asarray(ZLT @ WX)
    c = ZLT @ (w * r)
    sol = solve_blocks(M, start, size, off, np.column_stack([C, c]))
    Minv_C, Minv_c = sol[:, :-1], sol[:, -1]
    Sx = data.X.T @ WX - C.T @ Minv_C
    sx = WX.T @ r - C.T @ Minv_c
    dev = float(-2.0 * ll.sum())
    return JointState(u, beta, dev + float(u @ u), float(logdet), Minv_C, Minv_c, Sx, sx, dev)


def global_zb(data: PirlsData, layout: Layout, b_G: np.ndarray) -> np.ndarray:
    """``Z_G b_G`` per row: the crossed factors' part of the linear predictor."""
    return _zb(data, layout, None, b_G)


def split_local(data: PirlsData, u_flat: np.ndarray) -> list[np.ndarray]:
    """Flattened local modes as one ``(m, s)`` array per level group."""
    out, k = [], 0
    for m, s in data.index.group_shapes:
        out.append(u_flat[k:k + m * s].reshape(m, s))
        k += m * s
    return out


@dataclass
class CrossedPieces:
    """What the client needs of one partition for a global PIRLS step, at a
    :class:`CrossedState`: ``ll``, ``uu = |u_loc|^2``, ``logdet = log|M_loc|``, ``RtR`` and
    ``G`` over the global columns and the working residual (``k = n_G + 1``), as
    :class:`Point`'s."""

    ll: float
    uu: float
    logdet: float
    RtR: np.ndarray
    G: np.ndarray
    step: tuple[float, float] = (0.0, 0.0)

    def summary(self) -> tuple[float, float, float, np.ndarray, np.ndarray]:
        return self.ll, self.uu, self.logdet, self.RtR, self.G


def _global_matrix(data: PirlsData, layout: Layout) -> sp.csr_matrix:
    """Rows x global coefficients (``Z_G``), built once per partition."""
    ZG = getattr(data, "_ZG", None)
    if ZG is None:
        n, rows, cols, vals = len(data.y), [], [], []
        for f in layout.global_factors:
            for j in range(layout.q[f]):
                rows.append(np.arange(n))
                cols.append(data.index.start[f] + j)
                vals.append(data.Z[f][:, j])
        ZG = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(n, layout.n_G))
        ZG.sum_duplicates()
        ZG.indptr, ZG.indices = ZG.indptr.astype(np.int64), ZG.indices.astype(np.int64)
        data._ZG = ZG
    return ZG


@dataclass
class CrossedState:
    """One partition's PIRLS state with crossed factors at local modes ``u`` (flattened) and
    the crossed factors' ``b_G``: the pieces for the client's global step, and
    ``M^{-1} Z~' W [Z_G, r]``, from which the local PLS solution for any global step follows
    without another factorisation."""

    u: np.ndarray
    b_G: np.ndarray
    pieces: CrossedPieces
    Minv_C: np.ndarray
    step: tuple[float, float] = (0.0, 0.0)
    M: np.ndarray | None = None  # the factored local blocks (flat), for the gradient


def _eta_fixed(data: PirlsData, beta: np.ndarray) -> np.ndarray:
    """``X beta + offset``, kept for the last ``beta`` (every PIRLS step of an evaluation)."""
    cached = getattr(data, "_eta_fixed", None)
    if cached is not None and np.array_equal(cached[0], beta):
        return cached[1]
    eta0 = data.X @ beta + data.offset
    data._eta_fixed = (np.array(beta, dtype=float), eta0)
    return eta0


def crossed_state(data: PirlsData, layout: Layout, lam: dict[str, np.ndarray],
                  beta: np.ndarray, u: np.ndarray, b_G: np.ndarray, family: int, link: int
                  ) -> CrossedState | None:
    """The state at ``(u, b_G)``: weights there, the local block factors, and the Schur pieces
    ``RtR = C' M^{-1} C`` with ``C = Z~_loc' W [Z_G, r]``, ``G = [Z_G, r]' W [Z_G, r]``. None
    when the point is unusable."""
    eta0 = _eta_fixed(data, beta)
    rows = scalar_rows(data, layout)
    if rows is not None:  # every factor one column: the pass without CSR indirections
        blocks = _blocks(data.index)
        start, size, off, col_block = blocks
        l_col, l_z, g_col, g_z = rows.l_col, rows.l_z, rows.g_col, rows.g_z
        l_val = l_z * np.array([float(lam[f][0, 0]) for f in rows.local])[:, None]
        kernel = crossed_pass_two if len(rows.local) == len(rows.crossed) == 1 else \
            crossed_scalar_pass
        ok, ll, logdet, M, G, C = kernel(
            l_col, l_val, g_col, g_z, u, b_G, eta0, data.y, data.wt, data.nb_k, family, link,
            col_block, start, size, off, int(np.sum(size * size)), _W_MIN, _W_MAX)
    else:
        ZG = _global_matrix(data, layout)
        ZL, _, blocks = local_system(data, layout, lam)
        start, size, off, col_block = blocks
        ok, ll, logdet, M, G, C = crossed_pass(
            ZL.indptr, ZL.indices, ZL.data, ZG.indptr, ZG.indices, ZG.data, u, b_G, eta0,
            data.y, data.wt, data.nb_k, family, link, col_block, start, size, off,
            int(np.sum(size * size)), _W_MIN, _W_MAX)
    if not ok:
        return None
    Minv_C = solve_blocks(M, start, size, off, C)
    pieces = CrossedPieces(float(ll), float(u @ u), float(logdet), C.T @ Minv_C, G)
    return CrossedState(u, b_G, pieces, Minv_C, M=M)


def crossed_try(data: PirlsData, st: CrossedState, layout: Layout, lam: dict[str, np.ndarray],
                beta: np.ndarray, b_G_target: np.ndarray, t: float, family: int, link: int
                ) -> CrossedState | None:
    """One joint PIRLS step from ``st``: the local PLS solution given ``b_G_target``
    (``u = M^{-1} (Z~' W r - Z~' W Z_G b_G)``, from ``st``'s factors), a fraction ``t`` of the
    way for both."""
    g = layout.n_G
    u_target = st.Minv_C[:, g] - st.Minv_C[:, :g] @ b_G_target
    new = crossed_state(data, layout, lam, beta, st.u + t * (u_target - st.u),
                        st.b_G + t * (b_G_target - st.b_G), family, link)
    if new is not None:
        new.step = (float(np.max(np.abs(u_target - st.u), initial=0.0)),
                    float(np.max(np.abs(st.u), initial=0.0)))
    return new


@dataclass
class ScalarRows:
    """Every row's column and raw model value on each factor, when every factor has one
    column (scalar terms): ``l_col[k, i]`` in the local ``u`` for ``local[k]``, ``g_col[k, i]``
    in ``u_G`` for ``crossed[k]``; ``l_factor``: each local column's factor (an index into
    ``local``)."""

    local: tuple[str, ...]
    crossed: tuple[str, ...]
    l_col: np.ndarray
    l_z: np.ndarray
    g_col: np.ndarray
    g_z: np.ndarray
    l_factor: np.ndarray


def scalar_rows(data: PirlsData, layout: Layout) -> ScalarRows | None:
    """:class:`ScalarRows` of a partition (built once), or None when a factor has more than
    one column."""
    cached = getattr(data, "_scalar_rows", None)
    if cached is not None:
        return cached or None
    local = (layout.primary, *layout.nested)
    crossed = tuple(layout.global_factors)
    if any(layout.q[f] != 1 for f in local + crossed):
        data._scalar_rows = False
        return None
    n = len(data.y)

    def stack(names, dtype, get):
        return np.ascontiguousarray(np.array([get(f) for f in names], dtype=dtype)
                                    .reshape(len(names), n))

    idx = data.index
    l_col = stack(local, np.int64, lambda f: idx.start[f])
    l_factor = np.zeros(idx.Z_loc.shape[1], dtype=np.int64)
    for k in range(len(local)):
        l_factor[l_col[k]] = k
    out = ScalarRows(local, crossed, l_col, stack(local, float, lambda f: data.Z[f][:, 0]),
                     stack(crossed, np.int64, lambda f: idx.start[f]),
                     stack(crossed, float, lambda f: data.Z[f][:, 0]), l_factor)
    data._scalar_rows = out
    return out


def crossed_gradient(data: PirlsData, st: CrossedState, layout: Layout,
                     lam: dict[str, np.ndarray], factors: tuple[str, ...], beta: np.ndarray,
                     u_G: np.ndarray, T: np.ndarray, family: int, link: int) -> tuple:
    """This partition's part of the Laplace deviance's gradient at the modes of ``st``
    (:mod:`daskmm.kernels.laplace_grad`; scalar terms, canonical link): the row sums of
    :func:`~daskmm.kernels.laplace_grad.gradient_pass` reduced to what the client combines,
    ``(X's, X'c, s'a, c'a, (A^-1 r_l)' Y_l, E' r_l, E' Y_l, Z_G' c, Y_G, local traces)``
    (:func:`~daskmm.kernels.laplace_grad.combine`)."""
    rows = scalar_rows(data, layout)
    blocks = _blocks(data.index)
    start, size, off, col_block = blocks
    theta_f = np.array([float(lam[f][0, 0]) for f in factors])
    l_th = np.array([factors.index(f) for f in rows.local], dtype=np.int64)
    g_th = np.array([factors.index(f) for f in rows.crossed], dtype=np.int64)
    E = st.Minv_C[:, :layout.n_G]
    ET = E @ T
    Minv = local_inverse(st.M, start, size, off, E, ET)
    one_each = len(rows.local) == 1 and len(rows.crossed) == 1
    Xs, Xc, sa, ca, r_l, ZGc, Yl, YG = (gradient_pass_two if one_each else gradient_pass)(
        rows.l_col, rows.l_z, l_th, rows.g_col, rows.g_z, g_th, theta_f, st.u, u_G,
        _eta_fixed(data, beta), data.y, data.wt, data.X, family, Minv, start, size, off,
        col_block, ET, T, _W_MIN)
    # what the next evaluation's start needs to move the modes to first order
    # (laplace_grad.local_shift); cleared when the modes move (crossed_finish)
    data._shift = (st.M, blocks, E, Yl)
    Ar = solve_blocks(st.M, start, size, off, r_l[:, None])[:, 0]
    j = np.arange(len(st.u))
    rel = j - start[col_block]
    diag = Minv[off[col_block] + rel * size[col_block] + rel]
    tr_loc = np.bincount(l_th[rows.l_factor], 1.0 - diag, minlength=len(factors))
    return Xs, Xc, sa, ca, Ar @ Yl, E.T @ r_l, E.T @ Yl, ZGc, YG, tr_loc


def rejected_point(data: PirlsData, layout: Layout) -> Point:
    """A point that no line search accepts (the modes could not be found)."""
    k = layout.k
    u = [np.zeros(s) for s in data.index.group_shapes]
    return Point(u, -np.inf, 0.0, np.inf, np.full((k, k), np.nan), np.full((k, k), np.nan),
                 [], [])


def local_point(data: PirlsData, layout: Layout, lam: dict[str, np.ndarray],
                beta: np.ndarray, family: int, link: int) -> Point:
    """The blocked :class:`Point` at the modes (after :func:`local_laplace`), for the
    conditional modes and their covariances."""
    if not np.isfinite(local_laplace(data, layout, lam, beta, family, link)):
        raise FloatingPointError("the conditional modes cannot be found at these estimates "
                                 "(the likelihood is not finite there)")
    groups_u, k = [], 0
    for m, s in data.index.group_shapes:
        groups_u.append(data.u_warm[k:k + m * s].reshape(m, s))
        k += m * s
    eta_fixed = data.X @ beta + data.offset
    # the level groups every point of this partition is laid out by (build_index)
    return point(data, layout, lam, eta_fixed, groups_u, None, family, link, data.g_groups)


def global_inverse(G: np.ndarray, RtR: np.ndarray, Lam_G: np.ndarray) -> np.ndarray:
    """``S^{-1}`` of the global block (:func:`global_step`'s ``S``)."""
    g = Lam_G.shape[0]
    D = G - RtR
    D = 0.5 * (D + D.T)
    S = Lam_G.T @ D[:g, :g] @ Lam_G + np.eye(g)
    c, info = la.lapack.dpotrf(S, lower=1, clean=1)
    if info != 0:
        raise la.LinAlgError("the global block is not positive definite")
    inv, info = la.lapack.dpotri(c, lower=1)
    return np.tril(inv) + np.tril(inv, -1).T


def global_step(G: np.ndarray, RtR: np.ndarray, Lam_G: np.ndarray
                ) -> tuple[np.ndarray, float, np.ndarray]:
    """Solve the global block: ``S = Lambda_G' (G - R'R)_GG Lambda_G + I``, returns
    ``b_G = Lambda_G u_G`` with ``u_G = S^{-1} Lambda_G' (G - R'R)_G,r``, ``log|L_GG|^2``
    and ``u_G``."""
    g = Lam_G.shape[0]
    D = G - RtR
    D = 0.5 * (D + D.T)
    S = Lam_G.T @ D[:g, :g] @ Lam_G + np.eye(g)
    rhs = Lam_G.T @ D[:g, g]
    try:
        c = np.linalg.cholesky(S)  # numpy's: scipy's wrappers cost ~0.1 ms a call here
    except np.linalg.LinAlgError as exc:
        raise la.LinAlgError(str(exc)) from exc
    u_G, info = la.lapack.dpotrs(c, rhs, lower=1)
    return Lam_G @ u_G, float(2.0 * np.log(np.diagonal(c)).sum()), u_G


LinAlgError = np.linalg.LinAlgError
"""What the factorisations here raise for a matrix that is not positive definite."""


def newton_target(S: np.ndarray, s: np.ndarray) -> np.ndarray | None:
    """The fixed effects' Newton target ``S^-1 s`` of the first stage's joint PIRLS (the
    Schur complement and its right-hand side summed over the partitions); None when ``S`` is
    singular."""
    try:
        return np.linalg.solve(S, s)
    except np.linalg.LinAlgError:
        return None


def global_lambda(counts: list[int], blocks: list[np.ndarray]) -> np.ndarray:
    """``Lambda_G``: block diagonal, each crossed factor's ``Lambda`` repeated for its
    ``count`` levels."""
    return la.block_diag(*[np.kron(np.eye(n), L) for n, L in zip(counts, blocks)])
