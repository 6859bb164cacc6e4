"""The result folder: columns and files as documented, written as blocks finish, marked
incomplete until the end, and resumed after a crash (a real SIGKILL of the CLI)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from daskmm.data.staging import OutputError
from daskmm.models.gwas import gwas, read_results
from daskmm.models.gwas.output import RESULT_COLUMNS, ScanComplete
from daskmm.models.gwas.simulate import simulate_gwas


def cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "daskmm.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, **kw)


def test_result_folder_holds_documented_files_and_columns(gwas_data, tmp_path):
    out = tmp_path / "scan"
    p = cli("gwas", "--bed", str(gwas_data.bed)[:-4], "--pheno", gwas_data.pheno,
            "--covar", gwas_data.covar, "--maf", "0.05", "--out", out, timeout=300)
    assert p.returncode == 0, p.stderr
    names = {q.name for q in out.iterdir()}
    assert {"results.parquet", "skipped.parquet", "summary.json", "summary.txt",
            "manhattan.png", "qq.png"} <= names
    assert "INCOMPLETE" not in names
    assert sorted(q.name for q in (out / "results.parquet").iterdir()) == [
        "chrom=1", "chrom=2", "chrom=3"]
    df = read_results(out)
    assert list(df.columns[:12]) == RESULT_COLUMNS
    assert set(df["trait"]) == {"y_causal", "y_null"}
    doc = json.loads((out / "summary.json").read_text())
    sk = pd.read_parquet(out / "skipped.parquet")
    assert (sk["reason"] == "maf").all() and len(sk) > 0
    maf = np.minimum(df["af"], 1 - df["af"])
    assert (maf >= 0.05).all()
    for t in ("y_causal", "y_null"):
        tr = doc["traits"][t]
        assert tr["variants_tested"] + tr["variants_skipped"]["maf"] == gwas_data.n_variants
        assert 0.5 < tr["lambda_gc"] < 2
        assert set(tr["null"]) == {"1", "2", "3"}
    assert doc["samples"]["genotyped"] == gwas_data.n_samples
    assert "y_causal" in p.stdout and "lambda_gc" in p.stdout


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory):
    return simulate_gwas(tmp_path_factory.mktemp("slow") / "sim", families=150, children=4,
                         unrelated=100, chromosomes=4, variants_per_chrom=1500, seed=9)


def test_killed_scan_keeps_finished_blocks_marked_incomplete_and_a_rerun_resumes(
        slow_data, tmp_path):
    out = tmp_path / "scan"
    args = ["gwas", "--bed", str(slow_data.bed)[:-4], "--pheno", slow_data.pheno, "--covar",
            slow_data.covar, "--block-size", "25", "--no-plots", "--out", out]
    env = {**os.environ, "DASKMM_IN_PROCESS_CELLS": "1e12"}
    proc = subprocess.Popen([sys.executable, "-m", "daskmm.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(list(out.glob("results.parquet/chrom=*/part-*.parquet"))) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    parts = list(out.glob("results.parquet/chrom=*/part-*.parquet"))
    assert len(parts) >= 3
    assert (out / "INCOMPLETE").exists() and not (out / "summary.json").exists()
    assert json.loads((out / "_daskmm.json").read_text())["complete"] is False
    with pytest.raises(OutputError, match="unfinished"):
        read_results(out)
    partial = read_results(out, allow_incomplete=True)
    assert 0 < len(partial) < 2 * slow_data.n_variants

    rerun = cli(*args, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    m = [ln for ln in rerun.stderr.splitlines() if "resuming" in ln]
    assert len(m) == 1
    done, total = (int(x) for x in re.search(r"(\d+) of (\d+) blocks done", m[0]).groups())
    assert len(parts) <= done < total
    assert not (out / "INCOMPLETE").exists()
    resumed = read_results(out)
    fresh = gwas(bed=str(slow_data.bed), pheno=str(slow_data.pheno),
                 covar=str(slow_data.covar), out=tmp_path / "fresh", plot=False).results
    assert len(resumed) == len(fresh)
    assert (resumed["variant_id"].to_numpy() == fresh["variant_id"].to_numpy()).all()
    scale = np.maximum(np.abs(fresh["beta"]), fresh["se"])      # blocks of 25 and of 4096
    assert np.max(np.abs(resumed["beta"] - fresh["beta"]) / scale) < 1e-10
    for c in ("se", "p_value"):
        assert np.allclose(resumed[c], fresh[c], rtol=1e-10, atol=0)


def test_rerun_of_a_complete_scan_is_refused_without_force(gwas_data, tmp_path):
    kw = dict(bed=str(gwas_data.bed), pheno=str(gwas_data.pheno), out=tmp_path / "s",
              plot=False, maf=0)
    gwas(**kw)
    with pytest.raises(ScanComplete, match="--force"):
        gwas(**kw)
    with pytest.raises(OutputError, match="other inputs or options"):
        gwas(**{**kw, "maf": 0.2})
    r = gwas(**{**kw, "maf": 0.2}, force=True)
    assert r.document["filters"]["maf"] == 0.2


def test_never_writes_into_a_folder_daskmm_did_not_write(gwas_data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="did not write"):
        gwas(bed=str(gwas_data.bed), pheno=str(gwas_data.pheno), out=mine, force=True)
    assert (mine / "notes.txt").read_text() == "keep me"
