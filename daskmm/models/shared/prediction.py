"""Row-level quantities of a fitted mixed model, as lazy maps over the data's partitions:
predictions, fitted values, residuals and simulated responses (lme4's ``predict``,
``fitted``, ``residuals`` and ``simulate``).

A :class:`Predictor` holds what a row needs: the frozen model spec (to encode new rows exactly
as the fitted ones), the fixed effects (zero for an aliased column) and the conditional modes
per grouping factor. It pickles, so a fit's directory keeps one (``model.pkl``) and ``daskmm
predict`` uses it without the original data or a refit.

Rows with a missing value in a column the model uses get NaN (lme4's ``na.exclude``); the
result keeps the input's index and order.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

import daskmm
from daskmm.core.reterm import lambdas as term_lambdas
from daskmm.data.source import Source
from daskmm.errors import DataError, ModelError
from daskmm.formula.parse import identifiers
from daskmm.results.rformat import quantile7

log = logging.getLogger(__name__)

RESIDUAL_TYPES = ("response", "pearson", "deviance")


@dataclass
class Predictor:
    """What predicting a row needs (picklable, data-free).

    Attributes
    ----------
    spec : ModelSpec
        The frozen model spec.
    beta : ndarray
        Fixed effects over all of the spec's columns (0 for an aliased one).
    tables : dict
        Factor -> ``(levels, b)``: the conditional modes, one row per level.
    sigma : float
        Residual standard deviation (LMM; 1 for a GLMM).
    theta : ndarray
        Relative covariance parameters (for simulating new random effects).
    data : Source, path, frame or None
        The fitted data for ``fitted``/``residuals`` (the fit's :class:`Source`); None when
        unknown (a saved model).
    npartitions : int or None
    """

    spec: object
    beta: np.ndarray
    tables: dict
    sigma: float = 1.0
    theta: np.ndarray = field(default_factory=lambda: np.zeros(0))
    data: object = None
    npartitions: int | None = None

    # ------------------------------------------------------------ public, lazy
    def frame(self, newdata=None):
        """The rows to work on, as a dask DataFrame (the fitted ones from the fit's
        :class:`~daskmm.data.source.Source`, opened once)."""
        src = self.data if newdata is None else newdata
        if src is None:
            raise ModelError("this result has no data attached; pass newdata")
        return Source.open(src).frame(self.npartitions)

    def predict(self, newdata=None, re: bool = True, allow_new_levels: bool = False):
        """``predict(fit, newdata, re.form = if (re) NULL else NA, allow.new.levels =)``: a
        lazy dask Series in the rows' order."""
        ddf = self.frame(newdata)
        return ddf.map_partitions(_predict_rows, self, re, allow_new_levels,
                                  meta=pd.Series(dtype=float, name="fit"))

    def residuals(self, type: str = "response", scaled: bool = False):
        """``residuals(fit, type =, scaled =)`` over the fitted rows (lazy)."""
        if type not in RESIDUAL_TYPES:
            raise ModelError(f"type={type!r}; allowed: {', '.join(RESIDUAL_TYPES)}")
        ddf = self.frame(None)
        return ddf.map_partitions(_residual_rows, self, type, scaled,
                                  meta=pd.Series(dtype=float, name="residual"))

    def residual_values(self, df: pd.DataFrame, type: str = "response",
                        scaled: bool = False) -> pd.Series:
        """:meth:`residuals` of a pandas frame held here, computed now (no dask)."""
        if type not in RESIDUAL_TYPES:
            raise ModelError(f"type={type!r}; allowed: {', '.join(RESIDUAL_TYPES)}")
        return _residual_rows(df, self, type, scaled)

    def simulate(self, nsim: int = 1, seed: int = 0, newdata=None):
        """``simulate(fit, nsim, seed)`` for an LMM: new random effects for every level and
        new residuals; a lazy dask DataFrame ``sim_1 .. sim_nsim``. The random effects come
        from ``seed`` alone; the residuals of partition ``i`` from ``SeedSequence([seed,
        i])``, so the draws depend on the partitioning of the data (not on the workers)."""
        if nsim < 1:
            raise ModelError(f"nsim={nsim}; simulate needs at least 1 simulation")
        sims = self.new_random_effects(nsim, seed)
        ddf = self.frame(newdata)
        cols = [f"sim_{i + 1}" for i in range(nsim)]
        meta = pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
        parts = ddf.to_delayed()
        import dask
        import dask.dataframe as dd
        out = [dask.delayed(_simulate_rows)(p, self, sims, nsim, seed, i)
               for i, p in enumerate(parts)]
        return dd.from_delayed(out, meta=meta, verify_meta=False)

    def new_random_effects(self, nsim: int, seed: int) -> dict:
        """Factor -> ``(levels, b)``, ``b`` of shape ``(nsim, levels, q)``: random effects
        drawn afresh for every level (``b = sigma Lambda u``, ``u ~ N(0, I)``), from
        ``SeedSequence([seed, 2^30])``."""
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1 << 30]))
        lam = term_lambdas(self.spec.terms, self.spec.factors, self.theta)
        sims = {}
        for f, (levels, _) in self.tables.items():
            L = lam[f]
            u = rng.standard_normal((nsim, len(levels), L.shape[0]))
            sims[f] = (levels, self.sigma * u @ L.T)
        return sims

    # ------------------------------------------------------------ rows
    def encode(self, df: pd.DataFrame, need_response: bool):
        """``(ok, enc)``: the rows the model can use and their encoding."""
        spec = self.spec
        df = df.copy()
        if not need_response:
            # a placeholder of ones: the offset, if any, is recovered as placeholder minus
            # the encoded response, so its value does not matter
            for col in identifiers(spec.formula.response) | ({spec.weights} if spec.weights
                                                                 else set()):
                df[col] = 1.0
        missing = [c for c in spec.used_columns if c not in df.columns]
        if missing:
            raise DataError(f"column(s) {', '.join(map(repr, missing))} the model uses are not "
                            f"in the data; available: {', '.join(map(str, df.columns))}")
        spec.check_new_levels(df)
        ok = df[spec.used_columns].notna().all(axis=1).to_numpy()
        return ok, spec.encode(df.loc[ok])

    def linear(self, sub: pd.DataFrame, enc, re: bool, allow_new_levels: bool,
               modes: dict | None = None, sim: int | None = None) -> np.ndarray:
        """``X beta`` (plus the offset) plus ``Z b`` for the encoded rows."""
        spec = self.spec
        eta = enc.X @ self.beta
        if spec._offset_specs and spec.formula.response in sub.columns:
            eta = eta + (sub[spec.formula.response].to_numpy(dtype=float) - enc.y)
        if not re:
            return eta
        return eta + self.random_part(enc, allow_new_levels, modes, sim)

    def random_part(self, enc, allow_new_levels: bool, modes: dict | None = None,
                    sim: int | None = None) -> np.ndarray:
        """``Z b`` for the encoded rows (``b = 0`` for a new level when
        ``allow_new_levels``; otherwise a new level raises :class:`DataError`). ``modes``
        replaces the conditional modes (``sim``: which of its stacked draws)."""
        spec = self.spec
        eta = np.zeros(len(enc.y))
        tables = modes if modes is not None else self.tables
        for f in spec.factors:
            if f.name not in tables:
                continue
            levels, b = tables[f.name]
            if sim is not None:
                b = b[sim]
            # label the distinct keys only (a Python call per key), then map the rows
            codes, uniq = pd.factorize(enc.keys[f.name])
            labels = np.asarray(f.label(uniq), dtype=object)
            where = pd.Index(levels).get_indexer(labels)
            idx = where[codes] if len(codes) else np.zeros(0, dtype=np.intp)
            if not allow_new_levels and np.any(where < 0):
                new = labels[where < 0]
                raise DataError(f"new level(s) of {f.name!r} in the data: "
                                f"{', '.join(map(repr, new[:5].tolist()))}"
                                f"{' ...' if len(new) > 5 else ''}; pass "
                                "allow_new_levels=True (daskmm predict --allow-new-levels) "
                                "to predict them at the population level (random effect 0)")
            bb = np.where(idx[:, None] >= 0, b[np.maximum(idx, 0)], 0.0)
            eta = eta + np.einsum("ij,ij->i", enc.Z[f.name], bb)
        return eta


