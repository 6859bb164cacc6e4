"""A bounded load on a running service (for ``benchmarks/bench_service.py`` and the tests):
``jobs`` small fits submitted by ``clients`` concurrent threads, each then polling its jobs
until they end. Records the latency of every ``POST /v1/jobs`` and ``GET /v1/jobs/{id}``,
and checks that every job succeeded once, none lost, with the numbers of a direct fit."""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import daskmm

MODELS = [
    {"formula": "Reaction ~ Days + (Days | Subject)", "method": "REML"},
    {"formula": "Reaction ~ Days + (Days | Subject)", "method": "ML"},
    {"formula": "Reaction ~ Days + (1 | Subject)", "method": "REML"},
    {"formula": "Reaction ~ 1 + (1 | Subject)", "method": "REML"},
]


def _req(url: str, token: str, method: str = "GET", body: bytes | None = None):
    h = {"Authorization": f"Bearer {token}"}
    if body is not None:
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, method=method, headers=h)
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    return status, json.loads(raw or b"null"), time.perf_counter() - t


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_load(url: str, token: str, data: str, jobs: int = 200, clients: int = 20,
             factors: tuple[str, ...] = ("Subject",), timeout: float = 1800,
             poll_s: float = 1.0) -> dict:
    """Submit ``jobs`` fits of :data:`MODELS` (cycled; each job named apart, so each is a job
    of its own) from ``clients`` threads; each thread then polls each of its unfinished jobs
    once every ``poll_s`` seconds until they end."""
    post, get = [], []
    lock = threading.Lock()
    ids: dict[int, str] = {}
    errors: list[str] = []

    def client(k: int) -> None:
        mine = []
        for i in range(k, jobs, clients):
            body = {"name": f"load-{i}", "data": data, "factors": list(factors),
                    **MODELS[i % len(MODELS)]}
            status, out, dt = _req(f"{url}/v1/jobs", token, "POST", json.dumps(body).encode())
            with lock:
                post.append(dt)
            if status != 201:
                errors.append(f"job {i}: POST {status} {out}")
                continue
            ids[i] = out["id"]
            mine.append(out["id"])
        deadline = time.time() + timeout
        pending = set(mine)
        while pending and time.time() < deadline:
            for job_id in list(pending):
                status, doc, dt = _req(f"{url}/v1/jobs/{job_id}", token)
                with lock:
                    get.append(dt)
                if status == 200 and doc["state"] in ("succeeded", "failed", "cancelled"):
                    pending.discard(job_id)
            time.sleep(poll_s)
        if pending:
            errors.append(f"{len(pending)} jobs did not end within {timeout:g} s")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    states, runs, results = {}, {}, {}
    for i, job_id in ids.items():
        _, doc, _ = _req(f"{url}/v1/jobs/{job_id}", token)
        states[doc["state"]] = states.get(doc["state"], 0) + 1
        runs[job_id] = sum(1 for h in doc["history"] if h["state"] == "running")
        if doc["state"] == "succeeded":
            _, summ, _ = _req(f"{url}/v1/jobs/{job_id}/results/summary.json", token)
            results[i] = summ
        else:
            errors.append(f"job {i} ({job_id}) {doc['state']}: {doc['error']}")
    return {"jobs": jobs, "clients": clients, "poll_s": poll_s, "wall_s": wall,
            "states": states,
            "submitted": len(ids), "ran_more_than_once": sum(1 for n in runs.values() if n > 1),
            "errors": errors, "results": results,
            "post_ms": {"n": len(post), "p50": 1e3 * percentile(post, 0.5),
                        "p99": 1e3 * percentile(post, 0.99),
                        "mean": 1e3 * statistics.fmean(post) if post else float("nan")},
            "get_ms": {"n": len(get), "p50": 1e3 * percentile(get, 0.5),
                       "p99": 1e3 * percentile(get, 0.99),
                       "mean": 1e3 * statistics.fmean(get) if get else float("nan")}}


def compare_with_direct(results: dict, data_path: str, factors=("Subject",)) -> float:
    """The largest relative difference of objective and theta between the service's results
    and a direct fit of each model."""
    import pandas as pd

    df = pd.read_csv(data_path)
    for f in factors:
        df[f] = df[f].astype(str)
    direct = {}
    worst = 0.0
    for i, summ in results.items():
        m = MODELS[i % len(MODELS)]
        key = (m["formula"], m["method"])
        if key not in direct:
            direct[key] = daskmm.lmm(m["formula"], df, reml=m["method"] == "REML",
                                     mode="in-process")
        d = direct[key]
        worst = max(worst, abs(summ["objective"] - d.objective) / abs(d.objective))
        for a, b in zip(summ["theta"], d.theta):
            worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
    return worst
