"""GWAS benchmark: ``daskmm.gwas`` (exact mode, LOCO, covariates, on a 2-worker LocalCluster)
against FaST-LMM's ``single_snp`` (LOCO, the same covariates, count_A1=True) on the same PLINK
files, side by side in one run.

Simulates ``--samples`` samples (families of 5 in two strata, see
:func:`daskmm.models.gwas.simulate.simulate_gwas`) at ``--variants`` variants on ``--chromosomes``
chromosomes, once, under ``benchmarks/_data``. Both tools test every variant (``maf = 0``, so
their relationship matrices are the same) for the trait ``y_causal`` with covariates ``age``
and ``sex``. daskmm's time excludes starting the cluster (a user's cluster is up); FaST-LMM
runs in its own process with every core. Prints each run, the medians, the ratio, the largest
differences between the two tools' results, and the peak memory of each process.

    python benchmarks/bench_gwas.py --samples 5000 --variants 100000 --json /tmp/gwas.json
    python benchmarks/bench_gwas.py --samples 1000 --variants 10000     # a quick look

``--sparse`` times the sparse mode alone (no tool to compare: fastGWA and REGENIE are not
installable here) at ``--samples`` samples over growing prefixes of one simulated file
(``--sparse-sizes``), with the GRM from ``--grm-variants`` evenly spaced variants, and prints
the time per variant and the peak memory of each worker::

    python benchmarks/bench_gwas.py --sparse --samples 50000 \\
        --sparse-sizes 250000,500000,1000000 --json /tmp/gwas_sparse.json

``--binary`` times the binary-trait scan (issue 32; SAIGE and REGENIE are not installable
here): ``--traits`` case/control traits (:func:`binary_traits`: one with the causal variants,
the others null with a family effect, prevalences from 50% to 1%) scanned in one pass, against
the first of them alone; ten separate scans cost ten times the one-trait scan (each repeats
its GRM and genotype reads), so the ratio of the one pass to ten single scans is printed too.
Exact mode (LOCO) at ``--samples``; ``--sparse`` with it for the sparse mode::

    python benchmarks/bench_gwas.py --binary --samples 5000 --variants 100000
    python benchmarks/bench_gwas.py --binary --sparse --samples 50000 --variants 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from bench_gam import PeakRSS
from distributed import Client, LocalCluster
from tool_env import tool_env

from daskmm.distributed.client import NO_DASHBOARD
from daskmm.models.gwas import gwas
from daskmm.models.gwas.simulate import simulate_gwas

HERE = Path(__file__).resolve().parent

FASTLMM = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
from fastlmm.association import single_snp
from pysnptools.snpreader import Bed, Pheno
bed, pheno, covar, out = sys.argv[1:5]
p = Pheno(pheno)
p = p[:, p.col_to_index(["y_causal"])]
t = time.perf_counter()
fr = single_snp(Bed(bed, count_A1=True), p, covar=Pheno(covar), count_A1=True,
                leave_out_one_chrom=True)
wall = time.perf_counter() - t
fr.to_parquet(out)
print(json.dumps({"wall_s": wall,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def data(samples: int, variants: int, chromosomes: int, fst: float = 0.05) -> Path:
    out = HERE / "_data" / f"gwas_{samples}_{variants}_{chromosomes}_{fst}"
    if not (out / "_done").exists():
        families = int(samples * 0.9) // 5
        simulate_gwas(out, families=families, children=3, unrelated=samples - 5 * families,
                      chromosomes=chromosomes, variants_per_chrom=-(-variants // chromosomes),
                      causal=10, fst=fst, seed=1)
        (out / "_done").write_text("ok\n")
    return out


def time_daskmm(client, d: Path, repeats: int, work: Path) -> tuple[dict, pd.DataFrame]:
    runs, peaks = [], []
    for i in range(repeats):
        with PeakRSS(client) as mem:
            t = time.perf_counter()
            r = gwas(bed=str(d / "geno"), pheno=str(d / "pheno.txt"), pheno_name=["y_causal"],
                     covar=str(d / "covar.txt"), out=work / f"daskmm{i}", maf=0,
                     client=client, plot=False)
            runs.append(time.perf_counter() - t)
        peaks.append(max(mem.peak) / 2 ** 30)
        print(f"RUN daskmm {runs[-1]:.1f} s  peak worker RSS {peaks[-1]:.2f} GiB", flush=True)
    return ({"tool": "daskmm", "runs_s": runs, "median_s": statistics.median(runs),
             "peak_worker_rss_gib": max(peaks), "timing": r.document["timing"]}, r.results)


def time_fastlmm(d: Path, repeats: int, work: Path) -> tuple[dict, pd.DataFrame]:
    runs, peaks = [], []
    for i in range(repeats):
        out = work / f"fastlmm{i}.parquet"
        p = subprocess.run([sys.executable, "-c", FASTLMM, str(d / "geno.bed"),
                            str(d / "pheno.txt"), str(d / "covar.txt"), str(out)],
                           capture_output=True, text=True, check=False, env=tool_env())
        if p.returncode:
            raise SystemExit(f"fastlmm failed: {p.stderr[-2000:]}")
        rec = json.loads(p.stdout.strip().splitlines()[-1])
        runs.append(rec["wall_s"])
        peaks.append(rec["peak_rss_gib"])
        print(f"RUN fastlmm {runs[-1]:.1f} s  peak RSS {peaks[-1]:.2f} GiB", flush=True)
    return ({"tool": "fastlmm", "runs_s": runs, "median_s": statistics.median(runs),
             "peak_rss_gib": max(peaks)}, pd.read_parquet(out))


def agreement(mine: pd.DataFrame, ref: pd.DataFrame, d: Path) -> dict:
    from bed_reader import open_bed

    from daskmm.kernels.lmm_scan import variant_stats

    ref = ref.set_index("SNP")
    mine = mine.set_index("variant_id")
    ref = ref.loc[mine.index]
    with open_bed(str(d / "geno.bed")) as bed:
        sid = bed.sid
        sd = np.empty(len(sid))
        for s in range(0, len(sid), 5000):
            sd[s:s + 5000] = variant_stats(bed.read(np.s_[:, s:s + 5000],
                                                    dtype="float64")).sd
    sd = pd.Series(sd, index=sid).loc[mine.index].to_numpy()
    beta, se = mine["beta"].to_numpy() * sd, mine["se"].to_numpy() * sd
    scale = np.maximum(np.abs(ref["SnpWeight"]), ref["SnpWeightSE"]).to_numpy()
    lp, rlp = -np.log10(mine["p_value"].to_numpy()), -np.log10(ref["PValue"].to_numpy())
    return {"variants": len(mine),
            "beta_max_diff_of_max_abs_beta_se": float(np.max(np.abs(beta - ref["SnpWeight"])
                                                             / scale)),
            "se_max_rel_diff": float(np.max(np.abs(se / ref["SnpWeightSE"] - 1))),
            "neg_log10_p_max_rel_diff": float(np.max(np.abs(lp - rlp)
                                                     / np.maximum(rlp, np.log10(2))))}


def prefix(d: Path, k: int, n: int) -> Path:
    """The first ``k`` variants of ``d/geno`` as their own PLINK files (a .bed is variant-major:
    its first bytes are its first variants)."""
    out = d / f"prefix_{k}"
    if not (out / "_done").exists():
        out.mkdir(exist_ok=True)
        with open(d / "geno.bed", "rb") as src, open(out / "geno.bed", "wb") as dst:
            left = 3 + k * ((n + 3) // 4)
            while left:
                buf = src.read(min(left, 1 << 26))
                dst.write(buf)
                left -= len(buf)
        with open(d / "geno.bim") as src, open(out / "geno.bim", "w") as dst:
            for _, line in zip(range(k), src):
                dst.write(line)
        for f in ("geno.fam", "pheno.txt", "covar.txt"):
            (out / f).write_bytes((d / f).read_bytes())
        (out / "_done").write_text("ok\n")
    return out


class Progress:
    """Counts the result files of a running scan every ``every`` seconds: blocks done against
    time, to show the time per variant staying flat as the scan proceeds."""

    def __init__(self, out: Path, every: float = 5.0):
        self.out, self.every, self.marks = out, every, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        t0 = time.perf_counter()
        while not self._stop.wait(self.every):
            k = len(list(self.out.glob("results.parquet/chrom=*/part-*.parquet")))
            self.marks.append((time.perf_counter() - t0, k))

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()


def sparse(a) -> dict:
    sizes = [int(x) for x in a.sparse_sizes.split(",")]
    t = time.perf_counter()
    # biobank-like: weak strata (Fst 0.005), so that at fastGWA's 0.05 the sparse GRM holds
    # the families, not everybody of a stratum
    d = data(a.samples, max(sizes), a.chromosomes, fst=0.005)
    print(f"data {d} ready in {time.perf_counter() - t:.0f} s", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         memory_limit="4GiB", **NO_DASHBOARD) as cl, Client(cl) as c:
        for k in sizes:
            src = prefix(d, k, a.samples) if k < max(sizes) else d
            with PeakRSS(c) as mem, Progress(Path(tmp) / f"s{k}") as prog:
                t = time.perf_counter()
                r = gwas(bed=str(src / "geno"), pheno=str(src / "pheno.txt"),
                         pheno_name=["y_causal"], covar=str(src / "covar.txt"),
                         out=Path(tmp) / f"s{k}", mode="sparse", maf=0,
                         grm_variants=a.grm_variants, block_size=a.sparse_block, client=c,
                         plot=False)
                wall = time.perf_counter() - t
            tm = r.document["timing"]["sets"][0]
            k = r.document["variants"]
            rec = {"variants": k, "wall_s": wall, "grm_s": tm["grm_s"],
                   "null_s": tm["null_s"], "tests_s": tm["tests_s"],
                   "tests_us_per_variant": tm["tests_s"] / k * 1e6,
                   "wall_us_per_variant": wall / k * 1e6,
                   "peak_worker_rss_gib": max(mem.peak) / 2 ** 30,
                   "sparse_grm": r.document.get("sparse_grm"),
                   "h2": r.document["traits"]["y_causal"]["null"]["all"]["h2"],
                   "blocks": r.document["blocks"], "progress": prog.marks}
            # seconds per block over each quarter of the blocks, once the tests started
            marks = [(s_, b) for s_, b in prog.marks if b > 0]
            quarters = []
            for q in range(4):
                lo, hi = rec["blocks"] * q // 4, rec["blocks"] * (q + 1) // 4
                pts = [(s_, b) for s_, b in marks if lo <= b <= hi]
                if len(pts) >= 2 and pts[-1][1] > pts[0][1]:
                    quarters.append((pts[-1][0] - pts[0][0]) / (pts[-1][1] - pts[0][1]))
            rec["s_per_block_by_quarter"] = quarters
            runs.append(rec)
            print(f"RUN sparse {k} variants: {wall:.1f} s (GRM {tm['grm_s']:.1f} s, null "
                  f"{tm['null_s']:.1f} s, tests {tm['tests_s']:.1f} s = "
                  f"{rec['tests_us_per_variant']:.1f} us/variant); peak worker RSS "
                  f"{rec['peak_worker_rss_gib']:.2f} GiB; s per block by quarter "
                  f"{[round(x, 3) for x in quarters]}", flush=True)
    return {"mode": "sparse", "samples": a.samples, "grm_variants": a.grm_variants,
            "runs": runs}


def binary_traits(d: Path, traits: int, seed: int = 5) -> Path:
    """``d/pheno_binary_T.txt``: ``b_causal`` (``y_causal`` above its 90% quantile) and
    ``traits - 1`` null traits, each a family effect (variance 0.5 on the logit scale) and
    noise, at prevalences 50%, 10%, 5%, 1% in turn."""
    out = d / f"pheno_binary_{traits}.txt"
    if out.exists():
        return out
    ph = pd.read_csv(d / "pheno.txt", sep=r"\s+")
    rng = np.random.default_rng(seed)
    fam = pd.factorize(ph["FID"])[0]
    cols = {"b_causal": (ph["y_causal"] > ph["y_causal"].quantile(0.9)).astype(int)}
    for k in range(1, traits):
        prev = (0.5, 0.1, 0.05, 0.01)[(k - 1) % 4]
        lin = rng.normal(0, np.sqrt(0.5), fam.max() + 1)[fam] + rng.logistic(size=len(fam))
        cols[f"b_null_{k}"] = (lin > np.quantile(lin, 1 - prev)).astype(int)
    ph[["FID", "IID"]].assign(**cols).to_csv(out, sep=" ", index=False)
    return out


def binary(a) -> dict:
    t = time.perf_counter()
    d = data(a.samples, a.variants, a.chromosomes, fst=0.005 if a.sparse else 0.05)
    pheno = binary_traits(d, a.traits)
    print(f"data {d} ready in {time.perf_counter() - t:.0f} s", flush=True)
    names = list(pd.read_csv(pheno, sep=" ", nrows=1).columns[2:])
    rec: dict = {"binary": True, "mode": "sparse" if a.sparse else "exact",
                 "machine": f"{psutil.cpu_count()} cores, "
                 f"{psutil.virtual_memory().total / 2**30:.0f} GiB", "samples": a.samples,
                 "variants": a.variants, "chromosomes": a.chromosomes, "runs": []}
    kw = {"mode": "sparse", "grm_variants": a.grm_variants,
          "block_size": a.sparse_block} if a.sparse else {}
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         memory_limit="6GiB", **NO_DASHBOARD) as cl, Client(cl) as c:
        for i in range(a.repeats):
            for traits in (names[:1], names):
                with PeakRSS(c) as mem:
                    t = time.perf_counter()
                    r = gwas(bed=str(d / "geno"), pheno=str(pheno), pheno_name=traits,
                             covar=str(d / "covar.txt"), out=Path(tmp) / f"b{i}_{len(traits)}",
                             maf=0.001, client=c, plot=False, trait_type="binary", **kw)
                    wall = time.perf_counter() - t
                tm = r.document["timing"]["sets"][0]
                tested = sum(v["variants_tested"] for v in r.document["traits"].values())
                run = {"traits": len(traits), "wall_s": wall, "grm_s": tm["grm_s"],
                       "null_s": tm["null_s"], "tests_s": tm["tests_s"],
                       "us_per_trait_variant": wall / tested * 1e6,
                       "peak_worker_rss_gib": max(mem.peak) / 2 ** 30,
                       "lambda_gc": {k: v["lambda_gc"] for k, v in r.document["traits"].items()},
                       "null": {k: next(iter(v["null"].values())) for k, v in
                                r.document["traits"].items()}}
                rec["runs"].append(run)
                print(f"RUN {len(traits)} trait(s): {wall:.1f} s (GRM {tm['grm_s']:.1f} s; "
                      f"null tasks {tm['null_s']:.1f} s summed over the LOCO blocks in "
                      "flight); "
                      f"{run['us_per_trait_variant']:.1f} us per trait-variant; peak worker "
                      f"RSS {run['peak_worker_rss_gib']:.2f} GiB; lambda_gc "
                      f"{json.dumps({k: round(v, 3) for k, v in run['lambda_gc'].items()})}",
                      flush=True)
    one = statistics.median(r["wall_s"] for r in rec["runs"] if r["traits"] == 1)
    many = statistics.median(r["wall_s"] for r in rec["runs"] if r["traits"] == len(names))
    rec.update(one_trait_s=one, all_traits_s=many, ratio_to_one=many / one,
               ratio_to_separate=many / (len(names) * one))
    print(f"{len(names)} traits in one pass: {many:.1f} s = {many / one:.2f}x one trait "
          f"({one:.1f} s), {many / (len(names) * one):.2f}x {len(names)} separate scans",
          flush=True)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--variants", type=int, default=100_000)
    ap.add_argument("--chromosomes", type=int, default=22)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--fastlmm-repeats", type=int, default=None)
    ap.add_argument("--no-fastlmm", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--sparse", action="store_true", help="time the sparse mode instead")
    ap.add_argument("--sparse-sizes", default="250000,500000,1000000")
    ap.add_argument("--grm-variants", type=int, default=10_000)
    ap.add_argument("--sparse-block", type=int, default=500)
    ap.add_argument("--binary", action="store_true", help="time the binary-trait scan")
    ap.add_argument("--traits", type=int, default=10, help="--binary: traits in one pass")
    a = ap.parse_args()
    if a.binary:
        rec = binary(a)
        if a.json:
            Path(a.json).write_text(json.dumps(rec, indent=1) + "\n")
        return
    if a.sparse:
        rec = sparse(a)
        if a.json:
            Path(a.json).write_text(json.dumps(rec, indent=1) + "\n")
        return
    t = time.perf_counter()
    d = data(a.samples, a.variants, a.chromosomes)
    print(f"data {d} ready in {time.perf_counter() - t:.0f} s", flush=True)
    rec: dict = {"machine": f"{psutil.cpu_count()} cores, "
                 f"{psutil.virtual_memory().total / 2**30:.0f} GiB", "samples": a.samples,
                 "variants": a.variants, "chromosomes": a.chromosomes, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          memory_limit="4GiB", **NO_DASHBOARD) as cl, Client(cl) as c:
            dm, mine = time_daskmm(c, d, a.repeats, work)
        rec["runs"].append(dm)
        print(f"daskmm: median {dm['median_s']:.1f} s", flush=True)
        if not a.no_fastlmm:
            fl, ref = time_fastlmm(d, a.fastlmm_repeats or a.repeats, work)
            rec["runs"].append(fl)
            rec["agreement"] = agreement(mine, ref, d)
            rec["speedup"] = fl["median_s"] / dm["median_s"]
            print(f"fastlmm: median {fl['median_s']:.1f} s -> daskmm is "
                  f"{rec['speedup']:.2f}x faster", flush=True)
            print("agreement:", json.dumps(rec["agreement"]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rec, indent=1) + "\n")


if __name__ == "__main__":
    main()
