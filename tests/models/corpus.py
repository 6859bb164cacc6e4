"""The real-data corpus (tests/fixtures/corpus, made by make_corpus.R: 159 lme4/mgcv fits on
data sets shipped with lme4, nlme, mlmRev, MASS and glmmTMB): each fit by daskmm in process,
and how it compares. Used by tests/models/test_corpus.py (a third of the fits) and
benchmarks/bench_corpus.py (all, timed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

import daskmm

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"
ENTRIES = [e for e in json.loads((CORPUS / "corpus.json").read_text()) if e["status"] == "ok"]


def entry(fid: str) -> dict:
    return next(e for e in ENTRIES if e["id"] == fid)


def fit(e: dict, data=None, **kw):
    """The corpus entry ``e`` fitted by daskmm (in process), on ``data`` (default: its file)."""
    data = str(CORPUS / e["data"]) if data is None else data
    common = {"factors": e["factors"], "mode": "in-process", **kw}
    if e.get("weights"):
        common["weights"] = e["weights"]
    if e["kind"] == "lmm":
        return daskmm.lmm(e["formula"], data, reml=bool(e["REML"]), **common)
    if e["kind"] == "glmm":
        family = "negative_binomial" if e["family"].startswith("Negative Binomial") else \
            e["family"]
        return daskmm.glmm(e["formula"], data, family, link=e["link"], nagq=e["nAGQ"] or 1,
                           **common)
    return daskmm.gam(e["formula"], data, e["family"], link=e["link"], **common)


def criterion(e: dict, res) -> float:
    """daskmm's criterion in the reference's terms: REML criterion or deviance (LMM), -2
    logLik (GLMM), the fREML score (GAM)."""
    if e["kind"] == "lmm":
        return float(res.objective)
    if e["kind"] == "glmm":
        return -2.0 * float(res.loglik)
    return float(res.score)


def compare(e: dict, res) -> dict:
    """``gap``: (daskmm - reference) / |reference| of the criterion (positive: daskmm worse);
    ``fixef``: the largest fixed-effect difference over max(|estimate|, its SE) by name;
    ``missing``: reference fixed effects daskmm does not name."""
    ref = float(e["objective"])
    out = {"gap": (criterion(e, res) - ref) / max(abs(ref), 1.0), "fixef": 0.0,
           "missing": []}
    if e["kind"] == "gam":
        return out
    se = e["se"] if isinstance(e["se"], dict) else dict(zip(e["fixef"], e["se"]))
    got = dict(zip(res.fixef_names, np.asarray(res.beta, float)))
    for name, b in e["fixef"].items():
        if name not in got:
            out["missing"].append(name)
            continue
        scale = max(abs(b), se.get(name) or 0.0, 1e-12)
        out["fixef"] = max(out["fixef"], abs(got[name] - b) / scale)
    if not math.isfinite(out["gap"]):
        out["gap"] = math.inf
    return out
