"""Scale benchmark: ``daskmm.lmm`` on a 10^8-row Parquet dataset against one plain Dask pass.

Writes (once; reused when present with the right row count) a Parquet dataset of ``--rows``
rows (default 10^8) under ``benchmarks/_data/``, one file per block of ``g`` levels so that all
rows of a level are in one file (default 100 files, 10^5 levels of ``g``: 1000 levels and 10^6
rows per file). Columns ``y, x`` (float64) and ``g`` (int64), simulated file by file (never the
whole table in memory) as::

    y = 1 + 0.5 x + b0[g] + b1[g] x + e
    x ~ N(0, 1);  (b0, b1) ~ N(0, [[1, 0.15], [0.15, 0.25]]);  e ~ N(0, 1)

Then, on ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
memory_limit="4GB")``, times alternately, ``--repeats`` times each:

``pass``
    the baseline: one Dask pass that reads the same columns and sums them,
    ``dd.read_parquet(path, columns=["y", "x", "g"]).sum().compute()``;
``fit``
    ``daskmm.lmm("y ~ x + (x | g)", path, client=client)`` (reading, statistics pass and
    optimisation: the wall time of the whole call).

and prints every run, the medians and ``ratio = median(fit) / median(pass)``: how many plain
passes over the data one fit costs. Peak memory: each worker process samples its own resident
set size (RSS) every 0.05 s in a background thread during each run; the maximum per worker (and
of this client process, where ``mode="gathered"`` evaluates the objective) is reported. With a
4 GB limit per worker a fit that does not stream would be restarted by the nanny; a worker that
disappears during a run is reported.

Run (full size; writing the data takes a few minutes the first time, about 2 GB on disk)::

    python benchmarks/bench_scale.py --json benchmarks/results_scale.json

Smoke test::

    nice -n 10 python benchmarks/bench_scale.py --rows 200000 --g-levels 2000 --files 10 \\
        --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dask
import dask.dataframe as dd
import distributed
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, LocalCluster

import daskmm
from daskmm.distributed.client import NO_DASHBOARD

HERE = Path(__file__).resolve().parent
FORMULA = "y ~ x + (x | g)"
COLUMNS = ["y", "x", "g"]
SAMPLE_S = 0.05


# ------------------------------------------------------------------ data
def file_bounds(total: int, parts: int, i: int) -> tuple[int, int]:
    """``[start, stop)`` of part ``i`` when ``total`` items are split in ``parts`` blocks."""
    base, extra = divmod(total, parts)
    start = i * base + min(i, extra)
    return start, start + base + (i < extra)


def write_file(path: str, i: int, rows: int, files: int, g_levels: int, seed: int) -> int:
    """Simulate and write file ``i``: its block of rows and its block of ``g`` levels."""
    r0, r1 = file_bounds(rows, files, i)
    g0, g1 = file_bounds(g_levels, files, i)
    n, k = r1 - r0, g1 - g0
    rng = np.random.default_rng([seed, i])
    cov = np.array([[1.0, 0.15], [0.15, 0.25]])
    b = rng.multivariate_normal([0.0, 0.0], cov, size=k)
    local = rng.integers(0, k, size=n)
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + b[local, 0] + b[local, 1] * x + rng.normal(size=n)
    table = pa.table({"y": y, "x": x, "g": (local + g0).astype(np.int64)})
    pq.write_table(table, os.path.join(path, f"part-{i:05d}.parquet"), row_group_size=n)
    return n


def dataset_rows(path: Path) -> int:
    """Rows in a Parquet directory, from the file footers (0 if it does not exist)."""
    if not path.is_dir():
        return 0
    return sum(pq.read_metadata(f).num_rows for f in sorted(path.glob("*.parquet")))


def ensure_dataset(data_dir: Path, rows: int, files: int, g_levels: int, seed: int) -> Path:
    """Return the dataset directory, writing it first unless it holds ``rows`` rows already.

    Files are written two at a time in worker processes (before the benchmark cluster starts,
    so its workers begin with a clean heap), each simulated on its own; the directory is
    renamed into place when complete.
    """
    if g_levels < files:
        raise SystemExit(f"--g-levels ({g_levels}) must be at least --files ({files})")
    path = data_dir / f"scale_{rows}_g{g_levels}_f{files}_s{seed}.parquet"
    if path.is_dir() and len(list(path.glob("*.parquet"))) == files \
            and dataset_rows(path) == rows:
        print(f"reusing {path} ({rows} rows, {files} files)", flush=True)
        return path
    if path.exists():
        shutil.rmtree(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    print(f"writing {rows} rows in {files} files to {path}", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(write_file, str(tmp), i, rows, files, g_levels, seed)
                   for i in range(files)]
        written = sum(f.result() for f in futures)
    assert written == rows, (written, rows)
    tmp.rename(path)
    print(f"  written in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


# ------------------------------------------------------------------ peak memory
def _start_sampler(dask_worker=None, interval: float = SAMPLE_S) -> int:
    """On a worker: start a thread recording the peak RSS of this process."""
    proc = psutil.Process()
    state = {"peak": proc.memory_info().rss, "stop": threading.Event()}

    def loop() -> None:
        while not state["stop"].wait(interval):
            state["peak"] = max(state["peak"], proc.memory_info().rss)

    state["thread"] = threading.Thread(target=loop, daemon=True, name="bench-rss")
    state["thread"].start()
    dask_worker._bench_rss = state
    return state["peak"]


def _stop_sampler(dask_worker=None) -> int | None:
    """On a worker: stop the sampler and return the peak RSS (None if none was started)."""
    state = getattr(dask_worker, "_bench_rss", None)
    if state is None:
        return None
    state["stop"].set()
    state["thread"].join()
    state["peak"] = max(state["peak"], psutil.Process().memory_info().rss)
    del dask_worker._bench_rss
    return state["peak"]


class PeakMemory:
    """Peak RSS of every worker process (and of this process) while the block runs."""

    def __init__(self, client: Client):
        self.client = client
        self.workers: dict[str, int | None] = {}
        self.client_peak = 0
        self.lost: list[str] = []

    def _local(self) -> None:
        proc = psutil.Process()
        while not self._stop.wait(SAMPLE_S):
            self.client_peak = max(self.client_peak, proc.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        self.start = self.client.run(_start_sampler)
        self.client_peak = psutil.Process().memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._local, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        end = self.client.run(_stop_sampler)
        self.lost = sorted(set(self.start) - set(end))
        self.workers = {w: end.get(w) for w in sorted(set(self.start) | set(end))}


# ------------------------------------------------------------------ benchmark
def one_pass(path: Path) -> float:
    """The baseline: read the model's columns and sum them."""
    total = dd.read_parquet(str(path), columns=COLUMNS).sum().compute()
    return float(total["y"])


