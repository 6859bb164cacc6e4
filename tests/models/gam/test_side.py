"""Overlapping smooths made identifiable as mgcv's ``gam.side`` (issue 29, item 4): the
columns deleted, against bam's ``del.index`` (tests/fixtures/gam/make_fixtures.R, the
``side_*`` fixtures, whose score, edf, fitted values and predictions test_conformance
compares), mgcv's warning for a repeated 1-d smooth, the same answer on a cluster, and
``fixDependence`` on matrices whose dependence is known."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.models.gam.model import gam
from daskmm.models.gam.side import fix_dependence, spans_constant
from tests.models.gam.helpers import FAMILY, GAM, load

SIDE = ["side_tp", "side_te", "side_repeat", "side_no_intercept", "side_poisson"]


def _fit(fid, **kw):
    ref, data, _ = load(GAM, fid)
    kw.setdefault("mode", "in-process")
    return ref, data, gam(ref["formula"], data, FAMILY[ref["family"]], link=ref["link"],
                          factors=ref["factors"] or None, **kw)


@pytest.mark.parametrize("fid", SIDE)
def test_overlapping_smooths_lose_the_columns_bam_deletes(fid):
    ref, _, fit = _fit(fid)
    got = [set() if s.deleted is None else set(s.deleted.tolist()) for s in fit.spec.smooths]
    assert got == [{i - 1 for i in d} for d in ref["del_index"]]
    assert fit.coef_names == ref["coef"]["names"]
    for w in ref["warnings"]:
        assert w in fit.warnings
    assert not [w for w in fit.warnings if "repeated" in w] or ref["warnings"]


def test_overlapping_smooths_fit_the_same_on_a_cluster(client):
    ref, data, a = _fit("side_te")
    _, _, b = _fit("side_te", mode="auto", client=client, npartitions=3)
    assert b.mode == "distributed"
    assert [None if s.deleted is None else s.deleted.tolist() for s in b.spec.smooths] == \
        [None if s.deleted is None else s.deleted.tolist() for s in a.spec.smooths]
    assert b.score == pytest.approx(a.score, rel=1e-10)
    np.testing.assert_allclose(b.coef, a.coef, rtol=1e-7, atol=1e-9)


def test_fix_dependence_finds_a_column_in_the_span_of_the_lower_terms():
    rng = np.random.default_rng(3)
    n = 200
    X1 = np.column_stack([np.ones(n), rng.normal(size=(n, 3))])
    X2 = rng.normal(size=(n, 5))
    assert fix_dependence(X1, X2) is None
    X2[:, 3] = X1[:, 1:] @ np.array([0.5, -2.0, 1.0]) + 3.0  # in the span of X1
    assert fix_dependence(X1, X2).tolist() == [3]
    # two dependent columns (one a combination of X1 and another column of X2)
    X2[:, 1] = X1[:, 2] - X2[:, 4]
    assert sorted(fix_dependence(X1, X2).tolist()) in ([1, 3], [3, 4])


def test_a_constant_in_the_span_of_the_parametric_columns_is_found():
    n = 12
    fac = np.repeat(np.arange(3), 4)
    dummies = (fac[:, None] == np.arange(3)).astype(float)  # y ~ 0 + fac: spans 1
    assert spans_constant(dummies)
    assert spans_constant(np.column_stack([np.ones(n), np.arange(n)]))
    assert not spans_constant(np.arange(n, dtype=float)[:, None] + 1.0)
    assert not spans_constant(np.zeros((n, 0)))
