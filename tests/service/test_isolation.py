"""The service as a security boundary, on a real server process with two owners: each owner's
results and datasets under their own prefix, no read, listing, overwrite or inference of
another's files through any endpoint, paths checked again when the job runs (a link swapped
in while the job is queued), and bodies parsed within bounds while ``/healthz`` answers."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.service.conftest import SLEEP_JOB, TOKENS, call
from tests.service.test_execution import long_job

ENDPOINTS = ("GET {job}", "GET {job}/events", "GET {job}/results", "GET {job}/results/{file}",
             "POST {job}/cancel", "POST {job}/retry", "DELETE {job}")


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_owners_results_live_under_their_own_prefix_and_never_meet(server):
    """``output: out/sleep`` is the owner's own ``out/sleep``: Bob's job with another formula
    neither replaces Alice's result nor reuses it, and Alice's second job with another body
    at the same output is refused instead of replacing her first."""
    mine = dict(SLEEP_JOB, name="shared-output", output="out/sleep")
    _, a = server.submit(mine)
    assert server.wait(a["id"])["state"] == "succeeded"
    alice_dir = server.results / "alice" / "out" / "sleep"
    before = tree_bytes(alice_dir)
    assert "summary.json" in before
    theirs = dict(mine, formula="Reaction ~ Days + (1 | Subject)")
    _, b = server.submit(theirs, owner="bob")
    doc = server.wait(b["id"], owner="bob")
    assert doc["state"] == "succeeded", doc
    bob_dir = server.results / "bob" / "out" / "sleep"
    assert json.loads((bob_dir / "summary.json").read_text())["formula"] == theirs["formula"]
    assert tree_bytes(alice_dir) == before  # not a byte of Alice's result changed
    # Bob's body equal to Alice's is a job of Bob's, run into Bob's own folder (nothing of
    # Alice's is reused: with his earlier job deleted, the folder is made anew)
    assert call(f"{server.url}/v1/jobs/{b['id']}", "DELETE", "bob")[0] == 204
    assert not bob_dir.exists()
    _, c = server.submit(mine, owner="bob")
    assert c["id"] != a["id"]
    doc = server.wait(c["id"], owner="bob")
    assert doc["state"] == "succeeded", doc
    assert json.loads((bob_dir / "summary.json").read_text())["formula"] == mine["formula"]
    assert json.loads((bob_dir / "job.json").read_text())["timing"]["fit_s"] > 0
    assert tree_bytes(alice_dir) == before
    status, got = call(f"{server.url}/v1/jobs/{a['id']}/results/summary.json")
    assert status == 200 and got["formula"] == mine["formula"]
    # the same owner: another body at an output an active job holds is a 409, nothing run
    status, err = server.submit(dict(mine, formula="Reaction ~ 1 + (1 | Subject)"))
    assert status == 409 and a["id"] in err["detail"] and "another output" in err["detail"]
    status, err = server.submit(dict(mine, name="inside", output="out/sleep/deeper"))
    assert status == 409 and a["id"] in err["detail"]
    assert tree_bytes(alice_dir) == before


def test_one_owner_cannot_read_another_owners_dataset(server):
    """Bob ingests into his prefix; Alice naming that dataset (by absolute path, by ``..``
    from her own prefix or from a data root) is refused in words that are the same for a
    path that does not exist, so she learns nothing of Bob's files."""
    job = dict(SLEEP_JOB, name="ingest-private", ingest={"by": "Subject",
                                                         "out": "private.dataset"})
    _, b = server.submit(job, owner="bob")
    assert server.wait(b["id"], owner="bob")["state"] == "succeeded"
    private = server.results / "bob" / "private.dataset"
    assert (private / "_manifest.json").is_file()
    # Bob reads his own dataset as ~/private.dataset
    _, b2 = server.submit(dict(SLEEP_JOB, name="own-dataset", data="~/private.dataset"),
                          owner="bob")
    assert server.wait(b2["id"], owner="bob")["state"] == "succeeded"
    absent = server.results / "bob" / "no-such.dataset"
    for there, nowhere in ((str(private), str(absent)),
                           ("~/../bob/private.dataset", "~/../bob/no-such.dataset"),
                           (os.path.relpath(private, server.data),
                            os.path.relpath(absent, server.data))):
        s1, e1 = server.submit(dict(SLEEP_JOB, name="steal", data=there))
        s2, e2 = server.submit(dict(SLEEP_JOB, name="steal", data=nowhere))
        assert (s1, s2) == (422, 422), (e1, e2)
        assert "outside the data roots" in e1["detail"]
        assert e1["detail"].replace(there, "P") == e2["detail"].replace(nowhere, "P")
    # nor write there
    status, err = server.submit(dict(SLEEP_JOB, name="clobber",
                                     output=f"../bob/{b['id']}"))
    assert status == 422 and "outside your results folder" in err["detail"]
    status, err = server.submit(dict(SLEEP_JOB, name="clobber",
                                     ingest={"by": "Subject", "out": "~/../bob/x.dataset"}))
    assert status == 422 and "outside your results folder" in err["detail"]


