"""A formula's left-hand side is an R expression: ``y / n``, ``y - 100``, ``y^2`` are
arithmetic, not the nesting, interaction or power of terms. REML criteria from lme4 1.1-31
(``REMLcrit(lmer(f, sleepstudy))``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import daskmm

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "conformance" / "data"


@pytest.mark.parametrize("formula, remlcrit", [
    ("Reaction^2 ~ Days + (1 | Subject)", 4100.08116841543),
    ("Reaction - 100 ~ Days + (1 | Subject)", 1786.46508539492),
    ("Reaction/(Days + 1) ~ Days + (1 | Subject)", 1841.80611339428),
])
def test_an_arithmetic_response_is_evaluated_as_r_does(formula, remlcrit):
    fit = daskmm.lmm(formula, str(DATA / "sleepstudy.csv"), mode="in-process")
    assert abs(fit.objective - remlcrit) < 1e-9 * remlcrit


def test_a_proportion_response_with_its_trials_as_weights_is_the_cbind_fit():
    kw = {"factors": ["period"], "mode": "in-process"}
    a = daskmm.glmm("incidence/size ~ period + (1 | herd)", str(DATA / "cbpp.csv"),
                    "binomial", weights="size", **kw)
    b = daskmm.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                    str(DATA / "cbpp.csv"), "binomial", **kw)
    assert a.loglik == pytest.approx(b.loglik, rel=1e-12)
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e-9)


def test_a_response_that_divides_by_zero_is_refused_naming_it():
    with pytest.raises(daskmm.errors.DataError,
                       match=r"response 'Reaction/Days' has a non-finite value"):
        daskmm.lmm("Reaction/Days ~ 1 + (1 | Subject)", str(DATA / "sleepstudy.csv"),
                   mode="in-process")
