"""The logistic mixed null model of a binary-trait scan, as SAIGE's step 1 fits it (issue 32;
pure numpy/scipy, dense: the exact mode's relationship matrix).

``logit P(y_i = 1) = x_i'alpha + b_i``, ``b ~ N(0, tau K)``, by penalised quasi-likelihood: the
working response ``Y = eta + (y - mu) / W`` (``W = mu (1 - mu)``) is a linear mixed model with
covariance ``Sigma = W^-1 + tau K``; at a given ``tau`` PQL's step takes ``alpha`` by
generalised least squares and ``eta = Y - W^-1 P Y`` (``P`` as
:mod:`daskmm.kernels.binary_score`). GMMAT's ``glmmkin.ai`` (which SAIGE's ``fitNULLGLMM``
follows with conjugate gradients in place of dense solves) interleaves one such step with one
average-information REML step for ``tau``, ``tau += (Y'PKPY - tr(PK)) / (Y'PKPKPY)``, from
SAIGE's start ``tau = 0.5``. Its fixed point, which :func:`pql_ai_reml` finds as the root of
``tau``'s REML score (see there), is PQL's fit with ``Y'PKPY = tr(PK)``, or ``tau = 0`` where
the score is negative there. PQL, not Laplace, so that the null and the score test's ``P`` are
SAIGE's: users compare their p-values with SAIGE's (tests/fixtures/gwas/make_binary_null.R
transcribes GMMAT's steps in R).
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
        Points of ``tau``'s REML score evaluated (:func:`pql_ai_reml`), or PQL's steps with
        ``tau`` held (:func:`pql_fixed_tau`).
    score : float
        ``(Y'PKPY - tr(PK)) / tr(PK)`` at the fit: about 0 (rounding and ``tol``) where
        ``tau > 0``, not positive where ``tau = 0``: the optimum's certificate.
    """

    tau: float
    alpha: np.ndarray
    eta: np.ndarray
    mu: np.ndarray
    iterations: int
    score: float = 0.0


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

    def diag(self) -> np.ndarray:
        return np.diag(self.K)

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

    def diag(self) -> np.ndarray:
        out = np.empty(self.n)
        for idx, Kb in self.groups:
            out[idx] = np.diagonal(Kb, axis1=1, axis2=2)
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
    """``(alpha, Sigma^-1 X, (X'Sigma^-1 X)^-1, P Y)`` at the factor ``f``: one solve with
    ``[X, Y]`` (``P Y = Sigma^-1 Y - Sigma^-1 X alpha``)."""
    S = f.solve(np.column_stack([X, Y]))
    SiX, SiY = S[:, :-1], S[:, -1]
    cov = la.inv(X.T @ SiX)
    alpha = cov @ (X.T @ SiY)
    return alpha, SiX, cov, SiY - SiX @ alpha


def _moved(a: np.ndarray, a0: np.ndarray, tol: float) -> float:
    return float(np.max(np.abs(a - a0) / (np.abs(a) + np.abs(a0) + tol)))


PCG_RTOL = 1e-14
"""The conjugate gradients' stop: every column's residual at most this times its right-hand
side's norm (the solution then agrees with a Cholesky solve's to rounding)."""
PCG_REFACTOR = 12
"""A held-``tau`` PQL step whose solve took more conjugate-gradient steps than this (each
about 1/20 of a factorisation at 5,000 samples) makes the next step's factor afresh."""
PCG_MAXITER = 60
"""Conjugate-gradient steps before a solve falls back to its own Cholesky factor."""


