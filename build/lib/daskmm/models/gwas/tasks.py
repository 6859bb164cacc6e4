"""What one Dask task of a scan does, on a worker: read a variant block, quality-filter it and
call the kernels of :mod:`daskmm.kernels.lmm_scan`. No Dask here; no scheduling decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from daskmm.errors import DataError
from daskmm.kernels import lmm_scan, sparse_scan


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
    if isinstance(null, sparse_scan.GlsNull):
        res = sparse_scan.gls_tests(null, null.rot.rotate(Z))
    else:
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


def variant_table(src, samples: np.ndarray, variants: np.ndarray) -> lmm_scan.VariantStats:
    """Calls, mean and SD over ``samples`` of the variants at ``variants`` (indices)."""
    return lmm_scan.variant_stats(src.read_at(samples, variants))


def sparse_grm_tile(src, samples: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]], m: int,
                    threshold: float) -> tuple[np.ndarray, ...]:
    """The kept entries of one tile of the sparse GRM: samples ``rows`` x ``cols`` (positions
    in ``samples``), over the variant ``chunks`` (indices, means, SDs), ``m`` variants in
    all."""
    diagonal = rows is cols or np.array_equal(rows, cols)
    sel = rows if diagonal else np.concatenate([rows, cols])
    K = None
    for idx, mean, sd in chunks:
        G = src.read_at(samples[sel], idx)
        Z = lmm_scan.standardize(G, lmm_scan.VariantStats(np.zeros(len(idx)), mean, sd))
        K = sparse_scan.grm_tile(Z[:len(rows)], Z if diagonal else Z[len(rows):], K)
    return sparse_scan.sparse_entries(K, m, threshold, rows, cols, diagonal)


def sparse_null(n: int, X: np.ndarray, Y: np.ndarray, max_component: int,
                *tiles: tuple[np.ndarray, ...]) -> sparse_scan.GlsNull:
    """Assemble the sparse GRM from its tiles, rotate and fit ``h2`` per trait."""
    K = sparse_scan.assemble(n, list(tiles))
    try:
        null = sparse_scan.fit_gls_null(K, X, Y, max_component)
    except ValueError as exc:
        raise DataError(f"sparse mode: {exc}; raise the threshold (--sparse-threshold), or "
                        "use --mode exact for samples this closely related") from None
    null.grm = {"nonzero_off_diagonal": int(K.nnz - n), "largest_group": null.rot.largest,
                "groups_of_relatives": int(sum(len(i) for i, _ in null.rot.groups
                                               if i.shape[1] > 1))}
    return null
