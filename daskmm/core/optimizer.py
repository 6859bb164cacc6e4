"""The optimiser every model uses, and the record of what it did (:class:`OptSummary`).

Two methods, as MixedModels.jl's ``OptSummary`` records one:

* **with an exact gradient** (the LMM's profiled criterion): L-BFGS-B (bounded quasi-Newton,
  SciPy) from lme4's start, then Newton steps with the Hessian from central differences of
  the gradient until the projected gradient is below ``gtol``. Parameters whose optimum is on
  their zero bound land on it exactly (lme4 reports such singular fits with exact zeros). If
  the quasi-Newton run fails or ends with a large gradient, BOBYQA runs from its best point.
* **derivative-free**: BOBYQA (NLopt) with lme4's ``nloptwrap`` tolerances, variance
  parameters that stopped next to their zero bound put on it when that is no worse, then a
  Newton polish on finite differences of the criterion (:func:`newton_polish`).

Every evaluation on a cluster is a round trip, so the record counts function and gradient
evaluations separately: one evaluation with its gradient is one round.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from daskmm.core.certify import ON_BOUND, certify
from daskmm.errors import ModelError
from daskmm.events import emit

log = logging.getLogger("daskmm")

NLOPT_MESSAGES = {1: "NLOPT_SUCCESS", 2: "NLOPT_STOPVAL_REACHED", 3: "NLOPT_FTOL_REACHED",
                  4: "NLOPT_XTOL_REACHED", 5: "NLOPT_MAXEVAL_REACHED",
                  6: "NLOPT_MAXTIME_REACHED", -4: "NLOPT_ROUNDOFF_LIMITED"}

DEFAULTS = {"xtol_abs": 1e-8, "ftol_abs": 1e-8, "maxeval": 100_000, "polish": True,
            "gtol": 1e-8, "method": "auto"}
"""Settings: BOBYQA's ``xtol_abs``/``ftol_abs``/``maxeval`` (lme4's ``nloptwrap``), the
projected-gradient tolerance ``gtol`` of the gradient method, ``polish`` (the Newton steps
after BOBYQA), and ``method``: ``"auto"`` (the gradient when the model has one),
``"lbfgsb"``, ``"bobyqa"`` or ``"neldermead"`` (NLopt's bounded Nelder-Mead, lme4's
``nloptwrap`` with ``algorithm = "NLOPT_LN_NELDERMEAD"``: for :meth:`all_fit`)."""

METHODS = ("auto", "lbfgsb", "bobyqa", "neldermead")


@dataclass
class OptSummary:
    """What the optimiser did: settings, evaluations, where it stopped and how well.

    Attributes
    ----------
    optimizer : str
        The method that produced the optimum (``"L-BFGS-B + Newton"``, ``"nloptwrap
        (NLOPT_LN_BOBYQA)"``).
    settings : dict
        The settings in force (:data:`DEFAULTS` overridden by the caller's).
    x0, x : list of float
        Start and optimum.
    fmin : float
        The criterion at ``x``.
    feval : int
        Evaluations of the criterion (each with its gradient, when the method uses one).
    geval : int
        How many of them computed the gradient.
    message : str
        The method's own stopping message.
    converged : bool
    gradient : list of float or None
        The gradient at ``x`` (exact for the LMM; finite differences after BOBYQA, None when
        not computed).
    gradient_norm : float or None
        Max-norm of the projected gradient (components pushing into an active bound left out).
    polished : bool
        Whether Newton steps moved the point.
    fallback : str or None
        Why BOBYQA ran after the gradient method, if it did.
    mode : str
        Where the evaluations ran (``in-process``, ``gathered``, ``distributed``).
    restarted : bool
        The LMM's optimum came from a restart off a boundary corner
        (:func:`daskmm.models.lmm.fit.optimise`).
    checks : dict or None
        The fit's own check of the optimum (:class:`daskmm.core.certify.Checks`, as a dict):
        what was tested, what it found, what was done about it.
    crossed : dict or None
        Which path fitted crossed random effects (``path``: ``"dense"``, the dense block of
        crossed levels; ``"sparse"``, a sparse factor of it; ``"matrix-free"``, with the
        criterion's standard error and the estimator's settings); None without crossed
        factors.
    """

    optimizer: str
    settings: dict
    x0: list
    x: list = field(default_factory=list)
    fmin: float = math.inf
    feval: int = 0
    geval: int = 0
    message: str = ""
    converged: bool = False
    gradient: list | None = None
    gradient_norm: float | None = None
    polished: bool = False
    fallback: str | None = None
    mode: str = ""
    code: int = 0
    restarted: bool = False
    checks: dict | None = None
    crossed: dict | None = None

    @property
    def certified(self) -> bool | None:
        """Whether the optimum passed its checks (None for a fit saved before they existed)."""
        return None if self.checks is None else bool(self.checks.get("certified"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> OptSummary:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    # dict-style reads, for code and users who read ``optinfo["feval"]``
    def __getitem__(self, key: str):
        return getattr(self, key)

    def __setitem__(self, key: str, value) -> None:
        setattr(self, key, value)

    def get(self, key: str, default=None):
        return getattr(self, key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.__dataclass_fields__

    def items(self):
        return self.to_dict().items()


def projected_gradient(g: np.ndarray, x: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """``g`` with the components that push an active lower bound outwards set to zero."""
    out = np.array(g, dtype=float)
    out[(x <= lower) & (out > 0)] = 0.0
    return out


class _Counted:
    """The criterion with evaluation counts and the best point seen."""

    def __init__(self, f: Callable | None, fg: Callable | None):
        self.f, self.fg = f, fg
        self.feval = self.geval = 0
        self.best = (math.inf, None)

    def value(self, x) -> float:
        self.feval += 1
        emit("evaluation", feval=self.feval, best=self.best[0])
        x = np.array(x, dtype=float)
        v = float(self.f(x)) if self.f is not None else float(self.fg(x)[0])
        if v < self.best[0]:
            self.best = (v, x)
        return v if math.isfinite(v) else 1e300

    def value_grad(self, x) -> tuple[float, np.ndarray]:
        self.feval += 1
        self.geval += 1
        emit("evaluation", feval=self.feval, best=self.best[0])
        x = np.array(x, dtype=float)
        v, g = self.fg(x)
        v = float(v)
        if v < self.best[0]:
            self.best = (v, x)
        if not math.isfinite(v) or not np.all(np.isfinite(g)):
            return 1e300, np.zeros_like(x)
        return v, np.asarray(g, dtype=float)


def minimize(x0: np.ndarray, lower: np.ndarray, *, f: Callable | None = None,
             fg: Callable | None = None, options: dict | None = None,
             initial_step: np.ndarray | None = None, polish_step: float = 1e-4,
             polish_iter: int = 1, mode: str = "") -> tuple[np.ndarray, OptSummary]:
    """Minimise a criterion over ``x >= lower`` (no upper bounds).

    Parameters
    ----------
    x0, lower : ndarray
        Start and lower bounds (``-inf`` for free parameters).
    f : callable, optional
        ``f(x) -> float``. Needed unless ``fg`` is given.
    fg : callable, optional
        ``fg(x) -> (float, gradient)``: the exact gradient; selects the gradient method.
    options : dict, optional
        Overrides of :data:`DEFAULTS`.
    initial_step : ndarray, optional
        BOBYQA's initial step per parameter.
    polish_step, polish_iter
        The finite-difference Newton polish after BOBYQA (:func:`newton_polish`).
    mode : str
        Recorded in the summary.

    Returns
    -------
    x : ndarray
    summary : OptSummary
    """
    opts = {**DEFAULTS, **(options or {})}
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ModelError(f"unknown optimizer option(s) {', '.join(sorted(unknown))}; allowed: "
                         f"{', '.join(DEFAULTS)}")
    x0 = np.asarray(x0, dtype=float)
    lower = np.asarray(lower, dtype=float)
    crit = _Counted(f, fg)
    method = opts["method"]
    if method not in METHODS:
        raise ModelError(f"optimizer method {method!r}; allowed: {', '.join(METHODS)}")
    if method == "lbfgsb" and fg is None:
        method = "bobyqa"
    if fg is not None and method in ("auto", "lbfgsb"):
        x, summary = _gradient_method(crit, x0, lower, opts)
        if summary.fallback is None:
            summary.mode = mode
            return x, summary
        log.info("gradient method: %s; BOBYQA from its best point", summary.fallback)
        start = crit.best[1] if crit.best[1] is not None else x0
        x, bob = _bobyqa(crit, start, lower, opts, initial_step, polish_step, polish_iter)
        bob.fallback, bob.x0 = summary.fallback, x0.tolist()
        _final_gradient(crit, bob, x, lower)
        bob.mode = mode
        return x, bob
    x, summary = _bobyqa(crit, x0, lower, opts, initial_step, polish_step, polish_iter,
                         neldermead=method == "neldermead")
    summary.mode = mode
    return x, summary


def _final_gradient(crit: _Counted, summary: OptSummary, x: np.ndarray,
                    lower: np.ndarray) -> None:
    if crit.fg is None:
        return
    v, g = crit.value_grad(x)
    summary.gradient = g.tolist()
    summary.gradient_norm = float(np.max(np.abs(projected_gradient(g, x, lower)), initial=0.0))
    summary.feval, summary.geval = crit.feval, crit.geval


def _gradient_method(crit: _Counted, x0: np.ndarray, lower: np.ndarray,
                     opts: dict) -> tuple[np.ndarray, OptSummary]:
    from scipy.optimize import minimize as sp_minimize

    summary = OptSummary("L-BFGS-B + Newton", {k: opts[k] for k in ("gtol", "maxeval")},
                         x0.tolist())
    bounds = [(lo if math.isfinite(lo) else None, None) for lo in lower]
    start, steps, runs = x0, 0, 0
    while True:
        watch = _Stall(crit)
        try:
            res = sp_minimize(watch, start, jac=True, method="L-BFGS-B", bounds=bounds,
                              options={"ftol": 1e-12, "gtol": 1e-5, "maxcor": 20,
                                       "maxiter": int(opts["maxeval"]), "maxls": 40})
            x, message = np.asarray(res.x, dtype=float), str(res.message)
        except _Stalled:
            x, message = watch.best_x, "STALLED: NO DECREASE ABOVE ROUNDING; NEWTON FROM BEST"
        runs += 1
        log.debug("L-BFGS-B: %d evaluations, %s", watch.n, message)
        x = np.maximum(x, lower)
        summary.message = message
        if watch.best_x is not None and np.array_equal(x, watch.best_x):
            fx, g = watch.best_fg
        else:
            fx, g = crit.value_grad(x)
        x, fx, g, k = _newton_gradient(crit, x, fx, g, lower, opts["gtol"])
        steps += k
        # a parameter on its bound with a zero derivative (Lambda enters the criterion
        # quadratically, so d/dtheta = 0 at theta = 0) may be a maximum along it: look inside
        start = _inside_bound(crit, x, fx, g, lower)
        if start is None or runs == 3:
            break
    summary.settings["lbfgsb_runs"] = runs
    summary.polished = steps > 0
    pg = projected_gradient(g, x, lower)
    summary.x, summary.fmin = x.tolist(), float(fx)
    summary.gradient = g.tolist()
    summary.gradient_norm = float(np.max(np.abs(pg), initial=0.0))
    summary.feval, summary.geval = crit.feval, crit.geval
    summary.converged = summary.gradient_norm <= max(1e-6, opts["gtol"]) and fx < 1e299
    if not summary.converged:
        summary.fallback = (f"projected gradient {summary.gradient_norm:.3g} after "
                            f"L-BFGS-B ({summary.message})")
    return x, summary


class _Stalled(Exception):
    pass


STALL_EVALS = 3
"""L-BFGS-B stops after this many evaluations in a row that do not lower the best value by
more than rounding (``1e-13`` relative): near the optimum of a criterion of ~10^5 the decrease
a small gradient promises is below the rounding of the criterion itself, and its line search
would try the same point again and again. The Newton steps on the exact gradient that follow
finish from the best point."""


class _Stall:
    """``value_grad`` for L-BFGS-B, remembering the best point and raising :class:`_Stalled`
    after :data:`STALL_EVALS` evaluations without a decrease above rounding."""

    def __init__(self, crit: _Counted):
        self.crit = crit
        self.n = self.flat = 0
        self.best_x, self.best_fg = None, (math.inf, None)

    def __call__(self, x):
        v, g = self.crit.value_grad(x)
        self.n += 1
        best = self.best_fg[0]
        if v < best - 1e-13 * max(1.0, abs(best)) or self.best_x is None:
            self.flat = 0
        else:
            self.flat += 1
        if v < best:
            self.best_x, self.best_fg = np.array(x, dtype=float), (v, g)
        if self.flat >= STALL_EVALS:
            raise _Stalled
        return v, g


def _inside_bound(crit: _Counted, x: np.ndarray, fx: float, g: np.ndarray,
                  lower: np.ndarray) -> np.ndarray | None:
    """A point just inside the bounds that is lower than ``x`` (from which to start again), or
    None: for each parameter on its bound whose derivative vanishes there, the criterion at
    two small steps inside."""
    for i in np.flatnonzero((x - lower <= ON_BOUND) & np.isfinite(lower)):
        if g[i] > 1e-8 * max(1.0, abs(fx)):
            continue  # the gradient pushes into the bound: a true boundary optimum
        for d in (1e-2, 1e-4):
            z = x.copy()
            z[i] = lower[i] + d
            if crit.value(z) < fx - 1e-12 * max(1.0, abs(fx)):
                return z
    return None


def _newton_gradient(crit: _Counted, x: np.ndarray, fx: float, g: np.ndarray,
                     lower: np.ndarray, gtol: float, max_iter: int = 4):
    """Newton steps on the free parameters, the Hessian from central differences of the
    exact gradient; a step is kept when the criterion does not rise (beyond rounding) and the
    projected gradient falls."""
    steps = 0
    for _ in range(max_iter):
        pg = projected_gradient(g, x, lower)
        norm = np.max(np.abs(pg), initial=0.0)
        if norm <= gtol:
            break
        free = np.flatnonzero(~((x <= lower) & (g > 0)))
        if len(free) == 0:
            break
        h = 1e-6 * np.maximum(np.abs(x[free]), 0.1)
        d = len(free)
        H = np.empty((d, d))
        for j, i in enumerate(free):  # forward differences of the gradient (upwards: inside)
            up = x.copy()
            up[i] += h[j]
            H[:, j] = (crit.value_grad(up)[1][free] - g[free]) / h[j]
        H = 0.5 * (H + H.T)
        try:
            np.linalg.cholesky(H)
            step = np.linalg.solve(H, g[free])
        except np.linalg.LinAlgError:
            break
        z = x.copy()
        z[free] -= step
        z = np.maximum(z, lower)
        fz, gz = crit.value_grad(z)
        if fz <= fx + 1e-12 * max(1.0, abs(fx)) and \
                np.max(np.abs(projected_gradient(gz, z, lower)), initial=0.0) < norm:
            x, fx, g = z, fz, gz
            steps += 1
        else:
            break
    return x, fx, g, steps


def _bobyqa(crit: _Counted, x0: np.ndarray, lower: np.ndarray, opts: dict,
            initial_step: np.ndarray | None, polish_step: float,
            polish_iter: int, neldermead: bool = False) -> tuple[np.ndarray, OptSummary]:
    import nlopt

    name = "NLOPT_LN_NELDERMEAD" if neldermead else "NLOPT_LN_BOBYQA"
    summary = OptSummary(f"nloptwrap ({name})",
                         {k: opts[k] for k in ("xtol_abs", "ftol_abs", "maxeval", "polish")},
                         x0.tolist())
    opt = nlopt.opt(nlopt.LN_NELDERMEAD if neldermead else nlopt.LN_BOBYQA, len(x0))
    opt.set_min_objective(lambda x, grad: crit.value(x))
    opt.set_lower_bounds(lower)
    opt.set_upper_bounds(np.full(len(x0), np.inf))
    if initial_step is not None:
        opt.set_initial_step(initial_step)
    opt.set_xtol_abs(opts["xtol_abs"])
    opt.set_ftol_abs(opts["ftol_abs"])
    opt.set_maxeval(int(opts["maxeval"]))
    try:
        # a start below a bound (an extrapolated profile start) is moved onto it: nlopt
        # refuses one outside with "invalid argument"
        x = opt.optimize(np.maximum(np.asarray(x0, dtype=float), lower))
        code = opt.last_optimize_result()
    except nlopt.RoundoffLimited:  # lme4 accepts the best point with a warning
        log.warning("optimiser stopped on round-off; using the best point found")
        x, code = crit.best[1], -4
    x = snap_to_boundary(crit.value, np.asarray(x, dtype=float), lower, opts["ftol_abs"])
    polished = False
    if opts["polish"] and code > 0:
        x, polished = newton_polish(crit.value, x, lower, rel_step=polish_step,
                                    max_iter=polish_iter)
    summary.x, summary.fmin = x.tolist(), float(crit.value(x))
    summary.code, summary.message = int(code), NLOPT_MESSAGES.get(code, str(code))
    summary.converged = code in (1, 3, 4)
    summary.polished = polished
    summary.feval = crit.feval
    return x, summary


def newton_polish(f: Callable, x: np.ndarray, lower: np.ndarray, rel_step: float = 1e-4,
                  max_iter: int = 1) -> tuple[np.ndarray, bool]:
    """Refine BOBYQA's optimum by Newton steps on finite differences of the criterion.

    BOBYQA with lme4's tolerances stops anywhere the criterion is flat to ``ftol_abs``; rounding
    in the statistics (which depends on how rows were partitioned, ~1e-16) moves that point by
    up to ~1e-7 in theta. Newton's method on a fixed finite-difference stencil converges to the
    zero of the differenced gradient, a point that moves only with the rounding itself
    (~1e-10), so fits agree across workers, partitions and evaluation modes to 1e-8.

    Parameters on their zero bound are left there. The Hessian is taken once by forward
    differences ((d + 1)(d + 2) / 2 evaluations), the gradient by central differences (2 d per
    step). The refined point is kept only if it is within ``10 rel_step`` of the start and the
    criterion is not worse (by more than 1e-10 relative); otherwise BOBYQA's point stands.
    """
    free = np.flatnonzero(~((lower == 0) & (x < 10 * rel_step)))
    if len(free) == 0:
        return x, False
    h = rel_step * np.maximum(np.abs(x[free]), 0.1)
    d = len(free)

    def at(base, steps):
        z = base.copy()
        z[free] += steps
        return f(z)

    f0 = f(x)
    E = np.diag(h)
    fp = np.array([at(x, E[i]) for i in range(d)])
    H = np.empty((d, d))
    for i in range(d):
        for j in range(i, d):
            fij = at(x, E[i] + E[j])
            H[i, j] = H[j, i] = (fij - fp[i] - fp[j] + f0) / (h[i] * h[j])
    try:
        np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return x, False  # not a strict minimum in the free parameters: leave BOBYQA's point
    z = x.copy()
    for it in range(max_iter):
        # at the start the forward points are the Hessian's: reuse them (the same numbers)
        fwd = fp if it == 0 else [at(z, E[i]) for i in range(d)]
        g = np.array([(fwd[i] - at(z, -E[i])) / (2 * h[i]) for i in range(d)])
        step = np.linalg.solve(H, g)
        z[free] -= step
        if np.all(np.abs(step) <= 1e-3 * h):
            break
    fz = f(z)
    ok = (np.all(np.abs(z[free] - x[free]) <= 10 * h) and np.all(z >= lower)
          and fz <= f0 + 1e-10 * max(1.0, abs(f0)))
    return (z, True) if ok else (x, False)


def snap_to_boundary(f: Callable, x: np.ndarray, lower: np.ndarray, ftol_abs: float,
                     near: float = 1e-6) -> np.ndarray:
    """Put variance parameters that stopped within ``near`` of their zero bound on it, when the
    criterion is no worse within the optimiser's own tolerance.

    BOBYQA stops within ``xtol_abs`` of a bound it is heading for (1e-8 instead of 0), which
    leaves tiny non-zero standard deviations and conditional SDs in a singular fit; lme4 reports
    exact zeros there.
    """
    fx = f(x)
    for i in np.flatnonzero((lower == 0) & (x > 0) & (x < near)):
        trial = x.copy()
        trial[i] = 0.0
        ft = f(trial)
        if ft <= fx + 0.1 * ftol_abs:
            x, fx = trial, ft
    return x


DESCENT_STEPS = (1e-3, 1e-2, 0.1, 0.5)
"""Lengths of the trial steps along the Hessian's most negative direction
(:func:`descent_start`), in the parameters' units."""


def descent_start(f: Callable[[np.ndarray], float], x: np.ndarray, fx: float, H: np.ndarray,
                  lower: np.ndarray) -> np.ndarray | None:
    """Where a point whose Hessian has a negative eigenvalue (a saddle, not a minimum: the
    optimiser stopped where the gradient vanishes) leads downhill: steps of
    :data:`DESCENT_STEPS` both ways along that eigenvector (kept within the bounds), the
    lowest point found below ``f(x)``; None when the Hessian has none or no step goes lower.
    glmer can stop at such points too (a gaussian(log) GLMM's bobyqa fit on sleepstudy)."""
    H = np.asarray(H, dtype=float)
    if not np.all(np.isfinite(H)):
        return None
    w, V = np.linalg.eigh(0.5 * (H + H.T))
    if not w[0] < -1e-8 * max(1.0, float(np.max(np.abs(w)))):
        return None
    v = V[:, 0]
    best, fbest = None, fx - 1e-12 * max(1.0, abs(fx))
    for sign in (1.0, -1.0):
        for a in DESCENT_STEPS:
            y = np.maximum(x + sign * a * v, lower)
            fy = f(y)
            if math.isfinite(fy) and fy < fbest:
                best, fbest = y, fy
    return best


def certified_optimum(run: Callable[[np.ndarray], tuple[np.ndarray, OptSummary]],
                      derivs: Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray]],
                      f: Callable[[np.ndarray], float], x: np.ndarray, summary: OptSummary,
                      lower: np.ndarray, names: list[str], repairs: int = 2,
                      bound_values: bool = True) -> tuple[np.ndarray, OptSummary, tuple]:
    """Check the optimum ``x`` (:func:`daskmm.core.certify.certify`) and repair what fails.

    When stepping inside a bound lowers the criterion the optimiser runs again from that
    point; when a Newton step promises a decrease above tolerance it runs again from the
    Newton point; at a saddle (the Hessian has a negative eigenvalue) from the lowest point
    along its direction (:func:`descent_start`). The better point is kept and checked again,
    up to ``repairs`` times.

    Parameters
    ----------
    run : callable
        ``run(start) -> (x, summary)``: the model's optimisation from a start.
    derivs : callable
        ``derivs(x) -> (f(x), gradient, Hessian)`` over all parameters.
    f : callable
        The criterion (for the inward steps).
    x, summary : the optimum and its record
    lower : ndarray
    names : list of str
        Parameter names, for the record.
    repairs : int
    bound_values : bool
        :func:`~daskmm.core.certify.certify`'s comparison with parameters moved onto their
        bounds.

    Returns
    -------
    x, summary, (fx, gradient, Hessian)
        ``summary.checks`` holds the record; evaluations of every run are counted.
    """
    d = derivs(x)
    checks = certify(f, x, lower, d[0], d[1], d[2], names, bound_values=bound_values)
    actions: list[str] = []
    for _ in range(repairs):
        start = checks.inside if checks.inside is not None else checks.newton_point
        why = "inside a bound" if checks.inside is not None else "a Newton step"
        if start is None and checks.at_bound is not None:
            start, why = checks.at_bound, "a parameter on its bound"
        if start is None and not checks.certified:
            start = descent_start(f, x, d[0], d[2], lower)
            why = "a step along the Hessian's negative curvature"
        if checks.certified or start is None:
            break
        x2, s2 = run(np.asarray(start, dtype=float))
        d2 = derivs(x2)
        if start is checks.at_bound:  # the point on the bound itself may be the lowest
            d_b = derivs(np.asarray(start, dtype=float))
            if not (math.isfinite(d2[0]) and d2[0] <= d_b[0]):
                x2, d2 = np.asarray(start, dtype=float), d_b
        s2.feval += summary.feval
        s2.geval += summary.geval
        if not (math.isfinite(d2[0]) and d2[0] < d[0] - 1e-12 * max(1.0, abs(d[0]))):
            actions.append(f"ran again from {why}: no lower point (criterion "
                           f"{d2[0]:.10g} against {d[0]:.10g}); the first optimum stands")
            summary.feval, summary.geval = s2.feval, s2.geval
            break
        actions.append(f"ran again from {why}: criterion lower by {d[0] - d2[0]:.4g}")
        log.warning("the optimiser stopped short of the optimum; %s", actions[-1])
        s2.restarted = True
        x, summary, d = x2, s2, d2
        checks = certify(f, x, lower, d[0], d[1], d[2], names, bound_values=bound_values)
    checks.actions = actions
    summary.checks = checks.to_dict()
    if not checks.certified:
        log.warning("the optimum is not certified: %s", "; ".join(checks.messages))
    return x, summary, d


