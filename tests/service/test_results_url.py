"""A results root given as an fsspec URL: a job writes into local staging, its process
publishes the result (``_SUCCESS`` last), and the API lists, serves and deletes it through the
URL's filesystem (``file://`` here: fsspec's own local filesystem, the same calls as for
``s3://``)."""

from __future__ import annotations

import json

from tests.service.conftest import SLEEP_JOB, Server, call


def test_results_under_a_url_root(tmp_path, cluster, data_root, tokens_file):
    remote = tmp_path / "remote"
    state = tmp_path / "state"
    state.mkdir()
    s = Server(state, data_root, cluster[0], tokens_file,
               results_url=f"file://{remote}").start()
    try:
        _, out = s.submit(dict(SLEEP_JOB, name="to-a-url"))
        doc = s.wait(out["id"])
        assert doc["state"] == "succeeded", doc
        folder = remote / "alice" / out["id"]
        assert (folder / "_SUCCESS").is_file() and (folder / "summary.json").is_file()
        staged = state / ".daskmm-service" / "staging" / "alice"
        assert not staged.exists() or not any(staged.iterdir())  # the staging copy is gone
        assert "summary.txt" in doc["results"] and "_SUCCESS" not in doc["results"]
        status, summary = call(f"{s.url}/v1/jobs/{out['id']}/results/summary.json")
        assert status == 200 and summary == json.loads((folder / "summary.json").read_text())
        assert call(f"{s.url}/v1/jobs/{out['id']}/results/nope.txt")[0] == 404
        # datasets need a shared folder: refused with a URL root
        status, err = s.submit(dict(SLEEP_JOB, name="ingest",
                                    ingest={"by": "Subject", "out": "ds"}))
        assert status == 422 and "ingest writes a dataset" in err["detail"]
        status, err = s.submit(dict(SLEEP_JOB, name="up", output="../x"))
        assert status == 422 and "output is the server's" in err["detail"]
        assert call(f"{s.url}/v1/jobs/{out['id']}", "DELETE")[0] == 204
        assert not folder.exists()
        # a job cancelled mid-fit leaves nothing at the URL and nothing staged
        from tests.service.test_execution import long_job, optimising
        _, job = s.submit(long_job(s.data, s.scheduler, "cancel-url"))
        s.wait(job["id"], ("running",), until=optimising)
        call(f"{s.url}/v1/jobs/{job['id']}/cancel", "POST")
        assert s.wait(job["id"], timeout=60)["state"] == "cancelled"
        assert not (remote / "alice" / job["id"]).exists()
        assert not staged.exists() or not any(staged.iterdir())
    finally:
        s.stop()


def test_a_url_root_needs_a_state_dir(tmp_path, tokens_file):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "daskmm.cli", "serve", "--results",
                        f"file://{tmp_path}/r", "--tokens", str(tokens_file)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "give --state-dir" in r.stderr and "Traceback" not in r.stderr