def test_every_endpoint_with_the_other_owners_token_gives_nothing_away(server):
    _, a = server.submit(dict(SLEEP_JOB, name="alice-secret"))
    doc = server.wait(a["id"])
    assert doc["state"] == "succeeded"
    folder = server.results / "alice" / a["id"]
    files = tree_bytes(folder)
    secrets = [v for v in files.values() if len(v) >= 32]
    marker = json.loads(files["summary.json"])["theta"]
    ghost = "0123456789abcdef"
    for spec in ENDPOINTS:
        method, path = spec.split(" ")
        for file in ("summary.json", "summary.txt", "../../tokens.txt"):
            seen = []
            for job in (a["id"], ghost):
                status, body = call(f"{server.url}/v1/jobs/" + path.format(job=job, file=file),
                                    method, "bob")
                raw = body if isinstance(body, bytes) else json.dumps(body).encode() \
                    if not isinstance(body, str) else body.encode()
                assert status in (403, 404), (spec, status, body)
                assert not any(s in raw for s in secrets), spec
                assert repr(marker[0]).encode() not in raw
                seen.append((status, raw.replace(job.encode(), b"ID")))
            assert seen[0] == seen[1], spec  # Alice's job reads as no job at all
    status, listing = call(f"{server.url}/v1/jobs?limit=500", token="bob")
    assert status == 200 and a["id"] not in json.dumps(listing)
    assert all(j["owner"] == "bob" for j in listing["items"])
    # Alice's job and files are untouched by all of that
    assert server.job(a["id"])["state"] == "succeeded"
    assert tree_bytes(folder) == files


def test_a_link_swapped_in_while_the_job_is_queued_is_refused_where_it_runs(fresh_server,
                                                                            tmp_path):
    """A data file checked at submission and replaced by a link to a file outside every
    data root while the job waits: the job's process checks the real path again and fails
    the job naming it; the outside file (valid data that would fit) is never read."""
    s = fresh_server.start()
    name = f"swap-{time.time_ns()}.csv"
    inside = s.data / name
    shutil.copy(s.data / "sleepstudy.csv", inside)
    outside = tmp_path / "outside.csv"
    shutil.copy(s.data / "sleepstudy.csv", outside)
    _, blocker = s.submit(long_job(s.data, s.scheduler, "blocker"))
    status, out = s.submit(dict(SLEEP_JOB, name="swapped", data=name))
    assert status == 201, out
    s.wait(blocker["id"], ("running",))
    assert s.job(out["id"])["state"] == "queued"
    inside.unlink()
    os.symlink(outside, inside)
    call(f"{s.url}/v1/jobs/{blocker['id']}/cancel", "POST")
    doc = s.wait(out["id"], timeout=120)
    assert doc["state"] == "failed", doc
    assert "outside the data roots" in doc["error"] and name in doc["error"]
    assert not (s.results / "alice" / out["id"]).exists()
    os.unlink(inside)


