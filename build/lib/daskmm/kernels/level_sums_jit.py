"""The compiled loops of :mod:`daskmm.kernels.level_sums` (numba, cached on disk)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def key_range(keys):  # pragma: no cover - compiled
    lo = keys[0]
    hi = keys[0]
    for r in range(1, keys.shape[0]):
        v = keys[r]
        if v < lo:
            lo = v
        elif v > hi:
            hi = v
    return lo, hi


@numba.njit(cache=True, nogil=True)
def compact_codes(keys, lo, span):  # pragma: no cover - compiled
    """``remap[key - lo]`` = rank of ``key`` among the keys present (so codes follow key order)."""
    remap = np.zeros(span, dtype=np.int64)
    for r in range(keys.shape[0]):
        remap[keys[r] - lo] = 1
    m = 0
    for i in range(span):
        if remap[i]:
            remap[i] = m
            m += 1
        else:
            remap[i] = -1
    return remap, m


@numba.njit(cache=True, nogil=True)
def fill_codes(keys, lo, remap, codes):  # pragma: no cover - compiled
    for r in range(keys.shape[0]):
        codes[r] = remap[keys[r] - lo]


@numba.njit(cache=True, nogil=True)
def accumulate(codes, o, xa, xb, w, kind, weighted):  # pragma: no cover - compiled
    """``o[codes[r]] += xa[r] * xb[r] (* w[r])`` over the rows; ``kind`` 0 drops both factors
    (a count), 1 drops ``xa`` (a column sum). One tight loop per case keeps it in registers."""
    n = codes.shape[0]
    if kind == 0:
        if weighted:
            for r in range(n):
                o[codes[r]] += w[r]
        else:
            for r in range(n):
                o[codes[r]] += 1.0
    elif kind == 1:
        if weighted:
            for r in range(n):
                o[codes[r]] += xb[r] * w[r]
        else:
            for r in range(n):
                o[codes[r]] += xb[r]
    else:
        if weighted:
            for r in range(n):
                o[codes[r]] += xa[r] * xb[r] * w[r]
        else:
            for r in range(n):
                o[codes[r]] += xa[r] * xb[r]
