"""The compiled cr basis equals the numpy one, inside the knots, on them and beyond both
ends."""

from __future__ import annotations

import numpy as np

from daskmm.models.gam.bases import CubicRegression


def test_compiled_cr_rows_equal_numpy():
    rng = np.random.default_rng(2)
    b = CubicRegression.setup(rng.uniform(size=500), 8)
    x = np.concatenate([rng.uniform(-0.3, 1.3, 2000), b.knots, [b.knots[0] - 1e-12]])
    np.testing.assert_allclose(b.predict(x), b.predict_numpy(x), rtol=1e-12, atol=1e-13)
