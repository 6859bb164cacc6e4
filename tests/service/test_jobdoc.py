"""Job bodies made into job files: bounded parsing, the owner's places, and the checks made
again where the job runs (links inside a dataset, inputs replaced while the job ran)."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from daskmm.service.jobdoc import (
    MAX_ALIASES,
    InputChanged,
    JobBodyError,
    Place,
    confirm,
    parse_body,
    prepare,
    valid_owner,
    verify,
)
from tests.conftest import load_fixture

JOB = {"data": "sleep.csv", "formula": "Reaction ~ Days + (1 | Subject)"}


@pytest.fixture
def roots(tmp_path):
    data, results = tmp_path / "data", tmp_path / "results"
    data.mkdir()
    results.mkdir()
    shutil.copy(load_fixture("sleepstudy_reml")["data_path"], data / "sleep.csv")
    return data, results


def test_bounded_parsing_refuses_alias_bombs_depth_and_size_in_milliseconds():
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n"
        for p, n in zip("abcdefgh", "bcdefghi"))
    t = time.perf_counter()
    with pytest.raises(JobBodyError, match="more than 10000 values"):
        parse_body(bomb.encode(), "application/yaml")
    assert time.perf_counter() - t < 0.5
    many_aliases = "a: &a 1\nb: [" + ",".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    with pytest.raises(JobBodyError, match="aliases"):
        parse_body(many_aliases.encode(), "application/yaml")
    with pytest.raises(JobBodyError, match="nests deeper"):
        parse_body(("[" * 40 + "]" * 40).encode(), "application/json")
    with pytest.raises(JobBodyError, match="nests deeper"):
        parse_body(("[" * 100_000 + "]" * 100_000).encode(), "application/json")
    with pytest.raises(JobBodyError, match="refers to itself|nests deeper"):
        parse_body(b"a: &a [*a]\n", "application/yaml")
    with pytest.raises(JobBodyError, match="not valid JSON"):
        parse_body(b"{", "application/json")
    assert parse_body(b"data: x.csv\nformula: y ~ 1\n", "application/yaml") == \
        {"data": "x.csv", "formula": "y ~ 1"}
    # a few anchors, as a person might write them, are fine
    assert parse_body(b"f: &f [a, b]\ng: *f\n", "text/plain") == {"f": ["a", "b"],
                                                                  "g": ["a", "b"]}


def test_large_yaml_bodies_stop_before_the_slow_scanner_reads_them_whole():
    """PyYAML's scanner reads about 1 MB a second: a 240 KB list of numbers is refused once
    10,000 values are composed, a YAML body over 256 KiB before it is read; JSON (fast) may be
    as large as --max-body."""
    # against the time to read 9,000 values whole, in the same process (a wall-clock bound
    # fails on a loaded machine): reading all 120,000 would take some 13 times as long
    t = time.perf_counter()
    parse_body(("a: [" + ",".join(["1"] * 9_000) + "]\n").encode(), "application/yaml")
    whole = time.perf_counter() - t
    t = time.perf_counter()
    with pytest.raises(JobBodyError, match="more than 10000 values"):
        parse_body(("a: [" + ",".join(["1"] * 120_000) + "]\n").encode(), "application/yaml")
    assert time.perf_counter() - t < 4 * whole
    with pytest.raises(JobBodyError, match="give at most 262144"):
        parse_body(b"a: " + b"x" * 300_000, "application/yaml")
    big_json = json.dumps({"data": "x.csv", "formula": "y ~ 1", "name": "n" * 500_000})
    assert len(parse_body(big_json.encode(), "application/json")["name"]) == 500_000


@pytest.mark.parametrize("name, ok", [("alice", True), ("bob.smith-2", True), ("a_b", True),
                                      ("..", False), (".x", False), ("a/b", False),
                                      ("", False), ("x" * 65, False),
                                      ("daskmm-service.sqlite", False)])
def test_owner_names_are_folders_of_their_own(name, ok):
    assert valid_owner(name) is ok


def test_paths_are_the_owners_own(roots):
    data, results = roots
    doc = prepare(dict(JOB, output="out/a", ingest={"by": "Subject", "out": "~/ds"}), "alice",
                  "ID", str(results), [str(data)])
    assert doc["output"] == str(results / "alice" / "out" / "a")
    assert doc["ingest"]["out"] == str(results / "alice" / "ds")
    assert doc["data"] == str(data / "sleep.csv")
    assert prepare(dict(JOB, data="~/ds"), "alice", "ID", str(results),
                   [str(data)])["data"] == str(results / "alice" / "ds")
    assert prepare(dict(JOB), "alice", "ID", str(results),
                   [str(data)])["output"] == str(results / "alice" / "ID")
    for bad, field in ((dict(JOB, data=str(results / "bob" / "ds")), "data"),
                       (dict(JOB, data="~/../bob/ds"), "data"),
                       (dict(JOB, output="~/../bob/x"), "output"),
                       (dict(JOB, output="~"), "output"),
                       (dict(JOB, output=str(results / "bob")), "output")):
        with pytest.raises(JobBodyError, match=f"job: {field} "):
            prepare(bad, "alice", "ID", str(results), [str(data)])


def test_confirm_refuses_a_link_inside_a_dataset_that_leads_out(roots, tmp_path):
    data, results = roots
    place = Place.of("alice", str(results), [str(data)])
    ds = data / "ds"
    ds.mkdir()
    (ds / "part.0.parquet").write_bytes(b"PAR1")
    doc = prepare(dict(JOB, data="ds"), "alice", "ID", str(results), [str(data)])
    got, pins = confirm(doc, place)
    assert got["data"] == str(ds) and str(ds / "part.0.parquet") in pins
    secret = results / "bob" / "fixef.parquet"
    secret.parent.mkdir()
    secret.write_bytes(b"PAR1 bob's")
    os.symlink(secret, ds / "part.1.parquet")
    with pytest.raises(JobBodyError, match="ds' holds 'part.1.parquet', a link that leads out"):
        confirm(doc, place)
    os.unlink(ds / "part.1.parquet")
    # a link inside the roots is followed and pinned at its real path
    os.symlink(data / "sleep.csv", ds / "part.2.parquet")
    _, pins = confirm(doc, place)
    assert str(data / "sleep.csv") in pins
    # a link loop does not hang the walk
    os.symlink(ds, ds / "loop")
    confirm(doc, place)


def test_confirm_uses_the_real_path_and_verify_sees_a_replaced_input(roots, tmp_path):
    data, results = roots
    place = Place.of("alice", str(results), [str(data)])
    (data / "sub").mkdir()
    os.symlink(data / "sleep.csv", data / "sub" / "link.csv")
    doc = prepare(dict(JOB, data="sub/link.csv"), "alice", "ID", str(results), [str(data)])
    got, pins = confirm(doc, place)
    assert got["data"] == str(data / "sleep.csv")
    verify(pins)
    shutil.copy(data / "sleep.csv", tmp_path / "copy.csv")
    os.replace(tmp_path / "copy.csv", data / "sleep.csv")  # same bytes, another file
    with pytest.raises(InputChanged, match="sleep.csv' was replaced or changed"):
        verify(pins)
    os.unlink(data / "sleep.csv")
    with pytest.raises(InputChanged, match="was removed"):
        verify(pins)


def test_output_that_became_a_link_is_refused_where_the_job_runs(roots, tmp_path):
    data, results = roots
    place = Place.of("alice", str(results), [str(data)])
    doc = prepare(dict(JOB, output="out"), "alice", "ID", str(results), [str(data)])
    (results / "alice").mkdir()
    os.symlink(tmp_path, results / "alice" / "out")
    with pytest.raises(JobBodyError, match="output .* is outside your results folder"):
        confirm(doc, place)


def test_url_data_roots_take_no_dot_segments_or_neighbours(roots):
    _, results = roots
    url = "s3://bucket/data"
    assert prepare(JOB, "alice", "ID", str(results), [url])["data"] == f"{url}/sleep.csv"
    for bad in ("../secret.csv", f"{url}/../secret.csv", f"{url}/./x/../../y.csv",
                "s3://bucket/database.csv", "s3://other/data/x.csv"):
        with pytest.raises(JobBodyError, match="outside the data roots"):
            prepare(dict(JOB, data=bad), "alice", "ID", str(results), [url])


def test_a_bed_prefix_whose_files_lead_to_different_places_is_refused(roots):
    data, results = roots
    place = Place.of("alice", str(results), [str(data)])
    (data / "v2").mkdir()
    for ext in (".bed", ".bim", ".fam"):
        (data / "v2" / f"geno{ext}").write_bytes(b"x")
        (data / f"g{ext}").write_bytes(b"y")
    os.unlink(data / "g.bed")
    os.symlink(data / "v2" / "geno.bed", data / "g.bed")
    doc = prepare({"kind": "gwas", "bed": "g", "pheno": "sleep.csv"}, "alice", "ID",
                  str(results), [str(data)])
    with pytest.raises(JobBodyError, match="lead to files of different names or folders"):
        confirm(doc, place)
    for ext in (".bim", ".fam"):  # all three links to one prefix: read there
        os.unlink(data / f"g{ext}")
        os.symlink(data / "v2" / f"geno{ext}", data / f"g{ext}")
    got, pins = confirm(doc, place)
    assert got["bed"] == str(data / "v2" / "geno") and len(pins) == 4


def test_a_named_pipe_is_refused_where_the_job_runs_without_waiting(roots):
    data, results = roots
    place = Place.of("alice", str(results), [str(data)])
    os.mkfifo(data / "pipe.csv")
    doc = prepare(dict(JOB, data="pipe.csv"), "alice", "ID", str(results), [str(data)])
    with pytest.raises(JobBodyError, match="not a regular file"):
        confirm(doc, place)


@pytest.mark.parametrize("raw, ctype, words", [
    (b'{"data": ' + b"9" * 5000 + b"}", "application/json", "cannot be read"),
    (b'{"data": "x\\udc2e.csv", "formula": "y ~ 1"}', "application/json",
     "cannot be used"),
    (b"data: x.csv\nformula: y ~ x\nlevel: 1:59:59\n", "application/yaml",
     "level should be number"),
    (b'{"data": "x.csv", "formula": "y ~ x", "level": NaN}', "application/json",
     "not finite"),
])
def test_every_body_a_user_can_send_is_a_422_not_a_500(roots, raw, ctype, words):
    from daskmm.service.checking import check_body
    data, results = roots
    with pytest.raises(JobBodyError, match=words):
        check_body(raw, ctype, "alice", "ID", str(results), [str(data)], None)


def test_numbers_keep_their_type_from_body_to_job_file(roots, tmp_path):
    """1e-05 is a number in JSON and YAML 1.2; the job file the service writes is read back as
    JSON (YAML 1.1 read it as a string and the job failed)."""
    from daskmm.jobs.spec import load_job
    from daskmm.service.checking import check_body
    data, results = roots
    body = dict(JOB, ci="wald", level=0.99999, rho=1e-05)
    body.pop("rho")
    doc, *_ = check_body(json.dumps(body).encode(), "application/json", "alice", "ID",
                         str(results), [str(data)], None)
    assert parse_body(b"a: 1e-05\nb: 7\nc: 1.5\nd: 2001-02-30\ne: 0x1F\n",
                      "application/yaml") == {"a": 1e-05, "b": 7, "c": 1.5,
                                              "d": "2001-02-30", "e": "0x1F"}
    (tmp_path / "job.json").write_text(json.dumps(dict(doc, level=1e-05)))
    assert load_job(tmp_path / "job.json").inference["level"] == 1e-05


def test_the_same_body_after_its_data_changed_is_another_job(roots):
    from daskmm.service.checking import check_body
    data, results = roots
    raw = json.dumps(JOB).encode()
    _, fp1, state1, _ = check_body(raw, "application/json", "alice", "ID", str(results),
                                   [str(data)], None)
    with open(data / "sleep.csv", "a") as fh:
        fh.write("300,9,308\n")
    _, fp2, state2, _ = check_body(raw, "application/json", "alice", "ID", str(results),
                                   [str(data)], None)
    assert fp1 == fp2 and state1 != state2


def test_a_failed_jobs_message_is_replaced_when_an_input_changed_meanwhile(roots, tmp_path):
    """A failed job's message can quote what it read; when an input was replaced while the
    job ran, the job reports that instead (:func:`daskmm.service.worker.failure`)."""
    from daskmm.errors import DataError
    from daskmm.service.worker import failure
    data, results = roots
    place = Place.of("alice", str(results), [str(data)])
    _, pins = confirm(prepare(JOB, "alice", "ID", str(results), [str(data)]), place)
    said = DataError("column 'y' is not in the data; the data have: ssn, diagnosis")
    assert failure(said, lambda: verify(pins)) == str(said)  # unchanged: its own words
    (tmp_path / "other.csv").write_text("ssn,diagnosis\n1,flu\n")
    os.replace(tmp_path / "other.csv", data / "sleep.csv")
    got = failure(said, lambda: verify(pins))
    assert "was replaced or changed while the job ran" in got and "ssn" not in got


def test_a_job_deleted_while_running_takes_only_its_own_result(tmp_path):
    from daskmm.jobs.spec import Job
    from daskmm.service.executor import _written_by
    out = tmp_path / "out"
    out.mkdir()
    doc = {"data": "/d.csv", "formula": "y ~ 1", "output": str(out)}
    (tmp_path / "job.json").write_text(json.dumps(doc))
    mine = Job(name="", data="", formula="", output=out, raw=doc).fingerprint()
    (out / "_SUCCESS").write_text(mine + "\n")
    assert _written_by(out, tmp_path / "job.json")
    (out / "_SUCCESS").write_text("another-job\n")
    assert not _written_by(out, tmp_path / "job.json")
