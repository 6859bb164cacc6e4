"""The fitting service's durable job store, on SQLAlchemy Core: SQLite by default (one file
beside the results), PostgreSQL by URL for several server replicas.

Tables (schema version :data:`SCHEMA_VERSION`, applied by :data:`MIGRATIONS` in order and
recorded in ``schema_version``):

* ``jobs``: one row a job: owner, state, priority, the job document, its fingerprint, the
  idempotency key, timings, progress (JSON), error, result folder, attempt, the process
  running it and whether a cancel was asked for;
* ``transitions``: every state change of every job, with its time and reason.

Two constraints make submission idempotent across replicas: ``(owner, idem_key)`` is unique,
and so is ``active_key`` (``owner:fingerprint`` while a job is queued, running or succeeded;
cleared when it fails, is cancelled or deleted), so a second submission of the same body
returns the first job instead of running it twice. Claiming a queued job is a conditional
update (``state = 'queued'`` in the ``WHERE``), so two replicas never run the same job.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_ID = "__DASKMM_JOB_ID__"
"""Stands for the job's id in a submitted body (its default output folder) until the store
gives it one."""
TERMINAL = ("succeeded", "failed", "cancelled")

metadata = sa.MetaData()
jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),  # submission order (FIFO within a priority)
    sa.Column("owner", sa.String(200), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("idem_key", sa.String(200)),
    sa.Column("active_key", sa.String(300), unique=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("progress", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("result_dir", sa.Text),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("runner", sa.String(200)),  # host:pid of the process running it
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.UniqueConstraint("owner", "idem_key", name="uq_owner_idem_key"),
)
transitions = sa.Table(
    "transitions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(32), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
)
schema_version = sa.Table("schema_version", metadata,
                          sa.Column("version", sa.Integer, primary_key=True))


def _v1(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[jobs, transitions])


MIGRATIONS: list[tuple[int, Callable[[sa.Connection], None]]] = [(1, _v1)]
"""``(version, step)`` in order; a new column or table is a new entry, never an edit."""
SCHEMA_VERSION = MIGRATIONS[-1][0]


@dataclass
class JobRecord:
    """A job as the API shows it."""

    id: str
    owner: str
    name: str
    state: str
    priority: int
    fingerprint: str
    body: dict
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: dict
    error: str | None
    result_dir: str | None
    attempt: int
    cancel_requested: bool

    def public(self) -> dict:
        """The JSON the API returns (no body: ``GET .../job`` is cheap)."""
        times = {"created_at": self.created_at, "started_at": self.started_at,
                 "finished_at": self.finished_at}
        run = None
        if self.started_at is not None:
            run = (self.finished_at or time.time()) - self.started_at
        return {"id": self.id, "name": self.name, "owner": self.owner, "state": self.state,
                "priority": self.priority, "fingerprint": self.fingerprint,
                "progress": self.progress, "error": self.error, "attempt": self.attempt,
                "cancel_requested": self.cancel_requested,
                "timings": {**times, "run_s": run}}


def _record(row) -> JobRecord:
    m = row._mapping
    return JobRecord(m["id"], m["owner"], m["name"], m["state"], m["priority"],
                     m["fingerprint"], json.loads(m["body"]), m["created_at"],
                     m["started_at"], m["finished_at"], json.loads(m["progress"] or "{}"),
                     m["error"], m["result_dir"], m["attempt"], bool(m["cancel_requested"]))


class Conflict(Exception):
    """An idempotency key reused with another body."""


class Store:
    """The job store at ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``)."""

    def __init__(self, url: str):
        self.url = url
        kw: dict = {}
        if url.startswith("sqlite"):
            kw["connect_args"] = {"timeout": 30, "check_same_thread": False}
        self.engine = sa.create_engine(url, future=True, pool_pre_ping=True, **kw)
        self._write_lock = threading.Lock() if url.startswith("sqlite") else \
            contextlib.nullcontext()
        if url.startswith("sqlite"):
            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(dbapi, _):  # concurrent readers while a writer commits
                cur = dbapi.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
        self.migrate()

    @contextlib.contextmanager
    def _tx(self):
        """A write transaction. SQLite has one writer at a time and its busy handler sleeps
        in steps of up to 100 ms, so this process's writers queue on a lock instead (another
        process on the same file still waits in SQLite, up to 30 s); PostgreSQL locks rows."""
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    # ------------------------------------------------------------------ schema
    def migrate(self) -> int:
        """Apply the migrations this store has not had; return its version."""
        with self._tx() as conn:
            schema_version.create(conn, checkfirst=True)
            have = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
            for version, step in MIGRATIONS:
                if version > have:
                    step(conn)
                    conn.execute(schema_version.insert().values(version=version))
                    have = version
        return have

    def version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(schema_version.c.version)))
                       .scalar() or 0)

    def writable(self) -> bool:
        """A write transaction commits (for ``/readyz``)."""
        try:
            with self._tx() as conn:
                conn.execute(schema_version.update().where(sa.false()).values(version=0))
            return True
        except Exception:  # noqa: BLE001 - reported as not ready
            return False

    # ------------------------------------------------------------------ writes
    def _transition(self, conn, job_id: str, state: str, reason: str | None) -> None:
        conn.execute(transitions.insert().values(job_id=job_id, at=time.time(), state=state,
                                                 reason=reason))

    def submit(self, owner: str, name: str, body: dict, fingerprint: str,
               idem_key: str | None = None, priority: int = 0,
               result_dir: str | None = None, state: str = "") -> tuple[JobRecord, bool]:
        """A new queued job, or the existing one this submission repeats (same idempotency
        key, or the same body while that job is queued, running or succeeded).

        ``result_dir`` is where the result ends up (default: the body's ``output``; ``JOB_ID``
        in either stands for the new job's id). ``state`` fingerprints the inputs as they are
        now: the same body after the data changed is a new job (an Idempotency-Key compares
        the body alone: a retried request is the same request). Returns ``(job, created)``.
        Raises :class:`Conflict` when the key was used for another body.
        """
        job_id = uuid.uuid4().hex[:16]
        active = f"{owner}:{fingerprint}" + (f":{state}" if state else "")
        text = json.dumps(body).replace(JOB_ID, job_id)
        result_dir = (result_dir.replace(JOB_ID, job_id) if result_dir
                      else json.loads(text).get("output"))
        for _ in range(3):
            existing = self._existing(owner, active, idem_key)
            if existing is not None:
                if idem_key is not None and existing.fingerprint != fingerprint:
                    raise Conflict(f"Idempotency-Key {idem_key!r} was used for job "
                                   f"{existing.id} with another body")
                return existing, False
            try:
                with self._tx() as conn:
                    other = self._output_taken(conn, owner, result_dir)
                    if other is not None:
                        raise Conflict(f"output {result_dir!r} is, holds or lies inside the "
                                       f"result folder of your job {other}; give this job "
                                       "another output, or delete that job first")
                    seq = (conn.execute(sa.select(sa.func.max(jobs.c.seq))).scalar() or 0) + 1
                    conn.execute(jobs.insert().values(
                        id=job_id, seq=seq, owner=owner, name=name, state="queued",
                        priority=int(priority), fingerprint=fingerprint, idem_key=idem_key,
                        active_key=active, body=text, created_at=time.time(),
                        progress="{}", attempt=1, cancel_requested=False,
                        result_dir=result_dir))
                    self._transition(conn, job_id, "queued", "submitted")
                return self.get(job_id), True
            except IntegrityError:  # a concurrent submission of the same job won
                continue
        raise RuntimeError("could not record the job (concurrent submissions kept "
                           "conflicting); retry")

    @staticmethod
    def _output_taken(conn, owner: str, result_dir: str | None,
                      but: str | None = None) -> str | None:
        """The id of an active (queued, running or succeeded) job of ``owner`` whose result
        folder is ``result_dir``, or holds it, or lies inside it; None when there is none."""
        if not result_dir:
            return None
        mine = result_dir.rstrip("/")
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.result_dir).where(
            jobs.c.owner == owner, jobs.c.active_key.is_not(None))).all()
        for r in rows:
            theirs = (r.result_dir or "").rstrip("/")
            if r.id == but or not theirs:
                continue
            if mine == theirs or mine.startswith(theirs + "/") or \
                    theirs.startswith(mine + "/"):
                return r.id
        return None

    def _existing(self, owner: str, active: str, idem_key: str | None):
        with self.engine.connect() as conn:
            if idem_key is not None:
                row = conn.execute(sa.select(jobs).where(jobs.c.owner == owner,
                                                         jobs.c.idem_key == idem_key)).first()
                if row is not None:
                    return _record(row)
            row = conn.execute(sa.select(jobs).where(jobs.c.active_key == active)).first()
            return _record(row) if row is not None else None

    def claim(self, runner: str) -> JobRecord | None:
        """Move the next queued job (highest priority, then first submitted) to running."""
        for _ in range(10):
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(jobs.c.id).where(jobs.c.state == "queued")
                    .order_by(jobs.c.priority.desc(), jobs.c.seq.asc()).limit(1)).first()
            if row is None:
                return None
            with self._tx() as conn:
                done = conn.execute(
                    jobs.update().where(jobs.c.id == row.id, jobs.c.state == "queued")
                    .values(state="running", started_at=time.time(), runner=runner,
                            finished_at=None, error=None)).rowcount
                if done:
                    self._transition(conn, row.id, "running", f"claimed by {runner}")
                    return self.get(row.id, conn)
        return None

    def finish(self, job_id: str, state: str, reason: str | None = None,
               error: str | None = None) -> bool:
        """Move a job to a terminal ``state`` from queued or running (False when it had
        already ended)."""
        assert state in TERMINAL
        values = {"state": state, "finished_at": time.time(), "error": error}
        if state != "succeeded":
            values["active_key"] = None
        with self._tx() as conn:
            n = conn.execute(jobs.update().where(jobs.c.id == job_id,
                                                 jobs.c.state.in_(("queued", "running")))
                             .values(**values)).rowcount
            if n:
                self._transition(conn, job_id, state, reason or error)
        return bool(n)

    def set_progress(self, job_id: str, progress: dict) -> None:
        with self._tx() as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id)
                         .values(progress=json.dumps(progress)))

    def request_cancel(self, job_id: str) -> None:
        with self._tx() as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id)
                         .values(cancel_requested=True))

    def retry(self, job_id: str) -> bool:
        """Queue a failed or cancelled job again (a new attempt); False when it is not in
        one of those states or an equal job is active."""
        with self._tx() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
            if row is None or row.state not in ("failed", "cancelled"):
                return False
            if self._output_taken(conn, row.owner, row.result_dir, but=job_id) is not None:
                return False
            try:
                with conn.begin_nested():
                    conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                        state="queued", started_at=None, finished_at=None, error=None,
                        cancel_requested=False, attempt=row.attempt + 1, progress="{}",
                        active_key=f"{row.owner}:{row.fingerprint}"))
            except IntegrityError:
                return False
            self._transition(conn, job_id, "queued", "retried")
        return True

    def requeue(self, job_id: str, reason: str) -> bool:
        """Put a running job back in the queue (its process never started it)."""
        with self._tx() as conn:
            n = conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.state == "running")
                             .values(state="queued", started_at=None, runner=None,
                                     progress="{}")).rowcount
            if n:
                self._transition(conn, job_id, "queued", reason)
        return bool(n)

    def recover(self, runner_prefix: str, reason: str) -> list[str]:
        """At start-up: every job a previous process of this server (``runner`` starting
        with ``runner_prefix``) left running is failed with ``reason`` (retry queues it
        again); other replicas' jobs are left alone. Returns their ids."""
        with self._tx() as conn:
            ids = [r.id for r in conn.execute(
                sa.select(jobs.c.id).where(jobs.c.state == "running",
                                           jobs.c.runner.startswith(runner_prefix)))]
            for job_id in ids:
                conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.state == "running")
                             .values(state="failed", finished_at=time.time(), error=reason,
                                     active_key=None))
                self._transition(conn, job_id, "failed", reason)
        return ids

    def delete(self, job_id: str) -> None:
        with self._tx() as conn:
            conn.execute(transitions.delete().where(transitions.c.job_id == job_id))
            conn.execute(jobs.delete().where(jobs.c.id == job_id))

    # ------------------------------------------------------------------ reads
    def get(self, job_id: str, conn=None) -> JobRecord | None:
        if conn is None:
            with self.engine.connect() as c:
                return self.get(job_id, c)
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return _record(row) if row is not None else None

    def list(self, owner: str, state: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[JobRecord], int]:
        """The owner's jobs, newest first, and how many there are in all."""
        cond = [jobs.c.owner == owner]
        if state is not None:
            cond.append(jobs.c.state == state)
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(jobs)
                                 .where(*cond)).scalar()
            rows = conn.execute(sa.select(jobs).where(*cond).order_by(jobs.c.seq.desc())
                                .limit(limit).offset(offset)).all()
        return [_record(r) for r in rows], int(total)

    def history(self, job_id: str) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(transitions).where(transitions.c.job_id == job_id)
                                .order_by(transitions.c.id)).all()
        return [{"at": r.at, "state": r.state, "reason": r.reason} for r in rows]

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(jobs.c.state, sa.func.count())
                                .group_by(jobs.c.state)).all()
        out = dict.fromkeys(STATES, 0)
        out.update({r[0]: int(r[1]) for r in rows})
        return out

    def durations(self) -> list[tuple[str, float]]:
        """``(state, seconds)`` of finished jobs (for the metrics' histogram)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(jobs.c.state, jobs.c.started_at, jobs.c.finished_at)
                                .where(jobs.c.finished_at.is_not(None),
                                       jobs.c.started_at.is_not(None))).all()
        return [(r[0], float(r[2] - r[1])) for r in rows]
