"""Denominator degrees of freedom for fixed-effect tests: Satterthwaite's method as lmerTest.

lmerTest takes the Hessian of the deviance in ``varpar = (theta, sigma)`` (REML or ML as the
fit), ``A = 2 H^+`` as the covariance of ``varpar``, and the Jacobian of ``vcov(beta)`` in
``varpar``; a contrast ``L'beta`` then has ``df = 2 (L'VL)^2 / (g'Ag)``, ``g_i = L' J_i L``.
lmerTest differentiates numerically (numDeriv); so do we, with Richardson-extrapolated central
differences, each point one evaluation of the profiled criterion on the fit's statistics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from daskmm.inference.deviance import Deviance, blas_threads
from daskmm.kernels.varpar import (
    pinv_sym,
    richardson_hessian,
    richardson_jacobian,
    satterthwaite,
    satterthwaite_f,
)

log = logging.getLogger("daskmm")

DDF_METHODS = ("satterthwaite", "kenward-roger")


@dataclass
class VarparCov:
    """What Satterthwaite's method needs, computed once per fit.

    Attributes
    ----------
    varpar : ndarray
        ``(theta, sigma)`` at the optimum.
    hessian : ndarray
        Hessian of the deviance in ``varpar``.
    A : ndarray
        Asymptotic covariance of ``varpar`` (``2 H^+``).
    vcov : ndarray
        ``vcov(beta)``.
    jac : ndarray, shape (p, p, len(varpar))
        Derivatives of ``vcov(beta)``.
    warnings : list of str
        lmerTest's convergence warnings (negative or near-zero Hessian eigenvalues).
    """

    varpar: np.ndarray
    hessian: np.ndarray
    A: np.ndarray
    vcov: np.ndarray
    jac: np.ndarray
    warnings: list[str] = field(default_factory=list)


def varpar_cov(dev: Deviance, theta: np.ndarray, sigma: float, reml: bool,
               tol: float = 1e-8) -> VarparCov:
    """Hessian of lmerTest's ``devfun_vp`` and Jacobian of ``vcov(beta)`` at the optimum."""
    varpar = np.append(np.asarray(theta, dtype=float), sigma)
    with blas_threads(dev.prob):
        H = richardson_hessian(lambda v: dev.vp(v, reml), varpar)
        jac = richardson_jacobian(dev.covbeta, varpar)
    Hinv, w = pinv_sym(H, tol)
    warnings = []
    neg = w < -tol
    if np.any(neg):
        vals = " ".join(f"{v:.1e}" for v in w[neg])
        warnings.append(f"Model failed to converge with {int(neg.sum())} negative "
                        f"eigenvalue(s): {vals}")
    near = (w > -tol) & (w < tol)
    if np.any(near):
        vals = " ".join(f"{v:.1e}" for v in w[near])
        warnings.append(f"Model may not have converged with {int(near.sum())} eigenvalue(s) "
                        f"close to zero: {vals}")
    for msg in warnings:
        log.warning(msg)
    return VarparCov(varpar, H, 2 * Hinv, dev.covbeta(varpar), jac, warnings)


def coef_tests(names: list[str], beta: np.ndarray, info: VarparCov) -> pd.DataFrame:
    """lmerTest's coefficient table: ``term, estimate, std_error, df, statistic, p_value``
    (t tests with Satterthwaite's df)."""
    rows = []
    for j, name in enumerate(names):
        e = np.zeros(len(beta))
        e[j] = 1.0
        v, df = satterthwaite(e, info.vcov, info.jac, info.A)
        se = np.sqrt(v)
        t = beta[j] / se
        rows.append((name, beta[j], se, df, t, float(2 * stats.t.sf(abs(t), df))))
    return pd.DataFrame(rows, columns=["term", "estimate", "std_error", "df", "statistic",
                                       "p_value"])


def f_test(L: np.ndarray, beta: np.ndarray, info: VarparCov) -> dict:
    """F test of ``L beta = 0`` (lmerTest's ``contestMD``): ``F, ndf, ddf, p_value``."""
    F, ndf, ddf = satterthwaite_f(L, beta, info.vcov, info.jac, info.A,
                                  tol=np.sqrt(np.finfo(float).eps))
    return {"F": F, "ndf": ndf, "ddf": ddf, "p_value": float(stats.f.sf(F, ndf, ddf))}
