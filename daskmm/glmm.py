"""Generalized linear mixed models: ``daskmm.glmm`` (glmer's Laplace and adaptive
Gauss-Hermite fits) for one scalar random effect per level of one grouping factor.

The fit:

1. **Data on the workers.** Each partition is encoded once (``eta0``'s fixed-effects matrix,
   response, binomial trials, offset), its rows sorted by level, and kept on the workers as a
   future (``daskmm-glmm-data-*``): no evaluation reads the input again. Partitions must hold
   whole levels; input that does not is shuffled by the factor first.
2. **Start.** ``beta`` from the GLM without random effects (IRLS, each step a map of
   ``X'WX, X'Wz`` over the partitions), ``theta = 1`` (glmer's start).
3. **Optimisation** of the Laplace (``nagq=1``) or AGQ criterion over ``(theta, beta)``
   jointly, as glmer's second stage does, by BOBYQA; each evaluation maps
   :func:`~daskmm.kernels.scalar_re.levels_objective` over the partitions (per-level PIRLS
   inside) and sums the results in partition order. A Newton polish on finite differences
   follows, as for the LMM.
4. **Results.** ``vcov(beta)`` from the finite-difference Hessian of the criterion in
   ``(theta, beta)`` (glmer's default, ``use.hessian = TRUE``): ``2 [H^-1]_beta``.

Not yet: several terms or factors, random slopes, the negative binomial, a two-level factor
or logical response (use 0/1 or ``cbind``). They raise :class:`~daskmm.errors.ModelError`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import uuid

import dask
import nlopt
import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import gammaln

from daskmm.data.io import DataLike, open_data
from daskmm.distributed.client import client_for
from daskmm.distributed.passes import aligned, metadata_pass, shuffle_by
from daskmm.distributed.progress import track
from daskmm.errors import DataError, FitError, ModelError
from daskmm.formula.parse import _split_top, parse_formula
from daskmm.formula.spec import ModelSpec, check_columns, is_categorical_dtype, sorted_levels
from daskmm.kernels import scalar_re as K
from daskmm.lmm import _newton_polish, _snap_to_boundary

log = logging.getLogger("daskmm")

FAMILIES = {"binomial": (K.BINOMIAL, "logit", {"logit": K.LOGIT, "probit": K.PROBIT,
                                               "cloglog": K.CLOGLOG}),
            "poisson": (K.POISSON, "log", {"log": K.LOG})}
MAX_NAGQ = 25


# ------------------------------------------------------------------ per partition (workers)
@dataclasses.dataclass
class GlmmPartition:
    """One partition's rows, sorted by level: ``starts`` delimit the levels."""

    levels: np.ndarray
    starts: np.ndarray
    X: np.ndarray
    y: np.ndarray
    wt: np.ndarray
    offset: np.ndarray
    const: float  # sum of the family's log normalising constants
    n_dropped: int


def _prepare(df: pd.DataFrame, spec: ModelSpec, trials: ModelSpec | None, family: int
             ) -> GlmmPartition:
    cols = sorted(set(spec.used_columns) | set(trials.used_columns if trials else []))
    df = df[cols]
    ok = df.notna().all(axis=1).to_numpy()
    dropped = int(len(df) - ok.sum())
    if dropped:
        df = df.loc[ok]
    enc = spec.encode(df)
    y = np.array(enc.y, dtype=float)
    X = np.array(enc.X, dtype=float, order="C")
    offset = np.zeros(len(y))
    if spec._offset_specs:  # encode() returns y - offset: recover the offset
        raw = df[spec.formula.response].to_numpy(dtype=float) if spec.formula.response in \
            df.columns else None
        if raw is None:
            raise ModelError("an offset needs a plain response column in this version")
        offset = raw - y
        y = raw
    if trials is not None:
        wt = np.array(trials.encode(df).y, dtype=float)
        if spec._offset_specs:
            wt = wt + offset
    else:
        wt = np.ones(len(y))
    _check_response(y, wt, family, spec.formula.response)
    if family == K.BINOMIAL:
        const = float(np.sum(gammaln(wt + 1) - gammaln(y + 1) - gammaln(wt - y + 1)))
    else:
        const = float(-np.sum(gammaln(y + 1)))
    keys = enc.keys[spec.factors[0].name]
    codes, levels = pd.factorize(keys, sort=True)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(levels) + 1))
    return GlmmPartition(np.asarray(levels), starts.astype(np.int64), X[order], y[order],
                         wt[order], offset[order], const, dropped + enc.n_dropped)


