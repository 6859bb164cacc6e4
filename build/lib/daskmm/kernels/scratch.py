"""Per-thread scratch vectors reused from one partition to the next."""

from __future__ import annotations

import threading

import numpy as np

_POOL = threading.local()


def scratch(name: str, n: int, dtype: type = np.float64) -> np.ndarray:
    """A per-thread scratch vector of length ``n``, reused from one partition to the next.

    Dask workers return freed memory to the OS eagerly (``MALLOC_TRIM_THRESHOLD_``), so every
    fresh array of a million rows costs thousands of page faults, as much as the arithmetic
    done on it. Temporaries that do not outlive one partition's statistics come from here; the
    pool holds the largest size seen per name (a few vectors of one partition's length).
    """
    pool = getattr(_POOL, "arrays", None)
    if pool is None:
        pool = _POOL.arrays = {}
    key = (name, np.dtype(dtype))
    a = pool.get(key)
    if a is None or len(a) < n:
        a = pool[key] = np.empty(n, dtype=dtype)
    return a[:n]
