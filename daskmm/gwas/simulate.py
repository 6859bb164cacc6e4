"""Simulated genotypes with related samples, and traits with known causal variants.

Founders come from ``populations`` strata whose allele frequencies differ (Balding-Nichols,
``fst``); each family is two founders of one stratum and ``children`` offspring, each inheriting
one allele of each parent at every variant (unlinked variants). Traits::

    y_causal = sum_j b_j z_j  (standardised causal variants, each explaining causal_h2 / causal
               of the variance, random signs)  + stratum + family environment + covariates + noise
    y_null   = stratum + covariates + noise   (no variant has an effect; the strata confound)

Written as PLINK ``.bed/.bim/.fam`` (bed-reader) and whitespace ``FID IID ...`` tables.
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


def simulate_gwas(out: str | os.PathLike, families: int = 100, children: int = 3,
                  unrelated: int = 100, chromosomes: int = 4, variants_per_chrom: int = 500,
                  populations: int = 2, fst: float = 0.05, causal: int = 5,
                  causal_h2: float = 0.3, missing_rate: float = 0.0, null_traits: int = 1,
                  seed: int = 1) -> SimulatedGwas:
    """Write ``OUT/geno.{bed,bim,fam}``, ``OUT/pheno.txt`` (``FID IID y_causal y_null``, and
    ``y_null_2 ... y_null_K`` with ``null_traits = K``) and
    ``OUT/covar.txt`` (``FID IID age sex``); return their paths and the causal variants."""
    from bed_reader import to_bed

    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = chromosomes * variants_per_chrom
    p_anc = rng.uniform(0.05, 0.5, m)
    a = p_anc * (1 - fst) / fst
    b = (1 - p_anc) * (1 - fst) / fst
    p_pop = np.clip(rng.beta(a[None, :], b[None, :], size=(populations, m)), 0.01, 0.99)

    def founders(k: int, pop: np.ndarray) -> np.ndarray:  # k x m x 2 haplotypes
        return (rng.random((k, m, 2)) < p_pop[pop][:, :, None]).astype(np.int8)

    haps, fid, iid, father, mother, stratum, family = [], [], [], [], [], [], []
    for f in range(families):
        pop = rng.integers(populations)
        par = founders(2, np.array([pop, pop]))
        kids = np.empty((children, m, 2), np.int8)
        for c in range(children):
            for j, parent in enumerate(par):
                pick = rng.integers(0, 2, m)
                kids[c, :, j] = parent[np.arange(m), pick]
        members = np.concatenate([par, kids])
        haps.append(members)
        for i in range(len(members)):
            fid.append(f"F{f + 1}")
            iid.append(f"F{f + 1}_{i + 1}")
            father.append(f"F{f + 1}_1" if i >= 2 else "0")
            mother.append(f"F{f + 1}_2" if i >= 2 else "0")
            stratum.append(pop)
            family.append(f)
    pops = rng.integers(populations, size=unrelated)
    if unrelated:
        haps.append(founders(unrelated, pops))
    for i, pop in enumerate(pops):
        fid.append(f"U{i + 1}")
        iid.append(f"U{i + 1}")
        father.append("0")
        mother.append("0")
        stratum.append(int(pop))
        family.append(families + i)
    G = np.concatenate(haps).sum(2).astype(np.float32)   # samples x variants, allele-1 count
    n = G.shape[0]
    if missing_rate:
        G[rng.random(G.shape) < missing_rate] = np.nan

    chrom = np.repeat(np.arange(1, chromosomes + 1), variants_per_chrom)
    pos = np.tile(np.arange(1, variants_per_chrom + 1) * 1000, chromosomes)
    sid = np.array([f"rs{c}_{p}" for c, p in zip(chrom, pos)])
    alleles = np.array(list("ACGT"))
    a1 = alleles[rng.integers(0, 4, m)]
    a2 = alleles[(np.searchsorted(alleles, a1) + rng.integers(1, 4, m)) % 4]
    sex = rng.integers(1, 3, n)
    to_bed(out / "geno.bed", G, properties={
        "fid": fid, "iid": iid, "father": father, "mother": mother, "sex": sex,
        "sid": sid, "chromosome": chrom.astype(str), "bp_position": pos,
        "allele_1": a1, "allele_2": a2})

    stratum = np.array(stratum, float)
    age = rng.normal(50, 10, n)
    Gi = np.where(np.isnan(G), np.nanmean(G, 0), G)
    cidx = rng.choice(m, causal, replace=False) if causal else np.array([], int)
    gval = np.zeros(n)
    if causal:   # equal shares of causal_h2, random signs
        Zc = (Gi[:, cidx] - Gi[:, cidx].mean(0)) / Gi[:, cidx].std(0)
        gval = Zc @ (rng.choice([-1.0, 1.0], len(cidx)) * np.sqrt(causal_h2 / len(cidx)))
    fam_env = rng.normal(0, 0.5, families + unrelated)[np.array(family)]
    base = 0.5 * stratum + 0.02 * (age - 50) + 0.2 * (sex - 1.5)
    y_causal = base + gval + fam_env + rng.normal(0, np.sqrt(1 - causal_h2), n)
    nulls = {"y_null" if k == 0 else f"y_null_{k + 1}": base + rng.normal(0, 1, n)
             for k in range(null_traits)}
    ids = pd.DataFrame({"FID": fid, "IID": iid})
    ids.assign(y_causal=y_causal, **nulls).to_csv(out / "pheno.txt", sep=" ",
                                                        index=False, float_format="%.10g")
    ids.assign(age=age, sex=sex).to_csv(out / "covar.txt", sep=" ", index=False,
                                        float_format="%.10g")
    return SimulatedGwas(out / "geno.bed", out / "pheno.txt", out / "covar.txt", n, m,
                         [str(s) for s in sid[cidx]])
