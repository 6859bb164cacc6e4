"""Turn what the user passes (a path or URL, a pandas or dask DataFrame) into a dask DataFrame."""

from __future__ import annotations

import os

import dask.dataframe as dd
import fsspec
import pandas as pd

from daskmm.data.manifest import Manifest, read_manifest
from daskmm.errors import DataError

DataLike = str | os.PathLike | pd.DataFrame | dd.DataFrame


def open_data(data: DataLike, npartitions: int | None = None
              ) -> tuple[dd.DataFrame, Manifest | None]:
    """:func:`read_data`, and the dataset's manifest when ``data`` is a local dataset written
    by ``daskmm ingest`` or ``daskmm simulate`` (one partition per bucket), else None."""
    if isinstance(data, (str, os.PathLike)) and "://" not in os.fspath(data):
        manifest = read_manifest(data)
        if manifest is not None:
            paths = manifest.bucket_paths(data)
            missing = [q for q in paths if not os.path.exists(q)]
            if missing:
                raise DataError(f"dataset {os.fspath(data)!r} is incomplete: {missing[0]!r} "
                                "is missing; re-run the ingest")
            return dd.read_parquet(paths, split_row_groups=False), manifest
    return read_data(data, npartitions), None


def read_data(data: DataLike, npartitions: int | None = None,
              columns: list[str] | None = None) -> dd.DataFrame:
    """Open ``data`` lazily as a dask DataFrame.

    Parameters
    ----------
    data : str, path, pandas.DataFrame or dask.dataframe.DataFrame
        A CSV file, a Parquet file or a directory of Parquet files (local or any fsspec URL:
        ``s3://``, ``gs://``), or a frame already in memory.
    npartitions : int, optional
        For a pandas DataFrame: how many partitions to split it into (default 1).
    columns : list of str, optional
        Read only these columns (Parquet).

    Raises
    ------
    DataError
        When the path does not exist, the file is empty, or the format is not CSV or Parquet.
    """
    if isinstance(data, dd.DataFrame):
        return data
    if isinstance(data, pd.DataFrame):
        if len(data) == 0:
            raise DataError("the data frame is empty (0 rows); pass data with rows to fit")
        return dd.from_pandas(data, npartitions=npartitions or 1, sort=False)
    path = os.fspath(data)
    fs, _, paths = fsspec.get_fs_token_paths(path)
    if not paths or not fs.exists(paths[0]):
        raise DataError(f"data path {path!r} does not exist; give a CSV file, a Parquet file "
                        "or a directory of Parquet files")
    lower = path.rstrip("/").lower()
    if fs.isdir(paths[0]) or lower.endswith((".parquet", ".pq")):
        if fs.isdir(paths[0]) and not fs.find(paths[0]):
            raise DataError(f"data directory {path!r} is empty; it should hold Parquet files")
        try:
            ddf = dd.read_parquet(path, columns=columns)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DataError(f"cannot read Parquet data {path!r}: {exc}") from exc
    elif lower.endswith((".csv", ".csv.gz", ".txt", ".tsv")):
        if fs.size(paths[0]) == 0:
            raise DataError(f"data file {path!r} is empty; it needs a header row and data rows")
        sep = "\t" if lower.endswith(".tsv") else ","
        try:
            head = pd.read_csv(fs.open(paths[0]), sep=sep, nrows=5)
        except pd.errors.EmptyDataError as exc:
            raise DataError(f"data file {path!r} is empty; it needs a header row and data "
                            "rows") from exc
        if len(head) == 0:
            raise DataError(f"data file {path!r} has a header but no data rows")
        ddf = dd.read_csv(path, sep=sep, usecols=columns, blocksize="64MB",
                          assume_missing=False, sample=2 ** 20)
        # pandas guesses dtypes per block; read the typed head of the whole file for ints/floats
    else:
        raise DataError(f"data path {path!r} is neither CSV (.csv, .tsv) nor Parquet "
                        "(.parquet or a directory); convert it to one of those")
    return ddf
