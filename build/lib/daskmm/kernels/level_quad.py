"""``sum_l B_l' W_l B_l`` for a sparse ``B`` and several ``W`` at once (compiled, cached).

Crossed factors make the columns of a level group's ``B`` many (every level of the crossed
factors) and each level's rows sparse (the few crossed levels it meets). Each sum is a dense
``k x k`` matrix; a sparse matrix product would build it as a sparse matrix with ``k^2``
entries first, at several times the cost of the arithmetic, which here is
``m s^2 nnz_row^2`` per ``W``. The criterion and its derivatives need the same sum for
several ``W`` (``Lambda P`` and each ``C_i`` of :func:`daskmm.kernels.pls.eval_group_grad`):
one pass over ``B`` serves them all, and with symmetric ``W`` only the upper triangle is
accumulated.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def level_quads(indptr, indices, data, W, k):  # pragma: no cover - compiled
    """``out[t] = sum_l B_l' W[t, l] B_l`` (dense, ``(T, k, k)``) for ``B`` as CSR with sorted
    column indices and row ``l s + i`` holding row ``i`` of level ``l``'s block, and symmetric
    ``W`` of shape (T, m, s, s).

    Each sum is accumulated in its lower triangle only (its own pass: one matrix's scattered
    updates stay in cache better than several interleaved), then mirrored in tiles."""
    nt, m, s, _ = W.shape
    out = np.zeros((nt, k, k))
    for t in range(nt):
        acc = out[t]
        for lv in range(m):
            for i in range(s):
                ri = lv * s + i
                for j in range(s):
                    w = W[t, lv, i, j]
                    if w == 0.0:
                        continue
                    rj = lv * s + j
                    for p in range(indptr[ri], indptr[ri + 1]):
                        a = indices[p]
                        vp = data[p] * w
                        for q in range(indptr[rj], indptr[rj + 1]):
                            b = indices[q]
                            if b > a:
                                break  # sorted: the rest lie above the diagonal
                            acc[a, b] += vp * data[q]
        _mirror_lower(acc)
    return out


@numba.njit(cache=True, nogil=True)
def _mirror_lower(A):  # pragma: no cover - compiled
    """Copy the strict lower triangle of square ``A`` onto the upper, in 64 x 64 tiles."""
    k = A.shape[0]
    tile = 64
    for i0 in range(0, k, tile):
        for j0 in range(0, i0 + 1, tile):
            for i in range(i0, min(i0 + tile, k)):
                for j in range(j0, min(j0 + tile, i)):
                    A[j, i] = A[i, j]
