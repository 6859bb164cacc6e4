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
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from daskmm.data.io import DataLike
from daskmm.data.source import Source
from daskmm.distributed.execution import MODES, executor, is_in_process, runs_in_process
from daskmm.errors import FitError, ModelError
from daskmm.formula.parse import ParsedFormula, parse_formula
from daskmm.kernels.crossed_iter import Reduced, tri_matrix
from daskmm.kernels.pls import inverse_factor
from daskmm.models.lmm.criterion import (
    Problem,
    objective,
    optimise,
    prepare_problem,
)
from daskmm.models.lmm.iterative import (
    DEFLATE,
    PROBES,
    STEPS,
    CrossedProblem,
    fit_crossed,
    fit_sparse,
)
from daskmm.models.lmm.result import LmmResult
from daskmm.models.shared.prediction import Predictor
from daskmm.models.shared.structure import (
    ranef_tables,
)
from daskmm.results.base import RanefTable, spec_terms

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger("daskmm")


def lmm(formula: str, data: DataLike, reml: bool = True, *, factors: list[str] | None = None,
        weights: str | None = None, client: Client | str | None = None, mode: str = "auto",
        npartitions: int | None = None, optimizer_options: dict | None = None,
        ddf: str | None = None, ci: str | None = None, level: float = 0.95,
        nboot: int = 500, seed: int | None = None, crossed: str = "auto") -> LmmResult:
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
        :data:`daskmm.distributed.execution.IN_PROCESS_CELLS` cells when no client or scheduler is
        given, else on a cluster, gathering statistics below :data:`GATHER_LIMIT_BYTES`. The
        result's
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
        Bootstrap replicates and their seed; ``seed`` also seeds the matrix-free path's
        probes (0 when not given).
    crossed : {"auto", "dense", "sparse", "matrix-free"}
        How crossed random effects are fitted. ``dense``: one dense block of all crossed
        levels, factored per evaluation (lme4's criterion to its last digits; its cost the
        cube of those levels). For random intercepts ``(1 | f)`` only
        (:mod:`daskmm.models.lmm.iterative`): ``sparse``, lme4's criterion exactly by a
        sparse factor of that block (fast where crossings are sparse; random crossings
        fill it in); ``matrix-free``, conjugate gradients and stochastic Lanczos
        quadrature, the criterion an estimate with its standard error, the probes fixed by
        ``seed``. ``auto``: dense up to
        :data:`~daskmm.models.shared.crossed.MATRIX_FREE_MIN_LEVELS` crossed levels, past
        that sparse where its factor is small
        (:data:`~daskmm.models.shared.crossed.SPARSE_MAX_FILL`), else matrix-free.
        ``optinfo["crossed"]`` says which ran.

    Returns
    -------
    LmmResult
    """
    if mode not in MODES:
        raise ModelError(f"mode={mode!r}; allowed: {', '.join(map(repr, MODES))}")
    t0 = time.perf_counter()
    parsed = parse_formula(formula)
    used = sorted(parsed.columns | ({weights} if weights else set()))
    src = Source.open(data)
    here = runs_in_process(mode, client, lambda: src.cells(len(used)))
    frame = src.read(local=here, columns=used, npartitions=npartitions)
    manifest = src.manifest
    with executor(here, client) as c:
        prob = prepare_problem(c, parsed, frame, factors or [], weights, mode, manifest,
                               crossed)
        t1 = time.perf_counter()
        if isinstance(prob, CrossedProblem):
            log.info("optimising: %d rows, %s, %s", prob.n,
                     ", ".join(f"{k} {v} levels" for k, v in prob.ngroups.items()), prob.path)
            result = fit_crossed_problem(prob, parsed, reml, seed)
            t2 = time.perf_counter()
        else:
            log.info("optimising: %d rows, %s, %s evaluation", prob.n,
                     ", ".join(f"{k} {v} levels" for k, v in prob.ngroups.items()),
                     prob.evaluator.mode)
            theta, opt = optimise(prob, reml, optimizer_options or {})
            t2 = time.perf_counter()
            result = _result(prob, parsed, theta, opt, reml)
            result.refit = refit_with(result)
        result.predictor = predictor_for(result, src, npartitions)
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


def refit_with(result: LmmResult):
    """``refit(optimizer_options) -> LmmResult``: the fit again from its own statistics
    (:meth:`LmmResult.all_fit`)."""
    prob, reml = result.problem, result.reml
    parsed = parse_formula(result.formula)

    def refit(opts: dict) -> LmmResult:
        theta, opt = optimise(prob, reml, opts)
        return _result(prob, parsed, theta, opt, reml)
    return refit


def predictor_for(result: LmmResult, data, npartitions: int | None) -> Predictor:
    """The :class:`~daskmm.models.shared.prediction.Predictor` of a fit (what ``predict`` and
    ``model.pkl`` need)."""
    spec = result.spec
    beta = np.zeros(len(spec.fixef_names))
    beta[[spec.fixef_names.index(nm) for nm in result.fixef_names]] = result.beta
    tables = {f: (list(t.levels), np.asarray(t.b)) for f, t in result.ranef.items()}
    return Predictor(spec, beta, tables, float(result.sigma), np.asarray(result.theta),
                     data, npartitions)


def _result(prob: Problem, parsed: ParsedFormula, theta: np.ndarray, opt: dict,
            reml: bool) -> LmmResult:
    spec = prob.spec
    prof, lam = objective(prob, theta, reml)
    if not np.isfinite(prof.objective):
        raise FitError("the objective is not finite at the optimum; the model may be "
                       "overparameterised")
    beta = prof.beta()
    sigma = prof.sigma(reml)
    LXinv = inverse_factor(prof.L_XX)
    vcov = sigma ** 2 * LXinv.T @ LXinv
    u_G = prof.u_G(beta)
    tables = ranef_tables(prob, lam, prof, beta, u_G, sigma)
    fixef_names = [n for n, k in zip(spec.fixef_names, prob.keep) if k]
    terms, factor_terms = spec_terms(spec)
    if prob.layout.global_factors:
        opt.crossed = {"path": "dense", "levels": int(prob.layout.n_G),
                       "factors": list(prob.layout.global_factors)}
    return LmmResult(formula=parsed.text, spec=spec, reml=reml, theta=theta, beta=beta,
                     fixef_names=fixef_names, vcov=vcov, sigma=sigma,
                     objective=prof.objective, nobs=prob.n, n_dropped=prob.n_dropped,
                     ngroups=prob.ngroups, ranef=tables, optinfo=opt, terms=terms,
                     factor_terms=factor_terms, problem=prob)


def fit_crossed_problem(prob: CrossedProblem, parsed: ParsedFormula, reml: bool,
                        seed: int | None = None) -> LmmResult:
    """Fit a :class:`CrossedProblem` by its path and make its
    :class:`~daskmm.models.lmm.result.LmmResult`: ``theta`` in lme4's term order, the fixed
    effects' covariance ``sigma^2 (X' V^-1 X)^-1`` (exact), the conditional modes (exact)
    and their variances. ``sparse`` (:func:`~daskmm.models.lmm.iterative.fit_sparse`):
    lme4's criterion exactly, the variances exact. ``matrix-free``
    (:func:`~daskmm.models.lmm.iterative.fit_crossed`): the criterion with its standard
    error in ``optinfo["crossed"]``, the variances by the approximation of
    :meth:`~daskmm.kernels.crossed_iter.Reduced.inverse_diag` (``inverse_blocks`` with
    random slopes), named there."""
    spec, st = prob.spec, prob.st
    seed = 0 if seed is None else int(seed)
    free = prob.path == "matrix-free"
    term_of = {t.factor: t for t in spec.terms}
    # theta in the statistics' order: the first factor's triangle, then one per factor
    names = [nm for f in prob.factors for nm in term_of[f].theta_names()]
    fit = fit_crossed(st, reml, seed=seed, crossing=prob.crossing) if free else \
        fit_sparse(st, reml, names=names)
    at = fit.at
    if not np.isfinite(at.objective) or at.r2 <= 0:
        raise FitError(f"the {prob.path} criterion is not finite at the optimum; the model "
                       "may be overparameterised: fit with crossed='dense' to see more")
    sigma = fit.sigma
    vcov = sigma ** 2 * at.S_inverse()
    if st.cols > 1:
        blocks = Reduced.of(st, fit.theta, fit.crossing).inverse_blocks() if free else \
            at.factor.inverse_blocks()
    else:
        cond = Reduced.of(st, fit.theta, fit.crossing).inverse_diag() if free else \
            at.factor.inverse_diag()
        blocks = (cond[:st.sizes[0], None, None], cond[st.sizes[0]:])
    b = st.lam_apply(fit.theta, at.u)
    bounds = np.concatenate([[0], np.cumsum(st.q_sizes)])
    first = np.concatenate([[0], np.cumsum([term_of[f].n_theta for f in prob.factors])])
    tables, theta_of = {}, {}
    for j, f in enumerate(prob.factors):
        T = tri_matrix(fit.theta[first[j]:first[j + 1]], term_of[f].q)
        theta_of[f] = slice(first[j], first[j + 1])
        labels = spec.factor(f).label(prob.levels[j])
        bj = b[bounds[j]:bounds[j + 1]].reshape(len(labels), -1)
        if j == 0:
            cu = blocks[0]
        else:
            cu = blocks[1][bounds[j] - bounds[1]:bounds[j + 1] - bounds[1]][:, None, None]
        tables[f] = RanefTable(levels=list(labels), b=bj,
                               cov=sigma ** 2 * np.einsum("ab,lbc,dc->lad", T, cu, T))
    order = np.concatenate([np.arange(len(fit.theta))[theta_of[t.factor]]
                            for t in spec.terms])
    theta = np.asarray(fit.theta)[order]
    opt = fit.opt
    opt.x = theta.tolist()
    opt.x0 = [float(v) for v in np.asarray(fit.theta0)[order]]
    opt.gradient = [float(opt.gradient[i]) for i in order] if opt.gradient else None
    opt.mode = f"{prob.mode}, {prob.path}"
    objective = at.objective - prob.sum_log_w
    opt.fmin = objective
    if free:
        opt.crossed = {
            "path": "matrix-free",
            "criterion_se": at.se,
            "probes": PROBES, "lanczos_steps_max": STEPS, "deflation": DEFLATE,
            "seed": seed, "factors": list(prob.factors),
            "tables": ("client" if prob.crossing is None else
                       f"workers: {len(prob.crossing.blocks)} blocks of "
                       f"{prob.factors[0]}'s levels"),
            "conditional_variances": "approximate: A^-1's diagonal blocks with the crossed "
                                     "Schur complement's inverse taken as its diagonal's "
                                     "inverse",
        }
        certified = bool(opt.converged)
        opt.checks = {
            "certified": certified,
            "tested": "Newton steps below xtol on the criterion's gradient (its traces "
                      "estimated from the fixed probes)",
            "messages": [] if certified else [f"the Newton steps did not converge: "
                                              f"{opt.message}"],
            "warnings": [f"{'REML criterion' if reml else 'deviance'} estimated "
                         f"(matrix-free crossed fit): standard error {at.se:.3g}"],
        }
    else:
        opt.crossed = {"path": "sparse", "fill": int(at.fill), "factors": list(prob.factors),
                       "ordering": "SuperLU symmetric mode, minimum degree on S + S'"}
    fixef_names = [nm for nm, k in zip(spec.fixef_names, prob.keep) if k]
    terms, factor_terms = spec_terms(spec)
    ngroups = {t.factor: prob.ngroups[t.factor] for t in spec.terms}
    return LmmResult(formula=parsed.text, spec=spec, reml=reml, theta=theta, beta=at.beta,
                     fixef_names=fixef_names, vcov=vcov, sigma=sigma, objective=objective,
                     nobs=prob.n, n_dropped=prob.n_dropped, ngroups=ngroups, ranef=tables,
                     optinfo=opt, terms=terms, factor_terms=factor_terms, problem=None)
