"""Genotype and sample inputs: Zarr equals .bed, samples matched by id (never by position),
and bad input gets one line naming the file, column or sample."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from bed_reader import open_bed, to_bed

from daskmm.errors import DataError
from daskmm.models.gwas import gwas
from daskmm.models.gwas.genotypes import BedGenotypes, ZarrGenotypes


def cli(*args):
    return subprocess.run([sys.executable, "-m", "daskmm.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def scan(tmp_path, name="s", **kw):
    kw.setdefault("plot", False)
    kw.setdefault("maf", 0)
    return gwas(out=tmp_path / name, **kw)


def test_zarr_store_from_gwas_ingest_gives_the_bed_results(gwas_data, tmp_path):
    store = tmp_path / "geno.zarr"
    p = cli("gwas-ingest", "--bed", str(gwas_data.bed)[:-4], "--out", store,
            "--chunk-variants", "128")
    assert p.returncode == 0, p.stderr
    z = ZarrGenotypes(store)
    b = BedGenotypes(gwas_data.bed)
    assert (z.variants == b.variants).all().all()
    g1, g2 = z.read(None, 100, 300), b.read(None, 100, 300)
    assert np.array_equal(np.isnan(g1), np.isnan(g2))
    assert np.array_equal(np.nan_to_num(g1, nan=-1), np.nan_to_num(g2, nan=-1))
    # the store's samples are named by IID alone: a pheno table keyed by IID matches them
    ph = pd.read_csv(gwas_data.pheno, sep=" ").drop(columns="FID")
    ph.to_csv(tmp_path / "pheno_iid.csv", index=False)
    cv = pd.read_csv(gwas_data.covar, sep=" ").drop(columns="FID")
    cv.to_csv(tmp_path / "covar_iid.csv", index=False)
    rz = scan(tmp_path, "z", zarr=str(store), pheno=str(tmp_path / "pheno_iid.csv"),
              covar=str(tmp_path / "covar_iid.csv")).results
    rb = scan(tmp_path, "b", bed=str(gwas_data.bed), pheno=str(gwas_data.pheno),
              covar=str(gwas_data.covar)).results
    for c in ("beta", "se", "p_value", "af", "n"):
        assert np.allclose(rz[c], rb[c], rtol=1e-12, atol=0)
    assert (rz["allele1"] == rb["allele1"]).all()


def test_shuffled_pheno_rows_give_the_same_results(gwas_data, tmp_path):
    ph = pd.read_csv(gwas_data.pheno, sep=" ").sample(frac=1, random_state=3)
    ph.to_csv(tmp_path / "shuffled.txt", sep="\t", index=False)
    a = scan(tmp_path, "a", bed=str(gwas_data.bed), pheno=str(gwas_data.pheno)).results
    b = scan(tmp_path, "b", bed=str(gwas_data.bed), pheno=str(tmp_path / "shuffled.txt")).results
    assert np.allclose(a["beta"], b["beta"], rtol=1e-12, atol=0)


def test_samples_missing_from_the_pheno_table_are_counted(gwas_data, tmp_path):
    ph = pd.read_csv(gwas_data.pheno, sep=" ").iloc[20:]
    ph.to_csv(tmp_path / "fewer.txt", sep=" ", index=False)
    r = scan(tmp_path, bed=str(gwas_data.bed), pheno=str(tmp_path / "fewer.txt"))
    t = r.document["traits"]["y_causal"]
    assert t["samples_used"] == gwas_data.n_samples - 20
    assert r.document["samples"]["in_pheno"] == gwas_data.n_samples - 20


def write_variants(tmp_path, G, n_fam):
    n, m = G.shape
    to_bed(tmp_path / "g.bed", G, properties={
        "fid": [f"F{i}" for i in range(n)], "iid": [f"I{i}" for i in range(n)],
        "sid": [f"v{j}" for j in range(m)], "chromosome": ["1"] * (m // 2) + ["2"] * (m - m // 2),
        "bp_position": np.arange(m) + 1})
    rng = np.random.default_rng(1)
    pd.DataFrame({"FID": [f"F{i}" for i in range(n)], "IID": [f"I{i}" for i in range(n)],
                  "y": rng.normal(size=n)}).to_csv(tmp_path / "p.txt", sep=" ", index=False)
    return tmp_path / "g.bed", tmp_path / "p.txt"


def test_monomorphic_and_all_missing_variants_are_skipped_and_listed(tmp_path):
    rng = np.random.default_rng(0)
    G = rng.binomial(2, 0.3, size=(200, 40)).astype(np.float32)
    G[:, 3] = 1.0                # monomorphic
    G[:, 25] = np.nan            # all missing
    G[:150, 30] = np.nan         # 75% missing
    G[:, 31] = 0
    G[0, 31] = 1                 # minor allele frequency 0.0025
    bed, ph = write_variants(tmp_path, G, 200)
    r = gwas(bed=str(bed), pheno=str(ph), out=tmp_path / "s", plot=False)
    sk = pd.read_parquet(tmp_path / "s" / "skipped.parquet").set_index("variant_id")
    assert sk.loc["v3", "reason"] == "monomorphic"
    assert sk.loc["v25", "reason"] == "all_missing"
    assert sk.loc["v30", "reason"] == "missing_rate"
    assert sk.loc["v31", "reason"] == "maf"
    res = r.results
    assert len(res) == 36 and not set(sk.index) & set(res["variant_id"])
    assert r.document["traits"]["y"]["variants_skipped"] == {
        "monomorphic": 1, "all_missing": 1, "missing_rate": 1, "maf": 1}


@pytest.mark.parametrize("case,match", [
    ("truncated", r"has \d+ bytes, but its \.fam \(200 samples\) and \.bim \(40 variants\)"),
    ("no_bim", r"g\.bim' does not exist"),
    ("ids", r"no sample of --pheno .* matches a genotyped sample \(table: X0 I0"),
    ("one_value", r"trait 'y' has one value \(1\) in its 200 samples"),
    ("no_column", r"--pheno .* has no column 'height'; its columns are FID, IID, y"),
    ("text_covariate",
     r"--covar column 'site' has a value that is not a number: 'south' \(data row 1\)"),
    ("duplicate", r"lists the sample 'F5 I5' twice"),
    ("ragged", r"--pheno .*p\.txt' line 3 has 4 fields; its header has 3"),
    ("one_chrom_loco", r"LOCO needs variants on two or more chromosomes"),
])
def test_bad_input_gets_one_line(tmp_path, case, match):
    rng = np.random.default_rng(0)
    G = rng.binomial(2, 0.3, size=(200, 40)).astype(np.float32)
    bed, ph = write_variants(tmp_path, G, 200)
    args = ["gwas", "--bed", str(bed)[:-4], "--pheno", ph, "--out", tmp_path / "out"]
    t = pd.read_csv(ph, sep=" ")
    if case == "truncated":
        with open(bed, "r+b") as f:
            f.truncate(bed.stat().st_size - 7)
    elif case == "no_bim":
        (tmp_path / "g.bim").unlink()
    elif case == "ids":
        t.assign(FID="X" + t["FID"].str[1:]).to_csv(ph, sep=" ", index=False)
    elif case == "one_value":
        t.assign(y=1.0).to_csv(ph, sep=" ", index=False)
    elif case == "no_column":
        args += ["--pheno-name", "height"]
    elif case == "text_covariate":
        t.assign(site=np.where(np.arange(200) % 2, "north", "south"))[
            ["FID", "IID", "site"]].to_csv(tmp_path / "c.txt", sep=" ", index=False)
        args += ["--covar", tmp_path / "c.txt"]
    elif case == "ragged":
        lines = ph.read_text().splitlines()
        lines[2] += " 7"
        ph.write_text("\n".join(lines) + "\n")
    elif case == "duplicate":
        pd.concat([t, t.iloc[[5]]]).to_csv(ph, sep=" ", index=False)
    elif case == "one_chrom_loco":
        bim = pd.read_csv(tmp_path / "g.bim", sep="\t", header=None)
        bim[0] = 1
        bim.to_csv(tmp_path / "g.bim", sep="\t", header=False, index=False)
    p = cli(*args)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    import re
    assert re.search(match, lines[0]), lines[0]
    assert not (tmp_path / "out").exists() or case == "one_chrom_loco"


def test_bed_reader_counts_allele_1_as_plink(gwas_data):
    b = BedGenotypes(gwas_data.bed)
    with open_bed(str(gwas_data.bed), count_A1=True) as bed:
        assert np.array_equal(np.nan_to_num(b.read(None, 0, 50), nan=-1),
                              np.nan_to_num(bed.read(np.s_[:, 0:50], dtype="float64"), nan=-1))
        assert (b.variants["allele1"].to_numpy()[:50] == bed.allele_1[:50]).all()


def test_a_sample_major_bed_is_refused(tmp_path, gwas_data):
    for ext in (".bim", ".fam"):
        shutil.copy(str(gwas_data.bed)[:-4] + ext, tmp_path / ("g" + ext))
    data = bytearray(gwas_data.bed.read_bytes())
    data[2] = 0
    (tmp_path / "g.bed").write_bytes(bytes(data))
    with pytest.raises(DataError, match="sample-major"):
        BedGenotypes(tmp_path / "g")


def test_zarr_call_dosage_is_read_as_dosages_of_the_alt_allele(gwas_data, tmp_path):
    """A dosage store (sgkit's call_dosage, NaN missing; contigs named in attrs) gives the
    same scan as the .bed it was made from."""
    import zarr

    b = BedGenotypes(gwas_data.bed)
    G = b.read(None, 0, b.n_variants)                       # samples x variants
    g = zarr.open_group(str(tmp_path / "dose.zarr"), mode="w", zarr_format=2)
    g.create_array("call_dosage", shape=G.T.shape, chunks=(256, G.shape[0]),
                   dtype="f4")[:] = G.T.astype("f4")
    contigs, codes = np.unique(b.variants["chrom"].to_numpy(), return_inverse=True)
    g.attrs["contigs"] = [str(c) for c in contigs]
    g.create_array("variant_contig", shape=codes.shape, dtype="i2")[:] = codes
    g.create_array("variant_position", shape=codes.shape, dtype="i8")[:] = \
        b.variants["pos"].to_numpy()
    g.create_array("variant_allele", shape=(len(codes), 2), dtype=str)[:] = np.c_[
        b.variants["allele2"].to_numpy().astype(str), b.variants["allele1"].to_numpy().astype(str)]
    g.create_array("sample_id", shape=(G.shape[0],), dtype=str)[:] = \
        b.samples["IID"].to_numpy().astype(str)
    z = ZarrGenotypes(tmp_path / "dose.zarr")
    assert z.field == "call_dosage"
    assert list(z.variants["variant_id"][:2]) == ["1:1000", "1:2000"]
    ph = pd.read_csv(gwas_data.pheno, sep=" ").drop(columns="FID")
    ph.to_csv(tmp_path / "p.csv", index=False)
    rz = scan(tmp_path, "z", zarr=str(tmp_path / "dose.zarr"), pheno=str(tmp_path / "p.csv"))
    rb = scan(tmp_path, "b", bed=str(gwas_data.bed), pheno=str(gwas_data.pheno))
    assert np.allclose(rz.results["beta"], rb.results["beta"], rtol=1e-12, atol=0)
    assert (rz.results["allele1"] == rb.results["allele1"]).all()
