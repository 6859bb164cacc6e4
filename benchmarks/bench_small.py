"""Small and medium fits, side by side with lme4 and glmmTMB in one run (issue: fast at every
size). Prints every run, the medians and the ratios (daskmm / reference: below 1 is faster).

1. **whole process**: ``daskmm fit DATA --out DIR`` against ``Rscript`` doing the same fit and
   writing its summary (``bench_small.R whole``), on sleepstudy ``Reaction ~ Days + (Days |
   Subject)`` and grouseticks (Poisson, three intercepts). Target: at most 1x.
2. **warm second call** in one process: ``daskmm.fit`` on a frame already in memory against
   ``lmer``/``glmer`` in one R session (``bench_small.R warm``). Target: at most 1x.
3. **crossed binomial, 10^4 rows**, ``y ~ x + (1 | a) + (1 | b)`` with 300 x 25 levels,
   in-process against glmer (default control, nAGQ = 1) and glmmTMB, fit only. Target: at
   least 3x faster.
4. **crossed binomial, 10^6 rows**, 10^4 x 100 levels, on a 2-worker LocalCluster (the frame
   in 2 partitions) against
   glmer and glmmTMB, fit only (``--big`` to run it: glmer takes minutes, so each R tool
   fits once, without a warm-up fit; daskmm a warm-up and 3 timed fits). Target: 10x.
5. **LMM with three crossed intercepts, 10^5 rows**, 3,000 x 1,000 x 30 levels (each level of
   the first meets ~25 of the second), ML, against lmer, fit only. Target: 10x.

Evaluations per fit are printed with each daskmm figure. Run::

    python benchmarks/bench_small.py --repeats 5 --json /tmp/bench_small.json [--big]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tool_env import tool_env

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT / "tests" / "fixtures" / "conformance" / "data"
R_SCRIPT = HERE / "bench_small.R"

SMALL = [
    {"name": "sleepstudy", "data": DATA / "sleepstudy.csv", "family": "gaussian",
     "formula": "Reaction ~ Days + (Days | Subject)", "factors": []},
    {"name": "grouseticks", "data": DATA / "grouseticks.csv", "family": "poisson",
     "formula": "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)",
     "factors": ["INDEX", "BROOD", "YEAR", "LOCATION"]},
]


def med(xs):
    return statistics.median(xs)


def rscript(*args) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(["Rscript", str(R_SCRIPT), *map(str, args)], capture_output=True,
                         text=True, env=tool_env())
    dt = time.perf_counter() - t
    if out.returncode:
        raise RuntimeError(f"Rscript failed: {out.stderr[-2000:]}")
    return dt, out.stdout


def r_runs(stdout: str) -> list[float]:
    return [float(x) for x in re.findall(r"^RUN \d+ (\S+)$", stdout, re.M)]


def r_objective(stdout: str) -> float:
    return float(re.search(r"^OBJECTIVE (\S+)$", stdout, re.M).group(1))


def whole_process(case: dict, repeats: int, tmp: Path) -> dict:
    ours, theirs = [], []
    cmd = [sys.executable, "-m", "daskmm.cli", "fit", str(case["data"]), "--formula",
           case["formula"], "--family", case["family"], "--out", str(tmp / "fit")]
    if case["factors"]:
        cmd += ["--factors", ",".join(case["factors"])]
    for _ in range(repeats):
        shutil.rmtree(tmp / "fit", ignore_errors=True)
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        ours.append(time.perf_counter() - t)
        if out.returncode:
            raise RuntimeError(out.stderr)
        dt, _ = rscript("whole", case["data"], case["formula"], case["family"], "lme4", "TRUE",
                        1, tmp / "summary_r.txt", ",".join(case["factors"]))
        theirs.append(dt)
    doc = json.loads((tmp / "fit" / "summary.json").read_text())
    return {"daskmm_s": ours, "rscript_s": theirs, "ratio": med(ours) / med(theirs),
            "mode": doc["mode"], "evaluations": doc["optinfo"]["feval"]}


def warm(case: dict, repeats: int) -> dict:
    import daskmm
    df = pd.read_csv(case["data"])
    kw = dict(factors=case["factors"])
    res = daskmm.fit(case["formula"], df, case["family"], **kw)  # warm-up
    ours = []
    for _ in range(repeats):
        t = time.perf_counter()
        res = daskmm.fit(case["formula"], df, case["family"], **kw)
        ours.append(time.perf_counter() - t)
    _, out = rscript("warm", case["data"], case["formula"], case["family"], "lme4", "TRUE",
                     repeats, "-", ",".join(case["factors"]))
    theirs = r_runs(out)
    return {"daskmm_s": ours, "r_s": theirs, "ratio": med(ours) / med(theirs),
            "objective": res.objective, "r_objective": r_objective(out),
            "evaluations": res.optinfo["feval"], "mode": res.mode}


def crossed_binomial(rows: int, na: int, nb: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, na, rows)
    b = rng.integers(0, nb, rows)
    x = rng.normal(size=rows)
    eta = -0.3 + 0.6 * x + rng.normal(0, 0.7, na)[a] + rng.normal(0, 0.4, nb)[b]
    y = (rng.random(rows) < 1 / (1 + np.exp(-eta))).astype(np.int64)
    return pd.DataFrame({"y": y, "x": x, "a": [f"a{i}" for i in a],
                         "b": [f"b{i}" for i in b]})


def courses(rows: int, seed: int) -> pd.DataFrame:
    """Course evaluations: 3,000 students (s) each meeting ~25 of 1,000 instructors (i), 30
    departments (d)."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 3000, rows)
    pool = rng.integers(0, 1000, (3000, 25))  # each student's instructors
    i = pool[s, rng.integers(0, 25, rows)]
    d = i % 30
    x = rng.normal(size=rows)
    y = (3 + 0.2 * x + rng.normal(0, 0.5, 3000)[s] + rng.normal(0, 0.3, 1000)[i]
         + rng.normal(0, 0.2, 30)[d] + rng.normal(0, 1.0, rows))
    return pd.DataFrame({"y": y, "x": x, "s": [f"s{v}" for v in s], "i": [f"i{v}" for v in i],
                         "d": [f"d{v}" for v in d]})


