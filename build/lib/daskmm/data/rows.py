"""Counting the rows a fit or an ingest leaves out, and why.

Every dropped row is counted once, under the first of the checked columns in which it has a
missing value (the order of ``columns``), so the counts add up to the rows dropped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


class DropCounts(dict):
    """Column -> rows dropped for a missing value in it. Adds like a counter (``sum()`` over
    partitions works: ``0 + counts`` is ``counts``)."""

    def __add__(self, other):
        if isinstance(other, int) and other == 0:
            return DropCounts(self)
        out = DropCounts(self)
        for k, v in other.items():
            out[k] = out.get(k, 0) + int(v)
        return out

    __radd__ = __add__

    @property
    def total(self) -> int:
        return int(sum(self.values()))

    def describe(self) -> str:
        """``"x: 3, z: 1"``, largest first."""
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.items(), key=lambda kv: -kv[1]))


def missing_rows(df: pd.DataFrame, columns: list[str],
                 ok: np.ndarray | None = None) -> tuple[np.ndarray | None, DropCounts]:
    """Rows of ``df`` with no missing value in ``columns`` (a boolean mask, or None when every
    row is complete) and the counts of the others by first missing column.

    ``ok``, when given, is a precomputed per-column completeness test: a dict column -> mask.
    """
    first = None
    mask = None
    for j, c in enumerate(columns):
        good = ok[c] if ok is not None and c in ok else df[c].notna().to_numpy()
        if good.all():
            continue
        if mask is None:
            mask = good.copy()
            first = np.where(good, -1, j)
        else:
            first = np.where((first < 0) & ~good, j, first)
            mask &= good
    counts = DropCounts()
    if mask is not None:
        js, ns = np.unique(first[first >= 0], return_counts=True)
        for j, n in zip(js, ns):
            counts[str(columns[j])] = int(n)
    return mask, counts
