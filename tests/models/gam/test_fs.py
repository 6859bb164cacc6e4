"""``s(x, g, bs = "fs")``: one penalised thin plate curve per level.

mgcv's own fs fit depends on the row order of the data (its null-space basis is whatever its
eigen solver returns; the fixture records bam's fREML for both row orders, which differ), so
the reference is the fixed basis daskmm uses, built in R from mgcv's tp and nat.param and
fitted by bam with paraPen (make_fixtures.R, fs_fixture)."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.errors import DaskmmError
from daskmm.models.gam.model import gam
from tests.models.gam.helpers import GAM, load


def test_fs_matches_bam_on_the_same_basis():
    ref, data, fitted = load(GAM, "fsref_tp")
    res = gam(ref["formula"], data, factors=ref["factors"])
    assert res.optinfo["reml_converged"]
    assert res.score == pytest.approx(ref["score"], rel=1e-6)
    assert res.scale == pytest.approx(ref["scale"], rel=1e-4)
    fs, other = res.smooth_table
    assert fs["label"] == "s(x0,fac)"
    assert abs(fs["edf"] - ref["edf_fs"]) < 1e-2
    assert abs(other["edf"] - ref["smooths"][0]["edf"]) < 1e-2
    assert res.coef[0] == pytest.approx(ref["intercept"], rel=1e-4)
    sd = data["y"].std()
    ours = res.fitted(data)["fitted"].to_numpy()
    assert np.max(np.abs(ours - fitted["fitted"].to_numpy())) < 1e-3 * sd
    assert len(res.sp) == 4  # range space, constant, linear; s(x1)


def test_fs_does_not_depend_on_row_order():
    ref, data, _ = load(GAM, "fsref_tp")
    a = gam(ref["formula"], data, factors=ref["factors"])
    b = gam(ref["formula"], data.iloc[::-1].reset_index(drop=True), factors=ref["factors"])
    assert b.score == pytest.approx(a.score, rel=1e-9)
    # what mgcv does instead (recorded by the fixture script)
    assert abs(ref["mgcv_fs_score"] - ref["mgcv_fs_score_reversed_rows"]) > 1e-3


@pytest.mark.parametrize("formula, words", [
    ("y ~ s(x0, x1, bs = 'fs')", ["'fs'", "one factor"]),
    ("y ~ s(x0, fac, bs = 'fs', k = 2000)", ["distinct values", "k = 2000"]),
])
def test_bad_fs_is_one_line(formula, words):
    _, data, _ = load(GAM, "fsref_tp")
    with pytest.raises(DaskmmError) as e:
        gam(formula, data, factors=["fac"])
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value), str(e.value)
