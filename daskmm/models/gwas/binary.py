"""What the tasks of a binary-trait scan do on a worker (issue 32): SAIGE's two steps over the
kernels :mod:`daskmm.kernels.binary_null`, :mod:`daskmm.kernels.binary_score`,
:mod:`daskmm.kernels.spa` and :mod:`daskmm.kernels.firth`. No Dask here.

1. **The null.** Per trait, the logistic mixed model on the whole relationship matrix (PQL with
   AI-REML, :func:`full_null`); then, per LOCO block, the coefficients and random effects again
   with ``tau`` held and the chromosome's part left out of ``K`` (SAIGE's LOCO), the variance
   ratio from the chosen markers, and the Firth fit without a variant (:func:`scan_null`).
2. **The tests** of a block of variants for every trait of a sample set, the genotypes read
   once (:func:`test_block`): the score, its variance (the ratio times ``G~'WG~``), the
   saddlepoint's p-value where the score is far out, the normal's beside it, Firth's effect
   for the top hits and the allele counts in cases and controls.

Missing genotypes take the variant's mean over the called samples of the set (SAIGE's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import chi2, norm

from daskmm.errors import DataError
from daskmm.kernels import binary_null as BN
from daskmm.kernels import lmm_scan, sparse_scan
from daskmm.kernels.binary_score import ScoreNull, score_null, score_tests, variance_ratio
from daskmm.kernels.firth import FirthFit, firth_logistic, firth_test
from daskmm.kernels.spa import CUTOFF
from daskmm.models.gwas.tasks import Block, Filters

RATIO_MARKERS = 30
"""Markers in the variance ratio (SAIGE's ``numRandomMarkerforVarianceRatio``)."""
RATIO_MAC = 20
"""Their least minor allele count over the set's samples (SAIGE's)."""
FIRTH_P = 0.01
"""Firth's effect is reported for variants with a p-value below this (SAIGE's
``pCutoffforFirth``); 0 turns it off."""

BINARY_COLUMNS = ["score", "score_var", "p_normal", "spa", "firth", "n_cases", "n_controls",
                  "ac_cases", "ac_controls"]
"""The columns a binary scan adds after ``p_value`` (before ``trait``)."""


@dataclass(frozen=True)
class TraitNull:
    """One trait's null for the tests: the 0/1 trait, the null's fit, the random effect
    ``b = eta - X alpha`` (Firth's offset), the variance ratio and the markers it used, the
    score test's light :class:`ScoreNull` (no ``n x n`` part) and the Firth fit without a
    variant (``None`` with Firth off)."""

    y: np.ndarray
    fit: BN.BinaryNull
    offset: np.ndarray
    ratio: float
    markers: int
    score: ScoreNull
    firth: FirthFit | None
    reml_score: float = 0.0


@dataclass(frozen=True)
class BinaryScanNull:
    """The nulls of a sample set's traits for one LOCO block."""

    X: np.ndarray
    traits: list[TraitNull]
    firth_p: float
    markers: np.ndarray
    grm: dict | None = None

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    def variance_components(self) -> list[dict]:
        return [{"tau": t.fit.tau, "alpha": [float(a) for a in t.fit.alpha],
                 "iterations": t.fit.iterations, "reml_score": t.reml_score,
                 "variance_ratio": t.ratio,
                 "ratio_markers": t.markers, "cases": int(t.y.sum()),
                 "controls": int(len(t.y) - t.y.sum())} for t in self.traits]


def coded(y: np.ndarray, trait: str) -> tuple[np.ndarray, str]:
    """A binary trait as 0/1 and how it was coded: 0/1 (control/case) as given, or PLINK's
    1/2 (1 control, 2 case); anything else is refused naming the trait and a value."""
    vals = np.unique(y)
    if np.all(np.isin(vals, (0.0, 1.0))):
        return y.astype(float), "0/1"
    if np.all(np.isin(vals, (1.0, 2.0))):
        return (y - 1.0).astype(float), "1/2 (PLINK)"
    bad = vals[~np.isin(vals, (0.0, 1.0, 2.0))]
    bad = bad[0] if bad.size else vals[0]
    raise DataError(f"trait {trait!r} is not binary: it has the value {bad:g}; code a binary "
                    "trait 0/1 (control/case) or 1/2 (PLINK: 1 control, 2 case), missing as "
                    "NA or -9, or scan it as --trait-type quantitative")


def imputed(G: np.ndarray) -> np.ndarray:
    """``G`` with each column's missing calls set to the column's mean over the called."""
    G = np.array(G, dtype=float)
    miss = np.isnan(G)
    if miss.any():
        called = (~miss).sum(0)
        mean = np.where(called > 0, np.nansum(G, 0) / np.maximum(called, 1), 0.0)
        G[miss] = np.broadcast_to(mean, G.shape)[miss]
    return G


def marker_choice(stats: lmm_scan.VariantStats, n: int, filters: Filters) -> np.ndarray:
    """Which of the candidates (in ``stats``' order) may enter the variance ratio: they pass
    the filters and have a minor allele count of :data:`RATIO_MAC` or more."""
    ac = stats.mean * stats.n_called
    mac = np.minimum(ac, 2.0 * stats.n_called - ac)
    return (filters.reasons(stats, n) == "") & (np.nan_to_num(mac) >= RATIO_MAC)


def _relationship(K_all: np.ndarray, K_out: np.ndarray | None) -> np.ndarray:
    K = K_all - K_out if K_out is not None else K_all.copy()
    lmm_scan.symmetrize(K)
    K *= len(K) / np.trace(K)
    return K


def full_null(K_all: np.ndarray, X: np.ndarray, y: np.ndarray) -> BN.BinaryNull:
    """One trait's null on the whole relationship matrix (lower triangle of ``Z Z'``, scaled
    here to trace ``n``): PQL with AI-REML."""
    return BN.pql_ai_reml(y, X, _relationship(K_all, None))


def _trait_null(K, X: np.ndarray, y: np.ndarray, full: BN.BinaryNull, markers: np.ndarray,
                firth_p: float) -> TraitNull:
    fit, f = BN.pql_fixed_tau(y, X, K, full.tau, full.eta)
    light = score_null(y, X, fit.mu)
    ratio = 1.0
    if f is not None and markers.shape[1]:
        ratio = variance_ratio(score_null(y, X, fit.mu, solve=f.solve), markers)
    offset = fit.eta - X @ fit.alpha
    firth = firth_logistic(y, X, offset) if firth_p > 0 else None
    return TraitNull(y, fit, offset, ratio, int(markers.shape[1]), light, firth, full.score)


def scan_null(K_all: np.ndarray, K_out: np.ndarray | None, X: np.ndarray, Y: np.ndarray,
              fulls: list[BN.BinaryNull], src, samples: np.ndarray, markers: np.ndarray,
              firth_p: float) -> BinaryScanNull:
    """The nulls of one LOCO block (``K_all - K_out``; ``None``: all of ``K_all``) for the
    traits in ``Y``'s columns, from their whole-matrix fits ``fulls``."""
    K = BN.DenseK(_relationship(K_all, K_out))
    M = imputed(src.read_at(samples, markers)) if len(markers) else np.zeros((len(X), 0))
    return BinaryScanNull(X, [_trait_null(K, X, Y[:, j], fulls[j], M, firth_p)
                              for j in range(Y.shape[1])], firth_p, markers)


def sparse_scan_null(n: int, X: np.ndarray, Y: np.ndarray, max_component: int, src,
                     samples: np.ndarray, markers: np.ndarray, firth_p: float,
                     *tiles: tuple[np.ndarray, ...]) -> BinaryScanNull:
    """Sparse mode: the GRM from its tiles, block-diagonal by groups of relatives, and every
    trait's null on it (one ``K``, no LOCO)."""
    K = sparse_scan.assemble(n, list(tiles))
    try:
        groups = sparse_scan.relative_groups(K, max_component)
    except ValueError as exc:
        raise DataError(f"sparse mode: {exc}; raise the threshold (--sparse-threshold), or "
                        "use --mode exact for samples this closely related") from None
    BK = BN.BlockK(n, groups)
    M = imputed(src.read_at(samples, markers)) if len(markers) else np.zeros((n, 0))
    traits = []
    for j in range(Y.shape[1]):
        full = BN.pql_ai_reml(Y[:, j], X, BK)
        traits.append(_trait_null(BK, X, Y[:, j], full, M, firth_p))
    grm = {"nonzero_off_diagonal": int(K.nnz - n),
           "largest_group": max(idx.shape[1] for idx, _ in groups),
           "groups_of_relatives": int(sum(len(idx) for idx, _ in groups if idx.shape[1] > 1))}
    return BinaryScanNull(X, traits, firth_p, markers, grm)


def _effects(t: TraitNull, X: np.ndarray, G: np.ndarray, res, firth_p: float):
    """Per variant: the effect and its SE as SAIGE reports them (``T / var`` and ``|effect|
    / sqrt(chi2)`` of the reported p-value), Firth's effect for the top hits."""
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.where(res.var > 0, res.T / res.var, np.nan)
    p = res.p
    q = np.where(p > 0, chi2.isf(np.clip(p, 1e-320, 1.0), 1), res.z ** 2)
    firth = np.zeros(len(p), bool)
    if t.firth is not None:
        for i in np.flatnonzero(p < firth_p):
            beta[i] = firth_test(t.y, X, G[:, i], t.offset, t.firth)[0]
            firth[i] = True
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.where(q > 0, np.abs(beta) / np.sqrt(q), np.inf)
    return beta, se, firth


def test_block(src, samples: np.ndarray, block: Block, filters: Filters,
               null: BinaryScanNull, traits: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Results of one block for the binary traits of one sample set, the block read once:
    ``(tested, skipped)`` as :func:`daskmm.models.gwas.tasks.test_block`, with the columns
    :data:`BINARY_COLUMNS` (module docstring); ``beta`` and ``se`` per copy of allele 1 on
    the log-odds scale, ``statistic`` the score's ``z``."""
    G = src.read(samples, block.start, block.stop)
    st = lmm_scan.variant_stats(G)
    why = filters.reasons(st, len(samples))
    keep = why == ""
    Graw = G[:, keep]
    Gi = imputed(Graw)
    called = (~np.isnan(Graw)).astype(float)
    Gz = np.where(called > 0, Graw, 0.0)
    idx = np.arange(block.start, block.stop)
    cases = np.column_stack([t.y for t in null.traits])
    n_cases, ac_cases = called.T @ cases, Gz.T @ cases        # every trait in one product
    n_called, ac = called.sum(0), Gz.sum(0)
    tests = score_tests([t.score for t in null.traits], Gi, [t.ratio for t in null.traits],
                        spa=True, cutoff=CUTOFF)
    parts = []
    for j, (name, t, res) in enumerate(zip(traits, null.traits, tests)):
        beta, se, firth = _effects(t, null.X, Gi, res, null.firth_p)
        parts.append(pd.DataFrame({
            "variant_index": idx[keep], "af": st.af[keep],
            "n": st.n_called[keep].astype(np.int64), "beta": beta, "se": se,
            "statistic": res.z, "p_value": res.p, "score": res.T, "score_var": res.var,
            "p_normal": 2.0 * norm.sf(np.abs(res.z)), "spa": res.spa, "firth": firth,
            "n_cases": n_cases[:, j].astype(np.int64),
            "n_controls": (n_called - n_cases[:, j]).astype(np.int64),
            "ac_cases": ac_cases[:, j], "ac_controls": ac - ac_cases[:, j], "trait": name}))
    tested = pd.concat(parts, ignore_index=True)
    skipped = pd.DataFrame({"variant_index": idx[~keep], "reason": why[~keep].astype(str),
                            "traits": ",".join(traits)})
    return tested, skipped
