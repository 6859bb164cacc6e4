"""Passes over the data: each a map over partitions run as named Dask tasks on the workers.

Only small things come back to the client: level sets, per-partition key arrays and sizes.
The per-partition statistics stay on the workers as futures until the caller decides whether
to gather them (small) or to evaluate the objective where they are (large).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from daskmm.distributed.mapreduce import token, tree_sum
from daskmm.distributed.progress import track
from daskmm.formula.checks import column_ranges
from daskmm.formula.spec import FactorSpec, ModelSpec, check_values
from daskmm.kernels.crossed_iter import add_crossed, partition_crossed
from daskmm.kernels.stats import (
    Layout,
    PartitionStats,
    concat_groups,
    merge_levels,
    partition_stats,
)

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client, Future


def partitions(frame) -> list:
    """The partitions of a frame as task inputs: a pandas frame (an in-process fit) is one."""
    if isinstance(frame, pd.DataFrame):
        return [frame]
    return frame.to_delayed()


# ---------------------------------------------------------------- metadata pass
def _meta_partition(df: pd.DataFrame, used: list[str], categorical: list[str],
                    group_cols: list[str], transforms: list | None = None,
                    keys: dict | None = None) -> dict:
    df = df[used]
    for c in used:
        check_values(df[c])
    summaries = []
    for tr in transforms or []:  # scale/poly over the rows where their argument is present
        env = {keys[c]: df[c].to_numpy() for c in tr.columns}
        ok = df[list(tr.columns)].notna().all(axis=1).to_numpy() if tr.columns else \
            np.ones(len(df), dtype=bool)
        if tr.kind == "factor":  # levels: those of the rows the fit keeps
            ok = ok & df.notna().all(axis=1).to_numpy()
        summaries.append(tr.summarise(env, ok))
    df = df.loc[df.notna().all(axis=1).to_numpy()]
    levels = {c: pd.unique(df[c]) for c in categorical}
    combos = df[group_cols].drop_duplicates() if group_cols else None
    return {"levels": levels, "combos": combos, "n": len(df), "transforms": summaries,
            "_t": transforms or []}


def _meta_combine(parts: list[dict]) -> dict:
    levels = {}
    for c in parts[0]["levels"]:
        levels[c] = pd.unique(np.concatenate([np.asarray(p["levels"][c], dtype=object)
                                              for p in parts]))
    combos = None
    if parts[0]["combos"] is not None:
        combos = pd.concat([p["combos"] for p in parts]).drop_duplicates()
    trs = parts[0]["_t"]
    summaries = [tr.combine([p["transforms"][i] for p in parts]) for i, tr in enumerate(trs)]
    return {"levels": levels, "combos": combos, "n": sum(p["n"] for p in parts),
            "transforms": summaries, "_t": trs}


def metadata_pass(client: Client, ddf: dd.DataFrame, used: list[str], categorical: list[str],
                  group_cols: list[str], split_every: int = 8, transforms: list | None = None,
                  keys: dict | None = None) -> dict:
    """Levels of the categorical columns and the distinct combinations of the grouping columns
    (rows with a missing value in a used column dropped), and the combined summaries of the
    ``transforms`` whose state needs the whole data (``scale``, ``poly``, ``factor``; ``keys``:
    column -> variable), as a tree reduction."""
    if isinstance(ddf, pd.DataFrame):  # in process: one partition, no graph
        return _meta_partition(ddf, used, categorical, group_cols, transforms, keys)
    import dask

    tok = token()
    meta = dask.delayed(_meta_partition, pure=False)
    parts = [meta(p, used, categorical, group_cols, transforms, keys,
                  dask_key_name=f"daskmm-meta-{tok}-{i}")
             for i, p in enumerate(partitions(ddf))]
    level = 0
    while len(parts) > 1:
        parts = [dask.delayed(_meta_combine, pure=False)(
            parts[j:j + split_every], dask_key_name=f"daskmm-meta-combine-{tok}-{level}-{j}")
            for j in range(0, len(parts), split_every)]
        level += 1
    if not parts:
        return {"levels": {c: np.array([]) for c in categorical}, "combos": None, "n": 0,
                "transforms": []}
    return client.compute(parts[0]).result()


# ---------------------------------------------------------------- statistics pass
def _stats_partition(df: pd.DataFrame, spec: ModelSpec, layout: Layout) -> PartitionStats:
    enc = spec.encode(df)
    stats = partition_stats(enc.y, enc.X, enc.w, enc.Z, enc.keys, layout, enc.n_dropped,
                            enc.names)
    stats.ranges = column_ranges(enc.y, enc.Z)
    return stats


def stats_pass(client: Client, ddf: dd.DataFrame, spec: ModelSpec, layout: Layout) -> list[Future]:
    """Compute :class:`PartitionStats` for every partition; futures left on the workers.

    The spec and layout go out once, as one key each, instead of being pickled into every
    task: unpickling a formula spec per partition costs milliseconds a task."""
    if isinstance(ddf, pd.DataFrame):  # in process: one partition, no graph
        return client.map(_stats_partition, [ddf], spec=spec, layout=layout)
    import dask

    tok = token()
    spec_d = dask.delayed(spec, name=f"daskmm-spec-{tok}", traverse=False)
    layout_d = dask.delayed(layout, name=f"daskmm-layout-{tok}", traverse=False)
    stats = dask.delayed(_stats_partition, pure=False)
    tasks = [stats(p, spec_d, layout_d, dask_key_name=f"daskmm-stats-{tok}-{i}")
             for i, p in enumerate(partitions(ddf))]
    futures = client.compute(tasks)
    track(futures, "statistics pass")
    return futures


def _crossed_partition(df: pd.DataFrame, spec: ModelSpec, factors: list[str],
                       levels: list[np.ndarray], slopes: bool = False):
    enc = spec.encode(df)
    part = partition_crossed(enc.y, enc.X, enc.w, [enc.keys[f] for f in factors], levels,
                             enc.Z[factors[0]] if slopes else None)
    return part, enc.n_dropped, column_ranges(enc.y, {})


def _crossed_combine(parts: list):
    ranges = [r for _, _, r in parts if r]
    y = (min(r["y"][0] for r in ranges), max(r["y"][1] for r in ranges)) if ranges else None
    return (add_crossed([p for p, _, _ in parts]), sum(d for _, d, _ in parts),
            {"y": y} if y else {})


def crossed_pass(client: Client, ddf: dd.DataFrame, spec: ModelSpec, factors: list[str],
                 levels: list[np.ndarray], slopes: bool = False, keep: bool = False):
    """The cross-products of crossed factors (:func:`~daskmm.kernels.crossed_iter.
    partition_crossed`: ``Z'Z`` sparse, its non-zeros at most the rows') summed over the
    partitions by a tree of tasks and brought to the client: ``((CrossedStats, sum log w),
    rows dropped, the response's range)`` (:func:`~daskmm.formula.checks.column_ranges`).
    ``slopes``: the first factor's term has random slopes (its model columns go in).
    ``keep`` (a cluster): each partition's, left on the workers (futures;
    :func:`crossed_sum`, :func:`crossed_blocks`)."""
    if isinstance(ddf, pd.DataFrame):  # in process: one partition, no graph
        return _crossed_partition(ddf, spec, factors, levels, slopes)
    import dask

    tok = token()
    spec_d = dask.delayed(spec, name=f"daskmm-spec-{tok}", traverse=False)
    levels_d = dask.delayed(levels, name=f"daskmm-levels-{tok}", traverse=False)
    part = dask.delayed(_crossed_partition, pure=False)
    tasks = [part(p, spec_d, factors, levels_d, slopes,
                  dask_key_name=f"daskmm-crossed-{tok}-{i}")
             for i, p in enumerate(partitions(ddf))]
    futures = client.compute(tasks)
    track(futures, "statistics pass")
    if keep:
        return futures
    return crossed_sum(client, futures)


def crossed_sum(client: Client, futures: list, tables: bool = True):
    """:func:`crossed_pass`'s partitions summed at the client (``tables=False``: without
    the first factor's crossing tables, held in blocks by :func:`crossed_blocks`)."""
    return tree_sum(client, futures, _crossed_combine if tables else _crossed_head_combine,
                    split_every=4).result()


