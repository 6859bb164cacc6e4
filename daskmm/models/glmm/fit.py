"""Generalized linear mixed models: ``daskmm.glmm``, glmer's Laplace and adaptive Gauss-Hermite
fits, with the data kept on the workers.

The fit:

1. **Data on the workers.** Each partition is encoded once (fixed-effects matrix, response,
   binomial trials, offset, random-effect columns and level keys) and kept on the workers as a
   future (``daskmm-glmm-data-*``): no evaluation reads the input again. Partitions must hold
   whole levels of the primary grouping factor; input that does not is shuffled by it first.
2. **Start.** ``beta`` from the GLM without random effects (IRLS, each step a map of
   ``X'WX, X'Wz`` over the partitions), ``theta`` at lme4's start (ones on the diagonal).
3. **Optimisation** in glmer's two stages (:func:`daskmm.core.optimizer.minimize`): over
   ``theta`` with ``beta`` found with the modes by PIRLS (``nAGQ = 0``, :class:`_JointCriterion`;
   for nested structures), then over ``(theta, beta)`` on the Laplace (``nagq=1``) or AGQ
   criterion from there. Where the criterion has an exact gradient (crossed factors, one scalar
   term a factor, a canonical link: :mod:`daskmm.kernels.laplace_grad`) the joint stage is
   L-BFGS-B with a Newton finish on that gradient, BOBYQA the fallback; otherwise BOBYQA and a
   Newton polish on finite differences. Each evaluation finds the conditional modes by PIRLS:

   * one scalar random intercept, ``(1 | g)``: per level, inside the partitions, by a compiled
     kernel (:mod:`daskmm.kernels.scalar_re`), which also does adaptive Gauss-Hermite
     quadrature;
   * any other structure the LMM accepts: the blocked PIRLS of :mod:`daskmm.kernels.pirls`.
     Without crossed factors every primary level is independent and each partition iterates to
     convergence on its own (one map per evaluation; the per-level blocks factored by the
     compiled :mod:`daskmm.kernels.block_chol`). Crossed factors couple the partitions: joint
     PIRLS steps, in process or, on a cluster, one round a step (each partition's state a
     future on its worker, the small global block solved on the client); the gradient is one
     more round.
4. **Results.** ``vcov(beta)`` from the Hessian in ``(theta, beta)`` (glmer's default,
   ``use.hessian = TRUE``): ``2 [H^-1]_beta``, by central differences of the exact gradient
   where there is one and of the criterion otherwise; conditional modes and their SDs (lme4's
   ``condVar``) from the factors at the modes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import types
import uuid

import numpy as np
import pandas as pd
import scipy.linalg as la

from daskmm.core.families import get_family
from daskmm.core.optimizer import minimize
from daskmm.core.reterm import RandomTerm
from daskmm.data.io import DataLike
from daskmm.data.source import Source
from daskmm.distributed.execution import MODES, executor, is_in_process, runs_in_process
from daskmm.distributed.passes import aligned, partitions, raw_aligned, shuffle_by
from daskmm.distributed.progress import track
from daskmm.errors import DataError, FitError, ModelError
from daskmm.formula.checks import check_ranges
from daskmm.formula.parse import parse_formula
from daskmm.formula.spec import (
    ModelSpec,
    plan_formula,
)
from daskmm.kernels import glm_start as G
from daskmm.kernels import laplace_grad as LG
from daskmm.kernels import pirls as P
from daskmm.kernels import scalar_re as K
from daskmm.kernels.aliasing import estimable_columns
from daskmm.kernels.pls import group_Lambda, group_modes, lambda_tilde, profiled
from daskmm.kernels.stats import Layout
from daskmm.models.glmm.encode import (
    GlmmPartition,
    Response,
    partition_keys,
    prepare_partition,
    read_response,
    two_levels,
    with_size,
)
from daskmm.models.glmm.result import GlmmResult
from daskmm.models.shared.prepare import check_groups, prepare_columns
from daskmm.models.shared.structure import (
    frozen_levels,
    lambdas,
    model_layout,
    ranef_tables,
)
from daskmm.results.base import RanefTable, spec_terms

log = logging.getLogger("daskmm")

MAX_NAGQ = 25


def _scoring(part, beta: np.ndarray | None, family: int, link: int):
    return G.scoring_step(part.X, part.offset, part.y, part.wt, family, link, beta) + \
        (len(part.y), part.const)


def _evaluate(part: GlmmPartition, theta: float, beta: np.ndarray, family: int, link: int,
              nodes: np.ndarray, weights: np.ndarray, modes: bool = False,
              size: float | None = None):
    with_size(part, size)
    eta0 = part.X @ beta + part.offset
    m = len(part.levels)
    warm = part.u_warm is not None
    u = part.u_warm.copy() if warm else np.zeros(m)
    L = np.ones(m)
    val = K.levels_objective(part.starts, eta0, part.y, part.wt, float(theta), family, link,
                             nodes, weights, u, L, warm)
    if math.isfinite(val):
        part.u_warm = u  # the next evaluation starts here (same worker, same object)
    if modes:
        return val, part.levels, u, L
    return val


def _local_eval(data: P.PirlsData, layout: Layout, lam: dict, beta: np.ndarray, family: int,
                link: int, size: float | None = None, newton: bool = False) -> float:
    with_size(data, size)
    return P.local_laplace(data, layout, lam, beta, family, link, newton=newton)


def _local_point(data: P.PirlsData, layout: Layout, lam: dict, beta: np.ndarray, family: int,
                 link: int, size: float | None = None) -> P.Point:
    with_size(data, size)
    return P.local_point(data, layout, lam, beta, family, link)


def _g_point(data: P.PirlsData, done: None, layout: Layout, lam: dict, beta: np.ndarray,
             b_G: np.ndarray, family: int, link: int, size: float | None = None) -> P.Point:
    """The whole :class:`~daskmm.kernels.pirls.Point` at the final ``(theta, beta)``, for the
    conditional modes: the local modes to convergence given the crossed factors' ``b_G``
    (warm from the fit), then the blocked point there. The result stays on the worker.
    ``done``: the last solve's :func:`_c_finish` on this partition (run first)."""
    with_size(data, size)
    value = P.local_laplace(data, layout, lam, beta, family, link,
                            eta_extra=P.global_zb(data, layout, b_G))
    if not math.isfinite(value):
        data.u_warm = None
        return P.rejected_point(data, layout)
    groups = data.g_groups  # the level groups depend only on the keys (build_index's)
    eta_fixed = data.X @ beta + data.offset
    if groups is None:
        groups = data.g_groups = P.point(data, layout, lam, eta_fixed, None, b_G, family,
                                         link).groups
    return P.point(data, layout, lam, eta_fixed, P.split_local(data, data.u_warm), b_G,
                   family, link, groups)


