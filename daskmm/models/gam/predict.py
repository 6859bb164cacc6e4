"""Predictions from a fitted GAM, as mgcv's ``predict.gam``: the model matrix of new rows from
the frozen :class:`~daskmm.models.gam.spec.GamSpec`, times the coefficients; standard errors from
``Vp``. A dask DataFrame is predicted lazily, partition by partition, on the workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from daskmm.core.families import GAMMA_FAMILY, LINKS, get_family
from daskmm.data.io import read_data
from daskmm.errors import ColumnNotFoundError, DataError, ModelError

TYPES = ("link", "response", "terms")


def _complete(spec, df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a placeholder response and weights when absent (predictions do not read
    them); a missing covariate value is an error, not a silently dropped row."""
    df = df.copy()
    resp = spec.param._response_column
    need = [c for c in spec.columns if c != resp and c != spec.param.weights]
    for c in need:
        if c not in df.columns:
            raise ColumnNotFoundError(f"column {c!r} the model uses is not in the new data; "
                                      f"available columns: {', '.join(map(str, df.columns))}")
        if df[c].isna().any():
            raise DataError(f"column {c!r} of the new data has {int(df[c].isna().sum())} "
                            "missing value(s); predictions need every covariate")
    if resp and resp not in df.columns:
        df[resp] = 1.0
    if spec.param.weights and spec.param.weights not in df.columns:
        df[spec.param.weights] = 1.0
    return df


def _unseen(values: pd.Series, levels) -> list[str]:
    """The distinct non-missing values of ``values`` (as text) not among ``levels``."""
    seen = {str(v) for v in levels}
    return [v for v in pd.unique(values[values.notna()].astype(str)) if v not in seen]


def _check_by_levels(spec, df: pd.DataFrame) -> None:
    """A level of a ``by`` factor the fit did not see has no smooth: refused, naming it
    (mgcv: "factor levels ... not in original fit", then an error)."""
    for s in spec.smooths:
        by = s.call.by
        if by is None or by not in s.levels or by not in df.columns:
            continue
        new = _unseen(df[by], s.levels[by])
        if new:
            raise DataError(f"column {by!r} (the by factor of {s.call.text or s.label}) has "
                            f"level(s) {', '.join(map(repr, new[:5]))} in the new data that "
                            "the fit did not see, and so no smooth for them; remove those rows "
                            "or give them a level the fit saw")


def _check_re_levels(spec, df: pd.DataFrame) -> None:
    """A level of an ``re`` smooth's factor the fit did not see is refused, naming it, as
    ``predict.gam`` stops (\"... not in original fit\"); with ``allow_new_levels`` such rows
    are predicted at the population level (the term's contribution 0)."""
    for s in spec.smooths:
        if not s.random:
            continue
        f = s.margins[0].factor
        if f not in df.columns:
            continue
        new = _unseen(df[f], s.levels[f])
        if new:
            raise DataError(f"column {f!r} (the factor of {s.call.text or s.label}) has "
                            f"level(s) {', '.join(map(repr, new[:5]))}"
                            f"{' ...' if len(new) > 5 else ''} in the new data that the fit "
                            "did not see (mgcv's predict.gam stops); pass "
                            "allow_new_levels=True (daskmm predict --allow-new-levels) to "
                            "predict them at the population level (that term 0)")


