"""The result object: lme4's printed layout, broom.mixed's tidy columns, the JSON document."""

from __future__ import annotations

import json

import pytest

import daskmm
from tests.conftest import load_fixture


@pytest.fixture(scope="module")
def sleep_fit(client):
    fx = load_fixture("sleepstudy_reml")
    return daskmm.lmm(fx["formula"], fx["data_path"], client=client)


@pytest.fixture(scope="module")
def sleep_ml(client):
    fx = load_fixture("sleepstudy_ml")
    return daskmm.lmm(fx["formula"], fx["data_path"], reml=False, client=client)


def test_summary_layout_like_lmer(sleep_fit):
    text = sleep_fit.summary()
    lines = text.splitlines()
    assert lines[0] == "Linear mixed model fit by REML ['lmerMod']"
    assert lines[1] == "Formula: Reaction ~ Days + (Days | Subject)"
    assert "REML criterion at convergence: 1743.6" in text
    i = lines.index("Random effects:")
    assert lines[i + 1].split() == ["Groups", "Name", "Variance", "Std.Dev.", "Corr"]
    # lme4's formatVC: each column formatted together (common decimals)
    assert lines[i + 2].split() == ["Subject", "(Intercept)", "612.09", "24.740"]
    assert lines[i + 3].split() == ["Days", "35.07", "5.922", "0.07"]
    assert lines[i + 4].split() == ["Residual", "654.94", "25.592"]
    assert "Number of obs: 180, groups:  Subject, 18" in text
    j = lines.index("Fixed effects:")
    assert lines[j + 1].split() == ["Estimate", "Std.", "Error", "t", "value"]
    assert lines[j + 2].split()[0] == "(Intercept)"
    assert lines[j + 2].split()[-1] == "36.838"
    assert "Correlation of Fixed Effects:" in text
    assert lines[-1].split() == ["Days", "-0.138"]


def test_ml_summary_has_information_criteria(sleep_ml):
    lines = sleep_ml.summary().splitlines()
    assert lines[0] == "Linear mixed model fit by maximum likelihood  ['lmerMod']"
    assert lines[3].split() == ["AIC", "BIC", "logLik", "deviance", "df.resid"]
    assert lines[4].split() == ["1763.9", "1783.1", "-876.0", "1751.9", "174"]


def test_tidy_has_broom_mixed_columns(sleep_fit):
    tidy = sleep_fit.tidy()
    assert list(tidy.columns) == ["effect", "group", "term", "estimate", "std_error",
                                  "statistic"]
    assert list(tidy["term"]) == ["(Intercept)", "Days", "sd__(Intercept)", "sd__Days",
                                  "cor__(Intercept).Days", "sd__Observation"]
    assert list(tidy["effect"]) == ["fixed"] * 2 + ["ran_pars"] * 4
    ranef = sleep_fit.ranef_frame()
    assert list(ranef.columns) == ["group", "level", "term", "estimate", "std_error"]
    assert len(ranef) == 36


def test_json_document_fields(sleep_fit):
    doc = json.loads(sleep_fit.to_json())
    for key in ["formula", "family", "link", "method", "nobs", "ngroups", "objective",
                "logLik", "df", "AIC", "BIC", "sigma", "theta", "fixef", "vcov", "varcorr",
                "converged", "singular", "timing"]:
        assert key in doc, key
    assert doc["family"] == "gaussian" and doc["link"] == "identity"
    assert doc["ngroups"] == {"Subject": 18}
    assert doc["varcorr"][-1] == {"grp": "Residual", "var1": None, "var2": None,
                                  "vcov": pytest.approx(sleep_fit.sigma ** 2),
                                  "sdcor": pytest.approx(sleep_fit.sigma)}
    assert set(doc["fixef"][0]) == {"term", "estimate", "std_error", "statistic"}
    assert doc["timing"]["total_s"] > 0
