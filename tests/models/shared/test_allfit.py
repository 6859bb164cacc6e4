"""lme4's allFit (``fit.all_fit()``, ``daskmm fit --all-fit``): every optimiser refits the
model, in process and as tasks on a cluster, and the tables say whether they agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import daskmm
from daskmm.models.shared.allfit import OPTIMIZERS

DATA = Path(__file__).resolve().parents[2] / "fixtures" / "conformance" / "data"
SLEEP = str(DATA / "sleepstudy.csv")
REMLCRIT = 1743.6282719585  # lme4 1.1-31, REMLcrit(lmer(Reaction ~ Days + (Days | Subject)))


def test_every_optimiser_reaches_lmers_optimum_and_the_tables_say_so():
    fit = daskmm.lmm("Reaction ~ Days + (Days | Subject)", SLEEP, mode="in-process")
    af = fit.all_fit()
    assert list(af.fits) == list(OPTIMIZERS) and all(af.ok().values())
    for f in af.fits.values():
        assert abs(f.objective - REMLCRIT) < 1e-8 * REMLCRIT
    fe = af.table("fixef")
    assert list(fe.columns) == ["(Intercept)", "Days"] and list(fe.index) == list(OPTIMIZERS)
    np.testing.assert_allclose(fe.to_numpy(), np.tile(fit.beta, (3, 1)), rtol=1e-6)
    sd = af.table("sdcor")
    assert list(sd.columns) == ["Subject.(Intercept)", "Subject.Days",
                                "Subject.Days.(Intercept)", "sigma"]
    feval = af.table("feval")["feval"]
    assert feval["bobyqa"] != feval["Nelder_Mead"]  # they did run their own optimisers
    text = af.summary()
    for block in ("$which.OK", "$msgs", "$fixef", "$llik", "$sdcor", "$theta", "$times",
                  "$feval"):
        assert block in text


def test_refits_run_as_tasks_on_a_cluster_and_agree_with_the_in_process_ones(client):
    fit = daskmm.lmm("Reaction ~ Days + (Days | Subject)", SLEEP, mode="in-process")
    here, there = fit.all_fit(), fit.all_fit(client)
    for k in OPTIMIZERS:
        assert there.fits[k].objective == pytest.approx(here.fits[k].objective, rel=1e-12)


def test_a_glmm_all_fit_agrees_on_an_uncentred_covariate():
    g = daskmm.glmm("TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)",
                    str(DATA / "grouseticks.csv"), "poisson", factors=["YEAR"],
                    mode="in-process")
    af = g.all_fit()
    ll = af.table("llik")["llik"]
    assert all(af.ok().values())
    assert ll.max() - ll.min() < 1e-6 * abs(ll.max())


def test_the_command_line_prints_and_writes_the_tables(tmp_path):
    r = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", SLEEP, "--formula",
                        "Reaction ~ Days + (Days | Subject)", "--all-fit", "--out",
                        str(tmp_path / "fit")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "$which.OK" in r.stdout and "Nelder_Mead" in r.stdout
    assert (tmp_path / "fit" / "allfit.txt").read_text().startswith("$which.OK")
    r = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit",
                        str(DATA / "gamsim1.csv"), "--formula", "y ~ s(x0)", "--all-fit",
                        "--out", str(tmp_path / "gam")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "--all-fit applies to LMMs and GLMMs" in r.stderr
    assert "Traceback" not in r.stderr
