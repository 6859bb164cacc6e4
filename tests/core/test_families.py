"""Families with a dispersion: lme4's ``aic`` at the deviance, its data part, and the kernels'
per-row terms, against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.special import gammaln

from daskmm.core.families import LINKS, get_family
from daskmm.kernels import scalar_re as K


def _data(seed=0, n=60):
    rng = np.random.default_rng(seed)
    mu = np.exp(rng.normal(1.0, 0.5, n))
    y = rng.gamma(3.0, mu / 3.0)
    wt = 1.0 + rng.integers(0, 3, n) / 2.0
    return y, mu, wt


def _aic(fam, y, mu, wt):
    """lme4's glmFamily.cpp aic, transcribed row by row."""
    dev = float(np.sum(fam.unit_deviance(y, mu, wt)))
    if fam.name == "gamma":
        d = dev / wt.sum()
        return -2 * np.sum(wt * stats.gamma.logpdf(y, 1 / d, scale=mu * d)) + 2, dev
    if fam.name == "inverse_gaussian":
        W = wt.sum()
        return W * (np.log(dev / W * 2 * np.pi) + 1) + 3 * np.sum(np.log(y) * wt) + 2, dev
    n = len(y)
    return n * (np.log(2 * np.pi * dev / n) + 1) + 2 - np.sum(np.log(wt)), dev


@pytest.mark.parametrize("name", ["gamma", "inverse_gaussian", "gaussian"])
def test_laplace_aic_with_the_data_constant_is_lme4s_aic(name):
    fam = get_family(name)
    y, mu, wt = _data()
    want, dev = _aic(fam, y, mu, wt)
    got = fam.laplace_aic(dev, len(y), wt.sum()) - 2 * fam.log_constant(y, wt)
    assert got == pytest.approx(want, rel=1e-12)


def test_gamma_aic_without_weights_is_the_gamma_log_density():
    fam = get_family("Gamma")
    y, mu, _ = _data(1)
    wt = np.ones_like(y)
    dev = float(np.sum(fam.unit_deviance(y, mu, wt)))
    d = dev / len(y)
    direct = -2 * np.sum((1 / d - 1) * np.log(y) - y / (mu * d) - gammaln(1 / d)
                         - (1 / d) * np.log(mu * d)) + 2
    assert fam.laplace_aic(dev, len(y), len(y)) - 2 * fam.log_constant(y, wt) == \
        pytest.approx(direct, rel=1e-12)


@pytest.mark.parametrize("name,link", [("gamma", "log"), ("gamma", "inverse"),
                                       ("gamma", "identity"), ("inverse_gaussian", "1/mu^2"),
                                       ("inverse_gaussian", "log"), ("gaussian", "log"),
                                       ("gaussian", "inverse")])
def test_row_terms_are_half_the_deviance_its_score_and_fisher_weight(name, link):
    fam, lk = get_family(name), LINKS[link]
    y, mu, wt = _data(2)
    eta = lk.link(mu)
    ll, sc, w = K.row_terms(eta, y, wt, 0.0, fam.code, lk.code)
    # the link's round trip moves mu by an ulp: a row with y close to mu (a deviance near
    # zero, a difference of near-equal terms) then differs at ~1e-14 absolute
    np.testing.assert_allclose(ll, -0.5 * fam.unit_deviance(y, lk.inverse(eta), wt),
                               rtol=1e-10, atol=1e-13)
    me = lk.mu_eta(eta)
    np.testing.assert_allclose(sc, wt * (y - mu) * me / fam.variance(mu), rtol=1e-10)
    np.testing.assert_allclose(w, wt * me ** 2 / fam.variance(mu), rtol=1e-10)
    # the score is the derivative of ll in eta
    h = 1e-6 * np.maximum(np.abs(eta), 1e-3)
    num = (K.row_terms(eta + h, y, wt, 0.0, fam.code, lk.code)[0]
           - K.row_terms(eta - h, y, wt, 0.0, fam.code, lk.code)[0]) / (2 * h)
    np.testing.assert_allclose(sc, num, rtol=1e-5, atol=1e-8)


def test_negative_binomial_rows_are_their_weighted_log_density():
    """A negative binomial row's term is its prior weight times ``log dnbinom(y; mu, k)``
    (less ``log y!``, the data's constant, which :meth:`Family.log_constant` weights the same
    way), glmmTMB's ``nbinom2`` weights; its score is the derivative in ``eta`` and its Fisher
    weight ``wt mu k / (k + mu)``."""
    from scipy.special import gammaln
    from scipy.stats import nbinom

    rng = np.random.default_rng(4)
    k = 1.7
    eta = rng.normal(0.5, 1.0, 40)
    mu = np.exp(eta)
    y = rng.negative_binomial(k, k / (k + mu)).astype(float)
    wt = rng.uniform(0.2, 3.0, 40)
    ll, sc, w = K.row_terms(eta, y, wt, k, K.NEGBIN, K.LOG)
    fam = get_family("negative_binomial")
    want = wt * nbinom.logpmf(y, k, k / (k + mu))
    np.testing.assert_allclose(ll + (-wt * gammaln(y + 1)), want, rtol=1e-12, atol=1e-12)
    assert fam.log_constant(y, wt) == pytest.approx(-np.sum(wt * gammaln(y + 1)), rel=1e-15)
    h = 1e-6
    num = (K.row_terms(eta + h, y, wt, k, K.NEGBIN, K.LOG)[0]
           - K.row_terms(eta - h, y, wt, k, K.NEGBIN, K.LOG)[0]) / (2 * h)
    np.testing.assert_allclose(sc, num, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(w, wt * mu * k / (k + mu), rtol=1e-13)


def test_a_mean_outside_the_familys_range_is_not_finite():
    ll, _, _ = K.row_terms(np.array([-0.5]), np.array([2.0]), np.array([1.0]), 0.0, K.GAMMA,
                           K.INVERSE)
    assert ll[0] == -np.inf


def test_the_gamma_aic_has_no_cancellation_when_the_dispersion_is_tiny():
    """lme4's Gamma aic holds ``a + lgamma(a) - a log a`` for the shape ``a = 1/dispersion``:
    terms ~1e6 at a dispersion of 1e-5 (Oxide's) whose difference is ~-5. Stirling's series
    gives it to rounding; the direct difference carries ~1e-10 absolute noise, which the
    Hessian's finite differences turned into a negative eigenvalue."""
    from daskmm.core.families import _gamma_bracket
    for a in (3.0, 14.99, 15.0, 50.0, 200.0):
        direct = a + gammaln(a) - a * np.log(a)
        assert _gamma_bracket(a) == pytest.approx(direct, rel=1e-12, abs=1e-12)
    # smooth in a where the direct form is not: second differences at 1e5 are tiny
    a, h = 1.4e5, 1.0
    second = _gamma_bracket(a + h) - 2 * _gamma_bracket(a) + _gamma_bracket(a - h)
    assert abs(second - 0.5 / a ** 2) < 1e-14
