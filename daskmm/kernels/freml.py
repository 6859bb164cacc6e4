"""Smoothing parameters by REML from the cross-products alone: mgcv's fast REML (``fREML``).

Everything here works on the small matrices a pass over the data returns: ``A = X'WX``,
``b = X'Wz``, ``c = z'Wz`` and ``n``. With ``rho_k = log lambda_k``, ``S = sum_k lambda_k
S_k``, ``H = A + S``, ``beta = H^-1 b`` and ``r = c - beta'b`` (the penalised residual sum of
squares), the REML criterion mgcv's ``bam(method = "fREML")`` minimises is

    V = [r/phi + (n - M_p) log(2 pi phi) + log|H| - log|S|_+] / 2,

``M_p`` the number of unpenalised coefficients. With the scale estimated, ``phi`` is profiled
out (``phi = r/(n - M_p)``); the minimum is the same as mgcv's joint Newton on ``(rho, log
phi)``. :func:`fit` runs Newton on ``rho`` with the exact first and second derivatives
(``dr/drho_k = lambda_k beta'S_k beta``, ``dlog|H|/drho_k = lambda_k tr(H^-1 S_k)`` and their
second derivatives), an eigenvalue-floored Hessian, steps of at most 5 and step halving, as
mgcv's ``fast.REML.fit``. Pure numpy: no dask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.linalg as sla

from daskmm.errors import FitError

EPS = np.finfo(float).eps


@dataclass
class PenaltyBlock:
    """The penalties acting on coefficients ``start:stop`` (one smooth term)."""

    start: int
    stop: int
    S: list[np.ndarray]
    rank: int = 0
    U: np.ndarray | None = field(default=None, repr=False)
    const: float = 0.0

    def __post_init__(self):
        tot = sum(S / np.abs(S).max() for S in self.S)
        ev, U = np.linalg.eigh(tot)
        keep = ev > ev.max() * EPS ** 0.8 * 10
        self.rank = int(keep.sum())
        self.U = U[:, keep]
        if len(self.S) == 1:
            e = np.linalg.eigvalsh(self.S[0])
            self.const = float(np.sum(np.log(np.sort(e)[::-1][:self.rank])))


@dataclass
class Penalties:
    """All penalties of a model with ``p`` coefficients; smoothing parameter ``k`` is the
    ``k``-th matrix in block order (mgcv's order of ``sp``)."""

    p: int
    blocks: list[PenaltyBlock]

    @property
    def n_sp(self) -> int:
        return sum(len(b.S) for b in self.blocks)

    @property
    def Mp(self) -> int:
        """Unpenalised coefficients: ``p`` less the rank of the total penalty."""
        return self.p - sum(b.rank for b in self.blocks)

    def index(self) -> list[tuple[int, int]]:
        """(block, matrix) of each smoothing parameter."""
        return [(j, i) for j, b in enumerate(self.blocks) for i in range(len(b.S))]

    def full(self, lam: np.ndarray) -> np.ndarray:
        S = np.zeros((self.p, self.p))
        k = 0
        for b in self.blocks:
            for Sk in b.S:
                S[b.start:b.stop, b.start:b.stop] += lam[k] * Sk
                k += 1
        return S

    def logdet(self, rho: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """``log|S|_+`` and its first and second derivatives in ``rho``."""
        m = self.n_sp
        ld, d1, d2 = 0.0, np.zeros(m), np.zeros((m, m))
        k = 0
        for b in self.blocks:
            nk = len(b.S)
            if nk == 1:
                ld += b.rank * rho[k] + b.const
                d1[k] = b.rank
            else:
                lam = np.exp(rho[k:k + nk])
                St = [b.U.T @ S @ b.U for S in b.S]
                M = sum(lv * s for lv, s in zip(lam, St))
                c, low = sla.cho_factor(M)
                ld += 2 * np.sum(np.log(np.diag(c)))
                MS = [sla.cho_solve((c, low), s) for s in St]
                for i in range(nk):
                    d1[k + i] = lam[i] * np.trace(MS[i])
                    d2[k + i, k + i] += d1[k + i]
                    for j in range(nk):
                        d2[k + i, k + j] -= lam[i] * lam[j] * np.sum(MS[i] * MS[j].T)
            k += nk
        return ld, d1, d2


@dataclass
class RemlPoint:
    """The criterion and what it is made of at one ``rho``."""

    rho: np.ndarray
    value: float
    grad: np.ndarray
    hess: np.ndarray
    beta: np.ndarray
    P: np.ndarray  # H^-1
    r: float  # penalised residual sum of squares
    phi: float
    logdet_H: float
    logdet_S: float


def chol_inverse(H: np.ndarray) -> tuple[np.ndarray, float]:
    d = np.sqrt(np.abs(np.diag(H)))
    d[d == 0] = 1.0
    Hs = H / d[:, None] / d[None, :]
    try:
        c, low = sla.cho_factor(Hs)
    except np.linalg.LinAlgError:
        raise FitError("the penalised cross-product matrix is not positive definite: the "
                       "model's columns are not identifiable (a smooth confounded with a "
                       "parametric term or another smooth); remove the duplicate term") from None
    Pinv = sla.cho_solve((c, low), np.eye(len(H)))
    P = Pinv / d[:, None] / d[None, :]
    return (P + P.T) / 2, float(2 * np.sum(np.log(np.diag(c))) + 2 * np.sum(np.log(d)))


def score(r: float, nmp: float, ldH: float, ldS: float, phi: float | None
          ) -> tuple[float, float]:
    """The criterion from its pieces: ``r`` the penalised RSS, ``nmp`` ``n - M_p`` (``n`` for
    ML), ``log|H|``, ``log|S|_+``; ``phi=None`` profiles the scale out. Returns the value and
    the scale."""
    if phi is None:
        phi_hat = r / nmp
        return 0.5 * (nmp * math.log(2 * math.pi * phi_hat) + nmp + ldH - ldS), phi_hat
    return 0.5 * (r / phi + nmp * math.log(2 * math.pi * phi) + ldH - ldS), phi


def score_derivatives(rk, rkl, trk, tkl, dS1, dS2, r: float, nmp: float,
                      phi: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and Hessian of :func:`score` in ``rho`` from those of ``r`` (``rk``,
    ``rkl``), of ``log|H|`` (``trk``, ``tkl``) and of ``log|S|_+`` (``dS1``, ``dS2``)."""
    if phi is None:
        return (0.5 * (nmp * rk / r + trk - dS1),
                0.5 * (nmp * (rkl / r - np.outer(rk, rk) / r ** 2) + tkl - dS2))
    return 0.5 * (rk / phi + trk - dS1), 0.5 * (rkl / phi + tkl - dS2)


def penalty_range(pen: Penalties) -> np.ndarray:
    """``U_r``: an orthonormal basis of the range of the total penalty (``p x rank``)."""
    cols = []
    for blk in pen.blocks:
        U = np.zeros((pen.p, blk.U.shape[1]))
        U[blk.start:blk.stop] = blk.U
        cols.append(U)
    return np.hstack(cols) if cols else np.zeros((pen.p, 0))


def ml_logdet(H: np.ndarray, Ur: np.ndarray) -> tuple[np.ndarray, float]:
    """For ``method = "ML"``: ``log|U_r'HU_r|`` (the penalised coefficients only: the
    unpenalised ones are maximised, not integrated) and ``U_r (U_r'HU_r)^-1 U_r'``, which
    takes ``H^-1``'s place in the derivatives of the log determinant."""
    Pr, ld = chol_inverse(Ur.T @ H @ Ur)
    return Ur @ Pr @ Ur.T, ld


def evaluate(A: np.ndarray, b: np.ndarray, c: float, n: float, pen: Penalties,
             rho: np.ndarray, phi: float | None = None, derivs: bool = True,
             ml: bool = False) -> RemlPoint:
    """The REML criterion at ``rho`` (``phi=None``: scale profiled out); with ``ml`` mgcv's
    ML criterion: ``n`` for ``n - M_p`` and ``log|U_r'HU_r|`` for ``log|H|``."""
    m = pen.n_sp
    lam = np.exp(rho)
    H = A + pen.full(lam)
    P, ldH = chol_inverse(H)
    Pt = P
    if ml:
        Pt, ldH = ml_logdet(H, penalty_range(pen))
    beta = P @ b
    r = float(c - beta @ b)
    r = max(r, EPS * abs(c))
    ldS, dS1, dS2 = pen.logdet(rho)
    nmp = n if ml else n - pen.Mp
    value, phi_hat = score(r, nmp, ldH, ldS, phi)
    grad = np.zeros(m)
    hess = np.zeros((m, m))
    if derivs and m:
        idx = pen.index()
        v, PS, sl = [], [], []
        for k, (j, i) in enumerate(idx):
            blk = pen.blocks[j]
            s = slice(blk.start, blk.stop)
            Sk = blk.S[i]
            vk = np.zeros(pen.p)
            vk[s] = lam[k] * (Sk @ beta[s])
            v.append(vk)
            PS.append(lam[k] * (Pt[:, s] @ Sk))
            sl.append(s)
        rk = np.array([beta @ vk for vk in v])
        trk = np.array([np.trace(PS[k][sl[k]]) for k in range(m)])
        Pv = [P @ vk for vk in v]
        rkl = np.zeros((m, m))
        tkl = np.zeros((m, m))
        for k in range(m):
            for l in range(k, m):
                rkl[k, l] = rkl[l, k] = -2 * (v[k] @ Pv[l])
                tkl[k, l] = tkl[l, k] = -np.sum(PS[k][sl[l]] * PS[l][sl[k]].T)
        rkl += np.diag(rk)
        tkl += np.diag(trk)
        grad, hess = score_derivatives(rk, rkl, trk, tkl, dS1, dS2, r, nmp, phi)
    return RemlPoint(rho=rho, value=value, grad=grad, hess=hess, beta=beta, P=P, r=r,
                     phi=phi_hat, logdet_H=ldH, logdet_S=ldS)


def initial_rho(A: np.ndarray, pen: Penalties) -> np.ndarray:
    """mgcv's ``initial.sp``: each ``lambda_k`` balances the mean diagonal of ``A`` and of
    ``S_k`` over the coefficients ``S_k`` penalises."""
    out = []
    dA = np.diag(A)
    for b in pen.blocks:
        for S in b.S:
            maS = np.abs(S).max()
            thresh = EPS ** 0.8 * maS
            ind = ((np.abs(S).mean(axis=1) > thresh) & (np.abs(S).mean(axis=0) > thresh)
                   & (np.abs(np.diag(S)) > thresh))
            xx = dA[b.start:b.stop][ind].mean()
            ss = np.diag(S)[ind].mean()
            out.append(math.log(max(xx / ss, 1e-10)))
    return np.array(out)


@dataclass
class RemlFit:
    point: RemlPoint
    iterations: int
    converged: bool
    message: str


def fit(A: np.ndarray, b: np.ndarray, c: float, n: float, pen: Penalties,
        phi: float | None = None, rho0: np.ndarray | None = None,
        conv_tol: float = EPS ** 0.5, maxit: int = 200, ml: bool = False,
        zero: list[int] | None = None) -> RemlFit:
    """Minimise the REML (``ml``: ML) criterion over ``rho`` by Newton's method
    (``fast.REML.fit``). The coefficients ``zero`` (unpenalised columns aliased with others:
    :func:`aliased_unpenalised`) are fixed at 0, as mgcv fixes unidentifiable coefficients:
    the fit is that of the model without them, and its ``beta`` and ``P`` carry zeros there."""
    if zero:
        keep = np.setdiff1d(np.arange(len(b)), zero)
        sub = Penalties(len(keep), [PenaltyBlock(blk.start - int(np.sum(np.less(zero,
                                                                                blk.start))),
                                                 blk.stop - int(np.sum(np.less(zero,
                                                                               blk.start))),
                                                 blk.S) for blk in pen.blocks])
        out = fit(A[np.ix_(keep, keep)], b[keep], c, n, sub, phi, rho0, conv_tol, maxit, ml)
        pt = out.point
        beta = np.zeros(len(b))
        beta[keep] = pt.beta
        P = np.zeros((len(b), len(b)))
        P[np.ix_(keep, keep)] = pt.P
        out.point = replace(pt, beta=beta, P=P)
        return out
    rho = initial_rho(A, pen) if rho0 is None else np.asarray(rho0, dtype=float).copy()
    return newton(lambda r: evaluate(A, b, c, n, pen, r, phi, ml=ml), rho, n, conv_tol,
                  maxit)


def aliased_unpenalised(A: np.ndarray, pen: Penalties, candidates: list[int],
                        tol: float = 1e-7) -> list[int]:
    """The columns among ``candidates`` (parametric columns, the intercept excluded) that no
    penalty can tell apart from the others: linear combinations of the columns before them in
    ``X'X + sum S`` (each matrix scaled to unit size), the candidates taken last. A numeric
    ``by`` variable entered also as a parametric term is one: the varying-coefficient
    smooth's null space holds it. mgcv fixes such coefficients at 0; so does
    :func:`fit` with ``zero``. Pure: the same columns whatever the data's partitioning."""
    p = len(A)
    if not candidates or p == 0:
        return []
    d = np.sqrt(np.maximum(np.diag(A), 1e-300))
    M = A / np.outer(d, d)
    for blk in pen.blocks:
        for S in blk.S:
            M[blk.start:blk.stop, blk.start:blk.stop] += S / max(np.abs(S).max(), 1e-300)
    order = [j for j in range(p) if j not in candidates] + list(candidates)
    kept: list[int] = []
    L = np.zeros((p, p))
    out = []
    for j in order:
        k = len(kept)
        v = sla.solve_triangular(L[:k, :k], M[kept, j], lower=True) if kept else np.zeros(0)
        r = M[j, j] - v @ v
        if r <= tol * M[j, j]:
            if j in candidates:
                out.append(j)
                continue
        L[k, :k] = v
        L[k, k] = np.sqrt(max(r, 1e-300))
        kept.append(j)
    return sorted(out)


def newton(evaluate_at, rho: np.ndarray, n: float, conv_tol: float = EPS ** 0.5,
           maxit: int = 200) -> RemlFit:
    """mgcv's ``fast.REML.fit`` Newton loop on any criterion: ``evaluate_at(rho)`` returns a
    point with ``value``, ``grad``, ``hess`` and ``r`` (the penalised residual sum of squares,
    for the convergence scale). Eigenvalue-floored Hessian, steps of at most 5, step halving,
    parameters with a flat gradient and curvature left out of the step."""
    rho = np.asarray(rho, dtype=float).copy()
    best = evaluate_at(rho)
    if len(rho) == 0:
        return RemlFit(best, 0, True, "no smoothing parameters")
    scale = abs(best.value) + best.r / n
    active = (np.abs(best.grad) > scale * conv_tol * 0.1) | (
        np.abs(np.diag(best.hess)) > scale * conv_tol * 0.1)
    if not active.any():
        active[:] = True
    converged, message, iterations = False, "iteration limit", 0
    for iterations in range(1, maxit + 1):  # noqa: B007 (the count is returned)
        g = best.grad[active]
        Hh = best.hess[np.ix_(active, active)]
        ev, U = np.linalg.eigh(Hh)
        ev = np.abs(ev)
        ev = np.maximum(ev, ev.max() * EPS ** 0.5)
        step_a = -U @ ((U.T @ g) / ev)
        ms = np.abs(step_a).max()
        if ms > 5:
            step_a *= 5 / ms
        step = np.zeros_like(rho)
        step[active] = step_a
        trial = evaluate_at(rho + step)
        k, not_moved, failed = 0, 0, False
        while trial.value > best.value:
            not_moved = not_moved + 1 if trial.value - best.value < conv_tol * scale else 0
            if k == 25 or not_moved > 3:
                failed = True
                break
            step /= 2
            k += 1
            trial = evaluate_at(rho + step)
        if failed:
            message = "step failed"
            converged = bool(np.all(np.abs(best.grad) <= scale * conv_tol * 10))
            break
        done = not np.any(np.abs(trial.grad) > scale * conv_tol)
        active = (np.abs(trial.grad) > scale * conv_tol * 0.1) | (
            np.abs(np.diag(trial.hess)) > scale * conv_tol * 0.1)
        if abs(best.value - trial.value) > scale * conv_tol:
            if done:
                active[:] = True
            done = False
        best, rho = trial, rho + step
        if not active.any():
            active[:] = True
        if done:
            converged, message = True, "full convergence"
            break
        scale = abs(best.value) + best.r / n
    return RemlFit(best, iterations, converged, message)

