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


def test_dask_workers_read_through_the_checked_filesystem(tmp_path, client):
    """Under a confinement the partitions Dask reads on its workers are opened through
    :class:`ConfinedFileSystem`: a link out, met by a worker, is refused there."""
    from daskmm.data.io import read_data

    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    pd.DataFrame({"y": [1.0, 2.0], "g": ["a", "b"]}).to_csv(inside / "mine.csv", index=False)
    pd.DataFrame({"y": [3.0], "g": ["c"]}).to_csv(inside / "other.csv", index=False)
    with confined([str(inside)]):
        assert client.compute(read_data(str(inside / "other.csv"))).result()["y"].tolist() \
            == [3.0]
        ddf = read_data(str(inside / "mine.csv"))  # checked here: a regular file inside
        # swapped for a link once the reader was set up (as between a check and the read)
        pd.DataFrame({"y": [7.0, 8.0], "g": ["s", "t"]}).to_csv(outside / "s.csv", index=False)
        os.replace(inside / "mine.csv", inside / "old.csv")
        os.symlink(outside / "s.csv", inside / "mine.csv")
        with pytest.raises(DataError, match="leads outside"):
            client.compute(ddf).result()
    pd.DataFrame({"y": [1.0]}).to_parquet(outside / "p.parquet")
    os.symlink(outside / "p.parquet", inside / "p.parquet")
    with confined([str(inside)]), pytest.raises(DataError, match="leads outside"):
        client.compute(read_data(str(inside / "p.parquet"))).result()


def test_a_named_pipe_or_an_unverifiable_handle_is_refused_when_confined(tmp_path):
    import io
    import time

    from daskmm.data.confine import check_opened

    os.mkfifo(tmp_path / "pipe.csv")
    t = time.perf_counter()
    with confined([str(tmp_path)]), pytest.raises(DataError, match="not a regular file"):
        open_input(tmp_path / "pipe.csv")
    assert time.perf_counter() - t < 1.0  # opened without waiting for a writer
    with confined([str(tmp_path)]), pytest.raises(DataError, match="cannot be checked"):
        check_opened(io.BytesIO(b"x"), tmp_path / "x.csv.zst")


def test_a_manifest_points_nowhere_outside_its_dataset(tmp_path):
    """A manifest is a file a user can write: its level files must lie in the dataset, and
    under a confinement its recorded source is not probed when it lies outside."""
    import json

    from daskmm.data.manifest import read_manifest
    from daskmm.data.provenance import source_info, stale_reason
    from daskmm.data.simulate import simulate

    ds = tmp_path / "in" / "ds"
    simulate(ds, 2000, groups=20, crossed=0, buckets=2, seed=1)
    secret = tmp_path / "out" / "secret.parquet"
    secret.parent.mkdir()
    pd.DataFrame({"level": ["x"], "count": [1]}).to_parquet(secret)
    doc = json.loads((ds / "_manifest.json").read_text())
    col = next(c for c, v in doc["levels"].items() if v.get("file"))
    doc["levels"][col]["file"] = str(secret)
    (ds / "_manifest.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="not inside the dataset"):
        read_manifest(ds).level_table(col)
    recorded = source_info(secret)
    secret.write_bytes(b"changed")
    assert stale_reason(str(secret), recorded) is not None  # outside a service: looked at
    with confined([str(tmp_path / "in")]):
        assert stale_reason(str(secret), recorded) is None  # a service job: not probed
