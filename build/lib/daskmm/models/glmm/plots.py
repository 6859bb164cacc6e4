"""Diagnostic plots of a fitted GLMM, written as PNG (matplotlib's Agg backend):

- ``dharma``: DHARMa's ``plot(simulateResiduals(fit))``: a uniform QQ plot of the scaled
  residuals with the KS, dispersion and zero-inflation tests' p-values, and the residuals
  against the rank of the fitted population mean with their 0.25, 0.5 and 0.75 quantile
  lines (DHARMa draws quantile regressions; here running quantiles over 20 bins).

The scaled residuals are the fit's last :meth:`~daskmm.models.glmm.result.GlmmResult.
simulate_residuals` (computed with DHARMa's defaults when there are none). Up to
:data:`MAX_POINTS` are drawn (an evenly spaced sample beyond that, said in the title).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from daskmm.errors import ModelError
from daskmm.models.lmm.plots import pyplot, save_figure

KINDS = ("dharma",)
MAX_POINTS = 100_000


def plot(result, kind: str, out: str | Path) -> list[Path]:
    """Write the plots of ``kind`` under folder ``out``; returns the files written."""
    if kind not in KINDS:
        raise ModelError(f"kind={kind!r}; allowed for a GLMM: {', '.join(KINDS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [_dharma(result, out)]


def _dharma(result, out: Path) -> Path:
    d = result.dharma if result.dharma is not None else result.simulate_residuals()
    r = d.residuals.to_numpy()
    fitted = result.predict(None, kind="response", re=False).compute().to_numpy()
    keep = np.isfinite(r)
    r, fitted = r[keep], fitted[keep]
    n = len(r)
    title = ""
    if n > MAX_POINTS:
        idx = np.linspace(0, n - 1, MAX_POINTS).astype(int)
        title = f" ({MAX_POINTS} of {n} rows)"
    else:
        idx = np.arange(n)
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.5))
    u = np.sort(r[idx])
    a1.plot((np.arange(1, len(u) + 1) - 0.5) / len(u), u, ".", ms=2, color="0.3")
    a1.plot([0, 1], [0, 1], color="red", lw=1)
    s = d.summary()
    a1.set_title(f"QQ plot of scaled residuals{title}")
    a1.set_xlabel("expected (uniform)")
    a1.set_ylabel("observed")
    a1.text(0.03, 0.97, f"KS p = {s['uniformity']['p_value']:.3g}\n"
            f"dispersion p = {s['dispersion']['p_value']:.3g}\n"
            f"zero-inflation p = {s['zero_inflation']['p_value']:.3g}",
            transform=a1.transAxes, va="top", fontsize=8)
    rank = (np.argsort(np.argsort(fitted, kind="stable"), kind="stable") + 0.5) / n
    a2.plot(rank[idx], r[idx], ".", ms=2, color="0.3")
    bins = np.minimum((rank * 20).astype(int), 19)
    centres = (np.arange(20) + 0.5) / 20
    for q, colour in ((0.25, "tab:blue"), (0.5, "red"), (0.75, "tab:blue")):
        a2.axhline(q, color="0.7", lw=0.8, ls="--")
        line = [np.quantile(r[bins == b], q) if np.any(bins == b) else np.nan
                for b in range(20)]
        a2.plot(centres, line, color=colour, lw=1.2)
    a2.set_xlabel("fitted mean (rank transformed, population level)")
    a2.set_ylabel("scaled residual")
    a2.set_title("Residuals against predicted")
    a2.set_ylim(0, 1)
    return save_figure(fig, out / "dharma.png")
