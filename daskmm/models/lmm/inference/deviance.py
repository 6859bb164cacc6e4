"""The deviance and ``vcov(beta)`` as functions of the variance parameters, on a fitted
problem's statistics (one evaluation of the profiled criterion each)."""

from __future__ import annotations

import dataclasses

import numpy as np

from daskmm.core.threads import SMALL_K, one_blas_thread
from daskmm.distributed.evaluator import GatheredEvaluator
from daskmm.errors import ModelError
from daskmm.kernels.pls import inverse_factor
from daskmm.kernels.stats import LevelGroup, PartitionStats
from daskmm.kernels.varpar import deviance_vp, sdcor_to_theta
from daskmm.models.lmm.criterion import Problem, objective, objective_parts


def blas_threads(prob: Problem):
    """A context limiting BLAS to one thread for a small problem (see :data:`SMALL_K`),
    a no-op otherwise."""
    return one_blas_thread(prob.layout.k <= SMALL_K)


class Deviance:
    """Evaluate a fitted problem at any ``theta``: its profile pieces, lmerTest's
    ``devfun_vp`` at ``(theta, sigma)``, lme4's ``devfun2`` at the sd/cor scale, and
    ``vcov(beta)``.

    Parameters
    ----------
    prob : daskmm.models.lmm.fit.Problem
        The fit's problem (spec, layout, statistics, evaluator).
    """

    def __init__(self, prob: Problem):
        self.prob = prob
        self.terms = list(prob.spec.terms)
        self.n = prob.n
        self.p = prob.layout.p
        self.calls = 0

    def at(self, theta: np.ndarray):
        """The stage-2 :class:`~daskmm.kernels.pls.Profile` at ``theta`` (ML pieces; REML
        adds ``ldRX2``)."""
        self.calls += 1
        prof, _ = objective(self.prob, np.asarray(theta, dtype=float), False)
        return prof

    def vp(self, varpar: np.ndarray, reml: bool) -> float:
        """lmerTest's ``devfun_vp`` at ``varpar = (theta, sigma)``."""
        prof = self.at(varpar[:-1])
        if not np.isfinite(prof.objective):
            return np.inf
        return deviance_vp(prof.ldL2 - self.prob.sum_log_w, prof.pwrss, prof.ldRX2,
                           float(varpar[-1]), self.n, self.p, reml)

    def sdcor(self, sdcor: np.ndarray) -> float:
        """lme4's ``devfun2``: the ML deviance at standard deviations, correlations and
        ``sigma`` (``inf`` where they make no covariance matrix)."""
        theta = sdcor_to_theta(self.terms, sdcor)
        if theta is None:
            return np.inf
        return self.vp(np.append(theta, sdcor[-1]), reml=False)

    def sdcor_grad(self, sdcor: np.ndarray) -> tuple[float, np.ndarray]:
        """:meth:`sdcor` and its exact gradient: the derivatives of ``log|L_Z|^2`` and
        ``pwrss`` along ``theta`` (:func:`daskmm.models.lmm.fit.objective_parts`), then the chain
        rule through ``theta(sd, cor, sigma)`` (differenced: it is a few small Cholesky
        factors)."""
        sdcor = np.asarray(sdcor, dtype=float)
        theta = sdcor_to_theta(self.terms, sdcor)
        if theta is None:
            return np.inf, np.full(len(sdcor), np.nan)
        self.calls += 1
        prof, parts = objective_parts(self.prob, theta)
        if parts is None:
            return np.inf, np.full(len(sdcor), np.nan)
        sigma = float(sdcor[-1])
        s2 = sigma ** 2
        dev = deviance_vp(prof.ldL2 - self.prob.sum_log_w, prof.pwrss, prof.ldRX2, sigma,
                          self.n, self.p, False)
        d_theta = parts[:, 0] + prof.pwrss / s2 * parts[:, 2]
        d_sigma = -2 * prof.pwrss / (s2 * sigma) + 2 * self.n / sigma
        J = self._theta_jacobian(sdcor, theta)
        grad = J.T @ d_theta
        grad[-1] += d_sigma
        return dev, grad

    def _theta_jacobian(self, sdcor: np.ndarray, theta: np.ndarray) -> np.ndarray:
        k = len(sdcor)
        J = np.empty((len(theta), k))
        for i in range(k):
            h = 1e-7 * max(abs(sdcor[i]), 1e-3)
            up, dn = sdcor.copy(), sdcor.copy()
            up[i] += h
            dn[i] -= h
            tu, td = sdcor_to_theta(self.terms, up), sdcor_to_theta(self.terms, dn)
            if tu is not None and td is not None:
                J[:, i] = (tu - td) / (2 * h)
            elif tu is not None:
                J[:, i] = (tu - theta) / h
            elif td is not None:
                J[:, i] = (theta - td) / h
            else:
                J[:, i] = 0.0
        return J

    def covbeta(self, varpar: np.ndarray) -> np.ndarray:
        """``vcov(beta) = sigma^2 (R_X' R_X)^{-1}`` at ``varpar`` (lmerTest's ``get_covbeta``)."""
        prof = self.at(varpar[:-1])
        Linv = inverse_factor(prof.L_XX)
        return float(varpar[-1]) ** 2 * Linv.T @ Linv


def offset_problem(prob: Problem, j: int, b: float) -> Problem:
    """The problem with fixed effect ``j`` held at ``b``: its column leaves ``X`` and
    ``b x_j`` leaves the response (lme4 profiles a fixed effect as an offset). Every
    cross-product of the new design is a linear combination of the old ones, so this is a
    transformation of the statistics, not a pass over the rows."""
    ev = prob.evaluator
    if not isinstance(ev, GatheredEvaluator):
        raise ModelError("profiling a fixed effect transforms the statistics, which this fit "
                         "kept on the workers (mode='distributed'); fit with mode='gathered'")
    lay = prob.layout
    xj = lay.n_G + j
    k = lay.k
    keep = np.array([c for c in range(k) if c != xj])

    def cols(M: np.ndarray, axis: int) -> np.ndarray:
        out = np.take(M, keep, axis=axis)
        idx = [slice(None)] * M.ndim
        idx[axis] = -1
        out[tuple(idx)] = np.take(M, k - 1, axis=axis) - b * np.take(M, xj, axis=axis)
        return out

    groups = [LevelGroup(g.composition, g.levels, g.nested_levels, g.A, cols(g.B, 1))
              for g in ev.stats.groups]
    G = cols(cols(prob.G, 0), 1)
    st = ev.stats
    stats_ = PartitionStats(groups, G, st.n, st.sum_log_w, st.n_dropped)
    layout = dataclasses.replace(lay, p=lay.p - 1)
    return dataclasses.replace(prob, layout=layout,
                               evaluator=GatheredEvaluator(stats_, layout, mode=ev.mode), G=G)
