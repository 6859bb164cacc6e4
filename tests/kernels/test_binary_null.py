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
    # the same fixed point (R stops at 1e-10 relative steps; measured 4e-12 apart), found
    # as the root of tau's REML score in fewer points than GMMAT's steps (8 against 18)
    assert fit.tau == pytest.approx(r["tau"], rel=1e-9)
    np.testing.assert_allclose(fit.alpha, r["alpha"], rtol=1e-9)
    np.testing.assert_allclose(fit.mu, r["mu"], rtol=1e-9)
    assert abs(fit.score) < 1e-9   # the certificate: Y'PKPY = tr(PK) at the fit
    assert fit.iterations < r["iterations"]


def test_on_its_bound_the_null_is_the_glm(ref):
    # a trait drawn without any family effect (seed 0): tau's REML step goes negative, is
    # halved to the bound, and the null is the logistic regression's to rounding
    y, X, K, _ = ref
    y0 = (np.random.default_rng(0).random(len(y)) < 0.3).astype(float)
    fit = BN.pql_ai_reml(y0, X, K)
    assert fit.tau == 0.0
    assert fit.score < 0   # the certificate on the bound: the REML score points out of it
    glm = BN.logistic_glm(y0, X)
    np.testing.assert_allclose(fit.alpha, glm, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fit.mu, 1 / (1 + np.exp(-X @ glm)), rtol=1e-10)


def test_a_trait_that_is_not_binary_is_refused(ref):
    y, X, K, _ = ref
    with pytest.raises(ValueError, match="a binary trait, 0 or 1"):
        BN.pql_ai_reml(y * 2, X, K)
    with pytest.raises(FitError, match="did not converge in 1 iterations"):
        BN.pql_ai_reml(y, X, K, maxiter=1)


def _families(ref):
    y, X, K, _ = ref
    fam = pd.read_csv(HERE / "binary_null.csv")["fam"].to_numpy()
    order = np.argsort(fam, kind="stable")
    idx = order.reshape(-1, 4)  # the fixture's families are all of four
    return y, X, K, BN.BlockK(len(y), [(idx, K[idx[:, :, None], idx[:, None, :]])])


def test_a_block_diagonal_k_gives_the_dense_fit(ref):
    # the sparse mode's GRM held as its groups of relatives: the same fit as the dense K
    y, X, K, BK = _families(ref)
    dense, block = BN.pql_ai_reml(y, X, K), BN.pql_ai_reml(y, X, BK)
    assert block.tau == pytest.approx(dense.tau, rel=1e-10)
    np.testing.assert_allclose(block.alpha, dense.alpha, rtol=1e-10)
    np.testing.assert_allclose(block.mu, dense.mu, rtol=1e-10)
    v = np.random.default_rng(1).normal(size=(len(y), 2))
    np.testing.assert_allclose(BK.matvec(v), K @ v, rtol=1e-13, atol=1e-13)
    W = dense.mu * (1 - dense.mu)
    np.testing.assert_allclose(BK.factor(W, 0.7).solve(v), np.linalg.solve(
        np.diag(1 / W) + 0.7 * K, v), rtol=1e-10)


@pytest.mark.parametrize("tau", [0.7, 1e-7])
def test_the_trace_is_the_direct_sum_on_both_of_its_paths(ref, tau):
    # tr(Sigma^-1 K) by the diagonal identity (tau K large enough) and by the entries (tau
    # K small beside W^-1, where the identity would cancel)
    y, X, K, BK = _families(ref)
    W = np.random.default_rng(2).uniform(0.01, 0.25, len(y))
    direct = np.sum(np.linalg.inv(np.diag(1 / W) + tau * K) * K)
    assert BN.DenseK(K).factor(W, tau).trace_k() == pytest.approx(direct, rel=1e-10)
    assert BK.factor(W, tau).trace_k() == pytest.approx(direct, rel=1e-10)


