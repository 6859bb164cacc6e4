"""Fitting crossed scalar random effects by the matrix-free criterion
(:mod:`daskmm.kernels.crossed_iter`): BOBYQA over ``theta`` on the criterion with its probes
fixed by a seed, so that the optimiser sees one smooth deterministic function; the optimum's
criterion is reported with its standard error (issue 31's iterative path; not yet wired into
:func:`daskmm.lmm`, which chooses the exact paths)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from daskmm.core.optimizer import OptSummary, minimize
from daskmm.kernels.crossed_iter import CrossedStats, IterativeCriterion, criterion


@dataclass(frozen=True)
class IterativeFit:
    """An iterative fit.

    Attributes
    ----------
    theta : numpy.ndarray
        One relative standard deviation per factor, in the order of the statistics' blocks.
    beta : numpy.ndarray
    sigma : float
        lme4's ``sigma``: ``sqrt(r2 / (n - p))`` (REML) or ``sqrt(r2 / n)`` (ML).
    objective, se : float
        The criterion at ``theta`` and the standard error of its estimate.
    opt : OptSummary
    """

    theta: np.ndarray
    beta: np.ndarray
    sigma: float
    objective: float
    se: float
    opt: OptSummary


def fit_crossed(st: CrossedStats, reml: bool = True, theta0: np.ndarray | None = None,
                probes: int = 20, steps: int = 30, deflate: int = 10, seed: int = 0,
                options: dict | None = None) -> IterativeFit:
    """Minimise the matrix-free REML (``reml``) or ML criterion over ``theta >= 0``.

    Parameters
    ----------
    st : CrossedStats
        The cross-products (the factor with most levels first).
    reml : bool
    theta0 : ndarray, optional
        The start (lme4's: ones).
    probes, steps, deflate, seed
        The log determinant's estimator (:func:`daskmm.kernels.crossed_iter.slq_logdet`);
        the same probes at every evaluation.
    options : dict, optional
        The optimiser's (:data:`daskmm.core.optimizer.DEFAULTS`).

    Returns
    -------
    IterativeFit
    """
    k = len(st.sizes)
    x0 = np.ones(k) if theta0 is None else np.asarray(theta0, float)

    def f(theta: np.ndarray) -> float:
        return criterion(st, theta, reml, probes, steps, seed, deflate=deflate).objective

    theta, opt = minimize(x0, np.zeros(k), f=f, options={"polish": False, **(options or {})},
                          mode="in-process, matrix-free")
    at: IterativeCriterion = criterion(st, theta, reml, probes, steps, seed, deflate=deflate)
    dof = st.n - st.XtX.shape[0] if reml else st.n
    return IterativeFit(theta, at.beta, math.sqrt(at.r2 / dof), at.objective, at.se, opt)
