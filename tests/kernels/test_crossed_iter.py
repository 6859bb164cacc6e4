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
    red = ci.Reduced.of(st, np.array([1.3, 0.2]))
    b = np.random.default_rng(0).normal(size=(NG + NH, 3))
    x, iters = red.solve(b, 1e-12)
    A = np.eye(NG + NH) + lam[:, None] * st.ZtZ.toarray() * lam[None, :]
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-9, atol=1e-11)
    assert iters < 60
    with pytest.raises(FloatingPointError, match="conjugate gradients"):
        ci.pcg(red.schur, b[NG:], red.schur_diag(), tol=1e-14, maxiter=2)


def dense_criterion(st: ci.CrossedStats, theta, reml: bool) -> float:
    d = dense(st, theta)
    n, p = st.n, st.XtX.shape[0]
    m = n - p if reml else n
    return (d["logdet_A"] + (d["logdet_S"] if reml else 0.0)
            + m * (1 + np.log(2 * np.pi * d["r2"] / m)))


@pytest.fixture(scope="module")
def three():
    rng = np.random.default_rng(4)
    n, sizes = 3000, [200, 90, 40]
    codes = [rng.integers(0, k, n) for k in sizes]
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + sum(rng.normal(0, s, k)[c] for s, k, c in
                          zip([0.7, 0.5, 0.3], sizes, codes)) + rng.normal(size=n)
    return ci.crossed_stats(y, np.column_stack([np.ones(n), x]), codes, sizes,
                            w=rng.uniform(0.5, 2.0, n))


@pytest.mark.parametrize("which", ["two", "three"])
@pytest.mark.parametrize("reml", [True, False])
def test_the_gradient_is_the_criterions_derivative(crossing, three, which, reml):
    st = crossing[0] if which == "two" else three
    for theta in ([0.6, 0.4, 0.3], [1.0, 1.0, 1.0], [0.05, 2.0, 0.5]):
        theta = np.array(theta[:len(st.sizes)])
        h = 1e-6
        fd = np.array([(dense_criterion(st, theta + h * e, reml)
                        - dense_criterion(st, theta - h * e, reml)) / (2 * h)
                       for e in np.eye(len(theta))])
        # many probes: the traces' estimate converges on the derivative; the fit's 10
        # probes keep it within a few tenths (its noise moves theta by ~1e-4)
        many = ci.criterion(st, theta, reml, probes=400, steps=30, deflate=10,
                            gradient=True).gradient
        few = ci.criterion(st, theta, reml, probes=10, steps=30, deflate=10,
                           gradient=True).gradient
        scale = np.abs(fd) + 20.0
        assert np.all(np.abs(many - fd) < 3e-3 * scale), (theta, many, fd)
        assert np.all(np.abs(few - fd) < 3e-2 * scale), (theta, few, fd)
        assert not np.allclose(few, many, rtol=1e-9)


