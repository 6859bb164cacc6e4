"""Small data read here, into one pandas frame, for a fit in this process.

:func:`estimate_cells` sizes an input before anything is read (a frame's shape, Parquet
metadata, a dataset's manifest, a CSV file's bytes over its mean line length), so the choice
between this process and a cluster costs milliseconds. :func:`read_local` reads it with the
same checks as :func:`daskmm.data.io.read_data` (the same CSV checks, the same parser).
"""

from __future__ import annotations

import contextlib
import os

import pandas as pd

from daskmm.data.columns import ALL_COLUMNS
from daskmm.data.confine import active, check_opened, open_input
from daskmm.data.io import CSV_NA, check_frame, compression_of, csv_checks, locate
from daskmm.data.manifest import Manifest, read_manifest
from daskmm.errors import DataError

CSV_COMPRESSION_RATIO = 5.0
"""A compressed CSV's text is taken as this many times its size (an estimate; a wrong guess
only moves a borderline fit between this process and a cluster)."""


def estimate_cells(data, columns: int) -> int | None:
    """Rows x ``columns`` of ``data``, estimated without reading it; None when unknown (a
    dask DataFrame, a remote URL, a path that does not exist: those go to a cluster, or fail
    there with the reader's message)."""
    rows = estimate_rows(data)
    return None if rows is None else rows * max(columns, 1)


def estimate_rows(data) -> int | None:
    if isinstance(data, pd.DataFrame):
        return len(data)
    if not isinstance(data, (str, os.PathLike)) or "://" in os.fspath(data):
        return None
    path = os.path.abspath(os.fspath(data))
    manifest = read_manifest(path)
    if manifest is not None:
        return int(manifest.nrows)
    lower = path.rstrip("/").lower()
    try:
        if os.path.isdir(path) or lower.endswith((".parquet", ".pq")):
            return _parquet_rows(path)
        size = os.path.getsize(path)
        if compression_of(lower):
            return int(size * CSV_COMPRESSION_RATIO / 20)
        with open_input(path, "rb") as fh:  # no waiting on a named pipe, when confined
            head = fh.read(1 << 16)
        if not head:
            return 0  # empty: the reader says so
        lines = max(head.count(b"\n"), 1)
        return int(size / (len(head) / lines)) + 1
    except (OSError, DataError):
        return None


def _parquet_rows(path: str, max_files: int = 2000) -> int | None:
    import pyarrow.parquet as pq

    if os.path.isdir(path):
        files = []
        for root, _, names in os.walk(path):
            files += [os.path.join(root, n) for n in names
                      if not n.startswith((".", "_")) and n.endswith((".parquet", ".pq"))]
            if len(files) > max_files:
                return None
    else:
        files = [path]
    try:
        total = 0
        for f in files:
            with open_input(f) as fh:
                total += pq.read_metadata(fh).num_rows
        return total
    except Exception:  # not Parquet after all, or refused: let the reader say so
        return None


def read_local(data, manifest: Manifest | None, columns: list[str] | None = None
               ) -> pd.DataFrame:
    """``data`` as one pandas frame (only the ``columns`` present, when given)."""
    if isinstance(data, pd.DataFrame):
        check_frame(data)
        return data
    if not isinstance(data, (str, os.PathLike)):  # a dask DataFrame asked to run here
        return data.compute(scheduler="sync")
    if manifest is not None:
        return _read_parquet(manifest.bucket_paths(data), columns, os.fspath(data))
    path, fs, paths, kind = locate(data)
    if kind == "parquet":
        files = paths
        if fs.isdir(paths[0]):
            files = sorted(f for f in fs.find(paths[0])
                           if not os.path.basename(f).startswith((".", "_")))
        return _read_parquet(files, columns, path)
    sep, compression = csv_checks(fs, paths[0], path)
    # every column is parsed: with ``usecols`` pandas ignores a row's extra fields, and a
    # ragged row must be an error here as on a cluster
    with fs.open(paths[0], compression=compression) as fh:
        check_opened(fh, paths[0])
        frame = pd.read_csv(fh, sep=sep, **CSV_NA)
    every = [str(c) for c in frame.columns]
    if columns:
        frame = frame[[c for c in columns if c in frame.columns]]
    frame.attrs[ALL_COLUMNS] = every
    return frame


def _read_parquet(files: list[str], columns: list[str] | None, what: str) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        tables = []
        cols = None
        names: list[str] = []
        for i, f in enumerate(files):
            # under a confinement (a service job) each file is checked once opened, and read
            # from that open file; otherwise by path, as pyarrow reads fastest
            with open_input(f) if active() is not None else contextlib.nullcontext(f) as src:
                if i == 0:
                    names = [n for n in pq.read_schema(src).names
                             if not n.startswith("__index_level_")]
                    cols = [c for c in columns if c in names] if columns else None
                    if not isinstance(src, str):
                        src.seek(0)
                tables.append(pq.read_table(src, columns=cols))
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"cannot read Parquet data {what!r}: {exc}") from exc
    frame = table.to_pandas()
    frame.attrs[ALL_COLUMNS] = names
    return frame
