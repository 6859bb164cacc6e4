"""Compiled per-row loops of the spline bases (numba, cached on disk): a cubic regression
spline's row is ``a_j e_j + a_{j+1} e_{j+1} + c_j F_j + c_{j+1} F_{j+1}`` for the knot
interval ``j`` of ``x`` (linear beyond the end knots), written straight into the model
matrix instead of through n x k temporaries."""

from __future__ import annotations

import numba


@numba.njit(cache=True, nogil=True)
def cr_rows(x, xk, F, out):  # pragma: no cover - compiled
    """Fill ``out`` (n x k) with mgcv's ``cr`` basis at ``x`` (knots ``xk``, ``F`` the
    map from knot values to second derivatives)."""
    n = x.shape[0]
    k = xk.shape[0]
    for r in range(n):
        xr = x[r]
        for c in range(k):
            out[r, c] = 0.0
        if xr < xk[0]:
            h = xk[1] - xk[0]
            xik = xr - xk[0]
            cm = -xik * h / 3
            cp = -xik * h / 6
            for c in range(k):
                out[r, c] = cm * F[0, c] + cp * F[1, c]
            out[r, 0] += 1 - xik / h
            out[r, 1] += xik / h
        elif xr > xk[k - 1]:
            h = xk[k - 1] - xk[k - 2]
            xik = xr - xk[k - 1]
            cm = xik * h / 6
            cp = xik * h / 3
            for c in range(k):
                out[r, c] = cm * F[k - 2, c] + cp * F[k - 1, c]
            out[r, k - 2] -= xik / h
            out[r, k - 1] += 1 + xik / h
        else:
            # interval: the last knot at or below x (searchsorted 'right' - 1), clipped
            lo = 0
            hi = k
            while lo < hi:
                mid = (lo + hi) // 2
                if xk[mid] <= xr:
                    lo = mid + 1
                else:
                    hi = mid
            j = lo - 1
            if j > k - 2:
                j = k - 2
            if j < 0:
                j = 0
            h = xk[j + 1] - xk[j]
            dm = xk[j + 1] - xr
            dp = xr - xk[j]
            cm = (dm * dm * dm / h - h * dm) / 6
            cp = (dp * dp * dp / h - h * dp) / 6
            for c in range(k):
                out[r, c] = cm * F[j, c] + cp * F[j + 1, c]
            out[r, j] += dm / h
            out[r, j + 1] += dp / h


@numba.njit(cache=True, nogil=True)
def cell_tables(ks, w, z, r, sizes, offsets, out, bz, br):  # pragma: no cover
    """One pass over the rows for :func:`daskmm.kernels.gam_stats.discrete_cross_products`:
    for every pair of discretised terms ``i <= j`` the table ``sum w [k_i = a][k_j = b]``
    (flattened at ``offsets[i, j]``; ``i = j``: the diagonal only), and per term the sums of
    ``w z`` and ``sqrt(w)`` by cell (``bz``, ``br`` at ``offsets[i, i]``; the sum of ``w``
    is the diagonal table)."""
    n, m = ks.shape
    for row in range(n):
        wr = w[row]
        for i in range(m):
            a = ks[row, i]
            o = offsets[i, i]
            out[o + a] += wr
            bz[o + a] += wr * z[row]
            br[o + a] += r[row]
            for j in range(i + 1, m):
                out[offsets[i, j] + a * sizes[j] + ks[row, j]] += wr
    return 0
