"""GAM smooth plots as mgcv's ``plot.gam`` draws them (daskmm/models/gam/plots.py): rendered,
and their elements checked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from daskmm.models.gam.model import gam  # noqa: E402
from daskmm.models.gam.plots import edf_label, smooth_figure  # noqa: E402
from tests.models.gam.helpers import GAM, load  # noqa: E402


@pytest.fixture(scope="module")
def fit():
    _, data, _ = load(GAM, "tp_default")
    return gam("y ~ s(x0) + s(x1, x2, k = 20) + s(x3, bs = 'ps')", data, mode="in-process"), data


def test_edf_goes_into_the_label_as_sub_edf_writes_it():
    assert edf_label("s(x2)", 8.6149) == "s(x2,8.61)"
    assert edf_label("te(x0,x1)", 1.0) == "te(x0,x1,1)"
    assert edf_label("s(x2):fac1", 3.104) == "s(x2,3.1):fac1"


@pytest.mark.parametrize("with_data", [False, True])
def test_one_d_smooths_draw_the_fit_two_se_lines_and_the_edf(fit, with_data):
    """A default thin-plate s(x0) and a P-spline, with the data (rug) and without (the range
    from the basis's knots: the thin-plate margin once raised TypeError)."""
    res, data = fit
    edf = {r["label"]: r["edf"] for r in res.smooth_table}
    for i, var in ((0, "x0"), (2, "x3")):
        fig = smooth_figure(res, i, data if with_data else None)
        ax = fig.axes[0]
        label = res.spec.smooths[i].label
        assert ax.get_ylabel() == edf_label(label, edf[label]) and ax.get_xlabel() == var
        lines = ax.get_lines()
        styles = [ln.get_linestyle() for ln in lines]
        assert styles[:3] == ["-", "--", "--"]  # the fit and +-2 SE
        fit_y, hi, lo = (ln.get_ydata() for ln in lines[:3])
        assert np.all(lo < fit_y) and np.all(fit_y < hi)
        x = lines[0].get_xdata()
        assert x.min() == pytest.approx(data[var].min(), abs=0.02)
        assert x.max() == pytest.approx(data[var].max(), abs=0.02)
        assert (len(lines) == 4) == with_data  # the rug
        plt.close(fig)


def test_two_d_smooths_draw_fit_and_se_contours(fit):
    res, data = fit
    fig = smooth_figure(res, 1, data)
    ax = fig.axes[0]
    edf = {r["label"]: r["edf"] for r in res.smooth_table}
    assert ax.get_title() == edf_label("s(x1,x2)", edf["s(x1,x2)"])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x1", "x2")
    # three sets of contours (the fit, -1 se, +1 se) at the same levels, as plot.gam
    sets = [c for c in ax.collections if hasattr(c, "levels")]
    assert len(sets) == 3 and all(np.array_equal(c.levels, sets[0].levels) for c in sets)
    assert {t.get_text() for t in ax.texts} >= {"-1 se", "+1 se"}
    plt.close(fig)