def crossed_entries(client: Client, futures: list) -> np.ndarray:
    """Each first-factor level's entries in the crossing tables, summed over the partitions
    (a level's pair met in two partitions counted twice)."""
    from daskmm.distributed.mapreduce import map_gather
    return sum(map_gather(client, _crossed_entries, futures, pure=False))


def crossed_blocks(client: Client, futures: list, st, entries: np.ndarray | None = None,
                   blocks: int | None = None):
    """The first factor's crossing tables of :func:`crossed_pass`'s partitions (``futures``)
    summed into blocks of its levels on the workers, one a worker (``blocks`` where given),
    each block's entries balanced (``entries``: :func:`crossed_entries`, where known): a
    :class:`~daskmm.kernels.crossed_blocks.BlockedCrossing` (``st``: the sums without them,
    :func:`crossed_sum`). The partitions' futures stay referenced by the caller for as long
    as the blocks are used: a lost block is made again from them."""
    # here, not at the top: the crossed kernels load numba, which other fits never need
    from daskmm.distributed.blocks import ClientBlocks, Placement
    from daskmm.distributed.mapreduce import task_keys
    from daskmm.kernels import crossed_blocks as CB

    place = Placement(client, futures, blocks)
    if entries is None:
        entries = crossed_entries(client, futures)
    bounds = CB.block_bounds(entries, place.n)
    n, r = len(bounds) - 1, st.cols
    pk = task_keys("crossed-block_values", n * len(place.groups))
    fk = task_keys("crossed-block", n)
    held = []
    for i in range(n):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        partials = [client.submit(_crossed_values, [futures[j] for j in idx], lo, hi,
                                  key=pk[i * len(place.groups) + g], pure=False,
                                  **place.on(w))
                    for g, (w, idx) in enumerate(place.groups)]
        held.append(client.submit(CB.stats_block, partials, st.counts[0][lo:hi], r,
                                  key=fk[i], pure=False, **place.on(place.workers[i])))
    return CB.BlockedCrossing(st.q_sizes[0], np.asarray(st.counts[0], float),
                              *CB.rest_of_tables(st.counts, st.tables), r, bounds,
                              tuple(held), ClientBlocks(client), 0, ())


