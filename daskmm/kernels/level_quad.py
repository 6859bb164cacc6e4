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
    ``W`` of shape (T, m, s, s)."""
    nt, m, s, _ = W.shape
    Wt = np.empty((m, s, s, nt))  # the T weights of one entry side by side
    for t in range(nt):
        Wt[:, :, :, t] = W[t]
    acc = np.zeros((k, k, nt))
    for lv in range(m):
        for i in range(s):
            ri = lv * s + i
            for j in range(s):
                rj = lv * s + j
                for p in range(indptr[ri], indptr[ri + 1]):
                    a = indices[p]
                    vp = data[p]
                    for q in range(indptr[rj], indptr[rj + 1]):
                        b = indices[q]
                        if b < a:
                            continue
                        vq = vp * data[q]
                        for t in range(nt):
                            acc[a, b, t] += Wt[lv, i, j, t] * vq
    out = np.empty((nt, k, k))
    for t in range(nt):
        for a in range(k):
            out[t, a, a] = acc[a, a, t]
            for b in range(a + 1, k):
                v = acc[a, b, t]
                out[t, a, b] = v
                out[t, b, a] = v
    return out
