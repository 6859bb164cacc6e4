"""A fit's own check of its optimum (:func:`certify`), apart from the optimiser's message.

An optimiser's "converged" says only that its own stopping rule fired. At the sizes daskmm is
for nobody can rerun lme4 to compare, so every fit checks the point it stopped at:

* **parameters on their bound** (a variance parameter at zero): a one-sided test that stepping
  inside does not lower the criterion. The profiled criterion is even in a scalar ``theta``,
  so its derivative at 0 is always 0 and a zero projected gradient there proves nothing; the
  criterion at ``lower + d`` for ``d`` in :data:`INWARD_STEPS` does.
* **bounded parameters off their bound** (a variance parameter above zero): the criterion
  with the parameter on its bound must not be lower. An interior local minimum can sit above
  the boundary's value (glmer's criterion for a gaussian(log) GLMM is lowest at ``theta = 0``
  and rises steeply just above it: an optimiser from inside does not reach the bound).
* **the free parameters**: the gradient and the Hessian there. The Hessian must be positive
  definite, and the decrease a Newton step promises, ``g' H^-1 g / 2``, must be below
  :data:`DECREASE_TOL` (deviance units). lme4's ``checkConv`` tests are recorded beside them
  with lme4's texts: the scaled gradient ``min(|H^-1/2 g|, |g|)`` against 0.002 and the
  Hessian's eigenvalues against 1e-6.

:func:`certify` takes the criterion as a callable and its derivatives already computed (the
models compute them anyway: the GLMM for its covariance, the LMM exactly), and returns a
:class:`Checks` record; what to do when a check fails (restart inside, a Newton step) is the
caller's, and the record says what was done. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

INWARD_STEPS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""Steps inside a bound at which the criterion must not be lower (absolute, in the
parameter's units: theta is a relative standard deviation per unit of its column, so a slope
on a covariate of ~1000 has its optimum near 1e-4: the steps span six decades)."""

ON_BOUND = 1e-6
"""A parameter at most this above its lower bound is on it."""

DECREASE_TOL = 1e-6
"""The largest decrease of the criterion (deviance units: -2 log-likelihood or REML
criterion) a Newton step from a certified optimum may promise. Well above the rounding of a
criterion of 10^7 rows (~1e-9) and of the finite-difference gradient of a PIRLS criterion
(~1e-10); well below anything that moves an estimate visibly."""

LME4_GRAD_TOL = 0.002
"""lme4's ``check.conv.grad`` tolerance."""

LME4_HESS_TOL = 1e-6
"""lme4's ``check.conv.hess`` tolerance."""