def _check_response(y, wt, family, name) -> None:
    if family == K.POISSON:
        bad = (y < 0) | (y != np.round(y))
        if bad.any():
            raise DataError(f"response {name!r} has {int(bad.sum())} value(s) that are not "
                            f"non-negative integers (e.g. {y[bad][0]!r}); the Poisson family "
                            "needs counts")
        return
    bad = (y < 0) | (y > wt) | (wt <= 0)
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise DataError(f"binomial response {name!r} out of range: {y[i]!r} successes of "
                        f"{wt[i]!r} trials; use 0/1 or cbind(successes, failures) with "
                        "non-negative counts")
    frac = y != np.round(y)
    if frac.any():
        raise DataError(f"binomial response {name!r} has non-integer successes (e.g. "
                        f"{y[frac][0]!r}); give cbind(successes, failures) counts")


def _keys(part: GlmmPartition) -> tuple[np.ndarray, int]:
    return part.levels, part.n_dropped


def _irls(part: GlmmPartition, beta: np.ndarray, family: int, link: int):
    return K.irls_crossprod(part.X, part.offset, beta, part.y, part.wt, family, link) + \
        (len(part.y), part.const)


def _evaluate(part: GlmmPartition, theta: float, beta: np.ndarray, family: int, link: int,
              nodes: np.ndarray, weights: np.ndarray, modes: bool = False):
    eta0 = part.X @ beta + part.offset
    m = len(part.levels)
    u, L = np.zeros(m), np.ones(m)
    val = K.levels_objective(part.starts, eta0, part.y, part.wt, float(theta), family, link,
                             nodes, weights, u, L)
    if modes:
        return val, part.levels, u, L
    return val


# ------------------------------------------------------------------ result
@dataclasses.dataclass
class GlmmResult:
    """A fitted GLMM (one scalar random effect), with glmer's quantities."""

    formula: str
    family: str
    link: str
    nagq: int
    factor: str
    theta: float
    beta: np.ndarray
    fixef_names: list[str]
    vcov: np.ndarray
    objective: float
    nobs: int
    n_dropped: int
    ngroups: dict
    ranef_levels: np.ndarray
    ranef_b: np.ndarray
    ranef_sd: np.ndarray
    optinfo: dict
    timing: dict = dataclasses.field(default_factory=dict)

    @property
    def loglik(self) -> float:
        return -0.5 * self.objective

    @property
    def df(self) -> int:
        return len(self.beta) + 1

    @property
    def aic(self) -> float:
        return self.objective + 2 * self.df

    @property
    def bic(self) -> float:
        return self.objective + self.df * math.log(self.nobs)

    @property
    def singular(self) -> bool:
        return self.theta == 0.0

    def fixef(self) -> pd.DataFrame:
        """``term, estimate, std_error, statistic`` (z) and ``p_value`` (Wald, two-sided)."""
        se = np.sqrt(np.diag(self.vcov))
        z = self.beta / se
        return pd.DataFrame({"term": self.fixef_names, "estimate": self.beta,
                             "std_error": se, "statistic": z,
                             "p_value": 2 * stats.norm.sf(np.abs(z))})

    def varcorr(self) -> pd.DataFrame:
        return pd.DataFrame([{"grp": self.factor, "var1": "(Intercept)", "var2": None,
                              "vcov": self.theta ** 2, "sdcor": self.theta}])

    def ranef_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"group": self.factor, "level": [str(v) for v in self.ranef_levels],
                             "term": "(Intercept)", "estimate": self.ranef_b,
                             "std_error": self.ranef_sd})

    def to_dict(self) -> dict:
        fx = self.fixef()
        return {"formula": self.formula, "family": self.family, "link": self.link,
                "method": "Laplace" if self.nagq == 1 else f"AGQ({self.nagq})",
                "nAGQ": self.nagq, "nobs": self.nobs, "n_dropped": self.n_dropped,
                "ngroups": self.ngroups, "objective": self.objective, "logLik": self.loglik,
                "df": self.df, "AIC": self.aic, "BIC": self.bic, "theta": [self.theta],
                "fixef": [{"term": r.term, "estimate": r.estimate, "std_error": r.std_error,
                           "statistic": r.statistic, "p_value": r.p_value}
                          for r in fx.itertuples()],
                "vcov": self.vcov.tolist(),
                "varcorr": self.varcorr().to_dict("records"),
                "converged": bool(self.optinfo.get("converged")), "singular": self.singular,
                "optinfo": self.optinfo, "timing": self.timing}

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), default=float, **kw)

    def summary(self) -> str:
        how = ("Laplace Approximation" if self.nagq == 1
               else f"Adaptive Gauss-Hermite Quadrature, nAGQ = {self.nagq}")
        lines = [f"Generalized linear mixed model fit by maximum likelihood ({how}) "
                 "['glmerMod']", f" Family: {self.family}  ( {self.link} )",
                 f"Formula: {self.formula}", "",
                 f"{'AIC':>9}{'BIC':>9}{'logLik':>9}{'deviance':>9}{'df.resid':>9}",
                 f"{self.aic:>9.1f}{self.bic:>9.1f}{self.loglik:>9.1f}{self.objective:>9.1f}"
                 f"{self.nobs - self.df:>9d}", "", "Random effects:",
                 f" Groups {'Name':<12} Variance Std.Dev.",
                 f" {self.factor:<6} {'(Intercept)':<12} {self.theta ** 2:<8.4g} "
                 f"{self.theta:.4g}",
                 f"Number of obs: {self.nobs}, groups:  {self.factor}, "
                 f"{self.ngroups[self.factor]}", "", "Fixed effects:"]
        fx = self.fixef()
        w = max(len(t) for t in fx["term"]) + 1
        lines.append(f"{'':<{w}} {'Estimate':>9} {'Std. Error':>10} {'z value':>8} "
                     f"{'Pr(>|z|)':>9}")
        for r in fx.itertuples():
            lines.append(f"{r.term:<{w}} {r.estimate:>9.4f} {r.std_error:>10.4f} "
                         f"{r.statistic:>8.3f} {r.p_value:>9.3g}")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return self.summary()


