"""The manifest of a partitioned dataset: what ``daskmm ingest`` and ``daskmm simulate`` write.

A dataset is a directory::

    DATASET/
      bucket-00000.parquet ... bucket-NNNNN.parquet   one file (one Dask partition) per bucket
      _levels/<column>.parquet                        levels of a categorical column, with counts
      _manifest.json                                  written last: its presence marks completion

Every row of a level of the partition key (``key``) is in the bucket ``hash(level) % buckets``
(:func:`bucket_of`), so a fit by that factor needs no shuffle. The manifest records the schema,
the rows per bucket, the missing values kept (or the rows dropped for them), where the data came
from (path, sizes, modification times), and for every categorical column
(strings, booleans, integers) its levels with their counts: a fit reads its encodings from
here instead of scanning the data again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from daskmm.data.confine import open_input
from daskmm.errors import DataError

MANIFEST = "_manifest.json"
LEVELS_DIR = "_levels"
FORMAT = "daskmm-dataset/1"


def bucket_of(values: pd.Series | np.ndarray, buckets: int) -> np.ndarray:
    """Bucket of every value: a stable hash (pandas' SipHash with its fixed key) modulo
    ``buckets``. Numbers hash by their float64 value, so ``3`` and ``3.0`` (a CSV block read
    as integers and another as floats) land together; anything else hashes by its text."""
    s = pd.Series(values) if not isinstance(values, pd.Series) else values
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        arr = s.to_numpy(dtype=np.float64)
    else:
        arr = s.astype(str).to_numpy(dtype=object)
    return (pd.util.hash_array(arr) % np.uint64(buckets)).astype(np.int64)


def is_level_column(dtype) -> bool:
    """Columns whose levels the manifest records: anything but floating point."""
    return not pd.api.types.is_float_dtype(dtype)


def bucket_file(i: int) -> str:
    return f"bucket-{i:05d}.parquet"


@dataclass
class Manifest:
    """What a dataset holds (see the module docstring).

    Attributes
    ----------
    key : str
        Partition key: all rows of one of its levels are in one bucket.
    buckets : int
    schema : dict
        Column -> pandas dtype name.
    rows : list of int
        Rows per bucket.
    levels : dict
        Categorical column -> ``{"n_levels": int, "file": "_levels/NNN.parquet"}`` (both None
        for a column with too many distinct values to be a factor, such as a row id).
    na_action : str
        ``"omit"`` or ``"fail"``.
    na_dropped : dict
        Column -> rows dropped for a missing value in it (a row counts once, under its first
        missing column); empty unless ``na_action`` is ``"omit"``.
    na_counts : dict
        Column -> missing values kept in it (``na_action: keep``): each fit drops the rows
        with a missing value in the columns it uses, as lme4's ``na.omit``.
    source : str
        What was ingested (an absolute path or URL, or ``"simulate"``).
    source_info : dict
        Provenance of a local source: ``{"files": [[path, size, mtime_ns], ...]}``, compared
        by :func:`~daskmm.data.provenance.is_stale`.
    extra : dict
        Anything else (the parameters of a simulation).
    """

    key: str
    buckets: int
    schema: dict[str, str]
    rows: list[int]
    levels: dict[str, dict]
    na_action: str = "omit"
    na_dropped: dict[str, int] = field(default_factory=dict)
    na_counts: dict[str, int] = field(default_factory=dict)
    source: str = ""
    source_info: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    format: str = FORMAT
    root = ""  # the directory it was read from (a class attribute: not written)

    @property
    def nrows(self) -> int:
        return int(sum(self.rows))

    def write(self, path: str | os.PathLike) -> None:
        (Path(path) / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")

    def bucket_paths(self, path: str | os.PathLike) -> list[str]:
        return [str(Path(path) / bucket_file(i)) for i in range(self.buckets)]

    def level_table(self, column: str, path: str | os.PathLike | None = None) -> pd.DataFrame:
        """``level, count`` of a categorical column, in sorted level order (``path``: the
        dataset directory, by default the one the manifest was read from)."""
        if column not in self.levels or self.levels[column].get("file") is None:
            raise DataError(f"the dataset manifest records no levels for column {column!r} "
                            f"(a floating-point column); levels are recorded for: "
                            f"{', '.join(sorted(self.levels)) or 'none'}")
        root = Path(path or self.root)
        name = str(self.levels[column]["file"])
        parts = Path(name).parts
        if Path(name).is_absolute() or not parts or any(p in ("..", ".") for p in parts):
            raise DataError(f"dataset {str(root)!r}: its manifest names the level file "
                            f"{name!r} for column {column!r}, which is not inside the dataset; "
                            "re-run the ingest")
        with open_input(root / name) as fh:
            return pd.read_parquet(fh)


def read_manifest(path: str | os.PathLike) -> Manifest | None:
    """The manifest of a dataset directory, or None when ``path`` is not a daskmm dataset."""
    p = Path(path) / MANIFEST
    if not p.is_file():
        return None
    try:
        with open_input(p, "r") as fh:
            d = json.loads(fh.read())
    except json.JSONDecodeError as exc:
        raise DataError(f"dataset manifest {str(p)!r} is not valid JSON ({exc}); "
                        "re-run the ingest") from exc
    if d.get("format") != FORMAT:
        raise DataError(f"dataset manifest {str(p)!r} has format {d.get('format')!r}; "
                        f"this daskmm reads {FORMAT!r}; re-run the ingest")
    m = Manifest(**d)
    m.root = str(path)
    return m