@dataclass
class Checks:
    """What a fit checked at its optimum and what it found.

    Attributes
    ----------
    certified : bool
        Every check passed.
    boundary : list of dict
        One entry per parameter on its bound: ``index``, ``name``, ``value``, and ``steps``:
        the criterion's change at each inward step tried (negative: lower inside).
    free : list of str
        The parameters the gradient and Hessian checks cover.
    gradient : list of float
        The gradient over ``free``.
    newton_decrease : float or None
        ``g' H^-1 g / 2`` over ``free`` (None when ``H`` is not positive definite).
    hessian_eigenvalues : list of float
        Eigenvalues of the Hessian over ``free``, ascending.
    lme4_max_grad : float or None
        lme4's scaled gradient ``max(min(|solve(chol(H), g)|, |g|))``.
    messages : list of str
        What failed, in lme4's words where lme4 has them; empty when certified.
    warnings : list of str
        lme4's identifiability warnings (a nearly singular Hessian: a large eigenvalue or
        eigenvalue ratio); the optimum is certified, its precision is poor.
    actions : list of str
        What the fit did on a failed check (a restart from inside, a Newton step) and what
        that gave.
    """

    certified: bool = True
    boundary: list = field(default_factory=list)
    free: list = field(default_factory=list)
    gradient: list = field(default_factory=list)
    newton_decrease: float | None = None
    hessian_eigenvalues: list = field(default_factory=list)
    lme4_max_grad: float | None = None
    messages: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    inside: list | None = None  # a lower point inside a bound, when the boundary test found one
    at_bound: list | None = None  # a lower point with a parameter moved to its bound
    newton_point: list | None = None  # x - H^-1 g, when the decrease is above tolerance

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("inside")
        d.pop("newton_point")
        d.pop("at_bound")
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> Checks | None:
        if not d:
            return None
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def certify(f: Callable[[np.ndarray], float], x: np.ndarray, lower: np.ndarray, fx: float,
            gradient: np.ndarray, hessian: np.ndarray, names: list[str] | None = None,
            decrease_tol: float | None = None, bound_values: bool = True) -> Checks:
    """Check that ``x`` minimises ``f`` over ``x >= lower``.

    Parameters
    ----------
    f : callable
        The criterion (one call per inward step tried).
    x, lower : ndarray
        The point and the lower bounds (``-inf`` where free).
    fx : float
        ``f(x)``.
    gradient, hessian : ndarray
        The gradient and Hessian of ``f`` at ``x`` over all parameters (only the free ones'
        rows and columns are used).
    names : list of str, optional
        Parameter names for the record.
    decrease_tol : float, optional
        :data:`DECREASE_TOL` when None.
    bound_values : bool
        Compare the criterion with each bounded parameter off its bound moved onto it (one
        evaluation each).

    Returns
    -------
    Checks
    """
    if decrease_tol is None:
        decrease_tol = DECREASE_TOL
    x = np.asarray(x, dtype=float)
    lower = np.asarray(lower, dtype=float)
    names = names or [f"x{i + 1}" for i in range(len(x))]
    out = Checks()
    rounding = 1e-10 * max(1.0, abs(fx))
    on = np.isfinite(lower) & (x - lower <= ON_BOUND)
    best = (fx, None)
    for i in np.flatnonzero(on):
        steps = []
        for d in INWARD_STEPS:
            z = x.copy()
            z[i] = lower[i] + d
            fz = float(f(z))
            steps.append((d, fz - fx if math.isfinite(fz) else math.inf))
            if fz < fx - rounding:
                if fz < best[0]:
                    best = (fz, z)
                break
        out.boundary.append({"index": int(i), "name": names[i], "value": float(x[i]),
                             "steps": steps})
        if steps[-1][1] < -rounding:
            out.certified = False
            out.messages.append(
                f"the criterion is lower by {-steps[-1][1]:.4g} with {names[i]} = "
                f"{lower[i] + steps[-1][0]:g} than on its bound {lower[i]:g}: the optimiser "
                "stopped on the boundary short of the optimum")
    if best[1] is not None:
        out.inside = best[1].tolist()
    low = (fx, None)
    for i in np.flatnonzero(np.isfinite(lower) & ~on & bound_values):
        z = x.copy()
        z[i] = lower[i]
        fz = float(f(z))
        if math.isfinite(fz) and fz < fx - rounding:
            out.certified = False
            out.messages.append(f"the criterion is lower by {fx - fz:.4g} with {names[i]} on "
                                f"its bound {lower[i]:g} than at {names[i]} = {x[i]:.6g}: the "
                                "optimiser stopped at an interior point above the boundary's "
                                "optimum")
            if fz < low[0]:
                low = (fz, z)
    if low[1] is not None:
        out.at_bound = low[1].tolist()
    free = np.flatnonzero(~on)
    out.free = [names[i] for i in free]
    if len(free) == 0:
        return out
    g = np.asarray(gradient, dtype=float)[free]
    H = np.asarray(hessian, dtype=float)[np.ix_(free, free)]
    H = 0.5 * (H + H.T)
    out.gradient = g.tolist()
    if not (np.all(np.isfinite(H)) and np.all(np.isfinite(g))):
        out.certified = False
        out.messages.append("Problem with Hessian check (infinite or missing values?)")
        return out
    ev = np.linalg.eigvalsh(H)
    out.hessian_eigenvalues = ev.tolist()
    try:
        R = np.linalg.cholesky(H).T  # H = R'R, lme4's chol(H)
        out.lme4_max_grad = float(np.max(np.minimum(np.abs(np.linalg.solve(R, g)),
                                                    np.abs(g))))
        step = np.linalg.solve(H, g)
        out.newton_decrease = float(0.5 * g @ step)
    except np.linalg.LinAlgError:
        step = None
    negative = int(np.sum(ev < -LME4_HESS_TOL))
    if negative:
        out.certified = False
        out.messages.append("Model failed to converge: degenerate  Hessian with "
                            f"{negative} negative eigenvalues")
    elif step is None:
        out.certified = False
        out.messages.append(" Hessian is numerically singular: parameters are not uniquely "
                            "determined")
    elif np.any(np.abs(ev) < LME4_HESS_TOL) or ev[-1] * LME4_HESS_TOL > 1 or \
            ev[0] / ev[-1] < LME4_HESS_TOL:
        # lme4's identifiability warnings: the optimum stands, its precision is poor
        out.warnings.append("Model is nearly unidentifiable: "
                            + ("very large eigenvalue" if ev[-1] * LME4_HESS_TOL > 1 else
                               "large eigenvalue ratio") + "\n - Rescale variables?")
    if out.lme4_max_grad is not None and out.lme4_max_grad > LME4_GRAD_TOL:
        comp = int(np.argmax(np.minimum(np.abs(np.linalg.solve(R, g)), np.abs(g)))) + 1
        out.messages.append(f"Model failed to converge with max|grad| = "
                            f"{out.lme4_max_grad:.6g} (tol = {LME4_GRAD_TOL:g}, component "
                            f"{comp})")
        out.certified = False
    if out.newton_decrease is not None and out.newton_decrease > decrease_tol:
        out.certified = False
        z = x.copy()
        z[free] -= step
        out.newton_point = np.maximum(z, lower).tolist()
        out.messages.append(f"a Newton step from the optimum would lower the criterion by "
                            f"{out.newton_decrease:.3g} (tolerance {decrease_tol:g}): the "
                            "optimiser stopped short")
    return out