# ------------------------------------------------------------------ driver
def glmm(formula: str, data: DataLike, family: str = "binomial", *, link: str | None = None,
         nagq: int = 1, factors: list[str] | None = None, client=None,
         npartitions: int | None = None, optimizer_options: dict | None = None) -> GlmmResult:
    """Fit a GLMM by maximum likelihood, as ``lme4::glmer``.

    Parameters
    ----------
    formula : str
        lme4 formula with one ``(1 | g)`` term, e.g.
        ``"cbind(incidence, size - incidence) ~ period + (1 | herd)"``. A binomial response is
        0/1, or ``cbind(successes, failures)``; a Poisson response is a count column, with
        ``offset(log(exposure))`` allowed.
    data : str, path, pandas.DataFrame or dask.dataframe.DataFrame
    family : {"binomial", "poisson"}
    link : str, optional
        ``logit`` (default), ``probit``, ``cloglog`` for the binomial; ``log`` for Poisson.
    nagq : int
        1: Laplace; 2..25: adaptive Gauss-Hermite quadrature with that many nodes.
    factors, client, npartitions
        As for :func:`daskmm.lmm`.
    optimizer_options : dict, optional
        ``xtol_abs``, ``ftol_abs``, ``maxeval``, ``polish``.
    """
    if family not in FAMILIES:
        raise ModelError(f"family {family!r} is not available; use one of: "
                         f"{', '.join(FAMILIES)}")
    fam_code, default_link, links = FAMILIES[family]
    link = link or default_link
    if link not in links:
        raise ModelError(f"link {link!r} is not available for the {family} family; use one "
                         f"of: {', '.join(links)}")
    if not (isinstance(nagq, int) and 1 <= nagq <= MAX_NAGQ):
        raise ModelError(f"nagq={nagq!r}; use an integer from 1 (Laplace) to {MAX_NAGQ}")
    t0 = time.perf_counter()
    parsed = parse_formula(formula)
    if len(parsed.bars) != 1 or parsed.bars[0].lhs.replace(" ", "") != "1" or \
            len(parsed.bars[0].factor) != 1:
        raise ModelError(f"formula {formula!r}: this version of glmm takes exactly one "
                         "random intercept on one grouping column, '(1 | g)'; several terms, "
                         "slopes and nested or crossed factors are not yet available")
    resp, trials_text = parsed.response.strip(), None
    if resp.startswith("cbind(") and resp.endswith(")"):
        if family != "binomial":
            raise ModelError("cbind(successes, failures) is a binomial response; use a count "
                             f"column for the {family} family")
        args = [p for _, p in _split_top(resp[len("cbind("):-1], ",")]
        if len(args) != 2:
            raise ModelError(f"cbind() needs two arguments (successes, failures); got {resp!r}")
        a, b = args[0].strip(), args[1].strip()
        resp = a if a.isidentifier() else f"I({a})"  # formulaic reads bare '+'/'-' as terms
        trials_text = f"I(({a}) + ({b}))"
    parsed_y = dataclasses.replace(parsed, response=resp)
    ddf, manifest = open_data(data, npartitions=npartitions)
    check_columns(parsed, list(ddf.columns), None)
    factor = parsed.bars[0].factor[0]
    schema = {c: ddf.dtypes[c] for c in ddf.columns}
    used = sorted(parsed.columns)
    ddf = ddf[used]
    outside = sorted(c for c in used if c != factor)
    cat_cols = [c for c in outside if c in (factors or []) or is_categorical_dtype(schema[c])]
    categorical = {}
    opts = optimizer_options or {}
    with client_for(client) as c:
        manifest_cols = [c_ for c_ in cat_cols if manifest is not None
                         and (manifest.levels.get(c_) or {}).get("file")]
        for col in manifest_cols:
            categorical[col] = sorted_levels(manifest.level_table(col)["level"])
        scan = [col for col in cat_cols if col not in manifest_cols]
        if scan:
            meta = metadata_pass(c, ddf, used, scan, [])
            categorical.update({col: sorted_levels(meta["levels"][col]) for col in scan})
        if resp in categorical:
            raise ModelError(f"response {resp!r} is categorical; this version takes a 0/1 or "
                             "cbind(successes, failures) response")
        sch = {col: schema[col] for col in used}
        spec = ModelSpec.build(parsed_y, sch, categorical, None, None)
        trials = ModelSpec.build(dataclasses.replace(parsed, response=trials_text), sch,
                                 categorical, None, None) if trials_text else None
        parts = _persist(c, ddf, spec, trials, fam_code)
        info_parts = c.gather(c.map(_keys, parts, pure=False))
        keys = [k for k, _ in info_parts]
        if not aligned(keys):
            log.info("data are not partitioned by %s: shuffling", factor)
            c.cancel(parts)
            parts = _persist(c, shuffle_by(ddf, spec.factor(factor)), spec, trials, fam_code)
            info_parts = c.gather(c.map(_keys, parts, pure=False))
            keys = [k for k, _ in info_parts]
        n_dropped = sum(d for _, d in info_parts)
        n_levels = sum(len(k) for k in keys)
        if n_levels < 2:
            raise DataError(f"grouping factor {factor!r} has {n_levels} level; a random effect "
                            "needs at least 2")
        beta0, n, const = _glm_start(c, parts, fam_code, links[link], len(spec.fixef_names))
        nodes, weights = np.polynomial.hermite_e.hermegauss(nagq)

        def total(theta, beta, modes=False):
            futs = c.map(_evaluate, parts, theta=theta, beta=beta, family=fam_code,
                         link=links[link], nodes=nodes, weights=weights, modes=modes,
                         pure=False)
            out = c.gather(futs)
            if modes:
                return out
            return float(sum(out)) - 2.0 * const

        t1 = time.perf_counter()
        x, info = _optimise(total, beta0, opts)
        t2 = time.perf_counter()
        theta, beta = float(x[0]), x[1:]
        objective = total(theta, beta)
        H = _hessian(lambda v: total(float(v[0]), v[1:]), x)
        try:
            Hinv = np.linalg.inv(H)
            vcov = 2.0 * Hinv[1:, 1:]
        except np.linalg.LinAlgError as exc:
            raise FitError("the Hessian of the criterion is singular at the optimum; the "
                           "fixed effects may not be identifiable") from exc
        if theta == 0.0:  # boundary: the theta row of the Hessian is not informative
            vcov = 2.0 * np.linalg.inv(H[1:, 1:])
        pieces = total(theta, beta, modes=True)
    lv = np.concatenate([p[1] for p in pieces])
    u = np.concatenate([p[2] for p in pieces])
    L = np.concatenate([p[3] for p in pieces])
    order = np.argsort(lv, kind="stable")
    res = GlmmResult(formula=parsed.text, family=family, link=link, nagq=nagq, factor=factor,
                     theta=theta, beta=beta, fixef_names=list(spec.fixef_names), vcov=vcov,
                     objective=objective, nobs=n, n_dropped=n_dropped, ngroups={factor: n_levels},
                     ranef_levels=lv[order], ranef_b=(theta * u)[order],
                     ranef_sd=(theta / L)[order], optinfo=info)
    res.timing = {"data_s": t1 - t0, "optimise_s": t2 - t1,
                  "total_s": time.perf_counter() - t0}
    return res


