"""A binomial GAM's response may be a two-level factor, as mgcv reads it (the second level is
success); it once failed with "could not convert string to float: 'N'"."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.errors import DataError


def _frame():
    rng = np.random.default_rng(7)
    n = 400
    x = rng.uniform(size=n)
    y = rng.binomial(1, 1 / (1 + np.exp(-(np.sin(6 * x)))))
    return pd.DataFrame({"x": x, "y01": y.astype(float), "use": np.where(y == 1, "Y", "N")})


def test_a_two_level_factor_response_is_the_0_1_fit():
    d = _frame()
    a = daskmm.gam("y01 ~ s(x)", d, "binomial", mode="in-process")
    b = daskmm.gam("use ~ s(x)", d, "binomial", mode="in-process")
    assert b.score == pytest.approx(a.score, rel=1e-12)
    np.testing.assert_allclose(b.coef, a.coef, rtol=1e-9, atol=1e-12)


def test_a_factor_response_with_three_levels_is_refused_in_one_line():
    d = _frame()
    d.loc[0, "use"] = "maybe"
    with pytest.raises(DataError, match="binomial response 'use' is categorical with 3 level"):
        daskmm.gam("use ~ s(x)", d, "binomial", mode="in-process")
