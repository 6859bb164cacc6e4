"""lme4's formula semantics against lme4 itself (fits made by
``tests/fixtures/formula/make_fixtures.R``): ``I(age^2)``, ``poly(x, 2)``, ``scale(z)``,
``log``/``log1p``/``sqrt``/``exp``, ``factor(k)``, ``(u + v + w)^2``, back-quoted and unusual
column names, and Poisson GLMMs with counts in the hundreds (two crossed intercepts and an
interaction; an offset), rare events from glm's start, and aliased columns dropped as lme4
drops them. Tolerances are the conformance README's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.formula.parse import parse_formula
from daskmm.formula.spec import plan_formula
from tests.models.glmm.helpers import check_document as check_glmm
from tests.test_conformance import check_document as check_lmm

HERE = Path(__file__).resolve().parent / "fixtures" / "formula"
LMM = ["lmm_functions", "lmm_functions_ml", "lmm_odd_names"]
GLMM = ["binomial_transforms", "poisson_crossed_counts", "poisson_offset_counts",
        "binomial_rare_events"]


def load(fid: str) -> dict:
    fx = json.loads((HERE / "fits" / f"{fid}.json").read_text())
    fx["data_path"] = str(HERE / fx["data"])
    fx["ranef_path"] = str(HERE / fx["ranef"])
    return fx


@pytest.mark.parametrize("fid", LMM)
def test_lmm_formula_features_match_lmer(fid, client):
    fx = load(fid)
    fit = daskmm.lmm(fx["formula"], fx["data_path"], reml=fx["REML"], factors=fx["factors"],
                     client=client)
    assert fit.converged
    check_lmm(fit.to_dict(), fit.ranef_frame(), fx)


@pytest.mark.parametrize("fid", GLMM)
def test_glmm_formula_features_match_glmer(fid):
    """In process (the same fits on a cluster agree: tests/test_execution.py)."""
    fx = load(fid)
    fit = daskmm.glmm(fx["formula"], fx["data_path"], fx["family"], nagq=fx["nAGQ"],
                      factors=fx["factors"], mode="in-process")
    assert fit.converged
    check_glmm(fit.to_dict(), fit.ranef_frame(), fx)


def test_frozen_transforms_equal_r(client):
    """scale()'s centre and scale and poly()'s recurrence coefficients, frozen from the whole
    data over several partitions, equal R's attributes."""
    from daskmm.models.shared.structure import frozen_levels
    fx = load("binomial_transforms")
    parsed = parse_formula(fx["formula"])
    df = pd.read_csv(fx["data_path"])
    used = sorted(parsed.columns)
    rw = plan_formula(parsed, used)
    import dask.dataframe as dd
    frozen_levels(client, dd.from_pandas(df[used], npartitions=5, sort=False), used, [],
                  ["g"], ["g"], rewriter=rw)
    scale = rw.transforms["scale(z)"].state
    assert scale["center"] == pytest.approx(fx["scale_center"], rel=1e-13)
    assert scale["scale"] == pytest.approx(fx["scale_scale"], rel=1e-12)
    poly = rw.transforms["poly(x, 2)"].state
    np.testing.assert_allclose(poly["alpha"], fx["poly_coefs"]["alpha"], rtol=1e-12)
    np.testing.assert_allclose(poly["norm2"], fx["poly_coefs"]["norm2"], rtol=1e-11)


def test_cli_writes_r_names(client, tmp_path):
    fx = load("lmm_odd_names")
    out = tmp_path / "fit"
    proc = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", fx["data_path"],
                           "--formula", fx["formula"], "--factors", ",".join(fx["factors"]),
                           "--scheduler", client.scheduler.address, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert list(pd.read_parquet(out / "fixef.parquet")["term"]) == fx["fixef_names"]
    assert "`my var`" in (out / "summary.txt").read_text()


def test_glmm_drops_aliased_columns_as_lme4(client):
    """A column that is a multiple of another is dropped with a warning naming it, and the
    fit is glmer's fit without it."""
    fx = load("poisson_offset_counts")
    df = pd.read_csv(fx["data_path"]).assign(x2=lambda d: 2.0 * d["x"])
    with pytest.warns(UserWarning, match=r"rank deficient so dropping 1 column\(s\): x2"):
        fit = daskmm.glmm("y ~ x + x2 + offset(log(t)) + (1 | g)", df, "poisson",
                          factors=fx["factors"], client=client)
    assert fit.fixef_names == fx["fixef_names"]
    assert fit.objective == pytest.approx(fx["objective"], rel=1e-6)
    pred = fit.predict(df.iloc[:5], kind="link").compute()
    assert np.all(np.isfinite(pred))
