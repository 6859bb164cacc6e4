"""The LMM's caterpillar plot as lme4's ``dotplot(ranef(fit, condVar = TRUE))`` draws it
(daskmm/models/lmm/plots.py): rendered, and its elements checked. One PNG of each figure goes
to test-artifacts/plots/ for a look."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import daskmm  # noqa: E402
from daskmm.models.lmm.plots import LABELLED_LEVELS, caterpillar_figure  # noqa: E402
from tests.artifacts import save_plot  # noqa: E402
from tests.models.lmm.inference.refs import frame, load  # noqa: E402


@pytest.fixture(scope="module")
def sleep():
    ref = load("sleepstudy")
    return daskmm.lmm(ref["formula"], frame(ref), mode="in-process")


def _panel(ax):
    """``(points, bars, reference line)`` of one caterpillar panel."""
    (points, ref) = ax.get_lines()
    (bars,) = ax.collections
    return points, bars, ref


def test_caterpillar_has_a_panel_per_term_levels_sorted_with_1_96_sd_bars(sleep):
    ranef = sleep.ranef_frame()
    fig = caterpillar_figure(ranef, "Subject")
    save_plot(fig, "lmm_caterpillar_sleepstudy.png")
    assert fig._suptitle.get_text() == "Subject"
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["(Intercept)", "Days"]
    first = ranef[ranef["term"] == "(Intercept)"].set_index("level")
    order = first["estimate"].sort_values(kind="stable").index
    names = [t.get_text() for t in axes[0].get_yticklabels()]
    assert names == [str(v) for v in order]  # every level named, upwards by the mode
    for ax in axes:
        points, bars, ref = _panel(ax)
        tab = ranef[ranef["term"] == ax.get_title()].set_index("level").loc[order]
        x, y = points.get_data()
        assert len(x) == 18 and np.array_equal(y, np.arange(18))
        np.testing.assert_allclose(x, tab["estimate"], rtol=1e-12)
        segs = np.array(bars.get_segments())  # one horizontal bar per level
        assert segs.shape == (18, 2, 2) and np.all(segs[:, 0, 1] == segs[:, 1, 1])
        np.testing.assert_allclose((segs[:, 1, 0] - segs[:, 0, 0]) / 2,
                                   1.959963984540054 * tab["std_error"], rtol=1e-9)
        assert np.all(np.asarray(ref.get_xdata()) == 0) and ref.get_linestyle() == "--"
    plt.close(fig)


def test_caterpillar_of_one_term_sorts_by_that_terms_modes(sleep):
    ranef = sleep.ranef_frame()
    fig = caterpillar_figure(ranef, "Subject", ["Days"])
    (ax,) = [a for a in fig.axes if a.get_title()]
    x, _ = _panel(ax)[0].get_data()
    assert ax.get_title() == "Days" and np.all(np.diff(x) >= 0)
    plt.close(fig)


def test_caterpillar_of_many_levels_leaves_the_names_out():
    rng = np.random.default_rng(5)
    m = 150
    g = np.repeat(np.arange(m), 6)
    df = pd.DataFrame({"g": g.astype(str), "x": rng.normal(size=len(g))})
    df["y"] = 1 + 0.5 * df.x + rng.normal(0, 1, m)[g] + rng.normal(0, 1, len(g))
    fit = daskmm.lmm("y ~ x + (1 | g)", df, mode="in-process")
    fig = caterpillar_figure(fit.ranef_frame(), "g")
    save_plot(fig, "lmm_caterpillar_many_levels.png")
    (ax,) = [a for a in fig.axes if a.get_title()]
    points, bars, _ = _panel(ax)
    assert len(points.get_xdata()) == m > LABELLED_LEVELS and len(bars.get_segments()) == m
    assert np.all(np.diff(points.get_xdata()) >= 0)
    assert len(ax.get_yticks()) == 0 and "150 levels" in ax.get_ylabel()
    assert points.get_markersize() < 2
    plt.close(fig)


def test_plot_writes_a_caterpillar_per_factor_and_term(sleep, tmp_path):
    files = sleep.plot("caterpillar", tmp_path)
    assert sorted(p.name for p in files) == ["caterpillar_Subject_Days.png",
                                             "caterpillar_Subject_Intercept.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in files)
