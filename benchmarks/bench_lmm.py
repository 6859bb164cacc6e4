"""Fit-time benchmark of ``daskmm.lmm`` against ``lme4::lmer`` and statsmodels ``MixedLM``.

Simulates (fixed seed)::

    y = 1 + 0.5 x + b0[g] + b1[g] x + c[h] + e
    x ~ N(0, 1);  (b0, b1) ~ N(0, [[1, 0.15], [0.15, 0.25]])  (sd 1 and 0.5, correlation 0.3);
    c ~ N(0, 0.7^2);  e ~ N(0, 1)

with ``g`` and ``h`` assigned to rows uniformly at random, and times two cases:

``slopes``
    ``y ~ x + (x | g)`` (10^6 rows, 10^4 levels of ``g``; the ``h`` effect is part of the
    noise): daskmm vs ``lmer`` vs ``MixedLM.from_formula("y ~ x", groups="g", re_formula="~x")``.
``crossed``
    ``y ~ x + (x | g) + (1 | h)`` (10^6 rows, 10^4 levels of ``g``, 200 of ``h``): daskmm vs
    ``lmer``.

What is measured: the fit only, with the data already in memory for every tool.

- daskmm: the wall time of the ``daskmm.lmm(formula, ddf, client=client)`` call, where ``ddf`` is
  the table in 8 partitions persisted on a
  ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` before timing. By default
  the partitions hold whole levels of ``g`` (``from_pandas(df.set_index("g"), sort=True)``), the
  layout daskmm's datasets are stored in (DESIGN.md: data partitioned by the grouping factor);
  ``--by-row`` splits the rows in file order instead, so every partition holds every level and
  the statistics are merged by level on the workers.
- lme4: ``system.time(lmer(formula, data = d, REML = TRUE))`` elapsed time, in one R session
  (``benchmarks/bench_lmer.R``) that first reads the same data from a file written under
  ``benchmarks/_data/`` (Parquet via ``arrow`` if R has it, else CSV via ``data.table::fread``
  or ``read.csv``; reading is not timed). ``g`` is an integer column for both daskmm and lmer,
  and both turn it into a factor inside the timed call.
- statsmodels: ``model.fit(reml=True)`` only (building the model from the formula is not
  timed), on the first ``--mixedlm-rows`` rows (default: all). When the first run takes more
  than 60 s it is not repeated, and the output says so.

Every run's time is reported, with the median and ``ratio = median(tool) / median(daskmm)``
(above 1: daskmm is faster). The objective of each tool (REML criterion; statsmodels:
``-2 * llf``) is printed with its relative difference from daskmm's, which should be ~1e-6 or
less for lmer. The table is printed at the end and written as JSON to ``--json``.

Run (full size; roughly 20-30 minutes on 2 cores, most of it lmer on ``crossed`` and the
single statsmodels fit)::

    python benchmarks/bench_lmm.py --json benchmarks/results_lmm.json

Smoke test::

    nice -n 10 python benchmarks/bench_lmm.py --rows 200000 --repeats 1 --json /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dask
import dask.dataframe as dd
import distributed
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster, wait
from tool_env import tool_env

import daskmm
from daskmm.distributed.client import NO_DASHBOARD

HERE = Path(__file__).resolve().parent
R_SCRIPT = HERE / "bench_lmer.R"
SLOW_S = 60.0
"""A statsmodels fit slower than this is run once."""

FORMULAS = {
    "slopes": "y ~ x + (x | g)",
    "crossed": "y ~ x + (x | g) + (1 | h)",
}
TOOLS = {"slopes": ["daskmm", "lme4", "statsmodels"], "crossed": ["daskmm", "lme4"]}


# ------------------------------------------------------------------ data
def simulate(rows: int, g_levels: int, h_levels: int, seed: int) -> pd.DataFrame:
    """Simulate the benchmark data (columns ``y, x, g, h``; ``g`` and ``h`` int64)."""
    rng = np.random.default_rng(seed)
    sd0, sd1, rho = 1.0, 0.5, 0.3
    cov = np.array([[sd0 ** 2, rho * sd0 * sd1], [rho * sd0 * sd1, sd1 ** 2]])
    b = rng.multivariate_normal([0.0, 0.0], cov, size=g_levels)
    c = rng.normal(0.0, 0.7, size=h_levels)
    g = rng.integers(0, g_levels, size=rows)
    h = rng.integers(0, h_levels, size=rows)
    x = rng.normal(size=rows)
    e = rng.normal(size=rows)
    y = 1.0 + 0.5 * x + b[g, 0] + b[g, 1] * x + c[h] + e
    return pd.DataFrame({"y": y, "x": x, "g": g.astype(np.int64), "h": h.astype(np.int64)})


def r_has(package: str) -> bool:
    """Whether R can load ``package``."""
    out = subprocess.run(["Rscript", "-e", f"cat(requireNamespace('{package}', quietly=TRUE))"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip().endswith("TRUE")


def write_for_r(df: pd.DataFrame, data_dir: Path, stem: str) -> Path:
    """Write ``df`` where the R script can read it: Parquet if R has ``arrow``, else CSV.

    Reuses an existing file of the same name (the name encodes rows, levels and seed). The CSV
    is written with round-trip float precision, so R reads the same numbers.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    parquet = r_has("arrow")
    path = data_dir / (stem + (".parquet" if parquet else ".csv"))
    if path.exists():
        return path
    tmp = path.with_name(path.name + ".tmp")
    if parquet:
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


