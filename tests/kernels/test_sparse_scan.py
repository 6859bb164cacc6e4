"""Sparse-mode kernels: the thresholded GRM, the family-by-family rotation and the GLS
test, each against a dense computation."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.kernels import lmm_scan, sparse_scan


def families(rng, sizes):
    """A block-diagonal PSD matrix with the given block sizes, shuffled."""
    n = sum(sizes)
    K = np.zeros((n, n))
    at = 0
    for k in sizes:
        A = rng.normal(size=(k, k + 2))
        K[at:at + k, at:at + k] = A @ A.T / (k + 2)
        at += k
    perm = rng.permutation(n)
    return K[np.ix_(perm, perm)]


def test_sparse_entries_keep_the_diagonal_and_values_above_the_threshold():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(30, 50))
    K = Z @ Z.T
    rows = np.arange(30)
    i, j, v = sparse_scan.sparse_entries(K, 50, 0.1, rows, rows, diagonal=True)
    G = K / 50
    want = {(a, b) for a in range(30) for b in range(a, 30) if a == b or G[a, b] > 0.1}
    assert set(zip(i.tolist(), j.tolist())) == want
    assert np.allclose(v, G[i, j])
    S = sparse_scan.assemble(30, [(i, j, v)]).toarray()
    assert np.allclose(S, S.T) and np.trace(S) == pytest.approx(30)


def test_block_rotation_equals_the_dense_eigendecomposition():
    rng = np.random.default_rng(1)
    K = families(rng, [1, 1, 3, 3, 5, 2, 1])
    import scipy.sparse
    rot = sparse_scan.block_eigh(scipy.sparse.csr_matrix(K), 10)
    assert rot.largest == 5
    A = rng.normal(size=(len(K), 4))
    UA = rot.rotate(A)
    # U' K U is diagonal S, and the rotation is orthogonal
    UK = np.stack([rot.rotate(K[:, c:c + 1])[:, 0] for c in range(len(K))], axis=1)
    UKU = np.stack([rot.rotate(UK[r:r + 1].T)[:, 0] for r in range(len(K))])
    assert np.allclose(UKU, np.diag(rot.S), atol=1e-12)
    assert np.allclose(np.linalg.norm(UA, axis=0), np.linalg.norm(A, axis=0))
    assert np.allclose(np.sort(rot.S), np.linalg.eigvalsh(K))
    with pytest.raises(ValueError, match="links 5 samples into one group"):
        sparse_scan.block_eigh(scipy.sparse.csr_matrix(K), 4)


def test_gls_scan_equals_the_projected_scan_for_the_same_matrix():
    """The GLS form (covariates not projected) and FaST-LMM's projected form: same h2, nLL,
    beta, SE and p-values, to rounding."""
    import scipy.sparse
    rng = np.random.default_rng(2)
    K = families(rng, [4] * 30 + [1] * 40)
    n = len(K)
    X = np.c_[rng.normal(size=(n, 2)), np.ones(n)]
    L = np.linalg.cholesky(0.5 * K + 0.5 * np.eye(n))
    Y = np.c_[X @ [0.3, -0.2, 1.0] + L @ rng.normal(size=n), rng.normal(size=n)]
    Z = rng.normal(size=(n, 25))
    Ks = scipy.sparse.csr_matrix(K * (n / np.trace(K)))
    gls = sparse_scan.fit_gls_null(Ks, X, Y, 100)
    proj = lmm_scan.fit_null(Ks.toarray(), X, Y)
    assert np.allclose(gls.h2, proj.h2, rtol=1e-10)
    assert np.allclose(gls.nll, proj.nll, rtol=1e-12)
    a = sparse_scan.gls_tests(gls, gls.rot.rotate(Z))
    b = lmm_scan.test_variants(proj, Z)
    for k in ("beta", "se", "statistic", "p_value"):
        assert np.allclose(a[k], b[k], rtol=1e-9, atol=1e-14), k


def test_gls_reml_derivative_is_the_derivative():
    import scipy.sparse
    rng = np.random.default_rng(3)
    K = families(rng, [3] * 20)
    n = len(K)
    X = np.c_[rng.normal(size=n), np.ones(n)]
    rot = sparse_scan.block_eigh(scipy.sparse.csr_matrix(K), 10)
    UX, uy = rot.rotate(X), rot.rotate(rng.normal(size=(n, 1)))[:, 0]
    for h in (0.1, 0.5, 0.9):
        e = 1e-6
        num = (sparse_scan.gls_neg_reml(h + e, rot.S, UX, uy, 0.0)
               - sparse_scan.gls_neg_reml(h - e, rot.S, UX, uy, 0.0)) / (2 * e)
        assert sparse_scan.gls_neg_reml_grad(h, rot.S, UX, uy) == pytest.approx(num, rel=1e-6)


def test_h2_search_stays_where_the_covariance_is_positive_definite():
    S = np.array([-0.5, 0.2, 1.0, 2.0])
    top = lmm_scan.h2_upper(S)
    assert top < 1 / 1.5 and np.all(top * S + 1 - top > 0)
    assert lmm_scan.h2_upper(np.array([0.0, 1.0])) == lmm_scan.H2_MAX
