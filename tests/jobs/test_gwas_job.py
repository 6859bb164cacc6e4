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


def test_a_binary_gwas_job_runs_from_the_cli(tmp_path):
    simulate_gwas(tmp_path / "data", families=30, children=2, unrelated=60, chromosomes=2,
                  variants_per_chrom=100, prevalence=0.3, seed=4)
    job = write_job(tmp_path, "kind: gwas\nbed: data/geno\npheno: data/pheno_binary.txt\n"
                    "pheno_name: [b_causal]\ncovar: data/covar.txt\ntrait_type: binary\n"
                    "firth_p: 0.05\nplots: false\noutput: results/scan\n")
    loaded = load_job(job)
    assert loaded.options["trait_type"] == "binary" and loaded.options["firth_p"] == 0.05
    p = subprocess.run([sys.executable, "-m", "daskmm.cli", "run", str(job)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "trait b_causal (binary, 0/1): 54 cases, 126 controls" in p.stdout
    summary = (tmp_path / "results" / "scan" / "summary.json").read_text()
    assert '"trait_type": "binary"' in summary


@pytest.mark.parametrize("text,match", [
    ("trait_type: case\n", "trait_type is 'case'; allowed: 'quantitative', 'binary'"),
    ("firth_p: 2\n", "firth_p: 2 is greater than the maximum of 1"),
])
def test_binary_job_fields_are_checked(tmp_path, text, match):
    with pytest.raises(JobError, match=match):
        load_job(write_job(tmp_path, "kind: gwas\nbed: g\npheno: p.txt\noutput: o\n" + text))
