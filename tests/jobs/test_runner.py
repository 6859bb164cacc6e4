"""``daskmm run``: the example job end to end through the CLI, no-op re-runs, ``--force``,
and a killed run that leaves nothing looking complete."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import load_fixture

ROOT = Path(__file__).resolve().parents[2]


def daskmm(*args, address=None, timeout=300, **kw):
    cmd = [sys.executable, "-m", "daskmm.cli", *args]
    if address:
        cmd += ["--scheduler", address]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def example(tmp_path) -> Path:
    """The shipped example job and its data, copied so that its outputs land in tmp_path."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "jobs" / "example.yaml", tmp_path / "jobs")
    shutil.copy(ROOT / "examples" / "sleepstudy.csv", tmp_path / "examples")
    return tmp_path / "jobs" / "example.yaml"


def test_example_job_end_to_end(client, example):
    root = example.parent.parent
    proc = daskmm("run", str(example), address=client.scheduler.address)
    assert proc.returncode == 0, proc.stderr
    out = root / "results" / "sleepstudy"
    assert sorted(p.name for p in out.iterdir()) == [
        "_SUCCESS", "_daskmm.json", "fixef.parquet", "job.json", "model.pkl",
        "ranef.parquet", "summary.json", "summary.txt"]
    fx = load_fixture("sleepstudy_reml")
    doc = json.loads((out / "summary.json").read_text())
    assert doc["objective"] == pytest.approx(fx["objective"], rel=1e-6)
    assert doc["nobs"] == 180 and doc["ngroups"] == {"Subject": 18}
    # the ingested dataset is there, and the job record names it
    assert (root / "work" / "sleepstudy.dataset" / "_manifest.json").is_file()
    assert json.loads((out / "job.json").read_text())["job"]["ingest"]["by"] == "Subject"
    assert "ingest: split" in proc.stderr and "done" in proc.stderr  # log lines, not a TTY

    # a finished job is a no-op ...
    stamp = (out / "summary.json").stat().st_mtime_ns
    again = daskmm("run", str(example), address=client.scheduler.address)
    assert again.returncode == 0 and "already done" in again.stdout
    assert (again.stdout + again.stderr).count("already done") == 1  # said once
    assert (out / "summary.json").stat().st_mtime_ns == stamp
    # ... unless forced, or unless the job changed
    forced = daskmm("run", str(example), "--force", address=client.scheduler.address)
    assert forced.returncode == 0 and (out / "summary.json").stat().st_mtime_ns != stamp
    job = yaml.safe_load(example.read_text())
    job["method"] = "ML"
    example.write_text(yaml.safe_dump(job))
    changed = daskmm("run", str(example), address=client.scheduler.address)
    assert changed.returncode == 0
    assert json.loads((out / "summary.json").read_text())["method"] == "ML"


def test_killed_run_leaves_no_complete_output(client, tmp_path):
    """SIGKILL while optimising: no output directory (only a hidden temporary at most); the
    next run completes and reuses the simulated data."""
    job = {"name": "kill", "data": "sim.dataset", "formula": "y ~ x + (x | g)",
           "simulate": {"rows": 300_000, "groups": 3000, "crossed": 0, "buckets": 4},
           "cluster": {"mode": "distributed"}, "output": "out"}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    cmd = [sys.executable, "-m", "daskmm.cli", "run", str(path), "--scheduler",
           client.scheduler.address]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "optimising" in line:
                break
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "sim.dataset" / "_manifest.json").is_file()
    rerun = daskmm("run", str(path), address=client.scheduler.address)
    assert rerun.returncode == 0, rerun.stderr
    assert "using the simulated dataset" in rerun.stderr
    assert (tmp_path / "out" / "_SUCCESS").is_file()


def test_killed_ingest_leaves_no_dataset(client, tmp_path):
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(0)
    n = 400_000
    pd.DataFrame({"y": rng.normal(size=n), "g": rng.integers(0, 5000, n)}).to_csv(
        tmp_path / "in.csv", index=False)
    cmd = [sys.executable, "-m", "daskmm.cli", "ingest", str(tmp_path / "in.csv"), "--by", "g",
           "--buckets", "64", "--out", str(tmp_path / "ds"), "--scheduler",
           client.scheduler.address]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".ds.tmp-*/_parts")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (tmp_path / "ds").exists()


def test_glmm_job(client, tmp_path):
    """A binomial job on simulated data: ``ybin ~ x + (1 | g)`` by AGQ, end to end."""
    job = {"data": "sim.dataset", "formula": "ybin ~ x + (1 | g)", "family": "binomial",
           "nagq": 9, "simulate": {"rows": 20_000, "groups": 200, "crossed": 0, "buckets": 2},
           "output": "out"}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    proc = daskmm("run", str(path), address=client.scheduler.address)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["family"] == "binomial" and doc["nAGQ"] == 9 and doc["method"] == "AGQ(9)"
    est = {f["term"]: f for f in doc["fixef"]}
    # simulated: bin0 = -0.5, bin1 = 0.8, sd_u = 0.5
    assert abs(est["x"]["estimate"] - 0.8) < 4 * est["x"]["std_error"]
    assert abs(est["(Intercept)"]["estimate"] + 0.5) < 4 * est["(Intercept)"]["std_error"]
    assert 0.3 < doc["theta"][0] < 0.7
