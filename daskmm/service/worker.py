"""The process that runs one job for the fitting service::

    python -m daskmm.service.worker JOB.json EVENTS.jsonl [--scheduler ADDR]
    python -m daskmm.service.worker --standby     # jobs one after another, given on stdin

The service keeps such processes warm: they have imported the fitting code (~2 s) and run the
jobs it hands them one at a time, each job's outcome written to its status file, until
``--max-jobs`` (then the server starts a fresh one). A cancel kills the process running the
job, and a crash takes only that process.

Each job runs as ``daskmm run`` does (:func:`daskmm.jobs.runner.run_job`: its own client to
the shared scheduler, or no cluster at all for small data (:func:`needs_cluster`); the
result written atomically) and appends progress lines to
``EVENTS.jsonl``: ``{"t", "phase", "evaluations", "passes", "pass"}``, while a counted step
runs (a bootstrap's replicates, profiles' parameters) its ``"done"``, ``"total"`` and
``"unit"`` (the phase its label: ``bootstrap``, ``profile``), and in a GLMM's optimisation its
last PIRLS pass, ``"pirls"`` and ``"deviance"``; at most a few a second, and one at the end.
It dies with the server (``PR_SET_PDEATHSIG``), and on SIGTERM (a cancel) it exits at once:
closing its client releases its tasks on the cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time

EVERY_S = 0.5
NICE = 10
"""Job processes run at a lower CPU priority than the server."""


def die_with_parent() -> None:
    """On Linux, have this process killed when its parent dies (``PR_SET_PDEATHSIG``)."""
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

    STEP_KEYS = ("done", "total", "unit", "pirls", "deviance")
    """What belongs to one step only (:meth:`_step`)."""

    def __call__(self, kind: str, fields: dict) -> None:
        with self.lock:
            if kind == "evaluation":
                self.state["evaluations"] += 1
                if self.state["phase"] != "optimising":
                    self._step("optimising")
            elif kind == "pirls":
                self.state["pirls"] = fields.get("npass")
                self.state["deviance"] = fields.get("deviance")
            elif kind == "replicates_start":
                self._step(str(fields.get("label", "replicates")), total=fields.get("total"),
                           unit="replicates")
            elif kind == "profile_start":
                self._step("profile", total=fields.get("total"), unit="parameters")
            elif kind in ("replicate", "profile"):
                self.state["done"] = fields.get("done")
            elif kind == "pass_start":
                self.state["pass"] = fields.get("label")
            elif kind == "pass":
                self.state["passes"] += 1
            now = time.monotonic()
            if now - self.last >= EVERY_S:
                self.write()
                self.last = now

    def _step(self, phase: str, **counted) -> None:
        """A new step (the lock held): the last one's counts go."""
        for k in self.STEP_KEYS:
            self.state.pop(k, None)
        self.state["phase"] = phase
        if counted:
            self.state.update(done=0, **counted)

    def phase(self, name: str) -> None:
        with self.lock:
            self.state["phase"] = name
            self.write()

    def write(self) -> None:
        line = json.dumps({"t": time.time(), **self.state})
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


def run_one(job: str, events_path: str, scheduler: str | None,
            publish_to: str | None = None, place: dict | None = None) -> dict:
    """Run one job file (and copy its result to ``publish_to``, a URL, when given);
    ``{"exit": 0 | 1, "error": line or None, "output": ...}``.

    ``place``: the owner's places (:class:`daskmm.service.jobdoc.Place` as a dict). Then the
    job's paths are checked again here, on their real paths now (:func:`confirm`), the job
    runs on those real paths with its reads confined to the places, and its inputs must be
    unchanged when it ends (:func:`verify`), or it fails and leaves no result."""
    from daskmm import events
    from daskmm.errors import DaskmmError
    progress = Progress(events_path)
    events.set_listener(progress)
    progress.phase("running")
    check = None
    try:
        from daskmm.data.confine import confined
        from daskmm.jobs.runner import needs_cluster, run_job
        roots: list[str] | None = None
        if place is not None:
            from daskmm.service.jobdoc import JobBodyError, Place, confirm, verify
            where = Place.from_dict(place)
            with open(job) as fh:
                doc = json.load(fh)
            try:
                doc, pins = confirm(doc, where)
            except JobBodyError as exc:
                raise DaskmmError(str(exc).removeprefix("job: ")) from None
            _refuse_foreign_output(doc)
            _write_json(job, doc)
            roots = where.reads()

            def check() -> None:
                verify(pins)
        use = scheduler if needs_cluster(job) else None
        progress.state["where"] = "cluster" if use else "in-process"
        with confined(roots) if roots is not None else contextlib.nullcontext():
            out = run_job(job, scheduler=use, check=check)
        if publish_to:
            from daskmm.service.results import publish
            progress.phase("publishing")
            try:
                publish(out["output"], publish_to)
            except Exception as exc:  # noqa: BLE001 - the job fails with the reason
                raise DaskmmError(f"the result could not be copied to {publish_to}: "
                                  f"{type(exc).__name__}: {exc}") from None
            out["output"] = publish_to
    except Exception as exc:  # noqa: BLE001 - one line for the job record
        progress.phase("failed")
        return {"exit": 1, "error": failure(exc, check)}
    finally:
        events.set_listener(None)
    progress.phase("done")
    return {"exit": 0, "error": None, "output": out["output"], "status": out["status"],
            "timing": out.get("timing", {})}


