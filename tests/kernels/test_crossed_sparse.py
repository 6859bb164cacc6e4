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
