"""Every real-data corpus fit (tests/fixtures/corpus: 159 lme4 / mgcv fits on data shipped
with lme4, nlme, mlmRev, MASS, glmmTMB) timed warm side by side with its R tool in one run:
R's default fit (benchmarks/bench_corpus.R: lmer, glmer, glmer.nb, bam) and daskmm's, each on
data already in memory, one warm-up then the median of ``--repeats``. Prints one row per fit
(criterion gap to the tight reference, daskmm and R seconds, ratio daskmm / R: below 1 is
faster), then the medians by kind, the worst ratios and the worst gaps. With ``--mixedlm``
each LMM and GLMM is also fitted by mixedlm (PyPI: lme4 ported to Python with a compiled core;
``pip install -e '.[bench]'``) on the same frame, warm, the median of ``--repeats``, and its ratio
printed beside R's (daskmm / mixedlm). Run from the repository root::

    python benchmarks/bench_corpus.py --repeats 5 [--only REGEX] [--json FILE] [--mixedlm]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.models.corpus import CORPUS, ENTRIES, compare, fit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default=".")
    ap.add_argument("--json", default=None)
    ap.add_argument("--mixedlm", action="store_true", help="time mixedlm beside (LMM, GLMM)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    r = subprocess.run(["Rscript", str(Path(__file__).with_name("bench_corpus.R")), str(CORPUS),
                        str(args.repeats), args.only], capture_output=True, text=True,
                       check=True)
    r_sec = json.loads(r.stdout)
    rows = []
    for e in ENTRIES:
        if not re.search(args.only, e["id"]):
            continue
        path = CORPUS / e["data"]
        frame = pd.read_csv(path, keep_default_na=False, na_values=["NA", ""])
        try:
            res = fit(e, frame)
            ts = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                fit(e, frame)
                ts.append(time.perf_counter() - t)
            sec = statistics.median(ts)
            gap = compare(e, res)["gap"]
        except Exception as exc:  # noqa: BLE001 - a failure is a row
            rows.append({"id": e["id"], "kind": e["kind"], "error": str(exc)[:80]})
            print(f"{e['id']:32s} {e['kind']:5s} ERROR {str(exc)[:80]}", flush=True)
            continue
        rs = r_sec.get(e["id"])
        ratio = sec / rs if rs else float("nan")
        row = {"id": e["id"], "kind": e["kind"], "n": len(frame), "gap": gap,
               "daskmm_s": sec, "r_s": rs, "ratio": ratio}
        extra = ""
        if args.mixedlm and e["kind"] in ("lmm", "glmm"):
            ms = mixedlm_seconds(e, frame, args.repeats)
            row["mixedlm_s"], row["ratio_mixedlm"] = ms, sec / ms
            extra = f" mixedlm {ms:.4f}s ratio {sec / ms:.2f}"
        rows.append(row)
        print(f"{e['id']:32s} {e['kind']:5s} n={len(frame):6d} gap {gap:+.1e} daskmm "
              f"{sec:.4f}s R {rs if rs is not None else float('nan'):.4f}s ratio {ratio:.2f}"
              + extra, flush=True)
    df = pd.DataFrame(rows)
    ok = df.dropna(subset=["ratio"]) if "ratio" in df else df
    print(f"\n{len(df)} fits ({args.repeats} timed runs each, medians)")
    for kind, g in ok.groupby("kind"):
        print(f"  {kind}: {len(g)} fits, median ratio {g.ratio.median():.2f}, "
              f"{int((g.ratio <= 1).sum())} at most 1x, worst {g.ratio.max():.2f} "
              f"({g.loc[g.ratio.idxmax(), 'id']})")
    print(f"  all: median ratio {ok.ratio.median():.2f}; worst gaps: " + ", ".join(
        f"{r.id} {r.gap:+.1e}" for r in ok.sort_values("gap", ascending=False).head(3)
        .itertuples()))
    if "ratio_mixedlm" in df:
        mx = df.dropna(subset=["ratio_mixedlm"])
        print(f"  mixedlm: {len(mx)} fits, median ratio {mx.ratio_mixedlm.median():.2f}, "
              f"{int((mx.ratio_mixedlm <= 1.5).sum())} within 1.5x, worst "
              f"{mx.ratio_mixedlm.max():.2f} ({mx.loc[mx.ratio_mixedlm.idxmax(), 'id']})")
    if args.json:
        Path(args.json).write_text(df.to_json(orient="records", indent=1))


def mixedlm_seconds(e: dict, frame: pd.DataFrame, repeats: int) -> float:
    """mixedlm's warm fit of the entry (median of ``repeats`` after one untimed fit); NaN
    where it fails."""
    import mixedlm
    from mixedlm import families

    d = frame.copy()
    for f in e["factors"]:
        d[f] = d[f].astype(str)
    kw = {"weights": e["weights"]} if e.get("weights") else {}
    if e["kind"] == "lmm":
        def run():
            return mixedlm.lmer(e["formula"], d, REML=bool(e["REML"]), **kw)
    else:
        fam = e["family"]
        if fam.startswith("Negative Binomial"):
            return float("nan")   # glmer.nb: theta outside glmer
        family = {"binomial": families.Binomial, "poisson": families.Poisson}[fam](
            link=e["link"])

        def run():
            return mixedlm.glmer(e["formula"], d, family=family, nAGQ=e["nAGQ"] or 1, **kw)
    try:
        run()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            run()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)
    except Exception:  # noqa: BLE001 - a failure is NaN
        return float("nan")


if __name__ == "__main__":
    main()
