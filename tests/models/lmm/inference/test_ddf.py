"""Satterthwaite degrees of freedom and p-values, as lmerTest's summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.errors import ModelError
from daskmm.models.registry import MixedResult
from tests.conftest import LMM_FIXTURES, load_fixture
from tests.models.lmm.inference.conftest import at_reference
from tests.models.lmm.inference.refs import CASES, rel


@pytest.mark.parametrize("fid", [f for f in LMM_FIXTURES if "reml" in f])
def test_satterthwaite_df_of_our_fit_match_lmertest_fixtures(fid):
    fx = load_fixture(fid)
    df = pd.read_csv(fx["data_path"])
    for c in fx.get("factors") or []:
        df[c] = df[c].astype(str)
    fit = daskmm.lmm(fx["formula"], df, mode="in-process", ddf="satterthwaite")
    ref = np.atleast_1d(np.asarray(fx["satterthwaite_df"], float))
    got = fit.fixef()["df"].to_numpy()
    assert np.max(np.abs(got - ref) / ref) < 1e-4


@pytest.mark.parametrize("case", CASES)
def test_t_tests_match_lmertest_at_its_optimum(fits, case):
    """df and p-values to 1e-4 relative at lmerTest's own optimum. (From our own fit the
    p-values of 1e-7..1e-17 differ in the 4th digit from lmerTest's: they move with the last
    digits of theta, where lme4's optimiser stops ~1e-5 from the optimum.)"""
    ref, fit = fits[case]
    here = at_reference(fit, ref)
    tab = here.test_fixef()
    assert list(tab["term"]) == [r["term"] for r in ref["coef"]]
    for got, want in zip(tab.itertuples(), ref["coef"]):
        assert rel(got.estimate, want["estimate"]) < 1e-6
        assert rel(got.std_error, want["std_error"]) < 1e-6
        assert rel(got.df, want["df"]) < 1e-4
        assert rel(got.p_value, want["p_value"]) < 1e-4


def test_summary_prints_lmertest_columns_and_the_document_keeps_them(fits):
    ref, fit = fits["sleepstudy"]
    fit.test_fixef("satterthwaite")
    text = fit.summary()
    # lmerTest's title passes 80 characters: R wraps it before the class name
    assert "t-tests use Satterthwaite's method [\nlmerModLmerTest]" in text
    assert "Pr(>|t|)" in text and "Signif. codes" in text
    doc = fit.to_dict()
    assert doc["ddf"] == "Satterthwaite"
    assert [r["df"] for r in doc["fixef"]] == pytest.approx(fit.fixef()["df"].tolist())
    back = MixedResult.from_dict(doc)
    assert back.fixef()["p_value"].tolist() == pytest.approx(fit.fixef()["p_value"].tolist())
    assert "Pr(>|t|)" in back.summary()


def test_unknown_methods_are_refused_with_what_to_do(fits):
    _, fit = fits["dyestuff"]
    with pytest.raises(ModelError, match="allowed: satterthwaite, kenward-roger"):
        fit.test_fixef("containment")


def test_a_result_read_back_cannot_compute_new_tests(fits):
    _, fit = fits["dyestuff"]
    back = MixedResult.from_dict(fit.to_dict())
    with pytest.raises(ModelError, match="read from a document"):
        back.test_fixef()


@pytest.mark.parametrize("case", ["sleepstudy", "sleepstudy_unbalanced", "sleepstudy_factors",
                                  "cake"])
def test_type3_f_tests_match_lmertest_at_its_optimum(fits, case):
    ref, fit = fits[case]
    tab = at_reference(fit, ref).anova()
    assert list(tab.index) == [r["term"] for r in ref["type3"]]
    for (term, got), want in zip(tab.iterrows(), ref["type3"]):
        assert got["NumDF"] == want["ndf"]
        assert rel(got["DenDF"], want["ddf"]) < 1e-4, term
        assert rel(got["F value"], want["F"]) < 1e-6, term
        assert rel(got["Sum Sq"], want["sum_sq"]) < 1e-6, term
        assert rel(got["Pr(>F)"], want["p_value"]) < 1e-4, term


def test_type3_on_a_model_without_fixed_terms_is_empty(fits):
    _, fit = fits["penicillin"]
    assert len(fit.anova()) == 0
    with pytest.raises(ModelError, match="type III"):
        fit.anova(type=1)


@pytest.mark.parametrize("case", ["sleepstudy", "dyestuff", "pastes", "sleepstudy_unbalanced",
                                  "sleepstudy_factors", "cake", "penicillin"])
def test_kenward_roger_matches_pbkrtest_at_its_optimum(fits, case):
    ref, fit = fits[case]
    here = at_reference(fit, ref)
    tab = here.test_fixef("kenward-roger")
    assert here.ddf == "Kenward-Roger"
    for got, want in zip(tab.itertuples(), ref["kr_coef"]):
        assert rel(got.std_error, want["std_error"]) < 1e-6
        assert rel(got.df, want["df"]) < 1e-4
        assert rel(got.p_value, want["p_value"]) < 1e-4
    assert "t-tests use Kenward-Roger's method" in here.summary()


def test_kenward_roger_with_many_crossed_coefficients_says_what_to_do(fits, monkeypatch):
    import daskmm.models.lmm.inference.ddf as ddf_mod
    _, fit = fits["penicillin"]
    monkeypatch.setattr(ddf_mod, "KR_DENSE_MAX", 20)  # Penicillin has 24 + 6 coefficients
    fit._kr_parts = None
    with pytest.raises(ModelError, match="dense Z'Z of all 30.*satterthwaite"):
        fit.test_fixef("kenward-roger")


def test_type3_tests_leave_the_chosen_t_tests_alone(fits):
    ref, fit = fits["cake"]
    here = at_reference(fit, ref)
    kr = here.test_fixef("kenward-roger").copy()
    here.anova()
    assert here.ddf == "Kenward-Roger"
    assert here.tests["df"].tolist() == kr["df"].tolist()


def test_tests_after_the_fits_cluster_closed_say_what_to_do():
    from distributed import Client, LocalCluster

    from daskmm.distributed.client import NO_DASHBOARD
    from tests.conftest import load_fixture
    df = pd.read_csv(load_fixture("sleepstudy_reml")["data_path"])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      **NO_DASHBOARD) as cl, Client(cl) as c:
        fit = daskmm.lmm("Reaction ~ Days + (Days | Subject)", df, client=c,
                         mode="distributed")
    with pytest.raises(ModelError, match="cluster that has closed.*ci=..., ddf=..."):
        fit.test_fixef()
