"""Bases, constraints and penalty scaling against mgcv's ``smoothCon`` (fits/bases.json)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from daskmm.formula.levels import sorted_levels
from daskmm.models.gam.bases import CubicRegression, place_knots, r_quantile
from daskmm.models.gam.smooth import build_smooths
from daskmm.models.gam.terms import split_smooths
from tests.models.gam.helpers import GAM

BASES = json.loads((GAM / "fits" / "bases.json").read_text())


def _build(entry):
    data = pd.read_csv(GAM / "data" / f"{entry['data']}.csv")
    levels = {c: sorted_levels(data[c]) for c in ("fac",) if c in data}
    term = entry["term"].replace('"', "'")
    _, calls = split_smooths(f"y ~ {term}")
    return data, build_smooths(calls[0], data, levels, constraint=entry["constraint"])


@pytest.mark.parametrize("name", sorted(BASES))
def test_matches_smoothcon(name):
    entry = BASES[name]
    data, smooths = _build(entry)
    assert [s.label for s in smooths] == [s["label"] for s in entry["smooths"]]
    for ours, ref in zip(smooths, entry["smooths"]):
        X = ours.design(data)
        RX = np.asarray(ref["X"], dtype=float)
        scale = np.abs(RX).max()
        np.testing.assert_allclose(X[:20], RX, rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(X.sum(axis=0), ref["colsum"], rtol=0,
                                   atol=1e-10 * np.abs(X).sum(axis=0).max())
        assert len(ours.S) == len(ref["S"])
        for S, RS in zip(ours.S, ref["S"]):
            RS = np.asarray(RS, dtype=float)
            np.testing.assert_allclose(S, RS, rtol=0, atol=1e-12 * np.abs(RS).max())
        np.testing.assert_allclose(ours.S_scale, ref["S_scale"], rtol=1e-12)


def test_identical_columns_from_any_rows():
    """A frozen smooth builds the same columns for a row wherever the row sits."""
    entry = BASES["te_cr_ps_sweep"]
    data, (sm,) = _build(entry)
    whole = sm.design(data)
    rev = data.iloc[::-1]
    cuts = np.linspace(0, len(rev), 8).astype(int)
    parts = np.vstack([sm.design(rev.iloc[a:b]) for a, b in zip(cuts[:-1], cuts[1:])])[::-1]
    np.testing.assert_array_equal(whole, parts)


def test_knots_as_mgcv_places_them():
    x = np.array([0.3, 0.1, 0.1, 0.9, 0.5, 0.7, 0.2, 0.8])
    # cr: quantiles of the unique values (R's type 7)
    np.testing.assert_allclose(CubicRegression.setup(x, 4).knots,
                               r_quantile(np.unique(x), np.linspace(0, 1, 4)))
    assert r_quantile(np.array([1.0, 2.0, 4.0]), np.array([0.25]))[0] == 1.5
    # cc: place.knots, evenly through the sorted unique values
    np.testing.assert_allclose(place_knots(x, 3), [0.1, 0.5, 0.9])


def test_cr_reproduces_linear_and_extrapolates_linearly():
    b = CubicRegression.setup(np.linspace(0, 1, 50), 6)
    coef = 2.0 + 3.0 * b.knots  # a straight line's values at the knots
    x = np.array([-0.5, 0.0, 0.33, 1.0, 1.7])
    np.testing.assert_allclose(b.predict(x) @ coef, 2.0 + 3.0 * x, atol=1e-12)
    assert np.abs(b.S @ coef).max() < 1e-10  # the penalty's null space holds lines
