"""The exact gradient of the Laplace deviance in ``(theta, beta)``, for scalar random-effect
terms and a canonical link (numba-compiled; never imports dask).

The criterion at the conditional modes ``v*`` (local ``u`` and crossed ``u_G``, ``Z~ = Z
Lambda``) is

    f(theta, beta) = -2 ll(eta*) + |v*|^2 + log|M|,   M = Z~' W Z~ + I,
    eta = X beta + offset + Z~ v.

``v*`` minimises the penalised deviance, so its own derivative drops out of the first two
terms (the envelope theorem) but not of ``log|M|``, whose weights ``W(eta)`` move with the
modes. For a canonical link the penalised deviance's Hessian in ``v`` is ``2 M``, and with the
score ``s = d ll / d eta``, ``w' = d W / d eta``, the leverages ``h_i = z~_i' M^{-1} z~_i``,
``c = h w'`` and ``m = M^{-1} Z~' c``:

    df/dbeta   = -2 X' s + c' X - m' Z~' W X,
    df/dtheta_k = -2 s' a_k + 2 tr(M^{-1} Z~' W Z_k) + c' a_k + m' (Z_k' s - Z~' W a_k),

where ``Z_k = d Z~ / d theta_k`` (the raw columns of factor ``k``) and ``a_k = Z_k v``. For a
scalar term ``Z~' W Z_k = (M - I) P_k / theta_k``, so the trace is
``sum_{j in k} (1 - [M^{-1}]_jj) / theta_k`` (zero at ``theta_k = 0``, where ``M^{-1}`` is the
identity on the term's block).

``M`` is blocked as the fit holds it: ``A`` (block diagonal by primary level, local to a
partition), the crossed block by its Schur complement ``S = Lambda_G' (G - C' A^{-1} C)
Lambda_G + I`` (on the client). With ``E = A^{-1} C`` (``C = Z~_loc' W Z_G``, the crossed
columns unscaled) and ``T = Lambda_G S^{-1} Lambda_G'``:

    [M^{-1}]_loc,loc = A^{-1} + E T E',   and   h_i = z_l' [M^{-1}]_loc,loc z_l
                                                      - 2 z_l' E T z_G + z_G' T z_G

(``z_l`` a row's scaled local columns, ``z_G`` its raw crossed ones). A partition returns the
sums over its rows (:func:`daskmm.kernels.pirls.crossed_gradient`); the client adds the
crossed block's part (:func:`combine`).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from daskmm.kernels.block_chol import solve_blocks
from daskmm.kernels.scalar_re import POISSON


@numba.njit(cache=True, nogil=True)
def _canonical_row(eta, y, wt, family):  # pragma: no cover - compiled
    """``(s, W, d W / d eta)`` of one row for a canonical link, one ``exp``: score and weight
    exactly as :func:`~daskmm.kernels.scalar_re.row_term`'s, and ``d W / d eta`` = ``mu``
    (Poisson log) or ``W (1 - 2p)`` (binomial logit)."""
    if family == POISSON:  # wt: prior weights
        mu = math.exp(eta)
        return wt * (y - mu), wt * mu, wt * mu
    e = math.exp(-abs(eta))
    p = 1.0 / (1.0 + e) if eta > 0 else e / (1.0 + e)
    w = wt * p * (1.0 - p)
    return y - wt * p, w, w * (1.0 - 2.0 * p)


@numba.njit(cache=True, nogil=True)
def local_inverse(L, start, size, off, E, ET):  # pragma: no cover - compiled
    """The block-diagonal blocks of ``[M^{-1}]_loc,loc = A^{-1} + E T E'`` (flat, in ``L``'s
    layout), from the factored blocks ``L`` of ``A`` (:func:`~daskmm.kernels.block_chol.
    chol_blocks`), ``E`` and ``ET = E T``."""
    out = np.zeros(L.shape[0])
    smax = 0
    for k in range(start.shape[0]):
        smax = max(smax, size[k])
    Li = np.zeros((smax, smax))
    n_g = E.shape[1]
    for k in range(start.shape[0]):
        s = size[k]
        o = off[k]
        b = start[k]
        for j in range(s):  # L^{-1}, column by column
            for i in range(s):
                Li[i, j] = 0.0
            for i in range(j, s):
                v = 1.0 if i == j else 0.0
                for t in range(j, i):
                    v -= L[o + i * s + t] * Li[t, j]
                Li[i, j] = v / L[o + i * s + i]
        for a in range(s):
            for c in range(s):
                v = 0.0
                for t in range(max(a, c), s):
                    v += Li[t, a] * Li[t, c]
                for r in range(n_g):
                    v += ET[b + a, r] * E[b + c, r]
                out[o + a * s + c] = v
    return out


@numba.njit(cache=True, nogil=True)
def gradient_pass(l_col, l_z, l_th, g_col, g_z, g_th, lam, u, u_G, eta0, y, wt, X, family,
                  Minv, start, size, off, col_block, ET, T, w_min):  # pragma: no cover
    """The row sums of the gradient at the modes ``(u, u_G)``, in one pass.

    ``l_col[k, i]``, ``l_z[k, i]``: row ``i``'s column in the local ``u`` on local factor
    ``k`` and its raw model value (:class:`~daskmm.kernels.pirls.ScalarRows`), ``l_th[k]``
    the factor's place in ``theta``; ``g_col``, ``g_z``, ``g_th`` the same for the crossed
    factors (columns in ``u_G``); ``lam[t] = theta_t``; ``Minv``: :func:`local_inverse`.
    Returns ``(Xs, Xc, sa, ca, r_l, ZGc, Yl, YG)``: ``X' s``, ``X' c``, ``s' a_k``,
    ``c' a_k``, ``Z~_loc' c``, ``Z_G' c`` (raw), and the columns
    ``Y = [Z~' W X, Z_k' s - Z~' W a_k]`` split into local rows and crossed rows (``u``
    scale)."""
    KL, n = l_col.shape
    KG = g_col.shape[0]
    K = KL + KG
    p = X.shape[1]
    n_loc = u.shape[0]
    n_g = u_G.shape[0]
    Xs = np.zeros(p)
    Xc = np.zeros(p)
    sa = np.zeros(K)
    ca = np.zeros(K)
    r_l = np.zeros(n_loc)
    ZGc = np.zeros(n_g)
    Yl = np.zeros((n_loc, p + K))
    YG = np.zeros((n_g, p + K))
    T_diag = np.empty(n_g)
    for j in range(n_g):
        T_diag[j] = T[j, j]
    a = np.empty(K)  # a_t = z v on factor t, in theta's order
    zl = np.empty(KL)  # the scaled local values
    for i in range(n):
        d = 0.0
        for k in range(KL):
            t = l_th[k]
            v = u[l_col[k, i]]
            a[t] = l_z[k, i] * v
            zl[k] = l_z[k, i] * lam[t]
            d += zl[k] * v
        for k in range(KG):
            t = g_th[k]
            v = u_G[g_col[k, i]]
            a[t] = g_z[k, i] * v
            d += g_z[k, i] * lam[t] * v
        eta = eta0[i] + d
        sc, wi, dw = _canonical_row(eta, y[i], wt[i], family)
        if wi < w_min:
            wi = w_min
        h = 0.0
        for k in range(KL):
            ck = l_col[k, i]
            blk = col_block[ck]
            s = size[blk]
            base = off[blk] + (ck - start[blk]) * s - start[blk]
            for k2 in range(KL):
                h += zl[k] * zl[k2] * Minv[base + l_col[k2, i]]
            for k2 in range(KG):
                h -= 2.0 * zl[k] * g_z[k2, i] * ET[ck, g_col[k2, i]]
        for k in range(KG):
            ck = g_col[k, i]
            gz = g_z[k, i]
            h += gz * gz * T_diag[ck]
            for k2 in range(k + 1, KG):
                h += 2.0 * gz * g_z[k2, i] * T[ck, g_col[k2, i]]
        ci = h * dw
        for j in range(p):
            Xs[j] += X[i, j] * sc
            Xc[j] += X[i, j] * ci
        for t in range(K):
            sa[t] += sc * a[t]
            ca[t] += ci * a[t]
        for k in range(KL):
            ck = l_col[k, i]
            t = l_th[k]
            zw = zl[k] * wi
            r_l[ck] += zl[k] * ci
            for j in range(p):
                Yl[ck, j] += zw * X[i, j]
            Yl[ck, p + t] += l_z[k, i] * sc
            for t2 in range(K):
                Yl[ck, p + t2] -= zw * a[t2]
        for k in range(KG):
            ck = g_col[k, i]
            t = g_th[k]
            zw = g_z[k, i] * lam[t] * wi
            ZGc[ck] += g_z[k, i] * ci
            for j in range(p):
                YG[ck, j] += zw * X[i, j]
            YG[ck, p + t] += g_z[k, i] * sc
            for t2 in range(K):
                YG[ck, p + t2] -= zw * a[t2]
    return Xs, Xc, sa, ca, r_l, ZGc, Yl, YG


@numba.njit(cache=True, nogil=True)
def gradient_pass_two(l_col, l_z, l_th, g_col, g_z, g_th, lam, u, u_G, eta0, y, wt, X,
                      family, Minv, start, size, off, col_block, ET, T, w_min
                      ):  # pragma: no cover - compiled
    """:func:`gradient_pass` for one local and one crossed factor (``(1 | a) + (1 | b)``, the
    common crossed model), the same sums in the same order with every per-row quantity a
    scalar: 1.7x fewer nanoseconds a row than the general loop over small arrays."""
    n = l_col.shape[1]
    p = X.shape[1]
    n_loc = u.shape[0]
    n_g = u_G.shape[0]
    Xs = np.zeros(p)
    Xc = np.zeros(p)
    sa = np.zeros(2)
    ca = np.zeros(2)
    r_l = np.zeros(n_loc)
    ZGc = np.zeros(n_g)
    Yl = np.zeros((n_loc, p + 2))
    YG = np.zeros((n_g, p + 2))
    T_diag = np.empty(n_g)
    for j in range(n_g):
        T_diag[j] = T[j, j]
    tl = l_th[0]
    tg = g_th[0]
    lam_l = lam[tl]
    lam_g = lam[tg]
    for i in range(n):
        cl = l_col[0, i]
        cg = g_col[0, i]
        zl = l_z[0, i]
        zg = g_z[0, i]
        vl = u[cl]
        vg = u_G[cg]
        al = zl * vl
        ag = zg * vg
        ztl = zl * lam_l
        ztg = zg * lam_g
        sc, wi, dw = _canonical_row(eta0[i] + (ztl * vl + ztg * vg), y[i], wt[i], family)
        if wi < w_min:
            wi = w_min
        blk = col_block[cl]
        rel = cl - start[blk]
        h = (ztl * ztl * Minv[off[blk] + rel * size[blk] + rel]
             - 2.0 * ztl * zg * ET[cl, cg] + zg * zg * T_diag[cg])
        ci = h * dw
        for j in range(p):
            Xs[j] += X[i, j] * sc
            Xc[j] += X[i, j] * ci
        sa[tl] += sc * al
        sa[tg] += sc * ag
        ca[tl] += ci * al
        ca[tg] += ci * ag
        zw = ztl * wi
        r_l[cl] += ztl * ci
        for j in range(p):
            Yl[cl, j] += zw * X[i, j]
        Yl[cl, p + tl] += zl * sc
        Yl[cl, p + tl] -= zw * al
        Yl[cl, p + tg] -= zw * ag
        zw = ztg * wi
        ZGc[cg] += zg * ci
        for j in range(p):
            YG[cg, j] += zw * X[i, j]
        YG[cg, p + tg] += zg * sc
        YG[cg, p + tl] -= zw * al
        YG[cg, p + tg] -= zw * ag
    return Xs, Xc, sa, ca, r_l, ZGc, Yl, YG


def crossed_T(S_inv: np.ndarray, lam_G: np.ndarray) -> np.ndarray:
    """``T = Lambda_G S^{-1} Lambda_G'`` for a diagonal ``Lambda_G`` (scalar terms)."""
    return S_inv * np.outer(lam_G, lam_G)


