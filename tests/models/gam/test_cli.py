"""``daskmm fit`` and ``daskmm run`` with GAM formulas: real subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.models.gam.helpers import GAM, load

SIM1 = str(GAM / "data" / "sim1.csv")
SIM4 = str(GAM / "data" / "sim4.csv")


def daskmm(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "daskmm.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_fit_writes_gam_outputs(tmp_path):
    ref, data, fitted = load(GAM, "by_factor")
    out = tmp_path / "fit"
    r = daskmm("fit", SIM4, "--formula", ref["formula"], "--factors", "fac", "--out", str(out),
               "--plots")
    assert r.returncode == 0, r.stderr
    assert "Approximate significance of smooth terms:" in r.stdout
    doc = json.loads((out / "summary.json").read_text())
    assert doc["score"] == pytest.approx(ref["score"], rel=1e-6)
    assert [s["label"] for s in doc["smooths"]] == [s["label"] for s in ref["smooths"]]
    f = pd.read_parquet(out / "fitted.parquet")
    assert list(f.columns) == ["fitted"] and len(f) == len(data)
    sd = data["y"].std()
    assert (f["fitted"] - fitted["fitted"]).abs().max() < 1e-3 * sd
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert len(pngs) == len(ref["smooths"])
    assert all((out / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_fitted_rows_keep_input_order_with_dropped_rows(tmp_path):
    data = pd.read_csv(SIM1)
    data.loc[[3, 10], "x0"] = None
    src = tmp_path / "holes.csv"
    data.to_csv(src, index=False)
    out = tmp_path / "fit"
    r = daskmm("fit", str(src), "--formula", "y ~ s(x0, bs = 'cr') + s(x1, bs = 'cr')",
               "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "2 observations deleted due to missingness" in r.stderr
    f = pd.read_parquet(out / "fitted.parquet")["fitted"]
    assert len(f) == len(data) and f.isna().sum() == 2
    assert f.isna()[[3, 10]].all()
    doc = json.loads((out / "summary.json").read_text())
    assert doc["nobs"] == len(data) - 2 and doc["rows"]["dropped"] == 2


def run_job(tmp_path, formula: str, extra: str) -> dict:
    """``daskmm run`` of a job on sim1 with ``extra`` YAML lines; its summary.json."""
    out = tmp_path / "job_out"
    job = tmp_path / "job.yaml"
    job.write_text(f"name: g\ndata: {SIM1}\nformula: \"{formula}\"\n{extra}output: {out}\n")
    r = daskmm("run", str(job))
    assert r.returncode == 0, r.stderr
    assert (out / "fitted.parquet").exists()
    return json.loads((out / "summary.json").read_text())


def test_job_file_takes_a_gam(tmp_path):
    doc = run_job(tmp_path, "y ~ s(x0, bs = 'cr') + s(fac, bs = 're')",
                  "factors: [fac]\nmethod: REML\n")
    assert doc["method"] == "REML"


BAD = [
    ("y ~ s(fac, bs = 'cr')", {"factors": ["fac"]}, ["'fac'", "categorical"]),
    ("y ~ s(x0, k = 5000, bs = 'cr')", {}, ["distinct values", "k = 5000"]),
    ("y ~ s(x0, bs = 'zz')", {}, ["unknown basis", "'zz'"]),
    ("y ~ s(x0, by = nothere, bs = 'cr')", {}, ["'nothere'", "by = nothere", "the data have"]),
    ("y ~ s(nothere, bs = 'cr')", {}, ["'nothere'", "not in the data"]),
    ("y ~ s(x0, bs = 'cr')", {"method": "GCV"}, ["'GCV'", "'ML'"]),
    ("y ~ s(x0, bs = 'cr')", {"family": "cauchy"}, ["cauchy"]),
]


@pytest.mark.parametrize("formula, kw, words", BAD)
def test_bad_gam_input_is_one_line(formula, kw, words):
    import daskmm
    kw = dict(kw)
    family = kw.pop("family", "gaussian")
    with pytest.raises(daskmm.DaskmmError) as e:
        daskmm.fit(formula, pd.read_csv(SIM1), family, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("formula, extra, words", [
    ("y ~ s(fac, bs = 'cr')", ["--factors", "fac"], ["'fac'", "categorical"]),
    ("y ~ s(x0, by = nothere, bs = 'cr')", [], ["'nothere'", "by = nothere", "the data have"]),
])
def test_bad_gam_input_cli(tmp_path, formula, extra, words):
    out = tmp_path / "fit"
    r = daskmm("fit", SIM1, "--formula", formula, *extra, "--out", str(out))
    assert r.returncode != 0
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists()


def test_fit_takes_ml_and_ar1(tmp_path):
    """``--method ML`` and ``--rho/--ar-start`` reach the fit (bam's fixtures ml_cr and
    ar1_start); an LMM formula refuses --rho."""
    ref, _, _ = load(GAM, "ml_cr")
    out = tmp_path / "ml"
    r = daskmm("fit", SIM1, "--formula", ref["formula"], "--method", "ML", "--out", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert doc["method"] == "ML" and doc["score"] == pytest.approx(ref["score"], rel=1e-6)
    ref, _, _ = load(GAM, "ar1_start")
    out = tmp_path / "ar"
    r = daskmm("fit", str(GAM / ref["data"]), "--formula", ref["formula"], "--rho", "0.6",
               "--ar-start", "start", "--out", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert doc["score"] == pytest.approx(ref["score"], rel=1e-6)
    r = daskmm("fit", SIM1, "--formula", "y ~ x0 + (1 | fac)", "--rho", "0.5", "--out",
               str(tmp_path / "lmm"))
    assert r.returncode == 2 and "applies to GAMs" in r.stderr
    assert not (tmp_path / "lmm").exists()


def test_job_file_takes_a_discrete_gam(tmp_path):
    doc = run_job(tmp_path, "y ~ s(x0, bs = 'cr') + s(x1, bs = 'cr')", "discrete: true\n")
    assert doc["optinfo"]["discrete"]["smooths"] == ["s(x0)", "s(x1)"]


def test_predict_reads_a_gam_fit_folder_as_predict_gam(tmp_path):
    """``daskmm fit`` of a GAM writes model.pkl; ``daskmm predict --type link --se-fit``
    gives the fitted object's predictions and standard errors, which are bam's
    ``predict(se.fit = TRUE)`` at the conformance tolerances; an unseen level of an 're'
    smooth is refused naming the flag, and predicted at the population level with it."""
    from daskmm.models.gam.model import gam

    ref, data, _ = load(GAM, "re_intercept")
    out = tmp_path / "fit"
    r = daskmm("fit", SIM1, "--formula", ref["formula"], "--factors", "fac", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "model.pkl").is_file() and "model.pkl" in r.stdout
    rows = tmp_path / "rows.csv"
    data.iloc[:20].drop(columns="y").to_csv(rows, index=False)
    pred = tmp_path / "pred.parquet"
    r = daskmm("predict", str(out), str(rows), "--out", str(pred), "--type", "link",
               "--se-fit")
    assert r.returncode == 0, r.stderr
    got = pd.read_parquet(pred)
    assert list(got.columns) == ["fit", "se_fit"]
    fit = gam(ref["formula"], data, factors=["fac"], mode="in-process")
    want = fit.predict(data.iloc[:20], type="link", se_fit=True)
    np.testing.assert_allclose(got["fit"], want["fit"], rtol=1e-12)
    np.testing.assert_allclose(got["se_fit"], want["se_fit"], rtol=1e-12)
    sd = data["y"].std()
    np.testing.assert_allclose(got["fit"], ref["predict_link"], rtol=0, atol=1e-3 * sd)
    np.testing.assert_allclose(got["se_fit"], ref["predict_se"], rtol=1e-3)
    new = data.iloc[:3].drop(columns="y").assign(fac=["g1", "unseen", "g2"])
    new.to_csv(rows, index=False)
    r = daskmm("predict", str(out), str(rows), "--out", str(tmp_path / "new.csv"))
    assert r.returncode != 0 and "'unseen'" in r.stderr and "--allow-new-levels" in r.stderr
    r = daskmm("predict", str(out), str(rows), "--out", str(tmp_path / "new.csv"),
               "--allow-new-levels")
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(tmp_path / "new.csv")["fit"].to_numpy()
    X = new.assign(fac="g1")
    pop = fit.predict(X, type="terms")  # the population level: the re term left out
    np.testing.assert_allclose(got[1], fit.coef[0] + pop.iloc[1].drop("s(fac)").sum(),
                               rtol=1e-12)
