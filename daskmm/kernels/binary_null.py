"""The logistic mixed null model of a binary-trait scan, as SAIGE's step 1 fits it (issue 32;
pure numpy/scipy, dense: the exact mode's relationship matrix).

``logit P(y_i = 1) = x_i'alpha + b_i``, ``b ~ N(0, tau K)``, by penalised quasi-likelihood: the
working response ``Y = eta + (y - mu) / W`` (``W = mu (1 - mu)``) is a linear mixed model with
covariance ``Sigma = W^-1 + tau K``; each step takes, at the current ``tau``, ``alpha`` by
generalised least squares, ``eta = Y - W^-1 P Y`` (``P`` as :mod:`daskmm.kernels.binary_score`),
and ``tau`` by an average-information REML step,

    tau += (Y'PKPY - tr(PK)) / (Y'PKPKPY),

halved while it would go negative, after one fixed-point step ``tau += tau^2 (Y'PKPY -
tr(PK)) / n`` from SAIGE's start ``tau = 0.5`` (GMMAT's ``glmmkin.ai``, which SAIGE's
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
from scipy.linalg import lapack

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


START_TAU = 0.5
"""The variance's start, SAIGE's for a binary trait (GMMAT's ``var(Y)``, the working
response's variance, is far too large where cases are rare: the first steps then drive the
fitted probabilities to 0 and the fit fails)."""


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


class Factor:
    """``Sigma = W^-1 + tau K`` factored: solves, ``tr(Sigma^-1 K)`` and the pieces the
    variance ratio needs. Made by :meth:`DenseK.factor` or :meth:`BlockK.factor`."""

    def solve(self, B: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def trace_k(self) -> float:  # pragma: no cover - interface
        raise NotImplementedError


class _DenseFactor(Factor):
    def __init__(self, K: np.ndarray, W: np.ndarray, tau: float):
        S = tau * K
        S[np.diag_indices_from(S)] += 1.0 / W
        # a clean factor (its upper triangle zero, set by LAPACK's wrapper): trtri keeps it
        self.c = (la.cholesky(S, lower=True, overwrite_a=True, check_finite=False), True)
        self.K, self.W, self.tau = K, W, tau

    def solve(self, B):
        return la.cho_solve(self.c, B, check_finite=False)

    def trace_k(self):
        """``tr(Sigma^-1 K) = (n - sum_i (Sigma^-1)_ii / W_i) / tau`` (``Sigma^-1 K = (I -
        Sigma^-1 W^-1) / tau``), the diagonal of ``Sigma^-1`` from ``L^-1``'s column norms
        (LAPACK trtri: a third of a Cholesky's work). Where ``tau K`` is small beside
        ``W^-1`` that difference would cancel: then the sum over ``Sigma^-1``'s entries."""
        Linv, info = lapack.dtrtri(self.c[0], lower=1)
        if info:
            raise FitError(f"the null's covariance could not be inverted (LAPACK info {info})")
        if self.tau * float(np.max(self.W)) * float(np.max(np.diag(self.K))) > 1e-2:
            d = np.einsum("ij,ij->j", Linv, Linv)
            return float((len(d) - np.sum(d / self.W)) / self.tau)
        return float(np.sum((Linv.T @ Linv) * self.K))


class DenseK:
    """A dense relationship matrix ``K`` (``n x n``): the exact mode's."""

    def __init__(self, K: np.ndarray):
        self.K = np.asarray(K, float)
        self.n = self.K.shape[0]

    def matvec(self, V: np.ndarray) -> np.ndarray:
        return self.K @ V

    def mean_diag(self) -> float:
        return float(np.mean(np.diag(self.K)))

    def factor(self, W: np.ndarray, tau: float) -> Factor:
        return _DenseFactor(self.K, W, tau)


class _BlockFactor(Factor):
    def __init__(self, bk: BlockK, W: np.ndarray, tau: float):
        self.bk = bk
        self.inv = []
        for idx, Kb in bk.groups:
            S = tau * Kb
            k = idx.shape[1]
            S[:, np.arange(k), np.arange(k)] += 1.0 / W[idx]
            self.inv.append(np.linalg.inv(S))

    def solve(self, B):
        B = np.asarray(B, float)
        out = np.empty_like(B)
        flat = B.reshape(len(B), -1)
        res = out.reshape(len(B), -1)
        for (idx, _), Si in zip(self.bk.groups, self.inv):
            res[idx] = np.matmul(Si, flat[idx])
        return out

    def trace_k(self):
        return float(sum(np.sum(Si * Kb) for (_, Kb), Si in zip(self.bk.groups, self.inv)))


class BlockK:
    """A block-diagonal relationship matrix: ``groups`` of ``(idx, Kb)``, ``idx`` (``c x k``)
    the samples of ``c`` groups of ``k`` relatives and ``Kb`` (``c x k x k``) their blocks
    (the sparse mode's GRM, whose groups of relatives are its connected components)."""

    def __init__(self, n: int, groups: list[tuple[np.ndarray, np.ndarray]]):
        self.n = n
        self.groups = groups

    def matvec(self, V: np.ndarray) -> np.ndarray:
        V = np.asarray(V, float)
        out = np.empty_like(V)
        flat, res = V.reshape(len(V), -1), out.reshape(len(V), -1)
        for idx, Kb in self.groups:
            res[idx] = np.matmul(Kb, flat[idx])
        return out

    def mean_diag(self) -> float:
        return float(sum(np.trace(Kb, axis1=1, axis2=2).sum() for _, Kb in self.groups)
                     / self.n)

    def factor(self, W: np.ndarray, tau: float) -> Factor:
        return _BlockFactor(self, W, tau)


def as_kernel(K) -> DenseK | BlockK:
    """``K`` as an operator: a dense array becomes :class:`DenseK`."""
    return K if isinstance(K, (DenseK, BlockK)) else DenseK(K)


def _gls(Y: np.ndarray, X: np.ndarray, f: Factor) -> tuple:
    """``(alpha, Sigma^-1 X, (X'Sigma^-1 X)^-1, P Y)`` at the factor ``f``."""
    SiX = f.solve(X)
    cov = la.inv(X.T @ SiX)
    alpha = cov @ (SiX.T @ Y)
    PY = f.solve(Y - X @ alpha)
    return alpha, SiX, cov, PY


def _step(Y: np.ndarray, W: np.ndarray, tau: float, X: np.ndarray, K) -> tuple:
    """``(alpha, eta, Y'PKPY, tr(PK), Y'PKPKPY)`` at ``tau`` (GMMAT's ``fitglmm_ai``)."""
    f = K.factor(W, tau)
    alpha, SiX, cov, PY = _gls(Y, X, f)
    KPY = K.matvec(PY)
    PKPY = f.solve(KPY) - SiX @ (cov @ (SiX.T @ KPY))
    trace = f.trace_k() - float(np.sum(cov * (SiX.T @ K.matvec(SiX))))
    return alpha, Y - PY / W, float(PY @ KPY), trace, float(KPY @ PKPY)


def _moved(a: np.ndarray, a0: np.ndarray, tol: float) -> float:
    return float(np.max(np.abs(a - a0) / (np.abs(a) + np.abs(a0) + tol)))


def pql_ai_reml(y: np.ndarray, X: np.ndarray, K, tol: float = 1e-10,
                maxiter: int = 500) -> BinaryNull:
    """Fit the null (module docstring) of the 0/1 trait ``y`` on covariates ``X`` (the
    intercept included) with the relationship matrix ``K`` (dense ``n x n``, or a
    :class:`DenseK` / :class:`BlockK`)."""
    y, X, K = np.asarray(y, float), np.asarray(X, float), as_kernel(K)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y: a binary trait, 0 or 1 for every sample")
    n = len(y)
    alpha = logistic_glm(y, X)
    eta = X @ alpha
    mu = special.expit(eta)
    W = mu * (1.0 - mu)
    Y = eta + (y - mu) / W
    tau = START_TAU
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
        moved = max(_moved(alpha, alpha0, tol), abs(tau - tau0) / (abs(tau) + abs(tau0) + tol))
        if 2.0 * moved < tol:
            return BinaryNull(tau, alpha, eta, mu, it)
    raise FitError(f"the binary trait's null model did not converge in {maxiter} "
                   f"iterations (tau {tau:.6g}); check the trait has cases and controls in "
                   "more than a few families")


def pql_fixed_tau(y: np.ndarray, X: np.ndarray, K, tau: float, eta: np.ndarray,
                  tol: float = 1e-10, maxiter: int = 100) -> tuple[BinaryNull, Factor | None]:
    """The null's ``alpha`` and ``eta`` at a given ``tau`` from the start ``eta``: SAIGE's
    leave-one-chromosome-out null (``tau`` from the whole relationship matrix, the
    coefficients and random effects again with the chromosome's part left out of ``K``).
    Returns the fit and ``Sigma``'s factor at its last step (``None`` when ``tau`` is 0)."""
    y, X, K = np.asarray(y, float), np.asarray(X, float), as_kernel(K)
    eta = np.asarray(eta, float)
    alpha = np.zeros(X.shape[1])
    if tau <= 0:
        alpha = logistic_glm(y, X)
        eta = X @ alpha
        return BinaryNull(0.0, alpha, eta, special.expit(eta), 1), None
    for it in range(1, maxiter + 1):
        mu = special.expit(eta)
        W = mu * (1.0 - mu)
        Y = eta + (y - mu) / W
        f = K.factor(W, tau)
        alpha0, eta0 = alpha, eta
        alpha, _, _, PY = _gls(Y, X, f)
        eta = Y - PY / W
        if it > 1 and 2.0 * max(_moved(alpha, alpha0, tol),
                                float(np.max(np.abs(eta - eta0))) / (1.0 + float(
                                    np.max(np.abs(eta))))) < tol:
            return BinaryNull(tau, alpha, eta, special.expit(eta), it), f
    raise FitError(f"the binary trait's null model (tau {tau:.6g} held) did not converge in "
                   f"{maxiter} iterations; check the trait has cases and controls in more "
                   "than a few families")
