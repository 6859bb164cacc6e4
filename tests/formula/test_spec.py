"""Fixed-effect column names as R writes them (daskmm/formula/spec.py)."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.formula.spec import r_term_order

# colnames(model.matrix(f, d)) in R 4.2 for these formulas (an interaction's variables are
# ordered by their first appearance in the formula, which decides the name and, for two
# factors, which varies fastest); the first loses its aliased chY:age, as lmer drops it
R_NAMES = {
    "y ~ poly(age, 2) + ch + age:ch": ["(Intercept)", "poly(age, 2)1", "poly(age, 2)2", "chY",
                                       "chN:age"],
    "y ~ x + f * ch": ["(Intercept)", "x", "fb", "fc", "chY", "fb:chY", "fc:chY"],
    "y ~ ch:f + f + ch": ["(Intercept)", "fb", "fc", "chY", "chY:fb", "chY:fc"],
    "y ~ x * ch - 1": ["x", "chN", "chY", "x:chY"],
    # a logical is coded as a factor of FALSE, TRUE
    "y ~ I(x > 0) + age": ["(Intercept)", "I(x > 0)TRUE", "age"],
    "y ~ 0 + I(x > 0 & age < 1)": ["I(x > 0 & age < 1)FALSE", "I(x > 0 & age < 1)TRUE"],
    "y ~ f + ch + ch:f:x": ["(Intercept)", "fb", "fc", "chY", "fa:chN:x", "fb:chN:x",
                            "fc:chN:x", "fa:chY:x", "fb:chY:x", "fc:chY:x"],
}


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(1)
    return pd.DataFrame({"y": rng.normal(size=24), "age": rng.normal(size=24),
                         "x": rng.normal(size=24), "ch": np.tile(["N", "Y"], 12),
                         "f": np.repeat(["a", "b", "c"], 8), "g": np.tile(np.arange(6), 4)})


@pytest.mark.parametrize("formula", list(R_NAMES))
def test_interaction_names_follow_rs_variable_order(formula, frame):
    aliased = formula.startswith("y ~ poly")
    with pytest.warns(UserWarning, match="chY:age") if aliased else contextlib.nullcontext():
        fit = daskmm.lmm(formula + " + (1 | g)", frame, factors=["g"], mode="in-process")
    assert fit.fixef_names == R_NAMES[formula]


def test_term_order_rewrites_only_interactions_out_of_order():
    assert r_term_order("_c1 + _c2 + _c3:_c2") == "1 + _c1 + _c2 + _c2:_c3"
    assert r_term_order("_c1 * _c2") == "_c1 * _c2"  # already R's order: untouched
    assert r_term_order("0 + _c2 + _c1 + _c1:_c2") == "0 + _c2 + _c1 + _c2:_c1"
    assert r_term_order("_c1 +") == "_c1 +"  # formulaic's error is reported where it encodes
