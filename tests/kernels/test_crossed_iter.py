"""The matrix-free criterion of crossed random intercepts (daskmm/kernels/crossed_iter.py)
against dense linear algebra and daskmm's exact LMM criterion on a random 400 x 150
crossing: the solved parts exactly, the stochastic log determinant within its reported
standard error, that error calibrated over seeds, and an evaluation repeatable by its seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.kernels import crossed_iter as ci

N, NG, NH = 6000, 400, 150


@pytest.fixture(scope="module")
def crossing():
    rng = np.random.default_rng(1)
    g, h = rng.integers(0, NG, N), rng.integers(0, NH, N)
    x = rng.normal(size=N)
    y = 1 + 0.5 * x + rng.normal(0, 0.8, NG)[g] + rng.normal(0, 0.5, NH)[h] + rng.normal(size=N)
    X = np.column_stack([np.ones(N), x])
    frame = pd.DataFrame({"y": y, "x": x, "g": [f"g{i:03d}" for i in g],
                          "h": [f"h{i:03d}" for i in h]})
    return ci.crossed_stats(y, X, [g, h], [NG, NH]), frame


def dense(st: ci.CrossedStats, theta) -> dict:
    lam = st.lam(theta)
    A = np.eye(len(lam)) + lam[:, None] * st.ZtZ.toarray() * lam[None, :]
    LZX, LZy = lam[:, None] * st.ZtX, lam * st.Zty
    C_X, c_y = np.linalg.solve(A, LZX), np.linalg.solve(A, LZy)
    S = st.XtX - LZX.T @ C_X
    rhs = st.Xty - LZX.T @ c_y
    beta = np.linalg.solve(S, rhs)
    return {"logdet_A": np.linalg.slogdet(A)[1], "logdet_S": np.linalg.slogdet(S)[1],
            "r2": st.yty - LZy @ c_y - beta @ rhs, "beta": beta}


@pytest.mark.parametrize("reml", [True, False])
def test_with_the_exact_log_determinant_it_is_daskmms_lme4_criterion(crossing, reml):
    st, frame = crossing
    fit = daskmm.lmm("y ~ x + (1 | g) + (1 | h)", frame, reml=reml, factors=["g", "h"])
    assert fit.term_groups() == ["g", "h"]  # the factor with more levels first, as here
    theta = np.asarray(fit.theta)
    got = ci.criterion(st, theta, reml, probes=4, steps=20, deflate=0)
    want = dense(st, theta)
    assert got.logdet_S == pytest.approx(want["logdet_S"], rel=1e-10)
    assert got.r2 == pytest.approx(want["r2"], rel=1e-10)
    np.testing.assert_allclose(got.beta, want["beta"], rtol=1e-10)
    np.testing.assert_allclose(got.beta, fit.beta, rtol=1e-8)
    exact = got.objective - got.logdet_A + want["logdet_A"]
    assert exact == pytest.approx(fit.objective, rel=1e-12)


def test_the_estimate_is_within_its_standard_error(crossing):
    st, _ = crossing
    theta = np.array([0.758, 0.515])
    exact = dense(st, theta)["logdet_A"]
    got = ci.criterion(st, theta, True, probes=30, steps=40, seed=7, deflate=10)
    assert abs(got.logdet_A - exact) < 4 * got.se
    assert got.se < 0.2  # 1.6e-4 of log|A|: the 10 deflated directions remove most variance
    plain = ci.criterion(st, theta, True, probes=30, steps=40, seed=7, deflate=0)
    assert plain.se > 3 * got.se


def test_the_standard_error_is_calibrated_over_seeds(crossing):
    st, _ = crossing
    theta = np.array([0.758, 0.515])
    exact = dense(st, theta)["logdet_A"]
    runs = [ci.criterion(st, theta, True, probes=20, steps=30, seed=s, deflate=10)
            for s in range(16)]
    err = np.array([r.logdet_A - exact for r in runs])
    se = np.array([r.se for r in runs])
    assert abs(err.mean()) < 3 * se.mean() / np.sqrt(len(runs))  # unbiased
    assert 0.5 < err.std(ddof=1) / se.mean() < 1.6  # the reported error is the real one


def test_an_evaluation_repeats_exactly_by_its_seed(crossing):
    st, _ = crossing
    a = ci.criterion(st, np.array([0.7, 0.4]), True, seed=3, deflate=10)
    b = ci.criterion(st, np.array([0.7, 0.4]), True, seed=3, deflate=10)
    c = ci.criterion(st, np.array([0.7, 0.4]), True, seed=4, deflate=10)
    assert a.objective == b.objective and a.se == b.se
    assert a.objective != c.objective


def test_conjugate_gradients_solve_to_their_tolerance(crossing):
    st, _ = crossing
    lam = st.lam(np.array([1.3, 0.2]))
    red = ci.Reduced.of(st, lam)
    b = np.random.default_rng(0).normal(size=(NG + NH, 3))
    x, iters = red.solve(b, 1e-12)
    A = np.eye(NG + NH) + lam[:, None] * st.ZtZ.toarray() * lam[None, :]
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-9, atol=1e-11)
    assert iters < 60
    with pytest.raises(FloatingPointError, match="conjugate gradients"):
        ci.pcg(red.schur, b[NG:], red.schur_diag(), tol=1e-14, maxiter=2)
