"""AR1 residuals within series (bam's ``rho`` and ``AR.start``): conformance is in
test_conformance (fixtures ar1_start, ar1_single); here the transform across partition
boundaries and the bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.errors import DaskmmError
from daskmm.models.gam.model import gam
from tests.models.gam.helpers import GAM, load
from tests.models.gam.test_invariance import assert_same

FORMULA = "y ~ s(x0, bs = 'cr') + s(x1, bs = 'cr')"


@pytest.mark.parametrize("ar_start", ["start", None])
def test_series_crossing_partitions_give_the_in_process_fit(client, ar_start):
    """Partitions cut series in the middle (3000 rows in 4 or 7 pieces, series of 300): a
    partition's first row is joined to the last row of the partition before."""
    ref_doc, data, _ = load(GAM, "ar1_start")
    ref = gam(FORMULA, data, rho=0.6, ar_start=ar_start, mode="in-process")
    for parts in (4, 7):
        got = gam(FORMULA, data, rho=0.6, ar_start=ar_start, client=client,
                  npartitions=parts)
        assert got.mode == "distributed"
        assert_same(ref, got)
    if ar_start:
        assert ref.score == pytest.approx(ref_doc["score"], rel=1e-6)


def test_rho_changes_the_fit_and_zero_is_the_independent_fit():
    _, data, _ = load(GAM, "ar1_start")
    plain = gam(FORMULA, data)
    ar = gam(FORMULA, data, rho=0.6, ar_start="start")
    assert abs(ar.score - plain.score) > 1
    assert gam(FORMULA, data, rho=0.0).score == pytest.approx(plain.score, rel=1e-12)


@pytest.mark.parametrize("kw, words", [
    ({"rho": 1.0}, ["rho=1.0", "between -1 and 1"]),
    ({"rho": 0.5, "family": "poisson"}, ["gaussian", "poisson"]),
    ({"ar_start": "start"}, ["rho is 0"]),
    ({"rho": 0.5, "ar_start": "x0"}, ["'x0'", "logical"]),
    ({"rho": 0.5, "ar_start": "nothere"}, ["'nothere'"]),
])
def test_bad_ar1_input_is_one_line(kw, words):
    _, data, _ = load(GAM, "ar1_start")
    data = data.assign(y=np.round(np.abs(data["y"]))) if kw.get("family") else data
    with pytest.raises(DaskmmError) as e:
        gam(FORMULA, data, **kw)
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value), str(e.value)
