"""The fitting service's API on a real server process: submit, poll, fetch (and the same
numbers as ``daskmm run``), owners and tokens, refused bodies and paths, idempotency,
listing, deletion, health, readiness, metrics and the schema; the CLI client."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.service.conftest import SLEEP_JOB, TOKENS, call


def test_submit_poll_fetch_equals_daskmm_run(server, tmp_path):
    status, out = server.submit(SLEEP_JOB)
    assert status == 201 and out["created"] and out["state"] == "queued"
    doc = server.wait(out["id"])
    assert doc["state"] == "succeeded", doc
    assert doc["progress"]["phase"] == "done" and doc["progress"]["evaluations"] > 0
    assert [h["state"] for h in doc["history"]] == ["queued", "running", "succeeded"]
    assert {"summary.json", "summary.txt", "fixef.parquet", "ranef.parquet"} <= \
        set(doc["results"])
    status, got = call(f"{server.url}/v1/jobs/{out['id']}/results/summary.json")
    assert status == 200
    # the same job through `daskmm run`
    job = dict(SLEEP_JOB, data=str(server.data / "sleepstudy.csv"), output="direct")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    r = subprocess.run([sys.executable, "-m", "daskmm.cli", "run", str(tmp_path / "job.yaml")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    want = json.loads((tmp_path / "direct" / "summary.json").read_text())
    assert got["objective"] == pytest.approx(want["objective"], rel=1e-10)
    assert got["theta"] == pytest.approx(want["theta"], rel=1e-8)
    assert [f["estimate"] for f in got["fixef"]] == pytest.approx(
        [f["estimate"] for f in want["fixef"]], rel=1e-8)
    status, text = call(f"{server.url}/v1/jobs/{out['id']}/results/summary.txt")
    assert status == 200 and "REML criterion at convergence" in text
    status, err = call(f"{server.url}/v1/jobs/{out['id']}/results/../../tokens.txt")
    assert status == 404


def test_tokens_owners_and_another_owners_job_is_not_there(server):
    _, out = server.submit(dict(SLEEP_JOB, name="alices"))
    job = out["id"]
    assert call(f"{server.url}/v1/jobs/{job}", token=None)[0] == 401
    assert call(f"{server.url}/v1/jobs", token="not-a-token-0123456789")[0] == 401
    # for another owner the job is answered as one that does not exist, word for word
    status, doc = call(f"{server.url}/v1/jobs/{job}", token="bob")
    nobody = "0123456789abcdef"
    status2, doc2 = call(f"{server.url}/v1/jobs/{nobody}", token="bob")
    assert (status, status2) == (404, 404)
    assert doc["detail"].replace(job, "ID") == doc2["detail"].replace(nobody, "ID")
    assert call(f"{server.url}/v1/jobs/{job}/cancel", "POST", "bob")[0] == 404
    assert call(f"{server.url}/v1/jobs/{job}", "DELETE", "bob")[0] == 404
    status, listing = call(f"{server.url}/v1/jobs", token="bob")
    assert status == 200 and job not in [j["id"] for j in listing["items"]]
    assert call(f"{server.url}/metrics", token=None)[0] == 401
    assert call(f"{server.url}/healthz", token=None)[0] == 200
    server.wait(job)


@pytest.mark.parametrize("body, words", [
    ({"data": "sleepstudy.csv", "formula": "y ~ x + (1 | g)", "famly": "poisson"},
     "unknown field 'famly' at top level"),
    ({"data": "sleepstudy.csv"}, "'formula' is required at top level"),
    ({"data": "sleepstudy.csv", "formula": "y ~ x + (1 | g)", "nagq": "three"},
     "nagq should be integer"),
    ({"data": "sleepstudy.csv", "formula": "y ~ x + (1 | g)", "family": "gausian"},
     "family is 'gausian'; allowed"),
    ({"data": "../../../etc/passwd", "formula": "y ~ x + (1 | g)"},
     "data '../../../etc/passwd' is outside the data roots"),
    ({"data": "/etc/passwd", "formula": "y ~ x + (1 | g)"}, "outside the data roots"),
    ({"data": "sleepstudy.csv", "formula": "y ~ x + (1 | g)", "output": "/tmp/x"},
     "output '/tmp/x' is outside your results folder"),
    ({"data": "sleepstudy.csv", "formula": "y ~ x + (1 | g)", "output": "../up"},
     "output '../up' is outside your results folder"),
    ({"data": "sleepstudy.csv", "formula": "y ~ x + (1 | g)",
      "ingest": {"by": "g", "out": "/tmp/ds"}}, "ingest.out '/tmp/ds' is outside"),
    ({"data": "sleepstudy.csv", "formula": "y ~ x + (1 | g)",
      "cluster": {"scheduler": "tcp://10.0.0.1:8786"}}, "may set only cluster.mode"),
    ([1, 2], "a job is a mapping"),
])
def test_bad_bodies_are_422_naming_the_field(server, body, words):
    status, doc = server.submit(body)
    assert status == 422, doc
    assert words in doc["detail"]


def test_a_symlink_out_of_the_data_root_is_refused(server, tmp_path):
    link = server.data / "escape.csv"
    if not link.exists():
        os.symlink("/etc/hostname", link)
    status, doc = server.submit({"data": "escape.csv", "formula": "y ~ x + (1 | g)"})
    assert status == 422 and "outside the data roots" in doc["detail"]


def test_yaml_bodies_bad_yaml_and_size_limit(server):
    text = yaml.safe_dump(dict(SLEEP_JOB, name="from-yaml"))
    status, out = call(server.url + "/v1/jobs", "POST", "alice", text,
                       {"Content-Type": "application/yaml"})
    assert status == 201, out
    status, doc = call(server.url + "/v1/jobs", "POST", "alice", "data: [unclosed",
                       {"Content-Type": "application/yaml"})
    assert status == 422 and "not valid YAML" in doc["detail"]
    big = dict(SLEEP_JOB, name="x" * 70_000)
    status, doc = server.submit(big)
    assert status == 413 and "limit" in doc["detail"]
    server.wait(out["id"])


def test_submissions_are_idempotent(server):
    job = dict(SLEEP_JOB, name="idem", seed=1, ddf="satterthwaite")
    s1, a = server.submit(job)
    s2, b = server.submit(dict(reversed(list(job.items()))))  # same fields, other order
    assert (s1, s2) == (201, 200) and a["id"] == b["id"] and not b["created"]
    key = {"Idempotency-Key": "k-1"}
    other = dict(job, name="idem-2")
    s3, c = server.submit(other, headers=key)
    s4, d = server.submit(other, headers=key)
    assert s3 == 201 and s4 == 200 and c["id"] == d["id"]
    s5, e = server.submit(dict(job, name="idem-3"), headers=key)
    assert s5 == 409 and "another body" in e["detail"]
    # another owner's identical body is another job
    s6, f = server.submit(job, owner="bob")
    assert s6 == 201 and f["id"] != a["id"]
    for j, owner in ((a, "alice"), (c, "alice"), (f, "bob")):
        server.wait(j["id"], owner=owner)


def test_list_filters_and_pages(server):
    ids = [server.submit(dict(SLEEP_JOB, name=f"page-{i}"))[1]["id"] for i in range(3)]
    for j in ids:
        server.wait(j)
    status, page = call(f"{server.url}/v1/jobs?limit=2&offset=0&state=succeeded")
    assert status == 200 and len(page["items"]) == 2 and page["total"] >= 3
    assert all(j["state"] == "succeeded" for j in page["items"])
    status, page2 = call(f"{server.url}/v1/jobs?limit=2&offset=2&state=succeeded")
    assert not {j["id"] for j in page["items"]} & {j["id"] for j in page2["items"]}
    status, doc = call(f"{server.url}/v1/jobs?state=done")
    assert status == 422 and "allowed: queued" in doc["detail"]


def test_delete_removes_results(server):
    _, out = server.submit(dict(SLEEP_JOB, name="to-delete"))
    doc = server.wait(out["id"])
    folder = server.results / "alice" / out["id"]
    assert folder.is_dir() and doc["state"] == "succeeded"
    assert call(f"{server.url}/v1/jobs/{out['id']}", "DELETE")[0] == 204
    assert not folder.exists()
    assert call(f"{server.url}/v1/jobs/{out['id']}")[0] == 404


def test_failed_job_says_why_and_can_be_retried(server):
    _, out = server.submit({"name": "bad-column", "data": "sleepstudy.csv",
                            "formula": "Reaction ~ Nope + (1 | Subject)"})
    doc = server.wait(out["id"])
    assert doc["state"] == "failed" and "Nope" in doc["error"]
    assert "Traceback" not in doc["error"]
    status, r = call(f"{server.url}/v1/jobs/{out['id']}/retry", "POST")
    assert status == 200 and r["state"] == "queued"
    doc = server.wait(out["id"])
    assert doc["state"] == "failed" and doc["attempt"] == 2
    status, r = call(f"{server.url}/v1/jobs/{out['id']}/cancel", "POST")
    assert status == 409


def test_health_readiness_metrics_schema_and_docs(server):
    assert call(server.url + "/healthz", token=None) == (200, {"status": "ok"})
    status, ready = call(server.url + "/readyz", token=None)
    assert status == 200 and ready["checks"] == {"store": True, "scheduler": True,
                                                 "executor": True}
    status, text = call(server.url + "/metrics")
    assert status == 200
    assert 'daskmm_jobs{state="succeeded"}' in text and "daskmm_queue_length" in text
    assert 'daskmm_job_duration_seconds_bucket{state="succeeded",le="+Inf"}' in text
    status, schema = call(server.url + "/openapi.json", token=None)
    assert status == 200 and "/v1/jobs/{job_id}/events" in schema["paths"]
    status, page = call(server.url + "/docs", token=None)
    assert status == 200 and "/v1/jobs/{job_id}/cancel" in page


def test_server_sent_events_end_with_the_final_state(server):
    _, out = server.submit(dict(SLEEP_JOB, name="events"))
    status, text = call(f"{server.url}/v1/jobs/{out['id']}/events", timeout=240)
    assert status == 200
    events = [b for b in text.split("\n\n") if b.strip()]
    assert events[-1].startswith("event: end")
    assert json.loads(events[-1].split("data: ", 1)[1])["state"] == "succeeded"


def test_the_shipped_service_example_runs_and_shows_its_plots(server):
    """jobs/service_example.yaml, as a user submits it (the YAML text): accepted (the
    bundled jobs/example.yaml sets a cluster, which the service refuses), ingested into the
    owner's prefix, fitted, its plots among the results the page lists."""
    text = (Path(__file__).resolve().parents[2] / "jobs" / "service_example.yaml").read_text()
    status, out = call(server.url + "/v1/jobs", "POST", "alice", text.encode(),
                       headers={"Content-Type": "application/yaml"})
    assert status == 201, out
    doc = server.wait(out["id"])
    assert doc["state"] == "succeeded", doc
    pngs = [n for n in doc["results"] if n.endswith(".png")]
    assert pngs and all(n.startswith("plots/") for n in pngs)
    status, png = call(f"{server.url}/v1/jobs/{out['id']}/results/{pngs[0]}")
    assert status == 200 and png[:4] == b"\x89PNG"