def test_lanczos_gives_the_solves_with_the_quadratures(crossing):
    st, _ = crossing
    red = ci.Reduced.of(st, np.array([0.9, 0.6]))
    Z = np.random.default_rng(2).choice([-1.0, 1.0], size=(NH, 4))
    S = red.schur(np.eye(NH))
    w, U = np.linalg.eigh(S)
    want = np.einsum("qm,qm->m", Z, (U * np.log(w)) @ (U.T @ Z))
    vals, X = ci.lanczos_quadratures(red.schur, Z, 60, solves=True)
    np.testing.assert_allclose(X, np.linalg.solve(S, Z), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(vals, want, rtol=1e-9)
    # stopped where the quadratures have converged (log converges before the inverse):
    # the solves to 1e-5 on entries of about 0.1, what the gradient's traces need
    early, X2 = ci.lanczos_quadratures(red.schur, Z, 60, solves=True, rtol=1e-10)
    np.testing.assert_allclose(early, want, rtol=1e-9)
    np.testing.assert_allclose(X2, np.linalg.solve(S, Z), rtol=0, atol=1e-5)


def test_partitions_sum_to_the_whole(three):
    rng = np.random.default_rng(5)
    n, sizes = 900, [50, 30]
    keys = [rng.integers(0, k, n) for k in sizes]
    levels = [np.arange(k) for k in sizes]
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y, w = rng.normal(size=n), rng.uniform(0.5, 2, n)
    whole, lw = ci.partition_crossed(y, X, w, keys, levels)
    parts = [ci.partition_crossed(y[s], X[s], w[s], [k[s] for k in keys], levels)
             for s in (slice(0, 200), slice(200, 650), slice(650, n))]
    summed, slw = ci.add_crossed(parts)
    assert (summed.ZtZ - whole.ZtZ).count_nonzero() == 0 or \
        abs(summed.ZtZ - whole.ZtZ).max() < 1e-12
    np.testing.assert_allclose(summed.ZtX, whole.ZtX, rtol=1e-12)
    assert summed.n == n and slw == pytest.approx(lw, rel=1e-12)
    with pytest.raises(ValueError, match="level 99 was not seen"):
        ci.partition_crossed(y[:3], X[:3], None, [np.array([1, 99, 2]), keys[1][:3]], levels)


def test_the_parallel_product_is_scipys(monkeypatch):
    import scipy.sparse as sp
    A = sp.random(300, 200, density=0.05, format="csr", random_state=1)
    X = np.random.default_rng(1).normal(size=(200, 7))
    monkeypatch.setattr(ci, "SPMM_PARALLEL_NNZ", 0)  # the compiled kernel, on both cores
    assert np.array_equal(ci.spmm(A, X), A @ X)  # the same sums in the same order
    assert np.array_equal(ci.spmm(A, X[:, 0]), A @ X[:, 0])


def test_with_random_slopes_partitions_sum_and_the_full_basis_is_exact():
    from daskmm.kernels.crossed_sparse import exact_criterion
    rng = np.random.default_rng(5)
    n, sizes = 3000, [150, 60]
    codes = [rng.integers(0, k, n) for k in sizes]
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(0, 0.5, 150)[codes[0]] * x + rng.normal(size=n)
    X = np.column_stack([np.ones(n), x])
    whole = ci.crossed_stats(y, X, codes, sizes, slopes=X)
    keys = [np.array([f"l{c:03d}" for c in cs_]) for cs_ in codes]
    levels = [np.array([f"l{i:03d}" for i in range(k)]) for k in sizes]
    parts = [ci.partition_crossed(y[s], X[s], None, [k[s] for k in keys], levels, X[s])
             for s in (slice(0, 1000), slice(1000, 2200), slice(2200, n))]
    summed, _ = ci.add_crossed(parts)
    assert summed.cols == 2
    np.testing.assert_allclose(summed.counts[0], whole.counts[0], rtol=1e-12)
    np.testing.assert_allclose(summed.ZtZ.toarray(), whole.ZtZ.toarray(), rtol=1e-12)
    np.testing.assert_allclose(summed.ZtX, whole.ZtX, rtol=1e-12, atol=1e-12)
    theta = np.array([0.7, 0.1, 0.4, 0.9])
    exact = exact_criterion(whole, theta, True)
    # a deflation basis spanning the Schur complement's space, no probes: exact
    free = ci.criterion(whole, theta, True, probes=0, steps=80, basis=np.eye(sizes[1]))
    assert free.objective == pytest.approx(exact.objective, rel=1e-9)
    np.testing.assert_allclose(free.beta, exact.beta, rtol=1e-9)


@pytest.mark.parametrize("factors", [2, 3])
@pytest.mark.parametrize("reml", [True, False])
def test_with_random_slopes_the_gradient_is_the_criterions_derivative(factors, reml):
    # with a basis that spans the space and no probes the log determinant and the traces
    # are exact: the gradient against central differences of the exact (sparse) criterion
    from daskmm.kernels.crossed_sparse import exact_criterion
    rng = np.random.default_rng(5)
    n, sizes = 3000, [150, 60, 25][:factors]
    codes = [rng.integers(0, k, n) for k in sizes]
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(0, 0.5, 150)[codes[0]] * x + rng.normal(size=n) + \
        sum(rng.normal(0, 0.6, k)[c] for k, c in zip(sizes, codes))
    X = np.column_stack([np.ones(n), x])
    st = ci.crossed_stats(y, X, codes, sizes, w=rng.uniform(0.5, 2, n), slopes=X)
    theta = np.array([0.7, -0.2, 0.4, 0.9, 0.5][:3 + factors - 1])
    got = ci.criterion(st, theta, reml, probes=0, steps=200, basis=np.eye(sum(sizes[1:])),
                       gradient=True).gradient
    h = 1e-5
    fd = [(exact_criterion(st, theta + h * e, reml).objective
           - exact_criterion(st, theta - h * e, reml).objective) / (2 * h)
          for e in np.eye(len(theta))]
    np.testing.assert_allclose(got, fd, rtol=1e-7)
