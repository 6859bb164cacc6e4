"""Profile-likelihood intervals, as lme4's ``confint(fit, method = "profile")``.

lme4 profiles the **ML** deviance (a REML fit is refitted by ML first): for a covariance
parameter on the sd/cor scale (``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``,
``sigma``) it fixes that parameter and minimises the deviance over the others (lme4's
``devfun2``); for a fixed effect it fixes the coefficient (as an offset) and minimises over
``theta``. The signed square root of the deviance increase is ``zeta``; the interval is where
``zeta`` crosses ``-/+ qnorm((1 + level) / 2)``.

lme4 steps along each profile (``nextpar``: steps of about ``cutoff / 8`` in ``zeta`` until
``|zeta|`` passes ``cutoff = sqrt(qchisq(0.99, number of parameters))``) and reads the limits
from a spline through the points (:mod:`daskmm.kernels.profile_spline`). We take the same
steps and the same spline, so the limits are lme4's; the spline's own interpolation error (up
to ~2e-4 relative on Dyestuff's ``sd_(Intercept)|Batch``) is part of lme4's answer. Every point
is one constrained refit on the fit's statistics; with a cluster each parameter is one task.

For a fixed effect the constrained deviance needs no new statistics: with ``beta_j = b`` the
penalised residual sum of squares is ``pwrss(theta) + (b - beta_j(theta))^2 / V_jj(theta)``,
``V = (R_X' R_X)^{-1}``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from daskmm.errors import ModelError
from daskmm.events import emit, muted
from daskmm.kernels.pls import inverse_factor
from daskmm.kernels.profile_spline import back_spline_predict, next_par
from daskmm.kernels.varpar import hessian_se, richardson_hessian, sdcor_names, theta_to_sdcor
from daskmm.models.lmm.criterion import Problem, objective, optimise
from daskmm.models.lmm.inference.deviance import Deviance, blas_threads, offset_problem

log = logging.getLogger("daskmm")

ALPHAMAX = 0.01
"""lme4's ``alphamax``: profiles extend to ``zeta = sqrt(qchisq(1 - alphamax, npar))``."""
FTOL = 1e-13
"""Relative change of the deviance at which a constrained refit stops (1e-10 absolute at a
deviance of 1000: ``zeta`` to about 1e-8 at the cutoff)."""
DEVTOL = 1e-9
"""lme4's ``devtol``: a deviance this far below the fit's is rounding, not a better fit."""


@dataclass
class ProfileTrace:
    """One parameter's profile: the points evaluated and the interval found.

    Attributes
    ----------
    parameter : str
        lme4's name (``oldNames = FALSE``).
    estimate : float
        The ML estimate.
    x, zeta : ndarray
        Parameter values evaluated and their signed root deviance, sorted by ``x``.
    lower, upper : float
        The interval's limits (a bound of the parameter where the profile does not reach the
        cutoff there, as lme4).
    """

    parameter: str
    estimate: float
    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    zeta: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lower: float = np.nan
    upper: float = np.nan


@dataclass
class MLPoint:
    """The ML optimum of a fitted problem: what every profile starts from."""

    theta: np.ndarray
    sigma: float
    beta: np.ndarray
    deviance: float
    sdcor: np.ndarray
    se_beta: np.ndarray
    se_sdcor: np.ndarray


def ml_point(prob: Problem, theta_start: np.ndarray) -> MLPoint:
    """Refit by ML (lme4's ``refitML``) from ``theta_start`` and take the quadratic
    approximation's standard errors (for the first profile steps)."""
    theta, _ = optimise(prob, reml=False, x0=theta_start)
    dev = Deviance(prob)
    prof = dev.at(theta)
    sigma = prof.sigma(False)
    beta = prof.beta()
    Linv = inverse_factor(prof.L_XX)
    se_beta = sigma * np.sqrt(np.sum(Linv ** 2, axis=0))
    sdcor = theta_to_sdcor(dev.terms, theta, sigma)
    H = richardson_hessian(dev.sdcor, sdcor, d=1e-3, r=2)
    se_sdcor = hessian_se(H)
    se_sdcor = np.where(np.isfinite(se_sdcor) & (se_sdcor > 0), se_sdcor,
                        np.maximum(np.abs(sdcor), 1.0) * 0.1)
    return MLPoint(theta, sigma, beta, prof.objective, sdcor, se_beta, se_sdcor)


def parameter_names(prob: Problem, fixef_names: list[str]) -> list[str]:
    """Profiled parameters in lme4's order: covariance parameters, ``sigma``, fixed effects."""
    return sdcor_names(list(prob.spec.terms), _groups(prob)) + list(fixef_names)


def _groups(prob: Problem) -> list[str]:
    return [t.factor for t in prob.spec.terms]


