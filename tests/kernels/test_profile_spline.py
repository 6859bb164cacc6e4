"""lme4's profile steps and R's interpSpline/backSpline, against values printed by R."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.kernels.profile_spline import back_spline_predict, next_par


def test_back_spline_matches_r_splines():
    # R 4.x, splines:
    #   x <- seq(-2, 3, by = 0.5); z <- sinh(x)/2 + x
    #   predict(backSpline(interpSpline(z ~ x)), c(-1.959963984540054, 1.959963984540054,
    #                                               0.3, 5.3, -20))$y
    x = np.arange(-2, 3.01, 0.5)
    z = np.sinh(x) / 2 + x
    got = back_spline_predict(x, z, np.array([-1.959963984540054, 1.959963984540054, 0.3,
                                               5.3, -20.0]))
    want = [-1.20475136080833733, 1.20309188782360299, 0.19964943383203948,
            2.44551318567089249]
    np.testing.assert_allclose(got[:4], want, rtol=1e-12)
    assert np.isnan(got[4])  # outside the profile: lme4 uses the parameter's bound


def test_non_monotone_profile_gives_no_limits():
    x = np.linspace(0, 4, 9)
    assert np.all(np.isnan(back_spline_predict(x, np.sin(x), np.array([0.5]))))


def test_next_par_steps_by_delta_in_zeta_and_caps_the_step():
    # zeta moved 0.2 over 0.1 of the parameter: a step of delta = 0.5 in zeta is 0.25
    assert next_par(1.0, 0.0, 1.1, 0.2, 0.5) == pytest.approx(1.35)
    # a flat profile would step 100x; lme4 caps it at maxmult = 10 times the last step
    assert next_par(1.0, 0.0, 1.1, 0.0005, 0.5) == pytest.approx(2.1)
    # and never past a bound
    assert next_par(1.0, 0.0, 0.9, -0.2, 0.5, lower=0.0) == pytest.approx(0.65)
    assert next_par(0.2, 0.0, 0.1, -0.2, 0.5, lower=0.0) == 0.0
