"""``simulate``: a bucketed dataset like an ingested one, with the stated parameters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

import daskmm
from daskmm.data.manifest import bucket_of, read_manifest
from daskmm.data.simulate import DEFAULTS, simulate
from daskmm.distributed.client import NO_DASHBOARD
from daskmm.errors import DataError


def test_dataset_and_manifest(client, tmp_path):
    m = simulate(tmp_path / "sim", 50_000, groups=300, crossed=20, buckets=4, seed=7,
                 client=client)
    parts = [pd.read_parquet(p) for p in m.bucket_paths(tmp_path / "sim")]
    assert [len(p) for p in parts] == m.rows and m.nrows == 50_000
    for j, p in enumerate(parts):
        assert (bucket_of(p["g"], 4) == j).all()
        assert list(p.columns) == ["y", "x", "g", "h", "ybin", "ycount"]
    whole = pd.concat(parts)
    for col in ("g", "h", "ybin", "ycount"):
        t = m.level_table(col, tmp_path / "sim")
        vc = whole[col].value_counts().sort_index()
        assert t["level"].tolist() == vc.index.tolist() and t["count"].tolist() == vc.tolist()
    assert set(whole["ybin"]) == {0, 1} and (whole["ycount"] >= 0).all()
    assert read_manifest(tmp_path / "sim").extra["simulation"]["seed"] == 7


def test_same_data_on_any_cluster(client, tmp_path):
    """Each bucket has its own random stream: 1 or 2 workers write identical files."""
    simulate(tmp_path / "a", 20_000, groups=100, crossed=10, buckets=3, seed=3, client=client)
    with LocalCluster(n_workers=1, threads_per_worker=1, **NO_DASHBOARD) as c, \
            Client(c, set_as_default=False) as c1:
        simulate(tmp_path / "b", 20_000, groups=100, crossed=10, buckets=3, seed=3, client=c1)
    for pa_, pb in zip(read_manifest(tmp_path / "a").bucket_paths(tmp_path / "a"),
                       read_manifest(tmp_path / "b").bucket_paths(tmp_path / "b")):
        pd.testing.assert_frame_equal(pd.read_parquet(pa_), pd.read_parquet(pb))


def test_fit_recovers_parameters(client, tmp_path):
    simulate(tmp_path / "sim", 200_000, groups=400, crossed=0, buckets=3, seed=11,
             client=client)
    fit = daskmm.lmm("y ~ x + (x | g)", str(tmp_path / "sim"), client=client)
    se = np.sqrt(np.diag(fit.vcov))
    assert abs(fit.beta[0] - DEFAULTS["beta0"]) < 4 * se[0]
    assert abs(fit.beta[1] - DEFAULTS["beta1"]) < 4 * se[1]
    assert fit.sigma == pytest.approx(DEFAULTS["sigma"], rel=0.01)
    vc = fit.varcorr()
    sd = vc[(vc["grp"] == "g") & vc["var2"].isna()].set_index("var1")["sdcor"]
    assert sd["(Intercept)"] == pytest.approx(DEFAULTS["sd0"], rel=0.15)
    assert sd["x"] == pytest.approx(DEFAULTS["sd1"], rel=0.15)


@pytest.mark.parametrize("kw, match", [
    ({"rows": 0}, "need rows >= 1"),
    ({"groups": 1}, "groups >= 2"),
    ({"params": {"beta3": 1.0}}, "unknown simulation parameter"),
])
def test_bad_arguments(client, tmp_path, kw, match):
    args = {"rows": 100, "groups": 10, **kw}
    with pytest.raises(DataError, match=match):
        simulate(tmp_path / "sim", client=client, **args)
    assert not (tmp_path / "sim").exists()
