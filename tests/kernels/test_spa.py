"""The score test's saddlepoint approximation (daskmm/kernels/spa.py) against the exact null
distribution of the score: with integer genotypes ``T + sum g mu = sum g_i y_i`` lives on the
integers, so its law is the convolution of the samples' two-point laws, exact to rounding.
The saddlepoint (no continuity correction, SAIGE's) approximates the exact mid-p tail; its
error is stated and checked here, and the normal approximation is shown to be far off."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special
from scipy.stats import norm

from daskmm.kernels import spa


def exact_pmf(g: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """``P(sum g_i y_i = s)`` for ``s = 0 .. sum g`` (``g`` non-negative integers)."""
    pmf = np.zeros(int(g.sum()) + 1)
    pmf[0] = 1.0
    top = 0
    for gi, m in zip(g.astype(int), mu):
        if gi == 0:
            continue
        new = pmf * (1.0 - m)
        new[gi:top + gi + 1] += pmf[:top + 1] * m
        pmf, top = new, top + gi
    return pmf


def midp_tails(g, mu, s):
    """Exact mid-p upper and lower tails at the lattice point ``s`` of ``sum g y``."""
    pmf = exact_pmf(g, mu)
    upper = pmf[s + 1:].sum() + 0.5 * pmf[s]
    lower = pmf[:s].sum() + 0.5 * pmf[s]
    return upper, lower


def design(n, prevalence, maf, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    mu = special.expit(special.logit(prevalence) + 0.5 * x)
    g = rng.binomial(2, maf, n).astype(float)
    return g, mu


@pytest.mark.parametrize("prevalence,maf,bound", [
    # the saddlepoint's error against the exact mid-p tail, from 2 SD out to 1e-12: its
    # largest |log ratio| measured 0.58 where the variant's expected count among the cases
    # is 0.55, 0.19 and 0.26 where it is about 5, 0.21 at 50% prevalence (all at the 1e-12
    # end; the uncorrected saddlepoint falls below the mid-p tail, more so the further out
    # and the fewer the carriers); the bounds are those plus a margin
    (0.01, 0.005, 0.65), (0.01, 0.05, 0.25), (0.05, 0.01, 0.3), (0.5, 0.01, 0.25)])
def test_the_saddlepoint_tail_is_the_exact_mid_p_tail(prevalence, maf, bound):
    # n = 5,000 samples: rare variants at 1% prevalence are where the normal tail fails
    g, mu = design(5000, prevalence, maf, seed=11)
    m1 = float(g @ mu)
    sd = np.sqrt(float((g * g) @ (mu * (1 - mu))))
    worst = 0.0
    checked = 0
    for s in range(int(np.ceil(m1 + 2 * sd)), int(g.sum())):
        up, _ = midp_tails(g, mu, s)
        if up < 1e-12:
            break
        q = s - m1
        got = spa.spa_tail(q, g, mu)
        worst = max(worst, abs(np.log(got / up)))
        checked += 1
    assert checked >= 5
    assert worst < bound, worst


def test_the_normal_tail_is_far_off_where_the_saddlepoint_is_not():
    g, mu = design(5000, 0.01, 0.05, seed=11)
    m1 = float(g @ mu)
    sd = np.sqrt(float((g * g) @ (mu * (1 - mu))))
    s = int(np.ceil(m1 + 6 * sd))
    up, _ = midp_tails(g, mu, s)
    q = s - m1
    assert abs(np.log(spa.spa_tail(q, g, mu) / up)) < 0.2
    assert abs(np.log(norm.sf(q / sd) / up)) > 3.0  # the normal tail: 20 times off or more


def test_the_two_sided_p_value_adds_both_tails_and_uses_the_normal_near_the_centre():
    g, mu = design(3000, 0.05, 0.02, seed=5)
    sd = np.sqrt(float((g * g) @ (mu * (1 - mu))))
    p, used = spa.spa_pvalue(0.5 * sd, g, mu)
    assert not used and p == pytest.approx(2 * norm.sf(0.5), rel=1e-12)
    q = 5 * sd
    p, used = spa.spa_pvalue(q, g, mu)
    assert used
    assert p == pytest.approx(spa.spa_tail(q, g, mu) + spa.spa_tail(-q, g, mu), rel=1e-12)
    assert spa.spa_pvalue(-q, g, mu)[0] == pytest.approx(p, rel=1e-12)  # |q|
    # the score's law is skewed: its two tails differ
    assert spa.spa_tail(q, g, mu) > 1.5 * spa.spa_tail(-q, g, mu)


def test_the_cumulant_function_is_the_exact_law_s():
    g, mu = design(40, 0.1, 0.2, seed=2)
    pmf = exact_pmf(g, mu)
    s = np.arange(len(pmf)) - float(g @ mu)
    for t in (-0.7, 0.0, 0.3, 1.1):
        K, K1, K2 = spa.cgf(t, g, mu)
        mgf = pmf @ np.exp(t * s)
        assert K == pytest.approx(np.log(mgf), rel=1e-12, abs=1e-13)
        tilt = pmf * np.exp(t * s) / mgf
        assert K1 == pytest.approx(tilt @ s, rel=1e-10, abs=1e-12)
        assert K2 == pytest.approx(tilt @ (s - tilt @ s) ** 2, rel=1e-10)


def test_a_block_of_variants_gets_each_variant_s_p_value():
    # the saddlepoints of a block found together equal the root-finder's, variant by
    # variant, for every MAF and both signs, and the normal's p-value near the centre
    rng = np.random.default_rng(21)
    n = 3000
    mu = special.expit(special.logit(0.02) + 0.5 * rng.normal(size=n))
    mafs = np.repeat([0.005, 0.01, 0.05, 0.2, 0.5], 8)
    G = rng.binomial(2, mafs, size=(n, len(mafs))).astype(float)
    G -= G.mean(axis=0) * 0.3  # not on a lattice, as a covariate-adjusted genotype
    sd = np.sqrt(np.einsum("im,i->m", G * G, mu * (1 - mu)))
    q = sd * np.tile([0.5, -1.5, 2.5, -3.0, 4.0, -5.0, 6.0, -7.5], 5)
    p, used = spa.spa_pvalues(q, G, mu)
    for j in range(len(q)):
        pj, uj = spa.spa_pvalue(q[j], G[:, j], mu)
        assert uj == used[j]
        assert p[j] == pytest.approx(pj, rel=1e-9), (j, mafs[j], q[j] / sd[j])


def test_a_variant_carried_by_cases_only_gets_the_exact_probability_of_that():
    # the score at the top of its range: the saddlepoint's root is at infinity; the tail is
    # the one outcome's exact probability (every carrier a case), one variant or a block
    rng = np.random.default_rng(1)
    n = 2000
    mu = special.expit(special.logit(0.02) + 0.3 * rng.normal(size=n))
    g = np.zeros(n)
    g[:3] = [1.0, 2.0, 1.0]
    y = np.zeros(n)
    y[:3] = 1.0
    q = float(g @ (y - mu))
    exact = float(np.prod(mu[:3]))  # the lower tail cannot reach -q: it adds nothing
    p, used = spa.spa_pvalue(q, g, mu)
    assert used and p == pytest.approx(exact, rel=1e-12)
    pb, usedb = spa.spa_pvalues(np.array([q, -q]), np.column_stack([g, g]), mu)
    np.testing.assert_allclose(pb, [exact, exact], rtol=1e-12)
    assert usedb.all()
    # a negative g mirrors it: its bottom is every carrier a case, its top every one a
    # control
    top, p_top, bottom, p_bottom = spa.end_tails(-g, mu)
    assert bottom[0] == pytest.approx(-q, rel=1e-14)
    assert p_bottom[0] == pytest.approx(exact, rel=1e-12)
    assert spa.spa_tail(float(bottom[0]), -g, mu) == pytest.approx(exact, rel=1e-12)
    none = float(np.prod(1 - mu[:3]))
    assert spa.spa_tail(float(top[0]), -g, mu) == pytest.approx(none, rel=1e-12)
    assert spa.spa_tail(float(top[0]) * 1.01, -g, mu) == 0.0  # past the end
