"""Second derivatives by finite differences, and the covariance they give: lme4's
``deriv12`` steps for the Hessian of a criterion (or of its exact gradient), bounds respected,
and ``2 [H^-1]_beta`` (glmer's ``use.hessian = TRUE``). Pure numpy over a callable."""

from __future__ import annotations

import numpy as np

from daskmm.errors import FitError


def hessian(f, x: np.ndarray, lower: np.ndarray, delta: float = 1e-4) -> np.ndarray:
    """Central finite-difference Hessian (lme4's ``deriv12`` step, ``delta = 1e-4``); a
    coordinate within ``delta`` of its lower bound uses steps shifted inside the bound."""
    return derivatives(f, x, lower, delta)[1]


def derivatives(f, x: np.ndarray, lower: np.ndarray, delta: float | np.ndarray = 1e-4,
                f0: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(gradient, Hessian)`` by finite differences from the same evaluations as
    :func:`hessian`: the gradient central, or ``(-3 f(x) + 4 f(x + h) - f(x + 2h)) / 2h``
    for a coordinate within its step of its lower bound. ``delta``: one step, or one a
    coordinate."""
    d = len(x)
    H = np.empty((d, d))
    g = np.empty(d)
    if f0 is None:
        f0 = f(x)
    h = np.broadcast_to(np.asarray(delta, dtype=float), (d,)).copy()
    shift = np.where(np.isfinite(lower) & (x - h < lower), h, 0.0)

    def at(*steps):
        v = x.copy()
        for i, s in steps:
            v[i] += s
        return f(v)
    for i in range(d):
        if shift[i]:
            f1, f2 = at((i, h[i])), at((i, 2 * h[i]))
            H[i, i] = (f2 - 2 * f1 + f0) / h[i] ** 2
            g[i] = (-3.0 * f0 + 4.0 * f1 - f2) / (2 * h[i])
        else:
            fu, fd = at((i, h[i])), at((i, -h[i]))
            H[i, i] = (fu - 2 * f0 + fd) / h[i] ** 2
            g[i] = (fu - fd) / (2 * h[i])
        for j in range(i):
            si, sj, ci, cj = h[i], h[j], shift[i], shift[j]
            H[i, j] = H[j, i] = (at((i, si + ci), (j, sj + cj)) - at((i, si + ci), (j, -sj + cj))
                                 - at((i, -si + ci), (j, sj + cj))
                                 + at((i, -si + ci), (j, -sj + cj))) / (4 * si * sj)
    return g, H


def hessian_of_gradient(grad, x: np.ndarray, lower: np.ndarray,
                         delta: float | np.ndarray = 1e-4) -> np.ndarray:
    """The Hessian from central differences of the exact gradient (``2 d`` gradients, step
    ``delta`` as :func:`hessian`, one or one a coordinate); a coordinate within its step of
    its lower bound takes the one-sided second-order difference ``(-3 g(x) + 4 g(x + h) -
    g(x + 2h)) / 2h`` inside it. Symmetrised."""
    d = len(x)
    H = np.empty((d, d))
    hs = np.broadcast_to(np.asarray(delta, dtype=float), (d,))
    g0 = None
    for i in range(d):
        up, dn, h = x.copy(), x.copy(), float(hs[i])
        if np.isfinite(lower[i]) and x[i] - h < lower[i]:
            if g0 is None:
                g0 = grad(x)
            up[i] += h
            dn[i] += 2 * h
            H[:, i] = (-3.0 * g0 + 4.0 * grad(up) - grad(dn)) / (2 * h)
        else:
            up[i] += h
            dn[i] -= h
            H[:, i] = (grad(up) - grad(dn)) / (2 * h)
    return 0.5 * (H + H.T)


STEP_PER_SE = 0.01
"""A finite-difference step of at most this fraction of the parameter's standard error: the
central difference's relative error is about ``(h / se)^2``."""


def steps_for(H: np.ndarray, delta: float = 1e-4) -> np.ndarray | None:
    """Per-coordinate steps ``min(delta, STEP_PER_SE se_i)`` (``se = sqrt(diag(2 H^-1))``)
    when ``delta`` is larger than that for some coordinate, else None (keep ``delta``). A
    parameter whose standard error is below ``delta / STEP_PER_SE`` (a Gamma GLMM's
    coefficients under the inverse link, ~1e-3) has a curvature the fixed step
    under-resolves by ``(delta / se)^2`` (a per cent at ``se = 1e-3``); lme4's fixed
    ``deriv12`` step keeps that error."""
    try:
        w = np.linalg.eigvalsh(H)
        if not (np.all(np.isfinite(H)) and w[0] > 0):
            return None
        se = np.sqrt(np.maximum(np.diag(2.0 * np.linalg.inv(H)), 0.0))
    except np.linalg.LinAlgError:
        return None
    if not np.any(STEP_PER_SE * se < delta):
        return None
    return np.clip(STEP_PER_SE * se, delta * 1e-3, delta)


def forward_hessian_of_gradient(grad, x: np.ndarray, g0: np.ndarray,
                                 rel_step: float = 1e-6,
                                 delta: float | np.ndarray | None = None) -> np.ndarray:
    """The Hessian from forward differences of the exact gradient, upwards (inside every
    lower bound): ``d`` gradients, step ``rel_step * max(|x_i|, 0.1)``, or ``delta`` (one
    step, or one a coordinate). Symmetrised."""
    d = len(x)
    H = np.empty((d, d))
    hs = None if delta is None else np.broadcast_to(np.asarray(delta, dtype=float), (d,))
    for i in range(d):
        h = rel_step * max(abs(x[i]), 0.1) if hs is None else float(hs[i])
        up = x.copy()
        up[i] += h
        H[:, i] = (np.asarray(grad(up)) - g0) / h
    return 0.5 * (H + H.T)


def vcov_of(H: np.ndarray, nt: int, theta: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """``2 [H^-1]_beta``; with a variance parameter on its boundary the theta rows are not
    informative and the beta block of ``H`` alone is inverted."""
    try:
        if np.any((lower == 0) & (theta == 0)):
            return 2.0 * np.linalg.inv(H[nt:, nt:])
        return 2.0 * np.linalg.inv(H)[nt:, nt:]
    except np.linalg.LinAlgError as exc:
        raise FitError("the Hessian of the criterion is singular at the optimum; the fixed "
                       "effects may not be identifiable") from exc
