"""The blocked fast-REML kernel equals the dense one on the same model: the level block
written out as dense indicator (and slope) columns."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.kernels import freml, freml_blocked, gam_stats


def _problem(seed=1, L=23, q=2, pd=7, n=600, weighted=True):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, pd - 1))])
    codes = rng.integers(0, L, n)
    codes[codes == 5] = 6  # a level with no rows
    Zv = np.column_stack([np.ones(n)] + [rng.normal(size=n) for _ in range(q - 1)])
    z = X @ rng.normal(size=pd) + np.sum(Zv * rng.normal(size=(L, q))[codes], axis=1) \
        + rng.normal(size=n)
    w = rng.uniform(0.5, 2, n) if weighted else None
    S1 = np.diag(np.r_[0, 0, 1.0, 2.0, 0.5, 0, 0])[2:5, 2:5] + 0.1
    S2 = np.eye(2) * 3.0
    blocks = [freml.PenaltyBlock(2, 5, [S1]), freml.PenaltyBlock(5, 7, [S2, np.diag([1., 0])])]
    pen_d = freml.Penalties(pd, blocks)
    s = np.array([1.7, 0.6])[:q]
    st = gam_stats.cross_products(X, z, w)
    st.update(gam_stats.level_cross_products(X, z, w, codes, Zv, L))
    bst = freml_blocked.BlockedStats.from_sums(st, s)
    # dense: [X, Z_t0 (L columns), Z_t1 (L columns)]
    Zd = np.zeros((n, L * q))
    for t in range(q):
        Zd[np.arange(n), t * L + codes] = Zv[:, t]
    Xf = np.hstack([X, Zd])
    full = gam_stats.cross_products(Xf, z, w)
    fblocks = blocks + [freml.PenaltyBlock(pd + t * L, pd + (t + 1) * L, [s[t] * np.eye(L)])
                        for t in range(q)]
    pen_f = freml.Penalties(pd + L * q, fblocks)
    return bst, pen_d, full, pen_f


@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize("phi", [None, 1.3])
def test_blocked_criterion_and_derivatives_equal_dense(q, phi):
    bst, pen_d, full, pen_f = _problem(q=q)
    rho = np.array([0.3, -1.0, 2.0, 0.5, -0.4][:pen_d.n_sp + q])
    b = freml_blocked.evaluate(bst, pen_d, rho, phi)
    d = freml.evaluate(full["A"], full["b"], full["c"], full["n"], pen_f, rho, phi)
    assert b.value == pytest.approx(d.value, rel=1e-11)
    np.testing.assert_allclose(b.grad, d.grad, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(b.hess, d.hess, rtol=1e-8, atol=1e-9)
    pd = len(b.beta)
    np.testing.assert_allclose(b.beta, d.beta[:pd], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.b_re.T.ravel(), d.beta[pd:], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(freml_blocked.dense_inverse(b), d.P, rtol=1e-9, atol=1e-12)
    A, bb = freml_blocked.dense_cross_products(bst)
    np.testing.assert_allclose(A, full["A"], rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(bb, full["b"], rtol=1e-12, atol=1e-10)


def test_blocked_fit_reaches_the_dense_optimum_and_post_fit_agrees():
    bst, pen_d, full, pen_f = _problem(q=2, seed=4)
    fb = freml_blocked.fit(bst, pen_d)
    fd = freml.fit(full["A"], full["b"], full["c"], full["n"], pen_f)
    assert fb.converged and fd.converged
    assert fb.point.value == pytest.approx(fd.point.value, rel=1e-10)
    np.testing.assert_allclose(fb.point.rho, fd.point.rho, rtol=1e-5, atol=1e-5)
    post = freml_blocked.post(bst, pen_d, fb.point)
    A = full["A"]
    P = freml_blocked.dense_inverse(fb.point)
    F = P @ A
    edf = np.diag(F)
    edf1 = 2 * edf - np.einsum("ij,ji->i", F, F)
    pd = len(fb.point.beta)
    np.testing.assert_allclose(post.edf_d, edf[:pd], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(post.edf_z.T.ravel(), edf[pd:], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(post.edf1_d, edf1[:pd], rtol=1e-8, atol=1e-10)
    beta = np.concatenate([fb.point.beta, fb.point.b_re.T.ravel()])
    rss = full["c"] - 2 * beta @ full["b"] + beta @ A @ beta
    assert post.rss == pytest.approx(rss, rel=1e-10)


def test_level_cross_products_sum_over_row_splits():
    rng = np.random.default_rng(3)
    n, L = 300, 11
    X = rng.normal(size=(n, 4))
    codes = rng.integers(0, L, n)
    Zv = np.column_stack([np.ones(n), rng.normal(size=n)])
    z, w = rng.normal(size=n), rng.uniform(1, 2, n)
    whole = gam_stats.level_cross_products(X, z, w, codes, Zv, L)
    parts = [gam_stats.level_cross_products(X[s], z[s], w[s], codes[s], Zv[s], L)
             for s in (slice(0, 100), slice(100, 101), slice(101, n))]
    tot = gam_stats.add(parts)
    for k in whole:
        np.testing.assert_allclose(tot[k], whole[k], rtol=1e-12, atol=1e-12)
