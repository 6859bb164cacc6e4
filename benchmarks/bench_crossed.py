"""Crossed random intercepts at scale, side by side with gpboost's iterative method and lme4
(issue 31).

``y ~ x + (1 | g) + (1 | h)`` on simulated data: every row's levels drawn uniformly, or with
Zipf-like frequencies (``--zipf A``: level ``k``'s share ``~ 1 / (k + 1)^A``, as users' and
items' rating counts fall off), effects normal (SD 0.8 and 0.5), ``x`` and the residual
standard normal. Each tool runs in its own process, run after run, on all cores, and draws
the same data from the same seed:

- daskmm: ``daskmm.lmm(formula, frame, mode="in-process")`` from the pandas frame, all of
  it timed but the imports (levels, statistics, the fit; ``crossed="auto"`` chooses the
  matrix-free path above 1,000 crossed levels; ``--crossed`` forces one);
- gpboost: ``GPModel(group_data, matrix_inversion_method="iterative")`` and ``fit`` (ML, its
  defaults), from the arrays;
- ``--family binomial``: ``y`` Bernoulli with ``P(y = 1) = logistic(eta - 0.5)``; daskmm's
  ``glmm`` (Laplace), gpboost's ``likelihood="bernoulli_logit"``, lme4's ``glmer``;
- ``--tools daskmm-client daskmm-workers``: the same fit on a local cluster of two
  worker processes (the frame in 8 partitions), the crossing tables summed to the client at
  each PIRLS step or kept on the workers (:mod:`daskmm.kernels.crossed_blocks`); the peak
  memory of the client and of the largest worker;
- lme4 (``--lme4``, where it finishes): ``lmer`` on the same rows written to a CSV, the
  ``lmer`` call timed in ``Rscript``.

Prints every run, the medians, the ratios (daskmm / peer: below 1 is faster), daskmm's
evaluations, time per evaluation, the criterion's standard error and the process's peak
memory (the in-process fit's one worker), and each tool's estimates (variances, fixed
effects).

    python benchmarks/bench_crossed.py --rows 1000000 --levels 10000 10000 --repeats 3
    python benchmarks/bench_crossed.py --rows 100000 --levels 2000 2000 --repeats 1 --lme4
    python benchmarks/bench_crossed.py --rows 27000000 --levels 270000 54000 --zipf 1 \\
        --repeats 1 --tools daskmm
    python benchmarks/bench_crossed.py --family binomial --rows 1000000 --repeats 1
    python benchmarks/bench_crossed.py --slopes --rows 1000000 --repeats 1
    python benchmarks/bench_crossed.py --slopes --family binomial --rows 1000000 --repeats 1
    python benchmarks/bench_crossed.py --family binomial --rows 1000000 --repeats 1 \\
        --tools daskmm daskmm-client daskmm-workers

gpboost is a PyPI package (``pip install gpboost``, Apache-2.0; the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from tool_env import tool_env

DRAW = r"""
import numpy as np
def draw(rows, ng, nh, zipf, family="gaussian", slopes=False):
    rng = np.random.default_rng(0)
    def codes(L):
        if zipf <= 0:
            return rng.integers(0, L, rows)
        p = 1.0 / np.arange(1, L + 1) ** zipf
        return rng.permutation(L)[np.searchsorted(np.cumsum(p / p.sum()), rng.random(rows))
                                  .clip(0, L - 1)]
    g, h = codes(ng), codes(nh)
    x = rng.normal(size=rows)
    eta = 0.5 * x + rng.normal(0, 0.8, ng)[g] + rng.normal(0, 0.5, nh)[h]
    if family == "binomial":  # P(y = 1) = logistic(eta - 0.5)
        if slopes:  # drawn here: the intercept-only rows stay the same
            eta = eta + rng.normal(0, 0.3, ng)[g] * x
        return g, h, x, (rng.random(rows) < 1 / (1 + np.exp(0.5 - eta))).astype(float)
    y = 1 + eta + rng.normal(size=rows)
    if slopes:  # drawn last: the intercept-only rows stay the same
        y += rng.normal(0, 0.3, ng)[g] * x
    return g, h, x, y
"""

RUN = DRAW + r"""
import json, resource, sys, time
rows, ng, nh, zipf, tool, crossed, csv, family, slopes = (
    int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5],
    sys.argv[6], sys.argv[7], sys.argv[8], sys.argv[9] == "1")
