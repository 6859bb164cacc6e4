"""Kenward-Roger's adjusted covariance of the fixed effects and its degrees of freedom, as
``pbkrtest::vcovAdj`` and ``pbkrtest::Lb_ddf`` (pure numpy; never imports dask).

pbkrtest writes ``V = sum_r gamma_r G_r``: one ``G_r = Z_t E_ab Z_t'`` per entry ``(a, b)`` of
each random-effect term's covariance (``E_ab`` symmetric with ones at ``(a, b)`` and
``(b, a)``) and ``G = I`` for the residual variance, and forms, with ``Phi = vcov(beta)``,

    P_r = -X' V^-1 G_r V^-1 X,     Q_rs = X' V^-1 G_r V^-1 G_s V^-1 X,
    K_rs = tr(G_r V^-1 G_s V^-1),  IE2_rs = K_rs - 2 tr(Phi Q_rs) + tr(Phi P_r Phi P_s),
    W = 2 IE2^-1,   U = sum_rs W_rs (Q_rs - P_r Phi P_s),   Phi_A = Phi + 2 Phi U Phi.

pbkrtest builds the ``n x n`` matrices. Here every quantity is a sum over the levels of the
primary factor of small per-level products, because with ``V = sigma^2 (I + Z Lambda Lambda'
Z')`` and ``Z'Z`` block diagonal by level (one grouping factor, or factors nested in it),
Woodbury gives ``V^-1 = sigma^-2 (I - Z K Z')``, ``K = Lambda (Lambda' A Lambda + I)^-1
Lambda'`` per level, and with ``N = I - A K``::

    Z_l' V^-1 Z_l = sigma^-2 N A,   Z_l' V^-1 X = sigma^-2 N B,   Z_l' V^-2 X = sigma^-4 N N B,
    X' (I - Z K Z')^k X = X' (I - Z K Z')^(k-1) X - sum_l (N^(k-1) B)' K B

(``A = Z_l'Z_l``, ``B = Z_l'X``): the cross-products the fit already has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class KRParts:
    """``P`` (list of ``p x p``), ``W`` (``r x r``) and ``Phi_A`` of pbkrtest's ``vcovAdj``."""

    P: list
    W: np.ndarray
    Phi_A: np.ndarray


