"""The LMM's profiled criterion: a :class:`Problem` (frozen spec, layout, statistics and where
they live) made once from the data by :func:`prepare_problem`, evaluated at any ``theta`` by
:func:`objective` (and :func:`objective_grad`), optimised by :func:`optimise` (lme4's
REML criterion or deviance; bounds, restarts). Inference after the fit (``models.lmm.inference``)
works on the same :class:`Problem`, never on the rows again."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from daskmm.core.optimizer import OptSummary, certified_optimum, minimize
from daskmm.core.threads import SMALL_K, one_blas_thread
from daskmm.data.manifest import Manifest
from daskmm.data.rows import DropCounts
from daskmm.distributed.evaluator import DistributedEvaluator, GatheredEvaluator
from daskmm.distributed.execution import is_in_process
from daskmm.distributed.passes import (
    aligned,
    gather_stats,
    shuffle_by,
    stats_pass,
    stats_summary,
)
from daskmm.errors import DataError
from daskmm.formula.checks import check_ranges
from daskmm.formula.parse import ParsedFormula
from daskmm.formula.spec import (
    ModelSpec,
    plan_formula,
)
from daskmm.kernels.aliasing import estimable_columns
from daskmm.kernels.numderiv import derivatives, forward_hessian_of_gradient
from daskmm.kernels.pls import lambda_tilde, profiled, profiled_grad_parts
from daskmm.kernels.stats import Layout, LevelGroup, PartitionStats
from daskmm.models.lmm.iterative import CrossedProblem, prepare_crossed
from daskmm.models.shared.crossed import choose_crossed
from daskmm.models.shared.prepare import check_groups, prepare_columns
from daskmm.models.shared.structure import (
    frozen_levels,
    lambdas,
    model_layout,
)

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client

log = logging.getLogger("daskmm")


GATHER_LIMIT_BYTES = 256 * 2 ** 20
"""Statistics larger than this stay on the workers in ``mode="auto"``."""


GRADIENT_MAX_K = 2000
"""The exact gradient costs a dense inverse of the global block (``k x k``: crossed levels,
fixed effects and the response) per evaluation; above this size BOBYQA's evaluations are
cheaper."""


@dataclass
class Problem:
    """A model ready to evaluate: frozen spec, layout, statistics and where they live."""

    spec: ModelSpec
    layout: Layout
    evaluator: object
    n: int
    sum_log_w: float
    n_dropped: DropCounts
    G: np.ndarray
    keep: np.ndarray
    ngroups: dict


# ------------------------------------------------------------------ step 1 and 2
def prepare_problem(client: Client, parsed: ParsedFormula, ddf: dd.DataFrame,
                    factors: list[str], weights: str | None, mode: str,
                    manifest: Manifest | None = None, crossed: str = "auto"
                    ) -> Problem | CrossedProblem:
    """Steps 1 and 2: freeze the spec, run the statistics pass, pick the evaluator.

    With the ``manifest`` of an ingested dataset the levels of categorical columns are read
    from it (the dataset holds no missing values, so they are exactly the levels lme4 would
    keep) and no metadata pass runs unless several grouping factors need their combinations
    (nesting) examined.

    The returned problem evaluates the profiled criterion at any ``theta`` with
    :func:`objective`; :func:`lmm` optimises it. Crossed random intercepts with many levels
    (``crossed``: :func:`~daskmm.models.shared.crossed.choose_crossed`) give a
    :class:`~daskmm.models.lmm.iterative.CrossedProblem` instead, for the sparse or the
    matrix-free path.
    """
    # read only the used columns (the projection reaches the Parquet reader)
    ddf, plan = prepare_columns(parsed, ddf, factors, weights)
    used = plan.used
    rewriter = plan_formula(parsed, used)
    ddf, categorical, factor_levels, combos = frozen_levels(
        client, ddf, used, plan.categorical, plan.factor_names, plan.groups, manifest,
        rewriter=rewriter, declared=factors)
    spec = ModelSpec.build(parsed, plan.schema, categorical, weights, factor_levels or None,
                           rewriter=rewriter)
    layout = model_layout(spec, combos, len(spec.fixef_names))
    path = choose_crossed(spec, layout, crossed, slopes=True)
    if path != "dense":
        return prepare_crossed(client, spec, ddf, combos, is_in_process(client), path,
                               parsed.response, gathered=mode == "gathered")
    primary, nested = layout.primary, layout.nested
    futures = stats_pass(client, ddf, spec, layout)
    keys, summaries = stats_summary(client, futures)
    n = sum(s["n"] for s in summaries)
    if n == 0:
        raise DataError("no rows left after dropping rows with missing values in the columns "
                        f"the model uses ({', '.join(used)})")
    nbytes = sum(s["nbytes"] for s in summaries)
    use_distributed = not is_in_process(client) and (
        mode == "distributed" or (mode == "auto" and nbytes > GATHER_LIMIT_BYTES))
    is_aligned = aligned(keys)
    if not is_aligned and (nested or use_distributed):
        log.info("data are not partitioned by %s: shuffling", primary)
        client.cancel(futures)
        ddf = shuffle_by(ddf, spec.factor(primary))
        futures = stats_pass(client, ddf, spec, layout)
        keys, summaries = stats_summary(client, futures)
        is_aligned = True
    G = sum(s["G"] for s in summaries)
    sum_log_w = sum(s["sum_log_w"] for s in summaries)
    n_dropped = sum(s["n_dropped"] for s in summaries)
    n_primary = sum(len(k) for k in keys) if is_aligned else len(pd.unique(np.concatenate(keys)))
    ngroups = {primary: n_primary}
    for f in spec.factors:
        if f.name != primary:
            ngroups[f.name] = len(factor_levels[f.name])
    check_groups(spec, ngroups, n)
    check_ranges([s.get("ranges") for s in summaries], spec, parsed.response)
    keep = _estimable_columns(G, layout, spec)
    if use_distributed:
        if not np.all(keep):
            futures = client.map(_select, futures, keep=_k_index(layout, keep))
        evaluator = DistributedEvaluator(client, futures, _reduced(layout, keep))
    else:
        stats = gather_stats(client, futures, merge=not is_aligned)
        if not np.all(keep):
            stats = _select(stats, _k_index(layout, keep))
        evaluator = GatheredEvaluator(stats, _reduced(layout, keep),
                                      mode="in-process" if is_in_process(client) else "gathered")
    G = G[np.ix_(_k_index(layout, keep), _k_index(layout, keep))]
    return Problem(spec, _reduced(layout, keep), evaluator, n, sum_log_w, n_dropped, G, keep,
                    ngroups)


def _estimable_columns(G: np.ndarray, layout: Layout, spec: ModelSpec) -> np.ndarray:
    """Fixed-effect columns to keep (:func:`~daskmm.kernels.aliasing.estimable_columns` on the
    ``X'X`` block of the statistics)."""
    g, p = layout.n_G, layout.p
    return estimable_columns(G[g:g + p, g:g + p], spec.fixef_names)


def _k_index(layout: Layout, keep: np.ndarray) -> np.ndarray:
    g, p = layout.n_G, layout.p
    return np.concatenate([np.arange(g), g + np.flatnonzero(keep), [g + p]]).astype(int)


def _reduced(layout: Layout, keep: np.ndarray) -> Layout:
    return Layout(layout.primary, layout.nested, layout.global_factors, layout.q,
                  layout.global_levels, int(keep.sum()))


def _select(stats: PartitionStats, keep: np.ndarray) -> PartitionStats:
    groups = [LevelGroup(g.composition, g.levels, g.nested_levels, g.A, g.B[:, keep, :])
              for g in stats.groups]
    return PartitionStats(groups, stats.G[np.ix_(keep, keep)], stats.n, stats.sum_log_w,
                          stats.n_dropped)


# ------------------------------------------------------------------ step 3
def objective(prob: Problem, theta: np.ndarray, reml: bool):
    """Profiled REML criterion or deviance at ``theta``, with the stage-2 factor."""
    lam = lambdas(prob.spec, theta)
    logdet, RtR = prob.evaluator.stage1(lam)
    # Lambda~ is only read for crossed factors (building the sparse identity costs ~50 us)
    LamT = lambda_tilde(prob.layout, lam) if prob.layout.global_factors else None
    prof = profiled(prob.G, RtR, logdet, LamT, prob.layout.n_G,
                    prob.layout.p, prob.n, prob.sum_log_w, reml)
    return prof, lam


def objective_grad(prob: Problem, theta: np.ndarray, reml: bool) -> tuple[float, np.ndarray]:
    """The profiled criterion at ``theta`` and its exact gradient
    (:func:`~daskmm.kernels.pls.eval_group_grad`, :func:`~daskmm.kernels.pls.profiled_grad`),
    in one evaluation: one round of tasks on a cluster."""
    prof, parts = objective_parts(prob, theta, reml)
    if parts is None:
        return np.inf, np.full(len(theta), np.nan)
    n, p = prof.n, prof.p
    if reml:
        return prof.objective, parts[:, 0] + parts[:, 1] + (n - p) * parts[:, 2]
    return prof.objective, parts[:, 0] + n * parts[:, 2]


def objective_parts(prob: Problem, theta: np.ndarray, reml: bool = False):
    """The stage-2 profile at ``theta`` and the derivatives of its pieces
    (:func:`~daskmm.kernels.pls.profiled_grad_parts`: ``log|L_Z|^2``, ``log|R_X|^2``,
    ``log pwrss`` along each ``theta``); ``(profile, None)`` where the criterion is not
    finite."""
    spec, layout = prob.spec, prob.layout
    theta = np.asarray(theta, dtype=float)
    lam = lambdas(spec, theta)
    owner = [t.factor for t in spec.terms for _ in range(t.n_theta)]
    units = [lambdas(spec, e) for e in np.eye(len(theta))]
    glob = set(layout.global_factors)
    local = [u for u, f in zip(units, owner) if f not in glob]
    logdet, RtR, dld, dRtR = prob.evaluator.stage1_grad(lam, local)
    LamT = lambda_tilde(layout, lam) if glob else None
    prof = profiled(prob.G, RtR, logdet, LamT, layout.n_G, layout.p, prob.n, prob.sum_log_w,
                    reml)
    if not np.isfinite(prof.objective):
        return prof, None
    dLamT = [lambda_tilde(layout, u, tail=0.0) if f in glob else None
             for u, f in zip(units, owner)]
    return prof, profiled_grad_parts(prof, prob.G, RtR, dld, dRtR, LamT, dLamT)


def optimise(prob: Problem, reml: bool, options: dict | None = None,
             x0: np.ndarray | None = None, initial_step: np.ndarray | None = None,
             certify: bool = True) -> tuple[np.ndarray, OptSummary]:
    """:func:`_optimise` with one BLAS thread for a small problem
    (:func:`daskmm.core.threads.one_blas_thread`: the optimiser's and the criterion's BLAS
    calls are then microseconds, and waking a second thread costs more)."""
    with one_blas_thread(prob.layout.k <= SMALL_K):
        return _optimise(prob, reml, options, x0, initial_step, certify)


def _optimise(prob: Problem, reml: bool, options: dict | None = None,
              x0: np.ndarray | None = None, initial_step: np.ndarray | None = None,
              certify: bool = True) -> tuple[np.ndarray, OptSummary]:
    """:func:`daskmm.core.optimizer.minimize` over ``theta`` from lme4's start (or ``x0``), with the
    exact gradient of the profiled criterion (BOBYQA when ``options["method"] == "bobyqa"``,
    or when the dense global block is too large for the gradient to pay); ``initial_step``
    is BOBYQA's first trust-region radius per parameter. With ``certify`` the optimum is
    checked and repaired (:func:`daskmm.core.optimizer.certified_optimum`); the refits of
    bootstraps and profiles, many and started at a certified optimum, skip it."""
    spec = prob.spec
    init = np.concatenate([t.theta_init() for t in spec.terms])
    if x0 is None:
        x0 = init
    lower = np.concatenate([t.theta_lower() for t in spec.terms])
    use_grad = prob.layout.k <= GRADIENT_MAX_K

    def f(t):
        return objective(prob, t, reml)[0].objective

    def run(start):
        return minimize(start, lower, f=f,
                        fg=(lambda t: objective_grad(prob, t, reml)) if use_grad else None,
                        options=options or {}, mode=prob.evaluator.mode,
                        initial_step=initial_step)

    theta, summary = _run_from_corners(run, f, np.asarray(x0, dtype=float), init, lower, spec)
    if not certify:
        return theta, summary

    def derivs(t):
        if use_grad:
            v, g = objective_grad(prob, t, reml)
            return v, g, forward_hessian_of_gradient(
                lambda u: objective_grad(prob, u, reml)[1], t, g)
        g, H = derivatives(f, t, lower, f0=f(t))
        return f(t), g, H

    names = [nm for t in spec.terms for nm in t.theta_names()]
    # no comparison with theta moved onto its bound: the profiled criterion is smooth in
    # theta down to 0 (glmer's criterion for a family with a dispersion is not), and on a
    # large crossed LMM each comparison is a full evaluation (Chem97: +30% of the fit)
    theta, summary, _ = certified_optimum(run, derivs, f, theta, summary, lower, names,
                                          bound_values=False)
    return theta, summary


def _run_from_corners(run, f, x0, init, lower, spec):
    theta, summary = run(x0)
    # A standard deviation on its bound with a correlated term beside it can be a corner of
    # the Cholesky parameterisation rather than the optimum (theta_11 = 0 with theta_21 < 0
    # where theta_11 > 0, theta_21 > 0 fits better: seen in ~9% of simulated (x | g) data
    # sets). Restart with those entries at lme4's start and keep the better point.
    corner = (lower == 0) & (theta <= BOUNDARY_TOL) & _has_correlation(spec)
    if np.any(corner):
        start = theta.copy()
        start[corner] = init[corner]
        t2, s2 = run(start)
        if f(t2) < f(theta) - 1e-10 * max(1.0, abs(f(theta))):
            log.info("restart from a boundary corner lowered the criterion by %.3g",
                     f(theta) - f(t2))
            s2.restarted = True
            return t2, s2
    return theta, summary


BOUNDARY_TOL = 1e-6
"""A diagonal ``theta`` at most this is on its bound (lme4's isSingular uses 1e-4)."""


def _has_correlation(spec: ModelSpec) -> np.ndarray:
    """Per ``theta``: True for the diagonal entries of terms with more than one column."""
    out = []
    for t in spec.terms:
        r, c = t.tril_index()
        out.extend([(t.q > 1) and (i == j) for i, j in zip(r, c)])
    return np.array(out, dtype=bool)
