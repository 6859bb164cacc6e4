"""GAM benchmark: ``daskmm.gam`` (exact, from Parquet, on a 2-worker LocalCluster) against
``mgcv::bam(discrete = TRUE, nthreads = 2)`` and ``bam(discrete = FALSE)``, side by side.

Simulates ``--rows`` rows (default 10^7)::

    x0..x5 ~ U(0, 1);  g ~ one of --levels levels, u[g] ~ N(0, 0.5^2)  (no g with --levels 0)
    y = sin(2 pi x0) + exp(2 x1)/4 + x2^11 (10 (1 - x2))^6/5 + x3 + x4 x5 + u[g] + N(0, 1)

formula ``y ~ s(x0, bs="cr") + s(x1, bs="cr") + s(x2, bs="cr") + s(x3, bs="cr") + te(x4, x5)``
(``+ s(g, bs="re")`` with levels). daskmm reads a Parquet dataset of --partitions files; bam
gets the same numbers (raw float64 columns; reading is not timed for either... daskmm's
fit time includes reading the Parquet files, bam's excludes reading). Prints every run, the
medians, the ratios, each tool's fREML score and the peak resident memory of each worker.

    python benchmarks/bench_gam.py --rows 10000000 --levels 10000 --json /tmp/gam_bench.json
    python benchmarks/bench_gam.py --scale 10000000,30000000,100000000 --no-r   # per-row time
    python benchmarks/bench_gam.py --rows 10000000 --levels 0 --discrete   # with discrete=True
    python benchmarks/bench_gam.py --scale 10000000,100000000,1000000000 --single-above \
        100000000 --json /tmp/gam_scale.json   # 10^9 rows: 64 GB of Parquet, one fit
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from distributed import Client, LocalCluster
from tool_env import tool_env

from daskmm.distributed.client import NO_DASHBOARD
from daskmm.models.gam.model import gam

HERE = Path(__file__).resolve().parent


def formula(levels: int) -> str:
    f = ("y ~ s(x0, bs = 'cr') + s(x1, bs = 'cr') + s(x2, bs = 'cr') + s(x3, bs = 'cr') "
         "+ te(x4, x5)")
    return f + (" + s(g, bs = 're')" if levels else "")


def simulate(rows: int, levels: int, out: Path, partitions: int, seed: int = 1,
             with_raw: bool = True) -> Path:
    """Write the Parquet dataset (and, ``with_raw``, raw columns for R) under ``out``; reuse
    if present."""
    pq, raw = out / "parquet", out / "raw"
    if (out / "_done").exists():
        return out
    pq.mkdir(parents=True, exist_ok=True)
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    u = rng.normal(0, 0.5, max(levels, 1))
    cols = {c: [] for c in ["y", "x0", "x1", "x2", "x3", "x4", "x5"] + (["g"] if levels else [])}
    per = -(-rows // partitions)
    for i in range(partitions):
        m = min(per, rows - i * per)
        x = rng.uniform(size=(m, 6))
        eta = (np.sin(2 * np.pi * x[:, 0]) + np.exp(2 * x[:, 1]) / 4
               + x[:, 2] ** 11 * (10 * (1 - x[:, 2])) ** 6 / 5 + x[:, 3] + x[:, 4] * x[:, 5])
        part = {f"x{j}": x[:, j] for j in range(6)}
        if levels:
            g = rng.integers(0, levels, m)
            eta = eta + u[g]
            part["g"] = g.astype(float)
        part["y"] = eta + rng.normal(size=m)
        pd.DataFrame(part).to_parquet(pq / f"part-{i:04d}.parquet", index=False)
        if with_raw:
            for c in cols:
                cols[c].append(part[c])
    for c, v in cols.items():
        if with_raw:
            np.concatenate(v).astype("<f8").tofile(raw / f"{c}.bin")
    (out / "_done").write_text("ok\n")
    return out


class PeakRSS:
    """Peak resident memory of each worker process, sampled every 0.2 s."""

    def __init__(self, client: Client):
        self.procs = [psutil.Process(p) for p in client.run(lambda: __import__("os").getpid()
                                                            ).values()]
        self.peak = [0] * len(self.procs)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for i, p in enumerate(self.procs):
                try:
                    self.peak[i] = max(self.peak[i], p.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.2)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()


def time_daskmm(client, path: Path, levels: int, repeats: int, discrete: bool = False) -> dict:
    runs, score, peaks = [], None, []
    for _ in range(repeats):
        with PeakRSS(client) as mem:
            t = time.perf_counter()
            r = gam(formula(levels), str(path / "parquet"), factors=["g"] if levels else None,
                    client=client, discrete=discrete)
            runs.append(time.perf_counter() - t)
        score = r.score
        peaks.append(max(mem.peak) / 2 ** 30)
        tool = "daskmm_discrete" if discrete else "daskmm"
        print(f"RUN {tool} {runs[-1]:.2f} s  fREML {r.score:.6f}  peak worker RSS "
              f"{peaks[-1]:.2f} GiB", flush=True)
    return {"tool": tool, "runs_s": runs, "median_s": statistics.median(runs),
            "score": score, "peak_worker_rss_gib": max(peaks), "timing": r.timing,
            "coef": r.coef[:r.spec.p_dense]}


def time_r(path: Path, rows: int, levels: int, rd: int, re: int) -> list[dict]:
    out = subprocess.run(["Rscript", str(HERE / "bench_gam.R"), str(path / "raw"), str(rows),
                          formula(levels).replace("'", '"'), str(rd), str(re)],
                         capture_output=True, text=True, check=False, env=tool_env())
    recs: dict = {}
    for line in out.stdout.splitlines():
        k, tool, t, score = line.split()
        if k == "RUN":
            rec = recs.setdefault(tool, {"tool": tool, "runs_s": []})
            rec["runs_s"].append(float(t))
            rec["score"] = float(score)
            print(f"RUN {tool} {float(t):.2f} s  fREML {float(score):.6f}", flush=True)
    if out.returncode:
        print("R failed:", out.stderr.strip().splitlines()[-3:])
    for rec in recs.values():
        rec["median_s"] = statistics.median(rec["runs_s"])
    return list(recs.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--levels", type=int, default=10_000,
                    help="levels of the random intercept s(g, bs = 're') (0: none)")
    ap.add_argument("--partitions", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-exact", type=int, default=None,
                    help="bam(discrete = FALSE) fits (default 1 without levels, 0 with: bam "
                    "builds a dense column per level, 10^4 columns at 10^7 rows)")
    ap.add_argument("--r-repeats", type=int, default=None,
                    help="bam(discrete = TRUE) fits (default: --repeats)")
    ap.add_argument("--no-r", action="store_true")
    ap.add_argument("--scale", default=None, help="comma-separated row counts: daskmm only, "
                    "time per row at each size")
    ap.add_argument("--single-above", type=int, default=None,
                    help="with --scale: sizes above this many rows are fitted once")
    ap.add_argument("--discrete", action="store_true", help="also time daskmm's "
                    "discrete=True fit and print its difference from the exact one")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rec: dict = {"machine": f"{psutil.cpu_count()} cores, "
                 f"{psutil.virtual_memory().total / 2**30:.0f} GiB", "formula": formula(a.levels)}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      memory_limit="4GiB", **NO_DASHBOARD) as cl, Client(cl) as c:
        sizes = [int(s) for s in a.scale.split(",")] if a.scale else [a.rows]
        rec["runs"] = []
        for rows in sizes:
            path = simulate(rows, a.levels, HERE / "_data" / f"gam_{rows}_{a.levels}",
                            max(a.partitions * rows // a.rows, 2) if a.scale else a.partitions,
                            with_raw=not (a.no_r or a.scale))
            reps = 1 if a.single_above is not None and rows > a.single_above else a.repeats
            d = time_daskmm(c, path, a.levels, reps)
            d["rows"] = rows
            d["us_per_row"] = d["median_s"] / rows * 1e6
            print(f"daskmm {rows} rows: median {d['median_s']:.2f} s, "
                  f"{d['us_per_row']:.3f} us/row", flush=True)
            rec["runs"].append(d)
            if a.discrete:
                dd = time_daskmm(c, path, a.levels, a.repeats, discrete=True)
                dd["rows"] = rows
                dd["score_rel_diff"] = dd["score"] / d["score"] - 1
                dd["coef_max_abs_diff"] = float(np.abs(dd["coef"] - d["coef"]).max())
                print(f"daskmm discrete {rows} rows: median {dd['median_s']:.2f} s; fREML "
                      f"{dd['score_rel_diff']:+.2e} relative to exact, coefficients within "
                      f"{dd['coef_max_abs_diff']:.2e}", flush=True)
                rec["runs"].append(dd)
    if not a.no_r and not a.scale:
        exact = a.repeats_exact if a.repeats_exact is not None else (0 if a.levels else 1)
        rs = time_r(path, a.rows, a.levels,
                    a.r_repeats if a.r_repeats is not None else a.repeats, exact)
        rec["runs"] += rs
        dm = rec["runs"][0]["median_s"]
        for r in rs:
            print(f"{r['tool']}: median {r['median_s']:.2f} s -> daskmm is "
                  f"{r['median_s'] / dm:.2f}x faster; fREML {r['score']:.6f} vs daskmm "
                  f"{rec['runs'][0]['score']:.6f}")
    if a.json:
        for r in rec["runs"]:
            r.pop("coef", None)
        Path(a.json).write_text(json.dumps(rec, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