def fit_only(name: str, df: pd.DataFrame, formula: str, family: str, repeats: int,
             tmp: Path, tools: list[str], reml: bool = False, client=None,
             r_repeats: int | None = None, r_mode: str = "warm") -> dict:
    import daskmm
    path = tmp / f"{name}.csv"
    df.to_csv(path, index=False)
    # on a cluster, one partition a worker (the frame's default is one: one worker would do it all)
    kw = {"client": client, "npartitions": 2} if client is not None else {}
    if family == "gaussian":
        kw["reml"] = reml
    res = daskmm.fit(formula, df, family, **kw)  # warm-up (compiles on a fresh machine)
    ours = []
    for _ in range(repeats):
        t = time.perf_counter()
        res = daskmm.fit(formula, df, family, **kw)
        ours.append(time.perf_counter() - t)
    out = {"daskmm_s": ours, "objective": res.objective, "evaluations": res.optinfo["feval"],
           "mode": res.mode}
    for tool in tools:
        _, so = rscript(r_mode, path, formula, family, tool, "TRUE" if reml else "FALSE",
                        r_repeats or repeats, "-")
        out[f"{tool}_s"] = r_runs(so)
        out[f"{tool}_objective"] = r_objective(so)
        out[f"ratio_{tool}"] = med(ours) / med(out[f"{tool}_s"])
    return out


def show(name: str, d: dict) -> None:
    parts = [f"{k} {', '.join(f'{x:.3f}' for x in v)} (median {med(v):.3f})"
             for k, v in d.items() if k.endswith("_s")]
    ratios = ", ".join(f"{k} {v:.3f}" for k, v in d.items() if k.startswith("ratio"))
    extra = ", ".join(f"{k} {d[k]}" for k in ("mode", "evaluations") if k in d)
    print(f"{name}: " + "; ".join(parts) + f"; {ratios}; {extra}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--big", action="store_true", help="also the 10^6-row crossed GLMM")
    ap.add_argument("--only", default="", help="comma-separated parts: whole,warm,crossed,"
                    "courses,big")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    only = set(filter(None, args.only.split(","))) or {"whole", "warm", "crossed", "courses"}
    if args.big:
        only.add("big")
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}", flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for case in SMALL:
            if "whole" in only:
                results[f"whole/{case['name']}"] = r = whole_process(case, args.repeats, tmp)
                show(f"whole process, {case['name']}", r)
            if "warm" in only:
                results[f"warm/{case['name']}"] = r = warm(case, args.repeats)
                show(f"warm second call, {case['name']}", r)
        if "crossed" in only:
            df = crossed_binomial(10_000, 300, 25, 1)
            results["crossed_1e4"] = r = fit_only("crossed", df, "y ~ x + (1 | a) + (1 | b)",
                                                 "binomial", args.repeats, tmp,
                                                 ["lme4", "glmmTMB"])
            show("crossed binomial 1e4 rows, 300 x 25", r)
        if "courses" in only:
            df = courses(100_000, 2)
            results["courses_1e5"] = r = fit_only(
                "courses", df, "y ~ x + (1 | s) + (1 | i) + (1 | d)", "gaussian",
                max(1, args.repeats // 2), tmp, ["lme4"], r_repeats=max(1, args.repeats // 2))
            show("LMM three crossed intercepts 1e5 rows, 3000 x 1000 x 30, ML", r)
        if "big" in only:
            from distributed import Client, LocalCluster

            from daskmm.distributed.client import NO_DASHBOARD
            df = crossed_binomial(1_000_000, 10_000, 100, 3)
            with LocalCluster(n_workers=2, threads_per_worker=1, **NO_DASHBOARD) as cl, \
                    Client(cl) as c:
                results["crossed_1e6"] = r = fit_only(
                    "big", df, "y ~ x + (1 | a) + (1 | b)", "binomial", 3, tmp,
                    ["lme4", "glmmTMB"], client=c, r_repeats=1, r_mode="cold")
            show("crossed binomial 1e6 rows, 10^4 x 100, 2 workers", r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