def model_matrix(spec, df: pd.DataFrame, allow_new_levels: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(X, offset)`` of new rows (``mgcv``'s ``type = "lpmatrix"``; the dense columns only
    when ``re`` terms are kept per level); a level of an ``re`` smooth the fit did not see
    has that term's columns 0, or is refused unless ``allow_new_levels``."""
    df = _complete(spec, df)
    _check_by_levels(spec, df)
    if not allow_new_levels:
        _check_re_levels(spec, df)
    spec.param.check_new_levels(df)
    _, X, _, _ = spec.design(df, exact=True)
    return X, spec.offset(df)


def _level_part(spec, result, df: pd.DataFrame, X: np.ndarray, se: bool):
    """The blocked terms' contributions: per term ``Zv_t b_t[codes]``, and the pieces of the
    standard errors (``u = sum_t Zv_t W_l,t``; ``z' M_l^-1 z``)."""
    frame, _ = spec.prepare(_complete(spec, df))
    codes, Zv = spec.level_columns(frame)
    pd_ = spec.p_dense
    q = Zv.shape[1]
    b = result.coef[pd_:].reshape(q, -1).T
    ok = codes >= 0
    c = np.where(ok, codes, 0)
    Zv = Zv * ok[:, None]
    terms = Zv * b[c]
    if not se:
        return terms, None, None, None
    vscale, Minv, W = result.level_cov
    u = np.einsum("nt,nti->ni", Zv, W[c])
    zmz = np.einsum("nt,nts,ns->n", Zv, Minv[c], Zv) * vscale
    var_t = np.stack([vscale * (Minv[c, t, t] + np.einsum(
        "ni,ij,nj->n", W[c, t, :], result.Vp / vscale, W[c, t, :])) for t in range(q)],
        axis=1) * Zv ** 2
    return terms, u, zmz, var_t


def _one(df: pd.DataFrame, result, type: str, se_fit: bool, allow_new_levels: bool = True):

    spec = result.spec
    X, off = model_matrix(spec, df, allow_new_levels)
    pd_ = spec.p_dense
    beta, Vp = result.coef[:pd_], result.Vp
    blocked = bool(spec.blocked)
    if blocked:
        lev, u, zmz, var_t = _level_part(spec, result, df, X, se_fit or type == "terms")
    if type == "terms":
        cols = {}
        ses = {}
        names = spec.param.fixef_names
        for j, nm in enumerate(names):
            if nm == "(Intercept)":
                continue
            cols[nm] = X[:, j] * beta[j]
            ses[nm] = np.abs(X[:, j]) * np.sqrt(Vp[j, j])
        for i, (s, sl) in enumerate(zip(spec.smooths, spec.slices())):
            if s.blocked:
                t = spec.blocked.index(i)
                cols[s.label] = lev[:, t]
                ses[s.label] = np.sqrt(var_t[:, t])
                continue
            Xs = X[:, sl]
            cols[s.label] = Xs @ beta[sl]
            ses[s.label] = np.sqrt(np.einsum("ij,jk,ik->i", Xs, Vp[sl, sl], Xs))
        fit = pd.DataFrame(cols, index=df.index)
        return (fit, pd.DataFrame(ses, index=df.index)) if se_fit else fit
    eta = X @ beta + off
    se = None
    if blocked:
        eta = eta + lev.sum(axis=1)
        if se_fit:
            D = X - u
            se = np.sqrt(np.einsum("ij,jk,ik->i", D, Vp, D) + zmz)
    elif se_fit:
        se = np.sqrt(np.einsum("ij,jk,ik->i", X, Vp, X))
    if type == "response":
        link = LINKS[result.link]
        mu = link.inverse(eta)
        if se_fit:
            se = se * np.abs(link.mu_eta(eta))
        eta = mu
    if se_fit:
        return pd.DataFrame({"fit": eta, "se_fit": se}, index=df.index)
    return pd.Series(eta, index=df.index, name="fit")


def predict_frame(result, newdata, type: str = "link", se_fit: bool = False,
                  allow_new_levels: bool = False):
    """Predictions at ``newdata`` (pandas or dask DataFrame, or a path); a level of an ``re``
    smooth's factor the fit did not see is refused unless ``allow_new_levels``."""
    if type not in TYPES:
        raise ModelError(f"type={type!r}; allowed: {', '.join(map(repr, TYPES))}")
    if result.spec is None:
        raise ModelError("this result was read back from its document, without the model "
                         "spec; predictions need the fitted result object")
    if isinstance(newdata, pd.DataFrame):
        out = _one(newdata, result, type, se_fit, allow_new_levels)
        if type == "terms" and se_fit:
            return out
        return out.to_numpy() if isinstance(out, pd.Series) else out
    ddf = newdata if hasattr(newdata, "map_partitions") else read_data(newdata)
    if se_fit and type != "terms":
        meta = pd.DataFrame({"fit": pd.Series([], dtype=float),
                             "se_fit": pd.Series([], dtype=float)})
    elif type == "terms" or se_fit:
        sample = _one(ddf._meta_nonempty, result, type, se_fit, True)
        meta = sample[0].iloc[:0] if isinstance(sample, tuple) else sample.iloc[:0]
        if isinstance(sample, tuple):
            raise ModelError("type='terms' with se_fit on a dask DataFrame: predict each "
                             "separately")
    else:
        meta = pd.Series([], dtype=float, name="fit")
    return ddf.map_partitions(_one, result, type, se_fit, allow_new_levels, meta=meta)


@dataclass
class GamPredictor:
    """What predictions from a fitted GAM need, without the data: written as a fit
    folder's ``model.pkl`` and read back by ``daskmm predict``
    (:func:`daskmm.models.shared.prediction.load_model`)."""

    spec: object
    coef: np.ndarray
    Vp: np.ndarray
    family: str
    link: str
    level_cov: tuple | None = None

    @classmethod
    def of(cls, result) -> GamPredictor:
        return cls(result.spec, result.coef, result.Vp, result.family, result.link,
                   getattr(result, "level_cov", None))

    def predict(self, newdata, re: bool = True, allow_new_levels: bool = False,
                kind: str = "response", se_fit: bool = False):
        """``predict.gam(fit, newdata, type = kind, se.fit = se_fit)`` over ``newdata`` (a
        path, pandas or dask frame), lazily: a Series ``fit``, or with ``se_fit`` a frame
        ``fit, se_fit``. ``re=False`` is refused (a GAM's random effects are smooths: use the
        formula without them)."""
        if not re:
            raise ModelError("leaving out the random effects (--no-re) applies to LMMs and "
                             "GLMMs; a GAM's 're' smooths are terms of its formula")
        if kind not in ("link", "response"):
            raise ModelError(f"type={kind!r}; allowed: 'link', 'response'")
        if isinstance(newdata, pd.DataFrame):  # lazy like every other input
            import dask.dataframe as dd
            newdata = dd.from_pandas(newdata, npartitions=1)
        return predict_frame(self, newdata, type=kind, se_fit=se_fit,
                             allow_new_levels=allow_new_levels)


def _in_input_order(df: pd.DataFrame, spec, values_of) -> np.ndarray:
    """``values_of(frame)`` for the complete rows ``frame`` of ``df``, placed at their input
    rows; ``NaN`` where the fit drops a row (R's ``na.exclude``)."""
    frame, _ = spec.prepare(df)
    out = np.full(len(df), np.nan)
    if len(frame):
        vals = values_of(frame)
        pos = df.index.get_indexer(frame.index) if df.index.is_unique else None
        if pos is None or (pos < 0).any():
            keep = np.zeros(len(df), dtype=bool)
            keep[np.flatnonzero(spec.param.prepare(df.reset_index(drop=True))[0].index)] = True
            out[keep] = vals
        else:
            out[pos] = vals
    return out


def _fitted_part(df: pd.DataFrame, result) -> pd.DataFrame:
    return pd.DataFrame({"fitted": _in_input_order(
        df, result.spec, lambda frame: _one(frame, result, "response", False).to_numpy())})


def fitted_frame(result, data) -> pd.DataFrame:
    """Fitted values (response scale) of every input row, in input order: ``NaN`` for rows
    the fit dropped for a missing value (as R's ``na.exclude``). Returns a pandas frame for
    a pandas input, else a lazy dask frame."""
    if isinstance(data, pd.DataFrame):
        return _fitted_part(data, result)
    ddf = data if hasattr(data, "map_partitions") else read_data(data)
    return ddf.map_partitions(_fitted_part, result,
                              meta=pd.DataFrame({"fitted": pd.Series([], dtype=float)}))


RESIDUAL_TYPES = ("deviance", "pearson", "working", "response")


def _family(result):
    return GAMMA_FAMILY if result.family == "gamma" else get_family(result.family)


def residual_values(result, y: np.ndarray, mu: np.ndarray, eta: np.ndarray,
                    w: np.ndarray | None, type: str) -> np.ndarray:
    """mgcv's ``residuals()`` of a ``bam`` fit from the response ``y`` (offset included),
    the fitted mean ``mu``, the linear predictor ``eta`` and the prior weights ``w``:
    ``deviance`` (the signed root of each row's deviance), ``pearson`` (``(y - mu) sqrt(w /
    V(mu))``), ``response`` (``y - mu``) and ``working``, which for a ``bam`` fit is the
    deviance residual again (``bam`` keeps deviance residuals in ``fit$residuals``, which
    ``residuals(type = "working")`` returns; a ``gam()`` fit would give ``(y - mu) / (d mu
    / d eta)``). daskmm answers as ``bam``."""
    fam = _family(result)
    wt = np.ones(len(y)) if w is None else w
    r = y - mu
    if type == "response":
        return r
    if type == "pearson":
        return r * np.sqrt(wt / fam.variance(mu, result.theta))
    d = fam.unit_deviance(y, mu, wt, result.theta)
    return np.sign(r) * np.sqrt(np.maximum(d, 0.0))


def _residual_part(df: pd.DataFrame, result, type: str) -> pd.DataFrame:
    spec = result.spec

    def of(frame: pd.DataFrame) -> np.ndarray:
        eta = _one(frame, result, "link", False).to_numpy()
        y, _, w, _ = spec.design(frame, exact=True)
        return residual_values(result, y + spec.offset(frame), LINKS[result.link].inverse(eta),
                               eta, w, type)

    return pd.DataFrame({"residual": _in_input_order(df, spec, of)})


def residual_frame(result, data, type: str = "deviance") -> pd.DataFrame:
    """mgcv's ``residuals(fit, type)`` for every input row, in input order (``NaN`` for rows
    the fit dropped). A pandas frame for a pandas input, else a lazy dask frame."""
    if type not in RESIDUAL_TYPES:
        raise ModelError(f"type={type!r}; allowed: {', '.join(RESIDUAL_TYPES)}")
    if result.spec is None:
        raise ModelError("this result was read back from its document, without the model "
                         "spec; residuals need the fitted result object")
    if isinstance(data, pd.DataFrame):
        return _residual_part(data, result, type)
    ddf = data if hasattr(data, "map_partitions") else read_data(data)
    return ddf.map_partitions(_residual_part, result, type,
                              meta=pd.DataFrame({"residual": pd.Series([], dtype=float)}))