def test_cli_client_submit_status_fetch(server, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(dict(SLEEP_JOB, name="cli")))
    env = dict(os.environ, DASKMM_TOKEN=TOKENS["alice"], DASKMM_SERVER=server.url)

    def daskmm(*args):
        return subprocess.run([sys.executable, "-m", "daskmm.cli", *args], capture_output=True,
                              text=True, timeout=300, env=env)

    r = daskmm("submit", str(job), "--wait")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.split()[0]
    assert "succeeded" in r.stdout
    # the wait shows the job's progress as it changes (stderr), each line once
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(f"daskmm: {job_id} ")]
    assert lines and len(lines) == len(set(lines))
    assert all(ln.split()[2].rstrip(":") in ("queued", "running") for ln in lines)
    r = daskmm("status", job_id)
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "succeeded"
    # times a person reads: ISO 8601 with the zone, not epoch seconds
    times = json.loads(r.stdout)["timings"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", times["finished_at"])
    assert times["created_at"] <= times["started_at"] <= times["finished_at"]
    assert isinstance(times["run_s"], float) and times["run_s"] >= 0
    r = daskmm("fetch", job_id, "--out", str(tmp_path / "got"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "got" / "summary.json").is_file()
    (tmp_path / "afile").write_text("keep me")
    r = daskmm("fetch", job_id, "--out", str(tmp_path / "afile"))
    assert r.returncode != 0 and "is not a folder" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "afile").read_text() == "keep me"
    r = daskmm("fetch", job_id, "--out", str(tmp_path / "got"))
    assert r.returncode != 0 and "already holds a daskmm fetch" in r.stderr  # not replaced
    r = daskmm("cancel", job_id)
    assert r.returncode != 0 and "409" in r.stderr and "Traceback" not in r.stderr
    bad = dict(env, DASKMM_TOKEN="wrong-token-0123456789")
    r = subprocess.run([sys.executable, "-m", "daskmm.cli", "status", job_id],
                       capture_output=True, text=True, timeout=60, env=bad)
    assert r.returncode != 0 and "401" in r.stderr
    r = subprocess.run([sys.executable, "-m", "daskmm.cli", "status", job_id],
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in env.items() if k != "DASKMM_TOKEN"})
    assert r.returncode != 0 and "DASKMM_TOKEN" in r.stderr


