"""A scan's result folder, written as blocks finish and resumable.

    DIR/_daskmm.json            kind "gwas", the run's fingerprint, "complete": false|true
    DIR/results.parquet/chrom=C/part-BBBBBB-S.parquet   one file per block and sample set
    DIR/skipped.parquet         variants not tested, with the reason (at the end)
    DIR/summary.json, DIR/summary.txt, DIR/manhattan.png, DIR/qq.png   (at the end)
    DIR/_null/C-S.json          the null model of each LOCO block (h2, variance components)

Until the end ``complete`` is false and ``DIR/INCOMPLETE`` says so in words: a crash keeps
the finished blocks, and a rerun with the same inputs and options computes only the rest.
Every part file is written under a temporary name and renamed, so a part file that exists is
whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from daskmm.data.staging import RESULT_FORMAT, RESULT_MARKER, OutputError, check_output

RESULT_COLUMNS = ["chrom", "pos", "variant_id", "allele1", "allele2", "af", "n", "beta", "se",
                  "statistic", "p_value", "trait"]
_PART = re.compile(r"part-(\d+)-(\d+)\.parquet$")


class ScanComplete(OutputError):
    """The folder already holds this very scan, finished."""


def _safe(c: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", c)


class ScanFolder:
    """The result folder of one scan (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, fingerprint: dict, force: bool = False,
                 inputs: list[str] = ()):
        self.path = check_output(out, "gwas", force=True, inputs=inputs, what="--out")
        marker = self.path / RESULT_MARKER
        self.resumed = False
        if marker.exists():
            doc = json.loads(marker.read_text())
            same = doc.get("fingerprint") == fingerprint
            if same and not doc.get("complete") and not force:
                self.resumed = True
            elif doc.get("complete") and same and not force:
                raise ScanComplete(f"--out {str(self.path)!r} already holds this scan, complete; "
                                  "use --force to run it again, or give a new folder")
            elif not force:
                raise OutputError(f"--out {str(self.path)!r} holds a daskmm scan of other "
                                  "inputs or options; use --force to replace it, or give a "
                                  "new folder")
        if not self.resumed and self.path.exists():
            for p in self.path.iterdir():   # only a daskmm gwas folder reaches here
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self._mark(False)
        (self.path / "INCOMPLETE").write_text(
            "This scan has not finished: results.parquet holds only the blocks done so far. "
            "Run the same command again to compute the rest.\n")

    def _mark(self, complete: bool) -> None:
        doc = {"format": RESULT_FORMAT, "kind": "gwas", "name": None, "complete": complete,
               "fingerprint": self.fingerprint}
        tmp = self.path / (RESULT_MARKER + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(self.path / RESULT_MARKER)

    def done_blocks(self) -> set[tuple[int, int]]:
        """``(block, set)`` pairs already written."""
        out = set()
        root = self.path / "results.parquet"
        for p in root.glob("chrom=*/part-*.parquet") if root.exists() else []:
            m = _PART.search(p.name)
            if m:
                out.add((int(m.group(1)), int(m.group(2))))
        return out

    def _write(self, df: pd.DataFrame, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("." + path.name + ".tmp")
        df.to_parquet(tmp, index=False)
        tmp.replace(path)

    def write_block(self, chrom: str, block: int, set_id: int, tested: pd.DataFrame,
                    skipped: pd.DataFrame) -> None:
        """Write one block's rows (results without ``chrom``: it is the partition)."""
        name = f"part-{block:06d}-{set_id}.parquet"
        # the skipped rows first: a block counts as done once its results file exists
        self._write(skipped, self.path / "_skipped" / name)
        self._write(tested.drop(columns="chrom"),
                    self.path / "results.parquet" / f"chrom={_safe(chrom)}" / name)

    def write_null(self, chrom: str, set_id: int, doc: dict) -> None:
        p = self.path / "_null" / f"{_safe(chrom)}-{set_id}.json"
        p.parent.mkdir(exist_ok=True)
        tmp = p.with_name("." + p.name + ".tmp")
        tmp.write_text(json.dumps(doc) + "\n")
        tmp.replace(p)

    def nulls(self) -> dict[tuple[str, int], dict]:
        out = {}
        for p in sorted((self.path / "_null").glob("*.json")):
            doc = json.loads(p.read_text())
            out[(doc["chrom"], doc["set"])] = doc
        return out

    def read_results(self) -> pd.DataFrame:
        return read_results(self.path, allow_incomplete=True)

    def finish(self, summary: dict, text: str) -> None:
        sk = sorted((self.path / "_skipped").glob("part-*.parquet"))
        skipped = (pd.concat([pd.read_parquet(p) for p in sk], ignore_index=True) if sk
                   else pd.DataFrame(columns=["chrom", "pos", "variant_id", "reason", "traits"]))
        skipped.to_parquet(self.path / "skipped.parquet", index=False)
        (self.path / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        (self.path / "summary.txt").write_text(text)
        shutil.rmtree(self.path / "_skipped", ignore_errors=True)
        (self.path / "INCOMPLETE").unlink(missing_ok=True)
        self._mark(True)


def read_results(path: str | os.PathLike, allow_incomplete: bool = False) -> pd.DataFrame:
    """``DIR/results.parquet`` as one table, columns in :data:`RESULT_COLUMNS` order, sorted
    by chromosome order of the input, position, trait."""
    path = Path(path)
    marker = path / RESULT_MARKER
    if not marker.exists() or json.loads(marker.read_text()).get("kind") != "gwas":
        raise OutputError(f"{str(path)!r} is not a daskmm gwas result")
    if not allow_incomplete and not json.loads(marker.read_text()).get("complete"):
        raise OutputError(f"{str(path)!r} holds an unfinished scan (see its INCOMPLETE file); "
                          "run it again to finish, or pass allow_incomplete=True")
    root = path / "results.parquet"
    parts = []
    for d in sorted(root.glob("chrom=*")) if root.exists() else []:
        for p in sorted(d.glob("part-*.parquet")):
            df = pd.read_parquet(p)
            df.insert(0, "chrom", d.name.split("=", 1)[1])
            parts.append(df)
    if not parts:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    df = pd.concat(parts, ignore_index=True)
    df = df.sort_values(["variant_index", "trait"], kind="stable").reset_index(drop=True)
    extra = [c for c in df.columns if c not in RESULT_COLUMNS and c != "variant_index"]
    return df[RESULT_COLUMNS[:-1] + extra + ["trait", "variant_index"]]


def lambda_gc(p: np.ndarray) -> float:
    """Genomic control: the median 1-df chi-square of the p-values over its null median."""
    from scipy import stats

    p = np.asarray(p, float)
    p = p[np.isfinite(p)]
    if not len(p):
        return float("nan")
    return float(np.median(stats.chi2.isf(p, 1)) / stats.chi2.ppf(0.5, 1))


GENOME_WIDE = 5e-8
"""The genome-wide significance line of the Manhattan plot."""
SUGGESTIVE = 1e-5
"""The suggestive line (as PLINK-era GWAS reports and qqman draw it)."""


def plots(df: pd.DataFrame, chrom_order: list[str], out: Path) -> None:
    """``manhattan.png`` and ``qq.png``: one panel per trait."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, fig in (("manhattan.png", manhattan_figure(df, chrom_order)),
                      ("qq.png", qq_figure(df))):
        fig.savefig(out / name, dpi=100)
        plt.close(fig)


def manhattan_figure(df: pd.DataFrame, chrom_order: list[str]):
    """A Manhattan plot per trait: -log10 p by position, chromosomes in alternating colours
    and labelled under their middle, the suggestive (1e-5, blue) and genome-wide (5e-8, red)
    lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traits = list(dict.fromkeys(df["trait"]))
    order = {c: i for i, c in enumerate(chrom_order)}
    fig, axes = plt.subplots(len(traits), 1, figsize=(11, 3.5 * len(traits)), squeeze=False)
    for ax, tr in zip(axes[:, 0], traits):
        d = df[df["trait"] == tr]
        ci = d["chrom"].map(order).to_numpy()
        span = d.groupby("chrom")["pos"].max().reindex(chrom_order).fillna(0).to_numpy()
        offset = np.concatenate([[0], np.cumsum(span)[:-1]])
        x = d["pos"].to_numpy() + offset[ci]
        lp = -np.log10(np.clip(d["p_value"].to_numpy(), 1e-300, 1))
        ax.scatter(x, lp, s=4, c=np.where(ci % 2, "#1f4e79", "#7f7f7f"))
        mid = offset + span / 2
        ax.set_xticks(mid, chrom_order, fontsize=10)
        ax.tick_params(axis="y", labelsize=10)
        ax.axhline(-np.log10(SUGGESTIVE), color="blue", lw=0.8, ls=":",
                   label="suggestive (1e-5)")
        ax.axhline(-np.log10(GENOME_WIDE), color="red", lw=0.8, ls="--",
                   label="genome-wide (5e-8)")
        top = max(float(np.max(lp, initial=0)), -np.log10(GENOME_WIDE)) * 1.05
        ax.set_ylim(0, top)
        ax.set_ylabel("-log10 p", fontsize=11)
        ax.set_title(tr, fontsize=12)
        ax.legend(loc="upper right", fontsize=9, frameon=False)
    axes[-1, 0].set_xlabel("chromosome", fontsize=11)
    fig.tight_layout()
    return fig


def qq_figure(df: pd.DataFrame):
    """A QQ plot of -log10 p per trait against the uniform's expectation, with the pointwise
    95% band of the uniform order statistics (the i-th smallest of n is Beta(i, n - i + 1))
    and lambda_gc in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    traits = list(dict.fromkeys(df["trait"]))
    fig, axes = plt.subplots(1, len(traits), figsize=(4.5 * len(traits), 4.5), squeeze=False)
    for ax, tr in zip(axes[0], traits):
        p = np.sort(np.clip(df.loc[df["trait"] == tr, "p_value"].to_numpy(), 1e-300, 1))
        n = len(p)
        i = np.arange(1, n + 1)
        e = -np.log10((i - 0.5) / n)
        lo = -np.log10(stats.beta.ppf(0.975, i, n - i + 1))
        hi = -np.log10(stats.beta.ppf(0.025, i, n - i + 1))
        ax.fill_between(e, lo, hi, color="0.85", lw=0, label="95% band")
        ax.scatter(e, -np.log10(p), s=4, c="#1f4e79")
        lim = max(e.max(initial=1), 1)
        ax.plot([0, lim], [0, lim], color="red", lw=0.8)
        ax.set_xlabel("expected -log10 p", fontsize=11)
        ax.set_ylabel("observed -log10 p", fontsize=11)
        ax.tick_params(labelsize=10)
        ax.set_title(f"{tr}: lambda_gc = {lambda_gc(p):.3f}", fontsize=12)
    fig.tight_layout()
    return fig