# ------------------------------------------------------------------ tools
def time_daskmm(client: Client, df: pd.DataFrame, formula: str, repeats: int,
                npartitions: int, by_row: bool = False) -> dict:
    """Time ``daskmm.lmm`` on a persisted dask DataFrame."""
    if by_row:
        ddf = dd.from_pandas(df, npartitions=npartitions)
    else:
        ddf = dd.from_pandas(df.set_index("g"), npartitions=npartitions, sort=True).reset_index()
    ddf = client.persist(ddf)
    wait(ddf)
    runs, internal = [], []
    res = None
    for i in range(repeats):
        t0 = time.perf_counter()
        res = daskmm.lmm(formula, ddf, reml=True, client=client)
        runs.append(time.perf_counter() - t0)
        internal.append(res.timing)
        print(f"  daskmm run {i + 1}: {runs[-1]:.2f} s  (objective {res.objective:.10g}, "
              f"mode {res.optinfo.get('mode')}, evaluations {res.optinfo.get('feval')})",
              flush=True)
    client.cancel(ddf)
    del ddf
    return {"tool": "daskmm", "rows": len(df), "runs_s": runs, "objective": res.objective,
            "theta": list(map(float, res.theta)), "beta": list(map(float, res.beta)),
            "timing": internal, "notes": [] if res.converged else ["not converged"],
            "optinfo": {k: v for k, v in res.optinfo.items()
                        if isinstance(v, (str, int, float, bool))}}


def time_lmer(path: Path, formula: str, repeats: int) -> dict:
    """Time ``lme4::lmer`` in one R session (see ``bench_lmer.R``)."""
    cmd = ["Rscript", str(R_SCRIPT), str(path), formula, str(repeats), "TRUE"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=tool_env())
    out: dict = {"tool": "lme4", "runs_s": [], "notes": []}
    for line in proc.stdout:
        key, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if key == "RUN":
            i, secs = rest.split()
            out["runs_s"].append(float(secs))
            print(f"  lmer run {i}: {float(secs):.2f} s", flush=True)
        elif key == "OBJECTIVE":
            out["objective"] = float(rest)
        elif key in ("THETA", "BETA"):
            out[key.lower()] = [float(v) for v in rest.split()]
        elif key == "READER":
            out["reader"] = rest
        elif key == "LME4":
            out["version"] = rest
        elif key == "MESSAGE":
            out["notes"].append(f"lmer: {rest}")
    stderr = proc.stderr.read()
    if proc.wait() != 0 or "objective" not in out:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr}")
    return out


