"""The scan's one distributed loop: relationship matrices, null models and variant blocks as
Dask tasks, results written as blocks finish.

For each sample set (traits sharing samples):

1. **GRM.** One task per group of up to :data:`GRM_GROUP` blocks of a chromosome returns
   ``Z Z'`` over its variants; partial sums are added on the workers into ``K_c`` per
   chromosome and ``K = sum_c K_c``.
2. **Null model per LOCO block.** ``K - K_c`` (``K`` with ``--no-loco``) is scaled,
   eigendecomposed on the complement of the covariates and ``h2`` fitted: one task.
3. **Tests.** One task per block rotates its variants by the null model's ``U`` (one matrix
   product) and tests them; the client writes each block's rows as it finishes.

At most :func:`window` chromosomes are in flight at once, so the workers hold a bounded
number of ``n x n`` matrices; ``K_c`` is kept between steps 1 and 2 (Dask spills what does not
fit to the workers' disks) when all of them together are at most the cluster's memory, and
recomputed otherwise (recomputing costs as much as step 1 again). The placement of every task is
Dask's; the result does not depend on it (every sum is over the same blocks in the same
order). Blocks already written (a resumed run) are not computed again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import pandas as pd

import daskmm.models.gwas.binary as binary_tasks
import daskmm.models.gwas.tasks as tasks
from daskmm.distributed.execution import is_in_process
from daskmm.distributed.mapreduce import submit, tree_sum
from daskmm.errors import DataError
from daskmm.models.gwas.samples import SampleSet
from daskmm.models.gwas.tasks import Block, Filters

log = logging.getLogger("daskmm")

GRM_GROUP = 8
"""Blocks per GRM task."""
SPARSE_TILE = 4096
"""Samples per side of a sparse-GRM tile (a task holds one ``tile x tile`` float64 block)."""


def plan_blocks(chrom: np.ndarray, block_size: int) -> list[Block]:
    """Blocks of at most ``block_size`` consecutive variants, never across chromosomes."""
    blocks = []
    start = 0
    m = len(chrom)
    while start < m:
        c = chrom[start]
        stop = start
        while stop < m and stop - start < block_size and chrom[stop] == c:
            stop += 1
        blocks.append(Block(len(blocks), str(c), start, stop))
        start = stop
    return blocks


def default_block_size(n_samples: int) -> int:
    """Variants a block: about 64 MB of float64 dosages, between 64 and 4096."""
    return int(min(4096, max(64, 8_000_000 // max(n_samples, 1))))


def window(client) -> int:
    """Chromosomes in flight at once: one per worker thread, at least two."""
    if is_in_process(client):
        return 1
    threads = sum(client.nthreads().values())
    return max(2, threads)


def _memory(client) -> float:
    if is_in_process(client):
        return float("inf")
    info = client.scheduler_info()["workers"]
    return float(sum(w.get("memory_limit") or 0 for w in info.values()) or float("inf"))


def _tree_sum(client, futs: list):
    return tree_sum(client, futs, tasks.add, split_every=4, splat=True)


def scan_set(client, reader, sset: SampleSet, set_id: int, blocks: list[Block],
             filters: Filters, loco: bool, done: set[tuple[int, int]],
             on_block: Callable[[Block, int, pd.DataFrame, pd.DataFrame], None],
             on_null: Callable[[str, int, object], None],
             nulls_known: dict[str, dict], sparse: dict | None = None,
             binary: dict | None = None) -> dict:
    """Run steps 1-3 for one sample set; ``done`` holds ``(block index, set id)`` already
    written; ``on_block`` writes a finished block, ``on_null`` records a null model (chrom
    ``"all"`` without LOCO). ``binary`` (``{"firth_p": ...}``): the traits are binary
    (:mod:`daskmm.models.gwas.binary`). Returns timings."""
    t0 = time.perf_counter()
    by_chrom: dict[str, list[Block]] = {}
    for b in blocks:
        by_chrom.setdefault(b.chrom if loco else "all", []).append(b)
    todo = {c: [b for b in bs if (b.index, set_id) not in done] for c, bs in by_chrom.items()}
    chroms = deque(c for c in by_chrom if todo[c] or c not in nulls_known)
    if not chroms:
        return {"grm_s": 0.0, "null_s": 0.0, "tests_s": 0.0}
    local = is_in_process(client)
    idx = sset.index if local else client.scatter(sset.index)
    X, Y = sset.X, sset.y
    n = len(sset.index)
    markers = None
    if binary is not None:
        markers = choose_markers(client, reader, idx, blocks[-1].stop, n, filters)
        if len(markers) < binary_tasks.RATIO_MARKERS:
            log.warning("only %d variants have a minor allele count of %d or more over the %d "
                        "samples of %s: the variance ratio uses %s", len(markers),
                        binary_tasks.RATIO_MAC, n, ", ".join(sset.traits),
                        "those" if len(markers) else "none and is 1 (no correction)")
    if sparse is not None:
        return _sparse_loop(client, reader, sset, set_id, idx, blocks, todo, filters, sparse,
                            on_block, on_null, t0, binary, markers)

    def grm(bs: list[Block]) -> list:
        return [submit(client, tasks.grm_blocks, reader, idx, bs[i:i + GRM_GROUP], filters,
                       pure=False) for i in range(0, len(bs), GRM_GROUP)]

    chrom_blocks: dict[str, list[Block]] = {}
    for b in blocks:
        chrom_blocks.setdefault(b.chrom, []).append(b)
    keep_kc = loco and len(chrom_blocks) * n * n * 8 <= _memory(client)
    kc = {c: _tree_sum(client, grm(bs)) for c, bs in chrom_blocks.items()}
    K_all = _tree_sum(client, list(kc.values()))
    if not keep_kc:
        kc.clear()
    if not local:
        from distributed import wait
        wait([K_all])
    t_grm = time.perf_counter() - t0
    timing = {"grm_s": t_grm, "null_s": 0.0}
    test = tasks.test_block
    if binary is not None:   # each trait's tau on the whole matrix, once
        test = binary_tasks.test_block
        fulls = [submit(client, binary_tasks.full_null, K_all, X, Y[:, j], pure=False)
                 for j in range(Y.shape[1])]

    def start(c: str):
        k_out = (kc.pop(c, None) or _tree_sum(client, grm(chrom_blocks[c]))) if loco else None
        if binary is None:
            null = submit(client, tasks.null_model, K_all, k_out, X, Y, pure=False)
        else:
            null = submit(client, binary_tasks.scan_null, K_all, k_out, X, Y, fulls, reader,
                          idx, markers, binary["firth_p"], pure=False)
        futs = [submit(client, test, reader, idx, b, filters, null, sset.traits, pure=False)
                for b in todo[c]]
        return null, futs

    _drain(client, chroms, start, todo, set_id, on_block, on_null, timing)
    # the LOCO blocks' nulls and tests overlap on a cluster (window() of them in flight):
    # null_s sums the null tasks' times, tests_s is the time after the GRM, never a
    # difference that could come out negative
    timing["tests_s"] = time.perf_counter() - t0 - t_grm
    return timing


def _drain(client, groups: deque, start, todo, set_id, on_block, on_null,
           timing: dict) -> None:
    """Start up to :func:`window` groups (a LOCO block's null model and its test blocks) at a
    time and hand each finished task to ``on_null`` / ``on_block`` as it completes."""
    if is_in_process(client):   # every task runs as it is submitted: no split of the time
        for c in groups:
            null, futs = start(c)
            on_null(c, set_id, null.result())
            for b, f in zip(todo[c], futs):
                on_block(b, set_id, *f.result())
        return
    from distributed import as_completed

    ac = as_completed()
    owner: dict = {}
    left: dict[str, int] = {}
    width = window(client)   # one scheduler round trip, not one per finished task
    while groups or left:
        while groups and len(left) < width:
            c = groups.popleft()
            null, futs = start(c)
            left[c] = len(futs) + 1
            ac.add(null)
            owner[null.key] = (c, None, time.perf_counter())
            for b, f in zip(todo[c], futs):
                ac.add(f)
                owner[f.key] = (c, b, None)
        f = next(ac)
        c, b, t = owner.pop(f.key)
        if b is None:
            on_null(c, set_id, f.result())
            timing["null_s"] += time.perf_counter() - t
        else:
            on_block(b, set_id, *f.result())
        f.release()
        left[c] -= 1
        if left[c] == 0:
            del left[c]


def grm_variant_indices(m: int, wanted: int | None) -> np.ndarray:
    """Evenly spaced variant indices for the sparse GRM: all ``m``, or ``wanted`` of them."""
    if wanted is None or wanted >= m:
        return np.arange(m)
    return np.unique(np.linspace(0, m - 1, wanted).round().astype(np.int64))


def choose_markers(client, reader, idx, n_variants: int, n: int, filters: Filters,
                   seed: int = 20_240_301) -> np.ndarray:
    """The variance ratio's markers (SAIGE's choice): :data:`binary_tasks.RATIO_MARKERS`
    variants drawn at random (seeded, so a rerun draws the same) among those that pass the
    filters with a minor allele count of :data:`binary_tasks.RATIO_MAC` or more over the
    set's samples; fewer when fewer qualify. Candidates are read in random batches until
    enough are found."""
    order = np.random.default_rng(seed).permutation(n_variants)
    want = binary_tasks.RATIO_MARKERS
    chosen: list[int] = []
    for start in range(0, n_variants, 20 * want):
        cand = np.sort(order[start:start + 20 * want])
        st = client.gather(submit(client, tasks.variant_table, reader, idx, cand, pure=False))
        chosen.extend(cand[binary_tasks.marker_choice(st, n, filters)].tolist())
        if len(chosen) >= want:
            break
    return np.sort(np.asarray(chosen[:want], dtype=np.int64))


def _sparse_loop(client, reader, sset, set_id, idx, blocks, todo, filters, sparse, on_block,
                 on_null, t0, binary=None, markers=None) -> dict:
    """Sparse mode: GRM variant statistics, the GRM by sample tiles (kept entries only), one
    null model, then every block's tests."""
    n = len(sset.index)
    vidx = grm_variant_indices(int(sparse["n_variants"]), sparse.get("grm_variants"))
    chunk = max(64, 4_000_000 // max(n, 1))
    parts = [vidx[i:i + chunk] for i in range(0, len(vidx), chunk)]
    st = client.gather([submit(client, tasks.variant_table, reader, idx, p, pure=False)
                        for p in parts])
    chunks, m = [], 0
    for p, s in zip(parts, st):
        keep = filters.reasons(s, n) == ""
        if keep.any():
            chunks.append((p[keep], s.mean[keep], s.sd[keep]))
            m += int(keep.sum())
    if m == 0:
        raise DataError("sparse mode: no variant passes the filters to build the GRM")
    tile = SPARSE_TILE
    edges = list(range(0, n, tile)) + [n]
    ranges = [np.arange(a, b) for a, b in zip(edges[:-1], edges[1:])]
    tiles = [submit(client, tasks.sparse_grm_tile, reader, idx, ranges[a], ranges[b], chunks,
                    m, sparse["threshold"], pure=False)
             for a in range(len(ranges)) for b in range(a, len(ranges))]
    if not is_in_process(client):
        from distributed import wait
        wait(tiles)
    timing = {"grm_s": time.perf_counter() - t0, "null_s": 0.0, "grm_variants": m}

    def start(c: str):
        if binary is None:
            null = submit(client, tasks.sparse_null, n, sset.X, sset.y,
                          int(sparse["max_group"]), *tiles, pure=False)
        else:
            null = submit(client, binary_tasks.sparse_scan_null, n, sset.X, sset.y,
                          int(sparse["max_group"]), reader, idx, markers, binary["firth_p"],
                          *tiles, pure=False)
        test = tasks.test_block if binary is None else binary_tasks.test_block
        futs = [submit(client, test, reader, idx, b, filters, null, sset.traits, pure=False)
                for b in todo[c]]
        return null, futs

    _drain(client, deque(["all"]), start, todo, set_id, on_block, on_null, timing)
    timing["tests_s"] = time.perf_counter() - t0 - timing["grm_s"] - timing["null_s"]
    return timing
