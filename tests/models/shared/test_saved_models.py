"""A ``model.pkl`` written before the model-core layout (its classes in ``daskmm.prediction``,
``daskmm.glmm_rows``, ``daskmm.reterm``, ...) is still read, and predicts what it did."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.errors import DataError
from tests.conftest import ROOT

SAVED = ROOT / "tests" / "fixtures" / "models"


@pytest.mark.parametrize("name", ["lmm_sleepstudy", "glmm_cbpp"])
def test_a_model_saved_before_the_layout_predicts_as_it_did(name):
    raw = (SAVED / name / "model.pkl").read_bytes()
    assert b"daskmm.prediction" in raw or b"daskmm.glmm_rows" in raw  # the old paths
    want = json.loads((SAVED / "predictions.json").read_text())[name]
    new = pd.read_csv(SAVED / f"{name}_new.csv")
    got = daskmm.load_model(SAVED / name).predict(new).compute().to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_a_model_saved_now_is_read_back(tmp_path):
    from daskmm.models.shared.prediction import save_model
    fit = daskmm.fit("Reaction ~ Days + (Days | Subject)",
                     str(ROOT / "tests" / "fixtures" / "conformance" / "data" / "sleepstudy.csv"),
                     factors=["Subject"])
    save_model(fit.predictor, tmp_path)
    assert b"daskmm.models.shared.prediction" in (tmp_path / "model.pkl").read_bytes()
    new = pd.read_csv(SAVED / "lmm_sleepstudy_new.csv")
    np.testing.assert_allclose(daskmm.load_model(tmp_path).predict(new).compute(),
                               fit.predict(new).compute(), rtol=1e-12)


def test_a_file_that_is_not_a_model_is_refused_in_one_line(tmp_path):
    with open(tmp_path / "model.pkl", "wb") as fh:
        pickle.dump({"tag": "something-else"}, fh)
    with pytest.raises(DataError, match="is not a daskmm model file"):
        daskmm.load_model(tmp_path)
