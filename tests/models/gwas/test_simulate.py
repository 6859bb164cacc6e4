"""The simulator's PLINK writer against bed-reader's, and Mendelian inheritance."""

from __future__ import annotations

import numpy as np
from bed_reader import open_bed, to_bed

from daskmm.models.gwas.simulate import pack_bed, simulate_gwas


def test_packed_bytes_equal_bed_readers_writer(tmp_path):
    rng = np.random.default_rng(0)
    G = rng.integers(0, 3, size=(13, 7)).astype(np.float32)
    G[rng.random(G.shape) < 0.1] = np.nan
    to_bed(tmp_path / "ref.bed", G)
    assert (tmp_path / "ref.bed").read_bytes()[3:] == pack_bed(G.T)


def test_children_inherit_one_allele_from_each_parent(tmp_path):
    s = simulate_gwas(tmp_path / "s", families=5, children=3, unrelated=4, chromosomes=2,
                      variants_per_chrom=200, seed=1)
    with open_bed(str(s.bed)) as bed:
        G = bed.read(dtype="float64")
        assert list(bed.iid[:5]) == ["F1_1", "F1_2", "F1_3", "F1_4", "F1_5"]
        assert bed.father[2] == "F1_1" and bed.mother[2] == "F1_2"
    for f in range(5):
        fa, mo = G[5 * f], G[5 * f + 1]
        for c in range(3):
            ch = G[5 * f + 2 + c]
            lo = (fa == 2).astype(int) + (mo == 2)
            hi = (fa > 0).astype(int) + (mo > 0)
            assert np.all((ch >= lo) & (ch <= hi))
