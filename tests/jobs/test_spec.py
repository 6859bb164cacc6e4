"""Job files are checked against the schema before any work; errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from daskmm.jobs.spec import SCHEMA, JobError, load_job

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"data": "in.csv", "formula": "y ~ x + (1 | g)", "output": "out"}


def write(tmp_path, doc, text=None) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(text if text is not None else yaml.safe_dump(doc))
    return p


@pytest.mark.parametrize("name", ["example.yaml", "simulated_large.yaml"])
def test_shipped_jobs_are_valid(name):
    job = load_job(ROOT / "jobs" / name)
    assert Path(job.data).is_absolute() and job.output.is_absolute()


def test_paths_relative_to_job_file(tmp_path):
    job = load_job(write(tmp_path, {**GOOD, "ingest": {"by": "g", "out": "ds"}}))
    assert job.data == str(tmp_path / "in.csv")
    assert job.ingest["out"] == str(tmp_path / "ds")
    assert job.output == tmp_path / "out"
    assert job.method == "REML" and job.family == "gaussian" and job.name == "job"


@pytest.mark.parametrize("doc, match", [
    ({**GOOD, "formla": "y ~ x"}, r"unknown field 'formla' at top level; allowed fields: "
                                  r"allow_uncertified, ar_start, ci, cluster, crossed, data, "
                                  r"ddf, discrete"),
    ({"data": "in.csv", "output": "out"}, r"'formula' is required at top level"),
    ({**GOOD, "method": "reml"}, r"method is 'reml'; allowed: 'REML', 'ML'"),
    ({**GOOD, "family": "binomal"}, r"family is 'binomal'; allowed: 'gaussian', 'binomial'"),
    ({**GOOD, "nagq": 30}, r"nagq: 30 is greater than the maximum of 25"),
    ({**GOOD, "factors": "a,b"}, r"factors should be array; got 'a,b'"),
    ({**GOOD, "cluster": {"n_worker": 2}}, r"unknown field 'n_worker' at cluster; allowed"),
    ({**GOOD, "cluster": {"n_workers": 0}}, r"cluster.n_workers: 0 is less than the minimum"),
    ({**GOOD, "ingest": {"by": "g"}}, r"'out' is required at ingest"),
    ({**GOOD, "simulate": {"rows": 10, "group": 3}}, r"unknown field 'group' at simulate"),
])
def test_schema_errors_name_the_field(tmp_path, doc, match):
    with pytest.raises(JobError, match=match):
        load_job(write(tmp_path, doc))


@pytest.mark.parametrize("text, match", [
    ("data: [unclosed\n", r"is not valid YAML \(line 2\)"),
    ("- just\n- a list\n", r"a job file is a YAML mapping"),
])
def test_unreadable_files(tmp_path, text, match):
    with pytest.raises(JobError, match=match):
        load_job(write(tmp_path, None, text))


def test_missing_job_file(tmp_path):
    with pytest.raises(JobError, match="does not exist"):
        load_job(tmp_path / "nope.yaml")


def test_schema_is_closed():
    """Every object in the schema rejects unknown keys (so a typo is always caught)."""
    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                assert node.get("additionalProperties") is False, node
            for v in node.values():
                walk(v)
    walk(SCHEMA)