def _c_start(data: P.PirlsData, done: None, layout: Layout, lam: dict, beta: np.ndarray,
             b_G: np.ndarray, family: int, link: int, size: float | None = None,
             shift: tuple[np.ndarray, np.ndarray] | None = None) -> P.CrossedState | None:
    """The joint PIRLS state at the last evaluation's local modes (or zero); it stays on the
    worker as a future. With ``shift = (w, Lambda_G dv_G)`` and the pieces the last gradient
    left (:func:`daskmm.kernels.pirls.crossed_gradient`), the modes are first moved to first
    order in the change of ``(theta, beta)`` (:func:`daskmm.kernels.laplace_grad.local_shift`).
    ``done``: the last solve's :func:`_c_finish` on this partition (run first)."""
    with_size(data, size)
    n_loc = data.index.Z_loc.shape[1]
    st = None
    warm = isinstance(data.u_warm, np.ndarray) and len(data.u_warm) == n_loc
    pieces = getattr(data, "_shift", None)
    if warm and shift is not None and pieces is not None:
        L, blocks, E, Y_loc = pieces
        u0 = data.u_warm + LG.local_shift(L, blocks, E, Y_loc, shift[0], shift[1])
        st = P.crossed_state(data, layout, lam, beta, u0, b_G, family, link)
    if st is None and warm:
        st = P.crossed_state(data, layout, lam, beta, data.u_warm, b_G, family, link)
    if st is None:
        st = P.crossed_state(data, layout, lam, beta, np.zeros(n_loc), b_G, family, link)
    return st


def _c_try(data: P.PirlsData, st: P.CrossedState, layout: Layout, lam: dict, beta: np.ndarray,
           b_G_target: np.ndarray, t: float, family: int, link: int,
           size: float | None = None) -> P.CrossedState | None:
    with_size(data, size)
    return P.crossed_try(data, st, layout, lam, beta, b_G_target, t, family, link)


def _c_grad(data: P.PirlsData, st: P.CrossedState, done: None, layout: Layout,
            lam: dict, factors: tuple[str, ...], beta: np.ndarray, u_G: np.ndarray,
            T: np.ndarray, family: int, link: int) -> tuple:
    """:func:`daskmm.kernels.pirls.crossed_gradient` at the solve's final state, after that
    solve's :func:`_c_finish` (``done``), which would otherwise clear what it leaves."""
    return P.crossed_gradient(data, st, layout, lam, factors, beta, u_G, T, family, link)


def _c_summary(st: P.CrossedState | None):
    if st is None:
        return (-math.inf, 0.0, math.inf, None, None, (0.0, 0.0))
    return st.pieces.summary() + (st.step,)


def _c_finish(data: P.PirlsData, st: P.CrossedState | None) -> None:
    if st is not None:
        data.u_warm = st.u
    data._shift = None  # the modes moved: the last gradient's pieces no longer apply


def _g_summary(pt: P.Point):
    return pt.summary() + (pt.step,)


def _g_modes(pt: P.Point, layout: Layout, lam: dict, prof, u_G: np.ndarray):
    LamT = lambda_tilde(layout, lam)
    out = []
    for g in pt.groups:
        b, cov = group_modes(g, group_Lambda(layout, lam, g.composition), LamT, prof,
                             np.zeros(0), u_G, 1.0, layout)
        out.append((g.composition, g.levels, g.nested_levels, b, cov))
    return out


