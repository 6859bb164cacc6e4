"""The job process (daskmm.service.worker): its progress lines, as `daskmm status`,
`submit --wait` and the web page read them."""

from __future__ import annotations

import json

from daskmm import cli
from daskmm.service.worker import Progress


def test_a_service_job_shows_its_replicates_and_pirls_passes(tmp_path):
    """The job process's progress lines carry a counted step (done, total, unit; the phase its
    label) and a GLMM's PIRLS pass, which `submit --wait` writes."""
    progress = Progress(str(tmp_path / "events.jsonl"))
    progress("evaluation", {"feval": 1, "best": float("inf")})
    progress("pirls", {"npass": 3, "deviance": 1234.5})
    progress.write()
    progress("replicates_start", {"label": "bootstrap", "total": 500})
    progress("replicate", {"label": "bootstrap", "done": 120, "total": 500})
    progress.write()
    lines = [json.loads(ln) for ln in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert (lines[-2]["phase"], lines[-2]["pirls"], lines[-2]["deviance"]) == (
        "optimising", 3, 1234.5)
    assert {k: lines[-1][k] for k in ("phase", "done", "total", "unit", "evaluations")} == {
        "phase": "bootstrap", "done": 120, "total": 500, "unit": "replicates",
        "evaluations": 1}
    assert "pirls" not in lines[-1]
    job = {"state": "running", "progress": lines[-1]}
    assert cli._progress_line(job) == "running: bootstrap, 120/500 replicates, 1 evaluations"
    job["progress"] = lines[-2]
    assert cli._progress_line(job) == "running: optimising, 1 evaluations, PIRLS pass 3"
