"""``daskmm run JOB.yaml``: make the data if needed, fit, write the results atomically.

Steps, each skipped when its product is already there:

1. **simulate** (``simulate:``) into ``data`` unless a dataset is there;
2. **ingest** (``ingest:``) ``data`` into ``ingest.out`` unless a dataset with the same key
   is there;
3. **fit** and write ``summary.json``, ``summary.txt``, ``fixef.parquet``, ``ranef.parquet``
   and ``job.json`` into a temporary sibling of ``output``; ``_SUCCESS`` (holding the job's
   fingerprint) is written last and the directory renamed into place.

A finished job (``output/_SUCCESS`` with the same fingerprint) is not run again unless
``force``. A run killed at any point leaves no ``output`` that looks complete: at worst a
hidden ``.NAME.tmp-*`` directory, which the next run ignores.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from daskmm.api import given_options
from daskmm.data.local import estimate_cells
from daskmm.data.manifest import read_manifest
from daskmm.data.provenance import stale_reason
from daskmm.data.staging import check_output
from daskmm.distributed.execution import in_process_limit
from daskmm.errors import DataError
from daskmm.formula.parse import identifiers
from daskmm.jobs.spec import GwasJob, Job, load_job

log = logging.getLogger("daskmm")

SUCCESS = "_SUCCESS"


@contextlib.contextmanager
def _cluster(needed: bool, address: str | None, local: dict):
    """A client when ``needed`` (the scheduler at ``address``, or a LocalCluster with the job's
    ``local`` settings), else None."""
    if not needed:
        yield None
        return
    from daskmm.distributed.client import client_for
    with client_for(address, local=local) as client:
        yield client


def is_done(job: Job) -> bool:
    marker = job.output / SUCCESS
    return marker.is_file() and marker.read_text().strip() == job.fingerprint()


def _ingest_needed(job: Job, force: bool) -> str | None:
    """Why the job's dataset must be (re)written, or None when the one there is current."""
    ing = job.ingest
    have = read_manifest(ing["out"])
    if have is None:
        return "no dataset yet"
    if force:
        return "--force"
    if have.key != ing["by"]:
        return f"it is bucketed by {have.key!r}, the job by {ing['by']!r}"
    if ing.get("buckets") and have.buckets != ing["buckets"]:
        return f"it has {have.buckets} buckets, the job asks for {ing['buckets']}"
    if have.na_action != ing.get("na_action", "keep"):
        return f"it was ingested with na_action {have.na_action!r}"
    if have.source != job.data:
        return f"it was ingested from {have.source!r}"
    stale = stale_reason(have.source, have.source_info)
    if stale:
        return f"its source changed since the ingest: {stale}"
    return None


def check_paths(job: Job, force: bool = False) -> None:
    """Every path the job writes, checked before any work (:func:`check_output`): the output
    is new or a previous result of this job (another daskmm fit with ``force``); the dataset
    folders are new or daskmm datasets; none of them is, holds or lies inside the input, the
    job file's folder or each other."""
    job_file = [job.path] if job.path else []
    job_dir = [job.path.parent] if job.path else []
    written = [job.output]
    if job.ingest:
        check_output(job.ingest["out"], "dataset", force=True, inputs=[job.data],
                     protect=job_dir + [job.output], what="ingest.out")
        written.append(Path(job.ingest["out"]))
    if job.simulate:
        check_output(job.data, "dataset", force=True, protect=job_dir + [job.output],
                     what="data (simulate)")
    inputs = [] if job.simulate else [job.data]
    check_output(job.output, "fit", force=force, name=job.name,
                 inputs=inputs + written[1:], protect=job_dir + job_file, what="output")


def _spell(name: str, value: object) -> str:
    """An option as a job file writes it: ``nagq: 7``."""
    return f"{name}: {value}"


def job_options(job: Job, client, mode: str) -> dict:
    """The fit's options a job file sets (:func:`daskmm.api.given_options`): its fields as
    ``daskmm.fit`` names them (``method: REML`` stays ``method``; the model's options object
    reads it)."""
    values = {"link": job.link, "nagq": job.nagq, "factors": list(job.factors),
              "weights": job.weights, "client": client, "mode": mode,
              "method": (job.raw or {}).get("method"), "rho": job.rho,
              "ar_start": job.ar_start, "discrete": job.discrete, **(job.inference or {})}
    return given_options(values)


