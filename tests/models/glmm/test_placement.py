"""Where a cluster fit's partitions live: spread over the workers, whatever worker the input
partitions came from (every pass of the fit runs where its partition is)."""

from __future__ import annotations

from collections import Counter

import dask
import dask.dataframe as dd
from distributed import get_task_stream

from daskmm.models.glmm.fit import glmm

from .test_gradient import crossed_frame


def test_partitions_are_spread_over_the_workers(client):
    """Four input partitions, each holding whole levels of the primary factor (so no shuffle
    moves them), all persisted on one worker: the encoded partitions the fit keeps go two to
    each worker."""
    df = crossed_frame("binomial", n=1200, na=40)
    code = df["a"].astype(int) % 4
    frames = [dask.delayed(df[code == k].reset_index(drop=True)) for k in range(4)]
    first = sorted(client.scheduler_info(n_workers=-1)["workers"])[0]
    ddf = client.persist(dd.from_delayed(frames, meta=df.iloc[:0]), workers=[first])
    with get_task_stream(client) as ts:
        res = glmm("y ~ x + (1 | a) + (1 | b)", ddf, "binomial", client=client)
    assert res.optinfo["mode"] == "distributed"
    placed = Counter(t["worker"] for t in ts.data
                     if str(t["key"]).startswith("('daskmm-glmm-data")
                     or str(t["key"]).startswith("daskmm-glmm-data"))
    assert sorted(placed.values()) == [2, 2], placed