def _persist(c, ddf, spec, trials, family) -> list:
    tok = uuid.uuid4().hex[:8]
    prep = dask.delayed(_prepare, pure=False)
    tasks = [prep(p, spec, trials, family, dask_key_name=f"daskmm-glmm-data-{tok}-{i}")
             for i, p in enumerate(ddf.to_delayed())]
    futures = c.compute(tasks)
    track(futures, "glmm: data")
    return futures


def _glm_start(c, parts, family, link, p, iters: int = 25):
    """``beta`` of the GLM without random effects, by IRLS over the partitions."""
    beta = np.zeros(p)
    n = const = 0
    for _ in range(iters):
        out = c.gather(c.map(_irls, parts, beta=beta, family=family, link=link, pure=False))
        A = sum(o[0] for o in out)
        b = sum(o[1] for o in out)
        n = sum(o[2] for o in out)
        const = sum(o[3] for o in out)
        try:
            new = np.linalg.solve(A, b)
        except np.linalg.LinAlgError as exc:
            raise DataError("the fixed-effects matrix is rank deficient (or the response "
                            "separates the data completely); drop aliased columns") from exc
        if np.max(np.abs(new - beta)) < 1e-10 * (1 + np.max(np.abs(beta))):
            beta = new
            break
        beta = new
    if not np.all(np.isfinite(beta)) or np.max(np.abs(beta)) > 30:
        raise DataError("the GLM start diverges (|beta| > 30): the response may separate the "
                        "data completely (a level or a column value with all 0 or all 1)")
    return beta, int(n), float(const)


