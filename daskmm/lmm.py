"""Linear mixed models: ``daskmm.lmm``.

The fit is three steps:

1. **Spec.** Parse the formula; if the fixed part uses categorical columns or there are several
   grouping factors, a metadata pass (:func:`~daskmm.distributed.passes.metadata_pass`) finds
   every level so encodings are frozen, and tells which factors nest in which. The primary
   factor (the one data are partitioned by) is the one whose local blocks are cheapest to
   factor (:func:`choose_layout`).
2. **Statistics.** One pass over the data computes each partition's cross-products on the
   workers. Partitions that split a level of the primary factor are merged by level (single
   factor) or the data are shuffled by that factor first (nested factors).
3. **Optimisation.** BOBYQA (NLopt, lme4's default ``nloptwrap`` with its tolerances) over
   ``theta``; each evaluation is one call of an evaluator: in this process when the statistics
   are small (``mode="gathered"``), or a map + tree reduction on the workers
   (``mode="distributed"``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import dask.dataframe as dd
import nlopt
import numpy as np
import pandas as pd
from distributed import Client

from daskmm.data.io import DataLike, open_data
from daskmm.data.manifest import Manifest
from daskmm.data.rows import DropCounts
from daskmm.distributed.client import client_for
from daskmm.distributed.evaluator import DistributedEvaluator, GatheredEvaluator
from daskmm.distributed.passes import (
    aligned,
    gather_stats,
    metadata_pass,
    shuffle_by,
    stats_pass,
    stats_summary,
)
from daskmm.errors import DataError, FitError, ModelError
from daskmm.formula.checks import check_ranges
from daskmm.formula.parse import ParsedFormula, parse_formula
from daskmm.formula.spec import (
    FactorSpec,
    ModelSpec,
    check_column_types,
    check_columns,
    is_categorical_dtype,
    level_label,
    plan_formula,
    sorted_levels,
)
from daskmm.formula.transforms import Rewriter
from daskmm.kernels.aliasing import estimable_columns
from daskmm.kernels.pls import global_modes, lambda_tilde, profiled
from daskmm.kernels.stats import Layout, PartitionStats
from daskmm.results.lmm_result import LmmResult, RanefTable

log = logging.getLogger("daskmm")

GATHER_LIMIT_BYTES = 256 * 2 ** 20
"""Statistics larger than this stay on the workers in ``mode="auto"``."""


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
        npartitions: int | None = None, optimizer_options: dict | None = None) -> LmmResult:
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
    mode : {"auto", "gathered", "distributed"}
        Where the objective is evaluated. ``auto`` gathers statistics below
        :data:`GATHER_LIMIT_BYTES`.
    npartitions : int, optional
        Partitions for a pandas input.
    optimizer_options : dict, optional
        NLopt settings overriding lme4's (``xtol_abs``, ``ftol_abs``, ``maxeval``).

    Returns
    -------
    LmmResult
    """
    if mode not in ("auto", "gathered", "distributed"):
        raise ValueError(f"mode={mode!r}; allowed: 'auto', 'gathered', 'distributed'")
    t0 = time.perf_counter()
    parsed = parse_formula(formula)
    ddf, manifest = open_data(data, npartitions=npartitions)
    with client_for(client) as c:
        prob = prepare_problem(c, parsed, ddf, factors or [], weights, mode, manifest)
        t1 = time.perf_counter()
        log.info("optimising: %d rows, %s, %s evaluation", prob.n,
                 ", ".join(f"{k} {v} levels" for k, v in prob.ngroups.items()),
                 prob.evaluator.mode)
        theta, opt = _optimise(prob, reml, optimizer_options or {})
        t2 = time.perf_counter()
        result = _result(prob, parsed, theta, opt, reml)
        t3 = time.perf_counter()
    result.timing = {"statistics_s": t1 - t0, "optimise_s": t2 - t1, "results_s": t3 - t2,
                     "total_s": t3 - t0}
    result.ingest_dropped = dict(manifest.na_dropped) if manifest is not None else {}
    return result


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
    check_columns(parsed, list(ddf.columns), weights)
    for f in factors:
        if f not in ddf.columns:
            raise DataError(f"column {f!r} named as a factor is not in the data; "
                            f"available columns: {', '.join(map(str, ddf.columns))}")
    schema = {c: ddf.dtypes[c] for c in ddf.columns}
    group_cols = sorted({c for b in parsed.bars for c in b.factor})
    used = sorted(parsed.columns | ({weights} if weights else set()))
    check_column_types(schema, used)
    ddf = ddf[used]  # read only these columns (projection reaches the Parquet reader)
    outside = sorted(parsed.columns - {c for c in group_cols
                                       if c not in _outside_bars(parsed)})
    cat_cols = [c for c in outside if c in factors or is_categorical_dtype(schema[c])]
    if weights and is_categorical_dtype(schema[weights]):
        raise DataError(f"weights column {weights!r} is not numeric ({schema[weights]}); "
                        "prior weights must be positive numbers")
    factor_names = list(dict.fromkeys(b.factor_name for b in parsed.bars))
    rewriter = plan_formula(parsed, used)
    ddf, categorical, factor_levels, combos = frozen_levels(
        client, ddf, used, cat_cols, factor_names, group_cols, manifest, rewriter=rewriter)
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
    use_distributed = mode == "distributed" or (mode == "auto" and nbytes > GATHER_LIMIT_BYTES)
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
        evaluator = GatheredEvaluator(stats, _reduced(layout, keep))
    G = G[np.ix_(_k_index(layout, keep), _k_index(layout, keep))]
    return Problem(spec, _reduced(layout, keep), evaluator, n, sum_log_w, n_dropped, G, keep,
                    ngroups)


