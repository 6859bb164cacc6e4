"""The matrix-free fit of crossed random intercepts (daskmm/models/lmm/iterative.py) against
daskmm's exact fit (lme4's criterion, conformance-tested) on a random 400 x 150 crossing:
the estimates within 1e-3 relative, the reported criterion within its standard error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.kernels import crossed_iter as ci
from daskmm.models.lmm.iterative import fit_crossed


@pytest.mark.parametrize("reml", [True, False])
def test_the_iterative_fit_is_the_exact_fit_within_its_error(reml):
    rng = np.random.default_rng(1)
    n, ng, nh = 6000, 400, 150
    g, h = rng.integers(0, ng, n), rng.integers(0, nh, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(0, 0.8, ng)[g] + rng.normal(0, 0.5, nh)[h] + rng.normal(size=n)
    frame = pd.DataFrame({"y": y, "x": x, "g": [f"g{i:03d}" for i in g],
                          "h": [f"h{i:03d}" for i in h]})
    exact = daskmm.lmm("y ~ x + (1 | g) + (1 | h)", frame, reml=reml, factors=["g", "h"])
    st = ci.crossed_stats(y, np.column_stack([np.ones(n), x]), [g, h], [ng, nh])
    it = fit_crossed(st, reml)
    np.testing.assert_allclose(it.theta, exact.theta, rtol=1e-3)
    np.testing.assert_allclose(it.beta, exact.beta, rtol=1e-3)
    assert it.sigma == pytest.approx(exact.sigma, rel=1e-3)
    assert abs(it.objective - exact.objective) < 4 * it.se
    assert 0 < it.se < 0.2
