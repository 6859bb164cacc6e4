"""Profile-likelihood intervals, as lme4's confint(method = "profile", oldNames = FALSE)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import daskmm
from tests.conftest import load_fixture
from tests.models.lmm.inference.refs import rel


def _check(ci: pd.DataFrame, ref: list[dict]) -> None:
    assert list(ci["parameter"]) == [r["parameter"] for r in ref]
    for got, want in zip(ci.itertuples(), ref):
        for a, b in ((got.lower, want["lower"]), (got.upper, want["upper"])):
            if b == 0:  # an sd whose profile stays inside the cutoff down to 0: lme4's bound
                assert a == 0
            else:
                assert rel(a, b) < 1e-4, (got.parameter, a, b)


@pytest.mark.parametrize("case", ["sleepstudy", "dyestuff", "penicillin", "pastes",
                                  "sleepstudy_unbalanced"])
def test_profile_intervals_match_lme4(fits, case):
    ref, fit = fits[case]
    _check(fit.confint("profile"), ref["profile_ci"])


@pytest.mark.parametrize("fid", ["dyestuff_reml", "sleepstudy_reml"])
def test_profile_intervals_match_the_conformance_fixtures(fid):
    fx = load_fixture(fid)
    df = pd.read_csv(fx["data_path"])
    fit = daskmm.lmm(fx["formula"], df, mode="in-process", ci="profile")
    _check(pd.DataFrame(fit.ci), fx["profile_ci"])
    assert {r["method"] for r in fit.ci} == {"profile"}
    assert "profile:" in fit.summary()


def test_profiles_reach_past_the_cutoff_on_both_sides(fits):
    _, fit = fits["sleepstudy"]
    fit.confint("profile")
    for tr in fit.profiles:
        assert tr.zeta.min() < -1.96 and tr.zeta.max() > 1.96, tr.parameter
        assert np.all(np.diff(tr.x) > 0)


def test_profiles_as_tasks_give_the_same_limits(fits, client):
    _, fit = fits["penicillin"]
    here = fit.confint("profile")
    there = fit.confint("profile", client=client)
    np.testing.assert_allclose(there[["lower", "upper"]].to_numpy(),
                               here[["lower", "upper"]].to_numpy(), rtol=1e-9)


def test_wald_intervals_match_lme4(fits):
    for case in ("sleepstudy", "cake"):
        ref, fit = fits[case]
        _check(fit.confint("wald"), ref["wald_ci"])


def test_profiles_report_parameters_and_points_not_evaluations(fits, monkeypatch):
    """A profile in process reports each point of each parameter and each parameter done
    (done of total), and none of its constrained refits' optimiser evaluations."""
    from daskmm import events
    heard = []
    monkeypatch.setattr(events, "_listener", lambda kind, fields: heard.append((kind, fields)))
    _, fit = fits["dyestuff"]
    fit.confint("profile")
    kinds = [k for k, _ in heard]
    start = kinds.index("profile_start")
    assert heard[start][1] == {"total": 3}
    assert "evaluation" not in kinds[start:]  # the ML refit's before it may show
    ends = [f for k, f in heard if k == "profile"]
    assert [(f["parameter"], f["done"], f["total"]) for f in ends] == [
        ("sd_(Intercept)|Batch", 1, 3), ("sigma", 2, 3), ("(Intercept)", 3, 3)]
    for tr, f in zip(fit.profiles, ends):
        points = [g["points"] for k, g in heard if k == "profile_point"
                  and g["parameter"] == f["parameter"]]
        assert points == list(range(1, f["points"] + 1)) and len(tr.x) == f["points"] + 1