def bounds(prob: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the sd/cor parameters and ``sigma``: ``[0, inf)``, ``[-1, 1]``, ``(0, inf)``."""
    lo, hi = [], []
    for t in prob.spec.terms:
        r, c = t.tril_index()
        for i, j in zip(r, c):
            lo.append(0.0 if i == j else -1.0)
            hi.append(np.inf if i == j else 1.0)
    return np.array(lo + [0.0]), np.array(hi + [np.inf])


class _Side:
    """Root finding for one side of one parameter: ``zeta(x) = target``."""

    def __init__(self, prob: Problem, ml: MLPoint, index: int, n_var: int,
                 name: str | None = None):
        self.prob, self.ml, self.index, self.n_var = prob, ml, index, n_var
        self.name = name  # given: each point is reported (a profile in this process)
        self.dev = Deviance(prob)
        self.points: list[tuple[float, float]] = []
        self.starts: list[tuple[float, np.ndarray]] = []
        self.lo, self.hi = bounds(prob)

    # ------------------------------------------------------------- constrained deviance
    def constrained(self, x: float) -> float:
        """Minimum ML deviance with the parameter fixed at ``x``."""
        start = self._start(x)
        if self.index < self.n_var:
            val, arg = self._fix_varpar(x, start)
        else:
            val, arg = self._fix_beta(x, start)
        self.starts.append((x, arg))
        return val

    def _start(self, x: float) -> np.ndarray:
        if not self.starts:
            if self.index < self.n_var:
                return np.delete(self.ml.sdcor, self.index)
            return self.ml.theta.copy()
        # lme4 starts from the previous point; we extrapolate along the last two (same side)
        ranked = sorted(self.starts, key=lambda s: abs(s[0] - x))
        (x1, a1) = ranked[0]
        same = [s for s in ranked[1:] if (s[0] - x1) * (x - x1) < 0]
        if same and x != x1:
            x0, a0 = same[0]
            if x0 != x1:
                guess = a1 + (a1 - a0) * (x - x1) / (x1 - x0)
                return guess
        return a1.copy()

    def _fix_varpar(self, x: float, start: np.ndarray) -> tuple[float, np.ndarray]:
        w = self.index
        lo, hi = np.delete(self.lo, w), np.delete(self.hi, w)
        scale = np.where(np.isfinite(hi), 1.0,
                         np.maximum(np.delete(np.abs(self.ml.sdcor), w), 1e-3 * self.ml.sigma))

        def fg(z):
            v, g = self.dev.sdcor_grad(np.insert(z * scale, w, x))
            return v, np.delete(g, w) * scale

        z0 = np.clip(start / scale, lo / scale, hi / scale)
        val, z = _minimise(fg, z0, lo / scale, hi / scale)
        return val, z * scale

    def _fix_beta(self, b: float, start: np.ndarray) -> tuple[float, np.ndarray]:
        sub = offset_problem(self.prob, self.index - self.n_var, b)
        theta, _ = optimise(sub, reml=False, options={"method": "bobyqa"}, x0=start,
                            certify=False)
        self.dev.calls += 1
        prof, _ = objective(sub, theta, False)
        return float(prof.objective), theta

    # ------------------------------------------------------------- zeta and lme4's path
    def zeta(self, x: float) -> float:
        d = self.constrained(x) - self.ml.deviance
        if self.index < self.n_var:
            if d < -DEVTOL:
                raise ModelError(f"profiling {self.index}: found a deviance {-d:.3g} below the "
                                 "fit's; the fit had not converged (refit, then profile)")
            d = d if d > 0 else DEVTOL
        z = float(np.sign(x - self.estimate) * np.sqrt(max(d, 0.0)))
        self.points.append((x, z))
        if self.name is not None:
            emit("profile_point", parameter=self.name, points=len(self.points))
        return z

    @property
    def estimate(self) -> float:
        if self.index < self.n_var:
            return float(self.ml.sdcor[self.index])
        return float(self.ml.beta[self.index - self.n_var])

    def limits(self) -> tuple[float, float]:
        if self.index < self.n_var:
            return float(self.lo[self.index]), float(self.hi[self.index])
        return -np.inf, np.inf

    def path(self, cutoff: float, maxpts: int = 100) -> None:
        """lme4's ``profile.merMod`` points for this parameter: a first step (``1.01`` times
        the estimate, ``1e-3`` from zero; ``delta`` standard errors for a fixed effect), then
        ``fillmat`` in both directions."""
        delta = cutoff / 8
        est = self.estimate
        lowcut, upcut = self.limits()
        if self.index < self.n_var:
            shift = 1e-3 if est == 0 else est * 1.01
        else:
            shift = est + delta * float(self.ml.se_beta[self.index - self.n_var])
        zs = self.zeta(shift)
        self._fill([(est, 0.0), (shift, zs)], lowcut, upcut, cutoff, delta, maxpts)
        if self.index >= self.n_var or est > lowcut:
            self._fill([(shift, zs), (est, 0.0)], lowcut, upcut, cutoff, delta, maxpts)

    def _fill(self, rows, lowcut, upcut, cutoff, delta, maxpts) -> None:
        while (len(rows) < maxpts and lowcut < rows[-1][0] < upcut
               and np.isfinite(rows[-1][1]) and abs(rows[-1][1]) <= cutoff):
            x = next_par(rows[-2][0], rows[-2][1], rows[-1][0], rows[-1][1], delta, lowcut,
                         upcut)
            rows.append((x, self.zeta(x)))


def _minimise(fg, x0, lo, hi) -> tuple[float, np.ndarray]:
    """Bounded minimisation with the exact gradient (L-BFGS-B)."""
    if len(x0) == 0:
        return float(fg(x0)[0]), x0
    bnds = [(None if not np.isfinite(a) else a, None if not np.isfinite(b) else b)
            for a, b in zip(lo, hi)]
    res = optimize.minimize(fg, x0, jac=True, method="L-BFGS-B", bounds=bnds,
                            options={"ftol": FTOL, "gtol": 1e-9, "maxiter": 500})
    return float(res.fun), np.asarray(res.x)


def profile_parameter(prob: Problem, ml: MLPoint, index: int, cutoff: float,
                      name: str | None = None) -> list[tuple[float, float]]:
    """One parameter's profile (a task): lme4's points ``(value, zeta)``; with ``name`` (in
    this process, not in a task) each point is reported as a ``profile_point`` event."""
    side = _Side(prob, ml, index, len(ml.sdcor), name)
    side.path(cutoff)
    return side.points


def profile_intervals(prob: Problem, theta_start: np.ndarray, fixef_names: list[str],
                      level: float = 0.95, client=None) -> list[ProfileTrace]:
    """Profile-likelihood intervals for every covariance parameter, ``sigma`` and every fixed
    effect, in lme4's order and names.

    Parameters
    ----------
    prob : daskmm.models.lmm.fit.Problem
    theta_start : ndarray
        Where the ML refit starts (the fit's ``theta``).
    fixef_names : list of str
    level : float
    client : distributed.Client, optional
        With a client (and statistics held on the client), each side of each parameter is one
        task on the workers.
    """
    from scipy import stats

    if not 0 < level < 1:
        raise ModelError(f"level={level!r}; a confidence level is between 0 and 1 "
                         "(e.g. 0.95)")
    with blas_threads(prob):
        ml = ml_point(prob, theta_start)
    names = parameter_names(prob, fixef_names)
    cutoff = float(np.sqrt(stats.chi2.ppf(1 - ALPHAMAX, len(names))))
    a = (1 - level) / 2
    targets = stats.norm.ppf([a, 1 - a])
    lo, hi = bounds(prob)
    todo = list(range(len(names)))
    results: dict[int, list[tuple[float, float]]] = {}

    def finished(i: int) -> None:
        emit("profile", parameter=names[i], done=len(results), total=len(names),
             points=len(results[i]))
    emit("profile_start", total=len(names))
    if client is not None and prob.evaluator.mode != "distributed":
        from distributed import as_completed
        pf = client.scatter(prob, broadcast=True)
        tok = uuid.uuid4().hex[:8]
        futs = [client.submit(profile_parameter, pf, ml, i, cutoff, pure=False,
                              key=f"daskmm-profile-{tok}-{i}") for i in todo]
        index = {f.key: i for f, i in zip(futs, todo)}
        for fut in as_completed(futs, loop=client.loop):  # counted here, as each task ends
            i = index[fut.key]
            results[i] = fut.result()
            finished(i)
    else:
        with blas_threads(prob), muted("evaluation"):
            for i in todo:
                results[i] = profile_parameter(prob, ml, i, cutoff, names[i])
                finished(i)
    out = []
    for i, name in enumerate(names):
        est = float(ml.sdcor[i]) if i < len(ml.sdcor) else float(ml.beta[i - len(ml.sdcor)])
        pts = sorted(set([(est, 0.0)] + results[i]))
        tr = ProfileTrace(name, est, np.array([p[0] for p in pts]),
                          np.array([p[1] for p in pts]))
        lim = back_spline_predict(tr.x, tr.zeta, targets)
        if i < len(ml.sdcor):
            bound_lo, bound_hi = lo[i], hi[i]
        else:
            bound_lo, bound_hi = -np.inf, np.inf
        tr.lower = float(lim[0]) if np.isfinite(lim[0]) else float(bound_lo)
        tr.upper = float(lim[1]) if np.isfinite(lim[1]) else float(bound_hi)
        out.append(tr)
    return out
