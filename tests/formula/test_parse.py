"""lme4's formula language, parsed without data."""

from __future__ import annotations

import pytest

from daskmm.errors import FormulaError
from daskmm.formula.parse import BarTerm, parse_formula


@pytest.mark.parametrize("text,fixed,bars", [
    ("y ~ x + (1 | g)", "x", [BarTerm("1", ("g",))]),
    ("y ~ x + (1 + x | g)", "x", [BarTerm("1 + x", ("g",))]),
    ("y ~ x + (x || g)", "x", [BarTerm("1", ("g",)), BarTerm("0 + x", ("g",))]),
    ("y ~ (0 + x + z || g)", "1", [BarTerm("0 + x", ("g",)), BarTerm("0 + z", ("g",))]),
    ("y ~ 1 + (1 | a/b)", "1", [BarTerm("1", ("b", "a")), BarTerm("1", ("a",))]),
    ("y ~ 1 + (1 | a/b/c)", "1", [BarTerm("1", ("c", "b", "a")), BarTerm("1", ("b", "a")),
                                  BarTerm("1", ("a",))]),
    ("y ~ r * t + (1 | r:rep)", "r * t", [BarTerm("1", ("r", "rep"))]),
    ("y ~ 0 + x + (1 | g) + (1 | h)", "0 + x", [BarTerm("1", ("g",)), BarTerm("1", ("h",))]),
    ("y ~ x - 1 + (1 | g)", "x - 1", [BarTerm("1", ("g",))]),
])
def test_bars_and_fixed_part(text, fixed, bars):
    pf = parse_formula(text)
    assert pf.response == "y"
    assert pf.fixed == fixed
    assert list(pf.bars) == bars


def test_offset_and_expressions():
    pf = parse_formula("log(y) ~ x + offset(log(t)) + I(x^2) + (1 | g)")
    assert pf.response == "log(y)"
    assert pf.offsets == ("log(t)",)
    assert pf.fixed == "x + I(x^2)"
    assert {"y", "x", "t", "g"} <= pf.columns
    assert "log" not in pf.columns


def test_bar_names_as_lme4():
    assert parse_formula("y ~ (1 | batch/cask)").bars[0].factor_name == "cask:batch"


@pytest.mark.parametrize("text,needle", [
    ("y x + (1 | g)", "no '~'"),
    ("~ x + (1 | g)", "no response"),
    ("y ~ x + (1 | g", "unbalanced"),
    ("y ~ x + 1 | g)", "unbalanced"),
    ("y ~ x + (1 | )", "no grouping factor"),
    ("y ~ x + ( | g)", "nothing before"),
    ("y ~ x + (1 | log(g))", "not a column name"),
    ("y ~ x - (1 | g)", "cannot subtract"),
    ("y ~ x | g", "outside parentheses"),
    ("y ~ x ~ z", "more than one"),
])
def test_errors_name_the_problem(text, needle):
    with pytest.raises(FormulaError, match=needle.replace("(", r"\(")):
        parse_formula(text)
