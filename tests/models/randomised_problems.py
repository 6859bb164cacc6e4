"""Simulated mixed-model problems over the shapes real data have, and a multi-start
reference optimum for each (issue 29's randomised optimum check): used by
tests/models/test_randomised_optimum.py (every 29th) and
benchmarks/randomised_optimum.py (all 300).

Shapes, by seed: LMM, binomial or Poisson; one intercept, a correlated slope ``(z | g)``, an
uncorrelated one ``(z || g)``, nested ``(1 | g/h)`` or crossed ``(1 | g) + (1 | h)``; 5 to 24
groups of unbalanced sizes (Poisson sizes, some levels of one row); random-effect standard
deviations 0, 0.1, 1 or 3; a fixed-effect covariate ``x`` centred or not (mean 0, 50 or 1000)
and of standard deviation 0.01, 1 or 100; the slope covariate ``z`` centred, unit scale.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize

import daskmm
from daskmm.models.lmm.criterion import objective, objective_grad

STRUCTURES = ["(1 | g)", "(z | g)", "(z || g)", "(1 | g/h)", "(1 | g) + (1 | h)"]
KINDS = ["lmm", "lmm", "binomial", "poisson"]


def problem(seed: int) -> tuple[str, str, pd.DataFrame, dict]:
    """``(kind, formula, data, shape)`` of problem ``seed``."""
    rng = np.random.default_rng(seed)
    kind = KINDS[seed % 4]
    struct = STRUCTURES[(seed // 4) % len(STRUCTURES)]
    G, H = int(rng.integers(5, 25)), int(rng.integers(3, 8))
    sizes = rng.poisson(rng.choice([3, 8, 15]), G) + 1
    g = np.repeat(np.arange(G), sizes)
    n = len(g)
    h = rng.integers(0, H, n)
    off, sc = float(rng.choice([0.0, 50.0, 1000.0])), float(rng.choice([1.0, 0.01, 100.0]))
    xz, z = rng.normal(size=n), rng.normal(size=n)
    sd = float(rng.choice([0.0, 0.1, 1.0, 3.0]))
    b0, b1 = rng.normal(size=G) * sd, rng.normal(size=G) * sd * 0.5
    bh = rng.normal(size=G * H) * sd
    eta = 0.3 + 0.5 * xz + 0.3 * z + b0[g]
    if "z" in struct:
        eta = eta + b1[g] * z
    if "h" in struct:
        eta = eta + (bh[g * H + h] if "/" in struct else bh[h])
    if kind == "lmm":
        y = eta + rng.normal(size=n)
    elif kind == "binomial":
        y = rng.binomial(1, 1 / (1 + np.exp(-(eta - 0.3)))).astype(float)
    else:
        y = rng.poisson(np.exp(np.clip(0.5 * eta, -5, 5))).astype(float)
    df = pd.DataFrame({"y": y, "x": off + sc * xz, "z": z, "g": [f"g{i}" for i in g],
                       "h": [f"h{i}" for i in h]})
    return kind, f"y ~ x + z + {struct}", df, {"offset": off, "scale": sc, "sd": sd}


def fit(kind: str, formula: str, df: pd.DataFrame, **kw):
    if kind == "lmm":
        return daskmm.lmm(formula, df, mode="in-process", **kw)
    return daskmm.glmm(formula, df, kind, mode="in-process", **kw)


def reference(kind: str, formula: str, df: pd.DataFrame, fitted) -> float:
    """The lowest criterion a tight multi-start search finds. LMM: SciPy's L-BFGS-B on the
    exact gradient of daskmm's profiled criterion from lme4's start, the fit's optimum and
    four other starts, Nelder-Mead from the best of them (independent of daskmm's optimiser).
    GLMM:
    the fit again with NLopt's BOBYQA and Nelder-Mead at tolerances 1e-13 (criterion) and
    1e-11 (parameters)."""
    if kind != "lmm":
        best = fitted.objective
        for m in ("bobyqa", "neldermead"):
            try:
                r = fit(kind, formula, df, optimizer_options={"method": m, "ftol_abs": 1e-13,
                                                              "xtol_abs": 1e-11})
            except Exception:  # noqa: BLE001 - a start that fails is no reference
                continue
            best = min(best, r.objective)
        return best
    prob, reml = fitted.problem, fitted.reml
    lower = np.concatenate([t.theta_lower() for t in prob.spec.terms])
    init = np.concatenate([t.theta_init() for t in prob.spec.terms])
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]

    def f(t):
        return objective(prob, np.maximum(t, lower), reml)[0].objective

    def fg(t):
        return objective_grad(prob, np.maximum(t, lower), reml)

    rng = np.random.default_rng(0)
    starts = [init, np.asarray(fitted.theta, float), init * 0.1 + 0.01 * (lower == 0),
              init * 3]
    starts += [np.where(lower == 0, np.abs(rng.normal(size=len(init))),
                        rng.normal(size=len(init))) for _ in range(2)]
    best, x = np.inf, None
    for s in starts:
        r = minimize(fg, s, jac=True, method="L-BFGS-B", bounds=bounds,
                     options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 5000})
        if r.fun < best:
            best, x = float(r.fun), r.x
    r = minimize(f, x, method="Nelder-Mead",
                 options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 3000})
    return min(best, f(r.x))


def gap(kind: str, formula: str, df: pd.DataFrame) -> tuple[float, object]:
    """``(relative gap of the fit's criterion above the reference, the fit)``."""
    fitted = fit(kind, formula, df)
    ref = reference(kind, formula, df, fitted)
    return (fitted.objective - ref) / max(1.0, abs(ref)), fitted
