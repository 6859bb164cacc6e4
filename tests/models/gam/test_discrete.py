"""``discrete=True``: smooths on a covariate grid, cross-products from cell tables.

The compressed products are exact for the discretised model (equal to the products of its
written-out columns); the discretised fit is an approximation of the exact one, checked at
the bounds stated here on bam's fixture data; and it is the same on 1 or several
partitions."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.errors import ModelError
from daskmm.kernels import gam_stats
from daskmm.models.gam.model import gam
from tests.models.gam.helpers import GAM, load
from tests.models.gam.test_invariance import assert_same


@pytest.mark.parametrize("fid", ["cr_four", "te_cr", "by_factor"])
def test_cell_tables_give_the_products_of_the_discretised_columns(fid):
    ref, data, _ = load(GAM, fid)
    spec = gam(ref["formula"], data, factors=ref["factors"], discrete=True).spec
    assert spec.discrete
    y, X, w, _ = spec.design(data)
    dense = gam_stats.cross_products(X, y, w)
    yy, Xd, ww, _, pos, terms = spec.discrete_parts(data)
    tab = gam_stats.discrete_cross_products(Xd, pos, terms, yy, ww, spec.p_dense)
    for k in ("A", "b", "xs"):
        np.testing.assert_allclose(tab[k], dense[k], rtol=1e-10, atol=1e-9 * np.abs(
            dense[k]).max())
    assert tab["c"] == pytest.approx(dense["c"], rel=1e-12)


def test_discrete_fit_is_close_to_the_exact_one():
    """1-D smooths on 1000-value grids: fitted values within 0.5% of the response SD, the
    fREML score within 1e-4 relative, each smooth's edf within 0.02 (cr_four: 0.16%, 3e-5
    and 0.006 on this data)."""
    ref, data, _ = load(GAM, "cr_four")
    exact = gam(ref["formula"], data)
    disc = gam(ref["formula"], data, discrete=True)
    assert disc.optinfo["discrete"]["smooths"] == ["s(x0)", "s(x1)", "s(x2)", "s(x3)"]
    assert exact.optinfo["discrete"] is None
    sd = data["y"].std()
    diff = np.abs(disc.fitted(data)["fitted"] - exact.fitted(data)["fitted"]).max()
    assert diff < 5e-3 * sd
    assert disc.score == pytest.approx(exact.score, rel=1e-4)
    for a, b in zip(disc.smooth_table, exact.smooth_table):
        assert abs(a["edf"] - b["edf"]) < 0.02


def test_discrete_fit_does_not_depend_on_partitions(client):
    ref, data, _ = load(GAM, "te_cr")
    one = gam(ref["formula"], data, discrete=True, mode="in-process")
    for parts in (1, 6):
        assert_same(one, gam(ref["formula"], data, discrete=True, client=client,
                             npartitions=parts))


def test_bad_grid_is_one_line():
    ref, data, _ = load(GAM, "cr_four")
    with pytest.raises(ModelError, match="discrete=2"):
        gam(ref["formula"], data, discrete=2)
