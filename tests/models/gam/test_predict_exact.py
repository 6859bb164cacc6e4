"""daskmm's GAM predictions against mgcv's ``predict.gam`` to 1e-8, with mgcv's coefficients.

A daskmm fit equals ``bam``'s only to about 1e-6, so fitted predictions compared at 1e-8 would
test the optimiser. Here mgcv's own ``coef(fit)`` and ``Vp`` (``vcov(fit)``) go through
daskmm's prediction code instead: for each case of ``tests/fixtures/gam/
predict_exact.json`` (made by ``make_predict.R``) the formula is fitted by daskmm on the same
data, which freezes the same bases (knots, sum-to-zero constraint, te reparametrisation), and

* daskmm's model matrix of the new rows (:func:`~daskmm.models.gam.predict.model_matrix`,
  what ``predict`` multiplies) equals mgcv's ``type = "lpmatrix"``, column by column, to
  1e-8 of each column's largest value;
* :class:`~daskmm.models.gam.predict.GamPredictor` built from mgcv's coefficients and
  covariance predicts as ``predict(fit, newdata, type = "link" | "response", se.fit =
  TRUE)``: fit to 1e-8 of the largest fitted value, se to 1e-8 of the largest se; both the
  lazy (dask) and the eager (pandas) path of :func:`~daskmm.models.gam.predict.predict_frame`.

The new rows include each covariate's range edges and points a tenth of the range outside it
(linear extrapolation for cr and ps, wrapping for cc).

``tp``: daskmm's thin plate range space is a rotation (and rescaling) of mgcv's, whose
eigen solver picks its own basis, so the columns are not comparable one by one. There the
map ``T`` with ``X_daskmm T = X_mgcv`` is solved per smooth on the first rows of the data
(``basis_lpmatrix``), checked on the new rows (``X_daskmm(new) T = lpmatrix`` to 1e-8), and
mgcv's coefficients enter daskmm's parametrisation as ``T coef`` and ``T Vp T'``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from daskmm.core.families import LINKS
from daskmm.models.gam.model import gam
from daskmm.models.gam.predict import GamPredictor, model_matrix, predict_frame
from tests.models.gam.helpers import FAMILY, GAM

REFS = json.loads((GAM / "predict_exact.json").read_text())
CASES = list(REFS)
RTOL = 1e-8


@dataclass
class Case:
    """One fixture case with daskmm's side of it."""

    ref: dict
    newdata: pd.DataFrame
    X: np.ndarray  # daskmm's model matrix of the new rows
    lp: np.ndarray  # mgcv's lpmatrix of the new rows
    T: np.ndarray  # mgcv's columns in daskmm's (identity but for tp)
    predictor: GamPredictor  # daskmm's spec with mgcv's coefficients and Vp


def _rotation(spec, ref: dict, data: pd.DataFrame) -> np.ndarray:
    """``T`` with ``X_daskmm T = X_mgcv``: per tp smooth by least squares on the data rows of
    ``basis_lpmatrix``, the identity for every other column."""
    p = spec.p
    T = np.eye(p)
    tp = [sl for s, sl in zip(spec.smooths, spec.slices()) if s.call.bs[0] == "tp"]
    if not tp:
        return T
    Xr, _ = model_matrix(spec, data.iloc[:ref["basis_rows"]])
    Lr = np.asarray(ref["basis_lpmatrix"])
    for sl in tp:
        T[sl, sl] = np.linalg.lstsq(Xr[:, sl], Lr[:, sl], rcond=None)[0]
    return T


def case(cid: str) -> Case:
    """Fit case ``cid`` with daskmm (its spec: the bases, constraints, coefficient layout)
    and put mgcv's coefficients and Vp into a :class:`GamPredictor` of that spec."""
    ref = REFS[cid]
    data = pd.read_csv(GAM / ref["data"])
    res = gam(ref["formula"], data, FAMILY[ref["family"]], link=ref["link"],
              factors=list(ref["factors"]), method=ref["method"])
    spec = res.spec
    assert spec.coef_names() == ref["coef_names"]
    newdata = pd.DataFrame(ref["newdata"])
    X, off = model_matrix(spec, newdata)
    assert not off.any()
    T = _rotation(spec, ref, data)
    coef = T @ np.asarray(ref["coef"])
    Vp = T @ np.asarray(ref["Vp"]) @ T.T
    pred = GamPredictor(spec, coef, Vp, res.family, res.link)
    return Case(ref, newdata, X, np.asarray(ref["lpmatrix"]), T, pred)


