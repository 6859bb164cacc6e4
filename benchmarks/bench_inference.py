"""Inference benchmark: profile intervals and the parametric bootstrap, daskmm against lme4.

Simulates ``--rows`` rows (default 10^5) with ``--levels`` levels of ``g`` (default 10^3)::

    x ~ N(0, 1);  (u0, u1)[g] ~ N(0, [[0.5^2, 0.3 * 0.5 * 0.4], [., 0.4^2]]);  e ~ N(0, 1)
    y = 1 + 0.5 x + u0[g] + u1[g] x + e                        "y ~ x + (x | g)"

and, side by side in one run (fit not timed; data loaded):

* ``profile``: ``fit.confint("profile")`` against ``confint(fit, method = "profile")``;
* ``boot``: ``fit.confint("boot", nboot=500)`` against ``confint(fit, method = "boot",
  nsim = 500)`` (lme4's ``bootMer``, percentile intervals);
* ``pbtest``: ``daskmm.pb_modcomp(fit, ["x"], nsim=--pb-nsim)`` (default 200) against
  ``pbkrtest::PBmodcomp(fit, update(fit, . ~ . - x), nsim)``, both including the small
  model's fit and the ML refits.

daskmm runs in process (the data are small enough that a fit starts no cluster), one thread
of BLAS. Then ``--big-rows`` (default 10^7, 10^4 levels) written as 16 Parquet files, on a
2-worker ``LocalCluster``: a fit from the files (3 runs, median), and a ``--big-nboot``
(default 1,000) replicate bootstrap of it on the same cluster, reported as the ratio of the
two times. Run::

    python benchmarks/bench_inference.py --json /tmp/inference.json
"""

from __future__ import annotations

import argparse
import json
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
FORMULA = "y ~ x + (x | g)"


def simulate(rows: int, levels: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.sort(rng.integers(0, levels, rows))
    x = rng.normal(size=rows)
    cov = np.array([[0.25, 0.3 * 0.5 * 0.4], [0.3 * 0.5 * 0.4, 0.16]])
    u = rng.multivariate_normal([0, 0], cov, size=levels)
    y = 1 + 0.5 * x + u[g, 0] + u[g, 1] * x + rng.normal(size=rows)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def run_r(path: Path, what: str, nsim: int, seed: int) -> dict:
    out = subprocess.run(["Rscript", str(HERE / "bench_inference.R"), str(path), FORMULA, what,
                          str(nsim), str(seed)], capture_output=True, text=True, check=False,
                         env=tool_env())
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-3:]}
    rec: dict = {"ci": {}}
    for line in out.stdout.splitlines():
        k, *v = line.split()
        if k in ("FIT", "PROFILE", "BOOT", "PBTEST"):
            rec[k.lower() + "_s"] = float(v[0])
        elif k == "LRT":
            rec["lrt"], rec["p_pb"] = float(v[0]), float(v[1])
        elif k == "CI":
            rec["ci"][v[0]] = [float(v[1]), float(v[2])]
    return rec


def ours(df: pd.DataFrame, what: str, nboot: int, seed: int) -> dict:
    from daskmm import lmm
    fit = lmm(FORMULA, df)
    t0 = time.perf_counter()
    if what == "pbtest":
        from daskmm import pb_modcomp
        pb = pb_modcomp(fit, ["x"], nsim=nboot, seed=seed)
        return {what + "_s": time.perf_counter() - t0, "mode": fit.mode, "ci": {},
                "lrt": pb.statistic, "p_pb": pb.p_value}
    if what == "profile":
        ci = fit.confint("profile")
    else:
        ci = fit.confint("boot", nboot=nboot, seed=seed)
    dt = time.perf_counter() - t0
    return {what + "_s": dt, "mode": fit.mode,
            "ci": {r.parameter: [r.lower, r.upper] for r in ci.itertuples()}}


