"""A real cluster of separate processes: ``dask scheduler`` and two ``dask worker`` processes
over TCP on 127.0.0.1, and the CLI joining it with ``--scheduler`` and with
``DASK_SCHEDULER_ADDRESS``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import load_fixture

DASK = shutil.which("dask") or str(Path(sys.executable).with_name("dask"))


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster")
    sched_file = d / "scheduler.json"
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), "dask scheduler did not start"
        for _ in range(2):
            procs.append(subprocess.Popen(
                [DASK, "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                 "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(d)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(sched_file.read_text())["address"]
        from distributed import Client
        with Client(address, set_as_default=False) as c:
            c.wait_for_workers(2, timeout=60)
        assert address.startswith("tcp://127.0.0.1:")
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


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
