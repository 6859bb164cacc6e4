"""Running jobs on the shared cluster: cancel mid-fit, a server killed with SIGKILL and
started again, a worker killed mid-fit, priorities and the concurrency limit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml
from distributed import Client

from tests.distributed.test_dask_processes import process_cluster
from tests.service.conftest import SLEEP_JOB, Server, call, simulated_dataset


def long_job(data_root, scheduler, name="long") -> dict:
    """A fit on 400,000 rows, each evaluation a round of tasks on the workers."""
    return {"name": name, "data": simulated_dataset(data_root, scheduler),
            "formula": "y ~ x + (x | g)", "cluster": {"mode": "distributed"}}


def scheduler_tasks(address: str) -> int:
    with Client(address, set_as_default=False) as c:
        return c.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def optimising(doc: dict) -> bool:
    return doc["state"] == "running" and doc["progress"].get("evaluations", 0) >= 1


def test_cancel_mid_fit_stops_its_tasks_and_leaves_no_result(fresh_server, cluster):
    s = fresh_server.start()
    _, out = s.submit(long_job(s.data, s.scheduler))
    _, nxt = s.submit(dict(SLEEP_JOB, name="after-cancel"))
    s.wait(out["id"], ("running",), until=optimising)
    assert scheduler_tasks(s.scheduler) > 0  # the fit's statistics live on the workers
    status, r = call(f"{s.url}/v1/jobs/{out['id']}/cancel", "POST")
    assert status == 200 and r["cancel_requested"]
    doc = s.wait(out["id"], timeout=60)
    assert doc["state"] == "cancelled"
    assert doc["history"][-1]["reason"] == "cancelled on request"
    folder = s.results / "alice" / out["id"]
    assert not folder.exists()
    assert not list(folder.parent.glob(f".{out['id']}.*"))
    deadline = time.time() + 30
    while scheduler_tasks(s.scheduler) and time.time() < deadline:
        time.sleep(0.5)
    assert scheduler_tasks(s.scheduler) == 0, "the cancelled fit's tasks are still there"
    assert s.wait(nxt["id"])["state"] == "succeeded"
    # a queued job is cancelled at once
    _, q1 = s.submit(long_job(s.data, s.scheduler, "queued-1"))
    _, q2 = s.submit(dict(SLEEP_JOB, name="queued-2"))
    status, r = call(f"{s.url}/v1/jobs/{q2['id']}/cancel", "POST")
    assert status == 200 and r["state"] == "cancelled"
    call(f"{s.url}/v1/jobs/{q1['id']}/cancel", "POST")
    assert s.wait(q1["id"], timeout=60)["state"] == "cancelled"


def test_server_killed_mid_fit_loses_no_job(fresh_server, cluster):
    s = fresh_server.start()
    _, a = s.submit(long_job(s.data, s.scheduler, "running-when-killed"))
    _, b = s.submit(dict(SLEEP_JOB, name="queued-when-killed"))
    pid = s.wait(a["id"], ("running",), until=optimising)["progress"]["pid"]
    assert _alive(pid)
    s.stop(signal.SIGKILL)
    # the job's process dies with the server (no fit goes on without a record)
    deadline = time.time() + 20
    while time.time() < deadline and _alive(pid):
        time.sleep(0.2)
    assert not _alive(pid)
    s.start()
    doc = s.job(a["id"])
    assert doc["state"] == "failed" and "server stopped while the job ran" in doc["error"]
    assert s.wait(b["id"])["state"] == "succeeded"
    status, r = call(f"{s.url}/v1/jobs/{a['id']}/retry", "POST")
    assert status == 200
    doc = s.wait(a["id"], timeout=300)
    assert doc["state"] == "succeeded" and doc["attempt"] == 2
    states = [h["state"] for h in doc["history"]]
    assert states == ["queued", "running", "failed", "queued", "running", "succeeded"]
    _, listing = call(f"{s.url}/v1/jobs")
    assert {a["id"], b["id"]} <= {j["id"] for j in listing["items"]}


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_priorities_then_first_come_and_the_concurrency_limit(fresh_server, cluster):
    s = fresh_server
    s.max_concurrent = 1
    s.start()
    _, first = s.submit(long_job(s.data, s.scheduler, "first"))
    s.wait(first["id"], ("running",))
    ids = {}
    for name, prio in (("q1", 0), ("q2", 5), ("q3", 0), ("q4", 5)):
        _, out = call(f"{s.url}/v1/jobs?priority={prio}", "POST", "alice",
                      dict(SLEEP_JOB, name=name))
        ids[name] = out["id"]
    docs = {n: s.wait(i, timeout=300) for n, i in ids.items()}
    order = sorted(docs, key=lambda n: docs[n]["timings"]["started_at"])
    assert order == ["q2", "q4", "q1", "q3"]
    spans = sorted([(d["timings"]["started_at"], d["timings"]["finished_at"])
                    for d in [s.job(first["id"]), *docs.values()]])
    assert all(a[1] <= b[0] + 1e-6 for a, b in zip(spans, spans[1:])), "ran two at once"


@pytest.fixture
def own_cluster(tmp_path):
    (tmp_path / "c").mkdir()
    with process_cluster(tmp_path / "c", nanny=False) as out:
        yield out


def test_a_worker_killed_mid_fit_gives_the_same_numbers(tmp_path, own_cluster, data_root,
                                                        tokens_file):
    address, workers = own_cluster
    job = long_job(data_root, address, "worker-loss")
    # the reference: the same job through `daskmm run` on the whole cluster
    ref_job = dict(job, data=str(data_root / job["data"]), output=str(tmp_path / "ref"))
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(ref_job))
    r = subprocess.run([sys.executable, "-m", "daskmm.cli", "run", str(tmp_path / "job.yaml"),
                        "--scheduler", address], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    want = json.loads((tmp_path / "ref" / "summary.json").read_text())
    (tmp_path / "results").mkdir()
    s = Server(tmp_path / "results", data_root, address, tokens_file).start()
    try:
        _, out = s.submit(job)
        s.wait(out["id"], ("running",), until=lambda d: optimising(d)
               and d["progress"]["evaluations"] >= 2)
        workers[1].send_signal(signal.SIGKILL)
        doc = s.wait(out["id"], timeout=600)
        assert doc["state"] == "succeeded", doc
        assert workers[1].wait(timeout=10) == -signal.SIGKILL
        _, got = call(f"{s.url}/v1/jobs/{out['id']}/results/summary.json")
    finally:
        s.stop()
    assert got["objective"] == pytest.approx(want["objective"], rel=1e-10)
    for k in ("theta", "sigma"):
        assert got[k] == pytest.approx(want[k], rel=1e-8)
