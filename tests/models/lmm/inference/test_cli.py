"""Inference from the command line and from job files: real subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import load_fixture
from tests.models.lmm.inference.refs import load

SLEEP = load_fixture("sleepstudy_reml")["data_path"]
FORMULA = "Reaction ~ Days + (Days | Subject)"


def daskmm(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "daskmm.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_fit_adds_intervals_and_satterthwaite_tests_to_the_document(tmp_path):
    out = tmp_path / "fit"
    r = daskmm("fit", SLEEP, "--formula", FORMULA, "--ci", "profile", "--ddf",
               "satterthwaite", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "t-tests use Satterthwaite's method" in r.stdout
    assert "Confidence intervals:" in r.stdout
    doc = json.loads((out / "summary.json").read_text())
    ref = load("sleepstudy")
    for row, want in zip(doc["fixef"], ref["coef"]):
        assert row["df"] == pytest.approx(want["df"], rel=1e-4)
        assert set(row) >= {"df", "p_value"}
    assert [c["parameter"] for c in doc["ci"]] == [c["parameter"] for c in ref["profile_ci"]]
    for got, want in zip(doc["ci"], ref["profile_ci"]):
        assert got["method"] == "profile" and got["level"] == 0.95
        assert got["lower"] == pytest.approx(want["lower"], rel=1e-4)
        assert got["upper"] == pytest.approx(want["upper"], rel=1e-4)


def test_job_file_takes_a_bootstrap_and_records_its_seed(tmp_path):
    out = tmp_path / "job_out"
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {SLEEP}\nformula: \"{FORMULA}\"\nci: boot\nnboot: 20\nseed: 3\n"
                   f"level: 0.9\noutput: {out}\n")
    r = daskmm("run", str(job))
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert doc["bootstrap"] == {"nboot": 20, "seed": 3, "n_failed": 0,
                                 "warnings": []}
    assert {c["method"] for c in doc["ci"]} == {"boot"}
    assert all(c["level"] == 0.9 for c in doc["ci"])


@pytest.mark.parametrize("extra, words", [
    ("family: poisson\nci: profile\n", "ci (inference after the fit) apply to linear"),
    ("ci: bca\n", "ci"),
    ("nboot: 0\n", "nboot"),
])
def test_bad_inference_fields_in_a_job_are_one_line(tmp_path, extra, words):
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {SLEEP}\nformula: \"{FORMULA}\"\n{extra}output: {tmp_path / 'o'}\n")
    r = daskmm("run", str(job))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert words in r.stderr


def test_ci_on_a_glmm_is_refused_in_one_line(tmp_path):
    r = daskmm("fit", SLEEP, "--formula", "Days ~ 1 + (1 | Subject)", "--family", "poisson",
               "--ci", "wald", "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "linear mixed models" in r.stderr


def test_predict_from_a_result_folder_matches_the_fit(tmp_path):
    import pandas as pd
    out = tmp_path / "fit"
    assert daskmm("fit", SLEEP, "--formula", FORMULA, "--out", str(out)).returncode == 0
    assert (out / "model.pkl").is_file()
    new = pd.read_csv(SLEEP).drop(columns=["Reaction"]).head(12)
    new.loc[3, "Subject"] = 999
    src = tmp_path / "new.csv"
    new.to_csv(src, index=False)
    dst = tmp_path / "pred.parquet"
    r = daskmm("predict", str(out), str(src), "--out", str(dst))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "new level(s) of 'Subject'" in r.stderr and not dst.exists()
    r = daskmm("predict", str(out), str(src), "--out", str(dst), "--allow-new-levels")
    assert r.returncode == 0, r.stderr
    got = pd.read_parquet(dst)["fit"]
    import daskmm as dm
    fit = dm.lmm(FORMULA, pd.read_csv(SLEEP), mode="in-process")
    want = fit.predict(new, allow_new_levels=True).compute()
    assert got.to_numpy() == pytest.approx(want.to_numpy(), rel=1e-12)
    r = daskmm("predict", str(out), str(src), "--out", str(dst))
    assert r.returncode != 0 and "exists" in r.stderr
    (tmp_path / "empty").mkdir()
    r = daskmm("predict", str(tmp_path / "empty"), str(src), "--out", str(tmp_path / "x.csv"))
    assert r.returncode != 0 and "has no model.pkl" in r.stderr
    r = daskmm("predict", str(out), str(src), "--out", str(out / "p.csv"))
    assert r.returncode != 0 and "would overwrite" in r.stderr
    (tmp_path / "folder.csv").mkdir()
    r = daskmm("predict", str(out), str(src), "--out", str(tmp_path / "folder.csv"),
               "--force")
    assert r.returncode != 0 and "is a folder" in r.stderr and "Traceback" not in r.stderr


def test_fit_plots_writes_the_lmm_diagnostics(tmp_path):
    out = tmp_path / "fit"
    r = daskmm("fit", SLEEP, "--formula", FORMULA, "--ci", "profile", "--plots", "--out",
               str(out))
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert names == ["caterpillar_Subject_Days.png", "caterpillar_Subject_Intercept.png",
                     "profile_zeta.png", "qq_ranef_Subject_Days.png",
                     "qq_ranef_Subject_Intercept.png", "qq_residuals.png",
                     "residuals_fitted.png"]
    assert all((out / "plots" / n).read_bytes()[:4] == b"\x89PNG" for n in names)


def test_predict_from_a_glmm_result_folder_matches_the_fit(tmp_path):
    import pandas as pd

    from tests.models.lmm.inference.refs import ROOT
    data = str(ROOT.parent / "glmm" / "data" / "cbpp_laplace_tight.csv")
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    out = tmp_path / "fit"
    r = daskmm("fit", data, "--formula", formula, "--family", "binomial", "--factors",
               "herd,period", "--out", str(out))
    assert r.returncode == 0, r.stderr
    new = pd.read_csv(data).drop(columns=["incidence", "size"])
    src = tmp_path / "new.csv"
    new.to_csv(src, index=False)
    dst = tmp_path / "pred.csv"
    r = daskmm("predict", str(out), str(src), "--out", str(dst))
    assert r.returncode == 0, r.stderr
    import daskmm as dm
    df = pd.read_csv(data)
    for c in ("herd", "period"):
        df[c] = df[c].astype(str)
    fit = dm.glmm(formula, df, "binomial", mode="in-process")
    want = fit.fitted().compute().to_numpy()
    assert pd.read_csv(dst)["fit"].to_numpy() == pytest.approx(want, rel=1e-6)


def test_glmm_plots_write_dharma_residuals_and_their_tests(tmp_path):
    from tests.models.lmm.inference.refs import ROOT
    data = str(ROOT.parent / "glmm" / "data" / "cbpp_laplace_tight.csv")
    out = tmp_path / "fit"
    r = daskmm("fit", data, "--formula", "cbind(incidence, size - incidence) ~ period + "
               "(1 | herd)", "--family", "binomial", "--factors", "herd,period", "--plots",
               "--seed", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    for png in (out / "plots" / "dharma.png", out / "plots" / "caterpillar_herd_Intercept.png"):
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "summary.json").read_text())["scaled_residuals_dharma"]
    assert doc["nsim"] == 250 and doc["seed"] == 4 and doc["n"] == 56
    assert 0 <= doc["dispersion"]["p_value"] <= 1 and doc["uniformity"]["statistic"] > 0
