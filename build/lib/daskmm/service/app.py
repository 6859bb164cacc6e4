"""The fitting service's HTTP API (FastAPI): submit, list, watch, cancel, fetch and delete
jobs; health, readiness and Prometheus metrics; the OpenAPI schema, a docs page and a web
page.

Every endpoint but ``/healthz`` and ``/readyz`` (the probes) and the static pages (``/``,
``/docs``) needs ``Authorization: Bearer TOKEN``; a job belongs to its token's owner, and
for another owner it does not exist (404, the answer for an id nobody has). Bodies above
``max_body`` bytes get 413. Job bodies are JSON or YAML in the job-file schema, parsed and
checked off the event loop within bounds of size, depth, aliases and time
(:func:`daskmm.service.jobdoc.parse_body`, :data:`CHECK_TIMEOUT_S`), in checker processes
(:mod:`daskmm.service.checking`); a refused one gets 422
with the CLI's message naming the field or the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)

from daskmm.service import pages
from daskmm.service.auth import Tokens
from daskmm.service.checking import BodyChecker, Busy
from daskmm.service.executor import Executor
from daskmm.service.jobdoc import JobBodyError, Place
from daskmm.service.results import ResultsRoot
from daskmm.service.store import JOB_ID, STATES, TERMINAL, Conflict, JobRecord, Store

log = logging.getLogger("daskmm.service")

MAX_BODY = 1 << 20
CHECK_TIMEOUT_S = 2.0
"""Parsing and checking a job body (its paths included) must end within this; a body that
takes longer gets 422."""
CHECKS_AT_ONCE = 2
"""Job bodies checked at the same time, each in a checker process of its own; more
submissions wait their turn (the other endpoints do not)."""
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, float("inf"))


@dataclass
class Config:
    """What ``daskmm serve`` was given (``results``: a folder or an fsspec URL; then
    ``state_dir`` is the local folder for job staging and the default store)."""

    results: str
    store_url: str
    tokens: Tokens
    data_roots: list[str] = field(default_factory=list)
    scheduler: str | None = None
    max_concurrent: int = 2
    max_body: int = MAX_BODY
    replica: str | None = None
    standby: int = 1
    state_dir: Path | None = None


def create_app(cfg: Config) -> FastAPI:
    """The ASGI application (its executor starts with the app and stops with it)."""
    root = ResultsRoot(str(cfg.results))
    state = Path(cfg.state_dir) if cfg.state_dir else Path(root.root) / ".daskmm-service"
    staging = str(state / "staging") if root.url else None
    store = Store(cfg.store_url)

    def place_of(owner: str) -> Place:
        return Place.of(owner, root.root, cfg.data_roots, staging)

    executor = Executor(store, state / "runs", cfg.scheduler, cfg.max_concurrent, cfg.replica,
                        cfg.standby, publish=root.url,
                        place_of=lambda owner: place_of(owner).to_dict())
    checker = BodyChecker(CHECKS_AT_ONCE)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        failed = store.recover(
            f"{executor.replica}:",
            "the server stopped while the job ran; POST /v1/jobs/{id}/retry to run it again")
        if failed:
            log.warning("jobs left running by a stopped server marked failed: %s",
                        ", ".join(failed))
        checker.start()
        executor.start()
        yield
        executor.stop()
        checker.stop()

    app = FastAPI(title="daskmm fitting service", version="1",
                  description="Submit, watch, cancel and fetch mixed-model fits and GWAS scans "
                              "run on a shared Dask cluster.",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.store, app.state.executor, app.state.cfg = store, executor, cfg

    @app.middleware("http")
    async def _limit(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > cfg.max_body:
            return JSONResponse({"detail": f"the body has {size} bytes; the limit is "
                                           f"{cfg.max_body}"}, status_code=413)
        return await call_next(request)

    def owner_of(authorization: str | None = Header(None)) -> str:
        owner = cfg.tokens.owner(authorization)
        if owner is None:
            raise HTTPException(401, "give a valid token: Authorization: Bearer TOKEN",
                                headers={"WWW-Authenticate": "Bearer"})
        return owner

    def own_job(job_id: str, owner: str) -> JobRecord:
        """The caller's job; another owner's is answered exactly as one that does not
        exist, so an id tells nothing to whoever does not own it."""
        job = store.get(job_id)
        if job is None or job.owner != owner:
            raise HTTPException(404, f"no job {job_id!r} of yours")
        return job

    # ------------------------------------------------------------------ jobs
    @app.post("/v1/jobs", status_code=201, summary="Submit a job (JSON or YAML job file)")
    async def submit(request: Request, owner: str = Depends(owner_of),
                     idempotency_key: str | None = Header(None),
                     priority: int = Query(0, ge=-100, le=100)) -> JSONResponse:
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
            raise HTTPException(422, "Idempotency-Key: give 1 to 200 characters")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > cfg.max_body:
                raise HTTPException(413, f"the body exceeds the limit of {cfg.max_body} bytes")
        try:
            doc, fp, state, name = await checker.check(
                owner, CHECK_TIMEOUT_S, raw, request.headers.get("content-type", ""), owner, JOB_ID,
                root.root, cfg.data_roots, staging)
        except JobBodyError as exc:
            raise HTTPException(422, str(exc)) from None
        except TimeoutError:
            raise HTTPException(422, f"job: checking the body took longer than "
                                     f"{CHECK_TIMEOUT_S:g} s; send a plain job file "
                                     "(a mapping of fields)") from None
        except Busy as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
        where = root.job_location(owner, JOB_ID) if root.url else None
        try:
            job, created = await asyncio.to_thread(
                store.submit, owner, name, doc, fp, idempotency_key, priority, where, state)
        except Conflict as exc:
            raise HTTPException(409, str(exc)) from None
        if created:
            executor.wake()
        return JSONResponse({"id": job.id, "state": job.state, "created": created},
                            status_code=201 if created else 200)

    @app.get("/v1/jobs", summary="The caller's jobs, newest first")
    def list_jobs(owner: str = Depends(owner_of),
                  state: str | None = Query(None, description="|".join(STATES)),
                  limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)) -> dict:
        if state is not None and state not in STATES:
            raise HTTPException(422, f"state={state!r}; allowed: {', '.join(STATES)}")
        items, total = store.list(owner, state, limit, offset)
        return {"items": [j.public() for j in items], "total": total, "limit": limit,
                "offset": offset}

    @app.get("/v1/jobs/{job_id}", summary="A job: state, progress, timings, error")
    def get_job(job_id: str, owner: str = Depends(owner_of)) -> dict:
        job = own_job(job_id, owner)
        out = job.public()
        out["history"] = store.history(job_id)
        out["results"] = _result_names(root, job) if job.state == "succeeded" else []
        return out

    @app.get("/v1/jobs/{job_id}/events", summary="Server-sent events of the job's progress")
    async def job_events(job_id: str, owner: str = Depends(owner_of)):
        own_job(job_id, owner)

        async def stream():
            last = None
            while True:
                job = await asyncio.to_thread(store.get, job_id)
                if job is None:
                    yield "event: deleted\ndata: {}\n\n"
                    return
                now = json.dumps({"state": job.state, "progress": job.progress,
                                  "error": job.error})
                if now != last:
                    yield f"event: {'end' if job.state in TERMINAL else 'progress'}\n" \
                          f"data: {now}\n\n"
                    last = now
                if job.state in TERMINAL:
                    return
                await asyncio.sleep(0.5)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/v1/jobs/{job_id}/cancel", summary="Cancel a queued or running job")
    def cancel(job_id: str, owner: str = Depends(owner_of)) -> dict:
        job = own_job(job_id, owner)
        if job.state in TERMINAL:
            raise HTTPException(409, f"job {job_id!r} has already {job.state}")
        store.request_cancel(job_id)
        if job.state == "queued" and store.finish(job_id, "cancelled", "cancelled on request"):
            return {"id": job_id, "state": "cancelled"}
        executor.wake()
        return {"id": job_id, "state": store.get(job_id).state, "cancel_requested": True}

    @app.post("/v1/jobs/{job_id}/retry", summary="Queue a failed or cancelled job again")
    def retry(job_id: str, owner: str = Depends(owner_of)) -> dict:
        job = own_job(job_id, owner)
        if not store.retry(job_id):
            raise HTTPException(409, f"job {job_id!r} is {job.state}; only a failed or "
                                     "cancelled job can be retried (and not while an equal "
                                     "job is queued, running or succeeded)")
        executor.wake()
        return {"id": job_id, "state": "queued"}

    @app.get("/v1/jobs/{job_id}/results", summary="The files of a finished job")
    def results_list(job_id: str, owner: str = Depends(owner_of)) -> dict:
        job = own_job(job_id, owner)
        return {"id": job_id,
                "files": _result_names(root, job) if job.state == "succeeded" else []}

    @app.get("/v1/jobs/{job_id}/results/{name:path}",
             summary="A result file: summary.json, summary.txt, the Parquet tables, plots")
    def result_file(job_id: str, name: str, owner: str = Depends(owner_of)):
        job = own_job(job_id, owner)
        if job.state != "succeeded":
            raise HTTPException(409, f"job {job_id!r} is {job.state}; results exist once it "
                                     "has succeeded")
        missing = HTTPException(404, f"no result {name!r} for job {job_id!r}; have: "
                                     f"{', '.join(_result_names(root, job))}")
        if not root.url:
            path = root.local_file(job.result_dir, name, owner)
            if path is None:
                raise missing
            return FileResponse(path)
        data = root.read(job.result_dir, name, owner)
        if data is None:
            raise missing
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(data, media_type=kind)

    @app.delete("/v1/jobs/{job_id}", status_code=204, summary="Delete a job and its results")
    def delete(job_id: str, owner: str = Depends(owner_of)) -> Response:
        job = own_job(job_id, owner)
        if job.state in ("queued", "running"):
            store.request_cancel(job_id)
            store.finish(job_id, "cancelled", "deleted")
            executor.wake()
        if job.result_dir:
            root.remove(job.result_dir, owner)
        store.delete(job_id)
        return Response(status_code=204)

    # ------------------------------------------------------------------ operations
    @app.get("/healthz", summary="The server process answers")
    async def healthz() -> dict:  # on the event loop: no wait for a worker thread
        return {"status": "ok"}

    @app.get("/readyz", summary="Scheduler reachable and store writable")
    def readyz() -> JSONResponse:
        checks = {"store": store.writable(), "scheduler": _scheduler_ok(cfg.scheduler),
                  "executor": executor.thread.is_alive()}
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse,
             summary="Prometheus text: jobs by state, durations, queue length")
    def metrics(owner: str = Depends(owner_of)) -> str:
        counts = store.counts()
        lines = ["# HELP daskmm_jobs Jobs by state.", "# TYPE daskmm_jobs gauge"]
        lines += [f'daskmm_jobs{{state="{s}"}} {counts[s]}' for s in STATES]
        lines += ["# HELP daskmm_queue_length Jobs waiting to run.",
                  "# TYPE daskmm_queue_length gauge", f"daskmm_queue_length {counts['queued']}",
                  "# HELP daskmm_running_jobs Jobs this server runs now.",
                  "# TYPE daskmm_running_jobs gauge",
                  f"daskmm_running_jobs {len(executor.running)}",
                  "# HELP daskmm_job_duration_seconds Run time of finished jobs.",
                  "# TYPE daskmm_job_duration_seconds histogram"]
        durs = store.durations()
        for state in TERMINAL:
            d = [x for s, x in durs if s == state]
            for b in DURATION_BUCKETS:
                le = "+Inf" if b == float("inf") else f"{b:g}"
                n = sum(1 for x in d if x <= b)
                lines.append(f'daskmm_job_duration_seconds_bucket{{state="{state}",'
                             f'le="{le}"}} {n}')
            lines.append(f'daskmm_job_duration_seconds_sum{{state="{state}"}} {sum(d):.6g}')
            lines.append(f'daskmm_job_duration_seconds_count{{state="{state}"}} {len(d)}')
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return pages.INDEX

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> str:
        return pages.docs(app.openapi())

    return app


def _result_names(root: ResultsRoot, job: JobRecord) -> list[str]:
    return root.names(job.result_dir, job.owner) if job.result_dir else []


def _scheduler_ok(address: str | None) -> bool:
    if not address:
        return True
    import socket
    from urllib.parse import urlparse
    u = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        with socket.create_connection((u.hostname, u.port or 8786), timeout=2):
            return True
    except OSError:
        return False


def serve(cfg: Config, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server until interrupted (uvicorn, one process)."""
    import uvicorn
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.time()
    app = create_app(cfg)
    log.info("daskmm serve on http://%s:%d (results %s, store %s)", host, port, cfg.results,
             cfg.store_url.split("@")[-1])
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    log.info("stopped after %.0f s", time.time() - started)

