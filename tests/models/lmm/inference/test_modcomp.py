"""Nested fixed-effect tests: pbkrtest's KRmodcomp and PBmodcomp, lmerTest's KR anova
(references: tests/fixtures/inference/make_modcomp.R)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.errors import ModelError
from daskmm.models.lmm.fit import lmm
from tests.models.lmm.inference.conftest import at_reference
from tests.models.lmm.inference.refs import ROOT, rel

REFS = {c["id"]: c for c in json.loads((ROOT / "refs" / "modcomp.json").read_text())}


def _frame(ref: dict) -> pd.DataFrame:
    df = pd.read_csv(ROOT / ref["data"])
    for c in ref["factors"]:
        df[c] = df[c].astype(str)
    return df


@pytest.fixture(scope="module")
def pairs() -> dict:
    """case -> (reference, large fit, small fit), REML in process."""
    out = {}
    for case, ref in REFS.items():
        df = _frame(ref)
        out[case] = (ref, lmm(ref["large"], df, mode="in-process"),
                     lmm(ref["small"], df, mode="in-process"))
    return out


@pytest.mark.parametrize("case", list(REFS))
def test_kenward_roger_f_matches_krmodcomp_at_its_optimum(pairs, case):
    ref, large, small = pairs[case]
    here = at_reference(large, {"theta": ref["theta_large"]})
    tab = daskmm.kr_modcomp(here, small)
    for row in ref["kr"]:
        got = tab.loc[row["term"]]
        assert int(got["ndf"]) == row["ndf"]
        assert rel(got["stat"], row["stat"]) < 1e-6
        assert rel(got["ddf"], row["ddf"]) < 1e-4
        assert rel(got["p.value"], row["p.value"]) < 1e-4
        if row["F.scaling"] is not None:
            assert abs(got["F.scaling"] - row["F.scaling"]) < 1e-6


@pytest.mark.parametrize("case", list(REFS))
def test_kenward_roger_t_tests_match_lmertest_at_its_optimum(pairs, case):
    """Including crossed subjects and items with a correlated slope (the dense Z'Z path)."""
    ref, large, _ = pairs[case]
    here = at_reference(large, {"theta": ref["theta_large"]})
    tab = here.test_fixef("kenward-roger")
    assert list(tab["term"]) == [r["term"] for r in ref["kr_coef"]]
    for got, want in zip(tab.itertuples(), ref["kr_coef"]):
        assert rel(got.std_error, want["std_error"]) < 1e-6
        assert rel(got.df, want["df"]) < 1e-4
        assert rel(got.p_value, want["p_value"]) < 1e-4


def test_a_scaled_kr_f_is_exercised():
    # the two-df case's F is scaled (pbkrtest's F.scaling != 1), so the scaling is checked
    assert abs(REFS["unbalanced_two_df"]["kr"][0]["F.scaling"] - 1) > 1e-3


def test_kr_by_column_names_equals_kr_by_small_fit(pairs):
    ref, large, small = pairs["unbalanced_two_df"]
    a = daskmm.kr_modcomp(large, small)
    b = daskmm.kr_modcomp(large, ["Days", "I(Days^2)"])
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("case", [c for c in REFS if "type3_kr" in REFS[c]])
def test_type3_anova_with_kenward_roger_matches_lmertest(pairs, case):
    ref, large, _ = pairs[case]
    here = at_reference(large, {"theta": ref["theta_large"]})
    tab = here.anova(ddf="kenward-roger")
    assert list(tab.index) == [r["term"] for r in ref["type3_kr"]]
    for row in ref["type3_kr"]:
        got = tab.loc[row["term"]]
        assert got["NumDF"] == row["ndf"]
        assert rel(got["DenDF"], row["ddf"]) < 1e-4
        assert rel(got["F value"], row["F"]) < 1e-6
        assert rel(got["Sum Sq"], row["sum_sq"]) < 1e-6
        assert rel(got["Pr(>F)"], row["p_value"]) < 1e-4


NSIM = 500
"""daskmm's replicates in the comparison with pbkrtest's 1000 (time of the suite)."""


def _mc_bound(p: float, n_r: int, n_ours: int) -> float:
    """Four standard errors of the difference of two bootstrap p-values from ``n_r`` and
    ``n_ours`` replicates, plus one replicate's step."""
    var = max(p * (1 - p), 1 / n_r) * (1 / n_r + 1 / n_ours)
    return 4 * math.sqrt(var) + 2 / (n_ours + 1)


@pytest.mark.parametrize("case", ["unbalanced_quadratic", "sleepstudy_factors"])
def test_pbmodcomp_matches_pbkrtest_within_monte_carlo_error(pairs, case):
    ref, large, small = pairs[case]
    pb = ref["pb"]
    res = daskmm.pb_modcomp(large, small, nsim=NSIM, seed=20261204)
    assert res.df == pb["df"]
    # the observed statistic: both models refitted by ML (exact optima, no randomness)
    assert rel(res.statistic, pb["stat"]) < 1e-6
    assert rel(res.p_chisq, pb["p_chisq"]) < 1e-5
    tab = res.table()
    assert list(tab.index) == ["LRT", "PBtest"]
    assert res.n_failed == 0 and res.npos >= 0.95 * NSIM
    assert abs(res.p_value - pb["p_pb"]) < _mc_bound(pb["p_pb"], pb["nsim"], NSIM)
    pos = res.ref[res.ref > 0]
    se = math.sqrt(pb["ref_var"] * (1 / pb["nsim"] + 1 / NSIM))
    assert abs(pos.mean() - pb["ref_mean"]) < 4 * se
    summ = res.summary()
    assert list(summ.index) == [r["term"] for r in pb["summary"]]


def test_pbmodcomp_p_value_counts_replicates_as_pbkrtest():
    res = daskmm.models.lmm.inference.modcomp.PBModcomp(
        2.0, 1, np.array([3.0, 1.0, -0.1, 2.5, np.nan, 0.0]), 0, ["x"])
    # positive replicates: 3, 1, 2.5; two exceed 2: (1 + 2) / (1 + 3)
    assert res.npos == 3 and res.n_extreme == 2 and res.n_failed == 1
    assert res.p_value == pytest.approx(0.75)


def test_pbmodcomp_prints_as_pbkrtest():
    """pbkrtest's header lines, then its table through ``printCoefmat(tab, tst.ind = 1,
    na.print = "", has.Pvalue = TRUE)`` (that layout is checked against R's own text in
    tests/results/test_rformat.py)."""
    from daskmm.models.lmm.inference.modcomp import PBModcomp
    res = PBModcomp(45.85296, 1, np.r_[np.full(1000, 1.0)], 0, ["Days"],
                    large="Reaction ~ Days + (Days | Subject)",
                    small="Reaction ~ 1 + (Days | Subject)")
    lines = str(res).splitlines()
    assert lines[:3] == ["Bootstrap test; samples: 1000; extremes: 0;",
                         "large : Reaction ~ Days + (Days | Subject)",
                         "small : Reaction ~ 1 + (Days | Subject)"]
    assert lines[3].split() == ["stat", "df", "p.value"]
    assert lines[4].split()[:3] == ["LRT", "45.853", "1"]
    assert lines[5].split() == ["PBtest", "45.853", "0.000999", "***"]


def test_pbmodcomp_replicates_are_identical_in_process_and_on_two_workers(pairs, client):
    _, large, small = pairs["unbalanced_quadratic"]
    a = daskmm.pb_modcomp(large, small, nsim=24, seed=3)
    b = daskmm.pb_modcomp(large, ["I(Days^2)"], nsim=24, seed=3, client=client)
    np.testing.assert_array_equal(a.ref, b.ref)
    c = daskmm.pb_modcomp(large, small, nsim=24, seed=4)
    assert not np.array_equal(a.ref, c.ref)


def test_models_that_are_not_nested_are_refused_with_what_to_do(pairs):
    _, large, small = pairs["unbalanced_quadratic"]
    with pytest.raises(ModelError, match="swap the arguments"):
        daskmm.kr_modcomp(small, large)
    with pytest.raises(ModelError, match="no fixed-effect column named 'Dayz'"):
        daskmm.pb_modcomp(large, ["Dayz"], nsim=2)
    df = _frame(REFS["unbalanced_quadratic"])
    other = lmm("Reaction ~ Days + (1 | Subject)", df, mode="in-process")
    with pytest.raises(ModelError, match="different random effects"):
        daskmm.kr_modcomp(large, other)
    shifted = df.assign(Reaction=df["Reaction"] + np.linspace(0, 1, len(df)))
    moved = lmm("Reaction ~ Days + (Days | Subject)", shifted, mode="in-process")
    with pytest.raises(ModelError, match="do not share their rows"):
        daskmm.pb_modcomp(large, moved, nsim=2)
    with pytest.raises(ModelError, match="same fixed effects"):
        daskmm.kr_modcomp(large, large)


def test_kenward_roger_needs_a_reml_fit(pairs):
    ref, _, _ = pairs["unbalanced_quadratic"]
    df = _frame(ref)
    ml = lmm(ref["large"], df, reml=False, mode="in-process")
    with pytest.raises(ModelError, match="REML"):
        daskmm.kr_modcomp(ml, ["I(Days^2)"])
