"""Diagnostic plots of a fitted LMM, written as PNG (matplotlib's Agg backend, no display):

- ``caterpillar``: per grouping factor and term, the conditional modes sorted, with intervals
  of ``qnorm(0.975)`` conditional standard deviations (lattice's ``dotplot(ranef(fit,
  condVar = TRUE))``; :func:`caterpillar_figure`, shared with the GLMM's plots);
- ``residuals``: scaled Pearson residuals against fitted values (``plot(fit)``);
- ``qq``: normal QQ plot of the scaled residuals (``qqnorm(resid(fit, scaled = TRUE))``);
- ``ranef_qq``: normal QQ plot of each random effect's conditional modes;
- ``zeta``: the profile's ``zeta`` against each parameter, with the interval's cutoffs (lme4's
  ``xyplot(profile(fit))``; needs ``fit.confint("profile")`` first).

Residual plots read the fitted rows (up to :data:`MAX_POINTS`, an evenly spaced sample beyond
that, said in the title).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from daskmm.errors import ModelError

KINDS = ("caterpillar", "residuals", "qq", "ranef_qq", "zeta")
MAX_POINTS = 100_000
MAX_LEVELS = 2000
LABELLED_LEVELS = 60
"""Caterpillar panels name their levels on the y axis up to this many levels; beyond it the
points shrink and the tick labels are left out (the sorted shape is what is read)."""


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` and close it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot(result, kind: str, out: str | Path) -> list[Path]:
    """Write the plots of ``kind`` under folder ``out``; returns the files written."""
    if kind not in KINDS:
        raise ModelError(f"kind={kind!r}; allowed: {', '.join(KINDS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {"caterpillar": write_caterpillars, "residuals": _residuals, "qq": _qq,
            "ranef_qq": _ranef_qq, "zeta": _zeta}[kind](result, out)


def _columns(result):
    """``(factor, term column, modes, conditional sds)`` for every random-effect column."""
    out = []
    for name, ids in result.factor_terms.items():
        tab = result.ranef.get(name)
        if tab is None:
            continue
        cols = [c for ti in ids for c in result.terms[ti].columns]
        sd = np.sqrt(np.maximum(np.diagonal(tab.cov, axis1=1, axis2=2), 0))
        for j, c in enumerate(cols):
            out.append((name, c, np.asarray(tab.levels), tab.b[:, j], sd[:, j]))
    return out


def caterpillar_figure(ranef: pd.DataFrame, group: str, terms: Sequence[str] | None = None,
                       level: float = 0.95):
    """lme4's ``dotplot(ranef(fit, condVar = TRUE))[[group]]``: one panel per term of the
    grouping factor ``group``, a point per level at its conditional mode with a horizontal
    bar of ``qnorm((1 + level) / 2)`` conditional standard deviations (1.96 at 95%) and a
    vertical reference line at 0; the panel's title is the term, the figure's the factor.

    Parameters
    ----------
    ranef : pandas.DataFrame
        The result's :meth:`~daskmm.results.base.MixedResult.ranef_frame` (columns ``group,
        level, term, estimate, std_error``).
    group : str
        The grouping factor.
    terms : sequence of str, optional
        The terms to draw, one panel each (all of the factor's by default).
    level : float
        The intervals' coverage.

    Returns
    -------
    matplotlib.figure.Figure
        Levels on the y axis sorted by the first panel's conditional modes, in the same order
        in every panel (as lme4 orders them), increasing upwards. Up to
        :data:`LABELLED_LEVELS` levels are named on the y axis; with more the points are
        smaller and the tick labels left out. Beyond :data:`MAX_LEVELS` levels an evenly
        spaced sample of the sorted levels is drawn, said in the figure's title.
    """
    from scipy import stats
    plt = pyplot()
    rows = ranef[ranef["group"] == group]
    if terms is None:
        terms = list(pd.unique(rows["term"]))
    if rows.empty or not len(terms):
        raise ModelError(f"no conditional modes of grouping factor {group!r} to plot")
    z = stats.norm.ppf((1 + level) / 2)
    wide = {t: rows[rows["term"] == t].set_index("level") for t in terms}
    first = wide[terms[0]]
    order = np.argsort(first["estimate"].to_numpy(), kind="stable")
    note = ""
    if len(order) > MAX_LEVELS:  # an even sample of the sorted levels keeps the shape
        order = order[np.linspace(0, len(order) - 1, MAX_LEVELS).astype(int)]
        note = f" ({MAX_LEVELS} of {len(first)} levels)"
    levels = first.index[order]
    n = len(levels)
    labelled = n <= LABELLED_LEVELS
    height = max(3.0, 0.2 * n + 1.2) if labelled else 7.0
    fig, axes = plt.subplots(1, len(terms), sharey=True, squeeze=False,
                             figsize=(1.2 + 3.2 * len(terms), height))
    y = np.arange(n)
    for ax, term in zip(axes[0], terms):
        tab = wide[term].loc[levels]
        est = tab["estimate"].to_numpy(dtype=float)
        half = z * tab["std_error"].to_numpy(dtype=float)
        ax.hlines(y, est - half, est + half, color="tab:blue", lw=1.0 if labelled else 0.5)
        ax.plot(est, y, "o", color="tab:blue", ms=4 if labelled else 1.5, ls="none")
        ax.axvline(0, color="0.4", lw=0.8, ls="--")
        ax.set_title(term)
        ax.set_ylim(-0.7, n - 0.3)
        if labelled:
            ax.grid(axis="y", color="0.9", lw=0.6)  # lattice's dot lines
    if labelled:
        axes[0, 0].set_yticks(y, [str(v) for v in levels], fontsize=7)
    else:
        axes[0, 0].set_yticks([])
        axes[0, 0].set_ylabel(f"{n} levels, sorted (names above {LABELLED_LEVELS} left out)")
    fig.suptitle(f"{group}{note}")
    fig.supxlabel(f"conditional mode, {level:.0%} interval ({z:.2f} conditional SD)",
                  fontsize=9)
    fig.tight_layout()
    return fig


def write_caterpillars(result, out: Path) -> list[Path]:
    """Write ``caterpillar_<factor>_<term>.png`` under folder ``out`` for every grouping
    factor and term of a fitted LMM or GLMM (:func:`caterpillar_figure` of one term, so each
    file's levels are sorted by that term's own conditional modes); returns the paths."""
    ranef = result.ranef_frame()
    files = []
    for name in pd.unique(ranef["group"]):
        for col in pd.unique(ranef.loc[ranef["group"] == name, "term"]):
            fig = caterpillar_figure(ranef, name, [col])
            files.append(save_figure(fig, out / f"caterpillar_{_safe(name)}_{_safe(col)}.png"))
    return files


def _rows(result):
    res = result.residuals("pearson", scaled=True)
    fit = result.fitted()
    import dask
    r, f = dask.compute(res, fit)
    r, f = r.to_numpy(), f.to_numpy()
    ok = np.isfinite(r) & np.isfinite(f)
    r, f = r[ok], f[ok]
    note = ""
    if len(r) > MAX_POINTS:
        idx = np.linspace(0, len(r) - 1, MAX_POINTS).astype(int)
        note = f" ({MAX_POINTS} of {len(r)} rows)"
        r, f = r[idx], f[idx]
    return r, f, note


def _residuals(result, out: Path) -> list[Path]:
    plt = pyplot()
    r, f, note = _rows(result)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(f, r, s=6, alpha=0.5)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("Fitted values")
    ax.set_ylabel("Scaled Pearson residuals")
    ax.set_title(f"Residuals vs fitted{note}")
    return [save_figure(fig, out / "residuals_fitted.png")]


def _qq_axes(ax, v: np.ndarray, title: str) -> None:
    from scipy import stats
    v = np.sort(v)
    n = len(v)
    p = (np.arange(1, n + 1) - (0.375 if n <= 10 else 0.5)) / (n + (0.25 if n <= 10 else 0))
    q = stats.norm.ppf(p)  # R's ppoints
    ax.scatter(q, v, s=6)
    q1, q3 = np.quantile(v, [0.25, 0.75])
    z1, z3 = stats.norm.ppf([0.25, 0.75])
    slope = (q3 - q1) / (z3 - z1)
    ax.plot(q, q1 + slope * (q - z1), color="grey", lw=0.8)  # qqline
    ax.set_xlabel("Theoretical quantiles")
    ax.set_ylabel("Sample quantiles")
    ax.set_title(title)


def _qq(result, out: Path) -> list[Path]:
    plt = pyplot()
    r, _, note = _rows(result)
    fig, ax = plt.subplots(figsize=(5, 5))
    _qq_axes(ax, r, f"Normal QQ, scaled residuals{note}")
    return [save_figure(fig, out / "qq_residuals.png")]


def _ranef_qq(result, out: Path) -> list[Path]:
    plt = pyplot()
    files = []
    for name, col, _, b, _ in _columns(result):
        fig, ax = plt.subplots(figsize=(5, 5))
        _qq_axes(ax, b, f"Normal QQ, {col} | {name}")
        files.append(save_figure(fig, out / f"qq_ranef_{_safe(name)}_{_safe(col)}.png"))
    return files


def _zeta(result, out: Path) -> list[Path]:
    if not result.profiles:
        raise ModelError("no profile to plot: run fit.confint('profile') first (or fit with "
                         "ci='profile')")
    plt = pyplot()
    from scipy import stats
    k = len(result.profiles)
    cols = min(k, 3)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    level = next((r["level"] for r in result.ci if r["method"] == "profile"), 0.95)
    z = stats.norm.ppf((1 + level) / 2)
    for ax, tr in zip(axes.ravel(), result.profiles):
        ax.plot(tr.x, tr.zeta, "-o", ms=2.5, lw=1)
        for v in (-z, z):
            ax.axhline(v, color="grey", lw=0.6, ls="--")
        for v in (tr.lower, tr.upper):
            if np.isfinite(v):
                ax.axvline(v, color="grey", lw=0.6)
        ax.set_xlabel(tr.parameter)
        ax.set_ylabel("zeta")
    for ax in axes.ravel()[k:]:
        ax.set_visible(False)
    return [save_figure(fig, out / "profile_zeta.png")]
