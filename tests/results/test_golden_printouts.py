"""Printed summaries against R's printed text, character for character
(:mod:`tests.results.golden`): lme4's and lmerTest's summaries of every LMM conformance
fixture, pbkrtest's KRmodcomp. The GLMM and GAM printouts are checked beside their conformance
fits (tests/models/glmm/test_conformance.py, tests/models/gam/test_conformance.py)."""

from __future__ import annotations

import copy

import pytest

import daskmm
from tests.conftest import LMM_FIXTURES, load_fixture
from tests.results.golden import HALF_TIE, assert_same_text


@pytest.fixture(scope="module")
def lmm_fits():
    fits = {}
    for fid in LMM_FIXTURES:
        fx = load_fixture(fid)
        fits[fid] = daskmm.lmm(fx["formula"], fx["data_path"], reml=fx["REML"],
                               factors=fx["factors"])
    return fits


@pytest.mark.parametrize("fid", LMM_FIXTURES)
def test_lmm_summary_prints_as_lme4(fid, lmm_fits):
    assert_same_text(lmm_fits[fid].summary(), fid)


@pytest.mark.parametrize("fid", [f for f in LMM_FIXTURES if "_ml" not in f])
@pytest.mark.parametrize("ddf, suffix", [("satterthwaite", "satterthwaite"),
                                         ("kenward-roger", "kr")])
def test_lmm_summary_with_ddf_prints_as_lmertest(fid, ddf, suffix, lmm_fits):
    fit = copy.copy(lmm_fits[fid])  # the tests are kept on the result: not on the shared one
    fit.test_fixef(ddf)
    assert_same_text(fit.summary(), f"{fid}_{suffix}", df_column=True)


def test_krmodcomp_prints_as_pbkrtest(lmm_fits):
    fx = load_fixture("sleepstudy_reml")
    small = daskmm.lmm("Reaction ~ 1 + (Days | Subject)", fx["data_path"],
                       factors=fx["factors"])
    tab = daskmm.kr_modcomp(lmm_fits["sleepstudy_reml"], small)
    assert_same_text(str(tab), "sleepstudy_krmodcomp")
    by_columns = daskmm.kr_modcomp(lmm_fits["sleepstudy_reml"], ["Days"])
    assert str(by_columns).splitlines()[1] == "small : the large model without Days"
    assert str(by_columns).splitlines()[2:] == str(tab).splitlines()[2:]


@pytest.mark.parametrize("fid", [pytest.param(f, marks=[pytest.mark.xfail(
    strict=True, reason=HALF_TIE[f"{f}_print"])] if f"{f}_print" in HALF_TIE else [])
    for f in LMM_FIXTURES])
def test_lmm_print_as_lme4(fid, lmm_fits):
    """``print(fit)``: lme4's short form (``print.merMod``)."""
    assert_same_text(str(lmm_fits[fid]), f"{fid}_print")
