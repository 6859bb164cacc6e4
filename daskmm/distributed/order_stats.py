"""Exact quantiles (R's ``quantile(x)``, type 7) of a lazy dask Series, in a few passes over
its partitions, without gathering the values: the residual quantiles lme4 prints as
``Scaled residuals:`` for a fit whose rows live on the workers.

Passes: the count and range; one histogram of :data:`daskmm.kernels.order_stats.BINS` bins
over the range, which puts each wanted rank in a bin; the values of those bins, gathered and
sorted. A bin holding more than :data:`GATHER_MAX` values (heavy ties, or a huge data set) is
narrowed to its own value range and cut again.
"""

from __future__ import annotations

import math

import dask
import numpy as np

from daskmm.kernels import order_stats as ks

GATHER_MAX = 200_000
"""A bin with at most this many values is gathered to the client and sorted."""
PROBS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _per_partition(series, fn, *args) -> list:
    parts = series.to_delayed()
    return list(dask.compute(*[dask.delayed(fn)(p, *args) for p in parts]))


def _order_statistics(series, ranks: list[int], lo: float, hi: float, below: int
                      ) -> dict[int, float]:
    """The values of the 0-based ``ranks`` (all of whose values lie in ``[lo, hi]``;
    ``below`` values lie under ``lo``)."""
    if lo == hi:
        return {r: lo for r in ranks}
    counts = np.sum([c for _, c in _per_partition(series, ks.bin_counts, lo, hi)], axis=0)
    cum = np.cumsum(counts)
    where = {}
    for r in ranks:
        b = int(np.searchsorted(cum, r - below, side="right"))
        where[r] = (b, below + (int(cum[b - 1]) if b else 0))
    small = sorted({b for b, _ in where.values() if counts[b] <= GATHER_MAX})
    out: dict[int, float] = {}
    if small:
        got = _per_partition(series, ks.values_in_bins, lo, hi, small)
        vals = {b: np.sort(np.concatenate([g[b] for g in got])) for b in small}
        for r, (b, start) in where.items():
            if b in vals:
                out[r] = float(vals[b][r - start])
    for b in sorted({b for b, _ in where.values() if counts[b] > GATHER_MAX}):
        # a crowded bin: its values' own range holds no other bin's values (bin_index is
        # monotone), so the search goes on inside it
        rng = _per_partition(series, ks.bin_range, lo, hi, b)
        sub_lo = min(r[1] for r in rng if r[0])
        sub_hi = max(r[2] for r in rng if r[0])
        rs = [r for r, (bb, _) in where.items() if bb == b]
        start = next(s for bb, s in where.values() if bb == b)
        out.update(_order_statistics(series, rs, sub_lo, sub_hi, start))
    return out


def quantiles(series) -> list[float]:
    """R's ``quantile(x)`` (type 7, at 0, .25, .5, .75, 1) of a dask Series' finite
    values, with R's interpolation ``(1 - h) x[lo] + h x[hi]``."""
    res = _per_partition(series, ks.summary)
    n = sum(r[0] for r in res)
    if not n:
        return [math.nan] * len(PROBS)
    lo = min(r[1] for r in res if r[0])
    hi = max(r[2] for r in res if r[0])
    idx = [(n - 1) * p for p in PROBS]
    ranks = sorted({k for i in idx for k in (math.floor(i), math.ceil(i))} - {0, n - 1})
    stats = {0: lo, n - 1: hi}
    if ranks:
        stats.update(_order_statistics(series, ranks, lo, hi, 0))
    out = []
    for i in idx:
        a, b = math.floor(i), math.ceil(i)
        q = stats[a]
        if i > a and stats[b] != q:
            h = i - a
            q = (1 - h) * q + h * stats[b]
        out.append(q)
    return out
