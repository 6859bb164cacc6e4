"""A bounded load on a real server: small fits from concurrent clients, each job run once,
none lost, each equal to a direct fit (the 200-job, 20-client run is
``benchmarks/bench_service.py``)."""

from __future__ import annotations

import pytest

from daskmm.service.load import compare_with_direct, run_load
from tests.service.conftest import TOKENS, Server


@pytest.fixture
def recycling_server(tmp_path, cluster, data_root, tokens_file):
    """Each job process takes 3 jobs, then a fresh one: handing over jobs while processes
    come and go must lose none."""
    (tmp_path / "results").mkdir()
    s = Server(tmp_path / "results", data_root, cluster[0], tokens_file,
               env={"DASKMM_SERVICE_JOBS_PER_PROCESS": "3"}).start()
    yield s
    s.stop()


def test_concurrent_clients_get_every_job_run_once(recycling_server):
    server = recycling_server
    out = run_load(server.url, TOKENS["alice"], "sleepstudy.csv", jobs=24, clients=6,
                   timeout=600, poll_s=0.5)
    assert out["errors"] == []
    assert out["submitted"] == 24 and out["states"] == {"succeeded": 24}
    assert out["ran_more_than_once"] == 0
    assert compare_with_direct(out["results"], str(server.data / "sleepstudy.csv")) < 1e-10
    assert out["post_ms"]["n"] == 24 and out["get_ms"]["n"] >= 24