class _PCGFactor(Factor):
    """``Sigma = W^-1 + tau K`` solved by conjugate gradients, preconditioned by the Cholesky
    factor of a nearby ``Sigma`` (another ``W``, or ``K`` with a chromosome left in): each step
    is a product with ``K`` and two triangular solves, ``O(n^2)`` against the ``O(n^3)`` of a
    factorisation of its own. A solve that does not reach :data:`PCG_RTOL` in
    :data:`PCG_MAXITER` steps is made again with this ``Sigma``'s own factor, so every solve is
    a Cholesky solve's to rounding."""

    def __init__(self, K: DenseK, W: np.ndarray, tau: float, pre: _DenseFactor):
        self.K, self.W, self.tau, self.pre = K, W, tau, pre
        self.exact: _DenseFactor | None = None
        self.steps = 0

    def _a(self, V: np.ndarray) -> np.ndarray:
        return V / self.W[:, None] + self.tau * self.K.matvec(V)

    def solve(self, B):
        B = np.asarray(B, float)
        if self.exact is not None:
            return self.exact.solve(B)
        B2 = B.reshape(len(B), -1)
        bn = np.linalg.norm(B2, axis=0)
        bn[bn == 0] = 1.0
        X = self.pre.solve(B2)
        R = B2 - self._a(X)
        Z = self.pre.solve(R)
        P = Z.copy()
        rz = np.einsum("ij,ij->j", R, Z)
        for _ in range(PCG_MAXITER):
            if np.all(np.linalg.norm(R, axis=0) <= PCG_RTOL * bn):
                return X.reshape(B.shape)
            self.steps += 1
            AP = self._a(P)
            pap = np.einsum("ij,ij->j", P, AP)
            a = np.divide(rz, pap, out=np.zeros_like(rz), where=pap > 0)
            X += a * P
            R -= a * AP
            Z = self.pre.solve(R)
            rz_new = np.einsum("ij,ij->j", R, Z)
            beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
            P = Z + beta * P
            rz = rz_new
        self.exact = _DenseFactor(self.K.K, self.W, self.tau)
        return self.exact.solve(B)

    def trace_k(self):
        if self.exact is None:
            self.exact = _DenseFactor(self.K.K, self.W, self.tau)
        return self.exact.trace_k()


def _solver(K, W: np.ndarray, tau: float, pre: Factor | None) -> Factor:
    """``Sigma``'s solver: by conjugate gradients preconditioned with ``pre`` (a dense
    ``K``'s factor at a nearby ``Sigma``), else its own factor."""
    if pre is not None and isinstance(K, DenseK) and isinstance(pre, _DenseFactor):
        return _PCGFactor(K, W, tau, pre)
    return K.factor(W, tau)


