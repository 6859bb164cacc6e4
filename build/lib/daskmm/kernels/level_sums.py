"""Per-level sums of column products in one pass over the rows.

The single-factor statistics need, for every level ``l`` of the primary factor and a handful
of column pairs ``(a, b)``, the weighted sums ``sum_{r in l} w_r a_r b_r``. With numpy each
pair is its own pass (a product into a buffer, then a weighted ``bincount``) plus the passes
that turn keys into level codes: about ten passes over a million rows. From
:data:`JIT_MIN_ROWS` rows on, one compiled loop (:mod:`daskmm.kernels.level_sums_jit`) reads
each row once, looks its level up and adds every product into a small per-level row that stays
in cache. Both paths sum in row order within a level and form the products in the same order
(``a * b``, then times ``w``), so the result is the same to the last bit whichever ran; the
numpy path saves a small fit the compiler's import (half a second).

The compiled kernels are cached on disk (``cache=True``: beside their file, or under
``NUMBA_CACHE_DIR``), so a worker pays the compilation once per machine, not per fit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from daskmm.kernels.scratch import scratch

JIT_MIN_ROWS = 100_000
"""Partitions with at least this many rows use the compiled kernels."""

ONES = -1
"""Column index meaning "the constant 1" (an intercept column) in a pair list."""


def _pair_sums(codes: np.ndarray, m: int, cols: tuple, pairs: np.ndarray,
               w: np.ndarray, weighted: bool) -> np.ndarray:
    out = np.zeros((len(pairs), m))
    jit = len(codes) >= JIT_MIN_ROWS
    if jit:
        from daskmm.kernels.level_sums_jit import accumulate
    for k, (a, b) in enumerate(pairs):
        a, b = min(a, b), max(a, b)
        kind = 0 if b < 0 else 1 if a < 0 else 2
        xb = cols[b] if b >= 0 else w
        xa = cols[a] if a >= 0 else xb
        if jit:
            accumulate(codes, out[k], xa, xb, w, kind, weighted)
            continue
        if kind == 0:
            v = w if weighted else None
        elif kind == 1:
            v = xb * w if weighted else xb
        else:
            v = xa * xb * w if weighted else xa * xb
        out[k] = np.bincount(codes, v, minlength=m)
    return out


def _readonly(a: np.ndarray) -> np.ndarray:
    """A C-contiguous float64 read-only view (copying only when needed): columns from Arrow
    are read-only and numba types a tuple of arrays as one type only when all flags agree."""
    v = np.ascontiguousarray(a, dtype=np.float64).view()
    v.flags.writeable = False
    return v


def level_pair_sums(keys: np.ndarray, cols: list[np.ndarray], pairs: np.ndarray,
                    w: np.ndarray | None = None, want_codes: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Weighted sums of column products per level, in one pass over the rows.

    Parameters
    ----------
    keys : ndarray, shape (n,)
        Level key of every row (any dtype; integers over a compact range are fastest).
    cols : list of ndarray, shape (n,)
        The distinct columns.
    pairs : ndarray of int, shape (npairs, 2)
        Indices into ``cols``; :data:`ONES` stands for the constant 1.
    w : ndarray, shape (n,), optional
        Prior weights (None: all one).
    want_codes : bool
        Also return each row's level code.

    Returns
    -------
    sums : ndarray, shape (npairs, m)
        ``sums[k, l] = sum_{r in level l} w_r cols[a_k][r] cols[b_k][r]`` (products taken
        left to right, then times ``w_r``).
    levels : ndarray, shape (m,)
        The distinct keys, sorted; level ``l`` is ``levels[l]``.
    codes : ndarray of intp, shape (n,), or None
        A per-thread scratch vector (:func:`~daskmm.kernels.scratch.scratch`): valid until
        the next call on this thread.
    """
    n = len(keys)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    cols = tuple(_readonly(c) for c in cols) or (_readonly(np.zeros(n)),)
    weighted = w is not None
    wv = _readonly(w) if weighted else _readonly(np.empty(0))
    codes = scratch("level_codes", n, np.intp)
    if n == 0:
        return np.zeros((len(pairs), 0)), np.asarray(keys[:0]), codes if want_codes else None
    levels = None
    if keys.dtype.kind in "iu" and n >= JIT_MIN_ROWS:
        from daskmm.kernels.level_sums_jit import compact_codes, fill_codes, key_range
        k64 = keys.astype(np.int64, copy=False)
        lo, hi = key_range(k64)
        span = int(hi) - int(lo) + 1
        if span <= 4 * n + 1024:
            remap, m = compact_codes(k64, lo, span)
            fill_codes(k64, lo, remap, codes)
            levels = (np.flatnonzero(remap >= 0) + int(lo)).astype(keys.dtype)
    if levels is None:
        fcodes, uniq = pd.factorize(keys, sort=True)
        codes[:] = fcodes
        levels = np.asarray(uniq)
    out = _pair_sums(codes, len(levels), cols, pairs, wv, weighted)
    return out, levels, codes if want_codes else None