def test_holding_the_fitted_tau_returns_the_fit(ref):
    # SAIGE's LOCO null holds tau and refits the rest: at the whole K's own tau, from the
    # logistic regression's start, it returns to the whole fit
    y, X, K, _ = ref
    fit = BN.pql_ai_reml(y, X, K)
    held, f = BN.pql_fixed_tau(y, X, K, fit.tau, X @ BN.logistic_glm(y, X))
    np.testing.assert_allclose(held.alpha, fit.alpha, rtol=1e-8)
    np.testing.assert_allclose(held.mu, fit.mu, rtol=1e-8)
    W = held.mu * (1 - held.mu)
    v = np.arange(len(y), dtype=float)
    np.testing.assert_allclose(f.solve(v), np.linalg.solve(np.diag(1 / W) + fit.tau * K, v),
                               rtol=1e-6)
    glm, none = BN.pql_fixed_tau(y, X, K, 0.0, X @ fit.alpha)
    assert none is None
    np.testing.assert_allclose(glm.alpha, BN.logistic_glm(y, X), rtol=1e-12)


def test_conjugate_gradients_solve_as_the_factor_does_or_fall_back_to_it(ref, monkeypatch):
    # a dense K's held-tau steps solve by conjugate gradients preconditioned with a nearby
    # Sigma's factor: a Cholesky solve's answer to rounding; a preconditioner too far off
    # (here W a hundredfold) for PCG_MAXITER steps (here 2) gives way to the system's own
    # factor
    y, X, K, _ = ref
    rng = np.random.default_rng(3)
    W = rng.uniform(0.05, 0.25, len(y))
    B = rng.normal(size=(len(y), 4))
    direct = np.linalg.solve(np.diag(1 / W) + 0.7 * K, B)
    near = BN._solver(BN.DenseK(K), W, 0.7, BN.DenseK(K).factor(W * rng.uniform(0.9, 1.1,
                                                                              len(y)), 0.6))
    np.testing.assert_allclose(near.solve(B), direct, rtol=1e-11, atol=1e-13)
    assert 0 < near.steps <= 20 and near.exact is None
    monkeypatch.setattr(BN, "PCG_MAXITER", 2)
    far = BN._solver(BN.DenseK(K), W, 0.7, BN.DenseK(K).factor(W * 100, 0.7))
    np.testing.assert_allclose(far.solve(B), direct, rtol=1e-11, atol=1e-13)
    assert far.exact is not None


def test_the_root_of_the_score_is_the_interleaved_iteration_s_fixed_point(ref):
    # GMMAT's iteration and the root-finder, both in this module's algebra, at a second trait
    # (prevalence about 10%): the same fit, and the score at it zero
    y, X, K, _ = ref
    lin = np.log(0.1 / 0.9) + np.linalg.cholesky(K) @ np.random.default_rng(4).normal(
        size=len(y))
    y1 = (np.random.default_rng(5).random(len(y)) < 1 / (1 + np.exp(-lin))).astype(float)
    fit = BN.pql_ai_reml(y1, X, K)
    KK = BN.DenseK(K)
    tau, eta = BN.START_TAU, X @ BN.logistic_glm(y1, X)
    for _ in range(500):   # GMMAT's steps (the R transcription's), from the same start
        mu, W, Y = BN._working(y1, eta)
        f = KK.factor(W, tau)
        alpha, SiX, cov, PY = BN._gls(Y, X, f)
        KPY = K @ PY
        trace = f.trace_k() - np.sum(cov * (SiX.T @ K @ SiX))
        ai = KPY @ (f.solve(KPY) - SiX @ (cov @ (SiX.T @ KPY)))
        step = (PY @ KPY - trace) / ai
        while tau + step < 0:
            step /= 2
        tau0, tau, eta = tau, tau + step, Y - PY / W
        if abs(tau - tau0) < 1e-12 * tau:
            break
    assert tau > 0.05
    assert fit.tau == pytest.approx(tau, rel=1e-9)
    np.testing.assert_allclose(fit.eta, eta, rtol=1e-8, atol=1e-10)
    assert abs(fit.score) < 1e-9
