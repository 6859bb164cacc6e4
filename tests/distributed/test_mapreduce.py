"""The one map-reduce every model runs its tasks through (:mod:`daskmm.distributed.mapreduce`):
sums in the same order in process and on a cluster, and tasks named for the dashboard."""

from __future__ import annotations

import numpy as np
import pandas as pd
from distributed import get_task_stream

from daskmm.distributed.execution import InProcess
from daskmm.distributed.mapreduce import map_gather, map_reduce, step_name, tree_sum
from daskmm.kernels import gam_stats


def _square(part, scale=1.0):
    return {"s": np.asarray(part, float) ** 2 * scale}


def _add(*parts):
    return parts[0] + sum(parts[1:])


def test_sums_are_the_same_in_process_and_on_a_cluster(client):
    parts = [np.linspace(i, i + 1, 5) * 1e-3 ** i for i in range(23)]
    here = map_reduce(InProcess(), _square, parts, gam_stats.add, scale=3.0)
    there = map_reduce(client, _square, [client.scatter(p) for p in parts], gam_stats.add,
                       scale=3.0)
    assert np.array_equal(here["s"], there["s"])  # bit for bit: the same tree
    assert tree_sum(InProcess(), [1.0, 2.0, 3.0, 4.0, 5.0], _add, split_every=2,
                    splat=True).result() == 15.0


def test_tasks_are_named_by_model_and_step(client):
    assert step_name(_square) == "test_mapreduce-square"
    with get_task_stream(client) as ts:
        assert map_gather(client, _square, [1.0, 2.0], scale=2.0)[1]["s"] == 8.0
    assert any(str(t["key"]).startswith("daskmm-test_mapreduce-square-") for t in ts.data)


def test_a_glmm_on_a_cluster_runs_named_tasks(client):
    import daskmm
    rng = np.random.default_rng(1)
    n = 400
    g = rng.integers(0, 20, n)
    x = rng.normal(size=n)
    df = pd.DataFrame({"y": rng.poisson(np.exp(0.3 + 0.5 * x + rng.normal(0, 0.5, 20)[g])),
                       "x": x, "g": g.astype(str)})
    with get_task_stream(client) as ts:
        daskmm.glmm("y ~ x + (1 | g)", df, "poisson", client=client, mode="distributed")
    names = {t["key"].rsplit("-", 2)[0] for t in ts.data
             if isinstance(t["key"], str) and t["key"].startswith("daskmm-")}
    assert "daskmm-glmm-evaluate" in names and "daskmm-glmm-scoring" in names


def _scaled_sum(k, v):
    return k * float(np.sum(v))


def test_large_keyword_arguments_of_two_maps_stay_apart(client):
    # distributed's Client.map keys a large keyword argument's data by the argument's name:
    # two maps with a large v= shared one key and the second read the first's v
    a = np.arange(20_000.0)
    first = map_gather(client, _scaled_sum, [1, 2], v=a)
    second = map_gather(client, _scaled_sum, [1, 2], v=-a)
    total = float(np.sum(a))
    assert first == [total, 2 * total]
    assert second == [-total, -2 * total]
