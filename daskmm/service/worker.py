"""The process that runs one job for the fitting service::

    python -m daskmm.service.worker JOB.json EVENTS.jsonl [--scheduler ADDR]
    python -m daskmm.service.worker --standby     # the same, the job given on stdin

The service keeps standby processes that have imported the fitting code already and wait for
a job on stdin, so that a job starts without the ~2 s of imports.

It runs the job as ``daskmm run`` does (:func:`daskmm.jobs.runner.run_job`: its own client to
the shared scheduler, or no cluster at all for small data (:func:`needs_cluster`); the
result written atomically) and appends progress lines to
``EVENTS.jsonl``: ``{"t", "phase", "evaluations", "passes", "pass"}``, at most a few a
second, and one at the end. It dies with the server (``PR_SET_PDEATHSIG``), and on SIGTERM
(a cancel) it exits at once: closing its client releases its tasks on the cluster. Exit
status 0 is success; otherwise stderr's last line says what went wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

EVERY_S = 0.5


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PDEATHSIG
        except OSError:
            pass


class Progress:
    """Counts events and writes a line to the events file now and then."""

    def __init__(self, path: str):
        self.path = path
        self.state = {"phase": "starting", "evaluations": 0, "passes": 0, "pass": None,
                      "pid": os.getpid()}
        self.last = 0.0
        self.lock = threading.Lock()

    def __call__(self, kind: str, fields: dict) -> None:
        with self.lock:
            if kind == "evaluation":
                self.state["evaluations"] += 1
                self.state["phase"] = "optimising"
            elif kind == "pass_start":
                self.state["pass"] = fields.get("label")
            elif kind == "pass":
                self.state["passes"] += 1
            now = time.monotonic()
            if now - self.last >= EVERY_S:
                self.write()
                self.last = now

    def phase(self, name: str) -> None:
        with self.lock:
            self.state["phase"] = name
            self.write()

    def write(self) -> None:
        line = json.dumps({"t": time.time(), **self.state})
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


def needs_cluster(job_file: str) -> bool:
    """Whether a job uses the shared cluster: always when it simulates, ingests, scans
    genotypes or sets ``cluster.mode``; otherwise only when its data are not known to be
    small (below :func:`daskmm.execution.in_process_limit` cells), as ``daskmm fit`` decides
    without a scheduler. Small fits then pay for no cluster round trips."""
    import yaml

    from daskmm.data.local import estimate_cells
    from daskmm.execution import in_process_limit
    from daskmm.formula.parse import identifiers
    doc = yaml.safe_load(open(job_file).read())
    if doc.get("kind") == "gwas" or doc.get("simulate") or doc.get("ingest") or \
            (doc.get("cluster") or {}).get("mode"):
        return True
    try:
        cols = len(identifiers(str(doc["formula"]))) + 1
    except Exception:  # noqa: BLE001 - the fit will say what is wrong with the formula
        cols = 8
    cells = estimate_cells(doc.get("data"), cols)
    return cells is None or cells >= in_process_limit()


def warm_up() -> None:
    """Import what a fit needs (about 2 s), so that a standby process starts a job at once."""
    import distributed  # noqa: F401

    import daskmm.api  # noqa: F401
    import daskmm.glmm  # noqa: F401
    import daskmm.jobs.runner  # noqa: F401
    import daskmm.lmm  # noqa: F401
    import daskmm.results.writing  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m daskmm.service.worker")
    p.add_argument("job", nargs="?", help="job file (JSON or YAML)")
    p.add_argument("events", nargs="?", help="progress lines go here")
    p.add_argument("--scheduler", default=None)
    p.add_argument("--standby", action="store_true", help="import first, then read "
                   '{"job", "events", "scheduler"} as one JSON line on stdin')
    args = p.parse_args(argv)
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    if args.standby:
        warm_up()
        line = sys.stdin.readline()
        if not line.strip():  # the server stopped without giving a job
            return 0
        task = json.loads(line)
        args.job, args.events, args.scheduler = task["job"], task["events"], task["scheduler"]
    elif not (args.job and args.events):
        p.error("give JOB and EVENTS, or --standby")
    from daskmm import events
    from daskmm.errors import DaskmmError
    progress = Progress(args.events)
    events.set_listener(progress)
    progress.phase("running")
    try:
        from daskmm.jobs.runner import run_job
        scheduler = args.scheduler if needs_cluster(args.job) else None
        progress.state["where"] = "cluster" if scheduler else "in-process"
        out = run_job(args.job, scheduler=scheduler)
    except DaskmmError as exc:
        progress.phase("failed")
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for the job record
        progress.phase("failed")
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    progress.phase("done")
    print(json.dumps({"status": out["status"], "output": out["output"],
                      "timing": out.get("timing", {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
