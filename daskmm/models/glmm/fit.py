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
   ``theta`` with ``beta`` found with the modes by PIRLS (``nAGQ = 0``, :class:`JointCriterion`;
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

import dataclasses
import functools
import logging
import math
import time

import numpy as np
import pandas as pd

from daskmm.core.families import get_family
from daskmm.core.optimizer import estimated_newton
from daskmm.core.threads import SMALL_K, one_blas_thread
from daskmm.data.io import DataLike
from daskmm.data.source import Source
from daskmm.distributed.execution import MODES, executor, is_in_process, runs_in_process
from daskmm.distributed.mapreduce import map_parts
from daskmm.distributed.passes import aligned, persist_spread, raw_aligned, shuffle_by
from daskmm.errors import DataError, ModelError
from daskmm.formula.checks import check_ranges
from daskmm.formula.parse import parse_formula
from daskmm.formula.spec import (
    ModelSpec,
    plan_formula,
)
from daskmm.kernels import scalar_re as K
from daskmm.kernels.pirls import spherical_length2
from daskmm.models.glmm import crossed as CX
from daskmm.models.glmm.criteria import (
    Dispersion,
    Estimable,
    GlobalCriterion,
    JointCriterion,
    LocalCriterion,
    ScalarCriterion,
    Standardised,
)
from daskmm.models.glmm.encode import (
    Response,
    partition_keys,
    prepare_partition,
    read_response,
)
from daskmm.models.glmm.result import GlmmResult
from daskmm.models.glmm.rows import GlmmRows
from daskmm.models.glmm.stages import estimates, glm_start, optimise_stages
from daskmm.models.shared.crossed import choose_crossed
from daskmm.models.shared.prediction import Predictor
from daskmm.models.shared.prepare import check_groups, prepare_columns, two_levels
from daskmm.models.shared.structure import (
    frozen_levels,
    lambdas,
    model_layout,
)
from daskmm.results.base import spec_terms

log = logging.getLogger("daskmm")

MAX_NAGQ = 25


# ------------------------------------------------------------------ driver
def glmm(formula: str, data: DataLike, family: str = "binomial", *, link: str | None = None,
         nagq: int = 1, factors: list[str] | None = None, weights: str | None = None,
         client=None, mode: str = "auto", npartitions: int | None = None,
         optimizer_options: dict | None = None, crossed: str = "auto",
         seed: int | None = None) -> GlmmResult:
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
    family : {"binomial", "poisson", "negative_binomial", "gamma", "inverse_gaussian", \
"gaussian"}
        ``"negative_binomial"`` (alias ``"nbinom2"``) is NB2, ``Var = mu + mu^2 / k``, with the
        size ``k`` estimated jointly (``glmer.nb``'s ``theta``; glmmTMB's ``nbinom2``).
        ``"gamma"`` (alias ``"Gamma"``), ``"inverse_gaussian"`` (``"inverse.gaussian"``) and
        ``"gaussian"`` with a link other than identity are the families with a dispersion,
        fitted by glmer's criterion for them (:class:`~daskmm.models.glmm.criteria.
        Dispersion`), Laplace only; ``sigma`` on the result.
    link : str, optional
        ``logit`` (default), ``probit``, ``cloglog`` for the binomial; ``log`` for the
        Poisson and negative binomial; ``inverse`` (default), ``log``, ``identity`` for the
        Gamma; ``1/mu^2`` (default), ``inverse``, ``log``, ``identity`` for the inverse
        Gaussian; ``log`` or ``inverse`` for the gaussian.
    nagq : int
        1: Laplace; 2..25: adaptive Gauss-Hermite quadrature with that many nodes (one scalar
        random-effect term only, as glmer).
    factors : list of str, optional
        Numeric columns to treat as categorical.
    weights : str, optional
        Prior weights: the number of trials of a binomial proportion response; for the
        Poisson and the families with a dispersion, prior weights (each row's log-likelihood,
        or deviance, times its weight, as glmer's ``weights``); for the negative binomial,
        each row's log-likelihood times its weight, as glmmTMB's ``nbinom2`` (glmer.nb
        weights only part of its likelihood).
    client, npartitions
        As for :func:`daskmm.lmm`.
    mode : {"auto", "in-process", "distributed"}
        ``in-process``: no cluster; ``distributed``: the data persisted on a cluster's
        workers, each evaluation a map over them; ``auto``: in process for small data when no
        client or scheduler is given (:func:`daskmm.lmm`). ``optinfo["mode"]`` says which ran.
    optimizer_options : dict, optional
        ``xtol_abs``, ``ftol_abs``, ``maxeval``, ``polish``.
    crossed : {"auto", "dense", "sparse", "matrix-free"}
        How crossed random effects are fitted, as :func:`daskmm.lmm`'s: ``dense``, one dense
        block of the crossed levels (any terms, any family); ``sparse`` (exact) and
        ``matrix-free`` (``log|A|`` estimated with its standard error), binomial and
        Poisson models whose random terms are intercepts ``(1 | f)``, one per factor
        (:mod:`daskmm.models.glmm.crossed`); ``auto``: dense up to
        :data:`~daskmm.models.shared.crossed.MATRIX_FREE_MIN_LEVELS` crossed levels, then
        sparse where its factor is small, else matrix-free. ``optinfo["crossed"]`` says
        which ran.
    seed : int, optional
        The matrix-free path's probes (0 when not given).

    Returns
    -------
    GlmmResult
    """
    fam = get_family(family)
    if fam.is_lmm(link):
        raise ModelError("the gaussian family with the identity link is a linear mixed model: "
                         "use daskmm.lmm (or daskmm.fit, which chooses); a gaussian GLMM "
                         "takes link='log' or 'inverse'")
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
    if nagq > 1 and fam.scaled:
        raise ModelError(f"nagq={nagq}: adaptive Gauss-Hermite quadrature is for families "
                         f"without a dispersion (binomial, Poisson); the {fam.label} family "
                         "is fitted by the Laplace approximation, nagq=1, as glmer's")
    # a family with a dispersion takes the PIRLS path even for one intercept: its theta is
    # on the linear predictor's scale, unscaled by sigma (glmer's), so lme4's start theta = 1
    # can be far off (1/mu ~ 0.04 under an inverse link) and the first stage (nAGQ = 0, beta
    # inside PIRLS) is what finds the basin, as in glmer
    scalar = scalar and not fam.scaled
    parsed_y, resp_col, trials_text = read_response(parsed, family)
    if weights and trials_text:
        raise ModelError("give the trials either by cbind(successes, failures) or by weights "
                         "with a proportion response, not both")
    used = sorted(parsed.columns | ({weights} if weights else set()))
    src = Source.open(data)
    here = runs_in_process(mode, client, lambda: src.cells(len(used)))
    ddf = src.read(local=here, columns=used, npartitions=npartitions)
    # the rows in this process: the summary's scaled residuals come from them, not from
    # reading the data again
    rows_here = ddf if isinstance(ddf, pd.DataFrame) else None
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
        path = CX.check_family(choose_crossed(spec, layout, crossed, slopes=True), crossed,
                               family)
        if path == "dense":
            primary, glob = layout.primary, layout.global_factors
            part_layout = None if scalar else layout
            if held and not raw_aligned(c, ddf, spec.factor(primary)):
                # the input is on the workers already (several factors: frozen_levels held it):
                # shuffle before encoding rather than encode twice
                log.info("data are not partitioned by %s: shuffling", primary)
                ddf = shuffle_by(ddf, spec.factor(primary))
            parts = _persist(c, ddf, spec, resp, fam_code, part_layout)
            info = c.gather(map_parts(c, partition_keys, parts, family=fam_code, pure=False))
            if not aligned([k for k, _, _ in info]):
                log.info("data are not partitioned by %s: shuffling", primary)
                c.cancel(parts)
                parts = _persist(c, shuffle_by(ddf, spec.factor(primary)), spec, resp, fam_code,
                                 part_layout)
                info = c.gather(map_parts(c, partition_keys, parts, family=fam_code, pure=False))
            del ddf  # the encoded partitions are all the fit needs from here on
            n_dropped = sum(d for _, d, _ in info)
            ngroups = {primary: sum(len(k) for k, _, _ in info)}
            for f in spec.factors:
                if f.name != primary:
                    ngroups[f.name] = len(factor_levels[f.name])
            check_ranges([i[2]["ranges"] for i in info], spec, parsed.response)
            notes = _level_warnings(primary, info, family)
            wsum = sum(i[2]["weight_sum"] for i in info)
            keep, beta0, n, const, (T, Tinv) = glm_start(c, parts,
                                               K.POISSON if fam_code == K.NEGBIN else fam_code,
                                               link_obj.code, spec.fixef_names)
            if n == 0:
                raise DataError("no rows left after dropping rows with missing values in the "
                                f"columns the model uses ({', '.join(used)})")
            check_groups(spec, ngroups, n, allow_n=True)  # as glmer: a level an observation is fine
            disp = Dispersion(fam, n, wsum) if fam.scaled else None
            # Newton's early stop of PIRLS for a canonical link (and the exact gradient there);
            # not for a family with a dispersion, whose criterion is not linear in the deviance
            newton = link == fam.canonical and disp is None
            if scalar:
                crit = ScalarCriterion(c, parts, spec, fam_code, link_obj.code, nagq, const)
            elif glob:
                crit = GlobalCriterion(c, parts, spec, layout, fam_code, link_obj.code, const,
                                       newton=newton, disp=disp)
            else:
                crit = LocalCriterion(c, parts, spec, layout, fam_code, link_obj.code, const,
                                      newton=newton, disp=disp)
            if not keep.all():
                crit = Estimable(crit, keep)
            crit = Standardised(crit, T)
            t1 = time.perf_counter()
            where = "in-process" if is_in_process(c) else "distributed"
            log.info("optimising: %d rows, %s, %s evaluation", n,
                     ", ".join(f"{k} {v} levels" for k, v in ngroups.items()), where)
            first = None
            # the first stage by default in process; on a cluster each of its PIRLS steps is a
            # round of maps, which pays only when evaluations are expensive: ask for it with
            # stages=2
            # (the first stage solves beta inside PIRLS over every column: not with aliased ones)
            if fam_code != K.NEGBIN and crit.takes_first_stage and keep.all() and \
                    opts.get("stages", 2 if is_in_process(c) else 1) == 2:
                first = JointCriterion(c, parts, spec, layout, fam_code, link_obj.code, const,
                                       beta0, disp)
            # a small fit in process: its BLAS calls are microseconds (core/threads.py)
            with one_blas_thread(is_in_process(c) and layout.k <= SMALL_K):
                x, optinfo, size, lower = optimise_stages(crit, spec, beta0, Tinv, opts, where,
                                                          first, size_free=fam_code == K.NEGBIN)
                t2 = time.perf_counter()
                names = [nm for t in spec.terms for nm in t.theta_names()] + \
                    [nm for nm, k in zip(spec.fixef_names, keep) if k]
                theta, gamma, objective, vcov_gamma, ranef, optinfo = estimates(
                    crit, x, lower, optinfo, size, opts, where, names)
            beta, vcov = T @ gamma, T @ vcov_gamma @ T.T
            t3 = time.perf_counter()
        else:
            (keep, theta, beta, vcov, objective, ranef, optinfo, n, n_dropped, ngroups,
             notes, size, t1, t2, t3) = _fit_crossed(c, ddf, spec, resp, fam, link_obj,
                                                     combos, path, opts, seed, used,
                                                     parsed.response)
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
    res.rows_here = rows_here
    if fam.scaled:
        res.sigma = res.predictor.sigma = _sigma(res)
    res.refit = functools.partial(glmm, formula, data, family, link=link, nagq=nagq,
                                  factors=factors, weights=weights, npartitions=npartitions)
    res.timing = {"data_s": t1 - t0, "optimise_s": t2 - t1, "results_s": t3 - t2,
                  "total_s": time.perf_counter() - t0}
    return res


def _fit_crossed(c, ddf, spec, resp, fam, link_obj, combos, path: str, opts: dict,
                 seed: int | None, used: list[str], response: str):
    """The sparse or matrix-free fit (:mod:`daskmm.models.glmm.crossed`): the values the
    dense branch of :func:`glmm` makes, in its order."""
    data = CX.prepare(c, ddf, spec, resp, fam.code, K.BINOMIAL, combos)
    path = CX.choose_path(path, data)
    check_ranges(data.ranges, spec, response)
    ngroups = {f: len(v) for f, v in zip(data.factors, data.levels)}
    keep, beta0, n, const, (T, Tinv) = glm_start(c, data.parts, fam.code, link_obj.code,
                                                 spec.fixef_names)
    if n == 0:
        raise DataError("no rows left after dropping rows with missing values in the "
                        f"columns the model uses ({', '.join(used)})")
    check_groups(spec, ngroups, n, allow_n=True)
    seed = 0 if seed is None else int(seed)
    base = CX.CrossedCriterion(c, data, spec, fam.code, link_obj.code, const, path, seed)
    crit = base if keep.all() else Estimable(base, keep)
    crit = Standardised(crit, T)
    t1 = time.perf_counter()
    where = f"{'in-process' if is_in_process(c) else 'distributed'}, {path}"
    log.info("optimising: %d rows, %s, %s evaluation", n,
             ", ".join(f"{k} {v} levels" for k, v in ngroups.items()), where)
    full0 = np.zeros(len(spec.fixef_names))
    full0[keep] = beta0
    theta0 = base.moment_start(full0)
    if base.has_gradient:
        # Newton steps on the estimated criterion and gradient (both from the same probes),
        # as the LMM's matrix-free path; BOBYQA repairs a point that fails its check
        lower = np.concatenate([t.theta_lower() for t in spec.terms])
        nt = len(lower)

        def fg(v):
            val, g = crit.value_grad(v[:nt], v[nt:])
            return val, g, base.last_se

        x, optinfo, hessian = estimated_newton(
            fg, np.concatenate([theta0, Tinv @ beta0]),
            np.concatenate([lower, np.full(len(beta0), -np.inf)]))
        optinfo.mode = where
        size = None
        opts = {**opts, "method": "bobyqa"}
    else:
        x, optinfo, size, lower = optimise_stages(crit, spec, beta0, Tinv, opts, where,
                                                  theta_start=theta0)
        hessian = None
    t2 = time.perf_counter()
    names = [nm for t in spec.terms for nm in t.theta_names()] + \
        [nm for nm, k in zip(spec.fixef_names, keep) if k]
    theta, gamma, objective, vcov_gamma, ranef, optinfo = estimates(
        crit, x, lower, optinfo, size, opts, where, names, hessian,
        one_sided=path == "matrix-free")
    beta, vcov = T @ gamma, T @ vcov_gamma @ T.T
    full = np.zeros(len(spec.fixef_names))
    full[keep] = beta
    optinfo.crossed = base.summary(theta, full)
    optinfo.mode = where
    if path == "matrix-free":
        se = optinfo.crossed["criterion_se"]
        optinfo.checks.setdefault("warnings", []).append(
            f"deviance estimated (matrix-free crossed fit): standard error {se:.3g}")
    ranef = {t.factor: ranef[t.factor] for t in spec.terms}
    n_dropped = sum(data.n_dropped)
    return (keep, theta, beta, vcov, objective, ranef, optinfo, n, n_dropped, ngroups, [],
            size, t1, t2, time.perf_counter())


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


def _sigma(res: GlmmResult) -> float:
    """lme4's ``sigma`` of a family with a dispersion: ``sqrt((wrss + |u|^2) / n)``, ``wrss``
    the squared Pearson residuals at the modes (with the prior weights) and ``|u|^2`` the
    spherical modes' squared length (``u = Lambda^+ b`` a level, the minimum-norm ``u`` where
    ``Lambda`` is singular, as PIRLS's penalty makes it)."""
    import dask
    wrss = float(dask.compute((res.residuals("pearson") ** 2).sum())[0])
    lam = lambdas(res.spec, np.asarray(res.theta, dtype=float))
    ussq = sum(spherical_length2(tab.b, lam[f]) for f, tab in res.ranef.items())
    return math.sqrt((wrss + ussq) / res.nobs)


# ------------------------------------------------------------------ row quantities
def rows_for(res: GlmmResult, data, resp: Response, npartitions: int | None):
    """The fit's :class:`~daskmm.models.glmm.rows.GlmmRows` (predictions, residuals,
    simulations)."""
    beta = np.zeros(len(res.spec.fixef_names))  # aliased columns: coefficient zero
    beta[[res.spec.fixef_names.index(nm) for nm in res.fixef_names]] = res.beta
    tables = {f: (pd.Index(t.levels), t.b) for f, t in res.ranef.items()}
    base = Predictor(res.spec, beta, tables, 1.0, np.asarray(res.theta, float), data,
                     npartitions)
    return GlmmRows(base, resp, res.family, res.link, res.nb_size)


def _persist(c, ddf, spec, resp, family, layout) -> list:
    return persist_spread(c, ddf, prepare_partition, "glmm-data", "glmm: data", spec, resp,
                          family, layout)


