"""GAM smooth plots as mgcv's ``plot.gam`` draws them (daskmm/models/gam/plots.py): rendered,
and their elements checked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")


import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from daskmm.errors import ModelError  # noqa: E402
from daskmm.models.gam import plots  # noqa: E402
from daskmm.models.gam.model import gam  # noqa: E402
from daskmm.models.gam.plots import edf_label, plot_smooths, smooth_figure  # noqa: E402
from tests.artifacts import save_plot  # noqa: E402
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
        if with_data:
            save_plot(fig, f"gam_smooth_{var}.png")
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
    save_plot(fig, "gam_smooth_2d_contours.png")
    plt.close(fig)


def _partial(ax):
    """The partial-residual points of a 1-d panel."""
    (pts,) = [ln for ln in ax.get_lines() if ln.get_label() == "partial residuals"]
    return pts


def test_partial_residuals_are_the_residuals_plus_the_smooth_at_each_row(fit):
    """Gaussian identity: ``y - fitted + f_0(x0)`` at every row, drawn as small points
    between the two standard-error lines and the rug, inside the y range."""
    res, data = fit
    fig = smooth_figure(res, 0, data, residuals=True)
    save_plot(fig, "gam_partial_residuals.png")
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [ln.get_linestyle() for ln in lines[:3]] == ["-", "--", "--"]
    pts = _partial(ax)
    assert lines[3] is pts and len(lines) == 5 and lines[4].get_marker() == "|"
    assert pts.get_marker() == "." and pts.get_markersize() <= 2
    terms = res.predict(data, type="terms")[res.spec.smooths[0].label].to_numpy()
    want = data["y"].to_numpy() - res.fitted(data)["fitted"].to_numpy() + terms
    np.testing.assert_allclose(pts.get_xdata(), data["x0"])
    np.testing.assert_allclose(pts.get_ydata(), want, rtol=1e-9, atol=1e-9)
    lo, hi = ax.get_ylim()
    assert lo <= want.min() and want.max() <= hi
    plt.close(fig)


def test_partial_residuals_of_a_poisson_gam_are_on_the_link_scale():
    """Log link: the working residual ``(y - mu) d eta / d mu = (y - mu) / mu``."""
    rng = np.random.default_rng(1)
    n = 400
    df = pd.DataFrame({"x": rng.uniform(0, 1, n), "z": rng.uniform(0, 1, n)})
    df["y"] = rng.poisson(np.exp(1 + np.sin(2 * np.pi * df.x) + 0.3 * df.z))
    res = gam("y ~ s(x, bs = 'cr') + s(z, bs = 'cr')", df, family="poisson",
              mode="in-process")
    fig = smooth_figure(res, 0, df, residuals=True)
    save_plot(fig, "gam_partial_residuals_poisson.png")
    pts = _partial(fig.axes[0])
    mu = res.fitted(df)["fitted"].to_numpy()
    f = res.predict(df, type="terms")["s(x)"].to_numpy()
    np.testing.assert_allclose(pts.get_ydata(), (df["y"] - mu) / mu + f, rtol=1e-9,
                               atol=1e-9)
    plt.close(fig)


def test_plot_smooths_draws_partial_residuals_of_a_sample_of_rows(fit, tmp_path,
                                                                  monkeypatch):
    """Up to RUG_POINTS rows (a seeded sample): here 300 of 2000; the 2-d smooth's map has
    none; without the data the option is refused."""
    res, data = fit
    monkeypatch.setattr(plots, "RUG_POINTS", 300)
    drawn = {}
    figure = plots.smooth_figure

    def spy(result, i, *args):
        fig = figure(result, i, *args)
        pts = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "partial residuals"]
        drawn[i] = len(pts[0].get_xdata()) if pts else 0
        return fig

    monkeypatch.setattr(plots, "smooth_figure", spy)
    paths = plot_smooths(res, tmp_path, data, residuals=True)
    assert len(paths) == 3 and all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    assert drawn == {0: 300, 1: 0, 2: 300}
    with pytest.raises(ModelError, match="need the data"):
        plot_smooths(res, tmp_path, None, residuals=True)

