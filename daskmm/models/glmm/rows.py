"""Row-level quantities of a fitted GLMM, as lazy maps over the data's partitions: lme4's
``predict``, ``fitted``, ``residuals`` and ``simulate`` for ``glmerMod``, and DHARMa's
simulation-based scaled residuals with their tests.

The linear predictor is the shared :class:`~daskmm.models.shared.prediction.Predictor`'s (the same
encoding, labelling and new-level rule as the LMM's); the response is read as the fit read it
(:func:`daskmm.models.glmm.fit.encode_partition`: successes of ``cbind`` trials, a two-level
factor, a proportion with weights). Conventions, as lme4:

* ``fitted`` and ``predict(type = "response")``: the mean ``mu`` (the success probability for
  the binomial);
* ``residuals``: ``response`` ``y - mu`` (``y`` the proportion of successes for the binomial),
  ``pearson`` ``(y - mu) sqrt(w / V(mu))``, ``deviance`` ``sign(y - mu) sqrt(d)`` with the
  family's deviance contribution ``d`` (``w`` the binomial trials);
* ``simulate``: the binomial's number of successes (0/1 for a 0/1 response), counts for the
  Poisson and negative binomial, from new random effects for every level (lme4's default
  ``re.form = NA``) or from the conditional modes (``re.form = NULL``).

Random draws of partition ``i`` come from ``SeedSequence([seed, i])`` (new random effects from
``seed`` alone): reproducible for a seed and a partitioning, whatever the workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from daskmm.core.families import get_family
from daskmm.errors import DataError, ModelError
from daskmm.kernels import quantile_residuals as QR
from daskmm.models.glmm.encode import encode_partition
from daskmm.models.shared.prediction import RESIDUAL_TYPES, Predictor

SIMULATE_RE = ("unconditional", "conditional")
ROW_CHUNK = 20_000
"""Rows simulated at a time for the scaled residuals (``ROW_CHUNK x n`` doubles in memory)."""


@dataclass
class GlmmRows:
    """What a GLMM's row quantities need (picklable, data-free but for ``base.data``).

    Attributes
    ----------
    base : Predictor
        Spec, fixed effects over all the spec's columns, conditional modes, ``theta``, data.
    resp : daskmm.models.glmm.fit.Response
        How the response is read.
    family, link : str
    nb_size : float or None
        Negative binomial size.
    sigma : float
        The residual SD of a family with a dispersion (lme4's ``sigma``); 1 otherwise.
    """

    base: Predictor
    resp: object
    family: str
    link: str
    nb_size: float | None = None
    sigma: float = 1.0

    @property
    def fam(self):
        return get_family(self.family)

    def mean(self, eta: np.ndarray) -> np.ndarray:
        return self.fam.link(self.link).inverse(eta)

    # ------------------------------------------------------------ public, lazy
    def predict(self, newdata=None, kind: str = "response", re: bool = True,
                allow_new_levels: bool = False):
        """lme4's ``predict(fit, newdata, type =, re.form =, allow.new.levels =)``."""
        ddf = self.base.frame(newdata)
        return ddf.map_partitions(_predict_rows, self, kind, re, allow_new_levels,
                                  meta=pd.Series(dtype=float, name=kind))

    def residuals(self, type: str = "deviance"):
        """lme4's ``residuals(fit, type =)`` over the fitted rows (default ``deviance``, as
        lme4's for a GLMM)."""
        if type not in RESIDUAL_TYPES:
            raise ModelError(f"type={type!r}; allowed: {', '.join(RESIDUAL_TYPES)}")
        return self.base.frame(None).map_partitions(
            _residual_rows, self, type, meta=pd.Series(dtype=float, name="residual"))

    def residual_values(self, df: pd.DataFrame, type: str = "deviance") -> pd.Series:
        """:meth:`residuals` of the rows of a pandas frame in this process (NaN where a
        row was left out)."""
        if type not in RESIDUAL_TYPES:
            raise ModelError(f"type={type!r}; allowed: {', '.join(RESIDUAL_TYPES)}")
        return _residual_rows(df, self, type)

    def simulate(self, nsim: int = 1, seed: int = 0, re: str = "unconditional",
                 newdata=None):
        """lme4's ``simulate(fit, nsim, seed, re.form = NA | NULL)``: a lazy dask DataFrame
        ``sim_1 .. sim_nsim``."""
        import dask
        import dask.dataframe as dd
        sims = self._draws(nsim, seed, re)
        cols = [f"sim_{i + 1}" for i in range(nsim)]
        meta = pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
        parts = self.base.frame(newdata).to_delayed()
        out = [dask.delayed(_simulate_rows)(p, self, sims, nsim, seed, i)
               for i, p in enumerate(parts)]
        return dd.from_delayed(out, meta=meta, verify_meta=False)

    def _draws(self, nsim: int, seed: int, re: str):
        if nsim < 1:
            raise ModelError(f"nsim={nsim}; simulate needs at least 1 simulation")
        if re not in SIMULATE_RE:
            raise ModelError(f"re={re!r}; allowed: {', '.join(SIMULATE_RE)} (lme4's re.form "
                             "= NA and NULL)")
        return self.base.new_random_effects(nsim, seed) if re == "unconditional" else None

    # ------------------------------------------------------------ rows
    def rows(self, df: pd.DataFrame):
        """``(ok, enc, y, wt, offset)`` of a partition's usable rows (``y`` successes for the
        binomial, ``wt`` its trials; prior weights, ones without, for the other families)."""
        spec, resp = self.base.spec, self.resp
        cols = sorted(set(spec.used_columns)
                      | set(resp.trials.used_columns if resp.trials else []))
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise DataError(f"column(s) {', '.join(map(repr, missing))} the model uses are not "
                            f"in the data; available: {', '.join(map(str, df.columns))}")
        spec.check_new_levels(df)
        ok = df[cols].notna().all(axis=1).to_numpy()
        enc, _, y, wt, offset, _, _ = encode_partition(df.loc[ok], spec, resp, self.fam.code)
        return ok, enc, y, wt, offset

    def eta(self, enc, offset: np.ndarray, re: bool, modes=None, sim=None) -> np.ndarray:
        eta = enc.X @ self.base.beta + offset
        if re:
            eta = eta + self.base.random_part(enc, True, modes, sim)
        return eta


def _predict_rows(df: pd.DataFrame, rows: GlmmRows, kind: str, re: bool,
                  allow_new_levels: bool) -> pd.Series:
    ok, enc = rows.base.encode(df, need_response=False)
    eta = rows.base.linear(df.loc[ok], enc, re, allow_new_levels)
    out = np.full(len(df), np.nan)
    out[ok] = eta if kind == "link" else rows.mean(eta)
    return pd.Series(out, index=df.index, name=kind)


def _residual_rows(df: pd.DataFrame, rows: GlmmRows, type: str) -> pd.Series:
    ok, enc, y, wt, offset = rows.rows(df)
    mu = rows.mean(rows.eta(enc, offset, True))
    fam = rows.fam
    binom = rows.family == "binomial"
    yy = y / wt if binom else y
    w = wt  # the binomial's trials, or prior weights (ones without)
    r = yy - mu
    if type == "pearson":
        r = r * np.sqrt(w / fam.variance(mu, rows.nb_size))
    elif type == "deviance":
        r = np.sign(r) * np.sqrt(np.maximum(fam.unit_deviance(yy, mu, w, rows.nb_size), 0))
    out = np.full(len(df), np.nan)
    out[ok] = r
    return pd.Series(out, index=df.index, name="residual")


def _simulate_block(rows: GlmmRows, enc, offset, wt, sims, lo: int, hi: int, nsim: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Simulated responses of rows ``lo:hi`` (rows x nsim)."""
    fam = rows.fam
    n = hi - lo
    sub = _take(enc, lo, hi)
    w = wt[lo:hi]
    out = np.empty((n, nsim))
    if sims is None:
        mu = rows.mean(rows.eta(sub, offset[lo:hi], True))
        for i in range(nsim):
            out[:, i] = fam.sample(mu, w, rng, rows.nb_size, rows.sigma)
    else:
        fixed = sub.X @ rows.base.beta + offset[lo:hi]
        for i in range(nsim):
            mu = rows.mean(fixed + rows.base.random_part(sub, True, sims, i))
            out[:, i] = fam.sample(mu, w, rng, rows.nb_size, rows.sigma)
    return out


def _simulate_rows(df: pd.DataFrame, rows: GlmmRows, sims, nsim: int, seed: int,
                   part: int) -> pd.DataFrame:
    ok, enc, y, wt, offset = rows.rows(df)
    rng = np.random.default_rng(np.random.SeedSequence([seed, part]))
    out = np.full((len(df), nsim), np.nan)
    out[ok] = _simulate_block(rows, enc, offset, wt, sims, 0, len(y), nsim, rng)
    return pd.DataFrame(out, index=df.index, columns=[f"sim_{i + 1}" for i in range(nsim)])


class _Slice:
    """Rows ``lo:hi`` of an encoding (``X``, ``Z``, ``keys``, ``y``)."""

    def __init__(self, enc, lo: int, hi: int):
        self.X = enc.X[lo:hi]
        self.y = np.asarray(enc.y)[lo:hi]
        self.Z = {f: np.asarray(z)[lo:hi] for f, z in enc.Z.items()}
        self.keys = {f: np.asarray(k)[lo:hi] for f, k in enc.keys.items()}


def _take(enc, lo: int, hi: int):
    return enc if lo == 0 and hi == len(enc.y) else _Slice(enc, lo, hi)


# ------------------------------------------------------------------ DHARMa
def new_sums(nsim: int) -> dict:
    """Empty sums for :func:`add_sums`."""
    return {"n": 0, "obs_s": 0.0, "obs_ss": 0.0, "obs_zeros": 0, "sim_s": np.zeros(nsim),
            "sim_ss": np.zeros(nsim), "sim_zeros": np.zeros(nsim)}


def add_sums(acc: dict, S: np.ndarray, y: np.ndarray, fitted: np.ndarray) -> None:
    """Add rows to the sums behind DHARMa's dispersion and zero-inflation tests: ``S`` the
    simulated responses (rows x nsim), ``y`` the observed ones, ``fitted`` the population
    mean (DHARMa's ``fittedPredictedResponse``)."""
    s, ss = QR.spread_sums(S, fitted)
    o_s, o_ss = QR.spread_sums(np.asarray(y, float)[:, None], fitted)
    acc["n"] += len(y)
    acc["sim_s"] += s
    acc["sim_ss"] += ss
    acc["obs_s"] += float(o_s[0])
    acc["obs_ss"] += float(o_ss[0])
    acc["obs_zeros"] += int(np.sum(y == 0))
    acc["sim_zeros"] += np.sum(S == 0, axis=0)


def dharma_partition(df: pd.DataFrame, rows: GlmmRows, sims, nsim: int, seed: int,
                     part: int) -> tuple[pd.Series, dict]:
    """One partition's scaled residuals and the sums the simulation tests add up."""
    ok, enc, y, wt, offset = rows.rows(df)
    rng = np.random.default_rng(np.random.SeedSequence([seed, part]))
    n = len(y)
    resid = np.empty(n)
    fitted = rows.mean(enc.X @ rows.base.beta + offset)  # DHARMa: re.form = ~0
    acc = new_sums(nsim)
    for lo in range(0, n, ROW_CHUNK):
        hi = min(lo + ROW_CHUNK, n)
        S = _simulate_block(rows, enc, offset, wt, sims, lo, hi, nsim, rng)
        resid[lo:hi] = QR.pit_residuals(S, y[lo:hi], rng)
        add_sums(acc, S, y[lo:hi], fitted[lo:hi])
    out = np.full(len(df), np.nan)
    out[ok] = resid
    return pd.Series(out, index=df.index, name="scaled_residual"), acc


@dataclass
class DharmaResult:
    """DHARMa's ``simulateResiduals`` output: scaled residuals and the simulation tests.

    Attributes
    ----------
    residuals : pandas.Series
        One per row in the data's order (NaN for a row the fit did not use).
    nsim : int
    seed : int
    simulate_re : str
        ``conditional`` (DHARMa 0.5's default: the conditional modes, ``re.form = NULL``) or
        ``unconditional`` (new random effects, ``re.form = NA``).
    sums : dict
        The per-simulation sums behind the tests.
    """

    residuals: pd.Series
    nsim: int
    seed: int
    simulate_re: str
    sums: dict

    def test_uniformity(self) -> dict:
        """``testUniformity``: ``statistic`` (KS D), ``p_value``, ``n``."""
        return QR.ks_uniform(self.residuals.to_numpy())

    def test_dispersion(self, alternative: str = "two.sided") -> dict:
        """``testDispersion(type = "DHARMa")``: ``statistic`` (dispersion: the variance of
        ``observed - fitted`` over the mean of the simulated ones) and ``p_value``."""
        s = self.sums
        obs = float(QR.variance_from_sums(s["n"], np.array(s["obs_s"]),
                                          np.array(s["obs_ss"])))
        sim = QR.variance_from_sums(s["n"], s["sim_s"], s["sim_ss"])
        return {"statistic": obs / float(np.mean(sim)),
                "p_value": QR.generic_p(sim, obs, alternative), "alternative": alternative}

    def test_zero_inflation(self, alternative: str = "two.sided") -> dict:
        """``testZeroInflation``: ``statistic`` (observed over mean simulated zeros) and
        ``p_value``."""
        s = self.sums
        sim = np.asarray(s["sim_zeros"], float)
        obs = float(s["obs_zeros"])
        mean = float(np.mean(sim))
        return {"statistic": obs / mean if mean > 0 else float("nan"),
                "p_value": QR.generic_p(sim, obs, alternative), "alternative": alternative}

    def summary(self) -> dict:
        u = self.test_uniformity()
        d = self.test_dispersion()
        z = self.test_zero_inflation()
        return {"nsim": self.nsim, "seed": self.seed, "simulate_re": self.simulate_re,
                "n": int(u["n"]),
                "uniformity": {"statistic": u["statistic"], "p_value": u["p_value"]},
                "dispersion": {"statistic": d["statistic"], "p_value": d["p_value"]},
                "zero_inflation": {"statistic": z["statistic"], "p_value": z["p_value"]}}


def simulate_residuals(rows: GlmmRows, n: int = 250, seed: int = 123,
                       simulate_re: str = "conditional", client=None) -> DharmaResult:
    """DHARMa's ``simulateResiduals(fit, n, seed)``: ``n`` responses per row simulated from
    the fit, each row's observed response placed among them (PIT, randomised for counts).

    The work runs per partition (on the workers when ``client`` is given, else the current
    dask scheduler); only the residuals and a few sums per simulation come back.
    """
    import dask
    if n < 2:
        raise ModelError(f"n={n}; scaled residuals need at least 2 simulations (DHARMa's "
                         "default is 250)")
    sims = rows._draws(n, seed, simulate_re)
    parts = rows.base.frame(None).to_delayed()
    tasks = [dask.delayed(dharma_partition)(p, rows, sims, n, seed, i)
             for i, p in enumerate(parts)]
    if client is not None:
        got = client.gather(client.compute(tasks))
    else:
        got = dask.compute(*tasks)
    resid = pd.concat([g[0] for g in got])
    acc = new_sums(n)
    for _, a in got:
        for k, v in a.items():
            acc[k] = acc[k] + v
    return DharmaResult(resid, n, seed, simulate_re, acc)