def _predict_rows(df: pd.DataFrame, pred: Predictor, re: bool,
                  allow_new_levels: bool) -> pd.Series:
    ok, enc = pred.encode(df, need_response=False)
    out = np.full(len(df), np.nan)
    out[ok] = pred.linear(df.loc[ok], enc, re, allow_new_levels)
    return pd.Series(out, index=df.index, name="fit")


def _residual_rows(df: pd.DataFrame, pred: Predictor, type: str, scaled: bool) -> pd.Series:
    ok, enc = pred.encode(df, need_response=True)
    sub = df.loc[ok]
    eta = pred.linear(sub, enc, True, True)
    if pred.spec._offset_specs and pred.spec.formula.response in sub.columns:
        mu_minus = eta - (sub[pred.spec.formula.response].to_numpy(dtype=float) - enc.y)
    else:
        mu_minus = eta
    r = enc.y - mu_minus  # the offset cancels: y - mu
    if type in ("pearson", "deviance") and enc.w is not None:
        r = r * np.sqrt(enc.w)
    if scaled:
        r = r / pred.sigma
    out = np.full(len(df), np.nan)
    out[ok] = r
    return pd.Series(out, index=df.index, name="residual")


def _simulate_rows(df: pd.DataFrame, pred: Predictor, sims: dict, nsim: int, seed: int,
                   part: int) -> pd.DataFrame:
    ok, enc = pred.encode(df, need_response=False)
    sub = df.loc[ok]
    rng = np.random.default_rng(np.random.SeedSequence([seed, part]))
    out = np.full((len(df), nsim), np.nan)
    w = enc.w if enc.w is not None else None
    for i in range(nsim):
        mu = pred.linear(sub, enc, True, True, modes=sims, sim=i)
        e = rng.standard_normal(len(mu)) * pred.sigma
        if w is not None:
            e = e / np.sqrt(w)
        out[ok, i] = mu + e
    return pd.DataFrame(out, index=df.index, columns=[f"sim_{i + 1}" for i in range(nsim)])


