"""``ingest``: every level in one bucket, a manifest that matches the data, NA handling, and
fits on the dataset equal to fits on the original input."""

from __future__ import annotations

import json

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import get_task_stream

import daskmm
from daskmm.data.ingest import ingest
from daskmm.data.manifest import MANIFEST, bucket_of, read_manifest
from daskmm.errors import DaskmmError, DataError
from tests.conftest import load_fixture


def frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 60, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=60)[g] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": g, "c": rng.choice(["lo", "mid", "hi"], n),
                         "s": [f"s{k % 7}" for k in range(n)]})


def read_buckets(path) -> list[pd.DataFrame]:
    m = read_manifest(path)
    return [pd.read_parquet(p) for p in m.bucket_paths(path)]


@pytest.mark.parametrize("buckets", [1, 4, 13])
def test_levels_in_one_bucket_and_manifest(client, tmp_path, buckets):
    df = frame()
    src = tmp_path / "in.parquet"
    df.to_parquet(src)
    m = ingest(str(src), "g", tmp_path / "ds", buckets=buckets, client=client)
    parts = read_buckets(tmp_path / "ds")
    assert len(parts) == buckets == m.buckets
    assert [len(p) for p in parts] == m.rows and m.nrows == len(df)
    owner = {}
    for j, p in enumerate(parts):
        assert (bucket_of(p["g"], buckets) == j).all()
        for lv in p["g"].unique():
            assert owner.setdefault(lv, j) == j
    assert set(owner) == set(df["g"])
    # level tables: counts match the data, levels sorted
    for col in ("g", "c", "s"):
        t = m.level_table(col, tmp_path / "ds")
        vc = df[col].value_counts().sort_index()
        assert t["level"].tolist() == vc.index.tolist()
        assert t["count"].tolist() == vc.tolist()
    assert "y" not in m.levels and "x" not in m.levels  # floats: no level table
    assert m.schema == {"y": "float64", "x": "float64", "g": "int64", "c": m.schema["c"],
                        "s": m.schema["s"]}
    whole = pd.concat(parts).sort_values(["g", "x"]).reset_index(drop=True)
    ref = df.sort_values(["g", "x"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(whole, ref, check_dtype=False)


def test_fit_on_dataset_equals_fit_on_csv(client, tmp_path):
    fx = load_fixture("sleepstudy_reml")
    ingest(fx["data_path"], "Subject", tmp_path / "ds", buckets=5, client=client)
    a = daskmm.lmm(fx["formula"], fx["data_path"], client=client)
    b = daskmm.lmm(fx["formula"], str(tmp_path / "ds"), client=client)
    assert b.objective == pytest.approx(fx["objective"], rel=1e-6)
    assert b.objective == pytest.approx(a.objective, rel=1e-10)
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-6)
    np.testing.assert_allclose(b.beta, a.beta, rtol=1e-8)


def _task_prefixes(client, fn) -> set[str]:
    with get_task_stream(client) as ts:
        out = fn()
    return out, {str(t["key"][0] if isinstance(t["key"], tuple) else t["key"]).rsplit("-", 2)[0]
                 for t in ts.data}


def test_categorical_levels_come_from_manifest(client, tmp_path):
    """With a manifest, a single-factor fit with categorical fixed effects runs no metadata
    pass (no ``daskmm-meta-*`` task in the scheduler's task stream); without one it does."""
    df = frame()
    ingest(df, "g", tmp_path / "ds", buckets=3, client=client)
    ref, keys = _task_prefixes(client, lambda: daskmm.lmm("y ~ x + c + (1 | g)", df,
                                                          client=client))
    assert any(k.startswith("daskmm-meta") for k in keys)
    fit, keys = _task_prefixes(client, lambda: daskmm.lmm("y ~ x + c + (1 | g)",
                                                          str(tmp_path / "ds"), client=client))
    assert not any(k.startswith("daskmm-meta") for k in keys)
    assert any(k.startswith("daskmm-stats") for k in keys)
    assert fit.fixef_names == ref.fixef_names == ["(Intercept)", "x", "clo", "cmid"]
    assert fit.objective == pytest.approx(ref.objective, rel=1e-10)


def _with_missing(n=500):
    df = frame(n)
    df.loc[[3, 10, 11], "y"] = np.nan
    df.loc[[10, 20], "x"] = np.nan  # row 10 counts once, under its first missing column
    df["c"] = df["c"].astype(object)
    df.loc[30, "c"] = None
    return df


def test_missing_values_kept_and_each_fit_drops_its_own(client, tmp_path):
    """By default ingest keeps every row (counting the missing values); a fit drops the rows
    missing a value it uses, and reports exactly pandas' count of incomplete rows."""
    df = _with_missing()
    m = ingest(df, "g", tmp_path / "ds", buckets=2, client=client)
    assert m.na_action == "keep" and m.na_dropped == {}
    assert m.na_counts == {"y": 3, "x": 2, "c": 1}
    assert m.nrows == len(df)
    fit = daskmm.lmm("y ~ x + (1 | g)", str(tmp_path / "ds"), client=client)
    assert fit.nobs == len(df[["y", "x", "g"]].dropna())
    assert fit.n_dropped == {"x": 2, "y": 2}  # sorted columns: row 10 counts under x
    fit_c = daskmm.lmm("y ~ x + c + (1 | g)", str(tmp_path / "ds"), client=client)
    assert fit_c.nobs == len(df[["y", "x", "c", "g"]].dropna())
    assert fit_c.to_dict()["rows"]["dropped"] == len(df) - fit_c.nobs
    # the levels of c are those of the complete rows (a missing c never becomes a level)
    assert fit_c.fixef_names == ["(Intercept)", "x", "clo", "cmid"]


def test_na_omit_counts_and_fail_names_column(client, tmp_path):
    df = _with_missing()
    m = ingest(df, "g", tmp_path / "ds", buckets=2, na_action="omit", client=client)
    assert m.na_dropped == {"y": 3, "x": 1, "c": 1}
    assert m.nrows == len(df) - 5 == len(df.dropna())
    fit = daskmm.lmm("y ~ x + (1 | g)", str(tmp_path / "ds"), client=client)
    assert fit.nobs == len(df) - 5
    rows = fit.to_dict()["rows"]
    assert rows["dropped_at_ingest"] == {"y": 3, "x": 1, "c": 1} and rows["dropped"] == 5
    assert "5 observations deleted due to missingness: at ingest" in fit.summary()
    with pytest.raises(DataError, match=r"column 'y' has 3 missing value\(s\).*na_action"):
        ingest(df, "g", tmp_path / "ds2", buckets=2, na_action="fail", client=client)
    assert not (tmp_path / "ds2").exists()
    assert not list(tmp_path.glob(".ds2.*"))


def test_int_and_float_blocks_unify(client, tmp_path):
    """A column read as integers in one file and floats in another becomes float64, and its
    levels hash alike (3 and 3.0 land in one bucket)."""
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table({"y": [1.0, 2.0, 3.0], "g": [1, 2, 3]}), d / "a.parquet")
    pq.write_table(pa.table({"y": [4.0, 5.0], "g": [3.0, 4.5]}), d / "b.parquet")
    ddf = dd.from_map(pd.read_parquet, [str(d / "a.parquet"), str(d / "b.parquet")])
    m = ingest(ddf, "g", tmp_path / "ds", buckets=4, client=client)
    assert m.schema["g"] == "float64"
    whole = pd.concat(read_buckets(tmp_path / "ds"))
    assert sorted(whole["g"]) == [1.0, 2.0, 3.0, 3.0, 4.5]
    b3 = [j for j, p in enumerate(read_buckets(tmp_path / "ds")) if (p["g"] == 3.0).any()]
    assert len(b3) == 1


