"""A dataset knows where it came from: a job never fits a stale copy of a changed source."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

import daskmm
from daskmm.data.ingest import ingest
from daskmm.data.manifest import read_manifest
from daskmm.data.provenance import stale_reason


def data(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.arange(n) % 15
    x = rng.normal(size=n).round(5)
    return pd.DataFrame({"y": (2 + x + rng.normal(size=15)[g] + rng.normal(size=n)).round(5),
                         "x": x, "g": g})


def run(job, address):
    return subprocess.run([sys.executable, "-m", "daskmm.cli", "run", str(job), "--scheduler",
                           address], capture_output=True, text=True, timeout=300)


def test_job_reingests_a_changed_source(client, tmp_path):
    src = tmp_path / "in.csv"
    data(300).to_csv(src, index=False)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"data": "in.csv", "formula": "y ~ x + (1 | g)",
                                   "ingest": {"by": "g", "out": "in.dataset"},
                                   "output": "out"}))
    first = run(job, client.scheduler.address)
    assert first.returncode == 0, first.stderr
    m = read_manifest(tmp_path / "in.dataset")
    assert m.source == str(src) and m.source_info["files"][0][1] == src.stat().st_size
    assert run(job, client.scheduler.address).stdout.startswith("job already done")
    data(450, seed=1).to_csv(src, index=False)  # the source changes under the dataset
    third = run(job, client.scheduler.address)
    assert third.returncode == 0, third.stderr
    assert "its source changed since the ingest" in third.stderr
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["nobs"] == 450
    assert read_manifest(tmp_path / "in.dataset").nrows == 450


def test_stale_dataset_is_never_fitted_silently(client, tmp_path):
    src = tmp_path / "in.csv"
    data(200).to_csv(src, index=False)
    ingest(str(src), "g", tmp_path / "ds", client=client)
    assert stale_reason(str(src), read_manifest(tmp_path / "ds").source_info) is None
    data(210).to_csv(src, index=False)
    os.utime(src, ns=(0, 10 ** 9))
    reason = stale_reason(str(src), read_manifest(tmp_path / "ds").source_info)
    assert reason is not None and "in.csv" in reason
    with pytest.warns(UserWarning, match="may be stale"):
        daskmm.lmm("y ~ x + (1 | g)", str(tmp_path / "ds"), client=client)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"data": "ds", "formula": "y ~ x + (1 | g)",
                                   "output": "out"}))
    proc = run(job, client.scheduler.address)
    assert proc.returncode == 2 and "is stale" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_relative_source_is_recorded_absolute(client, tmp_path, monkeypatch):
    data(100).to_csv(tmp_path / "rel.csv", index=False)
    monkeypatch.chdir(tmp_path)
    m = ingest("rel.csv", "g", "rel.dataset", client=client)
    assert m.source == str(tmp_path / "rel.csv")
    fit = daskmm.lmm("y ~ x + (1 | g)", "rel.dataset", client=client)
    assert fit.nobs == 100