def frozen_levels(client: Client, ddf: dd.DataFrame, used: list[str], cat_cols: list[str],
                  factor_names: list[str], group_cols: list[str],
                  manifest: Manifest | None = None, hold: bool = False,
                  rewriter: Rewriter | None = None):
    """Levels of the categorical columns (from the manifest, else a metadata pass) and, with
    several grouping factors, their sorted levels and combinations (for the layout).

    With ``hold`` the projected input is kept on the workers when a pass runs, so that the
    caller's own pass reads it from memory (the GLMM reads its input once per fit).

    Returns ``(ddf, categorical, factor_levels, combos)``; ``combos`` is None without a pass.
    """
    categorical: dict[str, list[str]] = {}
    factor_levels: dict[str, list[str]] = {}
    combos = None
    # a dataset's level tables count every row; a fit's levels are those of its complete
    # rows (lme4 drops unused levels after na.omit): only usable when no used column has a
    # missing value in the dataset
    complete = manifest is not None and not any(manifest.na_counts.get(c) for c in used)
    from_manifest = [c for c in cat_cols if complete
                     and (manifest.levels.get(c) or {}).get("file")]
    for c in from_manifest:
        categorical[c] = sorted_levels(manifest.level_table(c)["level"])
    scan = [c for c in cat_cols if c not in from_manifest]
    several = len(factor_names) > 1
    stateful = [t for t in (rewriter.transforms.values() if rewriter else []) if t.stateful]
    if scan or several or stateful:
        if hold:
            ddf = dd.from_delayed(client.compute(ddf.to_delayed()), meta=ddf._meta,
                                  verify_meta=False)
        meta = metadata_pass(client, ddf, used, scan, group_cols if several else [],
                             transforms=stateful,
                             keys=rewriter.column_keys if rewriter else None)
        if meta["n"] == 0:
            raise DataError("no rows left after dropping rows with missing values")
        for tr, summary in zip(stateful, meta["transforms"]):
            tr.freeze(summary)
        categorical.update({c: sorted_levels(meta["levels"][c]) for c in scan})
        combos = meta["combos"]
        for name in factor_names if several else []:
            factor_levels[name] = _sorted_factor_levels(
                FactorSpec(name, tuple(name.split(":"))), combos)
    return ddf, categorical, factor_levels, combos