def combine(pieces: list[tuple], S_inv: np.ndarray, lam_G: np.ndarray, g_factor: np.ndarray,
            theta: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """The gradient ``(d/dtheta, d/dbeta)`` from the partitions' pieces
    (:func:`daskmm.kernels.pirls.crossed_gradient`) and the crossed block's ``S^{-1}``;
    ``lam_G``, ``g_factor``: each crossed column's ``theta`` and factor (index into
    ``theta``).

    Also returns ``psi = Y_G - Lambda_G E' Y_loc``, the crossed rows of ``Y`` after the local
    block's elimination, for :func:`crossed_shift`."""
    tot = [sum(pc[i] for pc in pieces) for i in range(len(pieces[0]))]
    Xs, Xc, sa, ca, mY_loc, Er, EY, ZGc, YG, tr_loc = tot
    rho = lam_G * (ZGc - Er)
    psi = YG - lam_G[:, None] * EY
    mY = mY_loc + (S_inv @ rho) @ psi if len(rho) else mY_loc
    K = len(theta)
    tr = np.array(tr_loc, dtype=float)
    if len(lam_G):
        np.add.at(tr, g_factor, 1.0 - np.diagonal(S_inv))
    pos = theta > 0
    trace = np.zeros(K)
    trace[pos] = 2.0 * tr[pos] / theta[pos]
    g_theta = -2.0 * sa + trace + ca + mY[p:]
    g_beta = -2.0 * Xs + Xc - mY[:p]
    return np.concatenate([g_theta, g_beta]), psi


def shift_weights(d_theta: np.ndarray, d_beta: np.ndarray) -> np.ndarray:
    """``w`` with ``dv = M^{-1} Y w`` for a move ``(d_theta, d_beta)`` (``Y``'s columns are
    ``beta``'s then ``theta``'s; see :func:`crossed_shift`)."""
    return np.concatenate([-np.asarray(d_beta, float), np.asarray(d_theta, float)])


def crossed_shift(S_inv: np.ndarray, psi: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The crossed modes' first-order move ``dv_G = S^{-1} psi w`` (spherical scale).

    The modes solve ``F(v; theta, beta) = v - Z~' s(eta) = 0``, so ``dv/dx = -M^{-1}
    dF/dx`` with ``dF/dbeta = Z~' W X`` and ``dF/dtheta_k = Z~' W a_k - Z_k' s``: the columns
    of ``Y`` with the signs of :func:`shift_weights`. By blocks, ``dv_G = S^{-1} (Y_G -
    Lambda_G E' Y_loc) w`` and ``dv_loc = A^{-1} Y_loc w - E Lambda_G dv_G`` (done in the
    partition, :func:`local_shift`)."""
    return S_inv @ (psi @ w) if len(psi) else np.zeros(0)


def local_shift(L: np.ndarray, blocks: tuple, E: np.ndarray, Y_loc: np.ndarray,
                w: np.ndarray, lam_dv_G: np.ndarray) -> np.ndarray:
    """The local modes' first-order move ``A^{-1} Y_loc w - E (Lambda_G dv_G)``
    (:func:`crossed_shift`), from the factored local blocks ``L`` at the last point."""
    start, size, off, _ = blocks
    out = solve_blocks(L, start, size, off, (Y_loc @ w)[:, None])[:, 0]
    return out - E @ lam_dv_G
