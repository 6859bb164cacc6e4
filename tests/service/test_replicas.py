"""Two server replicas on one PostgreSQL job store (as a multi-replica deployment runs):
either takes jobs submitted to the other, and no job runs twice."""

from __future__ import annotations

import pytest

from tests.service.conftest import SLEEP_JOB, Server, call


@pytest.fixture
def shared_store(postgres_url):
    import sqlalchemy as sa
    eng = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(sa.text("DROP DATABASE IF EXISTS replicas"))
        conn.execute(sa.text("CREATE DATABASE replicas"))
    eng.dispose()
    return postgres_url.rsplit("/", 1)[0] + "/replicas"


def test_two_replicas_share_the_queue_and_run_each_job_once(tmp_path, cluster, data_root,
                                                            tokens_file, shared_store):
    results = tmp_path / "results"
    results.mkdir()
    a = Server(results, data_root, cluster[0], tokens_file, store=shared_store,
               replica="replica-a").start()
    b = Server(results, data_root, cluster[0], tokens_file, store=shared_store,
               replica="replica-b").start()
    try:
        ids = [a.submit(dict(SLEEP_JOB, name=f"replica-{i}"))[1]["id"] for i in range(12)]
        docs = [b.wait(i) for i in ids]  # the other replica sees them all
        assert [d["state"] for d in docs] == ["succeeded"] * 12
        runners = []
        for d in docs:
            runs = [h for h in d["history"] if h["state"] == "running"]
            assert len(runs) == 1, d["history"]
            runners.append(runs[0]["reason"].split()[-1].split(":")[0])
        assert set(runners) == {"replica-a", "replica-b"}, runners
        # a job is fetched from either replica
        status, summary = call(f"{b.url}/v1/jobs/{ids[0]}/results/summary.json")
        assert status == 200 and summary["nobs"] == 180
    finally:
        a.stop()
        b.stop()
