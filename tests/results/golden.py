"""Comparing printed summaries with R's printed text, character for character (used by the
golden-printout tests: tests/results/test_golden_printouts.py for LMMs, lmerTest and pbkrtest,
tests/models/glmm/test_conformance.py and tests/models/gam/test_conformance.py beside the fits
they already make).

R's text comes from ``tests/fixtures/printouts/make_printouts.R`` (``print(summary(fit))`` of
lme4, lmerTest and mgcv fits of every conformance fixture). daskmm fits the same data in
process and prints; the lines must be equal, except those listed in ``CALL_LINES``, which
show R's call (the names of objects in R's session) and cannot be reproduced.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

PRINTOUTS = Path(__file__).resolve().parents[1] / "fixtures" / "printouts" / "fits"

CALL_LINES = ("   Data:", "Control:")
"""lme4's ``.prt.call`` lines after ``Formula:``: the deparsed ``data =`` and ``control =``
arguments of R's call."""
OPTIMIZER = re.compile(r"^optimizer \(.*\) convergence code")
"""lme4's ``optimizer (bobyqa) convergence code: 0 (OK)`` names the optimiser that ran:
daskmm's line names its own; the rest of the line must agree."""


DASKMM_NOTES = ("warning: ", "Note: ")
"""daskmm's own lines: conditions R reports as R warnings (on stderr), not in the summary."""
EXACT_LOGLIK = {"cbpp_agq25"}
"""lme4's logLik with nAGQ > 1 leaves out the binomial coefficients (-50.0 for cbpp); daskmm's
is the exact marginal log-likelihood (-92.0; the conformance fixture checks it by numerical
integration): the ``AIC BIC logLik deviance`` values line must differ."""
FLAT_OPTIMUM = {
    "grouseticks_poisson": "glmer's best optimum (bobyqa, Nelder_Mead and nloptwrap at tight "
    "tolerances, from its default fit) and daskmm's agree to 1e-6 in logLik on a flat "
    "likelihood; the estimates move in their 5th digit, which these tables print",
}
HALF_TIE = {
    fid: "Dyestuff's intercept is 1527.5 (the mean of the yields) to the last bit; print's 4 "
    "digits round that tie up or down by the estimate's last bit (lme4's REML fit prints "
    "1528, its ML fit 1527), which no fit can promise to share"
    for fid in ("dyestuff_reml_print", "dyestuff_ml_print")}
SP_DIGITS = {
    fid: "a smooth's test statistic (and edf at 1e-3) differs from mgcv's by about 3e-4 "
    "relative: the smoothing parameters agree only to the conformance tolerance (1e-2) on a "
    "flat fREML score (issue 33, the last digits)"
    for fid in ("cr_four", "by_factor", "ml_re", "side_no_intercept", "side_repeat",
                "side_te", "ti_main", "tp_default", "tp_ties")}


def r_text(name: str) -> list[str]:
    return [ln for ln in (PRINTOUTS / f"{name}.txt").read_text().splitlines()
            if not ln.startswith(CALL_LINES)]


def _same_optimizer(lines: list[str]) -> list[str]:
    return [OPTIMIZER.sub("optimizer (...) convergence code", ln) for ln in lines]


def _same_but_df(g: str, w: str) -> bool:
    """lmerTest's ``df`` is numDeriv's derivative of the covariance, good to about 1e-7
    relative (its value moves by that much with the optimiser's stopping point: cake's 222
    prints as 222.000020 or 222.000016). Where printCoefmat shows it to more digits
    (it shares decimals with the estimates), those cells are held to 1e-6 relative and the
    same width; every other character must be equal."""
    gt, wt = g.split(), w.split()
    if len(g) != len(w) or len(gt) != len(wt) or len(gt) < 5:
        return False
    ok_df = abs(float(gt[3]) - float(wt[3])) <= 1e-6 * abs(float(wt[3]))
    return ok_df and gt[:3] == wt[:3] and gt[4:] == wt[4:]


