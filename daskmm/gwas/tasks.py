"""What one Dask task of a scan does, on a worker: read a variant block, quality-filter it and
call the kernels of :mod:`daskmm.kernels.lmm_scan`. No Dask here; no scheduling decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from daskmm.kernels import lmm_scan


@dataclass(frozen=True)
class Filters:
    """Variant quality filters over the samples of a set: minor allele frequency at least
    ``maf``, missing-call rate at most ``max_missing``. A variant with one value (or none)
    is always skipped."""

    maf: float = 0.01
    max_missing: float = 0.1

    def reasons(self, st: lmm_scan.VariantStats, n: int) -> np.ndarray:
        """Per variant: ``""`` (tested) or why it is skipped."""
        af = st.af
        maf = np.minimum(af, 1 - af)
        miss = 1.0 - st.n_called / n
        out = np.full(len(st.sd), "", dtype=object)
        out[miss > self.max_missing] = "missing_rate"
        out[(maf < self.maf) & (out == "")] = "maf"
        out[(st.sd == 0) & (st.n_called > 0)] = "monomorphic"
        out[st.n_called == 0] = "all_missing"
        return out


@dataclass(frozen=True)
class Block:
    """Variants ``start:stop`` of the source, all on chromosome ``chrom``; ``index`` numbers
    the block in file order."""

    index: int
    chrom: str
    start: int
    stop: int


def _standardized(src, samples: np.ndarray, block: Block, filters: Filters):
    G = src.read(samples, block.start, block.stop)
    st = lmm_scan.variant_stats(G)
    why = filters.reasons(st, len(samples))
    keep = why == ""
    sub = lmm_scan.VariantStats(st.n_called[keep], st.mean[keep], st.sd[keep])
    return lmm_scan.standardize(G[:, keep], sub), st, why


def grm_blocks(src, samples: np.ndarray, blocks: list[Block],
               filters: Filters) -> np.ndarray:
    """``Z Z'`` (lower triangle) over the variants of ``blocks`` that pass the filters."""
    K = None
    for b in blocks:
        Z, _, _ = _standardized(src, samples, b, filters)
        K = lmm_scan.grm_update(K, Z)
    return K if K is not None else np.zeros((len(samples), len(samples)))


def add(*Ks: np.ndarray) -> np.ndarray:
    """The sum of partial relationship matrices."""
    out = Ks[0].copy()
    for k in Ks[1:]:
        out += k
    return out


def null_model(K_all: np.ndarray, K_out: np.ndarray | None, X: np.ndarray,
               Y: np.ndarray) -> lmm_scan.NullModel:
    """The null model with relationship matrix ``K_all - K_out`` (the chromosome left out;
    ``None``: all of ``K_all``)."""
    K = K_all - K_out if K_out is not None else K_all.copy()
    lmm_scan.symmetrize(K)
    return lmm_scan.fit_null(K, X, Y)


def test_block(src, samples: np.ndarray, block: Block, filters: Filters,
               null: lmm_scan.NullModel, traits: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Results of one block for the traits of one sample set: ``(tested, skipped)``.

    ``tested``: one row per variant and trait, beta and se per copy of allele 1 (the
    standardised effect divided by the variant's SD), ``af`` of allele 1 and ``n`` calls over
    the set's samples. ``skipped``: one row per filtered variant with the reason."""
    Z, st, why = _standardized(src, samples, block, filters)
    keep = why == ""
    res = lmm_scan.test_variants(null, Z)
    sd = st.sd[keep]
    idx = np.arange(block.start, block.stop)
    m, t = int(keep.sum()), len(traits)
    tested = pd.DataFrame({
        "variant_index": np.tile(idx[keep], t),
        "af": np.tile(st.af[keep], t),
        "n": np.tile(st.n_called[keep], t).astype(np.int64),
        "beta": (res["beta"] / sd[:, None]).T.reshape(-1),
        "se": (res["se"] / sd[:, None]).T.reshape(-1),
        "statistic": res["statistic"].T.reshape(-1),
        "p_value": res["p_value"].T.reshape(-1),
        "trait": np.repeat(np.asarray(traits, dtype=object), m),
    })
    skipped = pd.DataFrame({"variant_index": idx[~keep], "reason": why[~keep].astype(str),
                            "traits": ",".join(traits)})
    return tested, skipped