def run(args: argparse.Namespace) -> dict:
    path = ensure_dataset(args.data_dir, args.rows, args.files, args.g_levels, args.seed)
    runs: list[dict] = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      memory_limit=args.memory_limit, **NO_DASHBOARD) as cluster, \
            Client(cluster) as client:
        names = {}
        for rep in range(args.repeats):
            for task in ("pass", "fit"):
                with PeakMemory(client) as mem:
                    t0 = time.perf_counter()
                    if task == "pass":
                        value = one_pass(path)
                        info = {"sum_y": value}
                    else:
                        res = daskmm.lmm(FORMULA, str(path), client=client)
                        info = {"objective": res.objective,
                                "theta": list(map(float, res.theta)),
                                "beta": list(map(float, res.beta)),
                                "timing": res.timing, "mode": res.optinfo.get("mode"),
                                "feval": res.optinfo.get("feval"),
                                "converged": res.converged}
                    wall = time.perf_counter() - t0
                for w in mem.workers:
                    names.setdefault(w, f"worker{len(names)}")
                peaks = {names[w]: v for w, v in mem.workers.items()}
                runs.append({"repeat": rep + 1, "task": task, "wall_s": wall,
                             "peak_rss_bytes": peaks, "client_peak_rss_bytes": mem.client_peak,
                             "lost_workers": [names[w] for w in mem.lost], **info})
                extra = (f"objective {info['objective']:.10g}, mode {info['mode']}, "
                         f"evaluations {info['feval']}" if task == "fit" else "")
                print(f"  run {rep + 1} {task:<4} {wall:8.2f} s  peak RSS "
                      + ", ".join(f"{k} {_gb(v)}" for k, v in peaks.items())
                      + f", client {_gb(mem.client_peak)}  {extra}", flush=True)
                if mem.lost:
                    print(f"  WARNING: workers lost during the run: {mem.lost}", flush=True)
    summary = {}
    for task in ("pass", "fit"):
        mine = [r for r in runs if r["task"] == task]
        worker_names = sorted({k for r in mine for k in r["peak_rss_bytes"]})
        summary[task] = {
            "runs_s": [r["wall_s"] for r in mine],
            "median_s": statistics.median(r["wall_s"] for r in mine),
            "peak_rss_bytes": {w: max((r["peak_rss_bytes"].get(w) or 0) for r in mine)
                               for w in worker_names},
            "client_peak_rss_bytes": max(r["client_peak_rss_bytes"] for r in mine),
        }
    summary["ratio_fit_over_pass"] = summary["fit"]["median_s"] / summary["pass"]["median_s"]
    return {"benchmark": "bench_scale", "argv": sys.argv[1:], "machine": machine(),
            "data": str(path), "rows": args.rows, "files": args.files,
            "g_levels": args.g_levels, "seed": args.seed, "formula": FORMULA,
            "workers": args.workers, "memory_limit": args.memory_limit,
            "runs": runs, "summary": summary}


