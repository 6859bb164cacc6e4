"""daskmm's exact scan against FaST-LMM's ``single_snp`` (run here, from the test extras), on
every variant, in FaST-LMM's coding: effects per standard deviation of the variant.

Tolerances: with ``h2`` held at FaST-LMM's value, every number to 1e-9 relative (the formulas
agree). With each tool's own ``h2``: ``h2`` to 1e-6 relative; beta and SE to 1e-6 of
``max(|beta|, SE)``; -log10 p to 1e-6 of ``max(-log10 p, -log10 0.5)`` (for p near 1, -log10 p
is near 0 and a relative difference means nothing). FaST-LMM locates ``h2`` by Brent's
minimisation of the function values, to about 1e-8 (see
``test_h2_is_exact_where_fastlmm_is_coarser``), which moves a near-zero beta by ~1e-7 of its
SE: a relative tolerance on beta alone would test FaST-LMM's search, not the scan.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from bed_reader import open_bed

from daskmm.kernels import lmm_scan
from daskmm.models.gwas import gwas

fastlmm_assoc = pytest.importorskip("fastlmm.association")


def run_fastlmm(data, trait: str, loco: bool = True, pheno=None) -> pd.DataFrame:
    from pysnptools.snpreader import Bed, Pheno

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = Pheno(str(pheno or data.pheno))
        p = p[:, p.col_to_index([trait])]
        fr = fastlmm_assoc.single_snp(Bed(str(data.bed), count_A1=True), p,
                                      covar=Pheno(str(data.covar)), count_A1=True,
                                      leave_out_one_chrom=loco)
    return fr.set_index("SNP")


def genotype_sd(data, samples=None) -> pd.Series:
    """Population SD of each variant's calls (FaST-LMM's standardisation)."""
    with open_bed(str(data.bed)) as bed:
        G = bed.read(dtype="float64")
        sid = bed.sid
    if samples is not None:
        G = G[samples]
    return pd.Series(lmm_scan.variant_stats(G).sd, index=sid)


def ours(data, tmp_path, name, **kw) -> pd.DataFrame:
    r = gwas(bed=str(data.bed), pheno=str(kw.pop("pheno", data.pheno)), covar=str(data.covar),
             out=tmp_path / name, maf=0, plot=False, **kw)
    return r.results.set_index("variant_id"), r


def compare(mine: pd.DataFrame, ref: pd.DataFrame, sd: pd.Series, tol: float) -> None:
    ref = ref.loc[mine.index]
    s = sd.loc[mine.index].to_numpy()
    beta, se = mine["beta"].to_numpy() * s, mine["se"].to_numpy() * s  # per SD, as FaST-LMM
    rb, rse = ref["SnpWeight"].to_numpy(), ref["SnpWeightSE"].to_numpy()
    scale = np.maximum(np.abs(rb), rse)
    assert np.max(np.abs(beta - rb) / scale) < tol
    assert np.max(np.abs(se - rse) / rse) < tol
    lp, rlp = -np.log10(mine["p_value"].to_numpy()), -np.log10(ref["PValue"].to_numpy())
    assert np.max(np.abs(lp - rlp) / np.maximum(rlp, -np.log10(0.5))) < tol


@pytest.mark.parametrize("trait", ["y_causal", "y_null"])
def test_loco_scan_matches_single_snp_on_every_variant(gwas_data, tmp_path, trait):
    mine, res = ours(gwas_data, tmp_path, trait, pheno_name=[trait])
    ref = run_fastlmm(gwas_data, trait)
    assert len(mine) == gwas_data.n_variants == len(ref)
    compare(mine, ref, genotype_sd(gwas_data), 1e-6)
    h2 = {c: v["h2"] for c, v in res.document["traits"][trait]["null"].items()}
    ref_h2 = ref.groupby(ref["Chr"].astype(int).astype(str))["Nullh2"].first()
    for c, v in h2.items():
        assert v == pytest.approx(ref_h2[c], rel=1e-6)
    assert set(h2) == {"1", "2", "3"}


def test_scan_without_loco_matches_single_snp(gwas_data, tmp_path):
    mine, res = ours(gwas_data, tmp_path, "noloco", pheno_name=["y_causal"], loco=False)
    ref = run_fastlmm(gwas_data, "y_causal", loco=False)
    compare(mine, ref, genotype_sd(gwas_data), 1e-6)
    assert list(res.document["traits"]["y_causal"]["null"]) == ["all"]


def test_formulas_agree_to_rounding_at_fastlmm_h2(gwas_data):
    """The rotation and the per-variant test, at FaST-LMM's own h2: 1e-9."""
    ref = run_fastlmm(gwas_data, "y_causal")
    with open_bed(str(gwas_data.bed)) as bed:
        G = bed.read(dtype="float64")
        chrom, sid = bed.chromosome, bed.sid
    ph = pd.read_csv(gwas_data.pheno, sep=" ")
    cv = pd.read_csv(gwas_data.covar, sep=" ")
    X = np.c_[cv[["age", "sex"]].to_numpy(), np.ones(len(cv))]
    for c in np.unique(chrom):
        out = chrom != c
        st = lmm_scan.variant_stats(G[:, out])
        K = lmm_scan.symmetrize(lmm_scan.grm_update(None, lmm_scan.standardize(G[:, out], st)))
        h2 = ref.loc[sid[chrom == c], "Nullh2"].iloc[0]
        null = lmm_scan.fit_null(K, X, ph[["y_causal"]].to_numpy(), h2=np.array([h2]))
        stc = lmm_scan.variant_stats(G[:, ~out])
        r = lmm_scan.test_variants(null, lmm_scan.standardize(G[:, ~out], stc))
        rr = ref.loc[sid[~out]]
        assert np.allclose(r["beta"][:, 0], rr["SnpWeight"], rtol=1e-9, atol=1e-12)
        assert np.allclose(r["se"][:, 0], rr["SnpWeightSE"], rtol=1e-9, atol=0)
        assert np.allclose(r["p_value"][:, 0], rr["PValue"], rtol=1e-9, atol=0)


