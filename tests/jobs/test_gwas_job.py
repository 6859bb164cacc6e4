"""``kind: gwas`` job files: validated before any work, run by ``daskmm run`` (a real
subprocess), skipped when done."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daskmm.jobs.spec import GwasJob, JobError, load_job
from daskmm.models.gwas.simulate import simulate_gwas


def write_job(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "scan.yaml"
    p.write_text(text)
    return p


def test_gwas_job_runs_from_the_cli_and_a_second_run_is_skipped(tmp_path):
    simulate_gwas(tmp_path / "data", families=20, children=2, unrelated=40, chromosomes=2,
                  variants_per_chrom=150, seed=4)
    job = write_job(tmp_path, "kind: gwas\nbed: data/geno\npheno: data/pheno.txt\n"
                    "pheno_name: [y_causal]\ncovar: data/covar.txt\nmaf: 0.05\n"
                    "output: results/scan\n")
    loaded = load_job(job)
    assert isinstance(loaded, GwasJob)
    assert loaded.options["bed"] == str(tmp_path / "data" / "geno")
    run = [sys.executable, "-m", "daskmm.cli", "run", str(job)]
    p = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "trait y_causal" in p.stdout
    out = tmp_path / "results" / "scan"
    assert (out / "summary.json").exists() and (out / "results.parquet").is_dir()
    p = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "already done" in p.stdout


@pytest.mark.parametrize("text,match", [
    ("kind: gwas\npheno: p.txt\noutput: o\n", "exactly one of bed"),
    ("kind: gwas\nbed: g\nzarr: z\npheno: p.txt\noutput: o\n", "exactly one of bed"),
    ("kind: gwas\nbed: g\npheno: p.txt\noutput: o\nmaf: 0.7\n", "maf: 0.7 is greater than"),
    ("kind: gwas\nbed: g\npheno: p.txt\noutput: o\nformula: y ~ x\n",
     "unknown field 'formula' at top level; allowed fields: bed, block_size"),
    ("kind: gwas\nbed: g\noutput: o\n", "'pheno' is required"),
    ("kind: scan\nbed: g\n", r"kind is 'scan'; allowed: 'fit', 'gwas'"),
])
def test_gwas_job_errors_name_the_field(tmp_path, text, match):
    with pytest.raises(JobError, match=match):
        load_job(write_job(tmp_path, text))