def test_a_yaml_alias_bomb_is_refused_at_once_while_healthz_answers(server):
    """481 bytes of nested aliases expand to 10^9 values: refused within a second as a 422,
    and the server answers /healthz throughout."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = "\n".join(lines) + "\n"
    assert len(bomb.encode()) < 600
    stop = threading.Event()
    worst: list[float] = []

    def probe():
        while not stop.is_set():
            t = time.perf_counter()
            status, _ = call(server.url + "/healthz", token=None, timeout=5)
            assert status == 200
            worst.append(time.perf_counter() - t)
            time.sleep(0.05)

    th = threading.Thread(target=probe)
    th.start()
    try:
        for _ in range(5):
            t = time.perf_counter()
            status, doc = call(server.url + "/v1/jobs", "POST", "alice", bomb,
                               {"Content-Type": "application/yaml"})
            took = time.perf_counter() - t
            assert status == 422 and "values (YAML aliases expanded)" in doc["detail"], doc
            assert took < 1.0, took
        deep = "[" * 5000 + "]" * 5000
        status, doc = call(server.url + "/v1/jobs", "POST", "alice", deep,
                           {"Content-Type": "application/json"})
        assert status == 422 and "nests deeper" in doc["detail"]
        status, doc = call(server.url + "/v1/jobs", "POST", "alice", "a: " + "[" * 60 + "]" * 60,
                           {"Content-Type": "application/yaml"})
        assert status == 422 and "nests deeper" in doc["detail"]
        many = {"data": "x.csv", "formula": "y ~ 1", "factors": ["f"] * 11_000}
        status, doc = call(server.url + "/v1/jobs", "POST", "alice", many)
        assert status == 422 and "more than 10000 values" in doc["detail"], doc
        status, doc = call(server.url + "/v1/jobs", "POST", "alice", b"\xff\xfe: bad",
                           {"Content-Type": "application/yaml"})
        assert status == 422 and "not UTF-8" in doc["detail"]
        # a flood of large bodies, each ~0.1 s of parsing, is checked in the checker
        # processes: the server's own answers do not wait for it
        heavy = "a: [" + ",".join(["1"] * 30_000) + "]\n"  # 60 KB: under --max-body
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: call(server.url + "/v1/jobs", "POST", "alice",
                                                 heavy, {"Content-Type": "application/yaml"},
                                                 timeout=120)[0], range(32)))
        assert set(codes) == {422}
    finally:
        stop.set()
        th.join()
    assert worst and max(worst) < 1.0, max(worst)


def _serve(args: list[str], tmp: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daskmm.cli", "serve", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp)


@pytest.mark.parametrize("extra, words", [
    (["--max-concurrent", "0"], "--max-concurrent 0: give 1 or more"),
    (["--standby", "-1"], "--standby -1: give 0 or more"),
    (["--max-body", "0"], "--max-body 0: give 1024 or more"),
])
def test_serve_refuses_settings_that_cannot_work(tmp_path, tokens_file, extra, words):
    (tmp_path / "data").mkdir()
    r = _serve(["--results", str(tmp_path / "res"), "--data-root", str(tmp_path / "data"),
                "--tokens", str(tokens_file), "--port", "1", *extra], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [f"daskmm: error: {lines[0].removeprefix('daskmm: error: ')}"]
    assert words in lines[0]


def test_serve_refuses_a_data_root_that_holds_results_state_or_tokens(tmp_path):
    tokens = tmp_path / "srv" / "tokens.txt"
    tokens.parent.mkdir()
    tokens.write_text("".join(f"{o} {t}\n" for o, t in TOKENS.items()))
    before = tokens.read_bytes()
    for args in (["--results", str(tmp_path / "srv" / "results"), "--data-root",
                  str(tmp_path / "srv")],
                 ["--results", str(tmp_path / "res"), "--data-root", str(tmp_path / "res" / "d")],
                 ["--results", str(tmp_path / "res2"), "--data-root", str(tmp_path / "srv")]):
        Path(args[-1]).mkdir(parents=True, exist_ok=True)
        r = _serve([*args, "--tokens", str(tokens), "--port", "1"], tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "overlap" in r.stderr and "--data-root" in r.stderr
    assert tokens.read_bytes() == before


@pytest.mark.parametrize("owner", ["../etc", ".hidden", "daskmm-service.sqlite", "a/b",
                                   "x" * 65])
def test_serve_refuses_an_owner_name_that_is_not_a_folder_of_its_own(tmp_path, owner):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{owner} 0123456789abcdef0123\n")
    (tmp_path / "data").mkdir()
    r = _serve(["--results", str(tmp_path / "res"), "--data-root", str(tmp_path / "data"),
                "--tokens", str(tokens), "--port", "1"], tmp_path)
    assert r.returncode == 2 and "is not a valid owner name" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_fetch_never_replaces_a_folder_daskmm_did_not_write(server, tmp_path):
    _, a = server.submit(dict(SLEEP_JOB, name="to-fetch"))
    assert server.wait(a["id"])["state"] == "succeeded"
    env = dict(os.environ, DASKMM_TOKEN=TOKENS["alice"], DASKMM_SERVER=server.url)

    def fetch(*args):
        return subprocess.run([sys.executable, "-m", "daskmm.cli", "fetch", a["id"], *args],
                              capture_output=True, text=True, timeout=120, env=env)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.txt").write_text("my own notes\n")
    (mine / "data.csv").write_text("a,b\n1,2\n")
    before = tree_bytes(mine)
    for flags in ([], ["--force"]):
        r = fetch("--out", str(mine), *flags)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "daskmm did not write" in r.stderr
        assert tree_bytes(mine) == before and sorted(os.listdir(tmp_path)) == ["mine"]
    # a folder an earlier fetch wrote is replaced with --force, and only with it
    got = tmp_path / "got"
    assert fetch("--out", str(got)).returncode == 0
    assert (got / "summary.json").is_file() and (got / "_daskmm.json").is_file()
    first = tree_bytes(got)
    r = fetch("--out", str(got))
    assert r.returncode == 2 and "--force" in r.stderr and tree_bytes(got) == first
    r = fetch("--out", str(got), "--force")
    assert r.returncode == 0, r.stderr
    assert tree_bytes(got).keys() == first.keys()


def test_one_owners_flood_of_submissions_does_not_hold_up_another_owner(server):
    """Bodies are checked one an owner at a time: Alice's submission waits for at most one
    of Bob's, not for all of them."""
    heavy = "a: [" + ",".join(["1"] * 30_000) + "]\n"
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        flood = [pool.submit(call, server.url + "/v1/jobs", "POST", "bob", heavy,
                             {"Content-Type": "application/yaml"}, 120) for _ in range(20)]
        time.sleep(0.3)  # Bob's bodies are queued
        t = time.perf_counter()
        status, out = server.submit(dict(SLEEP_JOB, name="while-bob-floods"))
        took = time.perf_counter() - t
        assert {f.result()[0] for f in flood} == {422}
    assert status == 201, out
    assert took < 1.0, took  # without the turns: behind 20 bodies of ~0.2 s, 2 at a time
    server.wait(out["id"])


def test_the_same_body_after_its_data_changed_runs_again(server):
    """Submitting the same body is idempotent while its inputs are unchanged; once the data
    changed it is a new job (the earlier result would be stale)."""
    name = f"changing-{time.time_ns()}.csv"
    shutil.copy(server.data / "sleepstudy.csv", server.data / name)
    job = dict(SLEEP_JOB, name="changing", data=name)
    s1, a = server.submit(job)
    assert s1 == 201 and server.wait(a["id"])["state"] == "succeeded"
    s2, b = server.submit(job)
    assert s2 == 200 and b["id"] == a["id"]
    with open(server.data / name, "a") as fh:
        fh.write("250.0,9,308\n")
    s3, c = server.submit(job)
    assert s3 == 201 and c["id"] != a["id"], c
    doc = server.wait(c["id"])
    assert doc["state"] == "succeeded", doc
    got = call(f"{server.url}/v1/jobs/{c['id']}/results/summary.json")[1]
    assert got["nobs"] == 181
