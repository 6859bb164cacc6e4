"""Coverage of daskmm's parametric-bootstrap percentile intervals on simulated data.

``--datasets`` (default 400) datasets of ``--groups`` groups x ``--per-group`` rows from

    y = 1 + 0.5 x + u0[g] + u1[g] x + e,   (u0, u1) ~ N(0, [[0.5^2, 0.3*0.5*0.4], [., 0.4^2]]),
    e ~ N(0, 1),  x ~ N(0, 1)                                   "y ~ x + (x | g)"

each fitted (REML) and bootstrapped (``--nboot`` replicates, 95% percentile intervals); the
datasets run as tasks on a 2-worker ``LocalCluster``, each with its own seed. Prints, per
parameter, the share of datasets whose interval covers the true value, with its binomial
standard error. Run::

    python benchmarks/bench_coverage.py --json /tmp/coverage.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

TRUTH = {"sd_(Intercept)|g": 0.5, "cor_x.(Intercept)|g": 0.3, "sd_x|g": 0.4, "sigma": 1.0,
         "(Intercept)": 1.0, "x": 0.5}


def one(i: int, groups: int, per: int, nboot: int, seed: int) -> dict:
    from daskmm import lmm
    rng = np.random.default_rng([seed, i])
    g = np.repeat(np.arange(groups), per)
    x = rng.normal(size=groups * per)
    cov = np.array([[0.25, 0.06], [0.06, 0.16]])
    u = rng.multivariate_normal([0, 0], cov, size=groups)
    y = 1 + 0.5 * x + u[g, 0] + u[g, 1] * x + rng.normal(size=len(g))
    fit = lmm("y ~ x + (x | g)", pd.DataFrame({"y": y, "x": x, "g": g}), mode="in-process")
    ci = fit.confint("boot", nboot=nboot, seed=seed * 100003 + i)
    return {r.parameter: [r.lower, r.upper] for r in ci.itertuples()} | {
        "_failed": fit.boot.n_failed}


def main(argv: list[str] | None = None) -> None:
    from distributed import Client, LocalCluster

    from daskmm.distributed.client import NO_DASHBOARD
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", type=int, default=400)
    p.add_argument("--groups", type=int, default=50)
    p.add_argument("--per-group", type=int, default=12)
    p.add_argument("--nboot", type=int, default=300)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, **NO_DASHBOARD) as cl, \
            Client(cl) as c:
        futs = c.map(one, range(a.datasets), groups=a.groups, per=a.per_group, nboot=a.nboot,
                     seed=a.seed, pure=False)
        res = c.gather(futs)
    wall = time.perf_counter() - t0
    report = {"datasets": a.datasets, "groups": a.groups, "per_group": a.per_group,
              "nboot": a.nboot, "seed": a.seed, "wall_s": wall,
              "failed_replicates": int(sum(r["_failed"] for r in res)), "coverage": {}}
    n = len(res)
    for name, truth in TRUTH.items():
        hit = sum(r[name][0] <= truth <= r[name][1] for r in res)
        cov = hit / n
        report["coverage"][name] = {"covered": hit, "share": cov,
                                    "se": float(np.sqrt(cov * (1 - cov) / n))}
        print(f"{name:22s} {hit}/{n} = {cov:.3f} (se {np.sqrt(cov * (1 - cov) / n):.3f})")
    print(f"{n} datasets x {a.nboot} replicates in {wall:.0f} s "
          f"({report['failed_replicates']} failed replicates)")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
