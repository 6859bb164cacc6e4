"""Firth's logistic regression for the top hits (daskmm/kernels/firth.py) against brglm2's
Jeffreys-prior penalised fit (tests/fixtures/gwas/make_firth.R), with a null model's linear
predictor as an offset; finite and optimal where a variant separates cases from controls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

from daskmm.kernels import firth

HERE = Path(__file__).parents[1] / "fixtures" / "gwas"


@pytest.fixture(scope="module")
def ref():
    d = pd.read_csv(HERE / "firth.csv")
    X = np.column_stack([np.ones(len(d)), d["x1"]])
    return d, X, json.loads((HERE / "firth.json").read_text())


@pytest.mark.parametrize("g", ["g_common", "g_rare"])
def test_the_fit_is_brglm2s(ref, g):
    d, X, r = ref
    y, off = d["y"].to_numpy(float), d["offset"].to_numpy()
    fit = firth.firth_logistic(y, np.column_stack([X, d[g]]), off)
    np.testing.assert_allclose(fit.beta, r[g]["coef"], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fit.se, r[g]["se"], rtol=1e-6)
    assert fit.penalised == pytest.approx(r[g]["pl"], rel=1e-9)
    null = firth.firth_logistic(y, X, off)
    np.testing.assert_allclose(null.beta, r["null_coef"], rtol=1e-7)
    effect, se, p = firth.firth_test(y, X, d[g].to_numpy(float), off, null)
    stat = 2 * (r[g]["pl"] - r["null_pl"])
    assert effect == pytest.approx(r[g]["coef"][-1], rel=1e-7)
    assert p == pytest.approx(chi2.sf(stat, 1), rel=1e-6)
    assert (effect / se) ** 2 == pytest.approx(stat, rel=1e-6)


def test_a_variant_carried_by_cases_only_has_a_finite_optimal_effect(ref):
    d, X, _ = ref
    y, off, g = d["y"].to_numpy(float), d["offset"].to_numpy(), d["g_sep"].to_numpy(float)
    assert y[g > 0].min() == 1  # separation: glm's estimate diverges
    Xg = np.column_stack([X, g])
    fit = firth.firth_logistic(y, Xg, off)
    assert np.all(np.isfinite(fit.beta)) and 1.0 < fit.beta[-1] < 10.0
    # the penalised likelihood is at its maximum: every direction lowers it
    base = firth.penalised_loglik(fit.beta, y, Xg, off)[0]
    for j in range(3):
        for h in (1e-4, -1e-4):
            b = fit.beta.copy()
            b[j] += h
            assert firth.penalised_loglik(b, y, Xg, off)[0] < base
    effect, se, p = firth.firth_test(y, X, g, off)
    assert p < 1e-3 and np.isfinite(se)
