"""Crossed random intercepts at scale, side by side with gpboost's iterative method (issue 31).

``y ~ x + (1 | g) + (1 | h)`` on simulated data (every row's levels drawn uniformly), fitted by
daskmm's matrix-free path (:func:`daskmm.models.lmm.iterative.fit_crossed`: conjugate
gradients and stochastic Lanczos quadrature, REML) and by gpboost's
``GPModel(matrix_inversion_method = "iterative")`` (ML, its defaults), each in its own process
run after run, on all cores. Prints every run, the medians, the ratio (daskmm / gpboost: below
1 is faster), the evaluations, and both sets of estimates (variances, fixed effects).

    python benchmarks/bench_crossed.py --rows 1000000 --levels 10000 10000 --repeats 3

The matrix-free path is not yet chosen by ``daskmm.lmm``; this times the fit from the
statistics (``Z'Z``, ``Z'X``, ...) built here in the same process (their time is printed).
gpboost is a PyPI package (``pip install gpboost``, Apache-2.0); without it, daskmm alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from tool_env import tool_env

RUN = r"""
import json, sys, time
import numpy as np
rows, ng, nh, tool = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
g, h = rng.integers(0, ng, rows), rng.integers(0, nh, rows)
x = rng.normal(size=rows)
y = 1 + 0.5 * x + rng.normal(0, 0.8, ng)[g] + rng.normal(0, 0.5, nh)[h] + rng.normal(size=rows)
X = np.column_stack([np.ones(rows), x])
if tool == "daskmm":
    from daskmm.kernels.crossed_iter import crossed_stats
    from daskmm.models.lmm.iterative import fit_crossed
    t0 = time.perf_counter()
    st = crossed_stats(y, X, [g, h], [ng, nh])
    t1 = time.perf_counter()
    fit = fit_crossed(st, reml=True)
    t2 = time.perf_counter()
    s2 = fit.sigma ** 2
    out = {"stats_s": t1 - t0, "fit_s": t2 - t1, "evaluations": fit.opt.feval,
           "variances": [s2, *(s2 * fit.theta ** 2).tolist()], "beta": fit.beta.tolist(),
           "criterion_se": fit.se}
else:
    import gpboost as gpb
    t1 = time.perf_counter()
    m = gpb.GPModel(group_data=np.column_stack([g, h]), likelihood="gaussian",
                    matrix_inversion_method="iterative")
    m.fit(y=y, X=X)
    t2 = time.perf_counter()
    out = {"fit_s": t2 - t1, "variances": np.ravel(m.get_cov_pars()).tolist(),
           "beta": np.ravel(m.get_coef()).tolist()}
print(json.dumps(out))
"""


def run(tool: str, rows: int, ng: int, nh: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", RUN, str(rows), str(ng), str(nh), tool],
                          capture_output=True, text=True, env=tool_env())
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--levels", type=int, nargs=2, default=[10_000, 10_000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ng, nh = args.levels
    try:
        import gpboost  # noqa: F401
        tools = ["daskmm", "gpboost"]
    except ImportError:
        tools = ["daskmm"]
    runs = {t: [] for t in tools}
    for _ in range(args.repeats):
        for t in tools:
            runs[t].append(run(t, args.rows, ng, nh))
    print(f"{args.rows} rows, {ng} x {nh} levels, {args.repeats} runs each")
    med = {}
    for t in tools:
        fits = [r["fit_s"] for r in runs[t]]
        med[t] = statistics.median(fits)
        last = runs[t][-1]
        extra = (f"; statistics {statistics.median(r['stats_s'] for r in runs[t]):.2f} s, "
                 f"{last['evaluations']} evaluations, criterion SE {last['criterion_se']:.3f}"
                 if t == "daskmm" else "")
        print(f"{t}: fit {', '.join(f'{v:.1f}' for v in fits)} s (median {med[t]:.1f}){extra}")
        print(f"   variances (residual, g, h) {[round(v, 5) for v in last['variances']]}, "
              f"beta {[round(v, 5) for v in last['beta']]}")
    if len(tools) == 2:
        print(f"ratio daskmm / gpboost: {med['daskmm'] / med['gpboost']:.2f}")


if __name__ == "__main__":
    main()
