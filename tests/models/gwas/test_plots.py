"""The GWAS plots as users of qqman and PLINK-era tools expect them
(daskmm/models/gwas/output.py): rendered, their elements checked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from daskmm.models.gwas.output import lambda_gc, manhattan_figure, qq_figure  # noqa: E402
from tests.artifacts import save_plot  # noqa: E402


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(2)
    rows = []
    for tr in ("height", "bmi"):
        for c, n in (("1", 400), ("2", 300), ("X", 100)):
            p = rng.uniform(size=n)
            p[:2] = [1e-9, 3e-6]  # one hit over each line
            rows.append(pd.DataFrame({"trait": tr, "chrom": c, "pos": np.sort(
                rng.integers(1, 10 ** 6, n)), "p_value": p}))
    return pd.concat(rows, ignore_index=True)


def test_manhattan_has_chromosome_labels_and_both_lines(results):
    fig = manhattan_figure(results, ["1", "2", "X"])
    assert len(fig.axes) == 2
    for ax, tr in zip(fig.axes, ("height", "bmi")):
        assert ax.get_title() == tr
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "X"]
        ys = sorted(round(ln.get_ydata()[0], 3) for ln in ax.get_lines())
        assert ys == [5.0, round(-np.log10(5e-8), 3)]  # suggestive and genome-wide
        assert ax.get_ylim()[1] >= 9.0  # the hit at 1e-9 is inside
        assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 9
    save_plot(fig, "gwas_manhattan.png")
    plt.close(fig)


def test_qq_has_the_diagonal_a_95_percent_band_and_lambda(results):
    fig = qq_figure(results)
    ax = fig.axes[0]
    p = results.loc[results["trait"] == "height", "p_value"].to_numpy()
    assert ax.get_title() == f"height: lambda_gc = {lambda_gc(p):.3f}"
    band = [c for c in ax.collections if type(c).__name__ in ("PolyCollection",
                                                                "FillBetweenPolyCollection")]
    assert len(band) == 1
    # the band at the largest expected value: Beta(1, n)'s 2.5% and 97.5% points
    verts = band[0].get_paths()[0].vertices
    n = len(p)
    top = -np.log10(stats.beta.ppf([0.975, 0.025], 1, n))
    xmax = -np.log10(0.5 / n)
    at = verts[np.isclose(verts[:, 0], xmax)][:, 1]
    assert np.allclose(np.unique(np.round(at, 12)), np.sort(top))
    save_plot(fig, "gwas_qq.png")
    plt.close(fig)
