"""The GLMM families and prior weights glmer has, against glmer at tight settings
(tests/fixtures/families/make_references.R)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.errors import DataError, ModelError

HERE = Path(__file__).resolve().parents[2] / "fixtures" / "families"
REFS = json.loads((HERE / "refs.json").read_text())


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


@pytest.mark.parametrize("where", ["in-process", "cluster"])
def test_poisson_prior_weights_match_glmer(where, client):
    ref = REFS["poisson_weights"]
    kw = {"mode": "in-process"} if where == "in-process" else {"client": client}
    fit = daskmm.glmm(ref["formula"], str(HERE / ref["data"]), "poisson", weights="w",
                      factors=ref["factors"], **kw)
    d = -2 * fit.loglik
    assert d <= ref["deviance"] * (1 + 1e-9)  # never worse than glmer's best
    assert abs(d - ref["deviance"]) < 1e-6 * ref["deviance"]
    assert fit.fixef_names == list(ref["fixef"])
    assert _rel(fit.beta, list(ref["fixef"].values())) < 1e-4
    assert _rel(fit.theta, ref["theta"]) < 1e-3
    assert _rel(fit.se, ref["se"]) < 1e-3
    assert fit.nobs == ref["nobs"] and fit.certified


def test_unit_weights_change_nothing():
    ref = REFS["poisson_weights"]
    d = pd.read_csv(HERE / ref["data"])
    d["one"] = 1.0
    a = daskmm.glmm(ref["formula"], d, "poisson", factors=ref["factors"], mode="in-process")
    b = daskmm.glmm(ref["formula"], d, "poisson", weights="one", factors=ref["factors"],
                    mode="in-process")
    assert a.loglik == b.loglik and np.array_equal(a.beta, b.beta)


def test_weights_that_cannot_be_used_are_refused():
    ref = REFS["poisson_weights"]
    d = pd.read_csv(HERE / ref["data"])
    d.loc[3, "w"] = 0.0
    with pytest.raises(DataError, match=r"weights column 'w' has a value <= 0"):
        daskmm.glmm(ref["formula"], d, "poisson", weights="w", factors=ref["factors"],
                    mode="in-process")
    with pytest.raises(ModelError, match="negative binomial's prior weights are not built"):
        daskmm.glmm(ref["formula"], d, "negative_binomial", weights="w",
                    factors=ref["factors"], mode="in-process")
