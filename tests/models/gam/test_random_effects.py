"""Random effects in a GAM: ``re`` terms kept per level (the blocked fit) against bam, and
gamm4's model (lme4 bars beside the smooths) against gamm4.

The blocked fit is forced on the small-factor fixtures (``BLOCK_LEVELS = 1``) and taken by
itself on ``simlev``'s 600-level factor; its result is checked both written out as dense
columns (``reTest`` available) and kept per level (``DENSE_POST_COEFS = 0``).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from daskmm.errors import FormulaError
from daskmm.models.gam.model import gam
from tests.models.gam.helpers import GAM, load
from tests.models.gam.test_conformance import check_against_bam, fit_case

model = importlib.import_module("daskmm.models.gam.model")
gam_result = importlib.import_module("daskmm.models.gam.result")

BLOCKED = ["re_intercept", "re_slope", "ml_re", "re_many_levels", "poisson_re_many_levels"]


@pytest.mark.parametrize("post", ["dense", "per_level"])
@pytest.mark.parametrize("fid", BLOCKED)
def test_blocked_re_terms_match_bam(monkeypatch, fid, post):
    monkeypatch.setattr(model, "BLOCK_LEVELS", 1)
    if post == "per_level":
        monkeypatch.setattr(gam_result, "DENSE_POST_COEFS", 0)
    ref, data, fitted, res = fit_case(GAM, fid)
    assert res.optinfo["blocked_terms"], "the re terms were not kept per level"
    check_against_bam(ref, data, fitted, res, re_tests=post == "dense")
    if post == "per_level":
        assert res.Vp.shape[0] == res.spec.p_dense


def test_many_levels_are_kept_per_level_by_default():
    ref, data, fitted, res = fit_case(GAM, "re_many_levels")
    assert res.optinfo["blocked_terms"] == ["s(g)", "s(x1,g)"]
    # written out after the fit: coefficients in mgcv's order
    assert res.coef_names[-1] == "s(x1,g).600" and len(res.coef) == res.spec.p


def test_gamm4_bar_matches_gamm4():
    ref, data, fitted = load(GAM, "gamm4_bar")
    res = gam(ref["formula"], data, factors=ref["factors"], method="REML")
    assert [s["label"] for s in res.smooth_table] == [s["label"] for s in ref["smooths"]]
    for ours, theirs in zip(res.smooth_table, ref["smooths"]):
        assert abs(ours["edf"] - theirs["edf"]) < 1e-2, ours["label"]
    assert res.scale == pytest.approx(ref["sigma"] ** 2, rel=1e-4)
    vc = res.varcomp()
    assert list(vc["term"]) == ["(1 | g)"] and list(vc["group"]) == ["g"]
    assert vc["sd"].iloc[0] == pytest.approx(ref["random"][0]["sd"], rel=1e-4)
    fe = res.fixef()
    np.testing.assert_allclose(fe["estimate"], ref["fixef"]["estimate"], rtol=1e-4)
    np.testing.assert_allclose(fe["std_error"], ref["fixef"]["std_error"], rtol=1e-3)
    sd = data["y"].std()
    ours = res.fitted(data)["fitted"].to_numpy()
    assert np.max(np.abs(ours - fitted["fitted"].to_numpy())) < 1e-3 * sd


def test_bar_is_the_re_smooth_it_stands_for():
    ref, data, _ = load(GAM, "re_intercept")
    bar = gam("y ~ s(x0, bs = 'cr') + s(x2, bs = 'cr') + (1 | fac)", data, factors=["fac"])
    assert bar.score == pytest.approx(ref["score"], rel=1e-9)
    ref2, _, _ = load(GAM, "re_slope")
    both = gam("y ~ s(x0, bs = 'cr') + (x2 || fac)", data, factors=["fac"])
    assert both.score == pytest.approx(ref2["score"], rel=1e-9)
    assert list(both.varcomp()["term"]) == ["(1 | fac)", "(0 + x2 | fac)"]


@pytest.mark.parametrize("formula, words", [
    ("y ~ s(x0, bs = 'cr') + (1 + x2 | fac)", ["(1 + x2 | fac)", "(x || g)"]),
    ("y ~ s(x0, bs = 'cr') + (1 | fac:x3)", ["interaction"]),
])
def test_unsupported_bars_are_one_line(formula, words):
    _, data, _ = load(GAM, "re_intercept")
    with pytest.raises(FormulaError) as e:
        gam(formula, data, factors=["fac"])
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_per_level_result_keeps_each_coefficients_standard_error(monkeypatch):
    """re_slope's terms come last in mgcv's order too, so the per-level layout and the
    written-out one list the coefficients alike."""
    monkeypatch.setattr(model, "BLOCK_LEVELS", 1)
    _, _, _, dense = fit_case(GAM, "re_slope")
    monkeypatch.setattr(gam_result, "DENSE_POST_COEFS", 0)
    _, _, _, per_level = fit_case(GAM, "re_slope")
    assert per_level.coef_names == dense.coef_names
    np.testing.assert_allclose(per_level.coef, dense.coef, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(per_level.std_errors(), dense.std_errors(), rtol=1e-8)
    doc = per_level.to_dict()
    assert len(doc["coefficients"]["std_error"]) == len(doc["coefficients"]["names"])