def vcov_adjusted(groups: list[tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]],
                  XtX: np.ndarray, n: int, sigma2: float, Phi: np.ndarray) -> KRParts:
    """pbkrtest's ``vcovAdj`` from per-level statistics.

    Parameters
    ----------
    groups : list of (A, B, Lam, E)
        Per level group: ``A`` (m, s, s) ``Z_l'Z_l``; ``B`` (m, s, p) ``Z_l'X``; ``Lam``
        (s, s) the block's relative covariance factor; ``E`` the list (one per covariance
        parameter of the random effects, in pbkrtest's order) of (s, s) matrices placing
        ``E_ab`` at every block position of its term.
    XtX : ndarray (p, p)
    n : int
    sigma2 : float
        Residual variance.
    Phi : ndarray (p, p)
        ``vcov(beta)``.
    """
    p = XtX.shape[0]
    n_re = len(groups[0][3]) if groups else 0
    R = n_re + 1  # + residual
    P = [np.zeros((p, p)) for _ in range(R)]
    Q = {(r, s): np.zeros((p, p)) for r in range(R) for s in range(r, R)}
    K = np.zeros((R, R))
    s2 = sigma2
    T1 = np.zeros((p, p))  # sum_l B'KB
    T2 = np.zeros((p, p))  # sum_l (N B)' K B
    tr_KA = tr_KAKA = 0.0
    for A, B, Lam, E in groups:
        m, s, _ = A.shape
        M = np.einsum("ji,mjk,kl->mil", Lam, A, Lam) + np.eye(s)
        Kl = np.einsum("ij,mjk,lk->mil", Lam, np.linalg.inv(M), Lam)
        N = np.eye(s) - A @ Kl
        H = (N @ A) / s2                       # Z'V^-1 Z
        C = (N @ B) / s2                       # Z'V^-1 X
        R1 = (N @ (N @ B)) / s2 ** 2           # Z'V^-2 X
        ZV2Z = (N @ (N @ A)) / s2 ** 2         # Z'V^-2 Z
        KB = Kl @ B
        T1 += np.einsum("msp,msq->pq", B, KB)
        T2 += np.einsum("msp,msq->pq", N @ B, KB)
        KA = Kl @ A
        tr_KA += float(np.einsum("mii->", KA))
        tr_KAKA += float(np.einsum("mij,mji->", KA, KA))
        EC = [np.einsum("st,mtp->msp", Ei, C) for Ei in E]      # E_i Z'V^-1 X
        EH = [np.einsum("st,mtu->msu", Ei, H) for Ei in E]      # E_i Z'V^-1 Z
        for i in range(n_re):
            P[i] -= np.einsum("msp,msq->pq", C, EC[i])
            for j in range(i, n_re):
                Q[(i, j)] += _q(C, E[i], H, E[j])
                K[i, j] += float(np.einsum("mst,mts->", EH[i], EH[j]))
            Q[(i, n_re)] += np.einsum("msp,msq->pq", EC[i], R1)
            K[i, n_re] += float(np.einsum("st,mts->", E[i], ZV2Z))
    # residual: G = I
    X1 = XtX - T1                       # X'(I - ZKZ')X
    X2 = X1 - T2                        # X'(I - ZKZ')^2 X
    T3 = _third(groups, s2)             # sum_l (N^2 B)' K B
    X3 = X2 - T3                        # X'(I - ZKZ')^3 X
    P[n_re] = -X2 / s2 ** 2
    Q[(n_re, n_re)] = X3 / s2 ** 3
    K[n_re, n_re] = (n - 2 * tr_KA + tr_KAKA) / s2 ** 2
    K = np.triu(K) + np.triu(K, 1).T
    IE2 = np.empty((R, R))
    for i in range(R):
        PhiPi = Phi @ P[i]
        for j in range(i, R):
            IE2[i, j] = IE2[j, i] = (K[i, j] - 2 * np.sum(Phi * Q[(i, j)])
                                     + np.sum(PhiPi * (P[j] @ Phi)))
    ev = np.linalg.eigvalsh(IE2)
    W = 2 * (np.linalg.inv(IE2) if np.min(np.abs(ev)) > 1e-10 else np.linalg.pinv(IE2))
    W = (W + W.T) / 2
    U = np.zeros((p, p))
    for i in range(R - 1):
        for j in range(i + 1, R):
            U += W[i, j] * (Q[(i, j)] - P[i] @ Phi @ P[j])
    U = U + U.T
    for i in range(R):
        U += W[i, i] * (Q[(i, i)] - P[i] @ Phi @ P[i])
    return KRParts(P, W, Phi + 2 * Phi @ U @ Phi)


def _q(C: np.ndarray, Ei: np.ndarray, H: np.ndarray, Ej: np.ndarray) -> np.ndarray:
    """``sum_l C_l' E_i H_l E_j C_l``."""
    left = np.einsum("st,mtp->msp", Ei, C)
    right = np.einsum("st,mtp->msp", Ej, C)
    return np.einsum("msp,msu,muq->pq", left, H, right)


def _third(groups, s2) -> np.ndarray:
    out = None
    for A, B, Lam, _ in groups:
        s = A.shape[1]
        M = np.einsum("ji,mjk,kl->mil", Lam, A, Lam) + np.eye(s)
        Kl = np.einsum("ij,mjk,lk->mil", Lam, np.linalg.inv(M), Lam)
        N = np.eye(s) - A @ Kl
        part = np.einsum("msp,msq->pq", N @ (N @ B), Kl @ B)
        out = part if out is None else out + part
    return out if out is not None else 0.0