def test_h2_is_exact_where_fastlmm_is_coarser(gwas_data):
    """daskmm's h2 zeroes the REML derivative to rounding; FaST-LMM's stops within ~1e-8."""
    rng = np.random.default_rng(0)
    S = np.sort(rng.gamma(1.0, 1.0, 300))
    uy = rng.normal(size=300) * np.sqrt(0.4 * S + 0.6)
    h2, _ = lmm_scan.fit_h2(S, uy)
    assert 0 < h2 < 1
    assert abs(lmm_scan.neg_reml_grad(h2, S, uy)) < 1e-9
    eps = 1e-6
    numeric = (lmm_scan.neg_reml(h2 + eps, S, uy) - lmm_scan.neg_reml(h2 - eps, S, uy)) / 2 / eps
    assert numeric == pytest.approx(0, abs=1e-6)
    g = lmm_scan.neg_reml_grad(0.3, S, uy)
    num = (lmm_scan.neg_reml(0.3 + eps, S, uy) - lmm_scan.neg_reml(0.3 - eps, S, uy)) / 2 / eps
    assert g == pytest.approx(num, rel=1e-6)


def test_missing_trait_values_drop_those_samples_as_fastlmm(gwas_data, tmp_path):
    ph = pd.read_csv(gwas_data.pheno, sep=" ")
    ph.loc[::7, "y_causal"] = np.nan
    path = tmp_path / "pheno_na.txt"
    ph.to_csv(path, sep=" ", index=False, na_rep="NaN")  # pysnptools reads NaN
    mine, res = ours(gwas_data, tmp_path, "na", pheno=path, pheno_name=["y_causal"])
    ref = run_fastlmm(gwas_data, "y_causal", pheno=path)
    keep = ph["y_causal"].notna().to_numpy()
    compare(mine, ref, genotype_sd(gwas_data, keep), 1e-6)
    t = res.document["traits"]["y_causal"]
    assert t["samples_used"] == keep.sum()
    assert t["dropped_missing_trait"] == (~keep).sum()
    assert (mine["n"] <= keep.sum()).all()


@pytest.fixture(scope="module")
def sparse_data(tmp_path_factory):
    """Families in weak strata (Fst 0.005) and 6000 variants: at fastGWA's 0.05 the GRM keeps
    the families and no chance links."""
    from daskmm.models.gwas.simulate import simulate_gwas
    return simulate_gwas(tmp_path_factory.mktemp("sparse") / "sim", families=50, children=3,
                         unrelated=100, chromosomes=3, variants_per_chrom=2000, fst=0.005,
                         missing_rate=0.005, seed=3)


def sparse_grm(data, threshold=0.05) -> np.ndarray:
    """The sparse GRM built independently here (dense numpy): Z Z' / M over every variant,
    off-diagonal entries at or below the threshold set to 0, trace n."""
    with open_bed(str(data.bed)) as bed:
        G = bed.read(dtype="float64")
    Z = lmm_scan.standardize(G, lmm_scan.variant_stats(G))
    K = Z @ Z.T / G.shape[1]
    off = ~np.eye(len(K), dtype=bool)
    K[off & (K <= threshold)] = 0.0
    return K * (len(K) / np.trace(K))


@pytest.mark.parametrize("trait", ["y_causal", "y_null"])
def test_sparse_mode_matches_single_snp_given_the_same_sparse_grm(sparse_data, tmp_path,
                                                                    trait):
    """fastGWA's model, computed exactly: FaST-LMM run on the same thresholded GRM (a dense
    kernel, no LOCO) is the reference; same tolerances as the exact mode."""
    from pysnptools.kernelreader import KernelData
    from pysnptools.snpreader import Bed, Pheno

    K = sparse_grm(sparse_data)
    with open_bed(str(sparse_data.bed)) as bed:
        iid = np.c_[bed.fid, bed.iid]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = Pheno(str(sparse_data.pheno))
        ref = fastlmm_assoc.single_snp(
            Bed(str(sparse_data.bed), count_A1=True), p[:, p.col_to_index([trait])],
            K0=KernelData(iid=iid, val=K), covar=Pheno(str(sparse_data.covar)),
            count_A1=True, leave_out_one_chrom=False).set_index("SNP")
    r = gwas(bed=str(sparse_data.bed), pheno=str(sparse_data.pheno), pheno_name=[trait],
             covar=str(sparse_data.covar), out=tmp_path / "s", mode="sparse", maf=0,
             plot=False)
    mine = r.results.set_index("variant_id")
    compare(mine, ref, genotype_sd(sparse_data), 1e-6)
    null = r.document["traits"][trait]["null"]["all"]
    assert null["h2"] == pytest.approx(ref["Nullh2"].iloc[0], rel=1e-6)
    grm = r.document["sparse_grm"]["set0"]
    from scipy.sparse.csgraph import connected_components
    _, label = connected_components(K != 0, directed=False)
    sizes = np.bincount(label)
    assert grm["largest_group"] == sizes.max() == 5      # the families
    assert grm["groups_of_relatives"] == int((sizes > 1).sum()) >= 50
    assert grm["nonzero_off_diagonal"] == int((K != 0).sum() - len(K))