def model_layout(spec: ModelSpec, combos: pd.DataFrame | None, p: int,
                 prefer_local: bool = False) -> Layout:
    """The coefficient layout: :func:`choose_layout` over the combinations of several grouping
    factors, else the one factor as primary."""
    q = {f.name: spec.factor_q(f.name) for f in spec.factors}
    if combos is not None:
        primary, nested, glob = choose_layout(spec, combos, q, prefer_local)
    else:
        primary, nested, glob = spec.factors[0].name, [], []
    return Layout(primary=primary, nested=nested, global_factors=glob, q=q,
                  global_levels={f: _level_keys(spec.factor(f), combos) for f in glob}, p=p)


def _outside_bars(parsed: ParsedFormula) -> set[str]:
    from daskmm.formula.parse import identifiers
    names: set[str] = set()
    for piece in (parsed.response, parsed.fixed, *parsed.offsets, *(b.lhs for b in parsed.bars)):
        names |= identifiers(piece)
    return names


def _sorted_factor_levels(fs: FactorSpec, combos: pd.DataFrame) -> list[str]:
    if len(fs.columns) == 1:
        return sorted_levels(combos[fs.columns[0]])
    sub = combos[list(fs.columns)].drop_duplicates()
    order = [sorted_levels(sub[c]) for c in fs.columns]
    labels = [sub[c].map(level_label) for c in fs.columns]
    ranks = [lab.map({v: i for i, v in enumerate(o)}) for lab, o in zip(labels, order)]
    sub = sub.assign(_label=fs.keys(sub))
    idx = np.lexsort([r.to_numpy() for r in reversed(ranks)])
    return list(sub["_label"].to_numpy()[idx])


def _level_keys(fs: FactorSpec, combos: pd.DataFrame) -> np.ndarray:
    """Level keys of a global factor in code order (raw values for one column)."""
    if len(fs.columns) == 1:
        u = pd.unique(combos[fs.columns[0]])
        try:
            return np.sort(np.asarray(u))
        except TypeError:
            return np.array(sorted(u, key=str), dtype=object)
    return np.asarray(_sorted_factor_levels(fs, combos), dtype=object)


def choose_layout(spec: ModelSpec, combos: pd.DataFrame, q: dict[str, int],
                  prefer_local: bool = False) -> tuple[str, list[str], list[str]]:
    """Pick the primary factor: the one minimising the cost of factoring its local blocks
    (sum over its levels of block size cubed) plus the dense global block (size cubed).

    A factor is local to candidate ``P`` when each of its levels occurs with one level of
    ``P`` (nested); every other factor is global (crossed).

    With ``prefer_local`` (the GLMM) a layout without global factors wins whatever its cost:
    global coefficients make every PIRLS step a round trip through the client, while local
    ones let each partition iterate on its own.
    """
    keys = {f.name: pd.Series(f.keys(combos)) for f in spec.factors}
    nlev = {name: k.nunique() for name, k in keys.items()}
    best = None
    for cand in spec.factors:
        P = cand.name
        nested, glob = [], []
        size = pd.Series(q[P], index=pd.unique(keys[P]))
        for f in spec.factors:
            if f.name == P:
                continue
            pairs = pd.DataFrame({"f": keys[f.name], "P": keys[P]}).drop_duplicates()
            if pairs["f"].duplicated().any():
                glob.append(f.name)
            else:
                nested.append(f.name)
                size = size.add(pairs.groupby("P").size() * q[f.name], fill_value=0)
        n_G = sum(nlev[g] * q[g] for g in glob)
        cost = float((size.astype(float) ** 3).sum()) + float(n_G) ** 3
        if prefer_local:
            cost = (len(glob), cost)
        if best is None or cost < best[0]:
            best = (cost, P, nested, glob)
    return best[1], best[2], best[3]


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
def lambdas(spec: ModelSpec, theta: np.ndarray) -> dict[str, np.ndarray]:
    """Per-factor ``Lambda`` block (terms on one factor stacked block-diagonally)."""
    from daskmm.reterm import factor_Lambda
    return {f.name: factor_Lambda(spec.terms, f.terms, theta) for f in spec.factors}