def test_refuses_to_overwrite_and_force_replaces(client, tmp_path):
    df = frame(200)
    ingest(df, "g", tmp_path / "ds", buckets=2, client=client)
    with pytest.raises(DaskmmError, match="already holds a daskmm dataset; use --force"):
        ingest(df, "g", tmp_path / "ds", buckets=2, client=client)
    m = ingest(df.iloc[:100], "g", tmp_path / "ds", buckets=3, client=client, force=True)
    assert read_manifest(tmp_path / "ds").nrows == 100 == m.nrows
    assert json.loads((tmp_path / "ds" / MANIFEST).read_text())["buckets"] == 3


@pytest.mark.parametrize("bad, match", [
    ({"by": "nope"}, "partition key 'nope' is not a column"),
    ({"na_action": "drop"}, "na_action 'drop' is not allowed"),
    ({"buckets": 0}, "buckets must be a positive integer"),
])
def test_bad_arguments(client, tmp_path, bad, match):
    kw = {"by": "g", "buckets": 2, **bad}
    with pytest.raises(DataError, match=match):
        ingest(frame(100), kw.pop("by"), tmp_path / "ds", client=client, **kw)
    assert not (tmp_path / "ds").exists()


def test_manifest_is_not_written_over_missing_buckets(tmp_path):
    """Workers that wrote their buckets where this process cannot see them (no shared
    storage) make an error, not a dataset with holes."""
    from daskmm.data.ingest import _check_complete
    from daskmm.data.manifest import Manifest, bucket_file
    m = Manifest(key="g", buckets=3, schema={"y": "float64"}, rows=[2, 2, 2], levels={})
    for j in (0, 2):
        pq.write_table(pa.table({"y": [1.0, 2.0]}), tmp_path / bucket_file(j))
    with pytest.raises(DataError, match=r"bucket-00001.parquet.*1 of 3 missing.*shared storage"):
        _check_complete(m, tmp_path, 6)
    pq.write_table(pa.table({"y": [1.0, 2.0]}), tmp_path / bucket_file(1))
    with pytest.raises(DataError, match="hold 6 rows but 7 were read"):
        _check_complete(m, tmp_path, 7)
    _check_complete(m, tmp_path, 6)
