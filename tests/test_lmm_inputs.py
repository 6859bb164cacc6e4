"""lme4 behaviours around the data: inputs of every kind, missing values, aliased columns,
weights, offsets, categorical handling."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import daskmm
from tests.conftest import CONFORMANCE, load_fixture

# the criterion module (daskmm.lmm is the function)
lmm_mod = importlib.import_module("daskmm.models.lmm.criterion")


@pytest.fixture(scope="module")
def sleep():
    return pd.read_csv(CONFORMANCE / "data" / "sleepstudy.csv")


def test_every_input_kind_gives_the_same_fit(sleep, client, tmp_path):
    fx = load_fixture("sleepstudy_reml")
    sleep.to_parquet(tmp_path / "s.parquet")
    dd.from_pandas(sleep, npartitions=4).to_parquet(tmp_path / "dir")
    inputs = [sleep, dd.from_pandas(sleep, npartitions=3), str(tmp_path / "s.parquet"),
              str(tmp_path / "dir"), fx["data_path"]]
    objs = [daskmm.lmm(fx["formula"], d, client=client).objective for d in inputs]
    np.testing.assert_allclose(objs, fx["objective"], rtol=1e-9)


def test_missing_values_are_dropped_and_counted(sleep, client):
    fx = load_fixture("sleepstudy_reml")
    extra = sleep.iloc[:7].copy()
    extra.loc[extra.index[:3], "Reaction"] = np.nan
    extra.loc[extra.index[3:], "Days"] = np.nan
    extra["Subject"] = extra["Subject"].astype(float)
    extra.loc[extra.index[6], "Subject"] = np.nan
    data = pd.concat([sleep.astype({"Subject": float}), extra], ignore_index=True)
    res = daskmm.lmm(fx["formula"], data, client=client, npartitions=2)
    assert res.nobs == 180
    # each dropped row counted once, under its first missing column (columns sorted)
    assert res.n_dropped == {"Reaction": 3, "Days": 4}
    assert res.to_dict()["n_dropped_na"] == 7 == len(data) - len(data.dropna())
    assert res.to_dict()["rows"] == {"used": 180, "dropped": 7, "read": 187,
                                     "dropped_missing": {"Reaction": 3, "Days": 4},
                                     "dropped_at_ingest": {}}
    assert ("(7 observations deleted due to missingness: missing values in Days: 4, "
            "Reaction: 3)") in res.summary()
    assert res.objective == pytest.approx(fx["objective"], rel=1e-6)


def test_aliased_column_dropped_with_warning(sleep, client):
    data = sleep.assign(Days2=2 * sleep["Days"], Hours=24.0 * sleep["Days"] + 0.0)
    with pytest.warns(UserWarning, match="rank deficient.*Days2, Hours"):
        res = daskmm.lmm("Reaction ~ Days + Days2 + Hours + (1 | Subject)", data, client=client)
    ref = daskmm.lmm("Reaction ~ Days + (1 | Subject)", sleep, client=client)
    assert res.fixef_names == ["(Intercept)", "Days"]
    np.testing.assert_allclose(res.beta, ref.beta, rtol=1e-8)
    assert res.df == ref.df


def test_constant_weights_reparametrise_the_same_model(sleep, client):
    """With every prior weight 2, Var(e) = sigma^2 / 2: the same family of models, so the
    optimum is the same, with sigma scaled by sqrt(2) and theta by 1/sqrt(2)."""
    fx = load_fixture("sleepstudy_reml")
    res = daskmm.lmm(fx["formula"], sleep.assign(w=2.0), weights="w", client=client)
    assert res.objective == pytest.approx(fx["objective"], rel=1e-6)
    np.testing.assert_allclose(res.beta, fx["fixef"], rtol=1e-5)
    assert res.sigma == pytest.approx(fx["sigma"] * np.sqrt(2), rel=1e-4)
    np.testing.assert_allclose(res.theta, np.asarray(fx["theta"]) / np.sqrt(2), rtol=1e-3)


def test_nonpositive_weight_is_an_error(sleep, client):
    with pytest.raises(daskmm.DataError, match="weights column 'w' has a value <= 0"):
        daskmm.lmm("Reaction ~ Days + (1 | Subject)", sleep.assign(w=0.0), weights="w",
                   client=client)


def test_offset_equals_shifted_response(sleep, client):
    data = sleep.assign(off=0.5 * sleep["Days"] + 3.0)
    a = daskmm.lmm("Reaction ~ Days + offset(off) + (1 | Subject)", data, client=client)
    b = daskmm.lmm("shifted ~ Days + (1 | Subject)",
                   data.assign(shifted=data["Reaction"] - data["off"]), client=client)
    assert a.objective == pytest.approx(b.objective, rel=1e-10)
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e-8)


def test_factors_argument_makes_numeric_column_categorical(sleep, client):
    data = sleep.assign(block=sleep["Days"] // 4)
    res = daskmm.lmm("Reaction ~ block + (1 | Subject)", data, factors=["block"],
                     client=client)
    assert res.fixef_names == ["(Intercept)", "block1", "block2"]
    res2 = daskmm.lmm("Reaction ~ 0 + block + (1 | Subject)", data, factors=["block"],
                      client=client)
    assert res2.fixef_names == ["block0", "block1", "block2"]
    assert res2.objective == pytest.approx(res.objective, rel=1e-9)


def test_auto_mode_keeps_large_statistics_on_workers(sleep, client, monkeypatch):
    fx = load_fixture("sleepstudy_reml")
    monkeypatch.setattr(lmm_mod, "GATHER_LIMIT_BYTES", 0)
    res = daskmm.lmm(fx["formula"], sleep, client=client, npartitions=3)
    assert res.optinfo["mode"] == "distributed"
    assert res.objective == pytest.approx(fx["objective"], rel=1e-6)
    monkeypatch.setattr(lmm_mod, "GATHER_LIMIT_BYTES", 2 ** 40)
    assert daskmm.lmm(fx["formula"], sleep, client=client).optinfo["mode"] == "gathered"


def test_starts_its_own_local_cluster_when_no_client():
    """A fresh process with no client and no DASK_SCHEDULER_ADDRESS starts a LocalCluster."""
    fx = load_fixture("dyestuff_reml")
    code = ("import daskmm, distributed; "
            f"r = daskmm.lmm({fx['formula']!r}, {fx['data_path']!r}); "
            "print(r.objective); "
            "print(len(distributed.Client._instances))")
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.split()[0]) == pytest.approx(fx["objective"], rel=1e-6)


def _stray(sleep, value="abc"):
    """sleepstudy with Days as text (as a CSV reader types a column with one stray word) and
    a numeric covariate z read the same way."""
    df = sleep.copy()
    df["z"] = (df["Reaction"] / 100).round(3).astype(str)
    df.loc[17, "z"] = value
    return df


def test_numbers_with_a_stray_word_are_an_error(sleep):
    """A column of numbers holding one word is not fitted as a factor with a level per number:
    one error naming the column and the word, in process and for the GLMM too."""
    df = _stray(sleep)
    with pytest.raises(daskmm.DataError, match=r"column 'z' holds numbers but also 'abc' "
                                               r"\(1 distinct value"):
        daskmm.lmm("Reaction ~ z + (1 | Subject)", df, mode="in-process")
    df["hit"] = (df["Reaction"] > 300).astype(int)
    with pytest.raises(daskmm.DataError, match="column 'z' holds numbers but also 'abc'"):
        daskmm.glmm("hit ~ z + (1 | Subject)", df, "binomial", mode="in-process")


def test_level_codes_and_declared_factors_are_not_numbers_with_a_stray_word(sleep):
    """Codes that are words (``d0``), a few numeric codes beside a named level, and a column
    named in ``factors`` are factors, as they are in R."""
    df = sleep.copy()
    df["words"] = "d" + df["Days"].astype(str)
    df["codes"] = np.where(df["Days"] < 9, df["Days"].astype(str), "ctrl")
    for col in ("words", "codes"):
        res = daskmm.lmm(f"Reaction ~ {col} + (1 | Subject)", df, mode="in-process")
        assert len(res.fixef_names) == 10
    df["z"] = (df["Days"] * 3 + df.index % 3).astype(str)  # 30 numeric codes
    df.loc[df.index % 11 == 0, "z"] = "ctrl"
    with pytest.raises(daskmm.DataError, match="name the column in factors"):
        daskmm.lmm("Reaction ~ z + (1 | Subject)", df, mode="in-process")
    res = daskmm.lmm("Reaction ~ z + (1 | Subject)", df, mode="in-process", factors=["z"])
    assert len([n for n in res.fixef_names if n.startswith("z")]) == 30
    res = daskmm.lmm("Reaction ~ factor(z) + (1 | Subject)", df, mode="in-process")
    assert len([n for n in res.fixef_names if n.startswith("factor(z)")]) == 30