def objective(prob: Problem, theta: np.ndarray, reml: bool):
    """Profiled REML criterion or deviance at ``theta``, with the stage-2 factor."""
    lam = lambdas(prob.spec, theta)
    logdet, RtR = prob.evaluator.stage1(lam)
    prof = profiled(prob.G, RtR, logdet, lambda_tilde(prob.layout, lam), prob.layout.n_G,
                    prob.layout.p, prob.n, prob.sum_log_w, reml)
    return prof, lam


def _optimise(prob: Problem, reml: bool, options: dict) -> tuple[np.ndarray, dict]:
    spec = prob.spec
    x0 = np.concatenate([t.theta_init() for t in spec.terms])
    lower = np.concatenate([t.theta_lower() for t in spec.terms])
    nfev = [0]
    best = [np.inf, x0]

    def f(x, grad):
        nfev[0] += 1
        val = objective(prob, np.asarray(x), reml)[0].objective
        if val < best[0]:
            best[0], best[1] = val, np.array(x, dtype=float)
        return val if np.isfinite(val) else 1e300

    opt = nlopt.opt(nlopt.LN_BOBYQA, len(x0))
    opt.set_min_objective(f)
    opt.set_lower_bounds(lower)
    opt.set_upper_bounds(np.full(len(x0), np.inf))
    opt.set_xtol_abs(options.get("xtol_abs", 1e-8))
    opt.set_ftol_abs(options.get("ftol_abs", 1e-8))
    opt.set_maxeval(int(options.get("maxeval", 100_000)))
    try:
        x = opt.optimize(x0)
    except nlopt.RoundoffLimited:  # lme4 accepts the best point with a warning
        log.warning("optimiser stopped on round-off; using the best point found")
        x = best[1]
    code = opt.last_optimize_result()
    x = _snap_to_boundary(lambda t: f(t, None), np.asarray(x, dtype=float), lower,
                          options.get("ftol_abs", 1e-8))
    polished = False
    if options.get("polish", True) and code > 0:
        x, polished = _newton_polish(lambda t: f(t, None), x, lower)
    messages = {1: "NLOPT_SUCCESS", 2: "NLOPT_STOPVAL_REACHED", 3: "NLOPT_FTOL_REACHED",
                4: "NLOPT_XTOL_REACHED", 5: "NLOPT_MAXEVAL_REACHED", 6: "NLOPT_MAXTIME_REACHED"}
    info = {"optimizer": "nloptwrap (NLOPT_LN_BOBYQA)", "feval": nfev[0],
            "message": messages.get(code, str(code)), "code": int(code),
            "converged": code in (1, 3, 4), "mode": prob.evaluator.mode,
            "polished": polished}
    return np.asarray(x, dtype=float), info


def _newton_polish(f, x: np.ndarray, lower: np.ndarray, rel_step: float = 1e-4,
                   max_iter: int = 1) -> tuple[np.ndarray, bool]:
    """Refine BOBYQA's optimum by Newton steps on finite differences of the criterion.

    BOBYQA with lme4's tolerances stops anywhere the criterion is flat to ``ftol_abs``; rounding
    in the statistics (which depends on how rows were partitioned, ~1e-16) moves that point by
    up to ~1e-7 in theta. Newton's method on a fixed finite-difference stencil converges to the
    zero of the differenced gradient, a point that moves only with the rounding itself
    (~1e-10), so fits agree across workers, partitions and evaluation modes to 1e-8.

    Parameters on their zero bound are left there. The Hessian is taken once by forward
    differences ((d + 1)(d + 2) / 2 evaluations), the gradient by central differences (2 d per
    step). One step suffices: BOBYQA's point is within ~1e-7 of the stencil's zero, and the
    step's error is that distance times the Hessian's relative error (~1e-4). The refined
    point is kept only if it is within ``10 rel_step`` of the start and the criterion is not
    worse (by more than 1e-10 relative); otherwise BOBYQA's point stands.
    """
    free = np.flatnonzero(~((lower == 0) & (x < 10 * rel_step)))
    if len(free) == 0:
        return x, False
    h = rel_step * np.maximum(np.abs(x[free]), 0.1)
    d = len(free)

    def at(base, steps):
        z = base.copy()
        z[free] += steps
        return f(z)

    f0 = f(x)
    E = np.diag(h)
    fp = np.array([at(x, E[i]) for i in range(d)])
    H = np.empty((d, d))
    for i in range(d):
        for j in range(i, d):
            fij = at(x, E[i] + E[j])
            H[i, j] = H[j, i] = (fij - fp[i] - fp[j] + f0) / (h[i] * h[j])
    try:
        np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return x, False  # not a strict minimum in the free parameters: leave BOBYQA's point
    z = x.copy()
    for _ in range(max_iter):
        g = np.array([(at(z, E[i]) - at(z, -E[i])) / (2 * h[i]) for i in range(d)])
        step = np.linalg.solve(H, g)
        z[free] -= step
        if np.all(np.abs(step) <= 1e-3 * h):
            break
    fz = f(z)
    ok = (np.all(np.abs(z[free] - x[free]) <= 10 * h) and np.all(z >= lower)
          and fz <= f0 + 1e-10 * max(1.0, abs(f0)))
    return (z, True) if ok else (x, False)


