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
def test_local_laplace_equals_scalar_kernel(family, link, warm):
    rng = np.random.default_rng(1)
    n, m = 300, 12
    g = rng.integers(0, m, n)
    x = rng.normal(size=n)
    eta = -0.3 + 0.6 * x + rng.normal(0, .8, m)[g]
    y = (rng.random(n) < special.expit(eta)).astype(float) if family == K.BINOMIAL else \
        rng.poisson(np.exp(eta)).astype(float)
    wt = np.full(n, 2.5) if family == K.NEGBIN else np.ones(n)  # NB: wt carries the size
    X = np.column_stack([np.ones(n), x])
    data = P.PirlsData(X, y, wt, np.zeros(n), {"g": np.ones((n, 1))}, {"g": g}, 0.0, 0)
    layout = Layout("g", [], [], {"g": 1}, {}, 0)
    P.build_index(data, layout)
    beta, theta = np.array([-0.3, 0.6]), 0.8
    if warm:  # a warm start from another point converges to the same modes
        P.local_laplace(data, layout, {"g": np.array([[1.4]])}, beta + 0.2, family, link)
    val = P.local_laplace(data, layout, {"g": np.array([[theta]])}, beta, family, link)
    order = np.argsort(g, kind="stable")
    starts = np.searchsorted(g[order], np.arange(m + 1))
    u, L = np.zeros(m), np.ones(m)
    nodes, w = np.polynomial.hermite_e.hermegauss(1)
    ref = K.levels_objective(starts, (X @ beta)[order], y[order], wt[order], theta, family,
                             link, nodes, w, u, L, False)
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
