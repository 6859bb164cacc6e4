"""A real cluster of separate processes: ``dask scheduler`` and two ``dask worker`` processes
over TCP on 127.0.0.1, and the CLI joining it with ``--scheduler`` and with
``DASK_SCHEDULER_ADDRESS``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from distributed import Client, get_task_stream

from daskmm.data.simulate import simulate
from tests.conftest import load_fixture

DASK = shutil.which("dask") or str(Path(sys.executable).with_name("dask"))


@contextlib.contextmanager
def process_cluster(d: Path, nanny: bool = True):
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 over TCP; yields the
    scheduler address and the worker processes (without a nanny a killed worker stays dead)."""
    sched_file = d / "scheduler.json"
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), "dask scheduler did not start"
        workers = [subprocess.Popen(
            [DASK, "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
             "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(d)]
            + ([] if nanny else ["--no-nanny"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        procs += workers
        address = json.loads(sched_file.read_text())["address"]
        with Client(address, set_as_default=False) as c:
            c.wait_for_workers(2, timeout=60)
        assert address.startswith("tcp://127.0.0.1:")
        yield address, workers
    finally:
        # the workers first, while their scheduler still answers their goodbye (stopped
        # together, each worker retried the gone scheduler for ~20 s before exiting)
        for group in (procs[1:], procs[:1]):
            for p in group:
                p.terminate()
            for p in group:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory):
    with process_cluster(tmp_path_factory.mktemp("cluster")) as (address, _):
        yield address


@pytest.mark.parametrize("via_env", [False, True])
def test_cli_fit_on_tcp_cluster(tcp_cluster, tmp_path, via_env):
    fx = load_fixture("penicillin_crossed_reml")
    out = tmp_path / "fit"
    cmd = [sys.executable, "-m", "daskmm.cli", "fit", fx["data_path"], "--formula",
           fx["formula"], "--mode", "distributed", "--out", str(out)]
    env = dict(os.environ)
    if via_env:
        env["DASK_SCHEDULER_ADDRESS"] = tcp_cluster
    else:
        cmd += ["--scheduler", tcp_cluster]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert doc["optinfo"]["mode"] == "distributed"
    assert doc["objective"] == pytest.approx(fx["objective"], rel=1e-6)
    assert doc["theta"] == pytest.approx(fx["theta"], rel=1e-3)


@pytest.fixture
def killable_cluster(tmp_path):
    """A process cluster whose workers run without a nanny: a killed worker stays dead."""
    with process_cluster(tmp_path, nanny=False) as out:
        yield out


def test_job_survives_a_killed_worker(killable_cluster, tmp_path):
    """A job end to end on the process cluster; then again with one worker killed (SIGKILL)
    while the optimiser runs in distributed mode. Dask recomputes the statistics the dead
    worker held (a ``daskmm-stats-*`` key is computed a second time, on the survivor) and the
    numbers are the same."""
    address, workers = killable_cluster
    with Client(address, set_as_default=False) as c:
        simulate(tmp_path / "sim.dataset", 600_000, groups=60_000, crossed=0, buckets=6,
                 seed=5, client=c)
    job = {"data": "sim.dataset", "formula": "y ~ x + (x | g)", "output": "out",
           "cluster": {"mode": "distributed"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    cmd = [sys.executable, "-m", "daskmm.cli", "run", str(tmp_path / "job.yaml"), "--force",
           "--scheduler", address]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    ref = json.loads((tmp_path / "out" / "summary.json").read_text())

    with Client(address, set_as_default=False) as watcher, get_task_stream(watcher) as ts:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            if "optimising" in line:
                workers[1].send_signal(signal.SIGKILL)
                break
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert workers[1].wait(timeout=10) == -signal.SIGKILL
        assert len(watcher.scheduler_info()["workers"]) == 1
    runs = Counter(str(t["key"]) for t in ts.data if str(t["key"]).startswith("daskmm-stats-"))
    assert max(runs.values(), default=0) >= 2, f"no statistics were recomputed: {runs}"
    got = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert got["optinfo"]["mode"] == "distributed"
    assert got["objective"] == pytest.approx(ref["objective"], rel=1e-10)
    for k in ("theta", "sigma"):
        assert got[k] == pytest.approx(ref[k], rel=1e-8)
    assert [f["estimate"] for f in got["fixef"]] == pytest.approx(
        [f["estimate"] for f in ref["fixef"]], rel=1e-8)
