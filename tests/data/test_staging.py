"""Outputs never destroy anything: what :func:`check_output` allows and refuses, and the same
through the real CLI (the user's files are still there, byte for byte)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daskmm.data.staging import (
    OutputError,
    check_output,
    remove_stale_staging,
    result_marker,
    staging_dir,
)
from tests.conftest import CONFORMANCE

SLEEP = str(CONFORMANCE / "data" / "sleepstudy.csv")
GOOD = "Reaction ~ Days + (Days | Subject)"


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def previous_fit(path: Path, name=None) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text("{}")
    (path / "_daskmm.json").write_text(result_marker("fit", name))
    return path


def test_new_and_empty_folders_are_allowed(tmp_path):
    assert check_output(tmp_path / "new" / "deeper", "fit") == tmp_path / "new" / "deeper"
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", "fit")


def test_previous_result_needs_force_or_the_same_job(tmp_path):
    out = previous_fit(tmp_path / "fit", name="job-a")
    with pytest.raises(OutputError, match="already holds a daskmm fit; use --force"):
        check_output(out, "fit")
    check_output(out, "fit", force=True)
    check_output(out, "fit", name="job-a")  # the same job writes its own result again
    with pytest.raises(OutputError, match="already holds a daskmm fit"):
        check_output(out, "fit", name="job-b")


@pytest.mark.parametrize("force", [False, True])
def test_foreign_folder_and_file_are_refused_even_with_force(tmp_path, force):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="daskmm did not write"):
        check_output(mine, "fit", force=force)
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_output(mine / "thesis.tex", "fit", force=force)
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "_manifest.json").write_text("{}")
    with pytest.raises(OutputError, match="holds a daskmm dataset, not a fit"):
        check_output(ds, "fit", force=force)


def test_input_job_folder_and_their_parents_are_refused(tmp_path):
    data = tmp_path / "project" / "data.csv"
    data.parent.mkdir()
    data.write_text("y\n1\n")
    with pytest.raises(OutputError, match="inside the input"):
        check_output(data / "fit", "fit", inputs=[data])
    with pytest.raises(OutputError, match="holds the input"):
        check_output(tmp_path / "project", "fit", force=True, inputs=[data])
    job = tmp_path / "jobs" / "job.yaml"
    job.parent.mkdir()
    job.write_text("x")
    with pytest.raises(OutputError, match="holds"):
        check_output(tmp_path / "jobs", "fit", force=True, protect=[job.parent])
    with pytest.raises(OutputError, match="holds"):
        check_output(tmp_path, "fit", force=True, protect=[job.parent])
    with pytest.raises(OutputError, match="current, home or root"):
        check_output(Path.cwd(), "fit", force=True)
    with pytest.raises(OutputError, match="URL"):
        check_output("s3://bucket/out", "fit")


def test_killed_run_leaves_nothing_the_next_run_keeps(tmp_path):
    out = tmp_path / "fit"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".fit.tmp-{dead.pid}-0123abcd"
    stale.mkdir()
    alive = tmp_path / f".fit.tmp-{os.getppid()}-0123abcd"  # a live process's: kept
    alive.mkdir()
    with staging_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert not stale.exists() and alive.exists()
    assert (out / "a").read_text() == "1"
    assert remove_stale_staging(out) == []


def cli(*args, address=None):
    argv = [sys.executable, "-m", "daskmm.cli", *args]
    if address:
        argv += ["--scheduler", address]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_cli_fit_replaces_only_its_own_result(client, tmp_path):
    a = client.scheduler.address
    out = tmp_path / "fit"
    assert cli("fit", SLEEP, "--formula", GOOD, "--out", str(out), address=a).returncode == 0
    again = cli("fit", SLEEP, "--formula", GOOD, "--out", str(out), address=a)
    assert again.returncode == 2 and "already holds a daskmm fit" in again.stderr
    forced = cli("fit", SLEEP, "--formula", "Reaction ~ Days + (1 | Subject)", "--force",
                 "--out", str(out), address=a)
    assert forced.returncode == 0, forced.stderr
    assert "(1 | Subject)" in (out / "summary.txt").read_text()
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    (mine / "sub" / "data.bin").write_bytes(os.urandom(1000))
    before = tree_digest(mine)
    refused = cli("fit", SLEEP, "--formula", GOOD, "--force", "--out", str(mine), address=a)
    assert refused.returncode == 2
    assert refused.stderr.count("daskmm: error:") == 1 and "did not write" in refused.stderr
    assert tree_digest(mine) == before
    ing = cli("ingest", SLEEP, "--by", "Subject", "--force", "--out", str(mine), address=a)
    assert ing.returncode == 2 and "did not write" in ing.stderr
    assert tree_digest(mine) == before


def _job(path: Path, **fields) -> Path:
    doc = {"data": SLEEP, "formula": GOOD, "output": "results/fit", **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("output", [".", "..", "../.."])
def test_job_output_may_not_hold_the_job_file(client, tmp_path, output):
    """Refused before any work: the ingest the job asks for does not run."""
    job = _job(tmp_path / "proj" / "jobs" / "j.yaml", output=output,
               ingest={"by": "Subject", "out": str(tmp_path / "ds")})
    before = tree_digest(tmp_path)
    proc = cli("run", str(job), address=client.scheduler.address)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("daskmm: error:") == 1 and "holds" in proc.stderr
    assert not (tmp_path / "ds").exists()
    assert tree_digest(tmp_path) == before


def test_job_ingest_into_a_foreign_folder_is_refused(client, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "x.csv").write_text("1,2\n")
    job = _job(tmp_path / "j.yaml", ingest={"by": "Subject", "out": "precious"})
    proc = cli("run", str(job), address=client.scheduler.address)
    assert proc.returncode == 2 and "ingest.out" in proc.stderr and "did not write" in proc.stderr
    assert (tmp_path / "precious" / "x.csv").read_text() == "1,2\n"
    assert not (tmp_path / "results").exists()