# ------------------------------------------------------------------ driver
def glmm(formula: str, data: DataLike, family: str = "binomial", *, link: str | None = None,
         nagq: int = 1, factors: list[str] | None = None, weights: str | None = None,
         client=None, mode: str = "auto", npartitions: int | None = None,
         optimizer_options: dict | None = None) -> GlmmResult:
    """Fit a GLMM by maximum likelihood, as ``lme4::glmer``.

    Parameters
    ----------
    formula : str
        lme4 formula with any random-effect structure :func:`daskmm.lmm` accepts, e.g.
        ``"cbind(incidence, size - incidence) ~ period + (1 | herd)"`` or
        ``"TICKS ~ YEAR + (1 | BROOD) + (1 | LOCATION)"``. A binomial response is 0/1, a
        two-level factor or logical column (the first level is failure, as glmer),
        ``cbind(successes, failures)``, or a proportion with ``weights`` giving the trials. A
        Poisson response is a count column; ``offset(log(exposure))`` is allowed.
    data : str, path, pandas.DataFrame or dask.dataframe.DataFrame
    family : {"binomial", "poisson", "negative_binomial"}
        ``"negative_binomial"`` (alias ``"nbinom2"``) is NB2, ``Var = mu + mu^2 / k``, with the
        size ``k`` estimated jointly (``glmer.nb``'s ``theta``; glmmTMB's ``nbinom2``).
    link : str, optional
        ``logit`` (default), ``probit``, ``cloglog`` for the binomial; ``log`` otherwise.
    nagq : int
        1: Laplace; 2..25: adaptive Gauss-Hermite quadrature with that many nodes (one scalar
        random-effect term only, as glmer).
    factors : list of str, optional
        Numeric columns to treat as categorical.
    weights : str, optional
        Prior weights: the number of trials of a binomial proportion response.
    client, npartitions
        As for :func:`daskmm.lmm`.
    mode : {"auto", "in-process", "distributed"}
        ``in-process``: no cluster; ``distributed``: the data persisted on a cluster's
        workers, each evaluation a map over them; ``auto``: in process for small data when no
        client or scheduler is given (:func:`daskmm.lmm`). ``optinfo["mode"]`` says which ran.
    optimizer_options : dict, optional
        ``xtol_abs``, ``ftol_abs``, ``maxeval``, ``polish``.

    Returns
    -------
    GlmmResult
    """
    fam = get_family(family)
    if fam.code is None:
        raise ModelError("the gaussian family is a linear mixed model: use daskmm.lmm (or "
                         "daskmm.fit, which chooses)")
    family, fam_code = fam.name, fam.code
    link_obj = fam.link(link)
    link = link_obj.name
    if mode not in MODES or mode == "gathered":
        raise ModelError(f"mode={mode!r}; allowed for a GLMM: 'auto', 'in-process', "
                         "'distributed'")
    if not (isinstance(nagq, int) and 1 <= nagq <= MAX_NAGQ):
        raise ModelError(f"nagq={nagq!r}; use an integer from 1 (Laplace) to {MAX_NAGQ}")
    t0 = time.perf_counter()
    parsed = parse_formula(formula)
    bars = parsed.bars
    scalar = (len(bars) == 1 and bars[0].lhs.replace(" ", "") == "1"
              and len(bars[0].factor) == 1)
    if nagq > 1 and not scalar:
        raise ModelError(f"nagq={nagq} (adaptive Gauss-Hermite quadrature) needs exactly one "
                         "random intercept on one grouping column, '(1 | g)', as glmer; use "
                         f"nagq=1 (the Laplace approximation) for {formula!r}")
    if weights and family != "binomial":
        raise ModelError(f"weights apply to a binomial proportion response (the trials); the "
                         f"{family} family takes none")
    parsed_y, resp_col, trials_text = read_response(parsed, family)
    if weights and trials_text:
        raise ModelError("give the trials either by cbind(successes, failures) or by weights "
                         "with a proportion response, not both")
    used = sorted(parsed.columns | ({weights} if weights else set()))
    src = Source.open(data)
    here = runs_in_process(mode, client, lambda: src.cells(len(used)))
    ddf = src.read(local=here, columns=used, npartitions=npartitions)
    manifest = src.manifest
    ddf, plan = prepare_columns(parsed, ddf, factors or [], weights)
    factor_names = plan.factor_names
    opts = optimizer_options or {}
    with executor(here, client) as c:
        rewriter = plan_formula(parsed_y, used)
        ddf, categorical, factor_levels, combos = frozen_levels(
            c, ddf, used, plan.categorical, factor_names, plan.groups, manifest, hold=True,
            rewriter=rewriter, declared=factors or ())
        held = not isinstance(ddf, pd.DataFrame) and len(factor_names) > 1
        sch = dict(plan.schema)
        success = None
        if resp_col in categorical:
            success = two_levels(resp_col, categorical.pop(resp_col), family)
            sch[resp_col] = np.dtype(float)
        spec = ModelSpec.build(parsed_y, sch, categorical, weights, factor_levels or None,
                               rewriter=rewriter)
        trials = ModelSpec.build(dataclasses.replace(parsed, response=trials_text), sch,
                                 categorical, None, None, rewriter=rewriter) \
            if trials_text else None
        resp = Response(resp_col, trials, success, weights)
        layout = model_layout(spec, combos, 0, prefer_local=True)
        primary, glob = layout.primary, layout.global_factors
        part_layout = None if scalar else layout
        if held and not raw_aligned(c, ddf, spec.factor(primary)):
            # the input is on the workers already (several factors: frozen_levels held it):
            # shuffle before encoding rather than encode twice
            log.info("data are not partitioned by %s: shuffling", primary)
            ddf = shuffle_by(ddf, spec.factor(primary))
        parts = _persist(c, ddf, spec, resp, fam_code, part_layout)
        info = c.gather(c.map(partition_keys, parts, family=fam_code, pure=False))
        if not aligned([k for k, _, _ in info]):
            log.info("data are not partitioned by %s: shuffling", primary)
            c.cancel(parts)
            parts = _persist(c, shuffle_by(ddf, spec.factor(primary)), spec, resp, fam_code,
                             part_layout)
            info = c.gather(c.map(partition_keys, parts, family=fam_code, pure=False))
        del ddf  # the encoded partitions are all the fit needs from here on
        n_dropped = sum(d for _, d, _ in info)
        ngroups = {primary: sum(len(k) for k, _, _ in info)}
        for f in spec.factors:
            if f.name != primary:
                ngroups[f.name] = len(factor_levels[f.name])
        check_ranges([i[2]["ranges"] for i in info], spec, parsed.response)
        notes = _level_warnings(primary, info, family)
        keep, beta0, n, const = _glm_start(c, parts,
                                           K.POISSON if fam_code == K.NEGBIN else fam_code,
                                           link_obj.code, spec.fixef_names)
        if n == 0:
            raise DataError("no rows left after dropping rows with missing values in the "
                            f"columns the model uses ({', '.join(used)})")
        check_groups(spec, ngroups, n, allow_n=True)  # as glmer: a level an observation is fine
        if scalar:
            crit = _ScalarCriterion(c, parts, spec, fam_code, link_obj.code, nagq, const)
        elif glob:
            crit = _GlobalCriterion(c, parts, spec, layout, fam_code, link_obj.code, const,
                                    newton=link == fam.canonical)
        else:
            crit = _LocalCriterion(c, parts, spec, layout, fam_code, link_obj.code, const,
                                   newton=link == fam.canonical)
        if not keep.all():
            crit = _Estimable(crit, keep)
        theta0 = np.concatenate([t.theta_init() for t in spec.terms])
        lower = np.concatenate([t.theta_lower() for t in spec.terms])
        nb = fam_code == K.NEGBIN
        t1 = time.perf_counter()
        where = "in-process" if is_in_process(c) else "distributed"
        log.info("optimising: %d rows, %s, %s evaluation", n,
                 ", ".join(f"{k} {v} levels" for k, v in ngroups.items()), where)
        if nb:  # log k is one more free parameter, after beta
            x, optinfo = _optimise(_SizeAppended(crit), theta0, lower,
                                   np.concatenate([beta0, [0.0]]), opts, where)
            size = float(np.exp(x[-1]))
            x = x[:-1]
        else:
            stage1 = None
            # the first stage by default in process; on a cluster each of its PIRLS steps is
            # a round of maps, which pays only when evaluations are expensive: ask for it
            # with stages=2
            stages = opts.get("stages", 2 if is_in_process(c) else 1)
            if isinstance(crit, _LocalCriterion) and stages == 2:
                stage1 = _stage1(_JointCriterion(c, parts, spec, layout, fam_code,
                                                 link_obj.code, const, beta0),
                                 theta0, lower, opts, where)
            if stage1 is not None:  # lme4's nAGQ = 0 stage: theta with beta inside PIRLS
                theta0, beta0, info1 = stage1
            x, optinfo = _optimise(crit, theta0, lower, beta0,
                                   {k: v for k, v in opts.items() if k != "stages"}, where,
                                   near=stage1 is not None)
            if stage1 is not None:
                optinfo.settings["stage1"] = info1
                optinfo.feval += info1["feval"]
            size = None
        t2 = time.perf_counter()
        nt = len(theta0)
        theta, beta = x[:nt], x[nt:]
        # the vcov Hessian divides differences of the criterion by delta^2 = 1e-8: from here
        # on PIRLS runs to its full tolerance, without Newton's early stop
        # (differences of the exact gradient divide by 1e-4 only: the early stop stays)
        base = crit.crit if isinstance(crit, _Estimable) else crit
        graded = getattr(crit, "has_gradient", False)
        if hasattr(base, "newton") and not graded:
            base.newton = False
        # with the gradient the optimiser's last value is the criterion at x, modes
        # converged: no solve again
        objective = optinfo.fmin if graded and optinfo.fmin < 1e299 else \
            crit(theta, beta, size)
        if not math.isfinite(objective):
            raise FitError("the criterion is not finite at the optimum; the model may be "
                           "overparameterised or the data separated")
        # vcov at the estimated size, as glmer.nb reports it (the last glmer fit, k fixed)
        bounds = np.concatenate([lower, np.full(len(beta), -np.inf)])
        if graded:
            H = _hessian_of_gradient(lambda v: crit.value_grad(v[:nt], v[nt:], size)[1], x,
                                     bounds)
        else:
            H = _hessian(lambda v: crit(v[:nt], v[nt:], size), x, bounds)
        vcov = _vcov(H, nt, theta, lower)
        ranef = crit.ranef(theta, beta, size)
        t3 = time.perf_counter()
    names = [nm for nm, k in zip(spec.fixef_names, keep) if k]
    notes += _fit_warnings(beta, vcov, names, family)
    terms, factor_terms = spec_terms(spec)
    res = GlmmResult(formula=parsed.text, spec=spec, theta=theta, beta=beta,
                     fixef_names=names, vcov=vcov, objective=objective, nobs=n,
                     n_dropped=n_dropped, ngroups=ngroups, ranef=ranef, optinfo=optinfo,
                     terms=terms, factor_terms=factor_terms, family=family, link=link,
                     nagq=nagq, nb_size=size, warnings=notes)
    res.ingest_dropped = dict(manifest.na_dropped) if manifest is not None else {}
    res.predictor = rows_for(res, src, resp, npartitions)
    res.timing = {"data_s": t1 - t0, "optimise_s": t2 - t1, "results_s": t3 - t2,
                  "total_s": time.perf_counter() - t0}
    return res


