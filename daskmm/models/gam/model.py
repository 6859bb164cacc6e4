"""Generalized additive models, ``mgcv::bam``'s job: ``daskmm.gam``.

The fit is four steps, each a map over the data's partitions (in this process for small data,
as named tasks on the workers otherwise):

1. **Levels.** The metadata pass (:func:`daskmm.models.shared.structure.frozen_levels`) freezes the
levels of
   categorical columns (parametric factors, ``by`` factors, ``re`` factors).
2. **Setup rows.** A pass counts each partition's complete rows; the bases are then set up
   from all rows when there are at most :data:`SETUP_ROWS` of them (as ``bam``, whose
   ``chunk.size`` is 10000), else from a fixed sample of that many rows, by global row number
   (so the sample does not depend on partitioning), plus the rows holding each smooth
   covariate's minimum and maximum (as mgcv's ``mini.mf``). Knots, constraints and penalty
   scales are frozen in a :class:`~daskmm.models.gam.spec.GamSpec`.
3. **Cross-products.** Each partition builds its model matrix and returns ``X'WX``, ``X'Wz``,
   ``z'Wz``; a tree of tasks sums them (bam's ``use.chol``).
4. **Smoothing parameters.** mgcv's fast REML on the summed matrices
   (:func:`daskmm.kernels.freml.fit`). Gaussian identity: once. Other families: PIRLS
   performance iteration (``bgam.fit``): steps 3 and 4 repeat with the working response and
   weights at the current coefficients, the partitions' model matrices kept on the workers,
   until the deviance changes by less than ``1e-7`` relative.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from daskmm.core.families import GAMMA_FAMILY, get_family
from daskmm.data.columns import data_columns, missing_column
from daskmm.data.io import DataLike
from daskmm.data.source import Source
from daskmm.distributed.execution import MODES, executor, is_in_process, runs_in_process
from daskmm.distributed.mapreduce import map_delayed, map_reduce
from daskmm.errors import DataError, FitError, FormulaError, ModelError, num
from daskmm.formula.levels import level_label
from daskmm.formula.parse import parse_formula
from daskmm.formula.spec import (
    ModelSpec,
    plan_formula,
)
from daskmm.kernels import freml, freml_blocked, gam_stats
from daskmm.models.gam import discrete as discrete_grid
from daskmm.models.gam import side
from daskmm.models.gam.result import GamResult, post_fit
from daskmm.models.gam.smooth import build_smooths
from daskmm.models.gam.spec import GamSpec
from daskmm.models.gam.terms import bar_smooths, split_smooths
from daskmm.models.shared.prepare import prepare_columns, two_levels
from daskmm.models.shared.structure import frozen_levels

if TYPE_CHECKING:
    pass

log = logging.getLogger("daskmm")

SETUP_ROWS = 10_000
"""Rows the bases are set up from (bam's ``chunk.size``): all rows up to this many."""

SETUP_SEED = 66
"""Seed of the setup sample above :data:`SETUP_ROWS` rows (mgcv's ``mini.mf`` uses 66)."""

BLOCK_LEVELS = 200
"""``re`` terms on a factor with at least this many levels are kept per level (one ``q x q``
block a level) instead of as dense columns; the fit is the same."""

METHODS = ("fREML", "REML", "ML")
GAM_FAMILIES = ("gaussian", "binomial", "poisson", "gamma", "negative_binomial")
THETA_START = 1.0
"""Negative binomial: theta of the first PIRLS step (bam's ``nb()`` starts at log theta = 0);
from the second step on, theta is the ML estimate at the current means."""
PIRLS_EPSILON = 1e-7
PIRLS_MAXIT = 200


def gam(formula: str, data: DataLike, family: str = "gaussian", *, link: str | None = None,
        method: str = "fREML", factors: list[str] | None = None, weights: str | None = None,
        client=None, mode: str = "auto", npartitions: int | None = None, rho: float = 0.0,
        ar_start: str | None = None, discrete: bool | int = False) -> GamResult:
    """Fit a generalized additive model by REML, as ``mgcv::bam``.

    Parameters
    ----------
    formula : str
        mgcv formula, e.g. ``"y ~ s(x0) + te(x1, x2) + s(g, bs = 're') + z"``.
    data : str, path, pandas.DataFrame or dask.dataframe.DataFrame
    family : {"gaussian", "binomial", "poisson", "gamma"}
    link : str, optional
        The family's default (identity, logit, log, inverse) when None.
    method : {"fREML", "REML", "ML"}
        The smoothing-parameter criterion. ``fREML`` and ``REML`` are the restricted
        likelihood (``fREML`` is bam's default and name for it); ``ML`` the marginal
        likelihood with the unpenalised coefficients maximised (bam's ``method = "ML"``).
    factors : list of str, optional
        Columns to treat as categorical whatever their dtype.
    weights : str, optional
        Column of prior weights.
    client, mode, npartitions
        Where it runs, as :func:`daskmm.lmm`.
    rho : float
        AR1 correlation of the residuals, within series in row order (bam's ``rho``, given,
        not estimated); Gaussian identity models only.
    ar_start : str, optional
        Logical (or 0/1) column, true on the first row of each series (bam's ``AR.start``);
        without it the data are one series.
    discrete : bool or int
        Fit on a covariate grid (``bam(discrete = TRUE)``'s idea, daskmm's grid: see
        :mod:`daskmm.models.gam.discrete`), at most about 1000 cells a smooth (or this many, given
        an int). An approximation of the exact fit, for speed; predictions and fitted values
        use the exact covariates.

    Returns
    -------
    GamResult
    """
    if mode not in MODES:
        raise ModelError(f"mode={mode!r}; allowed: {', '.join(map(repr, MODES))}")
    if method not in METHODS:
        raise ModelError(f"method={method!r}; allowed: {', '.join(map(repr, METHODS))} "
                         "(REML or ML estimation of the smoothing parameters)")
    fam = _family(family)
    lk = fam.link(link)
    if fam.name == "gaussian" and lk.name != "identity":
        raise ModelError(f"link={lk.name!r}: a gaussian GAM takes the identity link here (a "
                         "gaussian GLMM, without smooth terms, takes log and inverse)")
    _check_ar(rho, ar_start, fam, lk)
    _grid_size(discrete)
    t0 = time.perf_counter()
    rest, calls = split_smooths(formula)
    if not calls:
        raise FormulaError(f"formula {formula!r} has no smooth term such as s(x); fit it with "
                           "daskmm.lmm or daskmm.glmm")
    parsed = parse_formula(rest)
    if parsed.bars:  # gamm4's model: lme4 bars as the re smooths they equal
        calls = calls + bar_smooths(parsed.bars, formula)
        parsed = replace(parsed, bars=())
    smooth_cols = set().union(*(c.columns for c in calls))
    used = sorted(parsed.columns | smooth_cols | ({weights} if weights else set())
                  | ({ar_start} if ar_start else set()))
    src = Source.open(data)
    here = runs_in_process(mode, client, lambda: src.cells(len(used)))
    ddf = src.read(local=here, columns=used, npartitions=npartitions)
    manifest = src.manifest
    ddf = _factor_response(ddf, parsed.response, fam)
    with executor(here, client) as c:
        gspec = _freeze(c, parsed, calls, ddf, used, factors or [], weights, manifest, fam,
                        rho, ar_start, _grid_size(discrete))
        t1 = time.perf_counter()
        parts = _partitions(c, ddf)
        fit, coef, stats, iters = _fit(c, parts, gspec, fam, lk, ml=method == "ML")
        t2 = time.perf_counter()
        result = post_fit(gspec, fit, coef, stats, fam, lk, method, iters, formula)
        if rho:  # bam's correction of the score for the transform's Jacobian
            starts = stats["ar_starts"] if ar_start else 1
            result.score -= (result.nobs - starts) * math.log(1 / math.sqrt(1 - rho * rho))
            result.optinfo["ar1"] = {"rho": rho, "series": starts}
        result.mode = "in-process" if is_in_process(c) else "distributed"
        result.optinfo["blocked_terms"] = [gspec.smooths[i].label for i in gspec.blocked]
        result.optinfo["discrete"] = {"cells": _grid_size(discrete), "smooths": [
            gspec.smooths[d.smooth].label for d in gspec.discrete]} if gspec.discrete else None
        if stats.get("theta") is not None:
            result.theta = float(stats["theta"])
    result.timing = {"setup_s": t1 - t0, "fit_s": t2 - t1, "total_s": time.perf_counter() - t0}
    result.ingest_dropped = dict(manifest.na_dropped) if manifest is not None else {}
    return result


def _check_ar(rho: float, ar_start: str | None, fam, link) -> None:
    if not isinstance(rho, (int, float)) or not -1 < rho < 1:
        raise ModelError(f"rho={rho!r}: the AR1 correlation must be a number strictly between "
                         "-1 and 1")
    if rho and (fam.name != "gaussian" or link.name != "identity"):
        raise ModelError(f"rho={rho}: AR1 residuals are available for the gaussian family "
                         f"with the identity link, not {fam.name}({link.name})")
    if ar_start is not None and not rho:
        raise ModelError(f"ar_start={ar_start!r} is given but rho is 0; give rho, the AR1 "
                         "correlation, too")


def _family(name: str):
    if name in ("gamma", "Gamma"):
        return GAMMA_FAMILY
    fam = get_family(name)
    if fam.name not in GAM_FAMILIES:
        raise ModelError(f"family {name!r} is not available for a GAM; use one of: "
                         f"{', '.join(GAM_FAMILIES)}")
    return fam


# ------------------------------------------------------------------ steps 1 and 2
def _factor_response(ddf, column: str, fam):
    """A categorical (two-level) binomial response as 0/1, the second level success, as mgcv
    and glm read a factor response; other families need numbers (the error says so)."""
    if column not in data_columns(ddf):
        return ddf
    dtype = ddf[column].dtype
    if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        return ddf
    col = ddf[column]
    values = col.dropna().unique()
    if not isinstance(values, (np.ndarray, pd.api.extensions.ExtensionArray, pd.Index)):
        values = values.compute()
    levels = sorted({level_label(v) for v in values})
    success = two_levels(column, levels, fam.name)

    def to01(s: pd.Series) -> pd.Series:
        return (s.map(level_label) == success).astype(float).where(s.notna())
    if isinstance(ddf, pd.DataFrame):
        return ddf.assign(**{column: to01(col)})
    return ddf.assign(**{column: col.map_partitions(to01, meta=(column, "f8"))})


def _freeze(client, parsed, calls, ddf, used, factors, weights, manifest, fam, rho=0.0,
            ar_start=None, grid: int = 0) -> GamSpec:
    cols = data_columns(ddf)
    for call in calls:
        for v in call.variables:
            if v not in cols:
                raise missing_column(v, cols, f"in {call.text}")
        if call.by is not None and call.by not in cols:
            raise missing_column(call.by, cols, f"named by {call.text}")
    if ar_start is not None and ar_start not in cols:
        raise missing_column(ar_start, cols, "named as ar_start")
    response_cols = parse_formula(f"{parsed.response} ~ 1").columns
    ddf, plan = prepare_columns(parsed, ddf, factors, weights, used=used,
                                not_factors=response_cols)
    rewriter = plan_formula(parsed, used)
    ddf, categorical, _, _ = frozen_levels(client, ddf, used, plan.categorical, [], [],
                                           manifest, rewriter=rewriter, declared=factors)
    param_cat = {c: v for c, v in categorical.items()}
    param = ModelSpec.build(parsed, plan.schema, param_cat, weights, rewriter=rewriter,
                            require_bars=False)
    param.used_columns = list(used)
    levels = dict(categorical)
    smooth_cols = sorted(set().union(*(c.columns for c in calls)))
    # every column the model reads (the parametric columns for gam.side's constant test);
    # the extremes kept in the sample are the smooths' covariates'
    setup = _setup_rows(client, ddf, param, sorted(set(used) | set(smooth_cols)), levels,
                        extremes=smooth_cols)
    if len(setup) == 0:
        raise DataError("no rows left after dropping rows with missing values in the columns "
                        f"the model uses ({', '.join(used)})")
    # AR1 rows mix two rows' levels, so re terms stay dense columns with rho
    blocked = _blocked_factor(calls, levels) if not rho else None
    smooths = [s for call in calls for s in build_smooths(
        call, setup, levels, blocked=blocked is not None and _re_factor(call, levels) == blocked)]
    # mgcv's gam.side: overlapping smooths lose the columns that repeat lower-order terms
    smooths, notes = side.constrain(smooths, setup, np.asarray(param.encode(setup).X,
                                                               dtype=float))
    if ar_start is not None:
        v = ddf[ar_start].head(1000).dropna()
        if not (pd.api.types.is_bool_dtype(v) or set(pd.unique(v)) <= {0, 1}):
            raise DataError(f"AR.start column {ar_start!r} must be logical (TRUE where a "
                            f"series starts) or 0/1, got values such as {list(v[:3])}")
    return GamSpec(param=param, smooths=smooths, columns=used, ar_rho=float(rho),
                   ar_start=ar_start, notes=notes,
                   discrete=discrete_grid.build(smooths, setup, grid) if grid else [])


def _grid_size(discrete: bool | int) -> int:
    if discrete is True:
        return discrete_grid.DEFAULT_M
    if discrete is False or discrete is None:
        return 0
    if isinstance(discrete, int) and discrete >= 4:
        return discrete
    raise ModelError(f"discrete={discrete!r}: give True (a grid of about "
                     f"{discrete_grid.DEFAULT_M} cells a smooth), False, or a number of cells "
                     "of at least 4")


def _re_factor(call, levels: dict) -> str | None:
    """The factor of an ``re`` smooth that can be kept per level (no ``by``)."""
    if call.kind != "s" or call.bs[0] != "re" or call.by is not None:
        return None
    facs = [v for v in call.variables if v in levels]
    return facs[0] if len(facs) == 1 else None


def _blocked_factor(calls, levels: dict) -> str | None:
    """The factor whose ``re`` terms are kept per level: the one with most levels, if it has
    at least :data:`BLOCK_LEVELS` (fewer are cheaper as dense columns)."""
    facs = {f for f in (_re_factor(c, levels) for c in calls) if f is not None}
    if not facs:
        return None
    best = max(sorted(facs), key=lambda f: len(levels[f]))
    return best if len(levels[best]) >= BLOCK_LEVELS else None


def _count_partition(df: pd.DataFrame, param: ModelSpec, numeric: list[str]) -> dict:
    frame, _ = param.prepare(df)
    ext = {}
    for c in numeric:
        v = frame[c].to_numpy(dtype=float)
        if len(v):
            ext[c] = (float(v.min()), int(np.argmin(v)), float(v.max()), int(np.argmax(v)))
    return {"n": len(frame), "ext": ext}


def _take_partition(df: pd.DataFrame, param: ModelSpec, columns: list[str],
                    rows: np.ndarray | None) -> pd.DataFrame:
    frame, _ = param.prepare(df)
    frame = frame[columns]
    return frame if rows is None else frame.iloc[rows]


def _setup_rows(client, ddf, param: ModelSpec, columns: list[str], levels: dict,
                extremes: list[str]) -> pd.DataFrame:
    """bam's ``mini.mf``: up to :data:`SETUP_ROWS` complete rows of ``columns`` (all of them
    when there are no more), with the rows of the minimum and maximum of each numeric column
    of ``extremes``."""
    numeric = [c for c in extremes if c not in levels]
    parts = _partitions(client, ddf)
    counts = client.gather(_map(client, _count_partition, parts, param=param,
                                       numeric=numeric))
    sizes = np.array([c["n"] for c in counts])
    total = int(sizes.sum())
    if total <= SETUP_ROWS:
        taken = client.gather(_map(client, _take_partition, parts, param=param,
                                   columns=columns, rows=None))
        return pd.concat(taken, ignore_index=True) if taken else pd.DataFrame()
    starts = np.concatenate([[0], np.cumsum(sizes)])
    rng = np.random.default_rng(SETUP_SEED)
    pick = set(rng.choice(total, SETUP_ROWS, replace=False).tolist())
    for c in numeric:  # the rows of each covariate's extremes, so knots span the range
        lo = min((p["ext"][c][0], i) for i, p in enumerate(counts) if c in p["ext"])
        hi = max((p["ext"][c][2], -i) for i, p in enumerate(counts) if c in p["ext"])
        pick.add(int(starts[lo[1]] + counts[lo[1]]["ext"][c][1]))
        pick.add(int(starts[-hi[1]] + counts[-hi[1]]["ext"][c][3]))
    g = np.array(sorted(pick))
    part = np.searchsorted(starts, g, side="right") - 1
    rows = [g[part == i] - starts[i] for i in range(len(parts))]
    taken = client.gather(_map(client, _take_partition, parts, per_part={"rows": rows},
                               param=param, columns=columns))
    return pd.concat(taken, ignore_index=True)


def _partitions(client, ddf) -> list:
    """Task inputs, one per partition: the pandas frame in process, else delayed reads (each
    pass reads the files again; only PIRLS keeps its encoded partitions on the workers)."""
    if isinstance(ddf, pd.DataFrame):
        return [ddf]
    return list(ddf.to_delayed())


def _is_spec(value) -> bool:
    """A model spec: sent to every worker once (:func:`daskmm.distributed.mapreduce
    .map_delayed`'s ``broadcast``)."""
    return isinstance(value, (GamSpec, ModelSpec))


def _map(client, fn, parts: list, per_part: dict | None = None, **kwargs) -> list:
    return map_delayed(client, fn, parts, per_part, broadcast=_is_spec, **kwargs)


# ------------------------------------------------------------------ steps 3 and 4
def check_response(y: np.ndarray, fam, column: str) -> None:
    """Refuse a response value the family cannot model, as R's family ``initialize`` does
    before mgcv fits (its words in brackets)."""
    if fam.name in ("poisson", "negative_binomial"):
        bad, want, r = y < 0, "counts (0, 1, 2, ...)", "negative values not allowed"
    elif fam.name == "binomial":
        bad, want, r = (y < 0) | (y > 1), ("0/1 values, or proportions between 0 and 1 with "
                                           "weights the trials"), "y values must be 0 <= y <= 1"
    elif fam.name == "gamma":
        bad, want, r = y <= 0, "positive values", "non-positive values not allowed"
    else:
        return
    bad &= np.isfinite(y)
    if bad.any():
        raise DataError(f"response {column!r} has {int(bad.sum())} value(s) the {fam.name} "
                        f"family cannot model (e.g. {num(y[bad][0])}); it needs {want} (R "
                        f"stops: {r})")


def _encode_partition(df: pd.DataFrame, gspec: GamSpec, family=None) -> dict:
    y, X, w, dropped = gspec.design(df)
    off = gspec.offset(df)
    if family is not None:
        check_response(y + off, family, gspec.param._response_column or "the response")
    enc = {"y": y + off, "off": off, "X": X, "w": np.ones(len(y)) if w is None else w,
           "has_w": w is not None, "dropped": dropped}
    if gspec.blocked:
        frame, _ = gspec.prepare(df)
        enc["codes"], enc["Zv"] = gspec.level_columns(frame)
    return enc


def _level_stats(st: dict, X, z, w, codes, Zv, gspec: GamSpec) -> dict:
    if gspec.blocked:
        st.update(gam_stats.level_cross_products(X, z, w, codes, Zv, gspec.n_levels))
    return st


def _gauss_stats(df: pd.DataFrame, gspec: GamSpec) -> dict:
    if gspec.discrete and not gspec.blocked and not gspec.ar_rho:
        y, Xd, w, dropped, pos, terms = gspec.discrete_parts(df)
        st = gam_stats.discrete_cross_products(Xd, pos, terms, y, w, gspec.p_dense)
        st["dropped"] = dropped
        return st
    y, X, w, dropped = gspec.design(df)
    if gspec.ar_rho:
        return _ar1_stats(df, gspec, y, X, w, dropped)
    st = gam_stats.cross_products(X, y, w)
    if gspec.blocked:
        frame, _ = gspec.prepare(df)
        codes, Zv = gspec.level_columns(frame)
        _level_stats(st, X, y, w, codes, Zv, gspec)
    st["dropped"] = dropped
    return st


def _ar1_stats(df, gspec: GamSpec, y, X, w, dropped) -> dict:
    """bam's AR1 model: cross-products of the transformed rows (all but the partition's
    first, which needs the previous partition's last row: kept in ``ar_bounds`` and joined
    on the client), and the untransformed sums (``raw``) for the summaries."""
    r = np.ones(len(y)) if w is None else np.sqrt(w)
    start = gspec.ar_starts(df)
    Ms = np.column_stack([X * r[:, None], y * r])
    T = gam_stats.ar1_rows(Ms, start, gspec.ar_rho)
    st = gam_stats.cross_products(T[1:, :-1], T[1:, -1], None)
    st["raw"] = gam_stats.cross_products(X, y, w)
    n = len(y)
    st["ar_bounds"] = [{"n": n, "head": Ms[0] if n else None,
                        "head_start": bool(start[0]) if n else False,
                        "tail": Ms[-1] if n else None}]
    st["ar_starts"] = int(start.sum())
    st["dropped"] = dropped
    return st


def _ar1_join(st: dict, rho: float) -> dict:
    """The partitions' first transformed rows added on the client (in partition order)."""
    bounds = st.pop("ar_bounds")
    A, b, c, n = gam_stats.ar1_join(st["A"], st["b"], st["c"], st["n"], bounds, rho)
    return dict(st, A=A, b=b, c=c, n=n)


def _eta(enc: dict, beta: np.ndarray) -> np.ndarray:
    """The linear predictor of an encoded partition (offset included)."""
    X = enc["X"]
    return gam_stats.linear_predictor(X, enc.get("codes"), enc.get("Zv"), beta,
                                      X.shape[1]) + enc["off"]


def _working_stats(enc: dict, beta: np.ndarray | None, fam, link, gspec: GamSpec,
                   theta: float | None = None) -> dict:
    y, X, w, off = enc["y"], enc["X"], enc["w"], enc["off"]
    if beta is None:
        mu = _mustart(y, w, fam)
        eta = link.link(mu)
    else:
        eta = _eta(enc, beta)
        mu = link.inverse(eta)
    z, ww = gam_stats.working_response(y, eta, w, fam, link, theta)
    st = gam_stats.cross_products(X, z - off, ww)
    _level_stats(st, X, z - off, ww, enc.get("codes"), enc.get("Zv"), gspec)
    st["dev"] = gam_stats.deviance(y, mu, w, fam, theta)
    if theta is not None and beta is not None:  # for theta's ML step at these means
        st["theta_sums"] = gam_stats.nb_theta_sums(y, mu, w, theta)
    st["pw"], st["pwy"] = float(w.sum()), float(w @ y)
    st["dropped"] = enc["dropped"]
    return st


def _mustart(y: np.ndarray, w: np.ndarray, fam) -> np.ndarray:
    if fam.name == "binomial":
        return (w * y + 0.5) / (w + 1)
    if fam.name == "poisson":
        return y + 0.1
    if fam.name == "negative_binomial":  # nb()'s initialize
        return y + (y == 0) / 6
    return y.copy()  # gamma


def _theta_sums(enc: dict, beta: np.ndarray, link, theta: float) -> dict:
    y, w = enc["y"], enc["w"]
    mu = link.inverse(_eta(enc, beta))
    return gam_stats.nb_theta_sums(y, mu, w, theta)


def _estimate_theta(client, enc, beta, link, theta: float, first: dict) -> float:
    """ML of the negative binomial theta at the means of ``beta`` (mgcv's
    ``estimate.theta``): Newton in ``log theta`` with step halving, one pass a trial;
    ``first`` are the sums at ``theta``, from the PIRLS pass."""
    t, cur = math.log(theta), first
    for _ in range(100):
        h = cur["h"]
        step = -cur["g"] / h if h < 0 else cur["g"] / max(abs(h), 1e-8)
        step = max(-4.0, min(4.0, step))
        for _ in range(30):
            trial = _map_reduce(client, _theta_sums, enc, beta=beta, link=link,
                                theta=math.exp(t + step))
            if trial["ll"] >= cur["ll"]:
                break
            step /= 2
        else:
            break
        t, cur = t + step, trial
        if abs(step) < 1e-9 or abs(cur["g"]) < 1e-10 * max(1.0, abs(cur["ll"])):
            break
    return math.exp(t)


def _final_stats(enc: dict, beta: np.ndarray, fam, link, ybar: float,
                 theta: float | None = None) -> dict:
    """Sums for the summaries at the final coefficients: deviance, null deviance and the
    residual sums of R-sq.(adj) (weights: the prior weights)."""
    y, w = enc["y"], enc["w"]
    mu = link.inverse(_eta(enc, beta))
    r = np.sqrt(w)
    e = y - mu
    return {"dev": gam_stats.deviance(y, mu, w, fam, theta),
            "null_dev": gam_stats.deviance(y, np.full(len(y), ybar), w, fam, theta),
            "r1": float(r @ e), "r2": float(w @ (e * e)), "ys": float(r @ y),
            "yy": float(w @ (y * y)), "sqw": float(r.sum()), "sw": float(w.sum()),
            "swy": float(w @ y), "n": len(y)}


def _map_reduce(client, fn, parts: list, **kwargs) -> dict:
    return map_reduce(client, fn, parts, gam_stats.add, broadcast=_is_spec, **kwargs)


def _reml(st: dict, gspec: GamSpec, pen, phi, rho0, ml: bool = False):
    """Smoothing parameters from the summed statistics: the dense kernel, or the blocked one
    when ``re`` terms are kept per level. Returns the fit and the coefficients in the fit's
    layout (dense, then each blocked term's levels)."""
    if gspec.blocked:
        bst = freml_blocked.BlockedStats.from_sums(st, gspec.blocked_scales())
        fit = freml_blocked.fit(bst, pen, phi=phi, rho0=rho0, ml=ml)
        coef = np.concatenate([fit.point.beta, fit.point.b_re.T.ravel()])
        return fit, coef
    names = gspec.param.fixef_names
    zero = freml.aliased_unpenalised(st["A"], pen, [j for j, nm in enumerate(names)
                                                    if nm != "(Intercept)"])
    if zero and not st.get("aliased_warned"):
        st["aliased_warned"] = True
        log.warning("%s aliased with the smooths' unpenalised parts (a numeric by variable "
                    "also entered as a parametric term): fixed at 0, as mgcv does",
                    ", ".join(repr(names[j]) for j in zero))
    fit = freml.fit(st["A"], st["b"], st["c"], st["n"], pen, phi=phi, rho0=rho0, ml=ml,
                    zero=zero)
    return fit, fit.point.beta


def _share(client, spec):
    """The spec as the tasks take it: scattered to the workers once per fit (scattering the
    same value again each round races with the release of its last copy)."""
    if is_in_process(client):
        return spec
    return client.scatter(spec, broadcast=True, hash=False)


def _fit(client, parts: list, gspec: GamSpec, fam, link, ml: bool = False):
    pen = gspec.penalties()
    shared = _share(client, gspec)
    if fam.name == "gaussian" and link.name == "identity":
        st = _map_reduce(client, _gauss_stats, parts, gspec=shared)
        if gspec.ar_rho:
            st = _ar1_join(st, gspec.ar_rho)
        _check_n(st, gspec)
        fit, coef = _reml(st, gspec, pen, None, None, ml)
        st["mode"] = "gaussian"
        return fit, coef, st, 1
    enc = _map(client, _encode_partition, parts, gspec=shared, family=fam)
    scale = None if fam.name == "gamma" else 1.0
    beta, dev, fit, st, ybar = None, None, None, None, None
    nb = fam.name == "negative_binomial"
    theta = THETA_START if nb else None
    for it in range(1, PIRLS_MAXIT + 1):
        st = _map_reduce(client, _working_stats, enc, beta=beta, fam=fam, link=link,
                         gspec=shared, theta=theta)
        if it == 1:
            _check_n(st, gspec)
            ybar = st["pwy"] / st["pw"]
        if not np.isfinite(st["dev"]):
            raise FitError(f"the deviance is not finite at PIRLS iteration {it}")
        if it > 2 and abs(st["dev"] - dev) / (0.1 + abs(st["dev"])) < PIRLS_EPSILON:
            break
        dev = st["dev"]
        if nb and it > 1:  # as bam: theta at these means, for the next step's working model
            theta = _estimate_theta(client, enc, beta, link, theta, st["theta_sums"])
        # as bgam.fit: each step's REML starts again from initial.sp of its working model
        # (a warm start can settle in another local optimum of a multimodal score)
        fit, beta = _reml(st, gspec, pen, scale, None, ml)
    else:
        log.warning("PIRLS did not converge in %d iterations", PIRLS_MAXIT)
    fin = _map_reduce(client, _final_stats, enc, beta=beta, fam=fam, link=link,
                      ybar=ybar, theta=theta)
    st.update({"final": fin, "mode": "pirls", "theta": theta})
    client.cancel(enc)
    return fit, beta, st, it


def _check_n(st: dict, gspec: GamSpec) -> None:
    if st is None or st["n"] == 0:
        raise DataError("no rows left after dropping rows with missing values in the columns "
                        f"the model uses ({', '.join(gspec.columns)})")
    if st["n"] <= gspec.p:
        raise DataError(f"{st['n']} complete rows for {gspec.p} coefficients; a GAM needs more "
                        "rows than coefficients: lower k or drop terms")
