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
from daskmm.kernels.crossed_iter import (
    CrossedStats,
    IterativeCriterion,
    Reduced,
    criterion,
    deflation_basis,
)


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
                probes: int = 10, steps: int = 20, deflate: int = 10, seed: int = 0,
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
    opts = {"polish": False, **(options or {})}
    # the deflation basis is made once, at the start, and kept: the criterion stays one
    # smooth function of theta, and eigsh runs once (a basis made again at the optimum
    # for a second run cost more evaluations than it saved: 75 against 54 at 10^6 rows)
    basis = _basis(st, x0, deflate, seed) if deflate else None

    def f(theta: np.ndarray) -> float:
        return criterion(st, theta, reml, probes, steps, seed, basis=basis).objective

    theta, opt = minimize(x0, np.zeros(k), f=f, options=opts, mode="in-process, matrix-free")
    at: IterativeCriterion = criterion(st, theta, reml, probes, steps, seed, basis=basis)
    dof = st.n - st.XtX.shape[0] if reml else st.n
    return IterativeFit(theta, at.beta, math.sqrt(at.r2 / dof), at.objective, at.se, opt)


def _basis(st: CrossedStats, theta: np.ndarray, k: int, seed: int) -> np.ndarray:
    red = Reduced.of(st, st.lam(theta))
    return deflation_basis(red.schur, red.schur_diag(), k, seed)
