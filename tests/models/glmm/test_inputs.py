"""GLMM inputs: the binomial response forms, all-zero levels reported, bad input, lme4's level
order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import special

from daskmm.errors import DataError, ModelError
from daskmm.formula.levels import sorted_levels
from daskmm.models.glmm.fit import glmm
from tests.models.glmm.helpers import simulate


def test_binomial_response_forms_agree(client):
    """0/1, a two-level string factor, a logical column, cbind, and a proportion with
    weights are the same model (grouped binomial and Bernoulli differ only by a constant)."""
    rng = np.random.default_rng(9)
    n = 500
    df = pd.DataFrame({"x": rng.normal(size=n), "g": rng.integers(0, 15, n)})
    df["y"] = (rng.random(n) < special.expit(0.3 * df.x + rng.normal(0, .7, 15)[df.g])
               ).astype(int)
    df["yes"] = np.where(df.y == 1, "yes", "no")
    df["ok"] = df.y.astype(bool)
    df["one"] = 1
    base = glmm("y ~ x + (1 | g)", df, "binomial", client=client)
    for f, kw in [("yes ~ x + (1 | g)", {}), ("ok ~ x + (1 | g)", {}),
                  ("cbind(y, one - y) ~ x + (1 | g)", {}),
                  ("y ~ x + (1 | g)", {"weights": "one"})]:
        other = glmm(f, df, "binomial", client=client, **kw)
        assert other.objective == pytest.approx(base.objective, rel=1e-10)
        np.testing.assert_allclose(other.beta, base.beta, rtol=1e-7)


def test_all_zero_levels_are_reported(client):
    df = simulate(12, "poisson", n=600, m=20)
    df.loc[df.g < 3, "y"] = 0
    fit = glmm("y ~ x + offset(log(t)) + (1 | g)", df, "poisson", client=client)
    assert any("all-zero responses" in w for w in fit.to_dict()["warnings"])
    assert "warning:" in fit.summary()


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kw, exc, match", [
    ({"formula": "y ~ x + (1 | g)", "family": "poisson", "frame": lambda d: d.assign(y=d.y + .5)},
     DataError, "not non-negative integers"),
    ({"formula": "y ~ x + (1 | g)", "family": "negative_binomial",
      "frame": lambda d: d.assign(y=-d.y - 1)}, DataError, "negative binomial family"),
    ({"formula": "cbind(y, k - y) ~ x + (1 | g)", "family": "binomial",
      "frame": lambda d: d.assign(y=d.k + 1)}, DataError, "out of range"),
    ({"formula": "c ~ x + (1 | g)", "family": "binomial",
      "frame": lambda d: d.assign(c=np.array(["a", "b", "c"])[d.g % 3])}, DataError,
     "3 level"),
    ({"formula": "p ~ x + (1 | g)", "family": "binomial", "weights": "k",
      "frame": lambda d: d.assign(p=d.y / d.k + 1)}, DataError, "proportion"),
    ({"formula": "y ~ x + (x | g)", "family": "poisson", "nagq": 5, "frame": None},
     ModelError, "nagq=5"),
    ({"formula": "y ~ x + (1 | g)", "family": "tweedie", "frame": None}, ModelError,
     "family 'tweedie' is not available"),
    ({"formula": "y ~ x + (1 | g)", "family": "gamma", "link": "logit", "frame": None},
     ModelError, "link 'logit' is not available for the gamma family"),
    ({"formula": "y ~ s + (1 | g)", "family": "binomial",
      "frame": lambda d: d.assign(y=(d.x > 0).astype(int), s=d.x * 50)}, DataError,
     "separate"),
])
def test_bad_input(client, kw, exc, match):
    df = simulate(5, "binomial", n=200, m=10)
    if kw["frame"]:
        df = kw["frame"](df)
    with pytest.raises(exc, match=match):
        glmm(kw["formula"], df, kw["family"], nagq=kw.get("nagq", 1), link=kw.get("link"),
             weights=kw.get("weights"), client=client)


def test_levels_sorted_like_lme4(client):
    df = simulate(6, "binomial", n=300, m=12)
    df["g"] = df["g"].map(lambda v: f"h{v}")
    fit = glmm("cbind(y, k - y) ~ x + (1 | g)", df, "binomial", client=client)
    assert list(fit.ranef_frame()["level"]) == sorted_levels(df["g"])
