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
caller iterates, each step one map of :func:`point` / :func:`local_modes` and one small dense
solve of the global block (:func:`global_step`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg as la
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from daskmm.kernels.pls import _backward, eval_group, group_Lambda
from daskmm.kernels.scalar_re import row_terms
from daskmm.kernels.stats import Layout, LevelGroup, partition_stats

MAX_ITER = 200
TOL_U = 1e-12
"""Stop when a full PIRLS step moves no spherical mode by more than ``TOL_U (1 + max|u|)``."""
_W_MIN = 1e-300
_W_MAX = 1e100  # weights beyond this overflow the cross-products: the point is rejected


@dataclass
class PirlsData:
    """One partition's encoded rows, kept on a worker for the whole fit.

    ``Z[f]``, ``keys[f]``: model columns and level keys of each grouping factor; ``wt``: binomial
    trials (ones otherwise); ``const``: sum of the family's log normalising constants.
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
    ll, sc, w = row_terms(eta, data.y, data.wt, family, link)
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
        out.append(_backward(L, c))
    return out


def pdev(ll: float, uu: float) -> float:
    """Penalised deviance without the family constants."""
    return -2.0 * ll + uu


def _blend(u_old: list[np.ndarray], u_new: list[np.ndarray], t: float) -> list[np.ndarray]:
    return [a + t * (b - a) for a, b in zip(u_old, u_new)]


def max_step(u_old: list[np.ndarray], u_new: list[np.ndarray]) -> tuple[float, float]:
    """(max |u_new - u_old|, max |u_old|) over the local modes."""
    d = max((float(np.max(np.abs(b - a))) for a, b in zip(u_old, u_new) if a.size), default=0.0)
    s = max((float(np.max(np.abs(a))) for a in u_old if a.size), default=0.0)
    return d, s


def _lambda_loc(index: ReIndex, layout: Layout, lam: dict[str, np.ndarray]) -> sp.csr_matrix:
    """The partition's local ``Lambda``: each level group's block, once per level."""
    cache: dict[tuple[int, ...], np.ndarray] = {}
    blocks = []
    for (m, _), comp in zip(index.group_shapes, index.compositions):
        if comp not in cache:
            cache[comp] = group_Lambda(layout, lam, comp)
        blocks.append(sp.kron(sp.identity(m, format="csr"), sp.csr_matrix(cache[comp])))
    return sp.block_diag(blocks, format="csr") if blocks else sp.csr_matrix((0, 0))


def local_laplace(data: PirlsData, layout: Layout, lam: dict[str, np.ndarray],
                  beta: np.ndarray, family: int, link: int) -> float:
    """PIRLS to convergence inside one partition (no crossed factors); returns the partition's
    Laplace deviance without the family constants.

    With ``Z~ = Z Lambda`` (sparse, block diagonal by primary level in its columns) each step
    solves ``(Z~' W Z~ + I) u_new = Z~' (W Z~ u + score)`` by a sparse LU in the natural order
    (the blocks are contiguous, so there is no fill outside them and no pivoting: the matrix is
    symmetric positive definite), and ``log|L|^2`` is the sum of ``log U_ii``. Levels are
    independent, so halving the step on the partition's total ``pdev`` is a valid (if
    conservative) line search; the stopping rule is per coefficient."""
    idx = data.index
    eta_fixed = data.X @ beta + data.offset
    ZL = (idx.Z_loc @ _lambda_loc(idx, layout, lam)).tocsr()
    n_loc = ZL.shape[1]
    eye = sp.identity(n_loc, format="csc")

    def at(u):
        eta = eta_fixed + ZL @ u
        ll, sc, w = row_terms(eta, data.y, data.wt, family, link)
        if not (np.isfinite(ll).all() and np.all(w < _W_MAX)):
            return np.inf, None, None
        return -2.0 * ll.sum() + u @ u, sc, w

    def factor(w):
        M = (ZL.T @ ZL.multiply(w[:, None])).tocsc() + eye
        return spla.splu(M, permc_spec="NATURAL", diag_pivot_thresh=0.0,
                         options={"SymmetricMode": True})

    u = None
    if isinstance(data.u_warm, np.ndarray) and len(data.u_warm) == n_loc:
        u = data.u_warm
        p0, sc, w = at(u)
    if u is None or not np.isfinite(p0):
        u = np.zeros(n_loc)
        p0, sc, w = at(u)
    if not np.isfinite(p0):
        return np.inf
    for _ in range(MAX_ITER):
        try:
            target = factor(w).solve(ZL.T @ (w * (ZL @ u) + sc))
        except RuntimeError:  # singular: weights so extreme that rounding broke it
            return np.inf
        t = 1.0
        while True:
            cand = u + t * (target - u)
            p, sc_c, w_c = at(cand)
            if p <= p0 + 1e-12 * abs(p0) or t < 1e-8:
                break
            t *= 0.5
        if not np.isfinite(p):
            return np.inf
        step = float(np.max(np.abs(target - u))) if n_loc else 0.0
        scale = float(np.max(np.abs(u))) if n_loc else 0.0
        u, p0, sc, w = cand, p, sc_c, w_c
        if step < TOL_U * (1.0 + scale):  # the full PLS step is tiny
            break
    data.u_warm = u
    logdet = float(np.log(factor(w).U.diagonal()).sum()) if n_loc else 0.0
    return p0 + logdet


def local_point(data: PirlsData, layout: Layout, lam: dict[str, np.ndarray],
                beta: np.ndarray, family: int, link: int) -> Point:
    """The blocked :class:`Point` at the modes (after :func:`local_laplace`), for the
    conditional modes and their covariances."""
    local_laplace(data, layout, lam, beta, family, link)
    groups_u, k = [], 0
    for m, s in data.index.group_shapes:
        groups_u.append(data.u_warm[k:k + m * s].reshape(m, s))
        k += m * s
    eta_fixed = data.X @ beta + data.offset
    first = point(data, layout, lam, eta_fixed, None, None, family, link)
    return point(data, layout, lam, eta_fixed, groups_u, None, family, link, first.groups)


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
    c, low = la.cho_factor(S, lower=True)
    u_G = la.cho_solve((c, low), rhs)
    return Lam_G @ u_G, float(2.0 * np.log(np.diagonal(c)).sum()), u_G
