"""The compiled row loop of :func:`daskmm.kernels.crossed_glmm.row_leverage` (numba, cached
on disk; the rows shared out over the cores)."""

from __future__ import annotations

import numba


@numba.njit(cache=True, parallel=True, nogil=True)
def leverage_rows(g, z, hq, pq, P, FD, FZ, YD, YZ, sig, phi, gamma,
                  out):  # pragma: no cover - compiled
    """``out[i] = z_i' P_g z_i + sum_k (sig[h_ik] + z_i . phi[p_ik]) + sum_c gamma_c a_ic
    b_ic``, ``a_ic = sum_k YD[h_ik, c] - z_i . FD[g, :, c]`` (``b`` likewise from ``YZ``
    and ``FZ``); ``g`` the rows' first-factor levels, ``hq`` the other factors' levels (as
    rows of ``YD``), ``pq`` the rows' places on the crossing tables (as rows of ``phi``)."""
    n, r = z.shape
    m = gamma.shape[0]
    K1 = hq.shape[0]
    for i in numba.prange(n):
        gi = g[i]
        rho = 0.0
        for a in range(r):
            za = z[i, a]
            for b in range(r):
                rho += za * P[gi, a, b] * z[i, b]
        for k in range(K1):
            rho += sig[hq[k, i]]
            p = pq[k, i]
            for a in range(r):
                rho += z[i, a] * phi[p, a]
        s = 0.0
        for c in range(m):
            av = 0.0
            bv = 0.0
            for a in range(r):
                av -= z[i, a] * FD[gi, a, c]
                bv -= z[i, a] * FZ[gi, a, c]
            for k in range(K1):
                h = hq[k, i]
                av += YD[h, c]
                bv += YZ[h, c]
            s += gamma[c] * av * bv
        out[i] = rho + s
