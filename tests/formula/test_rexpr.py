"""R expressions as R reads them: names, calls, R's printed form."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.errors import FormulaError
from daskmm.formula.rexpr import (
    deparse,
    identifiers,
    is_syntactic,
    r_quote,
    to_python,
    tokenize,
)


@pytest.mark.parametrize("text, names", [
    ("I(age^2) + poly(x, degree = 2) + scale(z)", {"age", "x", "z"}),
    ("`my var` + dose.mg + größe + log", {"my var", "dose.mg", "größe", "log"}),
    ("log(a) + log1p(b) * pi", {"a", "b"}),
    ("(u + v + w)^2", {"u", "v", "w"}),
    ("poly(x, 2, raw = TRUE)", {"x"}),
])
def test_identifiers_are_the_columns(text, names):
    assert identifiers(text) == names


@pytest.mark.parametrize("text, printed", [
    ("I(age ^ 2)", "I(age^2)"),
    ("log(x+1)", "log(x + 1)"),
    ("poly(x,2)", "poly(x, 2)"),
    ("poly(x, degree=2.0)", "poly(x, degree = 2)"),
    ("I(-x/2)", "I(-x/2)"),
    ("I(`my var` * 2)", "I(`my var` * 2)"),
    ("exp(0.50 * d)", "exp(0.5 * d)"),
])
def test_deparse_as_r(text, printed):
    assert deparse(tokenize(text)) == printed


def test_quoting_follows_r_syntax():
    assert is_syntactic("dose.mg") and is_syntactic("größe") and is_syntactic(".x")
    assert not is_syntactic("my var") and not is_syntactic("dose-2") and not is_syntactic("2x")
    assert not is_syntactic("if")
    assert r_quote("treat group") == "`treat group`"


def test_unreadable_character_names_the_position():
    with pytest.raises(FormulaError, match="position 2"):
        tokenize("x $ y")


def test_and_or_bind_more_loosely_than_comparisons_as_in_r():
    """R reads ``x > 0 & z < 1`` as ``(x > 0) & (z < 1)``; Python's ``&`` (bitwise, on arrays)
    binds more tightly than ``>``, so the translation parenthesises its operands."""
    x, z = np.array([-1.0, 0.5, 2.0, 3.0]), np.array([0.0, 0.5, 2.0, 0.2])
    env = {"_c0": x, "_c1": z}
    names = {"x": "_c0", "z": "_c1"}
    for expr, want in [("x > 0 & z < 1", (x > 0) & (z < 1)),
                       ("x > 2 | z == 2 & x > 0", (x > 2) | ((z == 2) & (x > 0))),
                       ("(x > 0 | z > 1) & x < 3", ((x > 0) | (z > 1)) & (x < 3))]:
        code = to_python(tokenize(expr), names, {})
        np.testing.assert_array_equal(eval(code, {}, env), want)  # noqa: S307 - test code
