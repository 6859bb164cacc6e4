"""A bounded load on a real server: small fits from concurrent clients, each job run once,
none lost, each equal to a direct fit (the 200-job, 20-client run is
``benchmarks/bench_service.py``)."""

from __future__ import annotations

from daskmm.service.load import compare_with_direct, run_load
from tests.service.conftest import TOKENS


def test_concurrent_clients_get_every_job_run_once(server):
    out = run_load(server.url, TOKENS["alice"], "sleepstudy.csv", jobs=24, clients=6,
                   timeout=600)
    assert out["errors"] == []
    assert out["submitted"] == 24 and out["states"] == {"succeeded": 24}
    assert out["ran_more_than_once"] == 0
    assert compare_with_direct(out["results"], str(server.data / "sleepstudy.csv")) < 1e-10
    assert out["post_ms"]["n"] == 24 and out["get_ms"]["n"] >= 24