def _level_warnings(primary: str, info: list, family: str) -> list[str]:
    ysum = np.concatenate([t["ysum"] for _, _, t in info])
    wsum = np.concatenate([t["wsum"] for _, _, t in info])
    out = []
    zero = int(np.sum(ysum == 0))
    if zero:
        out.append(f"{zero} of {len(ysum)} levels of {primary!r} have all-zero responses; their "
                   "conditional modes sit at the lower end of the random-effect distribution "
                   "and are shrunk, not estimated")
    if family == "binomial":
        full = int(np.sum(ysum == wsum))
        if full:
            out.append(f"{full} of {len(ysum)} levels of {primary!r} have all trials "
                       "successful; their conditional modes are shrunk, not estimated")
    return out


def _fit_warnings(beta, vcov, names, family) -> list[str]:
    out = []
    se = np.sqrt(np.maximum(np.diag(vcov), 0))
    if family == "binomial":
        big = [n for n, b, s in zip(names, beta, se) if abs(b) > 10 and s > 0.5 * abs(b)]
        if big:
            out.append(f"fixed effect(s) {', '.join(big)} are large with larger standard errors: "
                       "the response may be (quasi-)separated by them; fitted probabilities "
                       "are numerically 0 or 1")
    return out


# ------------------------------------------------------------------ criteria
class _ScalarCriterion:
    """One ``(1 | g)`` term: the compiled per-level kernel (Laplace or AGQ)."""

    def __init__(self, c, parts, spec, family, link, nagq, const):
        self.c, self.parts, self.family, self.link, self.const = c, parts, family, link, const
        self.factor = spec.factors[0]
        self.nodes, self.weights = np.polynomial.hermite_e.hermegauss(nagq)

    def _map(self, theta, beta, size, modes=False):
        return self.c.map(_evaluate, self.parts, theta=float(theta[0]), beta=beta,
                          family=self.family, link=self.link, nodes=self.nodes,
                          weights=self.weights, modes=modes, size=size, pure=False)

    def __call__(self, theta, beta, size=None) -> float:
        return float(sum(self.c.gather(self._map(theta, beta, size)))) - 2.0 * self.const

    def ranef(self, theta, beta, size=None) -> dict[str, RanefTable]:
        pieces = self.c.gather(self._map(theta, beta, size, modes=True))
        lv = np.concatenate([p[1] for p in pieces])
        u = np.concatenate([p[2] for p in pieces])
        L = np.concatenate([p[3] for p in pieces])
        order = np.argsort(lv, kind="stable")
        th = float(theta[0])
        return {self.factor.name: RanefTable(levels=self.factor.label(lv[order]),
                                             b=(th * u)[order][:, None],
                                             cov=((th / L) ** 2)[order][:, None, None])}


class _SizeAppended:
    """A criterion of ``(theta, [beta, log k])`` for the optimiser (negative binomial)."""

    def __init__(self, crit):
        self.crit = crit

    def __call__(self, theta, rest) -> float:
        return self.crit(theta, rest[:-1], float(np.exp(rest[-1])))


class _LocalCriterion:
    """No crossed factors: PIRLS to convergence inside each partition, one map an evaluation."""

    def __init__(self, c, parts, spec, layout, family, link, const, newton=False):
        self.c, self.parts, self.spec, self.layout = c, parts, spec, layout
        self.family, self.link, self.const = family, link, const
        self.newton = newton  # a canonical link: PIRLS is Newton's method

    def __call__(self, theta, beta, size=None) -> float:
        lam = lambdas(self.spec, np.asarray(theta))
        futs = self.c.map(_local_eval, self.parts, layout=self.layout, lam=lam, beta=beta,
                          family=self.family, link=self.link, size=size, newton=self.newton,
                          pure=False)
        return float(sum(self.c.gather(futs))) - 2.0 * self.const

    def ranef(self, theta, beta, size=None) -> dict[str, RanefTable]:
        lam = lambdas(self.spec, np.asarray(theta))
        pts = self.c.map(_local_point, self.parts, layout=self.layout, lam=lam, beta=beta,
                         family=self.family, link=self.link, size=size, pure=False)
        return _ranef(self.c, pts, self.spec, self.layout, lam, np.zeros(0))


def _joint_start(data: P.PirlsData, layout: Layout, lam: dict, beta: np.ndarray, family: int,
                 link: int) -> P.JointState | None:
    """Stage 1, the first point of PIRLS over ``(u, beta)`` in this partition (from the modes
    the last evaluation left, if any). The state stays on the worker as a future."""
    sys_ = P.local_system(data, layout, lam)
    n_loc = sys_[0].shape[1]
    st = None
    if isinstance(data.u_warm, np.ndarray) and len(data.u_warm) == n_loc:
        st = P.joint_state(data, *sys_, data.u_warm, beta, family, link)
    if st is None:
        st = P.joint_state(data, *sys_, np.zeros(n_loc), beta, family, link)
    return st


def _joint_try(data: P.PirlsData, st: P.JointState, layout: Layout, lam: dict,
               beta_target: np.ndarray, t: float, family: int, link: int
               ) -> P.JointState | None:
    """The state a step ``t`` from ``st`` towards the PLS solution at ``beta_target``."""
    u_target = st.Minv_c - st.Minv_C @ beta_target
    cand = P.joint_state(data, *P.local_system(data, layout, lam),
                         st.u + t * (u_target - st.u), st.beta + t * (beta_target - st.beta),
                         family, link)
    if cand is not None:
        cand.step = (float(np.max(np.abs(u_target - st.u), initial=0.0)),
                     float(np.max(np.abs(st.u), initial=0.0)))
    return cand


