"""Fitting crossed random effects (random intercepts, and random slopes on one factor)
without the dense block of crossed levels: by
the matrix-free criterion (:mod:`daskmm.kernels.crossed_iter`; :func:`fit_crossed`: Newton
steps over ``theta`` on the criterion and its gradient with the probes fixed by a seed, so
that the optimiser sees one smooth deterministic function; the optimum's criterion reported
with its standard error), or exactly by a sparse factor (:mod:`daskmm.kernels.
crossed_sparse`; :func:`fit_sparse`).

:func:`daskmm.lmm` comes here (``crossed="auto"``) when every random term is a random
intercept ``(1 | f)`` on its own factor (one of them may have random slopes, ``(1 + x |
f)``) and the crossed factors' levels pass
:data:`~daskmm.models.shared.crossed.MATRIX_FREE_MIN_LEVELS`, where the dense path's block
of crossed levels (its cost the cube of their number) no longer pays:
:func:`~daskmm.models.shared.crossed.choose_crossed`, :func:`prepare_crossed`, then
:func:`daskmm.models.lmm.fit.fit_crossed_problem`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from daskmm.core.optimizer import OptSummary, estimated_newton, minimize
from daskmm.errors import DataError
from daskmm.kernels.crossed_iter import (
    CrossedStats,
    Crossing,
    IterativeCriterion,
    Reduced,
    criterion,
    deflation_basis,
    theta_lower,
)
from daskmm.models.shared import crossed as paths

if TYPE_CHECKING:
    import pandas as pd

    from daskmm.formula.spec import ModelSpec

PROBES, STEPS, DEFLATE = 10, 30, 10
"""The log determinant's estimator in a fit: Rademacher probes, Lanczos steps at most (fewer
once converged), deflation basis columns."""


@dataclass(frozen=True)
class IterativeFit:
    """An iterative fit.

    Attributes
    ----------
    theta : numpy.ndarray
        One relative standard deviation per factor, in the order of the statistics' blocks.
    beta : numpy.ndarray
    sigma : float
        lme4's ``sigma``: ``sqrt(r2 / (n - p))`` (REML) or ``sqrt(r2 / n)`` (ML).
    objective, se : float
        The criterion at ``theta`` and the standard error of its estimate.
    opt : OptSummary
    theta0 : numpy.ndarray
        The start.
    basis, crossing
        The deflation basis and the crossing structure the fit evaluated with.
    at : IterativeCriterion
        The evaluation at ``theta``.
    """

    theta: np.ndarray
    beta: np.ndarray
    sigma: float
    objective: float
    se: float
    opt: OptSummary
    theta0: np.ndarray | None = None
    basis: np.ndarray | None = None
    crossing: Crossing | None = None
    at: IterativeCriterion | None = None


def moment_start(st: CrossedStats) -> np.ndarray:
    """A start for ``theta``: each factor's variance by the one-way analysis of variance of
    the least-squares residuals (the other factors' effects counted as noise), over the
    residual variance left when all are taken off; within a few per cent of the optimum on
    well-filled crossings, and any positive start is safe (the optimiser goes on from it).
    With random slopes on the first factor each of its columns is taken so (its level sums
    ``sum z_a r`` over ``sum z_a^2``), the correlations 0."""
    beta = np.linalg.lstsq(st.XtX, st.Xty, rcond=None)[0]
    n, p = st.n, st.XtX.shape[0]
    rss = max(st.yty - float(beta @ st.Xty), 0.0)
    sums = st.Zty - st.ZtX @ beta
    r = st.cols
    k = st.q_sizes[0]
    parts = []  # (level counts, level sums) per column of every term
    if r > 1:
        G = np.asarray(st.counts[0], float)
        parts += [(G[:, a, a], sums[:k].reshape(-1, r)[:, a]) for a in range(r)]
    else:
        parts.append((np.asarray(st.counts[0], float), sums[:k]))
    bounds = np.concatenate([[0], np.cumsum(st.q_sizes)])
    for j in range(1, len(st.sizes)):
        parts.append((np.asarray(st.counts[j], float), sums[bounds[j]:bounds[j + 1]]))
    intercepts = np.ones(len(parts), bool)
    intercepts[1:r] = False  # a slope's variance is not the response's
    var = np.zeros(len(parts))
    for j, (c, s) in enumerate(parts):
        seen = c > 0
        levels = int(seen.sum())
        between = float(np.sum(s[seen] ** 2 / c[seen]))
        within = (rss - between) / max(n - levels, 1)
        total = float(n) if intercepts[j] else float(np.sum(c))
        n0 = total - float(np.sum(c ** 2)) / total if total > 0 else 0.0
        var[j] = (between - (levels - 1) * within) / n0 if n0 > 0 else 0.0
    resid = rss / max(n - p, 1) - float(np.sum(np.maximum(var[intercepts], 0.0)))
    resid = max(resid, 1e-3 * rss / max(n - p, 1))
    sd = np.sqrt(np.clip(var / resid, 1e-4, 1e4))
    if r == 1:
        return sd
    rows, cols = np.triu_indices(r)[::-1]
    first = np.zeros(len(rows))
    first[rows == cols] = sd[:r]
    return np.concatenate([first, sd[r:]])


def fit_crossed(st: CrossedStats, reml: bool = True, theta0: np.ndarray | None = None,
                probes: int = PROBES, steps: int = STEPS, deflate: int = DEFLATE,
                seed: int = 0, method: str = "newton", options: dict | None = None,
                crossing=None) -> IterativeFit:
    """Minimise the matrix-free REML (``reml``) or ML criterion over ``theta`` (lme4's
    bounds, :func:`~daskmm.kernels.crossed_iter.theta_lower`).

    Parameters
    ----------
    st : CrossedStats
        The cross-products (the factor with most levels, or the one with random slopes,
        first).
    reml : bool
    theta0 : ndarray, optional
        The start (default: :func:`moment_start`).
    probes, steps, deflate, seed
        The log determinant's estimator (:func:`daskmm.kernels.crossed_iter.slq`); the same
        probes at every evaluation.
    method : {"newton", "bobyqa"}
        Newton steps on the criterion's gradient (its traces from the log determinant's own
        recurrences, :func:`~daskmm.kernels.crossed_iter.criterion`; random slopes'
        entries :func:`~daskmm.kernels.crossed_iter.vector_gradient`; :func:`_newton`), or
        BOBYQA on the criterion alone.
    options : dict, optional
        BOBYQA's (:data:`daskmm.core.optimizer.DEFAULTS`).
    crossing : optional
        ``st``'s :class:`~daskmm.kernels.crossed_iter.Crossing` where made already, or its
        first factor's tables held in blocks (:class:`~daskmm.kernels.crossed_blocks.
        BlockedCrossing`; ``st`` then lacks them).

    Returns
    -------
    IterativeFit
    """
    x0 = moment_start(st) if theta0 is None else np.asarray(theta0, float)
    lower = theta_lower(st)
    crossing = Crossing.of(st) if crossing is None else crossing
    # the deflation basis is made once, at the start, and kept: the criterion stays one
    # smooth function of theta, and eigsh runs once (a basis made again at the optimum
    # for a second run cost more evaluations than it saved: 75 against 54 at 10^6 rows)
    basis = _basis(st, x0, deflate, seed, crossing) if deflate else None
    last: dict = {}

    def evaluate(theta: np.ndarray, gradient: bool) -> IterativeCriterion:
        key = np.asarray(theta, float).tobytes()
        if key in last and (last[key].gradient is not None or not gradient):
            return last[key]  # the optimum, evaluated last by the optimiser
        last.clear()
        last[key] = criterion(st, theta, reml, probes, steps, seed, basis=basis,
                              gradient=gradient, crossing=crossing)
        return last[key]

    if method == "bobyqa":
        opts = {"polish": False, **(options or {})}
        theta, opt = minimize(x0, lower, f=lambda t: evaluate(t, False).objective,
                              options=opts, mode="in-process, matrix-free")
    elif method == "newton":
        theta, opt = _newton(evaluate, x0, lower)
    else:
        raise ValueError(f"method={method!r}; allowed: 'newton', 'bobyqa'")
    at = evaluate(theta, False)
    dof = st.n - st.XtX.shape[0] if reml else st.n
    return IterativeFit(theta, at.beta, math.sqrt(at.r2 / dof), at.objective, at.se, opt,
                        x0, basis, crossing, at)


def _names(st: CrossedStats) -> list[str]:
    return [f"theta{j + 1}" for j in range(st.n_theta)]


def _bobyqa_certified(f, x0: np.ndarray, lower: np.ndarray, options: dict | None,
                      names: list[str], mode: str) -> tuple[np.ndarray, OptSummary]:
    """BOBYQA with lme4's tolerances from ``x0`` (its first steps a tenth of the start),
    then its finite-difference Newton polish, and the optimum checked as the dense path
    checks its own (:func:`daskmm.core.optimizer.certified_optimum`: gradient and Hessian
    by finite differences, a restart where they disagree with a minimum)."""
    from daskmm.core.optimizer import certified_optimum
    from daskmm.kernels.numderiv import derivatives

    def run(start: np.ndarray):
        return minimize(start, lower, f=f, options=options,
                        initial_step=0.1 * np.maximum(np.abs(start), 0.1), mode=mode)

    def derivs(t: np.ndarray):
        g, H = derivatives(f, t, lower, f0=f(t))
        return f(t), g, H

    theta, opt = run(x0)
    theta, opt, _ = certified_optimum(run, derivs, f, theta, opt, lower, names,
                                      bound_values=False)
    return theta, opt


def _newton(evaluate, x0: np.ndarray, lower: np.ndarray, xtol: float = 1e-7,
            maxeval: int = 100) -> tuple[np.ndarray, OptSummary]:
    """Newton steps on the estimated criterion and gradient, ``theta >= lower``
    (:func:`daskmm.core.optimizer.estimated_newton`). From :func:`moment_start` this takes a
    handful of evaluations where L-BFGS-B, whose first step has unit length, took twelve."""
    def fg(theta: np.ndarray) -> tuple[float, np.ndarray, float]:
        at = evaluate(theta, True)
        return at.objective, np.asarray(at.gradient, float), at.se

    x, opt, _ = estimated_newton(fg, x0, lower, xtol, maxeval)
    opt.mode = "in-process, matrix-free"
    return x, opt


def fit_sparse(st: CrossedStats, reml: bool = True, theta0: np.ndarray | None = None,
               options: dict | None = None, names: list[str] | None = None
               ) -> IterativeFit:
    """Minimise lme4's criterion, exactly (:func:`daskmm.kernels.crossed_sparse.
    exact_criterion`: a sparse factor of the crossed Schur complement), over ``theta``
    (lme4's bounds): :func:`_bobyqa_certified` from :func:`moment_start`.

    Returns
    -------
    IterativeFit
        ``se`` 0 (nothing is estimated); ``at`` the exact evaluation at the optimum.
    """
    from daskmm.kernels.crossed_sparse import exact_criterion
    x0 = moment_start(st) if theta0 is None else np.asarray(theta0, float)
    crossing = Crossing.of(st)
    last: dict = {}

    def evaluate(theta: np.ndarray):
        key = np.asarray(theta, float).tobytes()
        if key not in last:
            last.clear()
            last[key] = exact_criterion(st, theta, reml, crossing)
        return last[key]

    theta, opt = _bobyqa_certified(lambda t: evaluate(t).objective, x0, theta_lower(st),
                                   options, names or _names(st), "in-process, sparse")
    at = evaluate(theta)
    dof = st.n - st.XtX.shape[0] if reml else st.n
    return IterativeFit(theta, at.beta, math.sqrt(at.r2 / dof), at.objective, 0.0, opt, x0,
                        None, crossing, at)


def _basis(st: CrossedStats, theta: np.ndarray, k: int, seed: int,
           crossing: Crossing | None = None) -> np.ndarray:
    red = Reduced.of(st, theta, crossing)
    return deflation_basis(red.schur, red.schur_diag(), k, seed)


# ---------------------------------------------------------------- daskmm.lmm's path
@dataclass
class CrossedProblem:
    """A model for the matrix-free path: its spec and the cross-products of its scalar
    factors (:class:`~daskmm.kernels.crossed_iter.CrossedStats`, the factor with most levels
    first), held on the client.

    Attributes
    ----------
    spec : ModelSpec
    factors : list of str
        The factors in the statistics' order.
    levels : list of numpy.ndarray
        Each factor's level keys, in code order.
    st : CrossedStats
        Over the estimable fixed-effect columns (``keep``).
    keep : numpy.ndarray
    n : int
    sum_log_w : float
    n_dropped : DropCounts
    ngroups : dict
    mode : str
        ``in-process`` or ``gathered``.
    path : str
        ``sparse`` or ``matrix-free``.
    fill : int or None
        The sparse factor's non-zeros at the start, where it was tried.
    crossing : BlockedCrossing or None
        Where the first factor's crossing tables are held in blocks on the workers
        (:func:`~daskmm.distributed.passes.crossed_blocks`; ``st`` then lacks them).
    held : list or None
        The partitions' cross-products the blocks were summed from (futures, kept for the
        fit: a lost block is made again from them).
    """

    spec: ModelSpec
    factors: list[str]
    levels: list[np.ndarray]
    st: CrossedStats
    keep: np.ndarray
    n: int
    sum_log_w: float
    n_dropped: object
    ngroups: dict
    mode: str
    path: str = "matrix-free"
    fill: int | None = None
    crossing: object | None = None
    held: list | None = None


def prepare_crossed(client, spec: ModelSpec, ddf, combos: pd.DataFrame, in_process: bool,
                    path: str, response: str = "response", gathered: bool = False
                    ) -> CrossedProblem:
    """One pass over the data for :class:`CrossedProblem`'s statistics (a map over the
    partitions and a tree sum: ``Z'Z``'s non-zeros are at most the rows, never levels x
    levels). ``path`` ``"large"`` (:func:`~daskmm.models.shared.crossed.choose_crossed`)
    becomes ``"sparse"`` where the sparse factor at the start has at most
    :data:`~daskmm.models.shared.crossed.SPARSE_MAX_FILL` non-zeros (tried only
    where a bound on the Schur complement's own non-zeros, from the crossing table's row
    counts, is below that), else ``"matrix-free"``. On a cluster (not ``gathered``) the
    first factor's tables stay on the workers, in blocks of its levels, from
    :data:`~daskmm.models.shared.crossed.TABLES_ON_WORKERS` values (the path then
    matrix-free: the sparse one factors the whole tables)."""
    from daskmm.distributed.passes import (
        crossed_blocks,
        crossed_entries,
        crossed_pass,
        crossed_sum,
    )
    from daskmm.formula.checks import check_ranges
    from daskmm.kernels.aliasing import estimable_columns
    from daskmm.models.shared.prepare import check_groups
    from daskmm.models.shared.structure import level_keys

    levels = {f.name: level_keys(spec.factor(f.name), combos) for f in spec.factors}
    # the factor with random slopes first (its block diagonal D is eliminated exactly), else
    # the one with most levels; stable: spec order on ties
    sloped = paths.slope_factor(spec)
    factors = sorted(levels, key=lambda f: (f != sloped, -len(levels[f])))
    lev = [levels[f] for f in factors]
    held = crossing = None
    if in_process or gathered:
        (st, sum_log_w), n_dropped, ranges = crossed_pass(client, ddf, spec, factors, lev,
                                                          slopes=sloped is not None)
    else:
        held = crossed_pass(client, ddf, spec, factors, lev, slopes=sloped is not None,
                            keep=True)
        entries = crossed_entries(client, held)
        values = float(np.sum(entries)) * (
            1 if sloped is None else next(t.q for t in spec.terms if t.factor == sloped))
        if path != "sparse" and values >= paths.TABLES_ON_WORKERS:
            (st, sum_log_w), n_dropped, ranges = crossed_sum(client, held, tables=False)
            crossing = crossed_blocks(client, held, st, entries) if st.n else None
            path = "matrix-free"  # the sparse path factors the whole tables
        else:
            (st, sum_log_w), n_dropped, ranges = crossed_sum(client, held)
            held = None
    if st.n == 0:
        raise DataError("no rows left after dropping rows with missing values in the columns "
                        "the model uses")
    check_ranges([ranges], spec, response, check_terms=False)  # a constant response
    ngroups = {f: len(levels[f]) for f in factors}
    check_groups(spec, ngroups, st.n)
    keep = estimable_columns(st.XtX, list(spec.fixef_names))
    if not np.all(keep):
        st = dataclasses.replace(st, ZtX=st.ZtX[:, keep], XtX=st.XtX[np.ix_(keep, keep)],
                                 Xty=st.Xty[keep])
    fill = None
    if crossing is not None:
        return CrossedProblem(spec, factors, lev, st, keep, st.n, sum_log_w, n_dropped,
                              ngroups, "distributed", path, None, crossing, held)
    if path == "large":
        from daskmm.kernels.crossed_sparse import SparseFactor, schur_nnz_bound
        crossing = Crossing.of(st)
        path = "matrix-free"
        if schur_nnz_bound(st, crossing) <= paths.SPARSE_MAX_FILL:
            fill = SparseFactor.of(Reduced.of(st, moment_start(st), crossing)).fill
            path = "sparse" if fill <= paths.SPARSE_MAX_FILL else path
    return CrossedProblem(spec, factors, [levels[f] for f in factors], st, keep, st.n,
                          sum_log_w, n_dropped, ngroups,
                          "in-process" if in_process else "gathered", path, fill)
