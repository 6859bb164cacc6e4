"""A submitted job body made into a job file the service runs: validated against the job
schema (the CLI's messages, naming the field), every path resolved and kept inside the
service's roots.

Reads (``data``, and ``bed``/``zarr``/``pheno``/``covar`` of a GWAS job) must lie under a
``--data-root`` (or under ``--results``, where the service's own datasets are); writes
(``output``, ``ingest.out``, the ``data`` a ``simulate:`` section creates) under
``--results``. Relative paths are taken from the first data root for reads and from the
results root for writes. ``output`` may be left out: the service gives each job
``RESULTS/OWNER/ID``. A path that leaves its root, also through ``..`` or a symbolic link,
is refused. ``cluster`` is the server's, but for ``cluster.mode``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

from daskmm.jobs.spec import JobError, validate

READ_FIELDS = ("data", "bed", "zarr", "pheno", "covar")


class JobBodyError(ValueError):
    """A job body the service refuses (HTTP 422), with a message naming the field."""


def fingerprint(body: dict) -> str:
    """What makes two submissions the same job: the body as parsed (key order and YAML
    formatting do not count)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _under(path: str, roots: list[str]) -> bool:
    if "://" in path:
        return any(path.startswith(r.rstrip("/") + "/") for r in roots if "://" in r)
    p = Path(os.path.realpath(path))
    return any(p == Path(os.path.realpath(r)) or p.is_relative_to(os.path.realpath(r))
               for r in roots if "://" not in r)


def _resolve(value: str, base: str) -> str:
    if "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, value))


def prepare(body: object, owner: str, job_id: str, results: str,
            data_roots: list[str], staging: str | None = None) -> dict:
    """The job file for ``body``: paths absolute and checked, ``output`` set.

    ``staging``: with a results root that is a URL, the local folder jobs write into before
    their result is published there (:mod:`daskmm.service.results`); then ``results`` is not
    read from, and a job may not ingest or simulate (datasets need a shared folder).

    Raises
    ------
    JobBodyError
        With the CLI's schema message or the path that leaves its root.
    """
    if not isinstance(body, dict):
        raise JobBodyError(f"job: a job is a mapping of fields; got {type(body).__name__}")
    doc = copy.deepcopy(body)
    cluster = doc.get("cluster")
    if cluster is not None and (not isinstance(cluster, dict) or set(cluster) - {"mode"}):
        raise JobBodyError("job: cluster is the server's (its scheduler); a job may set only "
                           "cluster.mode (auto | in-process | gathered | distributed)")
    if staging is not None:
        for field in ("ingest", "simulate"):
            if field in doc:
                raise JobBodyError(f"job: {field} writes a dataset, which needs a shared "
                                   "folder; this server's results root is a URL: ingest or "
                                   "simulate with daskmm on the data root first")
        results = os.path.abspath(staging)
        reads = [os.path.abspath(r) if "://" not in r else r for r in data_roots]
    else:
        results = os.path.abspath(results)
        reads = [os.path.abspath(r) if "://" not in r else r for r in data_roots] + [results]
    if not reads:
        reads = [results]
    read_base = reads[0]
    doc.setdefault("output", os.path.join(results, owner, job_id))
    writes: list[tuple[str, str]] = [("output", doc["output"])]
    ingest = doc.get("ingest")
    if isinstance(ingest, dict) and isinstance(ingest.get("out"), str):
        writes.append(("ingest.out", ingest["out"]))
    simulated = isinstance(doc.get("simulate"), dict)
    if simulated and isinstance(doc.get("data"), str):
        writes.append(("data", doc["data"]))
    try:
        validate(doc, "job")
    except JobError as exc:
        raise JobBodyError(str(exc)) from None
    for field, value in writes:
        path = _resolve(value, results)
        if "://" in path or not _under(path, [results]):
            raise JobBodyError(f"job: {field} {value!r} is outside the results root; a job "
                               "writes only under the server's --results folder")
        if field == "output":
            doc["output"] = path
        elif field == "ingest.out":
            doc["ingest"]["out"] = path
        else:
            doc["data"] = path
    for field in READ_FIELDS:
        value = doc.get(field)
        if not isinstance(value, str) or (field == "data" and simulated):
            continue
        path = _resolve(value, read_base)
        if not _under(path, reads):
            raise JobBodyError(f"job: {field} {value!r} is outside the data roots; a job "
                               "reads only under the server's --data-root folders "
                               f"({', '.join(data_roots) or 'none given'}) and --results")
        doc[field] = path
    out = Path(doc["output"])
    if out == Path(results) or Path(results) not in out.parents:
        raise JobBodyError(f"job: output {str(body.get('output'))!r} is the results root "
                           "itself; give a folder inside it (or leave output out)")
    return doc
