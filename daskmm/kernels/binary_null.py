"""The logistic mixed null model of a binary-trait scan, as SAIGE's step 1 fits it (issue 32;
pure numpy/scipy, dense: the exact mode's relationship matrix).

``logit P(y_i = 1) = x_i'alpha + b_i``, ``b ~ N(0, tau K)``, by penalised quasi-likelihood: the
working response ``Y = eta + (y - mu) / W`` (``W = mu (1 - mu)``) is a linear mixed model with
covariance ``Sigma = W^-1 + tau K``; each step takes, at the current ``tau``, ``alpha`` by
generalised least squares, ``eta = Y - W^-1 P Y`` (``P`` as :mod:`daskmm.kernels.binary_score`),
and ``tau`` by an average-information REML step,

    tau += (Y'PKPY - tr(PK)) / (Y'PKPKPY),

halved while it would go negative, after one fixed-point step ``tau += tau^2 (Y'PKPY -
tr(PK)) / n`` from ``var(Y) / mean(diag K)`` (GMMAT's ``glmmkin.ai``, which SAIGE's
``fitNULLGLMM`` follows with conjugate gradients in place of the dense solves). It stops when
``alpha`` and ``tau`` move by less than ``tol`` relative. PQL, not Laplace, so that the null
and the score test's ``P`` are SAIGE's: users compare their p-values with SAIGE's
(tests/fixtures/gwas/make_binary_null.R transcribes the same steps in R).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
from scipy import special

from daskmm.errors import FitError


@dataclass(frozen=True)
class BinaryNull:
    """A fitted null (:func:`pql_ai_reml`).

    Attributes
    ----------
    tau : float
        The relationship matrix's variance (0 on its bound).
    alpha : numpy.ndarray
        The covariates' coefficients.
    eta, mu : numpy.ndarray
        The linear predictor (random effect included) and fitted probabilities.
    iterations : int
    """

    tau: float
    alpha: np.ndarray
    eta: np.ndarray
    mu: np.ndarray
    iterations: int


def logistic_glm(y: np.ndarray, X: np.ndarray, tol: float = 1e-14, maxiter: int = 100
                 ) -> np.ndarray:
    """The coefficients of the logistic regression of ``y`` on ``X``, by iteratively
    reweighted least squares (glm's, to ``tol`` in the deviance's relative change): the
    null's start, and the null itself where ``tau`` is on its bound."""
    alpha = np.zeros(X.shape[1])
    dev_old = np.inf
    for _ in range(maxiter):
        eta = X @ alpha
        mu = special.expit(eta)
        w = mu * (1.0 - mu)
        z = eta + (y - mu) / w
        alpha = la.solve(X.T @ (w[:, None] * X), X.T @ (w * z), assume_a="pos")
        eta = X @ alpha
        dev = -2.0 * float(np.sum(y * eta - np.logaddexp(0.0, eta)))
        if abs(dev - dev_old) <= tol * (abs(dev) + 0.1):
            break
        dev_old = dev
    return alpha


def _step(Y: np.ndarray, W: np.ndarray, tau: float, X: np.ndarray, K: np.ndarray) -> tuple:
    """``(alpha, eta, Y'PKPY, tr(PK), Y'PKPKPY)`` at ``tau`` (GMMAT's ``fitglmm_ai``)."""
    Sigma = tau * K
    Sigma[np.diag_indices_from(Sigma)] += 1.0 / W
    c = la.cho_factor(Sigma, lower=True)
    SiX = la.cho_solve(c, X)
    cov = la.inv(X.T @ SiX)
    alpha = cov @ (SiX.T @ Y)
    PY = la.cho_solve(c, Y - X @ alpha)
    KPY = K @ PY
    PKPY = la.cho_solve(c, KPY) - SiX @ (cov @ (SiX.T @ KPY))
    SiK = la.cho_solve(c, K)
    trace = float(np.trace(SiK) - np.sum(cov * (SiX.T @ K @ SiX)))
    return alpha, Y - PY / W, float(PY @ KPY), trace, float(KPY @ PKPY)


def pql_ai_reml(y: np.ndarray, X: np.ndarray, K: np.ndarray, tol: float = 1e-10,
                maxiter: int = 500) -> BinaryNull:
    """Fit the null (module docstring) of the 0/1 trait ``y`` on covariates ``X`` (the
    intercept included) with the relationship matrix ``K`` (dense, ``n x n``)."""
    y, X, K = np.asarray(y, float), np.asarray(X, float), np.asarray(K, float)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y: a binary trait, 0 or 1 for every sample")
    n = len(y)
    alpha = logistic_glm(y, X)
    eta = X @ alpha
    mu = special.expit(eta)
    W = mu * (1.0 - mu)
    Y = eta + (y - mu) / W
    tau = float(np.var(Y, ddof=1) / np.mean(np.diag(K)))
    _, _, ypapy, trace, _ = _step(Y, W, tau, X, K)
    tau = max(0.0, tau + tau * tau * (ypapy - trace) / n)
    for it in range(1, maxiter + 1):
        alpha0, tau0 = alpha, tau
        alpha, eta, ypapy, trace, ai = _step(Y, W, tau, X, K)
        dtau = (ypapy - trace) / ai
        tau = tau0 + dtau
        if tau < tol and tau0 < tol:
            tau = 0.0
        while tau < 0:
            dtau /= 2.0
            tau = tau0 + dtau
            if tau < tol and tau0 < tol:
                tau = 0.0
        if tau < tol:
            tau = 0.0
        mu = special.expit(eta)
        W = mu * (1.0 - mu)
        Y = eta + (y - mu) / W
        moved = max(float(np.max(np.abs(alpha - alpha0) / (np.abs(alpha) + np.abs(alpha0)
                                                             + tol))),
                    abs(tau - tau0) / (abs(tau) + abs(tau0) + tol))
        if 2.0 * moved < tol:
            return BinaryNull(tau, alpha, eta, mu, it)
    raise FitError(f"the binary trait's null model did not converge in {maxiter} "
                   f"iterations (tau {tau:.6g}); check the trait has cases and controls in "
                   "more than a few families")