g, h, x, y = draw(rows, ng, nh, zipf, family, slopes)
if tool.startswith("daskmm"):
    import pandas as pd
    import daskmm
    import daskmm.models.glmm.fit  # noqa: F401  (imports outside the timer, as gpboost's)
    import daskmm.models.lmm.fit  # noqa: F401
    frame = pd.DataFrame({"y": y, "x": x, "g": g, "h": h})
    del g, h, x, y
    where = {"mode": "in-process"}
    if tool != "daskmm":  # daskmm-client, daskmm-workers: on a local cluster, the tables so
        import dask.dataframe as dd
        from distributed import Client, LocalCluster
        import daskmm.models.shared.crossed as paths
        paths.TABLES_ON_WORKERS = 0 if tool == "daskmm-workers" else 10 ** 18
        client = Client(LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="10GB",
                                     dashboard_address=None))
        frame = dd.from_pandas(frame, npartitions=8)
        where = {"client": client}
        import threading
        import psutil
        me, grown = psutil.Process(), [0]
        base, stop = me.memory_info().rss, threading.Event()

        def sample():  # the client's own growth during the fit (its data drawn before)
            while not stop.wait(0.05):
                grown[0] = max(grown[0], me.memory_info().rss - base)
        threading.Thread(target=sample, daemon=True).start()
    t1 = time.perf_counter()
    if family == "binomial":
        fit = daskmm.glmm("y ~ x + (1 + x | g) + (1 | h)" if slopes else
                          "y ~ x + (1 | g) + (1 | h)", frame, "binomial", factors=["g", "h"],
                          crossed=crossed, **where)
    else:
        fit = daskmm.lmm("y ~ x + (1 + x | g) + (1 | h)" if slopes else
                         "y ~ x + (1 | g) + (1 | h)", frame, factors=["g", "h"],
                         crossed=crossed, **where)
    t2 = time.perf_counter()
    s2 = fit.sigma ** 2 if family != "binomial" else None
    info = fit.optinfo.crossed or {}
    th = np.asarray(fit.theta)
    if slopes:  # g's intercept and slope variances (sigma^2 T T'), then h's
        th = np.array([th[0], np.hypot(th[1], th[2]), th[3]])
    if tool != "daskmm":
        out_w = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
        stop.set()
        info = dict(info, worker_peak_gb=max(out_w.values()), client_growth_gb=grown[0] / 2 ** 30)
    out = {"fit_s": t2 - t1, "evaluations": fit.optinfo.feval, "path": info.get("path"),
           "tables": info.get("tables"), "worker_peak_gb": info.get("worker_peak_gb"),
           "client_growth_gb": info.get("client_growth_gb"),
           "optimise_s": fit.timing["optimise_s"],
           "statistics_s": fit.timing.get("statistics_s", fit.timing.get("data_s")),
           "variances": ([s2, *(s2 * th ** 2).tolist()] if s2 else (th ** 2).tolist()),
           "beta": list(map(float, fit.beta)), "criterion": fit.objective,
           "criterion_se": info.get("criterion_se"), "levels": list(fit.ngroups.values())}
elif tool == "gpboost":
    import gpboost as gpb
    X = np.column_stack([np.ones(rows), x])
    t1 = time.perf_counter()
    # slopes: gpboost's random coefficient of x on g (independent of g's intercept: gpboost
    # has no correlated random slopes)
    more = ({"group_rand_coef_data": x[:, None], "ind_effect_group_rand_coef": [1]}
            if slopes else {})
    m = gpb.GPModel(group_data=np.column_stack([g, h]),
                    likelihood="bernoulli_logit" if family == "binomial" else "gaussian",
                    matrix_inversion_method="iterative", **more)
    m.fit(y=y, X=X)
    t2 = time.perf_counter()
    v = np.ravel(m.get_cov_pars()).tolist()
    if slopes:  # gpboost's order: (residual,) g, h, then g's slope
        v = v[:-2] + [v[-1], v[-2]]
    out = {"fit_s": t2 - t1, "variances": v,
           "beta": np.ravel(m.get_coef()).tolist()}
else:
    import pandas as pd
    pd.DataFrame({"y": y, "x": x, "g": g, "h": h}).to_csv(csv, index=False)
    out = {}
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
print(json.dumps(out))
"""

LMER = r"""
suppressMessages(library(lme4))
args <- commandArgs(TRUE)
d <- read.csv(args[1]); d$g <- factor(d$g); d$h <- factor(d$h)
t0 <- proc.time()[["elapsed"]]
binomial_fit <- args[2] == "binomial"
slopes <- args[3] == "1"
f <- if (slopes) y ~ x + (1 + x | g) + (1 | h) else y ~ x + (1 | g) + (1 | h)
m <- if (binomial_fit) glmer(f, d, family = binomial) else lmer(f, d)
t1 <- proc.time()[["elapsed"]]
vc <- as.data.frame(VarCorr(m))
vc <- vc[is.na(vc$var2), ]  # variances only, not the slopes' covariance
cat(sprintf(paste0('{"fit_s": %.4f, "variances": [%s, %s, %.10g], ',
                   '"beta": [%.10g, %.10g], "criterion": %.10g}\n'), t1 - t0,
            if (binomial_fit) "NaN" else sprintf("%.10g", sigma(m)^2),
            paste(sprintf("%.10g", vc$vcov[vc$grp == "g"]), collapse = ", "),
            vc$vcov[vc$grp == "h"],
            fixef(m)[1], fixef(m)[2], if (binomial_fit) deviance(m) else REMLcrit(m)))
