"""Smooth terms in the formula: parsing mgcv's calls and one-line errors for bad ones."""

from __future__ import annotations

import pytest

from daskmm.errors import FormulaError
from daskmm.models.gam.terms import split_smooths


def test_splits_smooths_from_parametric_part():
    rest, calls = split_smooths("y ~ x + s(x0) + te(a, b, k = c(4, 5)) + f + "
                                "s(x1, by = g, bs = 'cr', k = 12) + ti(a, b)")
    assert rest == "y ~ x + f"
    assert [c.label for c in calls] == ["s(x0)", "te(a,b)", "s(x1)", "ti(a,b)"]
    assert calls[0].bs == ("tp",) and calls[0].k == (-1,)
    assert calls[1].bs == ("cr", "cr") and calls[1].k == (4, 5)
    assert calls[2].by == "g" and calls[2].k == (12,) and calls[2].bs == ("cr",)


def test_only_smooths_leave_an_intercept():
    assert split_smooths("y ~ s(x)")[0] == "y ~ 1"
    assert split_smooths("y ~ s(x) - 1")[0] == "y ~ 1 - 1"


def test_options():
    _, (c,) = split_smooths("y ~ s(x, bs = \"ps\", k = 9, m = c(3, 1), fx = TRUE)")
    assert c.bs == ("ps",) and c.m == (3, 1) and c.fx
    _, (c,) = split_smooths("y ~ te(x, z, bs = c('cr', 'ps'))")
    assert c.bs == ("cr", "ps")
    _, (c,) = split_smooths("y ~ s(x, g, bs = 're')")
    assert c.variables == ("x", "g") and c.label == "s(x,g)"


@pytest.mark.parametrize("formula, words", [
    ("y ~ s(x, bs = 'zz')", ["unknown basis", "'zz'", "allowed"]),
    ("y ~ s(x, k = 2.5)", ["k=", "whole numbers"]),
    ("y ~ s(log(x))", ["not a column name"]),
    ("y ~ s(x, foo = 1)", ["foo=", "not supported"]),
    ("y ~ te(x, z, k = c(3, 4, 5))", ["3 values of k", "2 margins"]),
    ("y ~ s(x, z, bs = 'cr')", ["te()"]),
    ("y ~ s()", ["names no covariate"]),
    ("y ~ x - s(z)", ["subtract"]),
    ("y ~ t2(x, z)", ["t2()", "not supported"]),
])
def test_bad_smooth_is_one_clear_line(formula, words):
    with pytest.raises(FormulaError) as e:
        split_smooths(formula)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg
