"""The set-up written once (:mod:`daskmm.models.shared.prepare`): every model checks its
columns and grouping factors with the same words and error classes, and the checks that
differ between lmer and glmer differ here as they do there."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.errors import ColumnNotFoundError, DataError, ModelError


def frame(n=60, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "g": np.repeat([f"g{i}" for i in range(10)], n // 10),
                         "obs": [f"o{i}" for i in range(n)], "one": "a",
                         "y": rng.poisson(np.exp(1 + 0.3 * x)).astype(float),
                         "w": np.where(x > 0, "heavy", "light")})


@pytest.mark.parametrize("family, formula", [("gaussian", "y ~ x + (1 | g)"),
                                             ("poisson", "y ~ x + (1 | g)"),
                                             ("gaussian", "y ~ s(x)")])
def test_a_missing_column_reads_the_same_for_every_model(family, formula):
    df = frame()
    with pytest.raises(ColumnNotFoundError) as e:
        daskmm.fit(formula.replace("x", "xx", 1), df, family)
    said = str(e.value)
    assert said.startswith("column 'xx' ") and said.endswith(
        "is not in the data (did you mean 'x'?); the data have: x, g, obs, one, y, w")
    if "s(" not in formula:
        assert "named in the formula" in said


@pytest.mark.parametrize("family", ["gaussian", "poisson"])
def test_a_one_level_grouping_factor_is_a_model_error_for_both(family):
    with pytest.raises(ModelError, match="grouping factor 'one' has 1 level"):
        daskmm.fit("y ~ x + (1 | one)", frame(), family)


def test_a_level_an_observation_is_glmers_overdispersion_term_but_not_lmers():
    """glmer allows as many levels as observations (an observation-level random effect);
    lmer does not (check.nobs.vs.nlev with allow.n = FALSE)."""
    df = frame()
    g = daskmm.fit("y ~ x + (1 | g) + (1 | obs)", df, "poisson")
    assert g.ngroups["obs"] == len(df)
    with pytest.raises(ModelError, match="60 levels for 60 observations; the number of levels "
                                         "must be smaller"):
        daskmm.fit("y ~ x + (1 | obs)", df)
    with pytest.raises(ModelError, match="check.nobs.vs.nRE"):
        daskmm.fit("y ~ x + (1 + x | obs)", df, "poisson")


@pytest.mark.parametrize("family, formula", [("gaussian", "y ~ x + (1 | g)"),
                                             ("binomial", "I(y > 1) ~ x + (1 | g)"),
                                             ("gaussian", "y ~ s(x)")])
def test_non_numeric_weights_are_refused_by_every_model(family, formula):
    with pytest.raises(DataError, match="weights column 'w' is not numeric"):
        daskmm.fit(formula, frame(), family, weights="w")
