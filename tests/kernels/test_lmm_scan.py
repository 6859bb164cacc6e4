"""FaST-LMM's exact scan, the two ways daskmm computes it: the eigenvector rotation and, for
one trait, REML from the tridiagonal form with the tests through the Cholesky factor."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.kernels import lmm_scan


@pytest.fixture
def problem():
    rng = np.random.default_rng(4)
    n = 300
    G = rng.binomial(2, 0.3, size=(n, 700)).astype(float)
    Z = lmm_scan.standardize(G, lmm_scan.variant_stats(G))
    K = Z[:, :500] @ Z[:, :500].T
    X = np.c_[rng.normal(size=(n, 2)), np.ones(n)]
    L = np.linalg.cholesky(0.6 * K / 500 + 0.4 * np.eye(n))
    Y = np.c_[X @ [0.5, 0.1, 2.0] + L @ rng.normal(size=n), rng.normal(size=n)]
    return K, X, Y, Z[:, 500:]


def test_tridiagonal_reml_equals_the_eigendecomposition(problem):
    K, X, Y, _ = problem
    K = K * (len(K) / np.trace(K))
    S, U = lmm_scan.complement_eigh(K.copy(), X)
    uy = U.T @ Y[:, 0]
    tri = lmm_scan.complement_tridiagonal(K.copy(), X, Y[:, 0])
    assert np.allclose(tri.S, S, rtol=0, atol=1e-10 * S.max())
    for h in (0.0, 0.3, 0.5, 0.9):
        assert tri.neg_reml(h) == pytest.approx(lmm_scan.neg_reml(h, S, uy), rel=1e-12)
        assert tri.grad(h) == pytest.approx(lmm_scan.neg_reml_grad(h, S, uy), rel=1e-8,
                                            abs=1e-9)


def test_cholesky_tests_equal_the_rotated_tests(problem, monkeypatch):
    K, X, Y, Z = problem
    chol = lmm_scan.fit_null(K.copy(), X, Y[:, :1])
    assert chol.U is None and len(chol.chol) == 1
    monkeypatch.setattr(lmm_scan, "CHOLESKY_TRAITS", 0)
    rot = lmm_scan.fit_null(K.copy(), X, Y[:, :1])
    assert rot.U is not None
    assert np.allclose(chol.h2, rot.h2, rtol=1e-12)
    a, b = lmm_scan.test_variants(chol, Z), lmm_scan.test_variants(rot, Z)
    for k in ("beta", "se", "statistic", "p_value"):
        assert np.allclose(a[k], b[k], rtol=1e-9, atol=1e-13), k


def test_a_variant_in_the_span_of_the_covariates_has_p_value_one(problem):
    K, X, Y, Z = problem
    null = lmm_scan.fit_null(K.copy(), X, Y)
    res = lmm_scan.test_variants(null, np.c_[Z[:, :3], X[:, 0] * 2 - 1])
    assert res["p_value"][3].tolist() == [1.0, 1.0]
    assert res["beta"][3].tolist() == [0.0, 0.0]
    one = lmm_scan.fit_null(K.copy(), X, Y[:, :1])         # the Cholesky form
    res = lmm_scan.test_variants(one, np.c_[Z[:, :3], X[:, 0] * 2 - 1])
    assert res["p_value"][3, 0] == 1.0 and res["beta"][3, 0] == 0.0
