"""The GLMM's crossed random intercepts without a dense block (``daskmm.glmm(crossed=...)``,
issue 31): the sparse and matrix-free Laplace criteria of :mod:`daskmm.kernels.crossed_glmm`
over rows kept on the workers, optimised by glmer's stages (:mod:`daskmm.models.glmm.stages`).

The data: each partition encoded once into :class:`~daskmm.kernels.crossed_glmm.CrossedRows`
(no shuffle: crossed factors need none), one round for the crossing tables' patterns. Each
PIRLS step of an evaluation is one map of :func:`~daskmm.kernels.crossed_glmm.weighted_pass`
over the partitions and a sum: the weighted level counts and crossing tables (``Z'WZ``'s
non-zeros, at most the rows) come to the client, where ``A`` is solved (a sparse factor, or
conjugate gradients) and its log determinant taken. The matrix-free gradient's traces go the
other way: the client sends what gives each row its leverage
(:class:`~daskmm.kernels.crossed_glmm.RowLeverage`, level-sized and pattern-sized arrays)
and each partition returns one sum per parameter
(:func:`~daskmm.kernels.crossed_glmm.gradient_traces`).

On a cluster, from :data:`~daskmm.models.shared.crossed.TABLES_ON_WORKERS` values, the
matrix-free path keeps the first factor's tables on the workers instead (:class:`TableBlocks`,
:mod:`daskmm.kernels.crossed_blocks`): in blocks of its levels, one a worker, summed there
from the partitions' passes; every product with them is a task on each block, and the
client holds level-sized arrays, the other factors' tables and the tables' integer pattern.
Each product is then a round trip (about 20 ms on a 2-core machine's local cluster), so
below that size the client's sums cost less.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from daskmm.distributed.blocks import ClientBlocks, Placement
from daskmm.distributed.execution import is_in_process
from daskmm.distributed.mapreduce import map_parts, task_keys
from daskmm.distributed.passes import persist_spread
from daskmm.errors import ModelError
from daskmm.formula.checks import column_ranges
from daskmm.kernels import crossed_blocks as CB
from daskmm.kernels import crossed_glmm as CG
from daskmm.kernels.crossed_iter import Reduced, lambda_apply, tri_matrix
from daskmm.kernels.crossed_sparse import SparseFactor, schur_nnz_bound
from daskmm.models.glmm.encode import encode_partition
from daskmm.models.shared import crossed as paths
from daskmm.models.shared.structure import level_keys
from daskmm.results.base import RanefTable

PROBES, STEPS, DEFLATE = 10, 40, 10
"""The matrix-free log determinant's estimator: Rademacher probes, Lanczos steps at most
(fixed at the first evaluation's need), deflation basis columns."""
TABLES = ("auto", "client", "workers")
"""Where the matrix-free path holds the first factor's crossing tables (:func:`tables_at`)."""


def prepare_rows(df: pd.DataFrame, spec, resp, family: int, factors: list[str],
                 levels: list[np.ndarray], slopes: bool = False) -> CG.CrossedRows:
    """Encode one partition for the crossed criterion (rows with a missing value dropped);
    ``slopes``: the first factor's term has random slopes (its model columns go in)."""
    enc, X, y, wt, offset, const, dropped = encode_partition(df, spec, resp, family)
    keys = [np.asarray(enc.keys[f]) for f in factors]
    return CG.crossed_rows(X, y, wt, offset, keys, levels, const, dropped,
                           enc.Z[factors[0]] if slopes else None)


def rows_info(rows: CG.CrossedRows, family: int, binomial: int, sizes: tuple[int, ...]):
    """``(rows dropped, column ranges, weight sum, pair keys)`` of a partition."""
    y = rows.y / rows.wt if family == binomial else rows.y
    return (rows.n_dropped, column_ranges(y, {}), float(rows.wt.sum()),
            CG.pair_keys(rows, sizes))


def _pass(rows, beta, b, family, link, sizes):
    return CG.weighted_pass(rows, beta, b, family, link, sizes)


def persist_rows(c, ddf, spec, resp, family: int, factors: list[str],
                 levels: list[np.ndarray], slopes: bool = False) -> list:
    """Each partition's :class:`~daskmm.kernels.crossed_glmm.CrossedRows`, kept on a worker
    (:func:`~daskmm.distributed.passes.persist_spread`) or, in process, here."""
    return persist_spread(c, ddf, prepare_rows, "glmm-crossed", "glmm: data", spec, resp,
                          family, factors, levels, slopes)


@dataclasses.dataclass
class CrossedData:
    """The encoded partitions and what one pass over them gave.

    Attributes
    ----------
    parts : list
    factors : list of str
        In the criterion's order (the factor with random slopes first, else the one with
        most levels; the formula's order on ties).
    levels : list of numpy.ndarray
    patterns : Patterns
    n_dropped, ranges : list
        Per partition.
    weight_sum : float
    cols : int
        Model columns of the first factor's term (more than 1: random slopes).
    """

    parts: list
    factors: list[str]
    levels: list[np.ndarray]
    patterns: CG.Patterns
    n_dropped: list
    ranges: list
    weight_sum: float
    cols: int = 1


def prepare(c, ddf, spec, resp, family: int, binomial: int, combos: pd.DataFrame
            ) -> CrossedData:
    """Encode and place the rows, and fix the crossing tables' patterns (two rounds)."""
    levels = {f.name: level_keys(spec.factor(f.name), combos) for f in spec.factors}
    sloped = paths.slope_factor(spec)
    factors = sorted(levels, key=lambda f: (f != sloped, -len(levels[f])))
    lev = [levels[f] for f in factors]
    sizes = tuple(len(v) for v in lev)
    cols = 1 if sloped is None else next(t.q for t in spec.terms if t.factor == sloped)
    parts = persist_rows(c, ddf, spec, resp, family, factors, lev, sloped is not None)
    info = c.gather(map_parts(c, rows_info, parts, family=family, binomial=binomial,
                              sizes=sizes, pure=False))
    keys = CG.merge_keys([i[3] for i in info])
    placed = map_parts(c, CG.with_pattern, parts, patterns=keys, sizes=sizes, pure=False)
    if not is_in_process(c):
        from distributed import wait
        wait(placed)  # then the encoded rows without places are released with ``parts``
    return CrossedData(placed, factors, lev, CG.Patterns.of(keys, sizes),
                       [i[0] for i in info], [i[1] for i in info], sum(i[2] for i in info),
                       cols)


def choose_path(path: str, data: CrossedData) -> str:
    """``"large"`` (:func:`~daskmm.models.shared.crossed.choose_crossed`) becomes
    ``"sparse"`` where the sparse factor of the crossing holds at most
    :data:`~daskmm.models.shared.crossed.SPARSE_MAX_FILL` non-zeros (its fill depends on the
    pattern alone: measured at unit weights; random slopes on the first factor leave the
    Schur complement's pattern as it is), else ``"matrix-free"``."""
    if path != "large":
        return path
    pat = data.patterns
    # a unit weight on each pair of levels that meet (the sum over pairs of (e_a + e_b)
    # (e_a + e_b)': positive semi-definite, so A is positive definite)
    counts = [np.zeros(s) for s in pat.sizes]
    for (j, k), (ptr, ix) in pat.csr.items():
        counts[j] += np.diff(ptr)
        counts[k] += np.bincount(ix, minlength=pat.sizes[k])
    unit = CG.WeightedPass(0.0, counts, {jk: np.ones(n) for jk, n in pat.nnz.items()},
                           np.zeros(0))
    x = pat.crossing(unit)
    if schur_nnz_bound(None, x) > paths.SPARSE_MAX_FILL:
        return "matrix-free"
    theta = np.ones(len(pat.sizes))
    red = Reduced(x, 1.0, np.repeat(theta[1:], pat.sizes[1:]), 1.0 + x.n1)  # theta = 1
    return "sparse" if SparseFactor.of(red).fill <= paths.SPARSE_MAX_FILL else "matrix-free"


def tables_at(c, data: CrossedData, path: str, tables: str = "auto") -> str:
    """Where the first factor's crossing tables are held: ``"workers"`` (in blocks,
    :class:`TableBlocks`) on the matrix-free path on a cluster from
    :data:`~daskmm.models.shared.crossed.TABLES_ON_WORKERS` values, or where asked
    (``tables="workers"``, in process too), else ``"client"`` (the sparse path factors the
    whole tables)."""
    if tables not in TABLES:
        raise ValueError(f"tables={tables!r}; allowed: {', '.join(map(repr, TABLES))}")
    if path != "matrix-free":
        return "client"
    if tables != "auto":
        return tables
    if is_in_process(c):
        return "client"
    pat = data.patterns
    values = sum(pat.nnz[(0, k)] for k in range(1, len(pat.sizes))) * data.cols
    return "workers" if values >= paths.TABLES_ON_WORKERS else "client"


class TableBlocks:
    """The first factor's crossing tables kept in blocks of its levels on the workers
    (:mod:`daskmm.kernels.crossed_blocks`), one block a worker (``blocks`` of them where
    given), each block's entries balanced.

    Each PIRLS step's pass leaves the partitions' tables where they are: the partitions on
    one worker are summed into each block's entries there (one task per worker and block),
    those sums added on the block's worker, and only the level-sized parts (counts,
    ``Z'W r``, the log-likelihood) and the other factors' tables come to the client."""

    def __init__(self, c, data: CrossedData, blocks: int | None = None):
        pat = data.patterns
        sizes, K, r = pat.sizes, len(pat.sizes), data.cols
        self.c, self.data = c, data
        self.place = Placement(c, data.parts, blocks)
        per_level = sum(np.diff(pat.csr[(0, k)][0]) for k in range(1, K))
        self.bounds = CB.block_bounds(per_level, self.place.n)
        n = len(self.bounds) - 1
        first = {jk: v for jk, v in pat.csr.items() if jk[0] == 0}
        shared = first if self.place.local else c.scatter([first], hash=False)[0]
        keys = task_keys("glmm-block_template", n)
        self.templates = [c.submit(CB.block_template, shared, sizes, int(self.bounds[i]),
                                   int(self.bounds[i + 1]), r, key=keys[i], pure=False,
                                   **self.place.on(self.place.workers[i]))
                          for i in range(n)]
        self.places = [tuple((int(pat.csr[(0, k)][0][self.bounds[i]]),
                              int(pat.csr[(0, k)][0][self.bounds[i + 1]]))
                             for k in range(1, K)) for i in range(n)]
        self.runner = ClientBlocks(c)
        self.table_sizes = tuple(pat.nnz[(0, k)] for k in range(1, K))
        pat.drop_templates()  # the path's choice may have made the client's structures

    def crossing(self, outs: list, wp: CG.WeightedPass) -> CB.BlockedCrossing:
        """The blocked crossing of the partitions' passes ``outs`` (futures), ``wp`` their
        sum without the first factor's tables."""
        c, r = self.c, self.data.cols
        pat, place = self.data.patterns, self.place
        n, groups = len(self.templates), place.groups
        pk = task_keys("glmm-block_values", n * len(groups))
        fk = task_keys("glmm-fill_block", n)
        blocks = []
        for i, (tmpl, places) in enumerate(zip(self.templates, self.places)):
            partials = [c.submit(CB.block_values, [outs[j] for j in idx], places, r,
                                 key=pk[i * len(groups) + g], pure=False, **place.on(w))
                        for g, (w, idx) in enumerate(groups)]
            lo, hi = int(self.bounds[i]), int(self.bounds[i + 1])
            blocks.append(c.submit(CB.fill_block, tmpl, partials, wp.counts[0][lo:hi],
                                   key=fk[i], pure=False, **place.on(place.workers[i])))
        rest = CB.rest_block(pat.csr, pat.sizes, wp.counts, wp.tables)
        return CB.BlockedCrossing(pat.sizes[0] * r, np.asarray(wp.counts[0], float), *rest, r,
                                  self.bounds, tuple(blocks), self.runner,
                                  sum(self.table_sizes), self.table_sizes)


class CrossedCriterion:
    """The Laplace criterion of ``(theta, beta)`` (``theta`` in the spec's term order) by
    the sparse or matrix-free path; follows :class:`daskmm.models.glmm.criteria.Criterion`.
    On the matrix-free path with a canonical link it has a gradient
    (:meth:`~daskmm.kernels.crossed_glmm.CrossedLaplace.gradient`): its traces estimated
    by the criterion's own probes. ``tables`` (:func:`tables_at`) and ``blocks``
    (:class:`TableBlocks`): where the first factor's crossing tables are held."""

    takes_first_stage = False

    def __init__(self, c, data: CrossedData, spec, family: int, link: int, const: float,
                 path: str, seed: int = 0, tables: str = "auto", blocks: int | None = None):
        self.c, self.data, self.spec, self.const = c, data, spec, const
        self.path, self.seed = path, seed
        # theta in the spec's term order -> the criterion's (factors' order, the first
        # factor's triangle first): engine[i] = spec[perm[i]]
        self.term_of = {t.factor: t for t in spec.terms}
        starts = np.cumsum([0] + [t.n_theta for t in spec.terms])
        at = {t.factor: np.arange(starts[i], starts[i + 1]) for i, t in enumerate(spec.terms)}
        self.perm = np.concatenate([at[f] for f in data.factors])
        sizes, npattern = data.patterns.sizes, data.patterns.nnz

        self.tables = tables_at(c, data, path, tables)
        held = TableBlocks(c, data, blocks) if self.tables == "workers" else None
        self.blocks = held

        def passes(beta, b):
            outs = map_parts(c, _pass, data.parts, beta=beta, b=b, family=family, link=link,
                             sizes=sizes, pure=False)
            if held is None:
                return CG.add_passes(c.gather(outs), npattern)
            wp = CG.add_passes(c.gather(map_parts(c, CB.pass_head, outs, pure=False)),
                               npattern)
            if not math.isfinite(wp.ll):
                return wp
            return dataclasses.replace(wp, crossing=held.crossing(outs, wp))

        self.engine = CG.CrossedLaplace(data.patterns, passes, path, PROBES, STEPS, DEFLATE,
                                        seed, (family, link), data.cols)
        self.has_gradient = path == "matrix-free" and CG.has_gradient(family, link)
        self.last: tuple | None = None
        self.last_grad: tuple | None = None

        def apply(fn, **kw):
            return c.gather(map_parts(c, fn, data.parts, pure=False, **kw))
        self._apply = apply

    def to_full_tolerance(self) -> None:
        """PIRLS always runs to its full tolerance here."""

    def moment_start(self, beta: np.ndarray) -> np.ndarray:
        """A start for ``theta`` (the spec's order) from one pass at ``beta`` (the GLM's)
        with no random effects: factor ``k``'s variance by the moments of its levels'
        Fisher-weighted mean working residuals (``c_l`` the level's weight, ``s_l`` its
        score sum: ``E[s_l^2 / c_l] = 1 + c_l sigma_k^2``), so ``sigma_k^2 = sum_l
        (s_l^2 / c_l - 1) / sum_l c_l``, at least 1e-4. With random slopes each of the
        first factor's columns so (``c`` its Gram's diagonal), the correlations 0."""
        r = self.data.cols
        wp = self.engine.passes(np.asarray(beta, float),
                                [np.zeros(s) for s in self.engine.q_sizes])
        if not np.isfinite(wp.ll):
            return np.concatenate([t.theta_init() for t in self.spec.terms])
        sums = np.split(wp.Ztwr, np.cumsum(self.engine.q_sizes)[:-1])
        parts = list(zip(wp.counts, sums))
        if r > 1:
            G, s1 = np.asarray(wp.counts[0]), sums[0].reshape(-1, r)
            parts = [(G[:, a, a], s1[:, a]) for a in range(r)] + parts[1:]
        var = np.empty(len(parts))
        for j, (c, s) in enumerate(parts):
            seen = c > 0
            var[j] = np.sum(s[seen] ** 2 / c[seen] - 1.0) / max(float(np.sum(c)), 1e-300)
        sd = np.sqrt(np.maximum(var, 1e-4))
        if r > 1:
            rows, cols = np.triu_indices(r)[::-1]
            first = np.zeros(len(rows))
            first[rows == cols] = sd[:r]
            sd = np.concatenate([first, sd[r:]])
        out = np.empty(len(sd))
        out[self.perm] = sd
        return out

    def _theta(self, theta) -> np.ndarray:
        """``theta`` in the criterion's order."""
        return np.asarray(theta, float)[self.perm]

    def point(self, theta, beta) -> CG.LaplacePoint:
        key = (np.asarray(theta, float).tobytes(), np.asarray(beta, float).tobytes())
        if self.last is not None and self.last[0] == key:
            return self.last[1]
        pt = self.engine.evaluate(self._theta(theta), np.asarray(beta, float))
        self.last = (key, pt)
        return pt

    def __call__(self, theta, beta, size=None) -> float:
        return self.point(theta, beta).value - 2.0 * self.const

    def value_grad(self, theta, beta, size=None) -> tuple[float, np.ndarray]:
        """The criterion and its gradient in ``(theta, beta)`` (the matrix-free path)."""
        pt = self.point(theta, beta)
        key = self.last[0]
        if self.last_grad is None or self.last_grad[0] != key:
            g = self.engine.gradient(self._theta(theta), np.asarray(beta, float), pt,
                                     self._apply)
            nt = len(self.perm)
            spec_g = np.empty(nt)
            spec_g[self.perm] = g[:nt]  # the criterion's order back to the spec's
            self.last_grad = (key, np.concatenate([spec_g, g[nt:]]))
        return pt.value - 2.0 * self.const, self.last_grad[1].copy()

    @property
    def last_se(self) -> float:
        """The standard error of the last evaluation's criterion (0 on the sparse path)."""
        return float(self.last[1].se) if self.last is not None else 0.0

    def ranef(self, theta, beta, size=None) -> dict[str, RanefTable]:
        """Conditional modes ``b = Lambda u`` and their covariances ``T A^-1_l T'``
        (lme4's ``condVar`` of a GLMM; ``theta_k^2 diag(A^-1)`` for a random intercept):
        exact on the sparse path, the named approximation on the matrix-free one."""
        pt = self.point(theta, beta)
        th = self._theta(theta)
        eng = self.engine
        if eng.cols > 1:
            first, rest = eng.inverse_blocks(pt)
        else:
            cond = eng.inverse_diag(pt)
            first, rest = cond[:eng.sizes[0], None, None], cond[eng.sizes[0]:]
        b = lambda_apply(th, pt.u, eng.sizes, eng.cols)
        bounds = np.concatenate([[0], np.cumsum(eng.q_sizes)])
        starts = np.cumsum([0] + [self.term_of[f].n_theta for f in self.data.factors])
        out = {}
        for j, f in enumerate(self.data.factors):
            labels = list(self.spec.factor(f).label(self.data.levels[j]))
            T = tri_matrix(th[starts[j]:starts[j + 1]], self.term_of[f].q)
            cu = first if j == 0 else \
                rest[bounds[j] - bounds[1]:bounds[j + 1] - bounds[1]][:, None, None]
            out[f] = RanefTable(levels=labels,
                                b=b[bounds[j]:bounds[j + 1]].reshape(len(labels), -1),
                                cov=np.einsum("ab,lbc,dc->lad", T, cu, T))
        return out

    def summary(self, theta, beta) -> dict:
        """``optinfo["crossed"]``: the path and, matrix-free, the estimator."""
        pt = self.point(theta, beta)
        info = {"path": self.path, "factors": list(self.data.factors),
                "pirls_iterations_last": int(pt.iterations)}
        if self.path == "sparse":
            info.update(fill=int(self.engine.fill or 0),
                        ordering="SuperLU symmetric mode, minimum degree on S + S'")
        else:
            info["tables"] = ("client" if self.blocks is None else
                              f"workers: {len(self.blocks.templates)} blocks of "
                              f"{self.data.factors[0]}'s levels")
            info.update(criterion_se=float(pt.se), probes=PROBES,
                        lanczos_steps=int(self.engine.fixed_steps or STEPS),
                        deflation=DEFLATE, seed=self.seed,
                        conditional_variances="approximate: A^-1's diagonal blocks with the "
                                              "crossed Schur complement's inverse taken as "
                                              "its diagonal's inverse")
        return info


GLMM_FAMILIES = ("binomial", "poisson")
"""The families the sparse and matrix-free GLMM paths fit."""


def check_family(path: str, crossed: str, family: str) -> str:
    """The path for ``family``: ``crossed="auto"`` stays dense for another family; an
    explicit sparse or matrix-free path is refused in one line."""
    if path == "dense" or family in GLMM_FAMILIES:
        return path
    if crossed == "auto":
        return "dense"
    raise ModelError(f"crossed={crossed!r} fits the binomial and Poisson GLMMs; the "
                     f"{family} family is fitted with crossed='dense' (or 'auto')")
