"""Compiled row loops of the crossed GLMM with random slopes on the first factor (numba,
cached on disk): ``Z b``'s first-factor part and the Fisher-weighted sums of a PIRLS pass, in
one pass over the rows each, where numpy made a row-sized temporary per column or pair of
columns; and the crossing's quadratic forms per column
(:meth:`~daskmm.kernels.crossed_iter.VectorCrossing.quad_cols`). The scattered sums run
over the rows in order on one core: the same additions in the same order as
``numpy.bincount``'s."""

from __future__ import annotations

import numba


@numba.njit(cache=True, parallel=True, nogil=True)
def add_first_zb(g, z, B1, out):  # pragma: no cover - compiled
    """``out[i] += z_i . B1[g_i]``: the first factor's part of ``Z b`` (``B1``: its modes,
    ``levels x r``; ``g`` the rows' levels, ``z`` their term columns)."""
    n, r = z.shape
    for i in numba.prange(n):
        s = 0.0
        for a in range(r):
            s += z[i, a] * B1[g[i], a]
        out[i] += s


@numba.njit(cache=True, nogil=True)
def first_sums(g, z, w, v, G, S):  # pragma: no cover - compiled
    """``G[l] += w_i z_i z_i'`` and ``S[l] += v_i z_i`` over the rows ``i`` of level ``l =
    g_i`` (the first factor's weighted Gram matrices, their lower triangles only, and its
    level sums of ``v``; ``w`` or ``v`` may be empty to skip that sum)."""
    n, r = z.shape
    grams = w.shape[0] > 0
    sums = v.shape[0] > 0
    for i in range(n):
        lv = g[i]
        if grams:
            wi = w[i]
            for a in range(r):
                za = wi * z[i, a]
                for b in range(a + 1):
                    G[lv, a, b] += za * z[i, b]
        if sums:
            vi = v[i]
            for a in range(r):
                S[lv, a] += vi * z[i, a]


@numba.njit(cache=True, nogil=True)
def table_sums(ix, z, w, out):  # pragma: no cover - compiled
    """``out[ix_i] += w_i z_i``: a first-factor crossing table's values on its pattern
    (``ix`` each row's place)."""
    n, r = z.shape
    for i in range(n):
        p = ix[i]
        wi = w[i]
        for a in range(r):
            out[p, a] += wi * z[i, a]


@numba.njit(cache=True, nogil=True)
def quad_entries(V, cols, lev, K, out):  # pragma: no cover - compiled
    """``out[cols_p] += V_p' K[lev_p] V_p`` over the crossing's non-zeros ``p`` (``V_p``
    their ``r`` values)."""
    n, r = V.shape
    for p in range(n):
        k = lev[p]
        s = 0.0
        for a in range(r):
            for b in range(r):
                s += V[p, a] * V[p, b] * K[k, a, b]
        out[cols[p]] += s
