"""The exact sparse criterion of crossed random intercepts (daskmm/kernels/crossed_sparse.py)
against dense linear algebra: its log determinant, solves and diag(A^-1) to rounding, and
the bound on the Schur complement's non-zeros that decides whether to try it."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.kernels import crossed_iter as ci
from daskmm.kernels import crossed_sparse as cs


@pytest.fixture(scope="module", params=[2, 3])
def stats(request):
    rng = np.random.default_rng(7)
    n, sizes = 2500, [300, 120, 40][:request.param]
    codes = [rng.integers(0, k, n) for k in sizes]
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + sum(rng.normal(0, 0.6, k)[c] for k, c in zip(sizes, codes)) + \
        rng.normal(size=n)
    return ci.crossed_stats(y, np.column_stack([np.ones(n), x]), codes, sizes,
                            w=rng.uniform(0.5, 2, n))


def dense_A(st, theta):
    lam = st.lam(theta)
    return np.eye(len(lam)) + lam[:, None] * st.ZtZ.toarray() * lam[None, :]


@pytest.mark.parametrize("reml", [True, False])
def test_the_sparse_criterion_is_the_dense_one(stats, reml):
    theta = np.array([0.9, 0.4, 1.3][:len(stats.sizes)])
    got = cs.exact_criterion(stats, theta, reml)
    A = dense_A(stats, theta)
    assert got.logdet_A == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)
    # the criterion's other parts are the matrix-free path's solves, done exactly
    it = ci.criterion(stats, theta, reml, probes=2, steps=5)
    assert got.r2 == pytest.approx(it.r2, rel=1e-10)
    assert got.objective - got.logdet_A == pytest.approx(it.objective - it.logdet_A,
                                                         rel=1e-12)
    np.testing.assert_allclose(got.factor.inverse_diag(chunk=64),
                               np.diag(np.linalg.inv(A)), rtol=1e-10)


def test_the_bound_bounds_the_schur_complements_non_zeros(stats):
    red = ci.Reduced.of(stats, np.ones(len(stats.sizes)))
    nnz = cs.schur_matrix(red).nnz
    assert nnz <= cs.schur_nnz_bound(stats) < 20 * nnz


@pytest.fixture(scope="module", params=[2, 3])
def slopes(request):
    """Random slopes on the first factor, (1 + x | g), and one or two scalar factors."""
    rng = np.random.default_rng(11)
    n, sizes = 2500, [200, 90, 30][:request.param]
    codes = [rng.integers(0, k, n) for k in sizes]
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(0, 0.4, sizes[0])[codes[0]] * x + \
        sum(rng.normal(0, 0.6, k)[c] for k, c in zip(sizes, codes)) + rng.normal(size=n)
    X = np.column_stack([np.ones(n), x])
    return ci.crossed_stats(y, X, codes, sizes, w=rng.uniform(0.5, 2, n), slopes=X)


def dense_slopes(st, theta):
    """``A``, ``Lambda'Z'X`` and ``Lambda'Z'y`` of :func:`slopes`, dense."""
    T = st.first_T(theta)
    lam = np.concatenate([np.kron(np.eye(st.sizes[0]), T),
                          np.zeros((2 * st.sizes[0], sum(st.sizes[1:])))], axis=1)
    rest = np.repeat(theta[3:], st.sizes[1:])
    Lam = np.vstack([lam, np.hstack([np.zeros((len(rest), 2 * st.sizes[0])),
                                     np.diag(rest)])])
    A = Lam.T @ st.ZtZ.toarray() @ Lam + np.eye(len(Lam))
    return A, Lam.T @ st.ZtX, Lam.T @ st.Zty


@pytest.mark.parametrize("reml", [True, False])
def test_with_random_slopes_the_sparse_criterion_is_the_dense_one(slopes, reml):
    theta = np.array([0.9, -0.3, 0.5, 0.4, 1.3][:3 + len(slopes.sizes) - 1])
    got = cs.exact_criterion(slopes, theta, reml)
    A, LZX, LZy = dense_slopes(slopes, theta)
    assert got.logdet_A == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)
    C_X, c_y = np.linalg.solve(A, LZX), np.linalg.solve(A, LZy)
    S = slopes.XtX - LZX.T @ C_X
    rhs = slopes.Xty - LZX.T @ c_y
    beta = np.linalg.solve(S, rhs)
    np.testing.assert_allclose(got.beta, beta, rtol=1e-10)
    assert got.r2 == pytest.approx(slopes.yty - LZy @ c_y - beta @ rhs, rel=1e-10)
    np.testing.assert_allclose(got.u, c_y - C_X @ beta, rtol=1e-8, atol=1e-12)
    Ainv = np.linalg.inv(A)
    k = 2 * slopes.sizes[0]
    first, rest = got.factor.inverse_blocks(chunk=64)
    want = np.array([Ainv[i:i + 2, i:i + 2] for i in range(0, k, 2)])
    np.testing.assert_allclose(first, want, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(rest, np.diag(Ainv)[k:], rtol=1e-10)
    # the matrix-free path's Schur diagonal (its preconditioner) and approximate blocks
    red = ci.Reduced.of(slopes, theta)
    S_A = A[k:, k:] - A[k:, :k] @ np.linalg.solve(A[:k, :k], A[:k, k:])
    np.testing.assert_allclose(red.schur_diag(), np.diag(S_A), rtol=1e-12)
    np.testing.assert_allclose(cs.schur_matrix(red).toarray(), S_A, atol=1e-12)
    approx, approx_rest = red.inverse_blocks()
    # the approximation (S^-1 by diag(S)^-1): variances within 10%, correlations within 0.05
    d = np.diagonal(want, axis1=1, axis2=2)
    np.testing.assert_allclose(np.diagonal(approx, axis1=1, axis2=2), d, rtol=0.1)
    assert np.all(np.abs(approx[:, 0, 1] - want[:, 0, 1]) < 0.05 * np.sqrt(d[:, 0] * d[:, 1]))
    assert np.all(approx_rest <= np.diag(Ainv)[k:] * (1 + 1e-12))


def test_with_random_slopes_the_bound_bounds_the_non_zeros(slopes):
    red = ci.Reduced.of(slopes, np.array([1.0, 0.2, 0.5, 1.0, 1.0][:3 + len(slopes.sizes) - 1]))
    nnz = cs.schur_matrix(red).nnz
    assert nnz <= cs.schur_nnz_bound(slopes) < 20 * nnz