def run_job(job: Job | str | os.PathLike, scheduler: str | None = None,
            force: bool = False, check: Callable[[], None] | None = None) -> dict:
    """Run a job (a :class:`Job` or a job file path).

    Parameters
    ----------
    scheduler : str, optional
        Scheduler address; overrides ``cluster.scheduler`` (``DASK_SCHEDULER_ADDRESS`` is used
        when neither is given).
    force : bool
        Run even when the output is complete for this job, re-ingest, and replace a previous
        daskmm fit at the output that another job wrote.
    check : callable, optional
        Called once the job has read its inputs, before its result is put in place (the
        service's :func:`daskmm.service.jobdoc.verify`); what it raises fails the job and no
        result is left.

    Returns
    -------
    dict
        ``{"status": "done" | "skipped", "output": path, "timing": {...}}``.
    """
    from daskmm.models import registry
    from daskmm.results.base import require_certified
    from daskmm.results.writing import report_rows, write_outputs

    if not isinstance(job, (Job, GwasJob)):
        job = load_job(job)
    if isinstance(job, GwasJob):
        return run_gwas_job(job, scheduler, force, check)
    check_paths(job, force)
    reingest = _ingest_needed(job, force) if job.ingest else None
    have = None if job.ingest or job.simulate else read_manifest(job.data)
    if have is not None:
        stale = stale_reason(have.source, have.source_info)
        if stale:
            raise DataError(f"dataset {job.data!r} is stale: {stale}; re-run daskmm ingest, "
                            "or give the job an ingest: section so it re-ingests by itself")
    if is_done(job) and not force and reingest is None:
        log.debug("job %r is already done (%s); use --force to run it again", job.name,
                 job.output)
        return {"status": "skipped", "output": str(job.output), "timing": {}}
    cluster = dict(job.cluster or {})
    address = scheduler or cluster.pop("scheduler", None)
    mode = cluster.pop("mode", "auto")
    timing: dict[str, float] = {}
    # a cluster when the job names one (cluster:, --scheduler) or has data to write;
    # otherwise daskmm.fit chooses (in this process for small data)
    simulating = bool(job.simulate) and read_manifest(job.data) is None
    need_cluster = bool(job.cluster) or address is not None or simulating or \
        reingest is not None
    with _cluster(need_cluster, address, cluster) as client:
        data = job.data
        if job.simulate:
            if simulating:
                from daskmm.data.simulate import simulate
                t = time.perf_counter()
                log.info("simulating %d rows into %s", job.simulate["rows"], data)
                simulate(data, client=client, force=True, **job.simulate)
                timing["simulate_s"] = time.perf_counter() - t
            else:
                log.info("using the simulated dataset at %s", data)
        if job.ingest:
            ing = job.ingest
            if reingest is not None:
                from daskmm.data.ingest import ingest
                t = time.perf_counter()
                log.info("ingesting %s into %s by %r (%s)", data, ing["out"], ing["by"],
                         reingest)
                ingest(data, ing["by"], ing["out"], buckets=ing.get("buckets"),
                       na_action=ing.get("na_action", "keep"), factors=list(job.factors),
                       client=client, force=True)
                timing["ingest_s"] = time.perf_counter() - t
            else:
                log.info("using the dataset at %s (key %r)", ing["out"], ing["by"])
            data = ing["out"]
        t = time.perf_counter()
        model, options = registry.check(job.formula, job.family,
                                        job_options(job, client, mode), spell=_spell)
        result = model.fit(job.formula, data, job.family, options)
        timing["fit_s"] = time.perf_counter() - t
        require_certified(result, bool((job.raw or {}).get("allow_uncertified")),
                          "allow_uncertified: true in the job")
        files = model.outputs(result, data, plots=bool((job.raw or {}).get("plots")),
                              seed=(job.raw or {}).get("seed"))

    def extra(tmp: Path) -> None:
        if files is not None:
            files(tmp)
        if check is not None:
            check()
        (tmp / "job.json").write_text(json.dumps({"name": job.name, "job": job.raw,
                                                  "timing": timing}, indent=2) + "\n")
        (tmp / SUCCESS).write_text(job.fingerprint() + "\n")

    write_outputs(result, job.output, extra=extra, name=job.name)
    report_rows(result)
    log.info("job %r done: %s", job.name, job.output)
    return {"status": "done", "output": str(job.output), "timing": timing, "result": result}


def run_gwas_job(job: GwasJob, scheduler: str | None = None, force: bool = False,
                 check: Callable[[], None] | None = None) -> dict:
    """Run a ``kind: gwas`` job; a scan already complete with the same inputs is skipped.
    ``check`` as :func:`run_job`'s (a scan it refuses is removed: nothing of it is kept)."""
    from daskmm.models.gwas import gwas
    from daskmm.models.gwas.output import ScanComplete

    cluster = dict(job.cluster or {})
    address = scheduler or cluster.pop("scheduler", None)
    cluster.pop("mode", None)
    t = time.perf_counter()
    with _cluster(bool(job.cluster) or address is not None, address, cluster) as client:
        try:
            result = gwas(out=job.output, client=client, force=force, **job.options)
        except ScanComplete:
            log.debug("job %r is already done (%s); use --force to run it again", job.name,
                     job.output)
            return {"status": "skipped", "output": str(job.output), "timing": {}}
    if check is not None:
        try:
            check()
        except BaseException:
            shutil.rmtree(job.output, ignore_errors=True)
            raise
    log.info("job %r done: %s", job.name, job.output)
    return {"status": "done", "output": str(job.output),
            "timing": {"gwas_s": time.perf_counter() - t}, "result": result}


def needs_cluster(job_file: str) -> bool:
    """Whether a job uses the shared cluster: always when it simulates, ingests, scans
    genotypes or sets ``cluster.mode``; otherwise only when its data are not known to be
    small (below :func:`daskmm.distributed.execution.in_process_limit` cells), as ``daskmm fit``
    decides without a scheduler. Small fits then pay for no cluster round trips."""
    with open(job_file) as fh:
        doc = json.load(fh) if job_file.endswith(".json") else yaml.safe_load(fh.read())
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
    import daskmm.models.glmm.fit  # noqa: F401
    import daskmm.models.lmm.fit  # noqa: F401
    import daskmm.results.writing  # noqa: F401
