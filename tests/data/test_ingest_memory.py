"""Ingest memory stays bounded: one worker limited to 600 MB ingests an input three times that
size (1.8 GB as pandas columns) without the worker's resident memory reaching the limit.

The worker's RSS is sampled every 20 ms in a thread inside the worker process; the nanny
would also restart a worker that crossed 95% of its limit (the test checks it was not).
Dask's *pause* at 80% is switched off here: a worker process with daskmm imported already
holds ~250-350 MB, so pausing at 480 MB would only stall the test, not bound anything."""

from __future__ import annotations

import math
import os
import threading

import dask
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster

from daskmm.data.ingest import ingest
from daskmm.data.manifest import read_manifest
from daskmm.distributed.client import NO_DASHBOARD

LIMIT = 600_000_000
FILES, ROWS, FLOATS = 57, 200_000, 18  # 11.4e6 rows x 20 columns x 8 bytes = 1.82 GB


def _start(dask_worker=None):
    import psutil
    proc = psutil.Process()
    state = {"peak": proc.memory_info().rss, "stop": threading.Event()}

    def loop():
        while not state["stop"].wait(0.02):
            state["peak"] = max(state["peak"], proc.memory_info().rss)
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    dask_worker._rss_probe = (state, t)
    return state["peak"]


def _stop(dask_worker=None):
    state, t = dask_worker._rss_probe
    state["stop"].set()
    t.join()
    return state["peak"]


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    d = tmp_path_factory.mktemp("big") / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    # one file written, the rest hard links to it: only the input's size matters here, and
    # writing 1.8 GB of Parquet took half a minute of the suite
    v0 = rng.random(ROWS)
    table = pa.table({**{f"v{j}": rng.random(ROWS) for j in range(FLOATS)}, "v0": v0,
                      "g": rng.permutation(np.arange(ROWS) % 50_000)})  # every level
    first = d / "part-000.parquet"
    pq.write_table(table, first, compression="none")
    for i in range(1, FILES):
        os.link(first, d / f"part-{i:03d}.parquet")
    return d, FILES * math.fsum(v0)


def test_ingest_input_three_times_the_worker_limit(big_input, tmp_path):
    src, v0_sum = big_input
    in_memory = FILES * ROWS * (FLOATS + 2) * 8
    assert in_memory >= 3 * LIMIT
    with dask.config.set({"distributed.worker.memory.pause": False}), \
            LocalCluster(n_workers=1, threads_per_worker=1, memory_limit=LIMIT,
                         **NO_DASHBOARD) as cluster, Client(cluster) as c:
        before = set(c.scheduler_info()["workers"])
        c.run(_start)
        m = ingest(str(src), "g", tmp_path / "ds", buckets=24, client=c)
        peaks = c.run(_stop)
        assert set(c.scheduler_info()["workers"]) == before  # never restarted
    assert max(peaks.values()) < LIMIT, {w: p / 2 ** 20 for w, p in peaks.items()}
    assert m.nrows == FILES * ROWS and m.levels["g"]["n_levels"] == 50_000
    got = sum(pq.read_table(p, columns=["v0"])["v0"].to_numpy().sum()
              for p in read_manifest(tmp_path / "ds").bucket_paths(tmp_path / "ds"))
    assert got == pytest.approx(v0_sum, rel=1e-12)
