"""daskmm's copy of R's printing rules (``daskmm.results.rformat``) against R's own answers
on seeded and edge-case inputs (``tests/fixtures/printouts/format_cases.json``, made by
``make_printouts.R`` there): every case character for character, every number exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from daskmm.results import rformat as rf

CASES = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "printouts" / "format_cases.json")
    .read_text(), parse_int=lambda s: -0.0 if s == "-0" else int(s))
"""R writes a negative zero as ``-0``: read back as one, it keeps its sign."""


def vec(v) -> list:
    return v if isinstance(v, list) else [v]


def same(a: list, b: list) -> bool:
    return all((x is None and y is None) or (x == y and math.copysign(1, x) == math.copysign(
        1, y)) for x, y in zip(a, b, strict=True))


def test_format_matches_r():
    bad = []
    for c in CASES["format"]:
        x = vec(c["x"])
        if c["nsmall"]:  # format(round(x, 3), nsmall = 3), as lme4 prints correlations
            x = rf.fround_all(x, 3)
        if rf.format_num(x, c["digits"], c["nsmall"]) != vec(c["out"]):
            bad.append(c)
    assert not bad, bad[:3]
    assert len(CASES["format"]) > 800


def test_round_matches_r_exactly():
    bad = [c for c in CASES["round"] if not same(rf.fround_all(vec(c["x"]), c["d"]),
                                                 vec(c["out"]))]
    assert not bad, bad[:3]


def test_formatc_matches_r():
    bad = [c for c in CASES["formatC"]
           if rf.format_c(c["x"], c["digits"], c["width"], c["flag"]) != c["out"]]
    assert not bad, bad[:3]


@pytest.mark.parametrize("x, want", [(2589.0, "  2589"), (25889.5, " 25890"), (1e-10, " 1e-10"),
                                     (2588.95, "2588.9")])
def test_formatc_default_width_is_digits_plus_one(x, want):
    """mgcv's ``formatC(score, digits = 5)``: R pads to ``digits + 1`` characters."""
    assert rf.format_c(x, 5) == want


def test_format_pval_matches_r():
    bad = [c for c in CASES["format_pval"]
           if rf.format_pval(vec(c["p"]), c["digits"]) != vec(c["out"])]
    assert not bad, bad[:3]


def test_zapsmall_and_quantile_match_r_exactly():
    bad = [c for c in CASES["zapsmall"]
           if not same(rf.zapsmall(vec(c["x"]), c["digits"]), vec(c["out"]))]
    bad += [c for c in CASES["quantile"] if rf.quantile7(c["x"]) != c["out"]]
    assert not bad, bad[:3]


def test_abbreviate_matches_r():
    for c in CASES["abbreviate"]:
        assert rf.abbreviate(c["x"], 6) == c["a6"]
        assert rf.abbreviate(c["x"], 11) == c["a11"]


def test_print_coefmat_matches_r():
    for c in CASES["coefmat"]:
        x = c["x"] if isinstance(c["x"][0], list) else [c["x"]]
        got = rf.print_coefmat(x, vec(c["rownames"]), c["colnames"], digits=4)
        assert got == c["out"]


def test_named_vector_print_matches_r():
    names = ["Min", "1Q", "Median", "3Q", "Max"]
    for c in CASES["named_vector"]:
        assert rf.print_named(rf.format_num(c["x"], c["digits"]), names) == c["out"]


@pytest.mark.parametrize("x, digits, want", [
    ([9996.0, 3.0], 3, ["9996", "   3"]),  # rounding would widen 9996 to 1e+04: stays fixed
    ([1e-20, 1.0], 7, ["1e-20", "1e+00"]),  # fixed would need 20 decimals
    ([None, 1.5], 4, [" NA", "1.5"]),  # NA
    ([float("nan"), 1.5], 4, ["NaN", "1.5"]),  # R's NaN is not NA
])
def test_format_edge_cases(x, digits, want):
    assert rf.format_num(x, digits) == want


def test_title_wraps_as_r_does():
    """lme4's ``.prt.methTit``: a long title is wrapped at 78 with an indent of 2."""
    title = ("Generalized linear mixed model fit by maximum likelihood (Adaptive "
             "Gauss-Hermite Quadrature, nAGQ = 25)")
    got = rf.cat_fill([*rf.strwrap(title, 78, exdent=2), " [", "glmerMod", "]"], sep="")
    assert got == ["Generalized linear mixed model fit by maximum likelihood (Adaptive",
                   "  Gauss-Hermite Quadrature, nAGQ = 25) [glmerMod]"]


@pytest.mark.parametrize("rows, want", [
    ([[45.85296, 1, 1.27e-11], [45.85296, None, 0.000999001]],
     ["         stat df  p.value    ", "LRT    45.853  1 1.27e-11 ***",
      "PBtest 45.853    0.000999 ***", "---", f"Signif. codes:  {rf.SIGNIF_LEGEND}"]),
    ([[2.13, 2, 0.3447], [2.13, None, 0.3696]],
     ["       stat df p.value", "LRT    2.13  2  0.3447", "PBtest 2.13     0.3696"]),
])
def test_pbkrtest_table_layout_matches_r(rows, want):
    """pbkrtest's ``printCoefmat(tab, tst.ind = 1, na.print = "", has.Pvalue = TRUE)``: the
    expected lines are R 4.2.2's for these tables."""
    assert rf.print_coefmat(rows, ["LRT", "PBtest"], ["stat", "df", "p.value"], digits=5,
                            tst_ind=[0], has_pvalue=True, na_print="") == want