def _gb(nbytes: int | None) -> str:
    return "lost" if nbytes is None else f"{nbytes / 1e9:.2f} GB"


def report(doc: dict) -> str:
    """The summary table as text."""
    s = doc["summary"]
    head = f"{'task':<5} {'runs (s)':<30} {'median s':>9}  peak RSS per worker (max over runs)"
    lines = [f"{doc['rows']} rows, {doc['files']} files, {doc['g_levels']} levels of g; "
             f"{doc['workers']} workers x 1 thread, memory_limit {doc['memory_limit']}",
             head, "-" * len(head)]
    for task in ("pass", "fit"):
        t = s[task]
        runs = " ".join(f"{v:.2f}" for v in t["runs_s"])
        peaks = ", ".join(f"{k} {_gb(v)}" for k, v in t["peak_rss_bytes"].items())
        lines.append(f"{task:<5} {runs:<30} {t['median_s']:>9.2f}  {peaks}, "
                     f"client {_gb(t['client_peak_rss_bytes'])}")
    lines.append(f"ratio median(fit) / median(pass) = {s['ratio_fit_over_pass']:.2f}")
    fits = [r for r in doc["runs"] if r["task"] == "fit"]
    objs = [r["objective"] for r in fits]
    lines.append(f"fit objective (REML criterion) {objs[-1]:.10f} "
                 f"(spread over runs {max(objs) - min(objs):.1e}), theta "
                 + " ".join(f"{v:.6f}" for v in fits[-1]["theta"])
                 + ", beta " + " ".join(f"{v:.6f}" for v in fits[-1]["beta"]))
    lost = sorted({w for r in doc["runs"] for w in r["lost_workers"]})
    if lost:
        lines.append(f"WARNING: workers lost during runs: {', '.join(lost)}")
    return "\n".join(lines)


def machine() -> dict:
    """Where the benchmark ran."""
    return {"platform": platform.platform(), "python": sys.version.split()[0],
            "cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "daskmm": daskmm.__version__, "dask": dask.__version__,
            "distributed": distributed.__version__, "pyarrow": pa.__version__}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10 ** 8, help="rows (default 10^8)")
    p.add_argument("--g-levels", type=int, default=10 ** 5, help="levels of g (default 10^5)")
    p.add_argument("--files", type=int, default=100, help="Parquet files (default 100)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each task (default 3)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default 2)")
    p.add_argument("--memory-limit", default="4GB", help="per worker (default 4GB)")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--data-dir", type=Path, default=HERE / "_data")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    doc = run(args)
    print("\n" + report(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
