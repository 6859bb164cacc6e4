"""Scale run for datasets and jobs: simulate, ingest and fit at 10^7, 10^8 and 10^9 rows.

For each size ``N`` (levels of ``g``: ``N / 1000``; no crossed factor), on
``LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=--memory-limit)``:

``simulate``
    ``daskmm.data.simulate.simulate``: the dataset written straight to buckets (streaming,
    one bucket per task), reused when it is already there with ``N`` rows;
``ingest``
    ``daskmm.data.ingest.ingest`` of the model's columns (``y, x, g``) of that dataset, read as
    a plain Parquet directory, re-bucketed by ``g`` into ``N / --ingest-rows-per-bucket``
    buckets (the path a user's own CSV/Parquet takes); skipped with ``--no-ingest``;
``fit``
    ``daskmm.lmm("y ~ x + (x | g)", dataset)`` on the simulated dataset.

Peak resident memory of each worker process is sampled every 0.05 s during each step (as in
``bench_scale.py``). At 10^9 rows the data are ~24 GB as float64/int64 columns, more than this
machine's memory, and ~30 GB on disk; the table shows fit time per row (flat is the target) and
the peak memory per worker (target: under 2 GB).

Run::

    python benchmarks/bench_ingest_scale.py --sizes 1e7 1e8 1e9 --json /tmp/ingest_scale.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from distributed import Client, LocalCluster

import daskmm
from daskmm.data.ingest import ingest
from daskmm.data.manifest import read_manifest
from daskmm.data.simulate import simulate
from daskmm.distributed.client import NO_DASHBOARD

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import PeakMemory, machine  # noqa: E402

HERE = Path(__file__).resolve().parent
FORMULA = "y ~ x + (x | g)"


def step(cl: Client, fn, *args, **kwargs) -> tuple[float, float, object]:
    """Wall time and peak RSS (max over workers, bytes) of ``fn(*args, **kwargs)``."""
    with PeakMemory(cl) as mem:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        wall = time.perf_counter() - t0
    if mem.lost:
        print(f"  WARNING: workers lost: {mem.lost}", flush=True)
    return wall, max(v or 0 for v in mem.workers.values()), out


def run(args: argparse.Namespace) -> dict:
    rows_out = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      memory_limit=args.memory_limit, **NO_DASHBOARD) as cluster, \
            Client(cluster) as client:
        for size in args.sizes:
            n = int(float(size))
            groups = max(2, n // 1000)
            path = args.data_dir / f"sim_{n}_g{groups}_s{args.seed}.dataset"
            have = read_manifest(path)
            rec = {"rows": n, "groups": groups}
            if have is None or have.nrows != n:
                wall, peak, m = step(client, simulate, path, n, groups=groups, crossed=0,
                                     seed=args.seed, client=client, force=True)
                rec.update(simulate_s=wall, simulate_peak=peak, buckets=m.buckets)
            else:
                rec.update(simulate_s=None, simulate_peak=None, buckets=have.buckets)
            print(f"{n:>12} rows: simulate {rec['simulate_s']}", flush=True)
            if args.ingest:
                import dask.dataframe as dd
                out = args.data_dir / f"ingested_{n}.dataset"
                src = dd.read_parquet(read_manifest(path).bucket_paths(path),
                                      columns=["y", "x", "g"])
                wall, peak, m = step(client, ingest, src, "g", out,
                                     buckets=max(1, round(n / args.ingest_rows_per_bucket)),
                                     client=client, force=True)
                rec.update(ingest_s=wall, ingest_peak=peak, ingest_buckets=m.buckets)
                shutil.rmtree(out, ignore_errors=True)
                print(f"{n:>12} rows: ingest {wall:.1f} s", flush=True)
            fits = []
            for _ in range(args.repeats):
                wall, peak, res = step(client, daskmm.lmm, FORMULA, str(path), client=client)
                fits.append((wall, peak))
                print(f"{n:>12} rows: fit {wall:.1f} s, peak {peak / 1e9:.2f} GB, "
                      f"theta {res.theta.round(4).tolist()}, beta {res.beta.round(4).tolist()}",
                      flush=True)
            walls = sorted(w for w, _ in fits)
            rec.update(fit_runs_s=[w for w, _ in fits], fit_s=walls[len(walls) // 2],
                       fit_peak=max(p for _, p in fits), objective=res.objective,
                       theta=res.theta.tolist(), beta=res.beta.tolist())
            rows_out.append(rec)
    return {"benchmark": "bench_ingest_scale", "argv": sys.argv[1:], "machine": machine(),
            "memory_limit": args.memory_limit, "formula": FORMULA, "results": rows_out}


def _s(v) -> str:
    return "reused" if v is None else f"{v:.1f}"


def _gb(v) -> str:
    return "-" if v is None else f"{v / 1e9:.2f}"


def report(doc: dict) -> str:
    head = (f"{'rows':>12} {'levels g':>9} {'simulate s':>10} {'ingest s':>9} "
            f"{'fit s (median)':>14} {'fit ns/row':>10} {'peak GB/worker':>14}")
    lines = [f"2 workers x 1 thread, memory_limit {doc['memory_limit']}; fit {doc['formula']}",
             head, "-" * len(head)]
    for r in doc["results"]:
        peak = max(v for v in (r.get("simulate_peak"), r.get("ingest_peak"), r["fit_peak"])
                   if v is not None)
        lines.append(f"{r['rows']:>12} {r['groups']:>9} {_s(r['simulate_s']):>10} "
                     f"{_s(r.get('ingest_s', None)) if 'ingest_s' in r else '-':>9} "
                     f"{r['fit_s']:>14.2f} {1e9 * r['fit_s'] / r['rows']:>10.1f} "
                     f"{_gb(peak):>14}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["1e7", "1e8", "1e9"])
    p.add_argument("--repeats", type=int, default=3, help="fits per size (median reported)")
    p.add_argument("--memory-limit", default="2GB")
    p.add_argument("--no-ingest", dest="ingest", action="store_false")
    p.add_argument("--ingest-rows-per-bucket", type=float, default=1e7,
                   help="bucket size of the ingest step (default 1e7 rows: 240 MB of y, x, g)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=HERE / "_data")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    doc = run(args)
    print("\n" + report(doc))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