def test_a_gwas_scan_runs_as_a_job(server):
    from daskmm.models.gwas.simulate import simulate_gwas
    d = server.data / "gwas"
    if not d.exists():
        simulate_gwas(d, families=20, children=2, unrelated=40, chromosomes=2,
                      variants_per_chrom=150, seed=4)
    job = {"kind": "gwas", "name": "scan", "bed": "gwas/geno", "pheno": "gwas/pheno.txt",
           "pheno_name": ["y_causal"], "covar": "gwas/covar.txt", "maf": 0.05}
    status, out = server.submit(job)
    assert status == 201, out
    doc = server.wait(out["id"], timeout=300)
    assert doc["state"] == "succeeded", doc
    assert "summary.json" in doc["results"]
    assert any(n.startswith("results.parquet") for n in doc["results"])
    pngs = [n for n in doc["results"] if n.endswith(".png")]
    assert pngs  # the scan's plots are results too
    status, png = call(f"{server.url}/v1/jobs/{out['id']}/results/{pngs[0]}")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    status, err = server.submit(dict(job, bed="../../etc/geno"))
    assert status == 422 and "bed '../../etc/geno' is outside the data roots" in err["detail"]


def test_a_binary_gwas_scan_runs_as_a_job(server):
    from daskmm.models.gwas.simulate import simulate_gwas
    d = server.data / "gwas_binary"
    if not d.exists():
        simulate_gwas(d, families=20, children=2, unrelated=40, chromosomes=2,
                      variants_per_chrom=100, prevalence=0.3, seed=4)
    job = {"kind": "gwas", "name": "cases", "bed": "gwas_binary/geno",
           "pheno": "gwas_binary/pheno_binary.txt", "pheno_name": ["b_causal"],
           "covar": "gwas_binary/covar.txt", "trait_type": "binary", "plots": False}
    status, out = server.submit(job)
    assert status == 201, out
    doc = server.wait(out["id"], timeout=300)
    assert doc["state"] == "succeeded", doc
    status, summ = call(f"{server.url}/v1/jobs/{out['id']}/results/summary.json")
    summ = summ if isinstance(summ, dict) else json.loads(summ)
    assert status == 200 and summ["trait_type"] == "binary"
    assert summ["traits"]["b_causal"]["cases"] == 36
    status, err = server.submit(dict(job, trait_type="ordinal"))
    assert status == 422 and "trait_type is 'ordinal'" in err["detail"]
