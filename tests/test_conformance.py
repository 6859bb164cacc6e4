"""Every LMM fixture in tests/fixtures/conformance, through the Python API and through the CLI.

Tolerances are the conformance README's: objective 1e-6 relative; fixed effects and sigma 1e-4
relative; variance components, theta and standard errors 1e-3 relative. Conditional modes and
their SDs are held to 1e-3 relative to the larger of the value and the group's SD (a mode near
zero has no meaningful relative error).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import daskmm
from tests.conftest import LMM_FIXTURES, load_fixture


def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def check_document(doc: dict, ranef: pd.DataFrame, fx: dict) -> None:
    """Compare a summary.json-like document and ranef table with an lme4 fixture."""
    assert doc["method"] == ("REML" if fx["REML"] else "ML")
    assert doc["nobs"] == fx["nobs"]
    assert doc["df"] == fx["df"]
    assert rel(doc["objective"], fx["objective"]) < 1e-6
    assert rel(doc["logLik"], fx["logLik"]) < 1e-6
    assert rel(doc["AIC"], fx["AIC"]) < 1e-6
    assert rel(doc["BIC"], fx["BIC"]) < 1e-6
    assert [f["term"] for f in doc["fixef"]] == fx["fixef_names"]
    assert rel([f["estimate"] for f in doc["fixef"]], fx["fixef"]) < 1e-4
    assert rel([f["std_error"] for f in doc["fixef"]], fx["se"]) < 1e-3
    assert rel(doc["sigma"], fx["sigma"]) < 1e-4
    assert doc["singular"] == fx["singular"]
    vc_ref = np.asarray(fx["vcov"], float)
    scale = np.sqrt(np.outer(np.diag(vc_ref), np.diag(vc_ref)))
    assert np.max(np.abs(np.asarray(doc["vcov"]) - vc_ref) / scale) < 1e-3
    if fx["singular"]:
        assert np.allclose(doc["theta"], fx["theta"], atol=1e-4)
    else:
        assert rel(doc["theta"], fx["theta"]) < 1e-3
    assert len(doc["varcorr"]) == len(fx["varcorr"])
    for got, ref in zip(doc["varcorr"], fx["varcorr"], strict=True):
        assert (got["grp"], got["var1"], got["var2"]) == (ref["grp"], ref["var1"], ref["var2"])
        if fx["singular"] and ref["grp"] != "Residual":
            assert abs(got["vcov"]) < 1e-6
        else:
            assert rel(got["vcov"], ref["vcov"]) < 1e-3
            assert rel(got["sdcor"], ref["sdcor"]) < 1e-3
    ref = pd.read_csv(fx["ranef_path"], dtype={"level": str})
    got = ranef.astype({"level": str})
    assert len(got) == len(ref)
    m = ref.merge(got, on=["group", "term", "level"], how="left", validate="1:1")
    assert m["estimate"].notna().all(), "levels or terms missing from ranef"
    # the SD of each (factor, term); lme4 names a second term on a factor "Subject.1"
    sd_term = {(re.sub(r"\.\d+$", "", r["grp"]), r["var1"]): r["sdcor"] for r in fx["varcorr"]
               if r["var2"] is None and r["grp"] != "Residual"}
    floor = np.array([max(sd_term[(g, t)], 1e-8) for g, t in zip(m["group"], m["term"])])
    assert np.max(np.abs(m["estimate"] - m["condval"]) / np.maximum(np.abs(m["condval"]),
                                                                       floor)) < 1e-3
    assert np.max(np.abs(m["std_error"] - m["condsd"]) / np.maximum(m["condsd"], floor)) < 1e-3


@pytest.mark.parametrize("fid", LMM_FIXTURES)
def test_api_matches_lme4(fid, client):
    fx = load_fixture(fid)
    res = daskmm.lmm(fx["formula"], fx["data_path"], reml=fx["REML"], factors=fx["factors"],
                     client=client)
    assert res.converged
    check_document(res.to_dict(), res.ranef_frame(), fx)
    assert json.loads(res.to_json())["formula"] == fx["formula"]


@pytest.mark.parametrize("fid", ["sleepstudy_reml", "penicillin_crossed_reml",
                                 "pastes_nested_reml"])
def test_api_distributed_mode_matches_lme4(fid, client):
    fx = load_fixture(fid)
    res = daskmm.lmm(fx["formula"], fx["data_path"], reml=fx["REML"], factors=fx["factors"],
                     client=client, mode="distributed", npartitions=3)
    assert res.optinfo["mode"] == "distributed"
    check_document(res.to_dict(), res.ranef_frame(), fx)
    # lme4's Scaled residuals, from the workers' partitions: those of the in-process fit
    here = daskmm.lmm(fx["formula"], fx["data_path"], reml=fx["REML"], factors=fx["factors"])
    assert res.residual_summary() == pytest.approx(here.residual_summary(), rel=1e-9)


@pytest.fixture(scope="module")
def scheduler_address(client):
    return client.scheduler.address


@pytest.mark.parametrize("fid", LMM_FIXTURES)
def test_cli_matches_lme4(fid, tmp_path, scheduler_address):
    fx = load_fixture(fid)
    out = tmp_path / "fit"
    cmd = [sys.executable, "-m", "daskmm.cli", "fit", fx["data_path"], "--formula",
           fx["formula"], "--factors", ",".join(fx["factors"]), "--scheduler",
           scheduler_address, "--out", str(out)]
    if not fx["REML"]:
        cmd.append("--ml")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["_daskmm.json", "fixef.parquet",
                                                     "model.pkl", "ranef.parquet",
                                                     "summary.json", "summary.txt"]
    doc = json.loads((out / "summary.json").read_text())
    ranef = pd.read_parquet(out / "ranef.parquet")
    assert list(ranef.columns) == ["group", "level", "term", "estimate", "std_error"]
    check_document(doc, ranef, fx)
    fixef = pd.read_parquet(out / "fixef.parquet")
    assert list(fixef["term"]) == fx["fixef_names"]
    text = (out / "summary.txt").read_text()
    assert "Random effects:" in text
    # the scaled residuals of a fit on the cluster: computed there, exactly (lme4's block)
    assert "Scaled residuals: " in text
    assert doc["scaled_residuals"] == pytest.approx(daskmm.lmm(
        fx["formula"], fx["data_path"], reml=fx["REML"], factors=fx["factors"]
    ).residual_summary(), rel=1e-9)
