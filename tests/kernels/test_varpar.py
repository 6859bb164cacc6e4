"""Variance-parameter scales, numerical derivatives and Satterthwaite's formulas."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.core.reterm import RandomTerm
from daskmm.kernels.varpar import (
    _f_ddf,
    richardson_hessian,
    richardson_jacobian,
    sdcor_names,
    sdcor_to_theta,
    theta_to_sdcor,
)

TERMS = [RandomTerm("Subject", ("(Intercept)", "Days"), "Days"),
         RandomTerm("Batch", ("(Intercept)",), "1")]


def test_names_follow_lme4_oldnames_false():
    assert sdcor_names(TERMS) == ["sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject",
                                  "sd_Days|Subject", "sd_(Intercept)|Batch", "sigma"]


def test_sdcor_and_theta_round_trip():
    theta = np.array([0.9667, 0.0152, 0.2309, 1.7])
    sd = theta_to_sdcor(TERMS, theta, 25.59)
    # sleepstudy: sd(Intercept) = sigma * theta_1, cor = theta_2 / sqrt(theta_2^2 + theta_3^2)
    assert sd[0] == pytest.approx(25.59 * 0.9667)
    assert sd[1] == pytest.approx(0.0152 / np.hypot(0.0152, 0.2309))
    assert sd[-1] == 25.59
    np.testing.assert_allclose(sdcor_to_theta(TERMS, sd), theta, rtol=1e-12)


def test_impossible_correlations_have_no_theta():
    assert sdcor_to_theta(TERMS, np.array([1.0, 1.2, 1.0, 1.0, 1.0])) is None
    assert sdcor_to_theta(TERMS, np.array([-1.0, 0.2, 1.0, 1.0, 1.0])) is None
    # a correlation of exactly 1 is a singular but valid covariance
    th = sdcor_to_theta(TERMS, np.array([2.0, 1.0, 3.0, 1.0, 1.0]))
    assert th is not None and th[2] == pytest.approx(0.0, abs=1e-12)


def test_numderiv_style_derivatives_are_exact_on_polynomials():
    def f(x):
        return x[0] ** 3 * x[1] + 2 * x[1] ** 2 - x[0]

    x = np.array([1.3, -0.7])
    H = richardson_hessian(f, x)
    want = np.array([[6 * x[0] * x[1], 3 * x[0] ** 2], [3 * x[0] ** 2, 4.0]])
    np.testing.assert_allclose(H, want, rtol=1e-9)
    J = richardson_jacobian(lambda v: np.array([v[0] * v[1], v[1] ** 2]), x)
    np.testing.assert_allclose(J, [[x[1], x[0]], [0, 2 * x[1]]], rtol=1e-10)


def test_f_statistic_ddf_follows_lmertest():
    assert _f_ddf(np.array([7.0])) == 7.0
    assert _f_ddf(np.array([5.0, 5.0 + 1e-10])) == pytest.approx(5.0)
    assert _f_ddf(np.array([1.5, 30.0])) == 2.0
    nu = np.array([10.0, 20.0])
    E = np.sum(nu / (nu - 2))
    assert _f_ddf(nu) == pytest.approx(2 * E / (E - 2))
