"""The GLMM's plots (daskmm/models/glmm/plots.py): the caterpillar plot of lme4's
``dotplot(ranef(fit, condVar = TRUE))`` and DHARMa's residual-against-predicted panel with
its quantile-regression curves, rendered and their elements checked. One PNG of each figure
goes to test-artifacts/plots/ for a look."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

import daskmm  # noqa: E402
from daskmm.models.glmm.plots import QUANTILES, dharma_figure, plot, quantile_curves  # noqa: E402
from daskmm.models.lmm.plots import caterpillar_figure  # noqa: E402
from tests.artifacts import save_plot  # noqa: E402
from tests.models.glmm.helpers import fit_fixture, load_local, simulate  # noqa: E402

RED = to_rgba("red")



def _residual_panel(fig):
    """``(axes, quantile curves, dashed reference lines)`` of DHARMa's right panel."""
    ax = fig.axes[1]
    lines = ax.get_lines()
    curves = [ln for ln in lines if ln.get_linestyle() == "-"]
    refs = [ln for ln in lines if ln.get_linestyle() == "--"]
    return ax, curves, refs


def test_caterpillar_of_a_glmm_matches_glmers_conditional_sds(tmp_path):
    fx = load_local("cbpp_laplace_tight")
    fit = fit_fixture(fx)
    fig = caterpillar_figure(fit.ranef_frame(), "herd")
    save_plot(fig, "glmm_caterpillar_cbpp.png")
    assert fig._suptitle.get_text() == "herd"
    (ax,) = [a for a in fig.axes if a.get_title()]
    assert ax.get_title() == "(Intercept)"
    points, ref = ax.get_lines()
    (bars,) = ax.collections
    want = pd.read_csv(fx["ranef_path"], dtype={"level": str}).sort_values(
        "condval", kind="stable")
    assert [t.get_text() for t in ax.get_yticklabels()] == want["level"].tolist()
    np.testing.assert_allclose(points.get_xdata(), want["condval"], rtol=1e-3, atol=1e-4)
    segs = np.array(bars.get_segments())
    np.testing.assert_allclose((segs[:, 1, 0] - segs[:, 0, 0]) / 2,
                               1.959963984540054 * want["condsd"], rtol=1e-3)
    assert np.all(np.asarray(ref.get_xdata()) == 0)
    plt.close(fig)
    files = plot(fit, "caterpillar", tmp_path)
    assert [p.name for p in files] == ["caterpillar_herd_Intercept.png"]


def test_quantile_curves_of_uniform_residuals_stay_at_their_quantiles():
    rng = np.random.default_rng(2)
    x, r = rng.uniform(size=2000), rng.uniform(size=2000)
    curves = quantile_curves(x, r)
    assert [c.tau for c in curves] == list(QUANTILES)
    for c in curves:
        mid = (c.x > 0.1) & (c.x < 0.9)
        assert np.max(np.abs(c.y[mid] - c.tau)) < 0.1
        assert not c.significant and c.df == 5 and np.all(c.se > 0)
        assert np.all(np.abs(np.diff(c.y, 2)) < 1e-3)  # smooth: no jumps between bins


def test_quantile_curves_follow_a_trend_and_flag_it():
    rng = np.random.default_rng(3)
    x = rng.uniform(size=1000)
    r = rng.beta(1 + 2 * x, 3 - 2 * x)  # the median rises from about 0.2 to 0.8
    curves = quantile_curves(x, r)
    assert all(c.significant and c.p_adjusted < 1e-6 for c in curves)
    med = curves[1]
    assert med.y[0] < 0.35 and med.y[-1] > 0.65


def test_dharma_panel_of_a_model_simulated_from_its_fit_is_calm():
    """Data simulated from a fitted Poisson GLMM, refitted: the three curves stay within 0.1
    of 0.25, 0.5 and 0.75 over the middle 80% of the ranks, in black."""
    df = simulate(12, "poisson", n=2000, m=40)
    df["g"] = df["g"].astype(str)
    first = daskmm.glmm("y ~ x + (1 | g)", df, "poisson", mode="in-process")
    df["y"] = first.simulate(1, seed=8).compute()["sim_1"].to_numpy()
    fit = daskmm.glmm("y ~ x + (1 | g)", df, "poisson", mode="in-process")
    fit.simulate_residuals(250, seed=1)
    fig = dharma_figure(fit)
    save_plot(fig, "glmm_dharma_correct_model.png")
    ax, curves, refs = _residual_panel(fig)
    assert sorted(ln.get_ydata()[0] for ln in refs) == list(QUANTILES)
    assert len(curves) == 3 and len(ax.collections) == 3  # each with its band
    for ln, tau in zip(curves, QUANTILES):
        x, y = ln.get_data()
        assert len(x) == 200 and to_rgba(ln.get_color()) == to_rgba("black")
        mid = (x > x.min() + 0.1 * np.ptp(x)) & (x < x.max() - 0.1 * np.ptp(x))
        assert np.max(np.abs(y[mid] - tau)) < 0.1
    assert ax.get_title().endswith("No significant problems detected")
    assert (ax.get_xlim(), ax.get_ylim()) == ((0, 1), (0, 1))
    assert len(ax.get_lines()[0].get_xdata()) == 2000  # the residuals
    plt.close(fig)


def test_dharma_panel_of_a_misspecified_model_turns_red():
    """The log mean is quadratic in x, the model linear: the residuals against the
    predictions bend, and the curves and the title say so."""
    rng = np.random.default_rng(4)
    n, m = 1500, 30
    g = rng.integers(0, m, n)
    x = rng.uniform(-2, 2, n)
    df = pd.DataFrame({"x": x, "g": g.astype(str),
                       "y": rng.poisson(np.exp(0.5 + 0.2 * x + 0.6 * x ** 2
                                               + rng.normal(0, 0.3, m)[g]))})
    fit = daskmm.glmm("y ~ x + (1 | g)", df, "poisson", mode="in-process")
    fit.simulate_residuals(250, seed=2)
    fig = dharma_figure(fit)
    save_plot(fig, "glmm_dharma_misspecified.png")
    ax, curves, _ = _residual_panel(fig)
    assert any(to_rgba(ln.get_color()) == RED for ln in curves)
    assert "Quantile deviations detected (red curves)" in ax.get_title()
    assert to_rgba(ax.title.get_color()) == RED
    plt.close(fig)


def test_quantile_curves_need_ten_points():
    assert quantile_curves(np.arange(5), np.linspace(0.1, 0.9, 5)) == []