def _kr_moments(L: np.ndarray, V0: np.ndarray, parts: KRParts) -> tuple[int, float, float]:
    """pbkrtest's ``.KR_adjust`` moments: ``q = rank L``, ``rho`` and ``A2``."""
    L = np.atleast_2d(L)
    q = int(np.linalg.matrix_rank(L))
    Theta = L.T @ np.linalg.solve(L @ V0 @ L.T, L)
    TV = Theta @ V0
    A1 = A2 = 0.0
    R = len(parts.P)
    U = [TV @ P @ V0 for P in parts.P]
    for i in range(R):
        for j in range(i, R):
            e = 1.0 if i == j else 2.0
            A1 += e * parts.W[i, j] * np.trace(U[i]) * np.trace(U[j])
            A2 += e * parts.W[i, j] * np.sum(U[i] * U[j].T)
    B = (A1 + 6 * A2) / (2 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    c1 = g / (3 * q + 2 * (1 - g))
    c2 = (q - g) / (3 * q + 2 * (1 - g))
    c3 = (q + 2 - g) / (3 * q + 2 * (1 - g))
    v0 = 1 + c1 * B
    v1 = 1 - c2 * B
    v2 = 1 - c3 * B
    v0 = 0.0 if abs(v0) < 1e-10 else v0
    x, y = 1 - A2 / q, v1
    ratio = 1.0 if (abs(x) < 1e-14 and abs(y) < 1e-14) else x / y
    rho = 1 / q * ratio ** 2 * v0 / v2
    return q, float(rho), float(A2)


def lb_ddf(L: np.ndarray, V0: np.ndarray, parts: KRParts) -> float:
    """pbkrtest's ``Lb_ddf``: Kenward-Roger denominator df of the hypothesis ``L beta``."""
    q, rho, _ = _kr_moments(L, V0, parts)
    return float(4 + (q + 2) / (q * rho - 1))


def kr_f(L: np.ndarray, beta: np.ndarray, V0: np.ndarray, parts: KRParts,
         beta_h: np.ndarray | float = 0.0) -> dict:
    """pbkrtest's Kenward-Roger F test of ``L (beta - beta_h) = 0`` (``KRmodcomp``'s
    ``.KR_adjust``): the Wald statistic with the adjusted covariance ``Phi_A`` over ``q``,
    times ``F.scaling``; ``V0`` (the unadjusted ``vcov(beta)``) enters the moments.

    Returns
    -------
    dict
        ``F`` (scaled), ``F_unscaled``, ``ndf`` (``rank L``), ``ddf``, ``F_scaling``,
        ``p_value`` and ``p_value_unscaled``.
    """
    from scipy import stats  # here: its import costs a CLI process 0.4 s

    L = np.atleast_2d(np.asarray(L, dtype=float))
    q, rho, A2 = _kr_moments(L, V0, parts)
    ddf = 4 + (q + 2) / (q * rho - 1)
    scaling = 1.0 if abs(ddf - 2) < 1e-2 else ddf * (1 - A2 / q) / (ddf - 2)
    Lb = L @ (np.asarray(beta, dtype=float) - beta_h)
    # pbkrtest: both F statistics use the adjusted covariance; "unscaled" means without
    # F.scaling
    wald = float(Lb @ np.linalg.solve(L @ parts.Phi_A @ L.T, Lb))
    f_u = wald / q
    f = scaling * f_u
    return {"F": f, "F_unscaled": f_u, "ndf": q, "ddf": float(ddf), "F_scaling": float(scaling),
            "p_value": float(stats.f.sf(f, q, ddf)),
            "p_value_unscaled": float(stats.f.sf(f_u, q, ddf))}


def matrix_rank(X: np.ndarray) -> int:
    """The numerical rank of ``X`` (numpy's SVD tolerance)."""
    return int(np.linalg.matrix_rank(X))


def least_squares(A: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``argmin_B |A B - Y|`` (minimum norm), for the type III contrasts."""
    return np.linalg.lstsq(A, Y, rcond=None)[0]
