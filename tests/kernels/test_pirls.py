"""The blocked PIRLS kernel against the one-intercept kernel, and the batched block factor
against the entry-by-entry one (pure numpy; no cluster)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from daskmm.kernels import pirls as P
from daskmm.kernels import pls
from daskmm.kernels import scalar_re as K
from daskmm.kernels.stats import Layout, LevelGroup


@pytest.mark.parametrize("family, link", [(K.BINOMIAL, K.LOGIT), (K.BINOMIAL, K.PROBIT),
                                          (K.POISSON, K.LOG), (K.NEGBIN, K.LOG)])
@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("newton", [False, True])
def test_local_laplace_equals_scalar_kernel(family, link, warm, newton):
    """The blocked PIRLS equals the scalar kernel's Laplace deviance and modes, also when it
    stops early on Newton's error estimate (``newton``; only canonical links ask for it, but
    the estimate must not stop short on the others either)."""
    rng = np.random.default_rng(1)
    n, m = 300, 12
    g = rng.integers(0, m, n)
    x = rng.normal(size=n)
    eta = -0.3 + 0.6 * x + rng.normal(0, .8, m)[g]
    y = (rng.random(n) < special.expit(eta)).astype(float) if family == K.BINOMIAL else \
        rng.poisson(np.exp(eta)).astype(float)
    # prior weights for the counts; the negative binomial's size beside them
    wt = np.ones(n) if family == K.BINOMIAL else rng.uniform(0.5, 2.0, n)
    nb_k = 2.5 if family == K.NEGBIN else 0.0
    X = np.column_stack([np.ones(n), x])
    data = P.PirlsData(X, y, wt, np.zeros(n), {"g": np.ones((n, 1))}, {"g": g}, 0.0, 0,
                       nb_k=nb_k)
    layout = Layout("g", [], [], {"g": 1}, {}, 0)
    P.build_index(data, layout)
    beta, theta = np.array([-0.3, 0.6]), 0.8
    if warm:  # a warm start from another point converges to the same modes
        P.local_laplace(data, layout, {"g": np.array([[1.4]])}, beta + 0.2, family, link)
    val = P.local_laplace(data, layout, {"g": np.array([[theta]])}, beta, family, link,
                          newton=newton)
    order = np.argsort(g, kind="stable")
    starts = np.searchsorted(g[order], np.arange(m + 1))
    u, L = np.zeros(m), np.ones(m)
    nodes, w = np.polynomial.hermite_e.hermegauss(1)
    ref = K.levels_objective(starts, (X @ beta)[order], y[order], wt[order], nb_k, theta,
                             family, link, nodes, w, u, L, False)
    assert val == pytest.approx(ref, rel=1e-11)
    np.testing.assert_allclose(data.u_warm, u, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("s", [3, 12])
def test_batched_block_factor_equals_entrywise(s, monkeypatch):
    rng = np.random.default_rng(0)
    m, k = 7, 4
    Zs = rng.normal(size=(m, 20, s))
    A = np.einsum("mns,mnt->mst", Zs, Zs)
    group = LevelGroup((), np.arange(m), [], A, rng.normal(size=(s, k, m)))
    Lam = np.tril(rng.normal(size=(s, s)))
    got = pls._eval_group_batched(group, Lam, True)
    monkeypatch.setattr(pls, "SMALL_BLOCK", 100)
    want = pls.eval_group(group, Lam, True)
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[2][0], want[2][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[2][1], want[2][1], rtol=1e-10, atol=1e-12)


def test_crossed_pass_equals_dense_algebra():
    """One crossed PIRLS state from the one-pass kernel equals dense algebra: the
    log-likelihood at ``eta = eta0 + Z~ u + Z_G b_G``, ``log|M|`` of ``M = Z~' W Z~ + I``
    (blocks of 2: a random slope), ``G = [Z_G, r]' W [Z_G, r]`` and ``C = Z~' W [Z_G, r]``."""
    import scipy.sparse as sp
    from scipy.special import expit

    from daskmm.kernels.block_chol import block_layout, crossed_pass

    rng = np.random.default_rng(5)
    n, m, n_g = 600, 30, 12
    lev = rng.integers(0, m, n)  # each row: its level's intercept and slope columns
    x = rng.normal(size=n)
    rows = np.repeat(np.arange(n), 2)
    ZL = sp.csr_matrix((np.column_stack([0.8 + 0 * x, 0.5 * x]).ravel(),
                        (rows, np.column_stack([2 * lev, 2 * lev + 1]).ravel())),
                       shape=(n, 2 * m))
    ZG = sp.csr_matrix((rng.normal(size=2 * n), (rows, np.concatenate(
        [rng.choice(n_g, 2, replace=False) for _ in range(n)]))), shape=(n, n_g))
    for z in (ZL, ZG):
        z.indptr, z.indices = z.indptr.astype(np.int64), z.indices.astype(np.int64)
    u, b_G = 0.3 * rng.normal(size=2 * m), 0.3 * rng.normal(size=n_g)
    eta0, y, wt = rng.normal(size=n), rng.integers(0, 2, n).astype(float), np.ones(n)
    start, size, off, col_block = block_layout(np.full(m, 2))
    ok, ll, logdet, _, G, C = crossed_pass(
        ZL.indptr, ZL.indices, ZL.data, ZG.indptr, ZG.indices, ZG.data, u, b_G, eta0, y, wt,
        0.0, K.BINOMIAL, K.LOGIT, col_block, start, size, off, 4 * m, 1e-300, 1e100)
    assert ok
    Zl, Zg = ZL.toarray(), ZG.toarray()
    eta = eta0 + Zl @ u + Zg @ b_G
    mu = expit(eta)
    w = mu * (1 - mu)
    r = Zl @ u + Zg @ b_G + (y - mu) / w
    A = np.column_stack([Zg, r])
    assert ll == pytest.approx(float(np.sum(y * np.log(mu) + (1 - y) * np.log1p(-mu))),
                               rel=1e-12)
    M = Zl.T @ (w[:, None] * Zl) + np.eye(2 * m)
    assert logdet == pytest.approx(np.linalg.slogdet(M)[1], rel=1e-12)
    np.testing.assert_allclose(G, A.T @ (w[:, None] * A), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(C, Zl.T @ (w[:, None] * A), rtol=1e-12, atol=1e-12)


def test_crossed_pass_sums_the_log_likelihood_compensated():
    """Over 2 x 10^5 rows the log-likelihood is the correctly rounded sum of the rows' terms
    (to a few ulp; a running sum drifts by ~n eps), which keeps the vcov Hessian's finite
    differences (divided by 1e-8) clear of summation noise."""
    import math

    import scipy.sparse as sp

    from daskmm.kernels.block_chol import block_layout, crossed_pass

    rng = np.random.default_rng(9)
    n, m, n_g = 200_000, 50, 7
    lev, glev = rng.integers(0, m, n), rng.integers(0, n_g, n)
    ZL = sp.csr_matrix((np.full(n, 0.6), (np.arange(n), lev)), shape=(n, m))
    ZG = sp.csr_matrix((np.full(n, 0.4), (np.arange(n), glev)), shape=(n, n_g))
    for z in (ZL, ZG):
        z.indptr, z.indices = z.indptr.astype(np.int64), z.indices.astype(np.int64)
    u, b_G = rng.normal(size=m), rng.normal(size=n_g)
    eta0, y, wt = rng.normal(size=n), rng.poisson(2.0, n).astype(float), np.ones(n)
    start, size, off, col_block = block_layout(np.ones(m, dtype=np.int64))
    ok, ll, *_ = crossed_pass(ZL.indptr, ZL.indices, ZL.data, ZG.indptr, ZG.indices, ZG.data,
                              u, b_G, eta0, y, wt, 0.0, K.POISSON, K.LOG, col_block, start, size,
                              off, m, 1e-300, 1e100)
    terms = K.row_terms(eta0 + ZL @ u + ZG @ b_G, y, wt, 0.0, K.POISSON, K.LOG)[0]
    exact = math.fsum(terms)
    assert ok and abs(ll - exact) <= 4 * np.spacing(abs(exact))


@pytest.mark.parametrize("n_local, n_crossed", [(1, 1), (2, 2)])
def test_crossed_scalar_pass_equals_the_general_pass(n_local, n_crossed):
    """With one column a factor, the pass over stacked columns gives the general (CSR) pass's
    log-likelihood, ``log|M|``, blocks, ``G`` and ``C``: one local and one crossed factor, and
    a nested factor (blocks of 3: a primary level and its two nested levels) with two crossed
    factors (``G``'s off-diagonal crossings)."""
    import scipy.sparse as sp

    from daskmm.kernels.block_chol import (
        block_layout,
        crossed_pass,
        crossed_pass_two,
        crossed_scalar_pass,
    )

    rng = np.random.default_rng(11)
    n, m = 2000, 40
    s = 1 if n_local == 1 else 3
    prim = rng.integers(0, m, n)
    l_col = [s * prim] if n_local == 1 else [s * prim, s * prim + 1 + rng.integers(0, 2, n)]
    l_val = [rng.uniform(0.5, 1.5, n) for _ in l_col]
    sizes = [6, 4][:n_crossed]
    g_col = [rng.integers(0, k, n) + sum(sizes[:j]) for j, k in enumerate(sizes)]
    g_val = [rng.normal(size=n) for _ in g_col]
    n_g = sum(sizes)

    def csr(cols, vals, width):
        M = sp.csr_matrix((np.column_stack(vals).ravel(), np.column_stack(cols).ravel(),
                           np.arange(0, len(cols) * n + 1, len(cols))), shape=(n, width))
        M.indptr, M.indices = M.indptr.astype(np.int64), M.indices.astype(np.int64)
        return M

    ZL, ZG = csr(l_col, l_val, s * m), csr(g_col, g_val, n_g)
    u, b_G = 0.4 * rng.normal(size=s * m), 0.4 * rng.normal(size=n_g)
    eta0, y, wt = rng.normal(size=n), rng.integers(0, 2, n).astype(float), np.ones(n)
    blocks = block_layout(np.full(m, s))
    start, size, off, col_block = blocks
    rest = (u, b_G, eta0, y, wt, 0.0, K.BINOMIAL, K.LOGIT, col_block, start, size, off, s * s * m,
            1e-300, 1e100)
    want = crossed_pass(ZL.indptr, ZL.indices, ZL.data, ZG.indptr, ZG.indices, ZG.data, *rest)
    got = crossed_scalar_pass(np.array(l_col), np.array(l_val), np.array(g_col),
                              np.array(g_val), *rest)
    assert got[0] and want[0]
    assert got[1] == pytest.approx(want[1], rel=1e-13)
    assert got[2] == pytest.approx(want[2], rel=1e-13)
    for a, b in zip(got[3:], want[3:]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert np.any(want[4][:sizes[0], sizes[0]:n_g]) == (n_crossed == 2)
    if n_local == n_crossed == 1:  # and the loop for exactly one of each
        two = crossed_pass_two(np.array(l_col), np.array(l_val), np.array(g_col),
                               np.array(g_val), *rest)
        for a, b in zip(two[1:], got[1:]):
            np.testing.assert_array_equal(a, b)


def test_logit_log_likelihood_is_within_an_ulp_of_log1p():
    """The binomial-logit row term computes ``log1p(e^-|eta|)`` as ``log(1 + e)`` corrected
    for the rounding of ``1 + e``: within an ulp or two of ``math.log1p`` from ``|eta|`` near
    0 to beyond where ``1 + e`` rounds to 1."""
    import math

    worst = 0.0
    for eta in np.concatenate([np.linspace(-45, 45, 4001), [1e-300, -1e-12, 36.7, -38.0]]):
        ll, _, _ = K.row_term(float(eta), 0.0, 1.0, 0.0, K.BINOMIAL, K.LOGIT)
        e = math.exp(-abs(eta))
        ref = -(max(eta, 0.0) + math.log1p(e))
        worst = max(worst, abs(ll - ref) / np.spacing(abs(ref)))
    assert worst <= 2


def test_solve_blocks_solves_every_block():
    """``M^{-1} R`` for blocks of sizes 1 to 4 and a wide ``R``: each block's residual is at
    rounding."""
    from daskmm.kernels.block_chol import block_layout, chol_blocks, solve_blocks

    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 5, 60)
    start, size, off, _ = block_layout(sizes)
    blocks = []
    for s in sizes:
        A = rng.normal(size=(s, s))
        blocks.append(A @ A.T + s * np.eye(s))
    M = np.concatenate([b.ravel() for b in blocks])
    L = M.copy()
    _, ok = chol_blocks(L, start, size, off)
    R = rng.normal(size=(int(sizes.sum()), 37))
    X = solve_blocks(L, start, size, off, R)
    assert ok
    for k, A in enumerate(blocks):
        b, s = start[k], size[k]
        np.testing.assert_allclose(A @ X[b:b + s], R[b:b + s], atol=1e-12)
