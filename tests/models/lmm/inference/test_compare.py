"""Likelihood-ratio comparisons (lme4's anova) and the variance-component test."""

from __future__ import annotations

import pytest
from scipy import stats

import daskmm
from daskmm.errors import ModelError
from daskmm.models.lmm.inference.compare import anova, variance_component_test
from tests.models.lmm.inference.refs import frame, rel


@pytest.mark.parametrize("case", ["sleepstudy", "penicillin", "pastes",
                                  "sleepstudy_unbalanced", "sleepstudy_factors"])
def test_anova_matches_lme4(fits, case):
    ref, fit = fits[case]
    a = ref["anova"]
    m0 = daskmm.lmm(a["reduced"], frame(ref), mode="in-process")
    tab = anova(m0, fit)
    assert list(tab["npar"]) == a["npar"]
    for col in ("AIC", "BIC", "logLik", "deviance"):
        for got, want in zip(tab[col], a[col]):
            assert rel(got, want) < 1e-6, col
    assert rel(tab["Chisq"].iloc[1], a["Chisq"]) < 1e-6
    assert tab["Df"].iloc[1] == a["Df"]
    assert rel(tab["Pr(>Chisq)"].iloc[1], a["p_value"]) < 1e-6


def test_anova_refuses_fits_to_different_rows(fits):
    ref, fit = fits["sleepstudy"]
    other, _ = fits["sleepstudy_unbalanced"]
    m0 = daskmm.lmm(other["anova"]["reduced"], frame(other), mode="in-process")
    with pytest.raises(ModelError, match="different numbers of observations.*180"):
        anova(m0, fit)
    with pytest.raises(ModelError, match="two or more"):
        anova(fit)


def test_variance_component_test_uses_the_boundary_mixture(fits):
    ref, fit = fits["sleepstudy_unbalanced"]
    m0 = daskmm.lmm(ref["anova"]["reduced"], frame(ref), mode="in-process")
    out = variance_component_test(fit, m0)
    assert out["df"] == 1
    assert out["statistic"] == pytest.approx(m0.objective - fit.objective)
    assert out["p_value"] == pytest.approx(0.5 * stats.chi2.sf(out["statistic"], 1))
    assert "50:50 mixture of chi2(0) and chi2(1)" in out["method"]
    with pytest.raises(ModelError, match="more covariance parameters"):
        variance_component_test(m0, fit)
