"""Sizing and reading small inputs for an in-process fit (``daskmm.data.local``)."""

from __future__ import annotations

import gzip

import pandas as pd
import pytest

from daskmm.data.io import read_data
from daskmm.data.local import estimate_cells, estimate_rows, read_local
from daskmm.errors import DataError


@pytest.fixture
def frame():
    return pd.DataFrame({"y": [1.5, 2.0, 3.25] * 400, "g": ["a", "b", "c"] * 400,
                         "x": range(1200)})


def test_sizes_without_reading(frame, tmp_path):
    csv = tmp_path / "d.csv"
    frame.to_csv(csv, index=False)
    pq = tmp_path / "d.parquet"
    frame.to_parquet(pq)
    assert estimate_rows(frame) == 1200
    assert estimate_rows(pq) == 1200
    assert estimate_rows(tmp_path / "missing.csv") is None
    assert 1000 <= estimate_rows(csv) <= 1400  # bytes over the mean line length
    assert estimate_cells(frame, 3) == 3600
    assert estimate_rows("s3://bucket/data.parquet") is None
    assert estimate_rows(read_data(frame)) is None  # a dask DataFrame: the caller chose dask


def test_reads_what_the_dask_reader_reads(frame, tmp_path):
    csv = tmp_path / "d.csv.gz"
    with gzip.open(csv, "wt") as fh:
        frame.to_csv(fh, index=False)
    here = read_local(str(csv), None, ["y", "g"])
    there = read_data(str(csv)).compute()[["y", "g"]]
    assert list(here.columns) == ["y", "g"]
    pd.testing.assert_frame_equal(here.reset_index(drop=True), there.reset_index(drop=True),
                                  check_dtype=False)


def test_bad_csv_gets_the_same_message(tmp_path):
    bad = tmp_path / "dup.csv"
    bad.write_text("y,y\n1,2\n")
    with pytest.raises(DataError, match="names the column 'y' twice"):
        read_local(str(bad), None, ["y"])


def test_ragged_row_is_an_error_even_outside_the_used_columns(frame, tmp_path):
    """A row with an extra field fails to parse, as it does on a cluster, even when only the
    first columns are asked for (pandas' ``usecols`` alone would skip the extra field)."""
    lines = frame.to_csv(index=False).splitlines()
    lines[7] += ",7"
    bad = tmp_path / "ragged.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(pd.errors.ParserError, match="Expected 3 fields"):
        read_local(str(bad), None, ["y"])
    with pytest.raises(pd.errors.ParserError, match="Expected 3 fields"):
        read_data(str(bad)).compute()
