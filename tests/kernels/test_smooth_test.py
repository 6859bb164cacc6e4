"""Tail probabilities of weighted chi-square sums (the reference distribution of mgcv's
smooth-term tests) against closed forms, from the centre to far tails."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from daskmm.kernels.smooth_test import psum_chisq


@pytest.mark.parametrize("q", [0.5, 3.0, 20.0, 60.0, 300.0])
def test_equal_weights_are_a_chi_square(q):
    assert psum_chisq(q, np.ones(3)) == pytest.approx(stats.chi2.sf(q, 3), rel=1e-5)


@pytest.mark.parametrize("F", [0.3, 2.5, 40.0, 400.0])
def test_an_f_ratio(F):
    """P(chi2_2/2 - F chi2_k/k > 0) is the F(2, k) tail: the estimated-scale test."""
    k = 120
    p = psum_chisq(0.0, np.array([0.5, 0.5, -F / k]), np.array([1, 1, k]))
    assert p == pytest.approx(stats.f.sf(F, 2, k), rel=1e-5)


def test_unequal_weights_against_simulation():
    lam = np.array([2.0, 0.7, 0.2])
    rng = np.random.default_rng(1)
    draws = (rng.chisquare(1, size=(400_000, 3)) * lam).sum(axis=1)
    for q in (1.0, 4.0, 9.0):
        assert psum_chisq(q, lam) == pytest.approx(np.mean(draws > q), abs=3e-3)