def _optimise(total, beta0: np.ndarray, opts: dict) -> tuple[np.ndarray, dict]:
    x0 = np.concatenate([[1.0], beta0])
    lower = np.concatenate([[0.0], np.full(len(beta0), -np.inf)])
    nfev = [0]
    best = [np.inf, x0]

    def f(x, grad=None):
        nfev[0] += 1
        v = total(float(x[0]), np.asarray(x[1:]))
        if v < best[0]:
            best[0], best[1] = v, np.array(x, dtype=float)
        return v if math.isfinite(v) else 1e300

    opt = nlopt.opt(nlopt.LN_BOBYQA, len(x0))
    opt.set_min_objective(f)
    opt.set_lower_bounds(lower)
    opt.set_initial_step(np.concatenate([[0.2], np.full(len(beta0), 0.1)]))
    opt.set_xtol_abs(opts.get("xtol_abs", 1e-8))
    opt.set_ftol_abs(opts.get("ftol_abs", 1e-8))
    opt.set_maxeval(int(opts.get("maxeval", 100_000)))
    try:
        x = opt.optimize(x0)
    except nlopt.RoundoffLimited:
        x = best[1]
    code = opt.last_optimize_result()
    x = _snap_to_boundary(f, np.asarray(x, float), lower, opts.get("ftol_abs", 1e-8))
    polished = False
    if opts.get("polish", True) and code > 0:
        x, polished = _newton_polish(f, x, lower)
    return np.asarray(x, float), {"optimizer": "nloptwrap (NLOPT_LN_BOBYQA)", "feval": nfev[0],
                                  "code": int(code), "converged": code in (1, 3, 4),
                                  "polished": polished}


def _hessian(f, x: np.ndarray, delta: float = 1e-4) -> np.ndarray:
    """Central finite-difference Hessian (lme4's ``deriv12`` step, ``delta = 1e-4``); a
    coordinate at its lower bound of 0 uses one-sided steps."""
    d = len(x)
    H = np.empty((d, d))
    f0 = f(x)
    h = np.full(d, delta)

    def at(*steps):
        v = x.copy()
        for i, s in steps:
            v[i] += s
        return f(v)
    shift = np.where((x - h < 0) & (np.arange(d) == 0), h, 0.0)  # keep theta >= 0
    for i in range(d):
        if shift[i]:
            H[i, i] = (at((i, 2 * h[i])) - 2 * at((i, h[i])) + f0) / h[i] ** 2
        else:
            H[i, i] = (at((i, h[i])) - 2 * f0 + at((i, -h[i]))) / h[i] ** 2
        for j in range(i):
            si, sj = (h[i], h[j])
            ci, cj = shift[i], shift[j]
            H[i, j] = H[j, i] = (at((i, si + ci), (j, sj + cj)) - at((i, si + ci), (j, -sj + cj))
                                 - at((i, -si + ci), (j, sj + cj))
                                 + at((i, -si + ci), (j, -sj + cj))) / (4 * si * sj)
    return H
