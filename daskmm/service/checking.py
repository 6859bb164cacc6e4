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

from daskmm.service.jobdoc import fingerprint, parse_body, prepare

READY_TIMEOUT_S = 120.0
"""How long a submission may wait for the checker processes' start (their imports)."""


def check_body(raw: bytes, content_type: str, owner: str, job_id: str, results: str,
               data_roots: list[str], staging: str | None) -> tuple[dict, str, str]:
    """``(job document, fingerprint, name)`` of a submitted body; raises
    :class:`~daskmm.service.jobdoc.JobBodyError` (runs in a checker process)."""
    body = parse_body(raw, content_type)
    fp = fingerprint(body) if isinstance(body, dict) else ""
    doc = prepare(body, owner, job_id, results, data_roots, staging)
    return doc, fp, str(body.get("name", "job"))


def _init() -> None:
    from daskmm.service.worker import die_with_parent
    die_with_parent()


def _ready() -> bool:
    return True


class BodyChecker:
    """``processes`` checker processes (started with the server, imports done), at most that
    many bodies checked at once; the others wait their turn."""

    def __init__(self, processes: int = 2):
        self.processes = processes
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.ready: list[concurrent.futures.Future] = []
        self.slots = asyncio.Semaphore(processes)

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

    async def check(self, timeout: float, *args) -> tuple[dict, str, str]:
        """:func:`check_body` in a checker process; :class:`TimeoutError` after ``timeout``
        seconds (the process then finishes its bounded work and takes the next body)."""
        async with self.slots:
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