def _snap_to_boundary(f, x: np.ndarray, lower: np.ndarray, ftol_abs: float,
                      near: float = 1e-6) -> np.ndarray:
    """Put variance parameters that stopped within ``near`` of their zero bound on it, when the
    criterion is no worse within the optimiser's own tolerance.

    BOBYQA stops within ``xtol_abs`` of a bound it is heading for (1e-8 instead of 0), which
    leaves tiny non-zero standard deviations and conditional SDs in a singular fit; lme4 reports
    exact zeros there.
    """
    fx = f(x)
    for i in np.flatnonzero((lower == 0) & (x > 0) & (x < near)):
        trial = x.copy()
        trial[i] = 0.0
        ft = f(trial)
        if ft <= fx + 0.1 * ftol_abs:
            x, fx = trial, ft
    return x


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
    tables = _ranef_tables(prob, lam, prof, beta, u_G, sigma)
    fixef_names = [n for n, k in zip(spec.fixef_names, prob.keep) if k]
    return LmmResult(formula=parsed.text, spec=spec, reml=reml, theta=theta, beta=beta,
                     fixef_names=fixef_names, vcov=vcov, sigma=sigma,
                     objective=prof.objective, nobs=prob.n, n_dropped=prob.n_dropped,
                     ngroups=prob.ngroups, ranef=tables, optinfo=opt)


def _ranef_tables(prob, lam, prof, beta, u_G, sigma) -> dict[str, RanefTable]:
    spec, layout = prob.spec, prob.layout
    pieces: dict[str, list] = {f.name: [] for f in spec.factors}
    for comp, levels, nested_levels, b, cov in prob.evaluator.modes(lam, prof, beta, u_G, sigma):
        qP = layout.q[layout.primary]
        pieces[layout.primary].append((levels, b[:, :qP], cov[:, :qP, :qP]))
        off = qP
        for f, c, nl in zip(layout.nested, comp, nested_levels):
            qf = layout.q[f]
            for j in range(int(c)):
                sl = slice(off + j * qf, off + (j + 1) * qf)
                pieces[f].append((nl[:, j], b[:, sl], cov[:, sl, sl]))
            off += int(c) * qf
    for f, (b, cov) in global_modes(prof, u_G, lam, layout, sigma).items():
        pieces[f].append((layout.global_levels[f], b, cov))
    out = {}
    for f in spec.factors:
        fs = spec.factor(f.name)
        keys = np.concatenate([p[0] for p in pieces[f.name]])
        b = np.concatenate([p[1] for p in pieces[f.name]])
        cov = np.concatenate([p[2] for p in pieces[f.name]])
        order = _key_order(keys)
        out[f.name] = RanefTable(levels=fs.label(keys[order]), b=b[order], cov=cov[order])
    return out


def _key_order(keys: np.ndarray) -> np.ndarray:
    try:
        return np.argsort(keys, kind="stable")
    except TypeError:
        return np.argsort(keys.astype(str), kind="stable")
