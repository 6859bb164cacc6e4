"""The same GLMM fit over partitions and workers, and the input read once."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pytest
from distributed import Client, LocalCluster, get_task_stream

from daskmm.distributed.client import NO_DASHBOARD
from daskmm.models.glmm.fit import glmm
from tests.models.glmm.helpers import simulate, slopes_frame


def norm_rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


def assert_same_fit(a, b):
    """Objective to 1e-10, parameter vectors to 1e-8 (relative norm, as the LMM's test)."""
    assert b.objective == pytest.approx(a.objective, rel=1e-10)
    assert norm_rel(b.theta, a.theta) < 1e-8
    assert norm_rel(b.beta, a.beta) < 1e-8
    ra, rb = a.ranef_frame(), b.ranef_frame()
    assert list(ra["level"]) == list(rb["level"])
    assert np.max(np.abs(ra["estimate"] - rb["estimate"])) < 1e-8 * (
        1 + np.max(np.abs(ra["estimate"])))


@pytest.mark.parametrize("formula, family", [
    ("y ~ x + offset(log(t)) + (1 | g)", "poisson"),
    ("y ~ x + (1 + x | g)", "poisson"),
    ("y ~ x + (1 | g) + (1 | h)", "poisson"),
])
def test_invariant_to_partitions(client, formula, family):
    if "offset" in formula:
        df = simulate(3, "poisson", n=3000, m=60)
    elif "(1 | h)" in formula:  # crossed: a PIRLS round trip per step; keep it small
        df = slopes_frame(n=400, m=12)
    else:
        df = slopes_frame()
    a = glmm(formula, df, family, client=client, npartitions=1)
    b = glmm(formula, df, family, client=client, npartitions=3)  # split levels: shuffled
    assert_same_fit(a, b)


def test_invariant_to_workers():
    """1 worker against 3 workers (separate clusters), random slopes."""
    df = slopes_frame(seed=8, n=600, m=15)
    fits = []
    for workers in (1, 3):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          **NO_DASHBOARD) as cl, Client(cl) as c:
            # one optimiser stage: the property is the cluster's, not the optimiser's
            fits.append(glmm("y ~ x + (1 + x | g)", df, "poisson", client=c, npartitions=3,
                             optimizer_options={"stages": 1}))
    assert_same_fit(*fits)


@pytest.mark.parametrize("formula", ["cbind(y, k - y) ~ x + (1 | g)",
                                     "cbind(y, k - y) ~ x + (1 + x | g)",
                                     "cbind(y, k - y) ~ x + (1 | g/h)"])
def test_input_read_once(client, tmp_path, formula):
    """Over every evaluation, each input partition is read exactly once (with several
    factors the metadata pass and the encoding share one read)."""
    df = simulate(4, "binomial", n=2000, m=40)
    df["h"] = np.arange(len(df)) % 3
    path = tmp_path / "d.parquet"
    path.mkdir()
    for i in range(4):  # 4 files, whole levels in each
        df[df["g"] % 4 == i].to_parquet(path / f"p{i}.parquet")
    with get_task_stream(client) as ts:
        fit = glmm(formula, str(path), "binomial", client=client)
    assert fit.optinfo["feval"] > 20
    # dask may fuse the 4 small files into fewer read tasks once columns are projected
    reads = [str(t["key"]) for t in ts.data if "read_parquet" in str(t["key"])]
    assert 1 <= len(reads) <= dd.read_parquet(str(path)).npartitions, sorted(reads)
    assert len(set(reads)) == len(reads)  # no read task ran twice


# ------------------------------------------------------------------ predictions
