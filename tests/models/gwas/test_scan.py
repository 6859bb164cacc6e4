"""The scan on a cluster: the same numbers whatever the workers and the variant blocks, and
known answers on simulated traits."""

from __future__ import annotations

import numpy as np
import pytest
from distributed import Client, LocalCluster

from daskmm.distributed.client import NO_DASHBOARD
from daskmm.models.gwas import gwas
from daskmm.models.gwas.scan import plan_blocks
from daskmm.models.gwas.simulate import simulate_gwas

COLS = ["beta", "se", "statistic", "p_value", "af"]


def scan(data, out, **kw):
    return gwas(bed=str(data.bed), pheno=str(data.pheno), covar=str(data.covar), out=out,
                maf=0, plot=False, **kw)


@pytest.fixture(scope="module")
def reference(gwas_data, tmp_path_factory):
    """In this process, one block a chromosome."""
    r = scan(gwas_data, tmp_path_factory.mktemp("ref") / "scan", block_size=10_000,
             execution="in-process")
    assert r.document["executed"] == "in-process"
    return r.results


def same(a, b, tol=1e-10):
    assert (a[["chrom", "pos", "variant_id", "trait"]].to_numpy()
            == b[["chrom", "pos", "variant_id", "trait"]].to_numpy()).all()
    for c in COLS:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        assert np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-3)) < tol, c


@pytest.mark.parametrize("workers,block_size", [(1, 37), (3, 100), (3, 1000)])
def test_results_do_not_depend_on_workers_or_blocks(gwas_data, tmp_path, reference, workers,
                                                    block_size):
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      **NO_DASHBOARD) as cl, Client(cl) as c:
        r = scan(gwas_data, tmp_path / "scan", client=c, block_size=block_size)
    assert r.document["executed"] == "distributed"
    same(r.results, reference)


def test_blocks_never_cross_chromosomes():
    chrom = np.array(["1"] * 5 + ["2"] * 3 + ["10"] * 4)
    blocks = plan_blocks(chrom, 2)
    assert [(b.chrom, b.start, b.stop) for b in blocks] == [
        ("1", 0, 2), ("1", 2, 4), ("1", 4, 5), ("2", 5, 7), ("2", 7, 8), ("10", 8, 10),
        ("10", 10, 12)]


@pytest.fixture(scope="module")
def bigger(tmp_path_factory):
    """800 samples, 4 x 5000 variants, eight null traits confounded by the strata."""
    return simulate_gwas(tmp_path_factory.mktemp("big") / "sim", families=100, children=4,
                         unrelated=200, chromosomes=4, variants_per_chrom=5000, causal=5,
                         causal_h2=0.3, null_traits=8, seed=5)


def test_null_traits_are_calibrated_and_causal_variants_are_found(bigger, tmp_path, client):
    """lambda_gc of a null trait: relatives make the tests of unlinked variants correlated, so
    one trait's lambda_gc scatters by about 0.03 around 1 here (seen over seeds); the mean
    over eight null traits is within 0.02 of 1, each within 0.1, and the causal variants
    are the most significant."""
    r = scan(bigger, tmp_path / "scan", client=client)
    lam = r.lambda_gc
    nulls = [v for k, v in lam.items() if k.startswith("y_null")]
    assert len(nulls) == 8
    assert abs(np.mean(nulls) - 1) < 0.02
    assert all(abs(v - 1) < 0.1 for v in nulls)
    res = r.results
    causal = res[res["trait"] == "y_causal"].set_index("variant_id")
    top = causal["p_value"].nsmallest(len(bigger.causal)).index
    assert set(top) == set(bigger.causal)
    assert (causal.loc[bigger.causal, "p_value"] < 1e-6).all()
    null_rows = res[res["trait"].str.startswith("y_null")]
    assert (null_rows["p_value"] > 5e-8).all()


def test_family_structure_gives_heritability_between_zero_and_one(bigger, tmp_path, client):
    r = scan(bigger, tmp_path / "scan", pheno_name=["y_causal"], client=client)
    h2 = [v["h2"] for v in r.document["traits"]["y_causal"]["null"].values()]
    assert len(h2) == 4 and all(0.05 < h < 0.95 for h in h2)


@pytest.fixture(scope="module")
def sparse_data(tmp_path_factory):
    return simulate_gwas(tmp_path_factory.mktemp("sparse") / "sim", families=50, children=3,
                         unrelated=100, chromosomes=3, variants_per_chrom=2000, fst=0.005,
                         seed=3)


@pytest.mark.parametrize("workers,tile,block_size", [(1, 64, 250), (3, 100, 1000)])
def test_sparse_mode_does_not_depend_on_workers_tiles_or_blocks(sparse_data, tmp_path,
                                                                monkeypatch, workers, tile,
                                                                block_size):
    from daskmm.models.gwas import scan as scan_mod

    ref = scan(sparse_data, tmp_path / "ref", mode="sparse", execution="in-process").results
    monkeypatch.setattr(scan_mod, "SPARSE_TILE", tile)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      **NO_DASHBOARD) as cl, Client(cl) as c:
        r = scan(sparse_data, tmp_path / "scan", client=c, mode="sparse",
                 block_size=block_size)
    same(r.results, ref)


def test_sparse_mode_refuses_a_group_of_relatives_too_large(sparse_data, tmp_path,
                                                           monkeypatch):
    from daskmm.errors import DataError
    from daskmm.models.gwas import api

    monkeypatch.setattr(api, "MAX_GROUP", 4)
    with pytest.raises(DataError, match=r"links 5 samples into one group .* raise the "
                       r"threshold \(--sparse-threshold\)"):
        scan(sparse_data, tmp_path / "s", mode="sparse")


def test_sparse_mode_has_no_loco(sparse_data, tmp_path):
    from daskmm.errors import DaskmmError

    with pytest.raises(DaskmmError, match="sparse mode has no LOCO"):
        scan(sparse_data, tmp_path / "s", mode="sparse", loco=True)
