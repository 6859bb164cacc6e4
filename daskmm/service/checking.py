"""Checking submitted job bodies away from the server's own process.

Parsing a body (PyYAML's scanner is pure Python) and checking its paths is CPU work: done in a
thread of the server it holds the interpreter's lock, and a flood of submissions slowed every
other answer, ``/healthz`` included (a median of 0.55 s under 64 concurrent 120 KB bodies).
So bodies are checked in a small pool of processes (:class:`BodyChecker`): the server only
waits, with a time limit, and answers everything else at once. Each check is bounded in size
by :func:`daskmm.service.jobdoc.parse_body`; a pool whose process died is replaced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
from concurrent.futures.process import BrokenProcessPool

from daskmm.service.jobdoc import JobBodyError, fingerprint, inputs, parse_body, prepare
from daskmm.service.worker import die_with_parent

READY_TIMEOUT_S = 120.0
"""How long a submission may wait for the checker processes' start (their imports)."""
QUEUE_TIMEOUT_S = 30.0
"""How long a submission may wait for its turn before it is answered 503 (try again)."""


class Busy(Exception):
    """Too many submissions wait to be checked (HTTP 503 with Retry-After)."""


def check_body(raw: bytes, content_type: str, owner: str, job_id: str, results: str,
               data_roots: list[str], staging: str | None) -> tuple[dict, str, str, str]:
    """``(job document, fingerprint of the body, fingerprint of its inputs' state, name)`` of
    a submitted body; raises :class:`~daskmm.service.jobdoc.JobBodyError` (runs in a checker
    process)."""
    try:
        body = parse_body(raw, content_type)
        doc = prepare(body, owner, job_id, results, data_roots, staging)
        fp = fingerprint(body)
        state = fingerprint({}, inputs(doc))
    except JobBodyError:
        raise
    except Exception as exc:  # noqa: BLE001 - any body a user can send gets a 422, not a 500
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise JobBodyError(f"job: the body cannot be used ({type(exc).__name__}: "
                           f"{first[:200]}); check its values") from None
    return doc, fp, state, str(body.get("name", "job"))


def _init() -> None:
    die_with_parent()


def _ready() -> bool:
    return True


class BodyChecker:
    """``processes`` checker processes (started with the server, imports done), at most that
    many bodies checked at once and one per owner: an owner's submissions wait for each other,
    so one owner sending many cannot hold every checker while another owner waits."""

    def __init__(self, processes: int = 2):
        self.processes = processes
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.ready: list[concurrent.futures.Future] = []
        self.slots = asyncio.Semaphore(processes)
        self.owners: dict[str, asyncio.Lock] = {}  # one a token's owner: a short list

    def start(self) -> None:
        self.pool = concurrent.futures.ProcessPoolExecutor(
            self.processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init)
        # import in the background, before the first body (the time limit starts after)
        self.ready = [self.pool.submit(_ready) for _ in range(self.processes)]

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    async def check(self, owner: str, timeout: float, *args) -> tuple[dict, str, str, str]:
        """:func:`check_body` in a checker process; :class:`TimeoutError` after ``timeout``
        seconds of checking (the process then finishes its bounded work and takes the next
        body), :class:`Busy` after :data:`QUEUE_TIMEOUT_S` waiting for a turn."""
        lock = self.owners.setdefault(owner, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), QUEUE_TIMEOUT_S)
        except TimeoutError:
            raise Busy(f"your earlier submissions are still being checked (more than "
                       f"{QUEUE_TIMEOUT_S:g} s of them); try again shortly") from None
        try:
            try:
                await asyncio.wait_for(self.slots.acquire(), QUEUE_TIMEOUT_S)
            except TimeoutError:
                raise Busy("the server is checking other submissions; try again shortly"
                           ) from None
            try:
                return await self._check(timeout, *args)
            finally:
                self.slots.release()
        finally:
            lock.release()

    async def _check(self, timeout: float, *args) -> tuple[dict, str, str, str]:
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            if self.pool is None:
                self.start()
            try:
                pending = [f for f in self.ready if not f.done()]
                if pending:
                    await asyncio.wait_for(asyncio.gather(
                        *(asyncio.wrap_future(f) for f in pending)), READY_TIMEOUT_S)
                fut = loop.run_in_executor(self.pool, check_body, *args)
                return await asyncio.wait_for(fut, timeout)
            except BrokenProcessPool:  # a checker died (killed): a fresh pool, once
                self.stop()
                if attempt == 2:
                    raise
        raise RuntimeError("unreachable")
