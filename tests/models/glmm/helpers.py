"""Shared by the GLMM tests: glmer fits made in tests/fixtures/glmm and the document check at
the conformance README's tolerances."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special

from daskmm.models.glmm.fit import glmm

LOCAL = Path(__file__).resolve().parents[2] / "fixtures" / "glmm"
"""glmer fits made here by ``fixtures/glmm/make_fixtures.R`` (tolPwrss = 1e-12)."""
LOCAL_FIXTURES = ["crossed_binomial", "slopes_poisson", "nested_binomial_cbind",
                  "binary_factor_response", "cbpp_laplace_tight", "nb2_glmernb"]


def load_local(fid: str) -> dict:
    fx = json.loads((LOCAL / "fits" / f"{fid}.json").read_text())
    fx["data_path"] = str(LOCAL / fx["data"])
    fx["ranef_path"] = str(LOCAL / fx["ranef"])
    return fx


def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def check_document(doc: dict, ranef: pd.DataFrame, fx: dict) -> None:
    """A GLMM result document and ranef table against a glmer fit, at the conformance
    README's tolerances: objective, logLik, AIC, BIC 1e-6; fixed effects 1e-4; theta, SE,
    vcov, variance components 1e-3; conditional modes and SDs 1e-3 relative to the larger of
    the value and the term's SD."""
    assert doc["nAGQ"] == fx["nAGQ"] and doc["link"] == fx["link"]
    assert doc["nobs"] == fx["nobs"] and doc["df"] == fx["df"]
    for k in ("objective", "logLik", "AIC", "BIC"):
        assert rel(doc[k], fx[k]) < 1e-6, k
    assert [f["term"] for f in doc["fixef"]] == fx["fixef_names"]
    assert rel([f["estimate"] for f in doc["fixef"]], fx["fixef"]) < 1e-4
    assert rel([f["std_error"] for f in doc["fixef"]], fx["se"]) < 1e-3
    assert all(0 <= f["p_value"] <= 1 for f in doc["fixef"])
    if "vcov" in fx:
        ref = np.asarray(fx["vcov"], float)
        scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
        assert np.max(np.abs(np.asarray(doc["vcov"]) - ref) / scale) < 1e-3
    assert rel(doc["theta"], fx["theta"]) < 1e-3
    assert len(doc["varcorr"]) == len(fx["varcorr"])
    for got, want in zip(doc["varcorr"], fx["varcorr"], strict=True):
        assert (got["grp"], got["var1"], got["var2"]) == (want["grp"], want["var1"],
                                                           want["var2"])
        assert rel(got["vcov"], want["vcov"]) < 1e-3
    ref = pd.read_csv(fx["ranef_path"], dtype={"level": str})
    got = ranef.astype({"level": str})
    assert len(got) == len(ref)
    m = ref.merge(got, on=["group", "term", "level"], how="left", validate="1:1")
    assert m["estimate"].notna().all(), "levels or terms missing from ranef"
    sd = {(r["grp"], r["var1"]): r["sdcor"] for r in fx["varcorr"] if r["var2"] is None}
    floor = np.array([max(sd[(g, t)], 1e-8) for g, t in zip(m["group"], m["term"])])
    assert np.max(np.abs(m["estimate"] - m["condval"])
                  / np.maximum(np.abs(m["condval"]), floor)) < 1e-3
    assert np.max(np.abs(m["std_error"] - m["condsd"]) / np.maximum(m["condsd"], floor)) < 1e-3


def fit_fixture(fx, client=None, **kw):
    """The fixture's fit: on ``client``, or in process when None (the conformance checks run
    in process; tests/test_execution.py shows cluster fits agree)."""
    where = {"client": client} if client is not None else {"mode": "in-process"}
    return glmm(fx["formula"], fx["data_path"], fx["family"], nagq=fx["nAGQ"],
                factors=fx["factors"], **where, **kw)


def simulate(seed, family, n=120, m=8):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, m, n)
    x = rng.normal(size=n)
    eta = -0.3 + 0.6 * x + rng.normal(0, 0.8, m)[g]
    df = pd.DataFrame({"x": x, "g": g, "t": rng.uniform(0.5, 2.0, n)})
    if family == "poisson":
        df["y"] = rng.poisson(np.exp(eta + np.log(df["t"])))
    else:
        df["k"] = rng.integers(1, 6, n)
        df["y"] = rng.binomial(df["k"], special.expit(eta))
    return df


def slopes_frame(seed=3, n=3000, m=60):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x": rng.normal(size=n), "g": rng.integers(0, m, n),
                       "h": rng.integers(0, 6, n)})
    eta = (0.2 + 0.3 * df.x + rng.normal(0, .5, m)[df.g] + rng.normal(0, .3, m)[df.g] * df.x
           + rng.normal(0, .4, 6)[df.h])
    df["y"] = rng.poisson(np.exp(eta))
    return df