def _joint_outer(data: P.PirlsData, layout: Layout, lam: dict, beta: np.ndarray, family: int,
                 link: int):
    """On a cluster, one outer step of stage 1 in one task: the local modes to convergence at
    ``beta`` (warm), then the fixed-effect Schur pieces there (the client's Newton step for
    ``beta``)."""
    if not math.isfinite(P.local_laplace(data, layout, lam, beta, family, link)):
        data.u_warm = None
        return None
    st = P.joint_state(data, *P.local_system(data, layout, lam), data.u_warm, beta, family,
                       link)
    return None if st is None else (st.pdev, st.Sx, st.sx, st.logdet, 0.0, 0.0)


def _joint_summary(st: P.JointState | None):
    if st is None:
        return None
    return (st.pdev, st.Sx, st.sx, st.logdet) + getattr(st, "step", (0.0, 0.0))


def _joint_finish(data: P.PirlsData, st: P.JointState | None) -> None:
    """Keep the modes as the next evaluation's start (a cache: only a warm start)."""
    if st is not None:
        data.u_warm = st.u


class _JointCriterion:
    """The nAGQ = 0 criterion of lme4's first stage over ``theta``: PIRLS over the modes and
    ``beta`` together (the LMM's system at the working weights: per-level blocks and the
    fixed-effect Schur complement), the Laplace deviance at the joint modes. Each PIRLS step
    is one map over the partitions; ``beta`` of the last evaluation is kept as ``beta``."""

    def __init__(self, c, parts, spec, layout, family, link, const, beta0):
        self.c, self.parts, self.spec, self.layout = c, parts, spec, layout
        self.family, self.link, self.const = family, link, const
        self.beta = np.asarray(beta0, dtype=float).copy()

    def _sum(self, outs):
        if any(o is None for o in outs):
            return None
        return [sum(o[i] for o in outs) for i in range(4)] + [max(o[4] for o in outs),
                                                             max(o[5] for o in outs)]

    def _fused(self, theta) -> float:
        """On a cluster: each outer step one map, the local modes converged inside each task
        (:func:`_joint_outer`), Newton steps on ``beta`` here."""
        c = self.c
        lam = lambdas(self.spec, np.asarray(theta))

        def at(beta):
            return self._sum(c.gather(c.map(_joint_outer, self.parts, layout=self.layout,
                                            lam=lam, beta=beta, family=self.family,
                                            link=self.link, pure=False)))
        beta = self.beta.copy()
        cur = at(beta)
        if cur is None:
            return math.inf
        for _ in range(P.MAX_ITER):
            try:
                target = np.linalg.solve(cur[1], cur[2])
            except np.linalg.LinAlgError:
                break
            step = float(np.max(np.abs(target - beta), initial=0.0))
            if step < P.TOL_U * (1.0 + float(np.max(np.abs(beta), initial=0.0))):
                break
            t = 1.0
            while True:
                new = at(beta + t * (target - beta))
                if new is not None and new[0] <= cur[0] + 1e-12 * abs(cur[0]):
                    break
                if t < 1e-8:
                    break
                t *= 0.5
            if new is None:
                break
            beta, cur = beta + t * (target - beta), new
        self.beta = beta
        return float(cur[0] + cur[3]) - 2.0 * self.const

    def __call__(self, theta) -> float:
        if not is_in_process(self.c):
            return self._fused(theta)
        c, kw = self.c, dict(family=self.family, link=self.link, pure=False)
        lam = lambdas(self.spec, np.asarray(theta))
        states = c.map(_joint_start, self.parts, layout=self.layout, lam=lam, beta=self.beta,
                       **kw)
        cur = self._sum(c.gather(c.map(_joint_summary, states, pure=False)))
        if cur is None:
            return math.inf
        beta = self.beta.copy()
        for _ in range(P.MAX_ITER):
            try:
                target = np.linalg.solve(cur[1], cur[2])
            except np.linalg.LinAlgError:
                break
            t = 1.0
            while True:
                cands = c.map(_joint_try, self.parts, states, layout=self.layout, lam=lam,
                              beta_target=target, t=t, **kw)
                new = self._sum(c.gather(c.map(_joint_summary, cands, pure=False)))
                if new is not None and new[0] <= cur[0] + 1e-12 * abs(cur[0]):
                    break
                if t < 1e-8:
                    break
                t *= 0.5
            if new is None:
                break
            step = max(new[4], float(np.max(np.abs(target - beta), initial=0.0)))
            scale = max(new[5], float(np.max(np.abs(beta), initial=0.0)))
            beta = beta + t * (target - beta)
            cur, states = new, cands
            if step < P.TOL_U * (1.0 + scale):
                break
        c.gather(c.map(_joint_finish, self.parts, states, pure=False))
        self.beta = beta
        return float(cur[0] + cur[3]) - 2.0 * self.const


