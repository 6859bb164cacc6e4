"""The binary trait's null model (daskmm/kernels/binary_null.py) against the same PQL and
AI-REML steps transcribed in R (tests/fixtures/gwas/make_binary_null.R: GMMAT's glmmkin.ai,
which SAIGE's step 1 follows), on 400 samples in families of four."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from daskmm.errors import FitError
from daskmm.kernels import binary_null as BN

HERE = Path(__file__).parents[1] / "fixtures" / "gwas"


@pytest.fixture(scope="module")
def ref():
    d = pd.read_csv(HERE / "binary_null.csv")
    fam = d["fam"].to_numpy()
    K = 0.5 * (fam[:, None] == fam[None, :]) + 0.5 * np.eye(len(d))
    X = np.column_stack([np.ones(len(d)), d["x1"], d["x2"]])
    return d["y"].to_numpy(float), X, K, json.loads((HERE / "binary_null.json").read_text())


def test_the_null_is_the_r_transcription_s(ref):
    y, X, K, r = ref
    fit = BN.pql_ai_reml(y, X, K)
    assert r["tau"] > 0.05  # a variance away from its bound
    assert fit.tau == pytest.approx(r["tau"], rel=1e-6)
    np.testing.assert_allclose(fit.alpha, r["alpha"], rtol=1e-6)
    np.testing.assert_allclose(fit.mu, r["mu"], rtol=1e-6)
    assert abs(fit.iterations - r["iterations"]) <= 2


def test_on_its_bound_the_null_is_the_glm(ref):
    # a trait drawn without any family effect (seed 0): tau's REML step goes negative, is
    # halved to the bound, and the null is the logistic regression's to rounding
    y, X, K, _ = ref
    y0 = (np.random.default_rng(0).random(len(y)) < 0.3).astype(float)
    fit = BN.pql_ai_reml(y0, X, K)
    assert fit.tau == 0.0
    glm = BN.logistic_glm(y0, X)
    np.testing.assert_allclose(fit.alpha, glm, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fit.mu, 1 / (1 + np.exp(-X @ glm)), rtol=1e-10)


def test_a_trait_that_is_not_binary_is_refused(ref):
    y, X, K, _ = ref
    with pytest.raises(ValueError, match="a binary trait, 0 or 1"):
        BN.pql_ai_reml(y * 2, X, K)
    with pytest.raises(FitError, match="did not converge in 1 iterations"):
        BN.pql_ai_reml(y, X, K, maxiter=1)
