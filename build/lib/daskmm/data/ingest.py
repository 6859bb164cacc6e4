"""``daskmm ingest``: any CSV or Parquet input to a dataset bucketed by a grouping level.

Two passes of Dask tasks, each holding at most one input block or one bucket in memory:

1. **split** (``daskmm-ingest-split-*``): each input block drops or rejects rows with missing
   values (``na_action``), computes every row's bucket (:func:`~daskmm.data.manifest.bucket_of`
   of the partition key) and writes one small Parquet piece per bucket it touches. It returns
   row counts, its dtypes and the level counts of its categorical columns; those are combined
   in a tree of tasks on the workers and written to ``_levels/`` there (a key with ``10^7``
   levels never passes through the client).
2. **compact** (``daskmm-ingest-compact-*``): each bucket's pieces are concatenated, cast to
   the dataset's one schema, and written as ``bucket-NNNNN.parquet``.

Everything is written under a temporary sibling directory, the manifest last, and the
directory is renamed into place: a killed ingest leaves no dataset that looks complete.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import uuid
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client

from daskmm.data.io import DataLike, read_data
from daskmm.data.manifest import (
    LEVELS_DIR,
    Manifest,
    bucket_file,
    bucket_of,
    is_level_column,
)
from daskmm.data.provenance import absolute_source, source_info
from daskmm.data.rows import DropCounts, missing_rows
from daskmm.data.staging import check_output, staging_dir
from daskmm.distributed.client import client_for
from daskmm.distributed.progress import track
from daskmm.errors import DataError

log = logging.getLogger("daskmm")

NA_ACTIONS = ("keep", "omit", "fail")
LEVEL_CAP = 10_000_000
"""A non-float column with more distinct values than this (a row id) gets no level table."""
ROWS_PER_BUCKET = 2_000_000
"""Default bucket size: a bucket is one partition of a fit, a few tens of MB in memory."""


def default_buckets(ddf, src: DataLike) -> int:
    """Buckets for about :data:`ROWS_PER_BUCKET` rows each (rows from Parquet footers, or
    estimated from a CSV's size at 25 bytes a row)."""
    rows = None
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
        if files and all(f.suffix in (".parquet", ".pq") for f in files):
            rows = sum(pq.read_metadata(f).num_rows for f in files)
        elif p.is_file():
            rows = p.stat().st_size // 25
    if rows is None:
        rows = ddf.npartitions * ROWS_PER_BUCKET // 4
    return max(1, min(4096, math.ceil(rows / ROWS_PER_BUCKET)))


# ------------------------------------------------------------------ pass 1: split
def _split(df: pd.DataFrame, i: int, key: str, buckets: int, tmp: str, na_action: str,
           level_cols: list[str]) -> dict:
    n_in = len(df)
    na: dict[str, int] = {}
    kept: dict[str, int] = {}
    if n_in:
        missing = df.isna()
        if missing.to_numpy().any():
            counts = missing.sum()
            if na_action == "fail":
                col = counts[counts > 0].index[0]
                raise DataError(
                    f"column {col!r} has {int(counts[col])} missing value(s) in input block "
                    f"{i} (na_action: fail); fill or drop them, or use na_action: keep")
            if na_action == "keep":
                kept = {str(c): int(k) for c, k in counts.items() if k}
            else:
                ok, na = missing_rows(df, list(df.columns))
                df = df.loc[ok]
    b = bucket_of(df[key], buckets)
    if buckets <= 2 ** 16:  # numpy's stable sort of 16-bit keys is a radix sort: O(n)
        b = b.astype(np.uint16)
    order = np.argsort(b, kind="stable")
    table = pa.Table.from_pandas(df.iloc[order], preserve_index=False)
    bs = b[order]
    counts = np.bincount(bs.astype(np.intp), minlength=buckets)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for j in np.flatnonzero(counts):
        d = Path(tmp) / "_parts" / f"b{j:05d}"
        d.mkdir(parents=True, exist_ok=True)
        # temporary pieces, read once by the compact pass: not worth compressing
        pq.write_table(table.slice(starts[j], counts[j]), d / f"p{i:06d}.parquet",
                       compression="none")
    levels = {c: df[c].value_counts(sort=False) for c in level_cols}
    return {"rows": counts, "na": na, "kept": kept,
            "dtypes": [{c: str(t) for c, t in df.dtypes.items()}], "levels": levels,
            "n_in": n_in}


def _combine(parts: list[dict]) -> dict:
    na = sum((DropCounts(p["na"]) for p in parts), DropCounts())
    kept = sum((DropCounts(p["kept"]) for p in parts), DropCounts())
    levels = {}
    for c in parts[0]["levels"]:
        if any(p["levels"][c] is None for p in parts):
            levels[c] = None
            continue
        s = pd.concat([p["levels"][c] for p in parts])
        s = s.groupby(level=0, sort=False).sum()
        levels[c] = s if len(s) <= LEVEL_CAP else None
    return {"rows": sum(p["rows"] for p in parts), "na": na, "kept": kept, "levels": levels,
            "dtypes": [d for p in parts for d in p["dtypes"]],
            "n_in": sum(p["n_in"] for p in parts)}


def _finish_levels(total: dict, tmp: str) -> dict:
    """Write ``_levels/<col>.parquet`` (sorted levels with counts) on the worker; return the
    small rest."""
    out = Path(tmp) / LEVELS_DIR
    out.mkdir(parents=True, exist_ok=True)
    levels = {}
    for i, (c, s) in enumerate(total["levels"].items()):
        if s is None:
            levels[c] = {"n_levels": None, "file": None,
                         "note": f"more than {LEVEL_CAP} distinct values: not recorded"}
            continue
        s = s[s > 0]
        try:
            s = s.sort_index()
        except TypeError:
            s = s.iloc[np.argsort(s.index.astype(str))]
        name = f"{LEVELS_DIR}/{i:03d}.parquet"
        pd.DataFrame({"level": s.index.to_numpy(), "count": s.to_numpy(dtype=np.int64)}) \
            .to_parquet(Path(tmp) / name, index=False)
        levels[c] = {"n_levels": int(len(s)), "file": name}
    return {"rows": total["rows"], "na": total["na"], "kept": total["kept"], "levels": levels,
            "dtypes": total["dtypes"], "n_in": total["n_in"]}


# ------------------------------------------------------------------ pass 2: compact
def _unify(dtypes: list[dict[str, str]], columns: list[str]) -> dict[str, str]:
    """One dtype per column over all blocks: integers read as floats in some CSV block
    become float64; mixed anything else is an error naming the column."""
    out = {}
    for c in columns:
        seen = {d[c] for d in dtypes if c in d}
        if len(seen) == 1:
            out[c] = seen.pop()
        elif all(t.startswith(("int", "uint", "float")) for t in seen):
            out[c] = "float64"
        else:
            raise DataError(f"column {c!r} is read with different types in different parts "
                            f"of the input ({', '.join(sorted(seen))}); make it one type")
    return out


def _arrow_schema(schema: dict[str, str], columns: list[str]) -> pa.Schema:
    empty = pd.DataFrame({c: pd.Series([], dtype=schema[c]) for c in columns})
    return pa.Schema.from_pandas(empty, preserve_index=False)


def _compact(j: int, tmp: str, schema: pa.Schema) -> int:
    d = Path(tmp) / "_parts" / f"b{j:05d}"
    pieces = sorted(d.glob("*.parquet")) if d.is_dir() else []
    tables = [pq.read_table(p).cast(schema) for p in pieces]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    pq.write_table(table, Path(tmp) / bucket_file(j))
    shutil.rmtree(d, ignore_errors=True)
    return table.num_rows


# ------------------------------------------------------------------ driver
def ingest(src: DataLike, by: str, out: str | os.PathLike, buckets: int | None = None,
           na_action: str = "keep", factors: list[str] | None = None,
           client: Client | str | None = None, force: bool = False) -> Manifest:
    """Write ``src`` as a dataset bucketed by ``by`` (see the module docstring).

    Parameters
    ----------
    src : str, path, pandas.DataFrame or dask.dataframe.DataFrame
        CSV or Parquet (local path or fsspec URL), or a frame.
    by : str
        Partition key: the grouping factor the fits will be partitioned by.
    out : path
        Dataset directory to create (a new folder, or a daskmm dataset with ``force``).
    buckets : int, optional
        Number of buckets (default: about :data:`ROWS_PER_BUCKET` rows each).
    na_action : {"keep", "omit", "fail"}
        Keep rows with missing values (default: each fit drops the rows missing a value in
        the columns it uses, as lme4's ``na.omit``, and reports them; the manifest counts
        the missing values per column), drop every row with a missing value in any column
        (counted per column in the manifest and in every fit's report), or stop with an
        error naming the column.
    factors : list of str, optional
        Floating-point columns whose levels should be recorded too.
    client : Client or str, optional
    force : bool
        Replace an existing dataset at ``out`` (never a folder daskmm did not write).

    Returns
    -------
    Manifest
    """
    if na_action not in NA_ACTIONS:
        raise DataError(f"na_action {na_action!r} is not allowed; use one of: "
                        f"{', '.join(NA_ACTIONS)}")
    if buckets is not None and buckets < 1:
        raise DataError(f"buckets must be a positive integer; got {buckets}")
    local_src = [src] if isinstance(src, (str, os.PathLike)) else []
    out = check_output(out, "dataset", force=force, inputs=local_src, what="dataset")
    source = absolute_source(src) if local_src else type(src).__name__
    provenance = source_info(source) if local_src else {}
    ddf = read_data(source if local_src else src)
    if by not in ddf.columns:
        raise DataError(f"partition key {by!r} is not a column of the data; available "
                        f"columns: {', '.join(map(str, ddf.columns))}")
    for f in factors or []:
        if f not in ddf.columns:
            raise DataError(f"column {f!r} named as a factor is not in the data; available "
                            f"columns: {', '.join(map(str, ddf.columns))}")
    nb = buckets or default_buckets(ddf, source if local_src else src)
    level_cols = [c for c in ddf.columns
                  if is_level_column(ddf.dtypes[c]) or c in (factors or []) or c == by]
    tok = uuid.uuid4().hex[:8]
    with staging_dir(out) as tmp:
        with client_for(client) as c:
            split = dask.delayed(_split, pure=False)
            parts = [split(p, i, by, nb, str(tmp), na_action, level_cols,
                           dask_key_name=f"daskmm-ingest-split-{tok}-{i}")
                     for i, p in enumerate(ddf.to_delayed())]
            level = 0
            while len(parts) > 1:
                parts = [dask.delayed(_combine, pure=False)(
                    parts[j:j + 8], dask_key_name=f"daskmm-ingest-combine-{tok}-{level}-{j}")
                    for j in range(0, len(parts), 8)]
                level += 1
            final = dask.delayed(_finish_levels, pure=False)(
                parts[0], str(tmp), dask_key_name=f"daskmm-ingest-levels-{tok}")
            fut = c.compute(final)
            track([fut], "ingest: split")
            total = read_errors(fut)
            if total["n_in"] == 0:
                raise DataError("the input has no rows; nothing to ingest")
            if int(total["rows"].sum()) == 0:
                raise DataError(f"every one of the {total['n_in']} input rows has a missing "
                                "value; nothing left to ingest")
            columns = [str(x) for x in ddf.columns]
            schema = _unify(total["dtypes"], columns)
            arrow = _arrow_schema(schema, columns)
            futs = [c.submit(_compact, j, str(tmp), arrow, key=f"daskmm-ingest-compact-{tok}-{j}")
                    for j in range(nb)]
            track(futs, "ingest: compact")
            rows = c.gather(futs)
        shutil.rmtree(tmp / "_parts", ignore_errors=True)
        manifest = Manifest(key=by, buckets=nb, schema=schema, rows=[int(r) for r in rows],
                            levels=total["levels"], na_action=na_action,
                            na_dropped=dict(total["na"]), na_counts=dict(total["kept"]),
                            source=source, source_info=provenance)
        _check_complete(manifest, tmp, int(total["n_in"]) - DropCounts(total["na"]).total)
        manifest.write(tmp)  # last: its presence marks a complete dataset
    dropped = sum(manifest.na_dropped.values())
    log.info("ingested %d rows into %d buckets by %r (%d dropped for missing values)",
             manifest.nrows, nb, by, dropped)
    return manifest


def read_errors(fut):
    """``fut.result()``, with a CSV parser's error (a ragged row, a bad value after the first
    block) turned into a :class:`DataError` naming the problem."""
    try:
        return fut.result()
    except DataError:
        raise
    except (ValueError, TypeError, pd.errors.ParserError, pa.ArrowException) as exc:
        raise DataError(f"cannot read the input: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_complete(manifest: Manifest, tmp: Path, expected: int) -> None:
    """Every bucket file is there and the rows add up, before the manifest is written: workers
    that wrote to a filesystem this process does not see (no shared storage) are an error,
    not a dataset with holes."""
    missing = [q for q in manifest.bucket_paths(tmp) if not os.path.exists(q)]
    if missing:
        raise DataError(f"bucket file {missing[0]!r} written by a worker is not visible here "
                        f"({len(missing)} of {manifest.buckets} missing); the workers and this "
                        "process need shared storage for the dataset")
    if manifest.nrows != expected:
        raise DataError(f"the buckets hold {manifest.nrows} rows but {expected} were read; "
                        "the dataset is incomplete: run the ingest again")
