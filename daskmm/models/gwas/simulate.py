"""Simulated genotypes with related samples, and traits with known causal variants.

Founders come from ``populations`` strata whose allele frequencies differ (Balding-Nichols,
``fst``); each family is two founders of one stratum and ``children`` offspring, each inheriting
one allele of each parent at every variant (unlinked variants). Traits::

    y_causal = sum_j b_j z_j  (standardised causal variants, each explaining causal_h2 / causal
               of the variance, random signs)  + stratum + family environment + covariates + noise
    y_null   = stratum + covariates + noise   (no variant has an effect; the strata confound)

Written as PLINK ``.bed/.bim/.fam`` (variant blocks packed here; bed-reader reads them back in
the tests) and whitespace ``FID IID ...`` tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class SimulatedGwas:
    """What :func:`simulate_gwas` wrote, and the truth."""

    bed: Path
    pheno: Path
    covar: Path
    n_samples: int
    n_variants: int
    causal: list[str] = field(default_factory=list)
    pheno_binary: Path | None = None


BED_CODE = np.array([0b11, 0b10, 0b00, 0b01], dtype=np.uint8)
"""PLINK .bed 2-bit codes for dosage 0, 1, 2 of allele 1 and missing (index 3)."""


def pack_bed(dose: np.ndarray) -> bytes:
    """Variant-major ``.bed`` bytes for ``dose`` (variants x samples, allele-1 counts 0/1/2,
    NaN missing)."""
    m, n = dose.shape
    code = np.where(np.isnan(dose), 3, np.nan_to_num(dose)).astype(np.int64)
    c = BED_CODE[code]
    pad = (-n) % 4
    if pad:
        c = np.concatenate([c, np.zeros((m, pad), np.uint8)], axis=1)
    c = c.reshape(m, -1, 4)
    return (c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)).astype(
        np.uint8).tobytes()


def simulate_gwas(out: str | os.PathLike, families: int = 100, children: int = 3,
                  unrelated: int = 100, chromosomes: int = 4, variants_per_chrom: int = 500,
                  populations: int = 2, fst: float = 0.05, causal: int = 5,
                  causal_h2: float = 0.3, missing_rate: float = 0.0, null_traits: int = 1,
                  prevalence: float | None = None, seed: int = 1) -> SimulatedGwas:
    """Write ``OUT/geno.{bed,bim,fam}``, ``OUT/pheno.txt`` (``FID IID y_causal y_null``, and
    ``y_null_2 ... y_null_K`` with ``null_traits = K``) and ``OUT/covar.txt`` (``FID IID age
    sex``); return their paths and the causal variants. With ``prevalence``, also
    ``OUT/pheno_binary.txt``: each trait as a 0/1 disease by the liability threshold (its
    values above their ``1 - prevalence`` quantile are cases), the columns named ``b_...``.

    Variants are made and written a block at a time (memory: one block of all samples), so
    biobank-sized files can be simulated."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = chromosomes * variants_per_chrom
    n_fam = families * (2 + children)
    n = n_fam + unrelated
    fam_pop = rng.integers(populations, size=families)
    unr_pop = rng.integers(populations, size=unrelated)
    # founders: two per family, then the unrelated samples
    founder_pop = np.concatenate([np.repeat(fam_pop, 2), unr_pop])
    n_founders = len(founder_pop)
    father = np.repeat(np.arange(families) * 2, children)
    mother = father + 1
    fid, iid, fa, mo, stratum, family = [], [], [], [], [], []
    for f in range(families):
        for i in range(2 + children):
            fid.append(f"F{f + 1}")
            iid.append(f"F{f + 1}_{i + 1}")
            fa.append(f"F{f + 1}_1" if i >= 2 else "0")
            mo.append(f"F{f + 1}_2" if i >= 2 else "0")
            stratum.append(int(fam_pop[f]))
            family.append(f)
    for i in range(unrelated):
        fid.append(f"U{i + 1}")
        iid.append(f"U{i + 1}")
        fa.append("0")
        mo.append("0")
        stratum.append(int(unr_pop[i]))
        family.append(families + i)
    # sample order: each family's parents, its children, ...; then the unrelated
    fam_rows = np.arange(families)[:, None] * (2 + children)
    parent_pos = (fam_rows + np.arange(2)).reshape(-1)                 # founders 0..2F-1
    child_pos = (fam_rows + 2 + np.arange(children)).reshape(-1)
    unr_pos = n_fam + np.arange(unrelated)
    sex = rng.integers(1, 3, n)

    chrom = np.repeat(np.arange(1, chromosomes + 1), variants_per_chrom)
    pos = np.tile(np.arange(1, variants_per_chrom + 1) * 1000, chromosomes)
    sid = np.array([f"rs{c}_{p}" for c, p in zip(chrom, pos)])
    alleles = np.array(list("ACGT"))
    a1i = rng.integers(0, 4, m)
    a1 = alleles[a1i]
    a2 = alleles[(a1i + rng.integers(1, 4, m)) % 4]
    cidx = np.sort(rng.choice(m, causal, replace=False)) if causal else np.array([], int)
    signs = rng.choice([-1.0, 1.0], len(cidx))
    causal_dose = np.zeros((n, len(cidx)))

    step = max(1, min(m, 20_000_000 // max(n, 1)))
    with open(out / "geno.bed", "wb") as bed:
        bed.write(bytes([0x6C, 0x1B, 0x01]))
        for s0 in range(0, m, step):
            k = min(step, m - s0)
            p_anc = rng.uniform(0.05, 0.5, k)
            pa, pb = p_anc * (1 - fst) / fst, (1 - p_anc) * (1 - fst) / fst
            p_pop = np.clip(rng.beta(pa, pb, size=(populations, k)), 0.01, 0.99)
            H = rng.random((n_founders, k, 2)) < p_pop[founder_pop][:, :, None]
            G = np.empty((n, k), np.float32)
            G[parent_pos] = H[: 2 * families].sum(2)
            G[unr_pos] = H[2 * families:].sum(2)
            if children:
                col = np.arange(k)
                pick_f = rng.integers(0, 2, (len(father), k))
                pick_m = rng.integers(0, 2, (len(mother), k))
                G[child_pos] = (H[father[:, None], col, pick_f].astype(np.float32)
                                + H[mother[:, None], col, pick_m])
            if missing_rate:
                G[rng.random(G.shape) < missing_rate] = np.nan
            here = (cidx >= s0) & (cidx < s0 + k)
            causal_dose[:, here] = G[:, cidx[here] - s0]
            bed.write(pack_bed(G.T))
    pd.DataFrame({"f": fid, "i": iid, "fa": fa, "mo": mo, "sex": sex, "ph": 0}).to_csv(
        out / "geno.fam", sep=" ", header=False, index=False)
    pd.DataFrame({"c": chrom, "s": sid, "cm": 0, "p": pos, "a1": a1, "a2": a2}).to_csv(
        out / "geno.bim", sep="\t", header=False, index=False)

    stratum = np.array(stratum, float)
    age = rng.normal(50, 10, n)
    gval = np.zeros(n)
    if causal:   # equal shares of causal_h2, random signs
        Gi = np.where(np.isnan(causal_dose), np.nanmean(causal_dose, 0), causal_dose)
        Zc = (Gi - Gi.mean(0)) / Gi.std(0)
        gval = Zc @ (signs * np.sqrt(causal_h2 / len(cidx)))
    fam_env = rng.normal(0, 0.5, families + unrelated)[np.array(family)]
    base = 0.5 * stratum + 0.02 * (age - 50) + 0.2 * (sex - 1.5)
    y_causal = base + gval + fam_env + rng.normal(0, np.sqrt(1 - causal_h2), n)
    nulls = {"y_null" if k == 0 else f"y_null_{k + 1}": base + rng.normal(0, 1, n)
             for k in range(null_traits)}
    ids = pd.DataFrame({"FID": fid, "IID": iid})
    ids.assign(y_causal=y_causal, **nulls).to_csv(out / "pheno.txt", sep=" ", index=False,
                                                  float_format="%.10g")
    ids.assign(age=age, sex=sex).to_csv(out / "covar.txt", sep=" ", index=False,
                                        float_format="%.10g")
    binary = None
    if prevalence is not None:
        if not 0 < prevalence < 1:
            raise ValueError(f"prevalence={prevalence}; give a share of cases in (0, 1)")
        liab = {"y_causal": y_causal, **nulls}
        cases = {"b" + k[1:]: (v > np.quantile(v, 1 - prevalence)).astype(int)
                 for k, v in liab.items()}
        binary = out / "pheno_binary.txt"
        ids.assign(**cases).to_csv(binary, sep=" ", index=False)
    return SimulatedGwas(out / "geno.bed", out / "pheno.txt", out / "covar.txt", n, m,
                         [str(x) for x in sid[cidx]], binary)
