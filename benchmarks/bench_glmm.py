"""GLMM benchmark: ``daskmm.glmm`` against ``lme4::glmer`` (nAGQ = 1) and ``glmmTMB``.

Simulates ``--rows`` rows (default 10^6) with ``--levels`` levels of ``g`` (default 10^4)::

    x ~ N(0, 1);  u[g] ~ N(0, 0.5^2)
    ybin   ~ Bernoulli(logistic(-0.5 + 0.8 x + u[g]))        "ybin ~ x + (1 | g)", binomial
    ycount ~ Poisson(exp(0.2 + 0.3 x + u[g]))                "ycount ~ x + (1 | g)", poisson

and times, fit only with the data already loaded, in one run:

* daskmm: ``daskmm.glmm(formula, ddf, family)`` (Laplace) on a dask DataFrame persisted on a
  ``LocalCluster(n_workers=2, threads_per_worker=1)`` in 8 partitions holding whole levels;
* glmer and glmmTMB in one R session each (``bench_glmer.R``; reading not timed).

Prints every run, the medians, the ratios and the -2 log-likelihoods of each tool. Run::

    python benchmarks/bench_glmm.py --json /tmp/glmm_bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster, wait
from tool_env import tool_env

from daskmm.distributed.client import NO_DASHBOARD
from daskmm.models.glmm.fit import glmm

HERE = Path(__file__).resolve().parent
CASES = [("ybin ~ x + (1 | g)", "binomial"), ("ycount ~ x + (1 | g)", "poisson")]


def simulate(rows: int, levels: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, levels, rows)
    x = rng.normal(size=rows)
    u = rng.normal(0, 0.5, levels)[g]
    return pd.DataFrame({
        "ybin": (rng.random(rows) < 1 / (1 + np.exp(-(-0.5 + 0.8 * x + u)))).astype(np.int64),
        "ycount": rng.poisson(np.exp(0.2 + 0.3 * x + u)), "x": x, "g": g})


def time_r(path: Path, formula: str, family: str, repeats: int, tool: str) -> dict:
    out = subprocess.run(["Rscript", str(HERE / "bench_glmer.R"), str(path), formula, family,
                          str(repeats), tool], capture_output=True, text=True, check=False,
                         env=tool_env())
    if out.returncode:
        return {"tool": tool, "error": out.stderr.strip().splitlines()[-1:]}
    rec = {"tool": tool, "runs_s": []}
    for line in out.stdout.splitlines():
        k, *v = line.split()
        if k == "RUN":
            rec["runs_s"].append(float(v[1]))
        elif k == "OBJECTIVE":
            rec["objective"] = float(v[0])
        elif k in ("BETA", "SD"):
            rec[k.lower()] = [float(t) for t in v]
    print(f"  {tool}: runs {rec['runs_s']}, -2logLik {rec.get('objective')}", flush=True)
    return rec


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10 ** 6)
    p.add_argument("--levels", type=int, default=10 ** 4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--r-repeats", type=int, default=1, help="runs of each R tool")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    df = simulate(args.rows, args.levels, args.seed)
    data_dir = HERE / "_data"
    data_dir.mkdir(exist_ok=True)
    csv = data_dir / f"glmm_{args.rows}_{args.levels}_s{args.seed}.csv"
    if not csv.exists():
        df.to_csv(csv, index=False)
    results = []
    with LocalCluster(n_workers=2, threads_per_worker=1, **NO_DASHBOARD) as cluster, \
            Client(cluster) as client:
        ddf = dd.from_pandas(df.set_index("g"), npartitions=8, sort=True).reset_index()
        ddf = client.persist(ddf)
        wait(ddf)
        for formula, family in CASES:
            print(f"{formula} ({family})", flush=True)
            runs, fit = [], None
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fit = glmm(formula, ddf, family, client=client)
                runs.append(time.perf_counter() - t0)
            print(f"  daskmm: runs {[round(r, 2) for r in runs]}, -2logLik {fit.objective}, "
                  f"evaluations {fit.optinfo['feval']}", flush=True)
            case = {"formula": formula, "family": family,
                    "daskmm": {"runs_s": runs, "objective": fit.objective,
                               "beta": fit.beta.tolist(), "sd": fit.theta.tolist()}}
            for tool in ("glmer", "glmmTMB"):
                case[tool] = time_r(csv, formula, family, args.r_repeats, tool)
            results.append(case)
    print(f"\n{args.rows} rows, {args.levels} levels of g; daskmm on 2 workers x 1 thread")
    print(f"{'case':<26} {'tool':<8} {'median s':>9} {'ratio':>7} {'-2logLik - daskmm':>18}")
    for case in results:
        d = statistics.median(case["daskmm"]["runs_s"])
        for tool in ("daskmm", "glmer", "glmmTMB"):
            r = case[tool]
            if "runs_s" not in r:
                print(f"{case['family']:<26} {tool:<8} failed: {r.get('error')}")
                continue
            m = statistics.median(r["runs_s"])
            diff = r.get("objective", float("nan")) - case["daskmm"]["objective"]
            print(f"{case['formula']:<26} {tool:<8} {m:>9.2f} {m / d:>6.1f}x {diff:>18.3g}")
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv[1:], "results": results}, indent=2))


if __name__ == "__main__":
    main()
