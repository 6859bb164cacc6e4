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
from daskmm.kernels.scalar_re import POISSON, row_term


@numba.njit(cache=True, nogil=True)
def _dweight(eta, wt, family):  # pragma: no cover - compiled
    """``d W / d eta`` for a canonical link: ``mu`` (Poisson log), ``wt p (1 - p)(1 - 2p)``
    (binomial logit)."""
    if family == POISSON:
        return math.exp(eta)
    e = math.exp(-abs(eta))
    p = 1.0 / (1.0 + e) if eta > 0 else e / (1.0 + e)
    return wt * p * (1.0 - p) * (1.0 - 2.0 * p)


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
def gradient_pass(cols, zs, is_local, lam, u, u_G, eta0, y, wt, X, family, link, Minv,
                  start, size, off, col_block, ET, T, w_min):  # pragma: no cover - compiled
    """The row sums of the gradient at the modes ``(u, u_G)``, in one pass.

    ``cols[k, i]``, ``zs[k, i]``: row ``i``'s column on factor ``k`` (in the local ``u`` or in
    ``u_G`` as ``is_local[k]`` says) and its raw model value; ``lam[k] = theta_k``; ``Minv``:
    :func:`local_inverse`. Returns ``(Xs, Xc, sa, ca, r_l, ZGc, Yl, YG)``: ``X' s``, ``X' c``,
    ``s' a_k``, ``c' a_k``, ``Z~_loc' c``, ``Z_G' c`` (raw), and the columns
    ``Y = [Z~' W X, Z_k' s - Z~' W a_k]`` split into local rows and crossed rows (``u``
    scale)."""
    K, n = cols.shape
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
    a = np.empty(K)
    zt = np.empty(K)
    for i in range(n):
        d = 0.0
        for k in range(K):
            c = cols[k, i]
            v = u[c] if is_local[k] else u_G[c]
            a[k] = zs[k, i] * v
            zt[k] = zs[k, i] * lam[k]
            d += zt[k] * v
        eta = eta0[i] + d
        _, sc, wi = row_term(eta, y[i], wt[i], family, link)
        dw = _dweight(eta, wt[i], family)
        if wi < w_min:
            wi = w_min
        h = 0.0
        for k in range(K):
            ck = cols[k, i]
            for k2 in range(K):
                c2 = cols[k2, i]
                if is_local[k]:
                    if is_local[k2]:
                        blk = col_block[ck]
                        s = size[blk]
                        h += zt[k] * zt[k2] * Minv[off[blk] + (ck - start[blk]) * s
                                                   + c2 - start[blk]]
                    else:
                        h -= 2.0 * zt[k] * zs[k2, i] * ET[ck, c2]
                elif not is_local[k2]:
                    h += zs[k, i] * zs[k2, i] * T[ck, c2]
        ci = h * dw
        for j in range(p):
            Xs[j] += X[i, j] * sc
            Xc[j] += X[i, j] * ci
        for k in range(K):
            sa[k] += sc * a[k]
            ca[k] += ci * a[k]
            ck = cols[k, i]
            zw = zt[k] * wi
            if is_local[k]:
                r_l[ck] += zt[k] * ci
                for j in range(p):
                    Yl[ck, j] += zw * X[i, j]
                Yl[ck, p + k] += zs[k, i] * sc
                for k2 in range(K):
                    Yl[ck, p + k2] -= zw * a[k2]
            else:
                ZGc[ck] += zs[k, i] * ci
                for j in range(p):
                    YG[ck, j] += zw * X[i, j]
                YG[ck, p + k] += zs[k, i] * sc
                for k2 in range(K):
                    YG[ck, p + k2] -= zw * a[k2]
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