def failure(exc: BaseException, check=None) -> str:
    """The one line a failed job reports. Its message may quote what the job read (column
    names, values): when ``check`` (:func:`daskmm.service.jobdoc.verify` of the job's inputs)
    finds an input replaced while the job ran, that is reported instead, and nothing of what
    was read."""
    from daskmm.errors import DaskmmError
    error = str(exc) if isinstance(exc, DaskmmError) else f"{type(exc).__name__}: {exc}"
    if check is not None:
        try:
            check()
        except DaskmmError as changed:
            error = str(changed)
    return error


def _refuse_foreign_output(doc: dict) -> None:
    """A job's output that already holds another job's fit (same owner, another body) is
    refused, never replaced: ``daskmm run`` would replace a fit of the same job *name*."""
    from pathlib import Path

    from daskmm.data.staging import output_kind
    from daskmm.errors import DaskmmError
    from daskmm.jobs.spec import Job
    out = Path(doc.get("output", ""))
    if doc.get("kind") == "gwas" or not out.name or output_kind(out) != "fit":
        return
    mine = Job(name="", data="", formula="", output=out, raw=doc).fingerprint()
    marker = out / "_SUCCESS"
    have = marker.read_text().strip() if marker.is_file() else None
    if have != mine:
        raise DaskmmError(f"output {str(out)!r} holds the result of another job; give this "
                          "job another output, or delete that job first")


def _write_json(path: str, doc: dict) -> None:
    tmp = f"{path}.partial"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(tmp, path)


def _write_status(path: str, status: dict) -> None:
    _write_json(path, status)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m daskmm.service.worker")
    p.add_argument("job", nargs="?", help="job file (JSON or YAML)")
    p.add_argument("events", nargs="?", help="progress lines go here")
    p.add_argument("--scheduler", default=None)
    p.add_argument("--standby", action="store_true", help="import first, then run the jobs "
                   'given as JSON lines {"job", "events", "status", "scheduler"} on stdin, '
                   "each one's outcome written to its status file")
    p.add_argument("--max-jobs", type=int, default=None, help="--standby: exit after this "
                   "many jobs (a guard: the server closes the input after its share)")
    args = p.parse_args(argv)
    die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    with contextlib.suppress(OSError):
        os.nice(NICE)  # the server's API stays responsive while fits use every core
    if args.standby:
        from daskmm.jobs.runner import warm_up
        warm_up()
        for n, line in enumerate(sys.stdin, 1):
            if not line.strip():
                break
            task = json.loads(line)
            _write_status(task["status"], run_one(task["job"], task["events"],
                                                  task["scheduler"], task.get("publish"),
                                                  task.get("place")))
            if args.max_jobs is not None and n >= args.max_jobs:
                break
        return 0
    if not (args.job and args.events):
        p.error("give JOB and EVENTS, or --standby")
    out = run_one(args.job, args.events, args.scheduler)
    if out["exit"]:
        print(f"error: {out['error']}", file=sys.stderr)
    else:
        print(json.dumps(out))
    return out["exit"]


if __name__ == "__main__":
    sys.exit(main())
