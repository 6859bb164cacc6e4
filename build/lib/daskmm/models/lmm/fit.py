"""Linear mixed models: ``daskmm.lmm``.

The fit is three steps:

1. **Spec.** Parse the formula; if the fixed part uses categorical columns or there are several
   grouping factors, a metadata pass (:func:`~daskmm.distributed.passes.metadata_pass`) finds
   every level so encodings are frozen, and tells which factors nest in which. The primary
   factor (the one data are partitioned by) is the one whose local blocks are cheapest to
   factor (:func:`daskmm.models.shared.structure.choose_layout`).
2. **Statistics.** One pass over the data computes each partition's cross-products on the
   workers. Partitions that split a level of the primary factor are merged by level (single
   factor) or the data are shuffled by that factor first (nested factors).
3. **Optimisation.** L-BFGS-B with the exact gradient of the profiled criterion, then Newton
   steps to a projected gradient of 1e-8 (BOBYQA, lme4's ``nloptwrap``, as the fallback;
   :mod:`daskmm.core.optimizer`); each evaluation with its gradient is one call of an evaluator: in
   this process (``mode="in-process"`` or ``"gathered"``), or a map + tree reduction on the
   workers (``mode="distributed"``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from daskmm.data.columns import check_factors, data_columns
from daskmm.data.io import DataLike, open_data
from daskmm.data.local import estimate_cells
from daskmm.data.manifest import Manifest
from daskmm.data.rows import DropCounts
from daskmm.distributed.evaluator import DistributedEvaluator, GatheredEvaluator
from daskmm.distributed.passes import (
    aligned,
    gather_stats,
    shuffle_by,
    stats_pass,
    stats_summary,
)
from daskmm.errors import DataError, FitError, ModelError
from daskmm.distributed.execution import MODES, executor, is_in_process, runs_in_process
from daskmm.formula.checks import check_ranges
from daskmm.formula.parse import ParsedFormula, parse_formula
from daskmm.formula.spec import (
    ModelSpec,
    check_column_types,
    check_columns,
    is_categorical_dtype,
    plan_formula,
)
from daskmm.kernels.aliasing import estimable_columns
from daskmm.kernels.pls import lambda_tilde, profiled, profiled_grad_parts
from daskmm.kernels.stats import Layout, PartitionStats
from daskmm.core.optimizer import OptSummary, minimize
from daskmm.models.shared.prediction import Predictor
from daskmm.models.shared.structure import frozen_levels, lambdas, model_layout, outside_bars, ranef_tables
from daskmm.results.base import spec_terms
from daskmm.models.lmm.result import LmmResult

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


def lmm(formula: str, data: DataLike, reml: bool = True, *, factors: list[str] | None = None,
        weights: str | None = None, client: Client | str | None = None, mode: str = "auto",
        npartitions: int | None = None, optimizer_options: dict | None = None,
        ddf: str | None = None, ci: str | None = None, level: float = 0.95,
        nboot: int = 500, seed: int | None = None) -> LmmResult:
    """Fit a linear mixed model by REML or ML, as ``lme4::lmer``.

    Parameters
    ----------
    formula : str
        lme4 formula, e.g. ``"Reaction ~ Days + (Days | Subject)"``.
    data : str, path, pandas.DataFrame or dask.dataframe.DataFrame
        Parquet or CSV path/URL, or a frame.
    reml : bool
        REML (default, as lmer) or maximum likelihood.
    factors : list of str, optional
        Columns to treat as categorical whatever their dtype (grouping columns always are).
    weights : str, optional
        Column of prior weights.
    client : distributed.Client or str, optional
        Client or scheduler address; None uses ``DASK_SCHEDULER_ADDRESS``, the current client or a
        new LocalCluster.
    mode : {"auto", "in-process", "gathered", "distributed"}
        Where the fit runs. ``in-process``: in this process, no cluster. ``gathered``: the
        statistics pass on a cluster, the optimisation here. ``distributed``: each evaluation
        on the workers. ``auto``: in process for data below
        :data:`daskmm.distributed.execution.IN_PROCESS_CELLS` cells when no client or scheduler is given,
        else on a cluster, gathering statistics below :data:`GATHER_LIMIT_BYTES`. The result's
        ``optinfo["mode"]`` says which ran.
    npartitions : int, optional
        Partitions for a pandas input.
    optimizer_options : dict, optional
        Overrides of :data:`daskmm.core.optimizer.DEFAULTS`: ``method`` (``"auto"``: L-BFGS-B with
        the exact gradient, then Newton; ``"bobyqa"``: lme4's derivative-free optimiser),
        ``gtol``, ``xtol_abs``, ``ftol_abs``, ``maxeval``, ``polish``.
    ddf : {"satterthwaite", "kenward-roger"}, optional
        Add degrees of freedom and p-values to the fixed effects (lmerTest's t tests;
        :meth:`LmmResult.test_fixef`).
    ci : {"wald", "profile", "boot"}, optional
        Add confidence intervals (:meth:`LmmResult.confint`) at ``level``; ``boot`` uses
        ``nboot`` replicates from ``seed``. Profiles and replicates run as tasks on the
        cluster when the fit has one.
    level : float
    nboot, seed : int

    Returns
    -------
    LmmResult
    """
    if mode not in MODES:
        raise ModelError(f"mode={mode!r}; allowed: {', '.join(map(repr, MODES))}")
    t0 = time.perf_counter()
    parsed = parse_formula(formula)
    used = sorted(parsed.columns | ({weights} if weights else set()))
    here = runs_in_process(mode, client, lambda: estimate_cells(data, len(used)))
    frame, manifest = open_data(data, npartitions=npartitions, local=here, columns=used)
    with executor(here, client) as c:
        prob = prepare_problem(c, parsed, frame, factors or [], weights, mode, manifest)
        t1 = time.perf_counter()
        log.info("optimising: %d rows, %s, %s evaluation", prob.n,
                 ", ".join(f"{k} {v} levels" for k, v in prob.ngroups.items()),
                 prob.evaluator.mode)
        theta, opt = optimise(prob, reml, optimizer_options or {})
        t2 = time.perf_counter()
        result = _result(prob, parsed, theta, opt, reml)
        result.predictor = predictor_for(result, data, npartitions)
        if here and isinstance(frame, pd.DataFrame):
            # the rows are in this process: the summary's scaled-residual quantiles are
            # computed from them, exactly, when first printed or written (a pass over the
            # rows that a fit read only for fixef() should not pay)
            result.rows_here = frame
        t3 = time.perf_counter()
        if ddf is not None:
            result.test_fixef(ddf)
        if ci is not None:
            result.confint(ci, level, nboot=nboot, seed=seed,
                           client=None if is_in_process(c) else c)
        t4 = time.perf_counter()
    result.timing = {"statistics_s": t1 - t0, "optimise_s": t2 - t1, "results_s": t3 - t2,
                     "total_s": t4 - t0}
    if ddf is not None or ci is not None:
        result.timing["inference_s"] = t4 - t3
    result.ingest_dropped = dict(manifest.na_dropped) if manifest is not None else {}
    return result


def predictor_for(result: LmmResult, data, npartitions: int | None) -> Predictor:
    """The :class:`~daskmm.models.shared.prediction.Predictor` of a fit (what ``predict`` and
    ``model.pkl`` need)."""
    spec = result.spec
    beta = np.zeros(len(spec.fixef_names))
    beta[[spec.fixef_names.index(nm) for nm in result.fixef_names]] = result.beta
    tables = {f: (list(t.levels), np.asarray(t.b)) for f, t in result.ranef.items()}
    return Predictor(spec, beta, tables, float(result.sigma), np.asarray(result.theta),
                     data, npartitions)


# ------------------------------------------------------------------ step 1 and 2
def prepare_problem(client: Client, parsed: ParsedFormula, ddf: dd.DataFrame,
                    factors: list[str], weights: str | None, mode: str,
                    manifest: Manifest | None = None) -> Problem:
    """Steps 1 and 2: freeze the spec, run the statistics pass, pick the evaluator.

    With the ``manifest`` of an ingested dataset the levels of categorical columns are read
    from it (the dataset holds no missing values, so they are exactly the levels lme4 would
    keep) and no metadata pass runs unless several grouping factors need their combinations
    (nesting) examined.

    The returned problem evaluates the profiled criterion at any ``theta`` with
    :func:`objective`; :func:`lmm` optimises it.
    """
    check_columns(parsed, data_columns(ddf), weights)
    schema = {c: ddf.dtypes[c] for c in ddf.columns}
    group_cols = sorted({c for b in parsed.bars for c in b.factor})
    used = sorted(parsed.columns | ({weights} if weights else set()))
    check_factors(factors, data_columns(ddf))
    check_column_types(schema, used)
    ddf = ddf[used]  # read only these columns (projection reaches the Parquet reader)
    outside = sorted(parsed.columns - {c for c in group_cols
                                       if c not in outside_bars(parsed)})
    cat_cols = [c for c in outside if c in factors or is_categorical_dtype(schema[c])]
    if weights and is_categorical_dtype(schema[weights]):
        raise DataError(f"weights column {weights!r} is not numeric ({schema[weights]}); "
                        "prior weights must be positive numbers")
    factor_names = list(dict.fromkeys(b.factor_name for b in parsed.bars))
    rewriter = plan_formula(parsed, used)
    ddf, categorical, factor_levels, combos = frozen_levels(
        client, ddf, used, cat_cols, factor_names, group_cols, manifest, rewriter=rewriter,
        declared=factors)
    spec = ModelSpec.build(parsed, {c: schema[c] for c in used}, categorical, weights,
                           factor_levels or None, rewriter=rewriter)
    layout = model_layout(spec, combos, len(spec.fixef_names))
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
    _check_groups(spec, ngroups, n)
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


def _check_groups(spec: ModelSpec, ngroups: dict, n: int) -> None:
    for name, nl in ngroups.items():
        if nl < 2:
            raise ModelError(
                f"grouping factor {name!r} has {nl} level; a random effect needs at least 2 "
                "levels (drop the term or use a fixed effect)")
        if nl >= n:
            raise ModelError(
                f"grouping factor {name!r} has {nl} levels for {n} observations; the number of "
                "levels must be smaller than the number of observations")
    for t in spec.terms:  # lme4's check.nobs.vs.nRE, per term
        n_re = ngroups[t.factor] * t.q
        if n_re >= n:
            raise ModelError(
                f"term ({t.lhs} | {t.factor}) has {n_re} random effects for {n} observations; "
                "the model is not identifiable (lme4: check.nobs.vs.nRE)")


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
    from daskmm.kernels.stats import LevelGroup
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
             x0: np.ndarray | None = None, initial_step: np.ndarray | None = None
             ) -> tuple[np.ndarray, OptSummary]:
    """:func:`daskmm.core.optimizer.minimize` over ``theta`` from lme4's start (or ``x0``), with the
    exact gradient of the profiled criterion (BOBYQA when ``options["method"] == "bobyqa"``,
    or when the dense global block is too large for the gradient to pay); ``initial_step``
    is BOBYQA's first trust-region radius per parameter."""
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

    theta, summary = run(np.asarray(x0, dtype=float))
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


def _result(prob: Problem, parsed: ParsedFormula, theta: np.ndarray, opt: dict,
            reml: bool) -> LmmResult:
    spec = prob.spec
    prof, lam = objective(prob, theta, reml)
    if not np.isfinite(prof.objective):
        raise FitError("the objective is not finite at the optimum; the model may be "
                       "overparameterised")
    beta = prof.beta()
    sigma = prof.sigma(reml)
    LXinv = np.linalg.inv(prof.L_XX)
    vcov = sigma ** 2 * LXinv.T @ LXinv
    u_G = prof.u_G(beta)
    tables = ranef_tables(prob, lam, prof, beta, u_G, sigma)
    fixef_names = [n for n, k in zip(spec.fixef_names, prob.keep) if k]
    terms, factor_terms = spec_terms(spec)
    return LmmResult(formula=parsed.text, spec=spec, reml=reml, theta=theta, beta=beta,
                     fixef_names=fixef_names, vcov=vcov, sigma=sigma,
                     objective=prof.objective, nobs=prob.n, n_dropped=prob.n_dropped,
                     ngroups=prob.ngroups, ranef=tables, optinfo=opt, terms=terms,
                     factor_terms=factor_terms, problem=prob)


