"""``daskmm.glmm`` against glmer: the conformance fixtures and the fits made here in
fixtures/glmm, through the API and the CLI."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import load_fixture
from tests.models.glmm.helpers import LOCAL_FIXTURES, check_document, fit_fixture, load_local, rel
from tests.results.golden import FLAT_OPTIMUM, assert_same_text


@functools.cache
def fitted_once(where: str, fid: str):
    """The fixture's in-process fit, once per process: the comparison with glmer and the
    printout share it."""
    fx = load_fixture(fid) if where == "conformance" else load_local(fid)
    return fx, fit_fixture(fx)


@pytest.mark.parametrize("fid", ["cbpp_agq25", "grouseticks_poisson"])
def test_conformance_api(fid):
    fx, fit = fitted_once("conformance", fid)
    assert fit.converged
    check_document(fit.to_dict(), fit.ranef_frame(), fx)


@pytest.mark.xfail(strict=True, reason="the reference was made with lme4's default "
                   "tolPwrss = 1e-7: lme4's own deviance function at the reference estimates "
                   "gives 184.05313 with that tolerance and 184.05257 with 1e-12 (3e-6 "
                   "relative), and its finite-difference SEs move by up to 1.3%; daskmm "
                   "converges PIRLS fully and matches the tight refit (cbpp_laplace_tight)")
def test_cbpp_laplace():
    fx, fit = fitted_once("conformance", "cbpp_laplace")
    check_document(fit.to_dict(), fit.ranef_frame(), fx)


@pytest.mark.parametrize("fid", LOCAL_FIXTURES)
def test_glmer_fits(fid):
    """Crossed, correlated slopes, nested with cbind, a two-level factor response, cbpp with a
    tight PIRLS and the negative binomial (glmer.nb), against glmer."""
    fx, fit = fitted_once("glmm", fid)
    assert fit.converged
    check_document(fit.to_dict(), fit.ranef_frame(), fx)
    if fid == "nb2_glmernb":
        assert rel(fit.nb_size, fx["nb_size"]) < 1e-3
        assert fit.to_dict()["nb_size"] == fit.nb_size


@pytest.mark.parametrize("fid, family", [("cbpp_agq25", "binomial")])
def test_cli_matches_glmer(fid, family, client, tmp_path):
    """The CLI path (the same fit as the API's; grouseticks through the CLI added 30 s and
    nothing the API test does not check)."""
    fx = load_fixture(fid)
    out = tmp_path / "fit"
    proc = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", fx["data_path"],
                           "--formula", fx["formula"], "--family", family, "--nagq",
                           str(fx["nAGQ"]), "--factors", ",".join(fx["factors"]),
                           "--scheduler", client.scheduler.address, "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert doc["family"] == family
    rf = pd.read_parquet(out / "ranef.parquet")
    assert list(rf.columns) == ["group", "level", "term", "estimate", "std_error"]
    check_document(doc, rf, fx)
    assert "z value" in (out / "summary.txt").read_text()


# ------------------------------------------------------------------ oracle


PRINTED = [pytest.param(w, f, id=f, marks=[pytest.mark.xfail(
               strict=True, reason=FLAT_OPTIMUM[f])] if f in FLAT_OPTIMUM else [])
           for w, f in [("conformance", "grouseticks_poisson"), ("conformance", "cbpp_agq25"),
                        *(("glmm", f) for f in LOCAL_FIXTURES)]]


@pytest.mark.parametrize("where, fid", PRINTED)
def test_summary_prints_as_lme4(where, fid):
    """``print(summary(fit))`` as lme4 prints it, character for character
    (tests/results/golden.py: what may differ, and why)."""
    assert_same_text(fitted_once(where, fid)[1].summary(), fid)


@pytest.mark.parametrize("where, fid", PRINTED)
def test_print_as_lme4(where, fid):
    """``print(fit)``: lme4's short form (``print.merMod``)."""
    assert_same_text(str(fitted_once(where, fid)[1]), f"{fid}_print")