def estimated_newton(fg: Callable[[np.ndarray], tuple[float, np.ndarray, float]],
                     x0: np.ndarray, lower: np.ndarray, xtol: float = 1e-7,
                     maxeval: int = 100, name: str = "Newton (stochastic trace gradient)"
                     ) -> tuple[np.ndarray, OptSummary, np.ndarray]:
    """Newton steps on a criterion estimated with a standard error and its gradient (the
    matrix-free crossed paths': ``fg(x) -> (f, g, se)``, its traces from the same probes),
    ``x >= lower``: the Hessian by forward differences of the gradient at the start
    (``k`` evaluations), kept by BFGS updates; a step that raises the criterion by more than
    a thousandth of its standard error is halved (the gradient is the traces' estimate, not
    the estimate's derivative: near the optimum a step to its zero may raise the estimate by
    far less than its standard error). Stops when a step moves no coordinate by more than
    ``xtol`` relative to ``max(|x|, 0.01)``. Returns ``(x, summary, the BFGS Hessian)``."""
    k = len(x0)
    lower = np.asarray(lower, float)
    count = [0]

    def call(x: np.ndarray) -> tuple[float, np.ndarray, float]:
        count[0] += 1
        f, g, se = fg(x)
        return float(f), np.asarray(g, float), float(se)

    x = np.maximum(np.asarray(x0, float), lower)
    f, g, _ = call(x)
    H = np.empty((k, k))
    for j in range(k):
        h = 1e-3 * max(abs(x[j]), 1e-2)
        xj = x.copy()
        xj[j] += h
        H[:, j] = (call(xj)[1] - g) / h
    H = 0.5 * (H + H.T)
    settings = {"xtol": xtol, "maxeval": maxeval, "hessian": "forward differences, BFGS"}
    msg, converged = f"no convergence in {maxeval} evaluations", False
    while count[0] < maxeval:
        free = ~((x <= lower) & (g > 0))  # a bound that the gradient pushes against stays
        d = np.zeros(k)
        if free.any():
            w, U = np.linalg.eigh(H[np.ix_(free, free)])
            w = np.maximum(w, 1e-8 * max(float(np.max(np.abs(w))), 1e-300))
            d[free] = -(U @ ((U.T @ g[free]) / w))
        t = 1.0
        while True:
            x_new = np.maximum(x + t * d, lower)
            f_new, g_new, se = call(x_new)
            if (math.isfinite(f_new) and f_new <= f + 1e-12 * abs(f) + 1e-3 * se) or \
                    count[0] >= maxeval:
                break
            t *= 0.5
        step = x_new - x
        yv = g_new - g
        if not math.isfinite(f_new):
            break
        if step @ yv > 0:  # BFGS update
            Hs = H @ step
            H = H - np.outer(Hs, Hs) / (step @ Hs) + np.outer(yv, yv) / (step @ yv)
        x, f, g = x_new, f_new, g_new
        if np.all(np.abs(step) <= xtol * np.maximum(np.abs(x), 1e-2)):
            msg, converged = f"steps below xtol {xtol:g}", True
            break
    pg = projected_gradient(g, x, lower)
    return x, OptSummary(optimizer=name, settings=settings, x0=[float(v) for v in x0],
                         x=[float(v) for v in x], fmin=float(f), feval=count[0],
                         geval=count[0], message=msg, converged=converged,
                         gradient=g.tolist(), gradient_norm=float(np.max(np.abs(pg))),
                         code=0 if converged else 1), H