def assert_same_text(ours: str, name: str, df_column: bool = False) -> None:
    got = _same_optimizer([ln for ln in ours.splitlines() if not ln.startswith(DASKMM_NOTES)])
    want = _same_optimizer(r_text(name))
    while got and got[-1] == "" and len(got) > len(want):
        got.pop()  # the blank line before daskmm's own notes
    if name.removesuffix("_print") in EXACT_LOGLIK:
        i = next(i for i, ln in enumerate(want) if ln.split()[:2] == ["AIC", "BIC"]) + 1
        got, want = got[:i] + got[i + 1:], want[:i] + want[i + 1:]
    diff = [(i, g, w) for i, (g, w) in enumerate(zip(got, want))
            if g != w and not (df_column and _same_but_df(g, w))]
    assert not diff and len(got) == len(want), (
        f"{name}: first differing lines (line, daskmm, R): {diff[:4]}; "
        f"{len(got)} lines against R's {len(want)}\n--- daskmm\n{ours}")


def _without_formula(lines: list[str]) -> list[str]:
    """mgcv prints the formula deparsed (R's line breaks at 60 characters): the lines from
    ``Formula:`` to the next empty one are R's call and left out."""
    out, skip = [], False
    for ln in lines:
        if ln == "Formula:":
            skip = True
        elif skip and ln == "":
            skip = False
        if not skip:
            out.append(ln)
    return out


def _smooth_rows_agree(got: list[str], want: list[str], accurate: dict) -> list:
    """The smooth-term table, row by row, as tokens: all equal but the p-value where mgcv's
    differs from the accurate one. mgcv's ``summary.gam`` computes it by Davies' algorithm
    to an absolute accuracy of 2e-5 (``psum.chisq``'s default): 1.77e-05 for a p of 1.75e-05,
    ``<2e-16`` for one of 6e-15. daskmm prints the accurate p-value; that cell is held to the
    accurate value recorded by the fixture script (``p_value_accurate``), to the 3 digits
    printed (below 1e-10, where even that is only known to be tiny, to below 1e-10). Column
    widths follow the cells, so these rows are compared token by token."""
    bad = []
    for g, w in zip(got, want):
        gt, wt = g.split(), w.split()
        label = wt[0] if wt else ""
        if gt == wt:
            continue
        p = accurate.get(label)
        if p is None or len(gt) < 5 or gt[:4] != wt[:4]:
            bad.append((g, w))
            continue
        shown = "".join(gt[4:6] if gt[4] == "<" else gt[4:5])
        if p < 1e-10:  # beyond even the accurate Davies value: both must print it tiny
            ok = shown.startswith("<") or float(shown) < 1e-10
        else:
            ok = not shown.startswith("<") and math.isclose(float(shown), p, rel_tol=5e-3)
        stars_same = [t for t in gt[5:] if t != "<" and "e-" not in t] == \
            [t for t in wt[5:] if t != "<" and "e-" not in t]
        if not (ok and stars_same):
            bad.append((g, w))
    return bad


def _gam_lines(text: list[str]) -> list[str]:
    return [ln for ln in _without_formula(text) if not ln.startswith("Note: ")]


def assert_gam_text(fit, root, fid: str) -> None:
    """Every line as mgcv prints it but the formula (R's deparse) and daskmm's own notes
    (``Note:``: what mgcv gives as R warnings); the smooth table's p-values as
    :func:`_smooth_rows_agree` says."""
    ref = json.loads((root / "fits" / f"{fid}.json").read_text())
    accurate = {s["label"]: s["p_value_accurate"] for s in ref.get("smooths", [])
                if "p_value_accurate" in s}
    got = _gam_lines(fit.summary().splitlines())
    want = _gam_lines(r_text(fid))
    assert len(got) == len(want), f"{len(got)} lines against R's {len(want)}\n{fit.summary()}"
    head = want.index("Approximate significance of smooth terms:") \
        if "Approximate significance of smooth terms:" in want else len(want)
    end = want.index("---", head) if head < len(want) else len(want)
    diff = [(i, gl, w) for i, (gl, w) in enumerate(zip(got, want))
            if gl != w and not head < i < end]
    diff += _smooth_rows_agree(got[head + 1:end], want[head + 1:end], accurate)
    assert not diff, f"{fid}: differing lines (daskmm, R): {diff[:4]}\n{fit.summary()}"


def assert_gam_print(fit, fid: str) -> None:
    """``str(fit)`` against mgcv's ``print(fit)``, every line but the formula's."""
    got = _without_formula(str(fit).splitlines())
    want = _without_formula(r_text(f"{fid}_print"))
    assert got == want, f"{fid}: daskmm\n" + "\n".join(got) + "\nR\n" + "\n".join(want)