class _GlobalCriterion:
    """Crossed factors: PIRLS over local and crossed modes together (:meth:`_solve`), the
    dense global block solved here; the partitions' states stay where the data are."""

    def __init__(self, c, parts, spec, layout, family, link, const, newton=False):
        self.c, self.parts, self.spec, self.layout = c, parts, spec, layout
        self.family, self.link, self.const = family, link, const
        self.newton = newton  # a canonical link: PIRLS is Newton's method
        self.u_G = np.zeros(layout.n_G)
        self.c_newton: float | None = None  # Newton's constant, from the last two-step solve
        self._shift = None  # (theta, beta, size, S^-1, psi, lam_G) of the last gradient
        self._solved: dict = {}  # (theta, beta, size) -> (u_G, sums) of the recent solves
        self._done = [None] * len(parts)  # the last solve's _c_finish tasks
        # the exact gradient (daskmm.kernels.laplace_grad): a canonical link and one scalar
        # term a factor, in theta's order
        names = tuple(t.factor for t in spec.terms)
        self.factors = names if newton and len(set(names)) == len(names) and all(
            isinstance(t, RandomTerm) and t.q == 1 for t in spec.terms) else None
        if self.factors is not None:
            self.g_factor = np.concatenate(
                [np.full(len(layout.global_levels[f]), names.index(f), dtype=np.int64)
                 for f in layout.global_factors])

    @property
    def has_gradient(self) -> bool:
        return self.factors is not None

    def _Lam_G(self, lam) -> np.ndarray:
        blocks = [np.kron(np.eye(len(self.layout.global_levels[f])), lam[f])
                  for f in self.layout.global_factors]
        return la.block_diag(*blocks)

    def _solve(self, theta, beta, size=None):
        """PIRLS steps over the local and crossed modes together (lme4's), each the PLS
        solution at the current weights: the crossed block by its Schur complement here, the
        local modes from the same block factors in the partition (:func:`_c_try`); the step
        halved while the penalised deviance rises.

        On a cluster each step is one round: a map of :func:`_c_try` over the partitions'
        states (futures on the workers that hold the data) and a map of their small summaries,
        gathered. An earlier design ran the local PIRLS to convergence inside each task for
        every global step (fewer rounds, but about five passes over the rows a round); at
        2x10^5 rows on 2 workers it took 33 s against 27 s for this, and the gap grows with
        the rows."""
        c, lay = self.c, self.layout
        lam = lambdas(self.spec, np.asarray(theta))
        Lam_G = self._Lam_G(lam)
        kw = dict(layout=lay, lam=lam, beta=beta, family=self.family, link=self.link,
                  size=size)
        shift, self._shift = self._predict(theta, beta, size), None
        # starts in turn: the modes moved to first order (value_grad's pieces), the last
        # modes, zero. A start that is finite but far off (the first-order move from a
        # gradient on the boundary, theta = 0, can put eta near 40) can still break the
        # iteration (a global block not positive definite in rounding): the evaluation
        # then goes on from the next start rather than returning inf, so that its value is
        # the criterion's at (theta, beta), not an accident of where the last one was
        starts = [(self.u_G + shift[2], shift[:2])] if shift is not None else []
        starts += [(self.u_G.copy(), None), (np.zeros(lay.n_G), None)]
        for k, (u_G, sh) in enumerate(starts):
            b_G = np.zeros(lay.n_G) if k == len(starts) - 1 else Lam_G @ u_G
            states = c.map(_c_start, self.parts, self._done, b_G=b_G, shift=sh, pure=False,
                           **kw)
            s = self._sum_states(states)
            if not math.isfinite(s[0]):
                continue
            out = self._iterate(states, s, u_G, Lam_G, kw)
            if out is not None:
                states, u_G, p0, s = out
                break
        else:
            return math.inf, None, u_G, lam, None
        _, ld_G, _ = P.global_step(s[4], s[3], Lam_G)
        # not waited for: the next task on each partition (a start, the gradient, the
        # modes) takes it as an argument, so runs after it
        self._done = c.map(_c_finish, self.parts, states, pure=False)
        self.u_G = u_G
        sums = (s[4], s[3], s[2])
        self._solved[self._key(theta, beta, size)] = (u_G.copy(), sums)
        while len(self._solved) > 16:
            self._solved.pop(next(iter(self._solved)))
        return p0 + s[2] + ld_G, states, u_G, lam, sums

    def _iterate(self, states, s, u_G, Lam_G, kw):
        """The PIRLS steps of :meth:`_solve` from a start: ``(states, u_G, p, sums)`` at
        convergence, None when a step fails (the global block not positive definite, no
        finite point along the step)."""
        c = self.c
        p0 = P.pdev(s[0], s[1]) + float(u_G @ u_G)
        prev = None  # the last full step's size
        for _ in range(P.MAX_ITER):
            try:
                _, _, u_target = P.global_step(s[4], s[3], Lam_G)
            except la.LinAlgError:
                return None
            b_target = Lam_G @ u_target
            t = 1.0
            while True:
                u_c = u_G + t * (u_target - u_G)
                cands = c.map(_c_try, self.parts, states, b_G_target=b_target, t=t,
                              pure=False, **kw)
                new = self._sum_states(cands)
                p = P.pdev(new[0], new[1]) + float(u_c @ u_c)
                if p <= p0 + 1e-12 * abs(p0) or t < 1e-8:
                    break
                t *= 0.5
            if not math.isfinite(p):
                return None
            d_G = float(np.max(np.abs(u_target - u_G), initial=0.0))
            scale = max(new[6], float(np.max(np.abs(u_G), initial=0.0)))
            states, u_G, p0, s = cands, u_c, p, new
            step = max(new[5], d_G)
            if step < P.TOL_U * (1.0 + scale):  # the full step is tiny
                break
            if self.newton and t == 1.0 and P.newton_done(prev, step, scale, self.c_newton):
                break  # Newton: the point reached is within C step^2 of the modes
            if self.newton and t == 1.0 and prev is not None:
                self.c_newton = P.newton_constant(prev, step)
            prev = step if t == 1.0 else None
        return states, u_G, p0, s

    @staticmethod
    def _key(theta, beta, size):
        return (np.asarray(theta, float).tobytes(), np.asarray(beta, float).tobytes(), size)

    def _sum_states(self, states):
        out = self.c.gather(self.c.map(_c_summary, states, pure=False))
        if any(o[3] is None for o in out):
            return (-math.inf, 0.0, math.inf, None, None, math.inf, 0.0)
        return (sum(o[0] for o in out), sum(o[1] for o in out), sum(o[2] for o in out),
                sum(o[3] for o in out), sum(o[4] for o in out),
                max(o[5][0] for o in out), max(o[5][1] for o in out))

    def __call__(self, theta, beta, size=None) -> float:
        return self._solve(theta, beta, size)[0] - 2.0 * self.const

    def value_grad(self, theta, beta, size=None) -> tuple[float, np.ndarray]:
        """The criterion and its exact gradient in ``(theta, beta)``
        (:mod:`daskmm.kernels.laplace_grad`): after the PIRLS steps, one more round, a map of
        :func:`_c_grad` over the partitions' states with the crossed block's ``T``."""
        theta = np.asarray(theta, dtype=float)
        val, states, u_G, lam, sums = self._solve(theta, beta, size)
        nan = np.full(len(theta) + len(beta), np.nan)
        if not math.isfinite(val):
            return math.inf, nan
        lam_G = np.concatenate([np.full(len(self.layout.global_levels[f]),
                                        float(lam[f][0, 0]))
                                for f in self.layout.global_factors])
        try:
            S_inv = P.global_inverse(sums[0], sums[1], np.diag(lam_G))
        except la.LinAlgError:
            return math.inf, nan
        T = LG.crossed_T(S_inv, lam_G)
        pieces = self.c.gather(self.c.map(
            _c_grad, self.parts, states, self._done, layout=self.layout, lam=lam,
            factors=self.factors, beta=beta, u_G=u_G, T=T, family=self.family, link=self.link,
            pure=False))
        g, psi = LG.combine(pieces, S_inv, lam_G, self.g_factor, theta, len(beta))
        self._shift = (theta.copy(), np.array(beta, dtype=float), size, S_inv, psi, lam_G)
        return val - 2.0 * self.const, g

    def _predict(self, theta, beta, size):
        """``(w, Lambda_G dv_G, dv_G)``: the first-order move of the modes from the last
        gradient's point to ``(theta, beta)`` (:func:`daskmm.kernels.laplace_grad.
        crossed_shift`), or None without one."""
        if self._shift is None:
            return None
        theta0, beta0, size0, S_inv, psi, lam_G = self._shift
        if size0 != size or len(beta0) != len(beta):
            return None
        w = LG.shift_weights(np.asarray(theta, float) - theta0, np.asarray(beta, float) - beta0)
        dv_G = LG.crossed_shift(S_inv, psi, w)
        return w, lam_G * dv_G, dv_G

    def ranef(self, theta, beta, size=None) -> dict[str, RanefTable]:
        """The conditional modes at ``(theta, beta)``: the crossed ones from the solve there
        (one of the recent ones when the optimiser evaluated this point), the local ones to
        convergence given them (:func:`_g_point`)."""
        done = self._solved.get(self._key(theta, beta, size))
        if done is not None:
            u_G, sums = done
            lam = lambdas(self.spec, np.asarray(theta))
        else:
            _, _, u_G, lam, sums = self._solve(theta, beta, size)
        pts = self.c.map(_g_point, self.parts, self._done, layout=self.layout, lam=lam, beta=beta,
                         b_G=self._Lam_G(lam) @ u_G, family=self.family, link=self.link,
                         size=size, pure=False)
        return _ranef(self.c, pts, self.spec, self.layout, lam, u_G, sums)


