"""Exact order statistics of values spread over partitions: the per-partition pieces.

The client finds the ranks it needs (R's ``quantile(type = 7)``), then narrows each rank to one
bin of a histogram over a value range (:func:`bin_counts`), repeats on that bin while it holds
too many values, and finally gathers the few values of the bin (:func:`values_in_bin`). Every
piece uses :func:`bin_index`, so a value falls in the same bin in every pass.
"""

from __future__ import annotations

import numpy as np

BINS = 4096


def finite(values) -> np.ndarray:
    v = np.asarray(values, float)
    return v[np.isfinite(v)]


def summary(values) -> tuple[int, float, float]:
    """``(count, min, max)`` of the finite values (``(0, inf, -inf)`` when none)."""
    v = finite(values)
    if not len(v):
        return 0, np.inf, -np.inf
    return len(v), float(v.min()), float(v.max())


def bin_index(v: np.ndarray, lo: float, hi: float, bins: int = BINS) -> np.ndarray:
    """The bin of each value in ``[lo, hi]`` cut into ``bins`` equal bins (``hi`` in the
    last); values outside get -1."""
    out = np.full(len(v), -1, dtype=np.int64)
    inside = (v >= lo) & (v <= hi)
    if hi > lo:
        idx = np.floor((v[inside] - lo) / (hi - lo) * bins).astype(np.int64)
        out[inside] = np.clip(idx, 0, bins - 1)
    else:
        out[inside] = 0
    return out


def bin_counts(values, lo: float, hi: float, bins: int = BINS) -> tuple[int, np.ndarray]:
    """``(count below lo, counts per bin)`` of the finite values."""
    v = finite(values)
    idx = bin_index(v, lo, hi, bins)
    return int(np.sum(v < lo)), np.bincount(idx[idx >= 0], minlength=bins)


def values_in_bins(values, lo: float, hi: float, wanted: list[int],
                   bins: int = BINS) -> dict[int, np.ndarray]:
    """The finite values that fall in each bin of ``wanted`` of ``[lo, hi]``."""
    v = finite(values)
    idx = bin_index(v, lo, hi, bins)
    return {b: v[idx == b] for b in wanted}


def bin_range(values, lo: float, hi: float, b: int, bins: int = BINS) -> tuple[int, float,
                                                                               float]:
    """``summary()`` of the values in bin ``b`` of ``[lo, hi]``."""
    return summary(values_in_bins(values, lo, hi, [b], bins)[b])
