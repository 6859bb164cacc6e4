"""lme4's profile steps and its interpolation of the profile (pure numpy/scipy).

``profile.merMod`` walks each parameter away from its estimate in steps chosen so that
``zeta`` moves by about ``delta = cutoff / 8`` (``nextpar``), then ``confint`` reads the
interval from ``backSpline(interpSpline(zeta ~ par))`` (R's ``splines`` package): a natural
cubic spline of ``zeta`` on the parameter, inverted piecewise as cubic Hermite pieces with the
reciprocal slopes. These functions reproduce both so the limits are lme4's, not only close to
the exact crossings.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline


def next_par(p_prev: float, z_prev: float, p_last: float, z_last: float, absstep: float,
             lower: float = -np.inf, upper: float = np.inf, maxmult: float = 10.0,
             minstep: float = 1e-6) -> float:
    """lme4's ``nextpar``: the next parameter value from the last two rows of a profile."""
    num = p_last - p_prev
    denom = z_last - z_prev
    if not np.isfinite(denom) or denom == 0:
        step = minstep
    else:
        step = absstep * num / denom
        if step < 0:
            step = minstep
        elif abs(step) > maxmult * abs(num):
            step = np.sign(step) * maxmult * abs(num)
    return float(min(upper, max(lower, p_last + np.sign(num) * step)))


def back_spline_predict(par: np.ndarray, zeta: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``predict(backSpline(interpSpline(zeta ~ par)), targets)``: parameter values where the
    interpolated profile reaches each target; NaN outside the profiled range (lme4 then uses
    the parameter's bound) or for a non-monotone profile."""
    order = np.argsort(par)
    x, y = np.asarray(par, float)[order], np.asarray(zeta, float)[order]
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    targets = np.asarray(targets, float)
    if len(x) < 4 or np.any(np.diff(x) <= 0):
        return np.full(targets.shape, np.nan)
    fwd = CubicSpline(x, y, bc_type="natural")
    slope = fwd(x, 1)
    nk = len(x)
    kdiff = np.diff(x)
    bknots = y
    adiff = np.diff(bknots)
    if np.all(adiff < 0):
        rev = True
    elif np.all(adiff > 0):
        rev = False
    else:
        return np.full(targets.shape, np.nan)
    b = np.zeros((nk, 4))
    b[:, 0] = x
    b[:, 1] = 1.0 / slope
    for i in range(nk - 1):
        a = np.array([[adiff[i] ** 2, adiff[i] ** 3], [2 * adiff[i], 3 * adiff[i] ** 2]])
        rhs = np.array([kdiff[i] - adiff[i] * b[i, 1], b[i + 1, 1] - b[i, 1]])
        b[i, 2:4] = np.linalg.solve(a, rhs)
    b[nk - 1, 1:4] = np.nan
    if nk > 2:
        b[0, 3] = b[nk - 2, 3] = 0.0
        a = np.array([[adiff[0], adiff[0] ** 2], [1.0, 2 * adiff[0]]])
        b[0, 1:3] = np.linalg.solve(a, np.array([kdiff[0], 1.0 / slope[1]]))
        b[nk - 2, 2] = (kdiff[nk - 2] - adiff[nk - 2] * b[nk - 2, 1]) / adiff[nk - 2] ** 2
    if b[0, 2] > 0:
        b[0, 2] = 0.0
        b[0, 1] = kdiff[0] / adiff[0]
    if b[nk - 2, 2] < 0:
        b[nk - 2, 2] = 0.0
        b[nk - 2, 1] = kdiff[nk - 2] / adiff[nk - 2]
    knots = bknots
    if rev:
        knots, b = knots[::-1], b[::-1]
    return np.array([_poly_predict(knots, b, t) for t in np.atleast_1d(targets)])


def _poly_predict(knots: np.ndarray, coef: np.ndarray, t: float) -> float:
    """``predict.polySpline`` at one point: the piece of ``(knots[i], knots[i+1]]``
    (``knots[0]`` itself in the first), NaN outside."""
    if t == knots[0]:
        i = 0
    else:
        idx = np.searchsorted(knots, t, side="left")  # knots[idx-1] < t <= knots[idx]
        if idx <= 0 or idx >= len(knots):
            return np.nan
        i = idx - 1
    d = t - knots[i]
    c = coef[i]
    return float(((c[3] * d + c[2]) * d + c[1]) * d + c[0])