def _ranef(c, pts, spec, layout, lam, u_G, sums=None) -> dict[str, RanefTable]:
    """Conditional modes and SDs (lme4's ``condVar``) from the final points on the workers."""
    if sums is None:
        out = c.gather(c.map(_g_summary, pts, pure=False))
        sums = (sum(o[4] for o in out), sum(o[3] for o in out), sum(o[2] for o in out))
    G, RtR, logdet = sums
    n = 1  # the profiled criterion is not used; only its factor
    prof = profiled(G, RtR, logdet, lambda_tilde(layout, lam), layout.n_G, 0, n, 0.0, False)

    class _Modes:
        mode = "distributed"

        @staticmethod
        def modes(lam_, prof_, beta_, u_G_, sigma_):
            futs = c.map(_g_modes, pts, layout=layout, lam=lam_, prof=prof_, u_G=u_G_,
                         pure=False)
            return [item for part in c.gather(futs) for item in part]
    prob = types.SimpleNamespace(spec=spec, layout=layout, evaluator=_Modes())
    return ranef_tables(prob, lam, prof, np.zeros(0), u_G, 1.0)


# ------------------------------------------------------------------ row quantities
def rows_for(res: GlmmResult, data, resp: Response, npartitions: int | None):
    """The fit's :class:`~daskmm.models.glmm.rows.GlmmRows` (predictions, residuals,
    simulations)."""
    from daskmm.models.glmm.rows import GlmmRows
    from daskmm.models.shared.prediction import Predictor
    beta = np.zeros(len(res.spec.fixef_names))  # aliased columns: coefficient zero
    beta[[res.spec.fixef_names.index(nm) for nm in res.fixef_names]] = res.beta
    tables = {f: (pd.Index(t.levels), t.b) for f, t in res.ranef.items()}
    base = Predictor(res.spec, beta, tables, 1.0, np.asarray(res.theta, float), data,
                     npartitions)
    return GlmmRows(base, resp, res.family, res.link, res.nb_size)


def _persist(c, ddf, spec, resp, family, layout) -> list:
    if isinstance(ddf, pd.DataFrame):  # in process: one partition, no graph
        return c.map(prepare_partition, [ddf], spec=spec, resp=resp, family=family, layout=layout)
    import dask

    tok = uuid.uuid4().hex[:8]
    prep = dask.delayed(prepare_partition, pure=False)
    # partition i on worker i mod n: every pass of the fit runs where its partition is, so
    # two partitions on one worker (as a shuffle's outputs sometimes land) would halve the
    # speed, or move the data when the scheduler steals a task; another worker takes over
    # if that one is lost
    info = getattr(c, "scheduler_info", None)
    workers = sorted(info(n_workers=-1)["workers"]) if info is not None else []
    tasks = []
    for i, p in enumerate(partitions(ddf)):
        with (dask.annotate(workers=[workers[i % len(workers)]], allow_other_workers=True)
              if workers else contextlib.nullcontext()):
            tasks.append(prep(p, spec, resp, family, layout,
                              dask_key_name=f"daskmm-glmm-data-{tok}-{i}"))
    futures = c.compute(tasks)
    track(futures, "glmm: data")
    return futures


def _glm_start(c, parts, family, link, names: list[str], max_iter: int = 50,
               max_halvings: int = 30):
    """The GLM without random effects, as ``glm.fit``: the estimable columns (aliased ones
    dropped with a warning, as lme4), and their ``beta`` by Fisher scoring from ``glm``'s
    ``mustart`` with step halving; each iteration one map over the partitions.

    Returns ``(keep, beta, n, const)``."""
    def step(beta):
        out = c.gather(c.map(_scoring, parts, beta=beta, family=family, link=link,
                             pure=False))
        return (sum(o[0] for o in out), sum(o[1] for o in out), sum(o[2] for o in out),
                sum(o[3] for o in out), sum(o[4] for o in out))

    A, b, _, n, const = step(None)
    if n == 0:
        return np.ones(len(names), dtype=bool), np.zeros(len(names)), 0, 0.0
    keep = estimable_columns(A, names)
    sub = np.ix_(keep, keep)

    def solve(A, b):
        try:
            return np.linalg.solve(A[sub], b[keep])
        except np.linalg.LinAlgError as exc:
            raise FitError("the GLM start failed: its weighted cross-product is singular; "
                           "the response may separate the data completely") from exc

    def full(beta_k):
        out = np.zeros(len(names))
        out[keep] = beta_k
        return out

    beta = solve(A, b)
    A, b, ll, _, _ = step(full(beta))
    for _ in range(max_iter):
        new = solve(A, b)
        A2, b2, ll2, _, _ = step(full(new))
        halvings = 0
        while not math.isfinite(ll2) or ll2 < ll - 1e-10 * abs(ll):
            if halvings == max_halvings:
                raise FitError("the GLM start cannot improve its log-likelihood by step "
                               "halving; the response may separate the data completely")
            new = 0.5 * (new + beta)
            A2, b2, ll2, _, _ = step(full(new))
            halvings += 1
        done = (abs(ll2 - ll) <= 1e-12 * (abs(ll2) + 0.1)
                and np.max(np.abs(new - beta)) <= 1e-8 * (1 + np.max(np.abs(new))))
        beta, A, b, ll = new, A2, b2, ll2
        if done:
            break
    if not np.all(np.isfinite(beta)) or np.max(np.abs(beta)) > 30:
        raise DataError("the GLM start diverges (|beta| > 30): the response may separate the "
                        "data completely (a level or a column value with all 0 or all 1)")
    return keep, beta, int(n), float(const)


