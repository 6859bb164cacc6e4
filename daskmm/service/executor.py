"""Running the service's jobs: up to ``max_concurrent`` at a time, the rest queued (highest
priority first, then first submitted), each in a job process (:mod:`daskmm.service.worker`)
that runs nothing else meanwhile, with its own client to the shared scheduler.

Why processes and not threads of the server: a cancel must stop a fit wherever it is (in the
optimiser on this side, or waiting on tasks), and a job that runs out of memory or crashes
must not take the server with it. Killing the job's process closes its client, and the
scheduler releases that client's tasks. A process runs one job at a time and, when the job
ends, the next one (up to :data:`MAX_JOBS_A_PROCESS`): its imports (~2 s) are paid once. The
server itself opens no client: ``/readyz`` checks that the scheduler's port answers.

One thread (:meth:`Executor.loop`) starts jobs, watches their processes, copies their
progress into the store, and stops the ones whose cancel was asked for (in the store, so a
cancel reaches the replica running the job). It keeps ``standby`` processes that have
imported the fitting code, so a job starts without ~2 s of imports.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from daskmm.jobs.spec import Job
from daskmm.service.results import unpublish
from daskmm.service.store import Store

log = logging.getLogger("daskmm.service")

TICK_S = 0.2
KILL_AFTER_S = 10.0
MAX_JOBS_A_PROCESS = int(os.environ.get("DASKMM_SERVICE_JOBS_PER_PROCESS", "100"))
"""A job process runs at most this many jobs, then a fresh one takes over (environment
``DASKMM_SERVICE_JOBS_PER_PROCESS``)."""


@dataclass
class Standby:
    proc: subprocess.Popen
    stderr: Path
    jobs: int = 0  # jobs handed to this process so far


@dataclass
class Running:
    job_id: str
    proc: subprocess.Popen
    events: Path
    stderr: Path
    status: Path
    jobs: int = 1
    started: float = field(default_factory=time.monotonic)
    cancelling: float | None = None
    progress_size: int = 0
    job: object = None  # the JobRecord it runs (its output, for the clean-up of a deleted one)
    job_file: Path | None = None


class Executor:
    """Start, watch and stop job processes.

    Parameters
    ----------
    store : Store
    state_dir : Path
        Where job files, progress and logs of the processes go (not the results).
    scheduler : str or None
        The shared scheduler's address (None: each job decides, as ``daskmm run``).
    max_concurrent : int
    replica : str
        This server's name in the store (``runner`` column): a restarted server fails the
        jobs its previous process left running, and only those.
    standby : int
        Processes kept warm (imports done) for the next jobs; 0 starts each job's process
        when the job starts.
    publish : bool
        Results go to a URL: each job's process copies its result to the job's
        ``result_dir`` before it reports success.
    place_of : callable, optional
        ``owner -> Place`` as a dict (:class:`daskmm.service.jobdoc.Place`): where that
        owner's jobs may read and write, as the server is configured when the job starts;
        the job's process checks the job's paths against it again.
    """

    def __init__(self, store: Store, state_dir: Path, scheduler: str | None,
                 max_concurrent: int, replica: str | None = None, standby: int = 1,
                 publish: bool = False, place_of: Callable[[str], dict] | None = None):
        self.store = store
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.scheduler = scheduler
        if int(max_concurrent) < 1:
            raise ValueError(f"max_concurrent={max_concurrent}; give 1 or more (jobs run at "
                             "once)")
        self.max_concurrent = int(max_concurrent)
        self.replica = replica or socket.gethostname()
        self.running: dict[str, Running] = {}
        self.standby: list[Standby] = []
        self.n_standby = max(0, int(standby))
        self.publish = publish
        self.place_of = place_of
        self._standby_seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self.loop, name="daskmm-executor", daemon=True)

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.thread.join(timeout=5)
        for sp in self.standby:
            try:
                sp.proc.stdin.close()
            except OSError:
                pass
        with self._lock:
            for r in self.running.values():
                self._signal(r, signal.SIGKILL)
            for sp in self.standby:
                try:
                    os.killpg(sp.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def wake(self) -> None:
        self._wake.set()

    def runner_name(self) -> str:
        return f"{self.replica}:{os.getpid()}"

    # ------------------------------------------------------------------ loop
    def loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the loop must go on; the job records say
                log.exception("executor tick failed")
            self._wake.wait(TICK_S)
            self._wake.clear()

    def tick(self) -> None:
        with self._lock:
            for r in list(self.running.values()):
                self._watch(r)
            while len(self.running) < self.max_concurrent and not self._stop.is_set():
                job = self.store.claim(self.runner_name())
                if job is None:
                    break
                self._launch(job)
            self._keep_standbys()

    def _spawn_standby(self) -> Standby:
        """A process that imports the fitting code and then runs the jobs given on stdin."""
        self._standby_seq += 1
        d = self.state_dir / "standby"
        d.mkdir(parents=True, exist_ok=True)
        stem = d / f"{os.getpid()}-{self._standby_seq}"
        with open(f"{stem}.stderr", "wb") as err, open(f"{stem}.stdout", "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "daskmm.service.worker", "--standby",
                                     "--max-jobs", str(MAX_JOBS_A_PROCESS + 1)],
                                    stdout=out, stderr=err, stdin=subprocess.PIPE,
                                    start_new_session=True)
        return Standby(proc, Path(f"{stem}.stderr"))

    def _keep_standbys(self) -> None:
        """``n_standby`` idle processes beyond the running ones' (no more than the free
        slots)."""
        self.standby = [s for s in self.standby if s.proc.poll() is None]
        want = min(self.n_standby, self.max_concurrent - len(self.running))
        while len(self.standby) < want and not self._stop.is_set():
            self.standby.append(self._spawn_standby())

    def _launch(self, job) -> None:
        d = self.state_dir / job.id
        d.mkdir(parents=True, exist_ok=True)
        job_file = d / f"attempt-{job.attempt}.json"
        job_file.write_text(json.dumps(job.body, indent=1))
        events = d / f"attempt-{job.attempt}.events.jsonl"
        events.write_text("")
        status = d / f"attempt-{job.attempt}.status.json"
        status.unlink(missing_ok=True)
        place = self.place_of(job.owner) if self.place_of is not None else None
        task = (json.dumps({"job": str(job_file), "events": str(events), "status": str(status),
                            "scheduler": self.scheduler,
                            "publish": job.result_dir if self.publish else None,
                            "place": place})
                + "\n").encode()
        for _ in range(5):
            self.standby = [s for s in self.standby if s.proc.poll() is None]
            spare = self.standby.pop(0) if self.standby else self._spawn_standby()
            try:
                spare.proc.stdin.write(task)
                spare.proc.stdin.flush()
                break
            except OSError:  # it ended meanwhile: the next one
                continue
        else:
            self.store.finish(job.id, "failed", error="no job process could be started; see "
                              f"the server's log and {self.state_dir / 'standby'}")
            return
        spare.jobs += 1
        (d / f"attempt-{job.attempt}.log").write_text(f"{spare.stderr}\n")
        self.running[job.id] = Running(job.id, spare.proc, events, spare.stderr, status,
                                       spare.jobs, job=job, job_file=job_file)
        log.info("job %s started (pid %d)", job.id, spare.proc.pid)

    def _watch(self, r: Running) -> None:
        self._copy_progress(r)
        outcome = self._outcome(r)
        code = r.proc.poll()
        if outcome is None and code is None:
            job = self.store.get(r.job_id)
            if job is None or job.cancel_requested:
                if r.cancelling is None:
                    r.cancelling = time.monotonic()
                    self._signal(r, signal.SIGTERM)
                elif time.monotonic() - r.cancelling > KILL_AFTER_S:
                    self._signal(r, signal.SIGKILL)
            return
        del self.running[r.job_id]
        if outcome is not None and code is None and r.cancelling is None:
            if r.jobs < MAX_JOBS_A_PROCESS:
                self.standby.append(Standby(r.proc, r.stderr, r.jobs))  # the next job's
            else:  # it has run its share: it exits at the end of its input
                try:
                    r.proc.stdin.close()
                except OSError:
                    pass
        job = self.store.get(r.job_id)
        if job is None:  # deleted while it ran: whatever it left or finished goes too
            if r.job is not None:
                self._remove_partial(r.job, everything=r.job_file)
            return
        if outcome is None and code == 0 and r.cancelling is None and \
                not job.cancel_requested:
            # the process ended normally without taking the job: queue it again
            self.store.requeue(r.job_id, "its job process ended before starting it")
            return
        if outcome is not None and outcome.get("exit") == 0:
            self.store.finish(r.job_id, "succeeded", "the job process finished")
        elif outcome is not None and r.cancelling is None and not job.cancel_requested:
            self.store.finish(r.job_id, "failed", error=outcome.get("error") or "failed")
        elif r.cancelling is not None or job.cancel_requested:
            self.store.finish(r.job_id, "cancelled", "cancelled on request")
            self._remove_partial(job)
        else:
            self.store.finish(r.job_id, "failed", error=self._error(r, code))
            self._remove_partial(job)
        log.info("job %s ended (%s)", r.job_id,
                 "status file" if outcome is not None else f"exit {code}")

    @staticmethod
    def _outcome(r: Running) -> dict | None:
        try:
            return json.loads(r.status.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def _signal(self, r: Running, sig: int) -> None:
        try:
            os.killpg(r.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _copy_progress(self, r: Running) -> None:
        try:
            size = r.events.stat().st_size
        except OSError:
            return
        if size == r.progress_size:
            return
        with open(r.events, "rb") as fh:
            fh.seek(max(0, size - 4096))
            lines = fh.read().decode(errors="replace").strip().splitlines()
        r.progress_size = size
        for line in reversed(lines):
            try:
                self.store.set_progress(r.job_id, json.loads(line))
                return
            except json.JSONDecodeError:
                continue

    @staticmethod
    def _error(r: Running, code: int) -> str:
        try:
            lines = [ln for ln in r.stderr.read_text(errors="replace").splitlines()
                     if ln.strip()]
        except OSError:
            lines = []
        errs = [ln for ln in lines if ln.startswith("error: ")]
        if errs:
            return errs[-1][len("error: "):]
        if code < 0 or code in (137, 143):
            return f"the job process was killed (signal {abs(code) if code < 0 else code - 128})"
        return (lines[-1] if lines else "") or f"the job process exited with status {code}"

    def _remove_partial(self, job, everything: Path | None = None) -> None:
        """A job that was cancelled or killed leaves no result: ``run_job`` writes into a
        hidden temporary folder renamed at the end, so locally only such leftovers can exist;
        a job publishing to a URL may also leave its staged folder and part of the copy
        (without ``_SUCCESS``), both removed here. ``everything``: the job was deleted while
        it ran (the job file it ran), so a result it put in place after the deletion goes as
        well: only when its ``_SUCCESS`` is that job's (a later job at the same output keeps
        its own)."""
        import shutil
        out = Path(job.body.get("output", ""))
        if not out.name:
            return
        for tmp in out.parent.glob(f".{out.name}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        if everything is not None and not self.publish and _written_by(out, everything):
            shutil.rmtree(out, ignore_errors=True)
        if self.publish and job.result_dir:
            shutil.rmtree(out, ignore_errors=True)
            unpublish(job.result_dir)


def _written_by(out: Path, job_file: Path) -> bool:
    """``out`` holds the result of the job in ``job_file`` (its ``_SUCCESS`` fingerprint)."""
    try:
        doc = json.loads(Path(job_file).read_text())
        marker = (out / "_SUCCESS").read_text().strip()
    except (OSError, ValueError):
        return False
    return marker == Job(name="", data="", formula="", output=out, raw=doc).fingerprint()
