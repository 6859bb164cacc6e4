"""Turn what the user passes (a path or URL, a pandas or dask DataFrame) into a dask DataFrame."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

import pandas as pd

from daskmm.data.confine import PROTOCOL, check_opened, confined_fs
from daskmm.data.provenance import absolute_source
from daskmm.errors import DataError

if TYPE_CHECKING:
    import dask.dataframe as dd

DataLike = Union[str, os.PathLike, pd.DataFrame, "dd.DataFrame"]



CSV_NA = {"keep_default_na": False, "na_values": ["NA", ""]}
"""Missing values in CSV files, as R's ``read.csv`` reads them: ``NA`` and empty fields only.
pandas' defaults also take ``None``, ``null``, ``N/A``, ``nan`` and others for missing, which
silently dropped the rows of a level called ``None`` (nlme's Alfalfa ``Date``)."""

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
    import dask.dataframe as dd

    if isinstance(data, dd.DataFrame):
        return data
    if isinstance(data, pd.DataFrame):
        check_frame(data)
        return dd.from_pandas(data, npartitions=npartitions or 1, sort=False)
    path, fs, paths, kind = locate(data)
    # under a service job's confinement the workers open local files through a filesystem
    # that checks each one once opened (:mod:`daskmm.data.confine`)
    checked = confined_fs() if "://" not in path else None
    if kind == "parquet":
        try:
            ddf = dd.read_parquet(path, columns=columns,
                                  **({"filesystem": checked} if checked is not None else {}))
        except DataError:
            raise
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DataError(f"cannot read Parquet data {path!r}: {exc}") from exc
        return ddf
    sep, compression = csv_checks(fs, paths[0], path)
    # a compressed file cannot be split into blocks: one partition per file
    blocksize = None if compression else os.environ.get("DASKMM_CSV_BLOCKSIZE", "64MB")
    if checked is not None:
        return dd.read_csv(f"{PROTOCOL}://{path}", sep=sep, usecols=columns,
                           blocksize=blocksize, compression=compression or "infer",
                           assume_missing=False, sample=2 ** 20,
                           storage_options={"roots": list(checked.roots)}, **CSV_NA)
    return dd.read_csv(path, sep=sep, usecols=columns, blocksize=blocksize,
                       compression=compression or "infer", assume_missing=False,
                       sample=2 ** 20, **CSV_NA)


def check_frame(data: pd.DataFrame) -> None:
    if len(data) == 0:
        raise DataError("the data frame is empty (0 rows); pass data with rows to fit")


def locate(data) -> tuple[str, object, list[str], str]:
    """``(path, filesystem, paths, "parquet" | "csv")`` of a path or URL, checked to exist and
    to be CSV or Parquet."""
    import fsspec

    path = absolute_source(data)
    try:
        fs, _, paths = fsspec.get_fs_token_paths(path)
    except ImportError as exc:
        scheme = path.split("://", 1)[0]
        pkg = _FS_PACKAGES.get(scheme, f"the fsspec backend for {scheme}://")
        raise DataError(f"reading {scheme}:// paths needs the {pkg} package, which is not "
                        f"installed; install it (pip install {pkg}) or copy the data to a "
                        "local path") from exc
    except ValueError as exc:
        raise DataError(f"data path {path!r} is not a path or URL daskmm can open: "
                        f"{exc}") from exc
    if not paths or not fs.exists(paths[0]):
        raise DataError(f"data path {path!r} does not exist; give a CSV file, a Parquet file "
                        "or a directory of Parquet files")
    lower = path.rstrip("/").lower()
    if fs.isdir(paths[0]) or lower.endswith((".parquet", ".pq")):
        if fs.isdir(paths[0]) and not fs.find(paths[0]):
            raise DataError(f"data directory {path!r} is empty; it should hold Parquet files")
        return path, fs, paths, "parquet"
    if lower.endswith(CSV_SUFFIXES):
        return path, fs, paths, "csv"
    raise DataError(f"data path {path!r} is neither CSV (.csv, .tsv, .txt, optionally "
                    ".gz/.bz2/.xz/.zst compressed) nor Parquet (.parquet or a directory); "
                    "convert it to one of those")


def csv_checks(fs, file: str, path: str) -> tuple[str, str | None]:
    """Check a CSV file (not empty, UTF-8, parseable head, no repeated column name); return
    its ``(separator, compression)``."""
    lower = path.rstrip("/").lower()
    if fs.size(file) == 0:
        raise DataError(f"data file {path!r} is empty; it needs a header row and data rows")
    compression = compression_of(lower)
    sep = "\t" if lower.removesuffix(f".{compression}" if compression else "").endswith(
        ".tsv") else ","
    try:
        with fs.open(file, compression=compression) as fh:
            check_opened(fh, file)
            head = pd.read_csv(fh, sep=sep, nrows=5)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"data file {path!r} is empty; it needs a header row and data "
                        "rows") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read CSV data {path!r}: it is not UTF-8 text "
                        f"({_first_line(exc)}); save it as UTF-8") from exc
    except (pd.errors.ParserError, OSError, EOFError) as exc:
        raise DataError(f"cannot read CSV data {path!r}: {_first_line(exc)}") from exc
    if len(head) == 0:
        raise DataError(f"data file {path!r} has a header but no data rows")
    _check_separator(head, path, sep)
    _check_header(fs, file, path, sep, compression)
    return sep, compression


_FS_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
                "abfs": "adlfs", "abfss": "adlfs", "hdfs": "pyarrow", "http": "aiohttp",
                "https": "aiohttp"}
_COMPRESSIONS = {"gz": "gzip", "bz2": "bz2", "xz": "xz", "zst": "zstd"}
CSV_SUFFIXES = tuple(f"{base}{comp}" for base in (".csv", ".tsv", ".txt")
                     for comp in ("", *(f".{c}" for c in _COMPRESSIONS)))


def compression_of(lower: str) -> str | None:
    ext = lower.rsplit(".", 1)[-1]
    return _COMPRESSIONS.get(ext)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _check_separator(head: pd.DataFrame, path: str, sep: str) -> None:
    """A header read as one column that holds another separator (``;`` from R's
    ``write.csv2`` or a European spreadsheet, a tab, ``|``) is an error naming it: read as is,
    every column name would be missing."""
    if head.shape[1] != 1:
        return
    name = str(head.columns[0])
    shown = {"\t": "a tab", ",": "','"}.get(sep, repr(sep))
    for other, what in ((";", "';'"), ("\t", "a tab"), ("|", "'|'"), (",", "','")):
        if other != sep and name.count(other) >= 1:
            fix = ("save it with commas (R: write.csv, not write.csv2; decimal points, not "
                   "commas)" if other == ";" else "save it with commas, or as .tsv when "
                   "tab-separated")
            raise DataError(f"data file {path!r} has one column, {name[:60]!r}: its separator "
                            f"looks like {what}, but daskmm reads {shown} from a "
                            f"{'.tsv' if sep == chr(9) else '.csv'} file; {fix}")


def _check_header(fs, file: str, path: str, sep: str, compression: str | None) -> None:
    """A header naming a column twice is an error: pandas would rename the second copy
    (``x.1``) and a model could silently use the wrong one."""
    import csv
    import io

    with fs.open(file, "rb", compression=compression) as fh:
        check_opened(fh, file)
        first = fh.readline().decode("utf-8", errors="replace")
    names = next(csv.reader(io.StringIO(first), delimiter=sep), [])
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(f"data file {path!r} names the column {n!r} twice in its header; "
                            "give every column its own name")
        seen.add(n)
