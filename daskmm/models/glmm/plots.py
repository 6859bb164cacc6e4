"""Diagnostic plots of a fitted GLMM, written as PNG (matplotlib's Agg backend):

- ``dharma``: DHARMa's ``plot(simulateResiduals(fit))``: a uniform QQ plot of the scaled
  residuals with the KS, dispersion and zero-inflation tests' p-values, and the residuals
  against the rank of the fitted population mean with smooth quantile-regression curves at
  0.25, 0.5 and 0.75 (DHARMa's ``plotResiduals``; :func:`quantile_curves`), red where a curve
  deviates from its quantile;
- ``caterpillar``: per grouping factor and term, the conditional modes sorted with intervals
  of 1.96 conditional standard deviations (lme4's ``dotplot(ranef(fit, condVar = TRUE))``;
  :func:`daskmm.models.lmm.plots.caterpillar_figure`).

The scaled residuals are the fit's last :meth:`~daskmm.models.glmm.result.GlmmResult.
simulate_residuals` (computed with DHARMa's defaults when there are none). Up to
:data:`MAX_POINTS` are drawn (an evenly spaced sample beyond that, said in the title); the
quantile regressions use up to :data:`QR_POINTS` of them (a seeded random sample beyond that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daskmm.errors import ModelError
from daskmm.models.lmm.plots import pyplot, save_figure, write_caterpillars

KINDS = ("dharma", "caterpillar")
MAX_POINTS = 100_000
QR_POINTS = 10_000
QUANTILES = (0.25, 0.5, 0.75)
ALPHA = 0.05
"""A curve is drawn red when its Holm-adjusted p-value is below this (DHARMa's level)."""


def plot(result, kind: str, out: str | Path) -> list[Path]:
    """Write the plots of ``kind`` under folder ``out``; returns the files written."""
    if kind not in KINDS:
        raise ModelError(f"kind={kind!r}; allowed for a GLMM: {', '.join(KINDS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "caterpillar":
        return write_caterpillars(result, out)
    return [_dharma(result, out)]


@dataclass(frozen=True)
class QuantileCurve:
    """One quantile regression of the scaled residuals on the predictions' ranks.

    Attributes
    ----------
    tau : float
        The quantile.
    x, y : numpy.ndarray
        The curve on an even grid over the range of the ranks.
    se : numpy.ndarray
        Its pointwise standard error if the residuals are uniform (the null hypothesis).
    statistic : float
        The Wald statistic of "the curve is ``tau`` everywhere".
    df : int
        Its degrees of freedom (the basis's columns).
    p_value, p_adjusted : float
        The chi-squared p-value, and Holm's adjustment over the quantiles drawn.
    """

    tau: float
    x: np.ndarray
    y: np.ndarray
    se: np.ndarray
    statistic: float
    df: int
    p_value: float
    p_adjusted: float

    @property
    def significant(self) -> bool:
        """Whether the curve deviates from ``tau`` (adjusted p-value below :data:`ALPHA`)."""
        return bool(self.p_adjusted < ALPHA)


def _natural_spline(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """A natural cubic spline basis with the intercept (Hastie, Tibshirani and Friedman's
    truncated-power form): ``len(knots)`` columns, linear beyond the boundary knots."""
    k = len(knots)
    cols = [np.ones_like(x), x]

    def d(j: int) -> np.ndarray:
        return (np.maximum(x - knots[j], 0) ** 3 - np.maximum(x - knots[-1], 0) ** 3) \
            / (knots[-1] - knots[j])

    last = d(k - 2)
    cols += [d(j) - last for j in range(k - 2)]
    return np.column_stack(cols)


def _check_loss_fit(X: np.ndarray, y: np.ndarray, tau: float) -> np.ndarray | None:
    """The ``tau`` quantile regression of ``y`` on ``X`` (minimum of the check loss), by
    the dual linear programme ``max y'a, X'a = (1 - tau) X'1, 0 <= a <= 1`` (Koenker's
    formulation; HiGHS); the coefficients are the equality constraints' multipliers."""
    from scipy.optimize import linprog
    res = linprog(-y, A_eq=X.T, b_eq=(1 - tau) * X.sum(axis=0), bounds=(0, 1),
                  method="highs")
    if res.status != 0:
        return None
    return -np.asarray(res.eqlin.marginals)


def quantile_curves(x: np.ndarray, r: np.ndarray, quantiles: Sequence[float] = QUANTILES,
                    grid: int = 200, seed: int = 0) -> list[QuantileCurve]:
    """Quantile regressions of scaled residuals ``r`` on ``x`` (the predictions' ranks), as
    DHARMa's ``testQuantiles`` (which fits ``qgam(res ~ s(pred))``): here each quantile is a
    linear programme fit of the check loss on a natural cubic spline basis of ``x`` (knots at
    the quantiles of ``x``; 4 degrees of freedom besides the intercept, fewer below 200
    points, a straight line below 100).

    The test of each curve against its quantile is a Wald test under the null hypothesis of
    uniform residuals: the residuals' density at every quantile is then 1, so the
    coefficients' asymptotic covariance is ``tau (1 - tau) (X'X)^-1`` and the statistic
    ``sum_i (curve(x_i) - tau)^2 / (tau (1 - tau))`` is chi-squared with the basis's columns
    as degrees of freedom. The p-values are adjusted over the quantiles by Holm's method (as
    DHARMa adjusts its quantile tests). ``se`` is the curve's pointwise standard error under
    the same null. Up to :data:`QR_POINTS` points are fitted (a sample seeded by ``seed``
    beyond that).

    Parameters
    ----------
    x, r : numpy.ndarray
        The predictions' ranks (any scale) and the scaled residuals (in ``[0, 1]``).
    quantiles : sequence of float
        The quantiles to fit.
    grid : int
        The points of each curve.
    seed : int
        The seed of the sample above :data:`QR_POINTS` points.

    Returns
    -------
    list of QuantileCurve
        One per quantile, in order; empty below 10 points.
    """
    from scipy import stats
    x = np.asarray(x, dtype=float)
    r = np.asarray(r, dtype=float)
    ok = np.isfinite(x) & np.isfinite(r)
    x, r = x[ok], r[ok]
    if len(x) > QR_POINTS:
        pick = np.sort(np.random.default_rng(seed).choice(len(x), QR_POINTS, replace=False))
        x, r = x[pick], r[pick]
    n = len(x)
    if n < 10 or np.ptp(x) <= 0:
        return []
    df = 1 if n < 100 else (2 if n < 200 else 4)
    knots = np.unique(np.quantile(x, np.linspace(0, 1, df + 1)))
    X = _natural_spline(x, knots)
    xs = np.linspace(x.min(), x.max(), grid)
    G = _natural_spline(xs, knots)
    XtX_inv = np.linalg.pinv(X.T @ X)
    lev = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", G, XtX_inv, G), 0))
    fits = []
    for tau in quantiles:
        beta = _check_loss_fit(X, r, tau)
        if beta is None:
            continue
        dev = X @ beta - tau
        stat = float(dev @ dev / (tau * (1 - tau)))
        fits.append((tau, G @ beta, np.sqrt(tau * (1 - tau)) * lev, stat,
                     float(stats.chi2.sf(stat, X.shape[1]))))
    adjusted = _holm([f[4] for f in fits])
    return [QuantileCurve(tau, xs, y, se, stat, X.shape[1], p, a)
            for (tau, y, se, stat, p), a in zip(fits, adjusted)]


def _holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment (R's ``p.adjust(p, "holm")``)."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    out = np.empty(m)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out.tolist()


def dharma_figure(result):
    """DHARMa's two panels for a fitted GLMM (``plot(simulateResiduals(fit))``).

    Left: the uniform QQ plot of the scaled residuals with the KS, dispersion and
    zero-inflation tests' p-values. Right: the residuals against the rank-transformed
    population-level fitted mean, dashed reference lines at 0.25, 0.5 and 0.75 and the smooth
    quantile regressions of :func:`quantile_curves` with a band of 2 standard errors; a curve
    that deviates from its quantile is red and the panel's title says so (otherwise the
    curves are black and the title reads "No significant problems detected", as DHARMa's).

    Parameters
    ----------
    result : GlmmResult
        The fit; its last :meth:`simulate_residuals` (DHARMa's defaults when none).

    Returns
    -------
    matplotlib.figure.Figure
    """
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
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.8))
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
    a2.plot(rank[idx], r[idx], ".", ms=2, color="0.55", zorder=1)
    for q in QUANTILES:
        a2.axhline(q, color="0.3", lw=0.6, ls="--")
    curves = quantile_curves(rank, r, QUANTILES, seed=d.seed)
    for c in curves:
        colour = "red" if c.significant else "black"
        a2.fill_between(c.x, c.y - 2 * c.se, c.y + 2 * c.se, color=colour, alpha=0.12, lw=0)
        a2.plot(c.x, c.y, "-", color=colour, lw=2, label=f"{c.tau:g}: p = {c.p_adjusted:.2g}")
    bad = [c for c in curves if c.significant]
    if bad:
        note = ("Quantile deviations detected (red curves): "
                + ", ".join(f"{c.tau:g}" for c in bad))
    elif curves:
        note = "No significant problems detected"
    else:
        note = "Too few residuals for quantile regressions"
    a2.set_title(f"Residual vs. predicted\n{note}", color="red" if bad else "black",
                 fontsize=10)
    if curves:
        a2.legend(title="quantile: Holm p", fontsize=7, title_fontsize=7, loc="upper right",
                  framealpha=0.8)
    a2.set_xlabel("fitted mean (rank transformed, population level)")
    a2.set_ylabel("scaled residual")
    a2.set_xlim(0, 1)
    a2.set_ylim(0, 1)
    return fig


def _dharma(result, out: Path) -> Path:
    return save_figure(dharma_figure(result), out / "dharma.png")