def residual_quantiles(values) -> dict:
    """lme4's ``Scaled residuals:`` block: ``Min, 1Q, Median, 3Q, Max`` of the finite
    values (R's ``quantile``, type 7, with R's arithmetic), exactly: of an array in this
    process, or of a lazy dask Series over the workers' partitions without gathering it
    (:func:`daskmm.distributed.order_stats.quantiles`)."""
    if hasattr(values, "to_delayed"):
        from daskmm.distributed.order_stats import quantiles
        q = quantiles(values)
    else:
        q = quantile7(np.asarray(values, float))
    return dict(zip(["Min", "1Q", "Median", "3Q", "Max"], (float(x) for x in q)))


def quantiles_or_none(values) -> dict | None:
    """:func:`residual_quantiles`, or None (logged) when the rows cannot be read any more: a
    lazy Series whose cluster has been closed."""
    try:
        return residual_quantiles(values)
    except Exception as exc:  # a closed client, a worker gone: the summary goes without
        log.warning("the scaled residuals were not computed (%s: %s); the summary leaves "
                    "them out", type(exc).__name__, exc)
        return None


MODEL_FILE = "model.pkl"
_MODEL_TAG = "daskmm-model-1"
MOVED = {"daskmm.prediction": "daskmm.models.shared.prediction",
         "daskmm.problem": "daskmm.models.shared.structure",
         "daskmm.glmm_rows": "daskmm.models.glmm.rows", "daskmm.glmm": "daskmm.models.glmm.fit",
         "daskmm.lmm": "daskmm.models.lmm.fit", "daskmm.reterm": "daskmm.core.reterm",
         "daskmm.families": "daskmm.core.families", "daskmm.optimizer": "daskmm.core.optimizer",
         "daskmm.execution": "daskmm.distributed.execution",
         "daskmm.results.lmm_result": "daskmm.models.lmm.result",
         "daskmm.results.glmm_result": "daskmm.models.glmm.result",
         "daskmm.results.gam_result": "daskmm.models.gam.result",
         "daskmm.inference": "daskmm.models.lmm.inference", "daskmm.gam": "daskmm.models.gam",
         "daskmm.gwas": "daskmm.models.gwas"}
"""Where the classes of a ``model.pkl`` written before the model-core layout live now (the
file's format is unchanged: its pickled classes moved)."""


def _moved(module: str) -> str:
    for old, new in MOVED.items():
        if module == old or module.startswith(old + "."):
            return new + module[len(old):]
    return module


class _Unpickler(pickle.Unpickler):
    """Reads a ``model.pkl`` of this version, also one written before the classes moved."""

    def find_class(self, module, name):
        return super().find_class(_moved(module), name)


def save_model(pred, folder) -> None:
    """Write ``folder/model.pkl``: the predictor (an LMM's :class:`Predictor`, a GLMM's
    :class:`~daskmm.models.glmm.rows.GlmmRows`, a GAM's
    :class:`~daskmm.models.gam.predict.GamPredictor`) without its data (a pickle of our own
    classes, read back by the same daskmm version)."""
    import dataclasses
    from pathlib import Path

    if isinstance(pred, Predictor):
        bare = dataclasses.replace(pred, data=None, npartitions=None)
    elif hasattr(pred, "base"):
        bare = dataclasses.replace(pred, base=dataclasses.replace(pred.base, data=None,
                                                                  npartitions=None))
    else:  # a GAM's predictor holds no data
        bare = pred
    with open(Path(folder) / MODEL_FILE, "wb") as fh:
        pickle.dump({"tag": _MODEL_TAG, "daskmm": daskmm.__version__, "predictor": bare}, fh,
                    protocol=pickle.HIGHEST_PROTOCOL)


def load_model(folder):
    """The predictor of a fit directory (``daskmm fit --out DIR``; an LMM's, a GLMM's or a
    GAM's), to predict from new data without refitting: ``load_model(DIR).predict(newdata)``
    (a GLMM's and a GAM's on the response scale)."""
    from pathlib import Path

    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise DataError(f"{str(folder)!r} has no {MODEL_FILE}: give the folder of a daskmm "
                        "fit (daskmm fit --out DIR)")
    try:
        with open(path, "rb") as fh:
            doc = _Unpickler(fh).load()
    except Exception as exc:
        raise DataError(f"cannot read {str(path)!r} ({type(exc).__name__}: {exc}); refit with "
                        f"this daskmm ({daskmm.__version__})") from exc
    if not isinstance(doc, dict) or doc.get("tag") != _MODEL_TAG:
        raise DataError(f"{str(path)!r} is not a daskmm model file")
    if doc.get("daskmm") != daskmm.__version__:
        raise DataError(f"{str(path)!r} was written by daskmm {doc.get('daskmm')}; this is "
                        f"{daskmm.__version__}: refit with this version")
    return doc["predictor"]
