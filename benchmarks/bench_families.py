"""The GLMM family fixtures (tests/fixtures/families: Poisson with prior weights, Gamma,
inverse Gaussian, gaussian(log), over one intercept, nested and crossed terms) timed warm side
by side with glmer's default fits in one run (benchmarks/bench_families.R, one R process):
one warm-up, then the median of ``--repeats``; daskmm in process on data in memory. Prints
one row per fit (deviance gap to the tight reference, seconds, ratio daskmm / glmer: below 1
is faster) and the median ratio. Run from the repository root::

    python benchmarks/bench_families.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import daskmm  # noqa: E402

REFS = ROOT / "tests" / "fixtures" / "families" / "refs.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    refs = {k: v for k, v in json.loads(REFS.read_text()).items() if isinstance(v, dict)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        subprocess.run(["Rscript", str(Path(__file__).with_name("bench_families.R")),
                        str(REFS), str(args.repeats), str(out)], check=True)
        r_times = json.loads(out.read_text())
    rows = []
    for name, ref in refs.items():
        data = pd.read_csv(REFS.parent / ref["data"])

        def run(ref=ref, data=data):
            return daskmm.glmm(ref["formula"], data, ref["family"], link=ref.get("link"),
                               weights=ref.get("weights"), factors=ref["factors"] or None,
                               mode="in-process")
        fit = run()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        d = statistics.median(times)
        gap = (-2 * fit.loglik - ref["deviance"]) / max(abs(ref["deviance"]), 1.0)
        rows.append((name, gap, d, r_times[name], d / r_times[name], fit.certified))
    print(f"{'fit':28}{'rel. gap':>11}{'daskmm s':>10}{'glmer s':>9}{'ratio':>7}  certified")
    for name, gap, d, r, ratio, ok in rows:
        print(f"{name:28}{gap:>11.1e}{d:>10.3f}{r:>9.3f}{ratio:>7.2f}  {ok}")
    print(f"median ratio {statistics.median(x[4] for x in rows):.2f}, worst "
          f"{max(x[4] for x in rows):.2f} ({max(rows, key=lambda x: x[4])[0]})")


if __name__ == "__main__":
    main()
