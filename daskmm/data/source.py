"""An input opened once (:class:`Source`): a path or URL (CSV, Parquet, a daskmm dataset), a
pandas or a dask DataFrame. Its kind, size and manifest are worked out when it is opened, once
(the manifest read and checked, a stale source warned about, once); it then yields a pandas
frame (a fit in this process) or a dask frame (on a cluster) as often as a fit and its results
need, without reading the manifest again.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from daskmm.data.confine import confined_fs
from daskmm.data.io import DataLike, read_data
from daskmm.data.local import estimate_rows, read_local
from daskmm.data.manifest import Manifest, read_manifest
from daskmm.data.provenance import absolute_source, stale_reason
from daskmm.errors import DataError

if TYPE_CHECKING:
    import dask.dataframe as dd

KINDS = ("frame", "dask", "dataset", "url", "file")


@dataclass
class Source:
    """One input, opened once.

    Attributes
    ----------
    data : str, pandas.DataFrame or dask.dataframe.DataFrame
        A local path made absolute (workers on other machines resolve no relative path of
        ours), a URL as given, or the frame.
    manifest : Manifest or None
        The checked manifest of a dataset written by ``daskmm ingest`` or ``daskmm simulate``.
    """

    data: object
    manifest: Manifest | None = None

    @classmethod
    def open(cls, data: DataLike | Source) -> Source:
        """Open ``data`` (a :class:`Source` is returned as it is): a dataset's manifest is
        read and checked here (every bucket present; a stale source warned about)."""
        if isinstance(data, Source):
            return data
        if not (isinstance(data, (str, os.PathLike)) and "://" not in os.fspath(data)):
            return cls(data)
        path = absolute_source(data)
        manifest = read_manifest(path)
        if manifest is not None:
            missing = [q for q in manifest.bucket_paths(path) if not os.path.exists(q)]
            if missing:
                raise DataError(f"dataset {path!r} is incomplete: {missing[0]!r} is missing; "
                                "re-run the ingest")
            stale = stale_reason(manifest.source, manifest.source_info)
            if stale:
                warnings.warn(f"dataset {path!r} may be stale: {stale}; fitting it as "
                              "ingested (re-run daskmm ingest to fit the current data)",
                              stacklevel=4)
        return cls(path, manifest)

    @property
    def kind(self) -> str:
        """``"frame"`` (pandas), ``"dask"``, ``"dataset"`` (daskmm's), ``"url"`` or
        ``"file"`` (a local CSV or Parquet file or folder)."""
        if isinstance(self.data, pd.DataFrame):
            return "frame"
        if not isinstance(self.data, (str, os.PathLike)):
            return "dask"
        if self.manifest is not None:
            return "dataset"
        return "url" if "://" in os.fspath(self.data) else "file"

    def rows(self) -> int | None:
        """Rows, known without reading the data (a frame's length, the manifest's count,
        Parquet metadata, a CSV file's size over its mean line length); None when unknown."""
        if self.manifest is not None:
            return int(self.manifest.nrows)
        return estimate_rows(self.data)

    def cells(self, columns: int) -> int | None:
        """Rows times ``columns`` (what decides between this process and a cluster)."""
        rows = self.rows()
        return None if rows is None else rows * max(columns, 1)

    def read(self, *, local: bool = False, columns: list[str] | None = None,
             npartitions: int | None = None) -> pd.DataFrame | dd.DataFrame:
        """The rows: here as one pandas frame (``local``; only the ``columns`` present, when
        given), else lazily as a dask frame (a dataset one partition a bucket)."""
        if local:
            return read_local(self.data, self.manifest, columns)
        return self.frame(npartitions)

    def frame(self, npartitions: int | None = None) -> dd.DataFrame:
        """The rows as a dask frame (a dataset one partition a bucket)."""
        if self.manifest is not None:
            import dask.dataframe as dd
            fs = confined_fs()
            return dd.read_parquet(self.manifest.bucket_paths(self.data),
                                   split_row_groups=False,
                                   **({"filesystem": fs} if fs is not None else {}))
        return read_data(self.data, npartitions)


def open_data(data: DataLike, npartitions: int | None = None, *, local: bool = False,
              columns: list[str] | None = None
              ) -> tuple[pd.DataFrame | dd.DataFrame, Manifest | None]:
    """``(rows, manifest)`` of ``data`` (:meth:`Source.read`), for callers that need no
    more of the source."""
    src = Source.open(data)
    return src.read(local=local, columns=columns, npartitions=npartitions), src.manifest