def _max_rel(ours: np.ndarray, theirs: np.ndarray) -> float:
    """``max |ours - theirs|`` relative to ``max |theirs|``."""
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def check_model_matrix(c: Case) -> None:
    """daskmm's columns of the new rows are mgcv's ``type = "lpmatrix"`` (``tp``: after the
    map ``T`` found on other rows), each column to 1e-8 of its largest value."""
    assert c.X.shape == c.lp.shape
    ours = c.X @ c.T
    scale = np.abs(c.lp).max(axis=0)
    scale = np.where(scale > 0, scale, np.abs(c.lp).max())  # an all-zero column (by level)
    err = np.abs(ours - c.lp) / scale
    assert err.max() < RTOL, ("lpmatrix", np.unravel_index(err.argmax(), err.shape), err.max())


def check_predict(c: Case, kind: str) -> None:
    """``predict.gam(fit, newdata, type = kind, se.fit = TRUE)`` from daskmm's predict code
    fed mgcv's coefficients and Vp: lazily (``GamPredictor.predict``, as ``daskmm
    predict``) and eagerly (``predict_frame`` of a pandas frame, as ``GamResult.predict``)."""
    fit, se = np.asarray(c.ref[f"{kind}_fit"]), np.asarray(c.ref[f"{kind}_se"])
    lazy = c.predictor.predict(c.newdata, kind=kind, se_fit=True).compute()
    eager = predict_frame(c.predictor, c.newdata, type=kind, se_fit=True)
    plain = c.predictor.predict(c.newdata, kind=kind).compute().to_numpy()
    for name, out in (("lazy", lazy), ("eager", eager)):
        assert list(out.columns) == ["fit", "se_fit"]
        err = _max_rel(out["fit"].to_numpy(), fit)
        assert err < RTOL, (kind, name, "fit", err)
        err = _max_rel(out["se_fit"].to_numpy(), se)
        assert err < RTOL, (kind, name, "se", err)
    assert _max_rel(plain, fit) < RTOL, (kind, "without se")


@pytest.mark.parametrize("cid", CASES)
def test_predict_exact(cid):
    """One case: the model matrix, then link and response predictions with se (one daskmm
    fit per case, so that ``-n 2`` does not fit a case twice)."""
    c = case(cid)
    check_model_matrix(c)
    for kind in ("link", "response"):
        check_predict(c, kind)


@pytest.mark.parametrize("cid", CASES)
def test_by_hand_from_lpmatrix(cid):
    """The fixture itself: mgcv's fit and se are its lpmatrix times ``coef`` and
    ``sqrt(rowSums((X Vp) * X))``, on the response scale through the link's inverse and
    ``|dmu/deta|`` (so the tolerance above compares like with like), and a non-identity link
    makes the response scale a different check from the link scale."""
    ref = REFS[cid]
    L, b, Vp = np.asarray(ref["lpmatrix"]), np.asarray(ref["coef"]), np.asarray(ref["Vp"])
    eta = L @ b
    se = np.sqrt(np.einsum("ij,jk,ik->i", L, Vp, L))
    link = LINKS[ref["link"]]
    assert _max_rel(eta, np.asarray(ref["link_fit"])) < RTOL
    assert _max_rel(se, np.asarray(ref["link_se"])) < RTOL
    assert _max_rel(link.inverse(eta), np.asarray(ref["response_fit"])) < RTOL
    assert _max_rel(se * np.abs(link.mu_eta(eta)), np.asarray(ref["response_se"])) < RTOL
    if ref["link"] != "identity":
        assert _max_rel(np.asarray(ref["response_fit"]), eta) > 1e-2