class _Estimable:
    """The criterion over the estimable fixed effects: aliased ones held at zero."""

    def __init__(self, crit, keep: np.ndarray):
        self.crit, self.keep = crit, keep

    def full(self, beta: np.ndarray) -> np.ndarray:
        out = np.zeros(len(self.keep))
        out[self.keep] = beta
        return out

    def __call__(self, theta, beta, size=None):
        return self.crit(theta, self.full(beta), size)

    def value_grad(self, theta, beta, size=None):
        v, g = self.crit.value_grad(theta, self.full(beta), size)
        nt = len(theta)
        return v, np.concatenate([g[:nt], g[nt:][self.keep]])

    def ranef(self, theta, beta, size=None):
        return self.crit.ranef(theta, self.full(beta), size)

    def __getattr__(self, name):
        return getattr(self.crit, name)


def _optimise(crit, theta0: np.ndarray, lower_theta: np.ndarray, beta0: np.ndarray,
              opts: dict, mode: str, near: bool = False):
    """BOBYQA over ``(theta, beta)`` from glmer's start with lme4's ``nloptwrap`` tolerances,
    then the boundary snap and Newton polish (:func:`daskmm.core.optimizer.minimize`).

    A step of 1e-3 for the polish (not the LMM's 1e-4): the Laplace criterion carries the
    PIRLS tolerance as well as rounding, and the wider stencil keeps that noise in the
    finite-difference gradient below what would move the point by 1e-8; the forward-
    difference Hessian is then rougher, so up to 3 Newton steps.

    (Searching ``beta`` in units of its GLM standard errors was tried: on grouseticks it took
    1364 evaluations against 765 in raw units, so the raw units stay.)"""
    nt = len(theta0)
    x0 = np.concatenate([theta0, beta0])
    lower = np.concatenate([lower_theta, np.full(len(beta0), -np.inf)])
    step = np.concatenate([np.where(lower_theta == 0, 0.2, 0.1), np.full(len(beta0), 0.1)])
    if near:  # from the nAGQ = 0 optimum: the Laplace optimum is close
        step = step * NEAR_STEP
    fg = None
    if getattr(crit, "has_gradient", False):
        def fg(x):
            return crit.value_grad(x[:nt], x[nt:])
    else:
        opts = {**opts, "method": "bobyqa"}
    return minimize(x0, lower, f=lambda x: crit(x[:nt], x[nt:]), fg=fg, options=opts,
                    initial_step=step, polish_step=1e-3, polish_iter=3, mode=mode)


NEAR_STEP = 0.1
"""BOBYQA's initial steps after the nAGQ = 0 stage, as a fraction of those from glmer's
start."""


def _stage1(crit: _JointCriterion, theta0: np.ndarray, lower: np.ndarray, opts: dict,
            mode: str):
    """lme4's first stage (``nAGQ = 0``): BOBYQA over ``theta`` alone, ``beta`` found with
    the modes by PIRLS at each ``theta``. Returns ``(theta, beta, summary)`` or None when it
    fails (the joint criterion is not finite at the start)."""
    if not math.isfinite(crit(theta0)):
        return None
    step = np.where(lower == 0, 0.2, 0.1)
    theta, info = minimize(theta0, lower, f=crit, options={"method": "bobyqa",
                                                           "polish": False,
                                                           "ftol_abs": 1e-6},
                           initial_step=step, mode=mode)
    crit(theta)
    return theta, crit.beta.copy(), {"feval": info.feval, "message": info.message,
                                     "theta": theta.tolist()}


def _hessian(f, x: np.ndarray, lower: np.ndarray, delta: float = 1e-4) -> np.ndarray:
    """Central finite-difference Hessian (lme4's ``deriv12`` step, ``delta = 1e-4``); a
    coordinate within ``delta`` of its lower bound uses steps shifted inside the bound."""
    d = len(x)
    H = np.empty((d, d))
    f0 = f(x)
    h = np.full(d, delta)
    shift = np.where(np.isfinite(lower) & (x - h < lower), h, 0.0)

    def at(*steps):
        v = x.copy()
        for i, s in steps:
            v[i] += s
        return f(v)
    for i in range(d):
        if shift[i]:
            H[i, i] = (at((i, 2 * h[i])) - 2 * at((i, h[i])) + f0) / h[i] ** 2
        else:
            H[i, i] = (at((i, h[i])) - 2 * f0 + at((i, -h[i]))) / h[i] ** 2
        for j in range(i):
            si, sj, ci, cj = h[i], h[j], shift[i], shift[j]
            H[i, j] = H[j, i] = (at((i, si + ci), (j, sj + cj)) - at((i, si + ci), (j, -sj + cj))
                                 - at((i, -si + ci), (j, sj + cj))
                                 + at((i, -si + ci), (j, -sj + cj))) / (4 * si * sj)
    return H


def _hessian_of_gradient(grad, x: np.ndarray, lower: np.ndarray,
                         delta: float = 1e-4) -> np.ndarray:
    """The Hessian from central differences of the exact gradient (``2 d`` gradients, step
    ``delta`` as :func:`_hessian`); a coordinate within ``delta`` of its lower bound takes the
    one-sided second-order difference ``(-3 g(x) + 4 g(x + h) - g(x + 2h)) / 2h`` inside it.
    Symmetrised."""
    d = len(x)
    H = np.empty((d, d))
    g0 = None
    for i in range(d):
        up, dn = x.copy(), x.copy()
        if np.isfinite(lower[i]) and x[i] - delta < lower[i]:
            if g0 is None:
                g0 = grad(x)
            up[i] += delta
            dn[i] += 2 * delta
            H[:, i] = (-3.0 * g0 + 4.0 * grad(up) - grad(dn)) / (2 * delta)
        else:
            up[i] += delta
            dn[i] -= delta
            H[:, i] = (grad(up) - grad(dn)) / (2 * delta)
    return 0.5 * (H + H.T)


def _vcov(H: np.ndarray, nt: int, theta: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """``2 [H^-1]_beta``; with a variance parameter on its boundary the theta rows are not
    informative and the beta block of ``H`` alone is inverted."""
    try:
        if np.any((lower == 0) & (theta == 0)):
            return 2.0 * np.linalg.inv(H[nt:, nt:])
        return 2.0 * np.linalg.inv(H)[nt:, nt:]
    except np.linalg.LinAlgError as exc:
        raise FitError("the Hessian of the criterion is singular at the optimum; the fixed "
                       "effects may not be identifiable") from exc
