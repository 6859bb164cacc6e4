"""Plots of a fitted GAM's smooths, as mgcv's ``plot.gam``: one panel per smooth, the
estimate with a band of 2 standard errors and a rug of the data (``te``/``ti`` of two
covariates: a contour map of the fit with its -1 and +1 standard error contours and the data
points; ``re``: a normal QQ plot of the coefficients). The edf is in each label, as
``plot.gam`` writes it (``s(x2,8.61)``). Written as PNG with matplotlib's Agg backend (no
display needed).

With ``residuals=True`` (``plot.gam(fit, residuals = TRUE)``) each 1-d smooth's panel also
shows the partial residuals as small points: the working residual of each row plus the smooth's
own fitted contribution at that row (:func:`partial_residuals`). The rows are those of the
rug: up to :data:`RUG_POINTS` complete rows (a random sample seeded with 1 beyond that; of a
dask frame, sampled from its first ``4 * RUG_POINTS`` rows).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from daskmm.errors import ModelError

RUG_POINTS = 5000
GRID = 100


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


def _curve(result, i: int, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    spec = result.spec
    s, sl = spec.smooths[i], spec.slices()[i]
    X = s.design(frame)
    V = result.Vp[sl, sl]
    return X @ result.coef[sl], np.sqrt(np.einsum("ij,jk,ik->i", X, V, X))


def working_residuals(result, data: pd.DataFrame) -> np.ndarray:
    """The working residuals ``(y - mu) d eta / d mu`` of the complete rows ``data`` (``y -
    mu`` for the identity link), from the fit's linear predictor at each row (offset
    included).

    Parameters
    ----------
    result : GamResult
        The fitted GAM (with its spec).
    data : pandas.DataFrame
        Rows of the data fitted (those missing a value the model uses are left out, as the
        fit left them out).

    Returns
    -------
    numpy.ndarray
        One residual per row of ``data``.
    """
    from daskmm.core.families import LINKS
    from daskmm.models.gam.predict import predict_frame

    spec = result.spec
    data, _ = spec.prepare(data)
    eta = np.asarray(predict_frame(result, data, type="link"), dtype=float)
    y, _, _, _ = spec.design(data, exact=True)
    y = y + spec.offset(data)
    link = LINKS[result.link]
    return (y - link.inverse(eta)) / link.mu_eta(eta)


def partial_residuals(result, i: int, data: pd.DataFrame,
                      working: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """mgcv's partial residuals of 1-d smooth ``i`` (``plot.gam(fit, residuals = TRUE)``):
    each row's working residual plus the smooth's fitted contribution at the row.

    Parameters
    ----------
    result : GamResult
        The fitted GAM.
    i : int
        The smooth (a 1-d smooth of one covariate).
    data : pandas.DataFrame
        Rows of the data fitted (those missing a value the model uses are left out).
    working : numpy.ndarray, optional
        :func:`working_residuals` of ``data``, when already computed.

    Returns
    -------
    (x, partial) : tuple of numpy.ndarray
        The covariate and the partial residual of each row the smooth applies to (of a
        ``by`` factor's smooth, the rows of its level). Unlike mgcv, the working residuals are
        not multiplied by ``sqrt(w) / mean(sqrt(w))`` of the working weights ``w``: the same
        for a Gaussian identity model without prior weights.
    """
    s = result.spec.smooths[i]
    if s.random or len(s.call.variables) != 1:
        raise ModelError(f"partial residuals are drawn for 1-d smooths; {s.label} is not one")
    data, _ = result.spec.prepare(data)
    if working is None:
        working = working_residuals(result, data)
    f, _ = _curve(result, i, data)
    keep = np.ones(len(data), dtype=bool)
    by = s.call.by
    if by is not None and not s.by_numeric:
        from daskmm.models.gam.smooth import factor_codes
        keep = factor_codes(data[by], s.levels[by]) == s.levels[by].index(s.by_level)
    v = s.call.variables[0]
    return data[v].to_numpy(dtype=float)[keep], (working + f)[keep]


def plot_smooths(result, out: str | Path, data: pd.DataFrame | None = None,
                 residuals: bool = False) -> list[Path]:
    """Write ``OUT/<label>.png`` for each smooth; returns the paths.

    Parameters
    ----------
    result : GamResult
        The fitted GAM.
    out : str or Path
        The folder (made when absent).
    data : pandas or dask DataFrame, optional
        The data fitted: for the rugs, the ranges and the partial residuals (up to
        :data:`RUG_POINTS` rows, a seeded random sample beyond that).
    residuals : bool
        Add the partial residuals to each 1-d smooth's panel (``plot.gam(fit, residuals =
        TRUE)``); needs ``data``.

    Returns
    -------
    list of Path
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = result.spec
    if residuals and data is None:
        raise ModelError("partial residuals (residuals=True) need the data fitted")
    if data is not None and not isinstance(data, pd.DataFrame):
        data = data.head(RUG_POINTS * 4, npartitions=-1)
    if data is not None:
        data, _ = spec.prepare(data)
        if len(data) > RUG_POINTS:
            data = data.sample(RUG_POINTS, random_state=1)
    paths = []
    working = working_residuals(result, data) if residuals and len(data) else None
    for i, s in enumerate(spec.smooths):
        fig = smooth_figure(result, i, data, residuals, working)
        path = out / f"{i + 1:02d}_{_safe(s.label)}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def smooth_figure(result, i: int, data: pd.DataFrame | None = None, residuals: bool = False,
                  working: np.ndarray | None = None):
    """The matplotlib figure of smooth ``i``.

    Parameters
    ----------
    result : GamResult
        The fitted GAM.
    i : int
        The smooth.
    data : pandas.DataFrame, optional
        Complete rows, for the rug, the points and the ranges; without it the ranges are the
        basis's knots.
    residuals : bool
        On a 1-d smooth's panel, the partial residuals of the rows of ``data`` as small grey
        points (:func:`partial_residuals`; mgcv's ``residuals = TRUE``), after the fit and its
        two standard-error lines and before the rug; the y range widens to hold them. Needs
        ``data``; ignored on other panels.
    working : numpy.ndarray, optional
        :func:`working_residuals` of ``data``, when already computed.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    spec = result.spec
    s = spec.smooths[i]
    edf = {row["label"]: row["edf"] for row in result.smooth_table}
    c = s.call
    lab = edf_label(s.label, edf[s.label]) if s.label in edf else s.label
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    sl = spec.slices()[i]
    if s.random:
        b = np.sort(result.coef[sl])
        q = stats.norm.ppf((np.arange(1, len(b) + 1) - 0.5) / len(b))
        ax.plot(q, b, "o", ms=3)
        ax.set_xlabel("Gaussian quantiles")
        ax.set_ylabel("effects")
    elif c.kind == "s" and c.bs[0] == "fs":  # one curve per level, as plot.gam
        fs = s.margins[0]
        v = [x for x in c.variables if x != fs.factor][0]
        lo, hi = (float(data[v].min()), float(data[v].max())) if data is not None \
            and len(data) else (float(fs.base.knots.min() + fs.base.shift[0]),
                                 float(fs.base.knots.max() + fs.base.shift[0]))
        xs = np.linspace(lo, hi, GRID)
        for lev in fs.levels:
            grid = pd.DataFrame({v: xs, fs.factor: [lev] * GRID})
            f, _ = _curve(result, i, grid)
            ax.plot(xs, f, "-", lw=1)
        ax.set_xlabel(v)
        ax.set_ylabel(lab)
    elif len(c.variables) == 1:
        v = c.variables[0]
        lo, hi = _range(s, 0, data, v)
        grid = pd.DataFrame({v: np.linspace(lo, hi, GRID)})
        _by(grid, s)
        f, se = _curve(result, i, grid)
        ax.plot(grid[v], f, "k-")
        ax.plot(grid[v], f + 2 * se, "k--", lw=0.8)
        ax.plot(grid[v], f - 2 * se, "k--", lw=0.8)
        if residuals:
            if data is None:
                raise ModelError("partial residuals (residuals=True) need the data fitted")
            px, pr = partial_residuals(result, i, data, working)
            ax.plot(px, pr, ".", ms=2, color="0.55", ls="none", label="partial residuals",
                    zorder=1)  # under the fit, as plot.gam draws them
        if data is not None:
            ax.plot(data[v], np.full(len(data), ax.get_ylim()[0]), "|", color="k",
                    ms=6, alpha=0.5)
        ax.set_xlabel(v)
        ax.set_ylabel(lab)
    else:
        v1, v2 = c.variables[:2]
        a = np.linspace(*_range(s, 0, data, v1), 40)
        b = np.linspace(*_range(s, 1, data, v2), 40)
        A, B = np.meshgrid(a, b)
        grid = pd.DataFrame({v1: A.ravel(), v2: B.ravel()})
        _by(grid, s)
        f, se = _curve(result, i, grid)
        cs = ax.contour(A, B, f.reshape(A.shape), levels=10, colors="k", linewidths=0.8,
                        linestyles="solid")
        ax.clabel(cs, fontsize=7)
        # plot.gam's 2-D panel: the fit -1 and +1 standard error at the same levels
        # (dashed red and dotted green), named in the top margin
        for sign, colour, style in ((-1, "red", "--"), (1, "green", ":")):
            ax.contour(A, B, (f + sign * se).reshape(A.shape), levels=cs.levels,
                       colors=colour, linestyles=style, linewidths=0.7)
        ax.text(0.0, 1.01, "-1 se", color="red", transform=ax.transAxes, fontsize=8,
                va="bottom")
        ax.text(1.0, 1.01, "+1 se", color="green", transform=ax.transAxes, fontsize=8,
                va="bottom", ha="right")
        if data is not None:
            ax.plot(data[v1], data[v2], ".", ms=1, color="0.5")
        ax.set_xlabel(v1)
        ax.set_ylabel(v2)
    if len(c.variables) != 1 or s.random:  # plot.gam's main: 2-D terms and re terms
        ax.set_title(lab)
    fig.tight_layout()
    return fig


def _range(s, j: int, data, v: str) -> tuple[float, float]:
    """The range of covariate ``j`` of smooth ``s``: the data's, else its basis's knots."""
    from daskmm.models.gam.bases import PSpline, ThinPlate

    if data is not None and len(data):
        x = data[v].to_numpy(dtype=float)
        return float(x.min()), float(x.max())
    m = s.margins[j] if len(s.margins) > 1 else s.margins[0]
    if isinstance(m, ThinPlate):  # knots: the unique centred covariate rows (n x d)
        k = np.asarray(m.knots)[:, j if len(s.margins) == 1 else 0] + \
            m.shift[j if len(s.margins) == 1 else 0]
    else:
        k = np.asarray(m.knots)
        if isinstance(m, PSpline):  # the knots extend beyond the data
            deg = m.m[0] + 1
            k = k[deg:len(k) - deg]
    return float(k.min()), float(k.max())


def edf_label(label: str, edf: float) -> str:
    """mgcv's ``sub.edf``: the smooth's label with its edf (rounded to 2 decimals, written as
    R's ``paste`` writes a number) inside the brackets: ``s(x2,8.61)``,
    ``s(x2,3.1):fac1``."""
    e = f"{round(float(edf), 2):.15g}"
    pos = label.find(":")
    if pos < 0:
        return f"{label[:-1]},{e})"
    return f"{label[:pos - 1]},{e}{label[pos - 1:]}"



def _by(grid: pd.DataFrame, s) -> None:
    by = s.call.by
    if by is None:
        return
    grid[by] = 1.0 if s.by_numeric else s.by_level
