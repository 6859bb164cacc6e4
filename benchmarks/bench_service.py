"""Load test of the fitting service on 127.0.0.1: ``--jobs`` (default 200) small LMM fits of
sleepstudy (four models, cycled) submitted by ``--clients`` (default 20) concurrent clients,
each polling its jobs to the end.

Starts a ``dask scheduler`` and two ``dask worker`` processes over TCP, and ``daskmm serve``
(``--max-concurrent``, default 2: one job a core; ``--standby`` warm job processes, default
1) in front of them, with a SQLite store in a temporary folder; clients poll each unfinished
job every ``--poll`` seconds (default 1). Reports the latency of ``POST /v1/jobs`` and
``GET /v1/jobs/{id}`` (p50, p99) under that load, the wall time, the jobs' states, whether
any ran twice or got lost, and the largest difference from a direct fit. Run::

    python benchmarks/bench_service.py --json /tmp/service.json
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLEEP = HERE.parent / "tests" / "fixtures" / "conformance" / "data" / "sleepstudy.csv"
DASK = shutil.which("dask") or str(Path(sys.executable).with_name("dask"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    from daskmm.service.load import compare_with_direct, run_load
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--standby", type=int, default=1, help="warm job processes (daskmm serve)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between a client's polls")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "data").mkdir()
        shutil.copy(SLEEP, d / "data" / "sleepstudy.csv")
        token = secrets.token_hex(16)
        (d / "tokens").write_text(f"load {token}\n")
        try:
            procs.append(subprocess.Popen(
                [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(d / "s.json")], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
            while not (d / "s.json").exists():
                time.sleep(0.2)
            address = json.loads((d / "s.json").read_text())["address"]
            for _ in range(2):
                procs.append(subprocess.Popen(
                    [DASK, "worker", "--scheduler-file", str(d / "s.json"), "--nthreads", "1",
                     "--no-dashboard", "--local-directory", str(d)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            port = _port()
            url = f"http://127.0.0.1:{port}"
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "daskmm.cli", "serve", "--port", str(port), "--results",
                 str(d / "results"), "--data-root", str(d / "data"), "--tokens",
                 str(d / "tokens"), "--scheduler", address, "--max-concurrent",
                 str(args.max_concurrent), "--standby", str(args.standby)],
                stdout=subprocess.DEVNULL,
                stderr=open(d / "server.log", "wb")))
            for _ in range(300):
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            out = run_load(url, token, "sleepstudy.csv", args.jobs, args.clients,
                           poll_s=args.poll)
            out["max_rel_diff_vs_direct"] = compare_with_direct(out.pop("results"), str(SLEEP))
        finally:
            for pr in reversed(procs):
                pr.terminate()
            for pr in procs:
                try:
                    pr.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pr.kill()
    out.update({"max_concurrent": args.max_concurrent, "standby": args.standby,
                "argv": sys.argv})
    print(f"{out['jobs']} jobs from {out['clients']} clients in {out['wall_s']:.1f} s "
          f"({out['jobs'] / out['wall_s']:.2f} jobs/s): states {out['states']}, ran twice "
          f"{out['ran_more_than_once']}, lost {out['jobs'] - out['submitted']}, errors "
          f"{len(out['errors'])}; POST p50 {out['post_ms']['p50']:.1f} ms p99 "
          f"{out['post_ms']['p99']:.1f} ms; GET p50 {out['get_ms']['p50']:.1f} ms p99 "
          f"{out['get_ms']['p99']:.1f} ms; max rel diff vs direct fit "
          f"{out['max_rel_diff_vs_direct']:.2g}", flush=True)
    for e in out["errors"]:
        print("  " + e)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