def _working(y: np.ndarray, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu = special.expit(eta)
    W = mu * (1.0 - mu)
    return mu, W, eta + (y - mu) / W


def _held(y: np.ndarray, X: np.ndarray, K, tau: float, eta: np.ndarray, tol: float,
          maxiter: int, pre: Factor | None) -> tuple[np.ndarray, np.ndarray, int, Factor]:
    """PQL's steps at a held ``tau > 0`` from ``eta`` until ``alpha`` and ``eta`` stop
    moving: ``(alpha, eta, steps, the last step's solver)``. With a dense ``K`` the solves
    are conjugate gradients preconditioned by ``pre`` (without one, by the first step's
    own factor)."""
    alpha = np.full(X.shape[1], np.nan)
    for it in range(1, maxiter + 1):
        _, W, Y = _working(y, eta)
        f = _solver(K, W, tau, pre)
        if pre is None and isinstance(K, DenseK):
            pre = f   # this step's own factor preconditions the next ones
        alpha0, eta0 = alpha, eta
        alpha, _, _, PY = _gls(Y, X, f)
        eta = Y - PY / W
        if isinstance(f, _PCGFactor) and f.steps > PCG_REFACTOR:
            pre = None   # W has moved far from the preconditioner's: a factor of its own
        if it > 1 and 2.0 * max(_moved(alpha, alpha0, tol),
                                float(np.max(np.abs(eta - eta0))) / (1.0 + float(
                                    np.max(np.abs(eta))))) < tol:
            return alpha, eta, it, f
    raise FitError(f"the binary trait's null model (tau {tau:.6g} held) did not converge in "
                   f"{maxiter} iterations; check the trait has cases and controls in more "
                   "than a few families")


@dataclass(frozen=True)
class _Point:
    """The profile at one ``tau``: PQL's fit there, the exact factor at its working model,
    the REML score ``s = Y'PKPY - tr(PK)``, ``tr(PK)`` and the average information."""

    tau: float
    fit: BinaryNull
    factor: Factor | None
    s: float
    trace: float
    ai: float


def _at_zero(y: np.ndarray, X: np.ndarray, K) -> _Point:
    """The profile at ``tau = 0``: the logistic regression, ``P = W - WX(X'WX)^-1X'W``, ``PY =
    y - mu``; no ``n x n`` factor."""
    alpha = logistic_glm(y, X)
    eta = X @ alpha
    mu, W, _ = _working(y, eta)
    r = y - mu
    WX = W[:, None] * X
    cov = la.inv(X.T @ WX)
    trace = float(np.sum(W * K.diag()) - np.sum(cov * (WX.T @ K.matvec(WX))))
    Kr = K.matvec(r)
    PKr = W * Kr - WX @ (cov @ (WX.T @ Kr))
    fit = BinaryNull(0.0, alpha, eta, mu, 0, 0.0)
    return _Point(0.0, fit, None, float(r @ Kr) - trace, trace, float(Kr @ PKr))


def _at(y: np.ndarray, X: np.ndarray, K, tau: float, eta: np.ndarray, tol: float,
        maxiter: int, pre: Factor | None) -> _Point:
    """The profile at ``tau > 0``: PQL's steps held there (by conjugate gradients
    preconditioned with ``pre`` where ``K`` is dense), then one exact step (GMMAT's, with
    ``Sigma``'s own factor) that gives the score, the trace and the information."""
    _, eta, _, _ = _held(y, X, K, tau, eta, tol, maxiter, pre)
    _, W, Y = _working(y, eta)
    f = K.factor(W, tau)
    alpha, SiX, cov, PY = _gls(Y, X, f)
    KPY = K.matvec(PY)
    PKPY = f.solve(KPY) - SiX @ (cov @ (SiX.T @ KPY))
    trace = f.trace_k() - float(np.sum(cov * (SiX.T @ K.matvec(SiX))))
    eta = Y - PY / W
    s = float(PY @ KPY) - trace
    fit = BinaryNull(tau, alpha, eta, special.expit(eta), 0, s / trace)
    return _Point(tau, fit, f, s, trace, float(KPY @ PKPY))


def pql_ai_reml(y: np.ndarray, X: np.ndarray, K, tol: float = 1e-10,
                maxiter: int = 100) -> BinaryNull:
    """Fit the null (module docstring) of the 0/1 trait ``y`` on covariates ``X`` (the
    intercept included) with the relationship matrix ``K`` (dense ``n x n``, or a
    :class:`DenseK` / :class:`BlockK`).

    GMMAT's iteration (one AI-REML step for ``tau`` per PQL step) converges linearly, about
    40 steps of an ``n^3`` factorisation and a triangular inverse at 5,000 samples. Its fixed
    point is the ``tau`` where PQL's fit held at ``tau`` has a REML score ``s(tau) = Y'PKPY -
    tr(PK)`` of zero (or ``tau = 0`` with ``s(0) <= 0``). So this finds that root directly:
    ``s(0)`` from the logistic regression (no factor); SAIGE's start ``tau = 0.5`` and
    GMMAT's AI step from there; then secant steps kept inside the bracket of a sign change
    (bisection where a secant step would leave it), until ``tau`` moves by less than ``tol``
    relative. Each ``s(tau)`` holds ``tau`` and runs PQL's steps (conjugate gradients
    preconditioned by the last point's factor where ``K`` is dense) and one exact step.
    ``iterations`` counts the points; ``score`` is ``s / tr(PK)`` at the fit, the
    certificate that it is the root (or, ``tau = 0``, that the score there is not
    positive)."""
    y, X, K = np.asarray(y, float), np.asarray(X, float), as_kernel(K)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y: a binary trait, 0 or 1 for every sample")
    zero = _at_zero(y, X, K)
    pts = [zero]
    lo = zero if zero.s > 0 else None   # the largest tau with s > 0
    hi = None                           # the smallest tau with s <= 0
    cur = _at(y, X, K, START_TAU, zero.fit.eta, tol, maxiter, None)
    pts.append(cur)
    for _ in range(maxiter):
        if cur.s > 0:
            lo = cur if lo is None or cur.tau > lo.tau else lo
        else:
            hi = cur if hi is None or cur.tau < hi.tau else hi
        if lo is None:
            # s <= 0 from tau = 0 on: the optimum is on the bound
            return BinaryNull(0.0, zero.fit.alpha, zero.fit.eta, zero.fit.mu, len(pts),
                              zero.s / zero.trace)
        prev = pts[-2]
        if prev.tau != cur.tau and np.isfinite(prev.s) and prev.s != cur.s and len(pts) > 2:
            nxt = cur.tau - cur.s * (cur.tau - prev.tau) / (cur.s - prev.s)
        else:
            nxt = cur.tau + cur.s / cur.ai          # GMMAT's AI step
        top = hi.tau if hi is not None else np.inf
        if not (lo.tau < nxt < top) or not np.isfinite(nxt):
            nxt = 0.5 * (lo.tau + top) if np.isfinite(top) else 2.0 * max(lo.tau, cur.tau)
        if abs(nxt - cur.tau) <= 0.5 * tol * cur.tau:
            return BinaryNull(cur.tau, cur.fit.alpha, cur.fit.eta, cur.fit.mu, len(pts),
                              cur.fit.score)
        if np.isfinite(top) and top - lo.tau <= 0.5 * tol * top:
            best = min((p for p in (lo, hi) if p.tau > 0), key=lambda p: abs(p.s))
            return BinaryNull(best.tau, best.fit.alpha, best.fit.eta, best.fit.mu, len(pts),
                              best.fit.score)
        near = min((p for p in pts if p.tau > 0), key=lambda p: abs(p.tau - nxt))
        cur = _at(y, X, K, nxt, near.fit.eta, tol, maxiter, near.factor)
        pts.append(cur)
    raise FitError(f"the binary trait's null model did not converge in {maxiter} "
                   f"iterations (tau {cur.tau:.6g}); check the trait has cases and controls "
                   "in more than a few families")


def pql_fixed_tau(y: np.ndarray, X: np.ndarray, K, tau: float, eta: np.ndarray,
                  tol: float = 1e-10, maxiter: int = 100) -> tuple[BinaryNull, Factor | None]:
    """The null's ``alpha`` and ``eta`` at a given ``tau`` from the start ``eta``: SAIGE's
    leave-one-chromosome-out null (``tau`` from the whole relationship matrix, the
    coefficients and random effects again with the chromosome's part left out of ``K``).
    With a dense ``K`` the first step factors ``Sigma`` and conjugate gradients preconditioned
    by that factor make the later steps' solves. Returns the fit and ``Sigma``'s solver at its
    last step (``None`` when ``tau`` is 0)."""
    y, X, K = np.asarray(y, float), np.asarray(X, float), as_kernel(K)
    eta = np.asarray(eta, float)
    if tau <= 0:
        alpha = logistic_glm(y, X)
        eta = X @ alpha
        return BinaryNull(0.0, alpha, eta, special.expit(eta), 1), None
    alpha, eta, it, f = _held(y, X, K, tau, eta, tol, maxiter, None)
    return BinaryNull(tau, alpha, eta, special.expit(eta), it), f
