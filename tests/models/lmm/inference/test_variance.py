"""Nakagawa's R^2 and the ICC, as performance::r2_nakagawa and performance::icc."""

from __future__ import annotations

import dataclasses

import pytest

from daskmm.errors import ModelError
from tests.models.lmm.inference.conftest import at_reference
from tests.models.lmm.inference.refs import CASES


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * abs(b) + 1e-12


@pytest.mark.parametrize("case", CASES)
def test_r2_and_icc_match_performance_at_its_optimum(fits, case):
    ref, fit = fits[case]
    here = at_reference(fit, ref)
    r2, icc = here.r2(), here.icc()
    for k in ("R2_marginal", "R2_conditional"):
        assert _close(r2[k], ref["r2"][k]), k
    for k in ("ICC_adjusted", "ICC_unadjusted"):
        assert _close(icc[k], ref["icc"][k]), k
    want = {r["group"]: r["ICC"] for r in ref["icc_by_group"]}
    assert set(icc["by_group"]) == set(want)
    for g, v in want.items():
        assert _close(icc["by_group"][g], v), g


def test_r2_needs_an_intercept_and_no_weights(fits):
    _, fit = fits["sleepstudy"]
    names = ["x"] + list(fit.fixef_names[1:])
    with pytest.raises(ModelError, match="no intercept"):
        dataclasses.replace(fit, fixef_names=names).r2()