def _crossed_entries(out) -> np.ndarray:
    from daskmm.kernels.crossed_blocks import stats_row_entries
    return stats_row_entries(out[0][0])


def _crossed_values(outs: list, lo: int, hi: int) -> list:
    from daskmm.kernels.crossed_blocks import stats_values
    return stats_values([o[0] for o in outs], lo, hi)


def _crossed_head_combine(parts: list):
    from daskmm.kernels.crossed_blocks import add_heads
    ranges = [r for _, _, r in parts if r]
    y = (min(r["y"][0] for r in ranges), max(r["y"][1] for r in ranges)) if ranges else None
    return (add_heads([p for p, _, _ in parts]), sum(d for _, d, _ in parts),
            {"y": y} if y else {})


def _summary(stats: PartitionStats) -> tuple[np.ndarray, dict]:
    keys = (np.concatenate([g.levels for g in stats.groups]) if stats.groups
            else np.array([], dtype=object))
    return keys, {"n": stats.n, "nbytes": stats.nbytes, "G": stats.G,
                  "sum_log_w": stats.sum_log_w, "n_dropped": stats.n_dropped,
                  "ranges": stats.ranges}


def stats_summary(client: Client, futures: list[Future]) -> tuple[list[np.ndarray], list[dict]]:
    """Primary-level keys and small summaries of each partition's statistics (one round)."""
    tok = token()
    out = client.gather(client.map(_summary, futures, key=[f"daskmm-summary-{tok}-{i}"
                                                           for i in range(len(futures))]))
    return [k for k, _ in out], [s for _, s in out]