def big(rows: int, levels: int, nboot: int, seed: int, folder: Path) -> dict:
    """One fit of ``rows`` rows from Parquet (16 files, whole levels each) on a 2-worker
    cluster, and a ``nboot``-replicate bootstrap of it on the same cluster."""
    from distributed import Client, LocalCluster

    from daskmm import lmm
    from daskmm.distributed.client import NO_DASHBOARD
    df = simulate(rows, levels, seed)
    data = folder / "big"
    data.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(df)), 16)):
        df.iloc[part].to_parquet(data / f"part-{i:02d}.parquet", index=False)
    del df
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="6GiB",
                      **NO_DASHBOARD) as cluster, Client(cluster) as client:
        fits = []
        for _ in range(3):
            t0 = time.perf_counter()
            fit = lmm(FORMULA, str(data), client=client)
            fits.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fit.confint("boot", nboot=nboot, seed=seed, client=client)
        boot_s = time.perf_counter() - t0
    med = statistics.median(fits)
    return {"rows": rows, "levels": levels, "nboot": nboot, "fit_runs_s": fits,
            "fit_median_s": med, "boot_s": boot_s, "ratio_boot_to_fit": boot_s / med,
            "mode": fit.mode, "n_failed": fit.boot.n_failed}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10 ** 5)
    p.add_argument("--levels", type=int, default=10 ** 3)
    p.add_argument("--nboot", type=int, default=500)
    p.add_argument("--pb-nsim", type=int, default=200, help="simulations of the pbtest")
    p.add_argument("--repeats", type=int, default=3, help="daskmm runs of each measurement")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--big-rows", type=int, default=10 ** 7)
    p.add_argument("--big-levels", type=int, default=10 ** 4)
    p.add_argument("--big-nboot", type=int, default=1000)
    p.add_argument("--skip", default="", help="comma list of profile, boot, pbtest, big")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    report: dict = {"rows": args.rows, "levels": args.levels, "formula": FORMULA,
                    "argv": sys.argv}
    df = simulate(args.rows, args.levels, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.csv"
        df.to_csv(path, index=False)
        for what in ("profile", "boot", "pbtest"):
            if what in skip:
                continue
            n = args.pb_nsim if what == "pbtest" else args.nboot
            runs = [ours(df, what, n, args.seed) for _ in range(args.repeats)]
            times = [r[what + "_s"] for r in runs]
            r = run_r(path, what, n, args.seed)
            rec = {"daskmm_runs_s": times, "daskmm_median_s": statistics.median(times),
                   "daskmm_mode": runs[0]["mode"], "lme4": r, "daskmm_ci": runs[0]["ci"]}
            if what + "_s" in r:
                rec["ratio"] = r[what + "_s"] / rec["daskmm_median_s"]
                if what == "profile":
                    rec["max_rel_diff"] = max(
                        abs(a - b) / max(abs(b), 1e-12)
                        for k, v in runs[0]["ci"].items() if k in r["ci"]
                        for a, b in zip(v, r["ci"][k]) if np.isfinite(b))
            if what == "pbtest":
                rec["daskmm_lrt"], rec["daskmm_p_pb"] = runs[0]["lrt"], runs[0]["p_pb"]
            print(f"{what}: daskmm {times} (median {rec['daskmm_median_s']:.2f} s), lme4 "
                  f"{r.get(what + '_s')} s, ratio {rec.get('ratio', float('nan')):.1f}x",
                  flush=True)
            report[what] = rec
    if "big" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            report["big"] = big(args.big_rows, args.big_levels, args.big_nboot, args.seed,
                                Path(tmp))
        b = report["big"]
        print(f"big: {b['rows']} rows from Parquet, fits {b['fit_runs_s']} s (median "
              f"{b['fit_median_s']:.2f} s), {b['nboot']} replicates {b['boot_s']:.1f} s = "
              f"{b['ratio_boot_to_fit']:.1f}x one fit", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
