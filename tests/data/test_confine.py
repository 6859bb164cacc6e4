"""Reads confined to allowed folders are checked on the opened file: a link that leads out
is refused after opening, whatever the path looked like before."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from daskmm.data.confine import confined, open_input
from daskmm.data.local import read_local
from daskmm.errors import DataError


def test_a_link_out_of_the_roots_is_refused_once_opened(tmp_path):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    pd.DataFrame({"y": [1.0, 2.0]}).to_csv(outside / "secret.csv", index=False)
    pd.DataFrame({"y": [3.0, 4.0]}).to_csv(inside / "mine.csv", index=False)
    os.symlink(outside / "secret.csv", inside / "link.csv")
    os.symlink(outside, inside / "dirlink")
    with confined([str(inside)]):
        assert read_local(str(inside / "mine.csv"), None)["y"].tolist() == [3.0, 4.0]
        for p in (inside / "link.csv", inside / "dirlink" / "secret.csv"):
            with pytest.raises(DataError, match="leads outside the folders this job may read"):
                read_local(str(p), None)
            with pytest.raises(DataError, match="leads outside"):
                open_input(p).close()
    # no confinement: an ordinary open
    assert read_local(str(inside / "link.csv"), None)["y"].tolist() == [1.0, 2.0]


def test_parquet_buckets_are_checked_too(tmp_path):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    pd.DataFrame({"y": [1.0]}).to_parquet(outside / "b.parquet")
    (inside / "ds").mkdir()
    pd.DataFrame({"y": [2.0]}).to_parquet(inside / "ds" / "a.parquet")
    os.symlink(outside / "b.parquet", inside / "ds" / "b.parquet")
    with confined([str(inside)]), pytest.raises(DataError, match="leads outside"):
        read_local(str(inside / "ds"), None)
    os.unlink(inside / "ds" / "b.parquet")
    with confined([str(inside)]):
        assert read_local(str(inside / "ds"), None)["y"].tolist() == [2.0]
