"""``daskmm gwas --trait-type binary``: the scan's numbers against a direct computation with the
kernels on the same genotypes, several traits in one pass against separate scans, a cluster
against this process, the sparse mode, the outputs and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from daskmm.distributed.client import NO_DASHBOARD
from daskmm.kernels import binary_null as BN
from daskmm.kernels import lmm_scan
from daskmm.kernels.binary_score import score_null, score_test, variance_ratio
from daskmm.kernels.firth import firth_logistic, firth_test
from daskmm.models.gwas import gwas
from daskmm.models.gwas.binary import BINARY_COLUMNS, imputed
from daskmm.models.gwas.genotypes import open_genotypes
from daskmm.models.gwas.simulate import simulate_gwas

NUM = ["beta", "se", "statistic", "p_value", "score", "score_var", "p_normal", "ac_cases",
       "ac_controls"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """520 samples (80 families of 4, 200 unrelated), 3 chromosomes x 200 variants, 1%
    missing calls; b_causal (5 causal variants, strong), b_null and b_null_2 at 20% cases."""
    return simulate_gwas(tmp_path_factory.mktemp("bin") / "sim", families=80, children=2,
                         unrelated=200, chromosomes=3, variants_per_chrom=200, causal=5,
                         causal_h2=0.7, populations=1, missing_rate=0.01, null_traits=2,
                         prevalence=0.2, seed=7)


def scan(data, out, **kw):
    kw.setdefault("execution", "in-process")
    return gwas(bed=str(data.bed)[:-4], pheno=str(data.pheno_binary), covar=str(data.covar),
                out=out, plot=False, trait_type="binary", maf=0.01, **kw)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    return scan(data, tmp_path_factory.mktemp("ref") / "scan", block_size=90)


def same(a, b, tol=1e-10):
    key = ["chrom", "pos", "variant_id", "trait"]
    assert (a[key].to_numpy() == b[key].to_numpy()).all()
    for c in NUM:
        x, y = a[c].to_numpy(float), b[c].to_numpy(float)
        assert np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-3)) < tol, c
    assert (a["spa"].to_numpy() == b["spa"].to_numpy()).all()
    assert (a["firth"].to_numpy() == b["firth"].to_numpy()).all()


def test_the_scan_is_the_direct_computation(data, reference):
    # chromosome 2 of b_null_2 and b_causal, LOCO, by the kernels on the whole genotype
    # matrix: the GRM of the variants that pass the filters, each trait's tau on all of it,
    # tau held with chromosome 2's part left out, the variance ratio on the recorded markers,
    # the score test, Firth's effects and the allele counts
    r = reference
    src = open_genotypes(str(data.bed)[:-4], None)
    G = src.read(None, 0, src.n_variants)
    st = lmm_scan.variant_stats(G)
    af = st.af
    keep = (np.minimum(af, 1 - af) >= 0.01) & (st.n_called >= 0.9 * len(G))
    chrom = src.variants["chrom"].astype(str).to_numpy()
    Z = lmm_scan.standardize(G[:, keep], lmm_scan.VariantStats(
        st.n_called[keep], st.mean[keep], st.sd[keep]))
    K = Z @ Z.T
    Zc = Z[:, chrom[keep] == "2"]
    Kl = K - Zc @ Zc.T
    K, Kl = K * len(K) / np.trace(K), Kl * len(Kl) / np.trace(Kl)
    ph = pd.read_csv(data.pheno_binary, sep=" ")
    cv = pd.read_csv(data.covar, sep=" ")
    X = np.column_stack([cv["age"], cv["sex"], np.ones(len(cv))])
    null = json.loads((r.path / "_null" / "2-0.json").read_text())
    ids = src.variants["variant_id"].to_numpy()
    M = imputed(G[:, np.flatnonzero(np.isin(ids, null["ratio_markers"]))])
    assert M.shape[1] == 30
    on2 = np.flatnonzero(keep & (chrom == "2"))
    Gi = imputed(G[:, on2])
    res = r.results
    for trait in ("b_null_2", "b_causal"):
        y = ph[trait].to_numpy(float)
        full = BN.pql_ai_reml(y, X, K)
        loco, _ = BN.pql_fixed_tau(y, X, Kl, full.tau, full.eta)
        comp = null["components"][trait]
        assert comp["tau"] == pytest.approx(full.tau, rel=1e-9, abs=1e-12)
        assert comp["reml_score"] == pytest.approx(full.score, rel=1e-6, abs=1e-12)
        np.testing.assert_allclose(comp["alpha"], loco.alpha, rtol=1e-9)
        ratio = variance_ratio(score_null(y, X, loco.mu, Kl, full.tau), M)
        assert comp["variance_ratio"] == pytest.approx(ratio, rel=1e-9)
        if trait == "b_causal":   # a family effect: relatives make G~'WG~ too large
            assert full.tau > 0.5 and 0.5 < ratio < 0.95
            assert abs(comp["reml_score"]) < 1e-9   # tau is the REML score's root
        else:                     # none: tau on its bound, the ratio 1
            assert full.tau == 0.0 and ratio == 1.0
            assert comp["reml_score"] < 0   # the score points out of the bound
        t = score_test(score_null(y, X, loco.mu), Gi, ratio)
        d = res[(res["trait"] == trait) & (res["chrom"] == "2")]
        np.testing.assert_allclose(d["score"], t.T, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(d["score_var"], t.var, rtol=1e-8)
        np.testing.assert_allclose(d["p_value"], t.p, rtol=1e-8)
        assert (d["spa"].to_numpy() == t.spa).all() and t.spa.any()
        case = y == 1
        Gc = np.nan_to_num(G[:, on2])
        np.testing.assert_array_equal(d["ac_cases"], Gc[case].sum(0))
        np.testing.assert_array_equal(d["ac_controls"], Gc[~case].sum(0))
        np.testing.assert_array_equal(d["n_cases"], (~np.isnan(G[case][:, on2])).sum(0))
        top = np.flatnonzero(t.p < 0.01)
        assert (d["firth"].to_numpy() == (t.p < 0.01)).all()
        offset = loco.eta - X @ loco.alpha
        fnull = firth_logistic(y, X, offset)
        for i in top[:5]:
            eff = firth_test(y, X, Gi[:, i], offset, fnull)[0]
            assert d["beta"].iloc[i] == pytest.approx(eff, rel=1e-8)
        other = np.flatnonzero(t.p >= 0.01)
        np.testing.assert_allclose(d["beta"].iloc[other], (t.T / t.var)[other], rtol=1e-10)
        # the SE is |effect| / sqrt(chi2) of the reported p-value: effect / se is its z
        from scipy.stats import chi2
        np.testing.assert_allclose(np.abs(d["beta"] / d["se"]) ** 2,
                                   chi2.isf(d["p_value"], 1), rtol=1e-8)


def test_the_causal_variants_are_found(data, reference):
    d = reference.results
    d = d[d["trait"] == "b_causal"]
    hits = set(d.loc[d["p_value"] < 1e-4, "variant_id"])
    assert len(hits & set(data.causal)) >= 3
    assert len(hits - set(data.causal)) <= 1
    summ = reference.document
    assert summ["trait_type"] == "binary"
    t = summ["traits"]["b_causal"]
    assert t["cases"] == 104 and t["controls"] == 416 and t["coding"] == "0/1"
    assert "b_causal (binary, 0/1): 104 cases, 416 controls" in reference.summary()
    assert list(reference.results.columns) == (
        ["chrom", "pos", "variant_id", "allele1", "allele2", "af", "n", "beta", "se",
         "statistic", "p_value"] + BINARY_COLUMNS + ["trait"])


def test_one_pass_for_several_traits_is_each_trait_alone(data, reference, tmp_path):
    alone = scan(data, tmp_path / "one", pheno_name=["b_null"], block_size=90)
    same(alone.results, reference.results[reference.results["trait"] == "b_null"]
         .reset_index(drop=True))


def test_on_a_cluster_the_binary_scan_is_the_one_in_process(data, reference, tmp_path):
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      **NO_DASHBOARD) as cl, Client(cl) as c:
        r = scan(data, tmp_path / "scan", client=c, block_size=250, execution="distributed")
    assert r.document["executed"] == "distributed"
    same(r.results, reference.results)


def test_plink_coding_is_read_and_a_trait_that_is_not_binary_is_refused(data, reference,
                                                                         tmp_path):
    ph = pd.read_csv(data.pheno_binary, sep=" ")
    plink = ph.assign(b_null=ph["b_null"] + 1)[["FID", "IID", "b_null"]]
    plink.loc[3, "b_null"] = -9   # missing, PLINK's way
    plink.to_csv(tmp_path / "plink.txt", sep=" ", index=False)
    r = gwas(bed=str(data.bed)[:-4], pheno=str(tmp_path / "plink.txt"), covar=str(data.covar),
             out=tmp_path / "p", plot=False, trait_type="binary", maf=0.01)
    t = r.document["traits"]["b_null"]
    assert t["coding"] == "1/2 (PLINK)" and t["dropped_missing_trait"] == 1
    assert t["cases"] == int(ph["b_null"].drop(index=3).sum())
    cmd = [sys.executable, "-m", "daskmm.cli", "gwas", "--bed", str(data.bed)[:-4],
           "--pheno", str(data.pheno), "--pheno-name", "y_null", "--trait-type", "binary",
           "--out", str(tmp_path / "q"), "-q"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    line = p.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "trait 'y_null' is not binary: it has the value" in line
    assert "code a binary trait 0/1 (control/case) or 1/2" in line


def test_the_sparse_mode_scans_binary_traits(data, tmp_path):
    # 600 variants make GRM noise of sd 0.04: a threshold of 0.2 keeps the families alone
    r = scan(data, tmp_path / "s", mode="sparse", pheno_name=["b_causal"],
             sparse_threshold=0.2)
    d = r.results
    assert r.document["mode"] == "sparse" and len(d) > 500
    assert np.isfinite(d["p_value"]).all()
    null = json.loads((r.path / "_null" / "all-0.json").read_text())
    assert null["sparse_grm"]["groups_of_relatives"] == 80
    assert null["sparse_grm"]["largest_group"] == 4
    assert null["components"]["b_causal"]["tau"] > 0.05
    hits = set(d.loc[d["p_value"] < 1e-4, "variant_id"])
    assert len(hits & set(data.causal)) >= 3


def test_an_unfinished_binary_scan_resumes(data, reference, tmp_path):
    # the finished scan's folder with chromosome 2's blocks lost and marked unfinished: a
    # rerun of the same scan computes those blocks alone and gives the same table
    import shutil

    out = tmp_path / "scan"
    shutil.copytree(reference.path, out)
    marker = out / "_daskmm.json"
    doc = json.loads(marker.read_text())
    marker.write_text(json.dumps(dict(doc, complete=False)))
    shutil.rmtree(out / "results.parquet" / "chrom=2")
    kept = {p: p.stat().st_mtime_ns for p in (out / "results.parquet").rglob("*.parquet")}
    r = scan(data, out, block_size=90)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert len(list((out / "results.parquet" / "chrom=2").glob("*.parquet"))) == 3
    same(r.results, reference.results)


def test_traits_of_both_types_scan_in_one_pass(data, reference, tmp_path):
    # a table holding a quantitative and a binary trait, typed per trait: each trait's rows
    # are those of its own type's scan
    ph = pd.read_csv(data.pheno, sep=" ").merge(pd.read_csv(data.pheno_binary, sep=" "))
    ph[["FID", "IID", "y_causal", "b_causal"]].to_csv(tmp_path / "both.txt", sep=" ",
                                                       index=False)
    kw = dict(bed=str(data.bed)[:-4], covar=str(data.covar), plot=False, maf=0.01,
              block_size=90, execution="in-process")
    r = gwas(pheno=str(tmp_path / "both.txt"), out=tmp_path / "both",
             trait_type={"b_causal": "binary"}, **kw)
    assert r.document["trait_type"] == "mixed"
    assert {t: v["trait_type"] for t, v in r.document["traits"].items()} == {
        "y_causal": "quantitative", "b_causal": "binary"}
    d = r.results
    ref = reference.results
    same(d[d["trait"] == "b_causal"].reset_index(drop=True),
         ref[ref["trait"] == "b_causal"].reset_index(drop=True))
    q = gwas(pheno=str(data.pheno), pheno_name=["y_causal"], out=tmp_path / "q", **kw).results
    mine = d[d["trait"] == "y_causal"].reset_index(drop=True)
    for c in ("beta", "se", "p_value"):
        np.testing.assert_allclose(mine[c], q[c], rtol=1e-12)
    assert mine["spa"].isna().all()   # the binary columns are empty on quantitative rows
    with pytest.raises(Exception, match="trait_type names the trait 'bmi', which is not "
                                        "scanned; the traits are y_causal, b_causal"):
        gwas(pheno=str(tmp_path / "both.txt"), out=tmp_path / "x", trait_type={"bmi": "binary"},
             **kw)
    cmd = [sys.executable, "-m", "daskmm.cli", "gwas", "--bed", str(data.bed)[:-4],
           "--pheno", str(tmp_path / "both.txt"), "--trait-type", "b_causal=binary", "bmi",
           "--out", str(tmp_path / "c"), "-q"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "--trait-type b_causal=binary bmi: give one type" in p.stderr