"""


def run(tool: str, args, csv: str = "") -> dict:
    ng, nh = args.levels
    if tool == "lme4":
        run_py = [sys.executable, "-c", RUN, str(args.rows), str(ng), str(nh), str(args.zipf),
                  "csv", args.crossed, csv, args.family, str(int(args.slopes))]
        subprocess.run(run_py, check=True, capture_output=True, env=tool_env())
        proc = subprocess.run(["Rscript", "-e", LMER, csv, args.family, str(int(args.slopes))],
                              capture_output=True, text=True, env=tool_env())
    else:
        proc = subprocess.run([sys.executable, "-c", RUN, str(args.rows), str(ng), str(nh),
                               str(args.zipf), tool, args.crossed, csv, args.family,
                               str(int(args.slopes))],
                              capture_output=True, text=True, env=tool_env())
    if proc.returncode:
        raise RuntimeError(f"{tool}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--levels", type=int, nargs=2, default=[10_000, 10_000])
    ap.add_argument("--zipf", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--crossed", default="auto", choices=["auto", "dense", "sparse", "matrix-free"])
    ap.add_argument("--family", default="gaussian", choices=["gaussian", "binomial"],
                    help="binomial: y ~ Bernoulli(logistic(eta - 0.5)), daskmm.glmm, gpboost's "
                    "bernoulli_logit, glmer")
    ap.add_argument("--slopes", action="store_true",
                    help="random slopes on g: y ~ x + (1 + x | g) + (1 | h), x's slope SD 0.3 "
                    "(gpboost: an independent random coefficient of x on g); either family")
    ap.add_argument("--lme4", action="store_true", help="also lme4 (where it finishes)")
    ap.add_argument("--tools", nargs="+", default=None,
                    help="of daskmm (in process), gpboost, lme4, daskmm-client and "
                    "daskmm-workers (a local cluster of 2 workers, the data "
                    "in 8 partitions, the first factor's crossing tables summed to the client "
                    "at each PIRLS step, or kept in blocks on the workers)")
    args = ap.parse_args()
    tools = args.tools or ["daskmm", "gpboost"] + (["lme4"] if args.lme4 else [])
    if "gpboost" in tools:
        try:
            import gpboost  # noqa: F401
        except ImportError:
            tools.remove("gpboost")
    runs = {t: [] for t in tools}
    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "crossed.csv")
        for _ in range(args.repeats):
            for t in tools:
                runs[t].append(run(t, args, csv))
    ng, nh = args.levels
    print(f"{args.family}{' with slopes on g' if args.slopes else ''}: {args.rows} rows, "
          f"{ng} x {nh} levels"
          f"{f', Zipf {args.zipf}' if args.zipf else ''}, "
          f"{args.repeats} runs each")
    med = {}
    for t in tools:
        fits = [r["fit_s"] for r in runs[t]]
        med[t] = statistics.median(fits)
        last = runs[t][-1]
        extra = ""
        if t.startswith("daskmm"):
            opt = statistics.median(r["optimise_s"] for r in runs[t])
            extra = (f"; {last['path']} path, {last['evaluations']} evaluations, "
                     f"{opt / last['evaluations']:.2f} s each (optimiser {opt:.1f} s, "
                     f"statistics {statistics.median(r['statistics_s'] for r in runs[t]):.1f}"
                     f" s), criterion {last['criterion']:.3f} SE {last['criterion_se'] or 0:.3f}"
                     f", peak memory {max(r['peak_rss_gb'] for r in runs[t]):.2f} GB"
                     + (f" (the client process's, which drew the data; it grew by "
                        f"{last['client_growth_gb']:.2f} GB during the fit; the largest "
                        f"worker's {last['worker_peak_gb']:.2f} GB; tables {last['tables']})"
                        if t != "daskmm" else ""))
        elif t == "lme4":
            extra = f"; criterion {last['criterion']:.3f}"
        print(f"{t}: {', '.join(f'{v:.2f}' for v in fits)} s (median {med[t]:.2f}){extra}")
        print(f"   variances ({'' if args.family == 'binomial' else 'residual, '}g, "
              f"{'g slope, ' if args.slopes else ''}h) "
              f"{[round(v, 5) for v in last['variances'] if v == v]}, "
              f"beta {[round(v, 5) for v in last['beta']]}")
    for peer in ("gpboost", "lme4", "daskmm-client"):
        for t in ("daskmm", "daskmm-workers"):
            if t in med and peer in med:
                print(f"ratio {t} / {peer}: {med[t] / med[peer]:.3f}")


if __name__ == "__main__":
    main()
