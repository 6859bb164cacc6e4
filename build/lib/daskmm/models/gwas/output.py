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
    return df[RESULT_COLUMNS + ["variant_index"]]


def lambda_gc(p: np.ndarray) -> float:
    """Genomic control: the median 1-df chi-square of the p-values over its null median."""
    from scipy import stats

    p = np.asarray(p, float)
    p = p[np.isfinite(p)]
    if not len(p):
        return float("nan")
    return float(np.median(stats.chi2.isf(p, 1)) / stats.chi2.ppf(0.5, 1))


def plots(df: pd.DataFrame, chrom_order: list[str], out: Path) -> None:
    """``manhattan.png`` and ``qq.png``: one panel per trait."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traits = list(dict.fromkeys(df["trait"]))
    order = {c: i for i, c in enumerate(chrom_order)}
    fig, axes = plt.subplots(len(traits), 1, figsize=(10, 3 * len(traits)), squeeze=False)
    for ax, tr in zip(axes[:, 0], traits):
        d = df[df["trait"] == tr]
        ci = d["chrom"].map(order).to_numpy()
        span = d.groupby("chrom")["pos"].max().reindex(chrom_order).fillna(0).to_numpy()
        offset = np.concatenate([[0], np.cumsum(span)[:-1]])
        x = d["pos"].to_numpy() + offset[ci]
        lp = -np.log10(np.clip(d["p_value"].to_numpy(), 1e-300, 1))
        ax.scatter(x, lp, s=3, c=np.where(ci % 2, "#1f4e79", "#7f7f7f"))
        mid = offset + span / 2
        ax.set_xticks(mid, chrom_order, fontsize=7)
        ax.axhline(-np.log10(5e-8), color="red", lw=0.7, ls="--")
        ax.set_ylabel("-log10 p")
        ax.set_title(f"{tr}", fontsize=9)
    axes[-1, 0].set_xlabel("chromosome")
    fig.tight_layout()
    fig.savefig(out / "manhattan.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(traits), figsize=(4 * len(traits), 4), squeeze=False)
    for ax, tr in zip(axes[0], traits):
        p = np.sort(np.clip(df.loc[df["trait"] == tr, "p_value"].to_numpy(), 1e-300, 1))
        e = -np.log10((np.arange(1, len(p) + 1) - 0.5) / len(p))
        ax.scatter(e, -np.log10(p), s=3, c="#1f4e79")
        lim = max(e.max(initial=1), 1)
        ax.plot([0, lim], [0, lim], color="red", lw=0.7)
        ax.set_xlabel("expected -log10 p")
        ax.set_ylabel("observed -log10 p")
        ax.set_title(f"{tr}: lambda_gc {lambda_gc(p):.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "qq.png", dpi=100)
    plt.close(fig)
