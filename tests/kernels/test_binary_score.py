"""A binary trait's score test per variant (daskmm/kernels/binary_score.py) against a direct
dense computation: ``P`` formed from ``Sigma``'s explicit inverse, the covariate-adjusted
genotype by least squares; the identities without a random effect; the saddlepoint used
where the score is far out."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special
from scipy.stats import norm

from daskmm.kernels import binary_score as B
from daskmm.kernels import spa


def data(n=400, m=25, prevalence=0.1, seed=4):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    # a relationship matrix: families of 4 with kinship 0.5 within, plus a little noise
    fam = np.arange(n) // 4
    K = 0.5 * (fam[:, None] == fam[None, :]) + 0.5 * np.eye(n)
    Z = rng.normal(size=(n, 30)) / np.sqrt(30)
    K = 0.9 * K + 0.1 * Z @ Z.T
    mu = special.expit(special.logit(prevalence) + X[:, 1:] @ [0.4, -0.3]
                       + rng.normal(0, 0.5, n))
    y = (rng.random(n) < mu).astype(float)
    G = rng.binomial(2, rng.uniform(0.02, 0.4, m), size=(n, m)).astype(float)
    return y, X, mu, K, G


def dense_P(X, mu, K, tau):
    W = mu * (1 - mu)
    Sigma = np.diag(1 / W) + tau * K
    Si = np.linalg.inv(Sigma)
    return Si - Si @ X @ np.linalg.inv(X.T @ Si @ X) @ X.T @ Si


def test_the_exact_variance_is_g_p_g():
    y, X, mu, K, G = data()
    null = B.score_null(y, X, mu, K, tau=0.7)
    P = dense_P(X, mu, K, 0.7)
    np.testing.assert_allclose(B.exact_variance(null, G), np.einsum("im,ij,jm->m", G, P, G),
                               rtol=1e-8)
    # the covariate-adjusted genotype: G less its W-weighted least-squares fit on X
    W = mu * (1 - mu)
    coef = np.linalg.lstsq(np.sqrt(W)[:, None] * X, np.sqrt(W)[:, None] * G, rcond=None)[0]
    np.testing.assert_allclose(B.adjusted(null, G), G - X @ coef, rtol=1e-9, atol=1e-11)


def test_without_a_random_effect_the_ratio_is_one_and_the_variance_g_w_g():
    y, X, mu, K, G = data(seed=7)
    null = B.score_null(y, X, mu)
    P = dense_P(X, mu, K, 0.0)
    np.testing.assert_allclose(B.exact_variance(null, G), np.einsum("im,ij,jm->m", G, P, G),
                               rtol=1e-8)
    assert B.variance_ratio(null, G) == pytest.approx(1.0, rel=1e-10)
    # with the relationship matrix, P = Sigma^-1 - ... is below W - ... (Sigma = W^-1 +
    # tau K): the random effect takes part of the residuals' variance, the ratio below 1
    # (SAIGE's are typically 0.8 to 1)
    mixed = B.score_null(y, X, mu, K, tau=0.7)
    assert 0.5 < B.variance_ratio(mixed, G) < 0.98


def test_the_test_uses_the_ratio_and_the_saddlepoint_only_far_out():
    y, X, mu, K, G = data(n=2000, m=40, prevalence=0.02, seed=9)
    null = B.score_null(y, X, mu, K, tau=0.5)
    r = B.variance_ratio(null, G[:, :20])
    t = B.score_test(null, G, ratio=r)
    Gt = B.adjusted(null, G)
    np.testing.assert_allclose(t.T, Gt.T @ (y - mu), rtol=1e-10, atol=1e-10)
    indep = np.einsum("im,i,im->m", Gt, mu * (1 - mu), Gt)
    np.testing.assert_allclose(t.var, r * indep, rtol=1e-12)
    near = np.abs(t.z) < spa.CUTOFF
    assert near.any()
    np.testing.assert_allclose(t.p[near], 2 * norm.sf(np.abs(t.z[near])), rtol=1e-12)
    assert not t.spa[near].any()
    # far out: the saddlepoint on the score rescaled to independent draws' variance
    far = np.flatnonzero(~near)
    if not far.size:  # make one: a variant carried by the cases
        G = np.column_stack([G, 2.0 * (y > 0) * (np.arange(len(y)) % 3 == 0)])
        t = B.score_test(null, G, ratio=r)
        Gt = B.adjusted(null, G)
        far = np.flatnonzero(np.abs(t.z) >= spa.CUTOFF)
    assert far.size
    for j in far:
        q = t.T[j] / np.sqrt(r)
        assert t.spa[j]
        # the block's saddlepoints, found together, against the one-variant root-finder
        # (tests/kernels/test_spa.py: the two agree to 1e-9)
        assert t.p[j] == pytest.approx(spa.spa_pvalue(q, Gt[:, j], mu)[0], rel=1e-9)
    plain = B.score_test(null, G, ratio=r, spa=False)
    assert not plain.spa.any()
    np.testing.assert_allclose(plain.p, 2 * norm.sf(np.abs(plain.z)), rtol=1e-12)


def test_probabilities_outside_zero_and_one_are_refused():
    y, X, mu, K, G = data(n=40, m=2)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        B.score_null(y, X, np.r_[mu[:-1], 1.0])


def test_several_traits_at_once_are_each_trait_s_test():
    # the scan's path: every trait's score and G~'WG~ from two products with G, G~ formed
    # only for the saddlepoint's variants; against each trait's own test through G~, with a
    # common variant, a rare one and one of allele frequency 0.999 (the most digits the
    # difference G'WG - B'C^-1B can lose)
    y, X, mu, K, G = data(n=2000, m=40, prevalence=0.02, seed=9)
    rng = np.random.default_rng(11)
    G[:, 0] = 2.0 - (rng.random(2000) < 0.002)
    G[:, 1] = (rng.random(2000) < 0.003).astype(float)
    y2 = (rng.random(2000) < 0.3).astype(float)
    mu2 = np.clip(special.expit(special.logit(0.3) + 0.2 * X[:, 1]), 1e-6, 1 - 1e-6)
    nulls = [B.score_null(y, X, mu, K, tau=0.5), B.score_null(y2, X, mu2)]
    both = B.score_tests(nulls, G, [0.83, 1.0])
    for nl, r, got in zip(nulls, [0.83, 1.0], both):
        one = B.score_test(nl, G, ratio=r)
        np.testing.assert_allclose(got.T, one.T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got.var, one.var, rtol=1e-10)
        np.testing.assert_allclose(got.p, one.p, rtol=1e-9)
        np.testing.assert_array_equal(got.spa, one.spa)
    assert both[0].spa.any()