def time_mixedlm(df: pd.DataFrame, repeats: int) -> dict:
    """Time statsmodels ``MixedLM(...).fit(reml=True)``; one run only if it is slow."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    model = MixedLM.from_formula("y ~ x", groups="g", re_formula="~x", data=df)
    runs, notes = [], []
    fit = None
    for i in range(repeats):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            fit = model.fit(reml=True)
            runs.append(time.perf_counter() - t0)
        for w in caught:
            msg = f"statsmodels: {w.category.__name__}: {str(w.message).splitlines()[0]}"
            if msg not in notes:
                notes.append(msg)
        print(f"  statsmodels run {i + 1}: {runs[-1]:.2f} s  (-2 llf {-2 * fit.llf:.10g})",
              flush=True)
        if i == 0 and runs[0] > SLOW_S and repeats > 1:
            notes.append(f"run once only: the first fit took {runs[0]:.0f} s (> {SLOW_S:.0f} s)")
            print(f"  statsmodels: first fit took > {SLOW_S:.0f} s, not repeating", flush=True)
            break
    if not fit.converged:
        notes.append("statsmodels: not converged")
    return {"tool": "statsmodels", "rows": len(df), "runs_s": runs,
            "objective": float(-2 * fit.llf), "beta": list(map(float, fit.fe_params)),
            "notes": notes}


# ------------------------------------------------------------------ report
def summarise(results: list[dict], rows: int) -> None:
    """Add median, ratio to daskmm and relative objective difference to each result."""
    base = next(r for r in results if r["tool"] == "daskmm")
    base_median = statistics.median(base["runs_s"])
    for r in results:
        r["median_s"] = statistics.median(r["runs_s"])
        r["ratio"] = r["median_s"] / base_median
        r.setdefault("rows", rows)
        comparable = r["rows"] == base["rows"]
        r["objective_rel_diff"] = (abs(r["objective"] - base["objective"]) / abs(base["objective"])
                                   if comparable else None)
        if not comparable:
            r["notes"].append(f"fitted on {r['rows']} rows, not {base['rows']}: objective and "
                              "ratio are not comparable")
        if "theta" in r and "theta" in base and len(r["theta"]) == len(base["theta"]):
            r["theta_max_abs_diff"] = float(np.max(np.abs(np.subtract(r["theta"],
                                                                      base["theta"]))))


def table(cases: list[dict]) -> str:
    """The summary table as text."""
    head = (f"{'case':<8} {'tool':<12} {'rows':>9} {'runs (s)':<26} {'median s':>9} "
            f"{'ratio':>7} {'objective':>18} {'rel diff':>9} {'max|dtheta|':>11}")
    lines = [head, "-" * len(head)]
    notes = []
    for case in cases:
        for r in case["results"]:
            runs = " ".join(f"{t:.2f}" for t in r["runs_s"])
            rel = r["objective_rel_diff"]
            rel_s = "-" if r["tool"] == "daskmm" else ("n/a" if rel is None else f"{rel:.1e}")
            dtheta = r.get("theta_max_abs_diff")
            dtheta_s = "-" if r["tool"] == "daskmm" or dtheta is None else f"{dtheta:.1e}"
            lines.append(f"{case['case']:<8} {r['tool']:<12} {r['rows']:>9} {runs:<26} "
                         f"{r['median_s']:>9.2f} {r['ratio']:>7.2f} {r['objective']:>18.10f} "
                         f"{rel_s:>9} {dtheta_s:>11}")
            notes += [f"{case['case']}/{r['tool']}: {n}" for n in r["notes"]]
    lines.append("ratio = median(tool) / median(daskmm); rel diff = |objective - daskmm's| / "
                 "|daskmm's| (statsmodels: -2 llf); max|dtheta| = largest difference from "
                 "daskmm's theta")
    return "\n".join(lines + [f"note: {n}" for n in notes])


def machine() -> dict:
    """Where the benchmark ran."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return {"platform": platform.platform(), "python": sys.version.split()[0],
            "cpus": os.cpu_count(), "memory_gib": round(mem, 1),
            "daskmm": daskmm.__version__, "dask": dask.__version__,
            "distributed": distributed.__version__, "numpy": np.__version__,
            "pandas": pd.__version__}


# ------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", nargs="+", choices=list(FORMULAS), default=list(FORMULAS),
                   help="cases to run (default: all)")
    p.add_argument("--rows", type=int, default=10 ** 6, help="rows (default 10^6)")
    p.add_argument("--g-levels", type=int, default=10 ** 4, help="levels of g (default 10^4)")
    p.add_argument("--h-levels", type=int, default=200, help="levels of h (default 200)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per tool (default 3)")
    p.add_argument("--mixedlm-rows", type=int, default=None,
                   help="rows for statsmodels MixedLM (default: all of --rows)")
    p.add_argument("--skip", nargs="*", default=[], choices=["lme4", "statsmodels"],
                   help="tools to leave out")
    p.add_argument("--npartitions", type=int, default=8, help="dask partitions (default 8)")
    p.add_argument("--by-row", action="store_true",
                   help="split rows in order instead of by level of g (see the docstring)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default 2)")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--data-dir", type=Path, default=HERE / "_data")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"simulating {args.rows} rows, {args.g_levels} levels of g, {args.h_levels} of h "
          f"(seed {args.seed})", flush=True)
    df = simulate(args.rows, args.g_levels, args.h_levels, args.seed)
    need_r = "lme4" not in args.skip
    r_path = None
    if need_r:
        stem = f"lmm_{args.rows}_{args.g_levels}_{args.h_levels}_s{args.seed}"
        r_path = write_for_r(df, args.data_dir, stem)
        print(f"data for R: {r_path}", flush=True)
    cases = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      **NO_DASHBOARD) as cluster, Client(cluster) as client:
        for case in args.case:
            formula = FORMULAS[case]
            print(f"\n== {case}: {formula}", flush=True)
            results = [time_daskmm(client, df, formula, args.repeats, args.npartitions,
                                   args.by_row)]
            for tool in TOOLS[case][1:]:
                if tool in args.skip:
                    continue
                if tool == "lme4":
                    results.append(time_lmer(r_path, formula, args.repeats))
                else:
                    m_rows = args.mixedlm_rows or args.rows
                    results.append(time_mixedlm(df.iloc[:m_rows], args.repeats))
            summarise(results, args.rows)
            for r in results[1:]:
                rel = r["objective_rel_diff"]
                if rel is not None:
                    print(f"  objective {r['tool']} {r['objective']:.10f} vs daskmm "
                          f"{results[0]['objective']:.10f}: relative difference {rel:.2e}")
            cases.append({"case": case, "formula": formula, "rows": args.rows,
                          "g_levels": args.g_levels,
                          "h_levels": args.h_levels if case == "crossed" else None,
                          "results": results})
    print("\n" + table(cases))
    if args.json:
        doc = {"benchmark": "bench_lmm", "argv": sys.argv[1:], "machine": machine(),
               "seed": args.seed, "npartitions": args.npartitions, "workers": args.workers,
               "cases": cases}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