def gather_stats(client: Client, futures: list[Future], merge: bool,
                 split_every: int = 4) -> PartitionStats:
    """Bring the statistics to the client as one level-sorted :class:`PartitionStats`.

    Partitions that split levels (``merge``) are summed by level in a tree of tasks on the
    workers, so the client receives one set of per-level blocks, not one per partition.
    """
    if not merge:  # aligned: the parts are disjoint and small in total; stack them here
        return concat_groups(client.gather(futures))
    tok = token()
    level = 0
    while len(futures) > 1:
        futures = [client.submit(merge_levels, futures[j:j + split_every],
                                 key=f"daskmm-gather-{tok}-{level}-{j}")
                   for j in range(0, len(futures), split_every)]
        level += 1
    return merge_levels([futures[0].result()])


def aligned(keys: list[np.ndarray]) -> bool:
    """True when no primary level appears in two partitions."""
    nonempty = [k for k in keys if len(k)]
    if len(nonempty) <= 1:
        return True
    allk = np.concatenate(nonempty)
    return len(pd.unique(allk)) == len(allk)


def _raw_levels(df: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """The distinct values (tuples for several columns) of ``columns`` in one partition."""
    sub = df[columns].dropna()
    if len(columns) == 1:
        return pd.unique(sub[columns[0]].to_numpy(dtype=object))
    rows = list(sub.drop_duplicates().itertuples(index=False, name=None))
    out = np.empty(len(rows), dtype=object)  # 1-d, one tuple an entry
    out[:] = rows
    return out


def raw_aligned(client, ddf: dd.DataFrame, factor: FactorSpec) -> bool:
    """:func:`aligned` on the raw columns of ``factor``, before any encoding: one map that
    reads only those columns (cheap where the input is held on the workers)."""
    import dask

    if ddf.npartitions <= 1:
        return True
    get = dask.delayed(_raw_levels, pure=False)
    return aligned(client.gather(client.compute(
        [get(p, list(factor.columns)) for p in partitions(ddf)])))


def shuffle_by(ddf: dd.DataFrame, factor: FactorSpec) -> dd.DataFrame:
    """Repartition rows so that every level of ``factor`` sits in one partition."""
    return ddf.shuffle(on=list(factor.columns), npartitions=max(ddf.npartitions, 1))


def persist_spread(client, ddf, fn, name: str, label: str, *args) -> list:
    """``fn(partition, *args)`` of every partition, kept on the workers as futures
    (``daskmm-{name}-<token>-<i>``), partition ``i`` on worker ``i mod n``: every pass of a fit
    then runs where its partition is (two on one worker, as a shuffle's outputs sometimes
    land, would halve the speed, or move the data when the scheduler steals a task); another
    worker takes over if that one is lost. A pandas frame (in process): one partition, no
    graph. ``label``: the progress line's."""
    from daskmm.distributed.mapreduce import map_parts
    if isinstance(ddf, pd.DataFrame):
        return map_parts(client, fn, [ddf], *[[a] for a in args])
    import contextlib

    import dask

    tok = token()
    prep = dask.delayed(fn, pure=False)
    info = getattr(client, "scheduler_info", None)
    workers = sorted(info(n_workers=-1)["workers"]) if info is not None else []
    tasks = []
    for i, p in enumerate(partitions(ddf)):
        with (dask.annotate(workers=[workers[i % len(workers)]], allow_other_workers=True)
              if workers else contextlib.nullcontext()):
            tasks.append(prep(p, *args, dask_key_name=f"daskmm-{name}-{tok}-{i}"))
    futures = client.compute(tasks)
    track(futures, label)
    return futures

