"""Calibration of the binary scan (issue 32), by simulation (seeded): null traits at 50%, 5%
and 1% prevalence with a family effect, 3,000 samples (600 families of four and 600
unrelated), variants from MAF 0.5% to 50% drawn along the pedigree and independent of the
trait. The scan's own null (PQL with AI-REML on the pedigree's relationship matrix, the
variance ratio) and its block task (:func:`daskmm.models.gwas.binary.test_block`) give every
p-value.

- The saddlepoint p-values (``p_value``) are never above their binomial error at alpha =
  1e-2, 1e-3 and 1e-4, in any MAF class and prevalence; where the score has many carriers
  in cases (prevalence 50% and 5%, MAF 5% or more) they are within it on both sides.
- The normal p-values of the same scores (``p_normal``, the score test without the
  saddlepoint) are shown inflated for the rarest variants at 1% prevalence (more than three
  times the binomial bound at 1e-3 and 1e-4; measured: 58 and 29 against bounds of 14 and 4,
  where the saddlepoint's are 7 and 3): so the test fails if the saddlepoint is switched off
  in the scan.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, special
from scipy.stats import binom

from daskmm.kernels import binary_null as BN
from daskmm.models.gwas import binary
from daskmm.models.gwas.tasks import Block, Filters

FAMILIES, UNRELATED = 600, 600
N = 4 * FAMILIES + UNRELATED
MAFS = (0.005, 0.01, 0.05, 0.2, 0.5)
PER_MAF = 5000
BLOCK = 5000
ALPHAS = (1e-2, 1e-3, 1e-4)


class PedigreeGenotypes:
    """Genotypes made on demand, a block at a time (seeded by the block's first variant):
    parents and unrelated samples in Hardy-Weinberg proportions, each child one allele of
    each parent; the MAF classes in turn."""

    def read(self, samples, start, stop):
        rng = np.random.default_rng(start)
        k = stop - start
        f = np.asarray(MAFS)[np.arange(start, stop) // PER_MAF]
        G = np.empty((N, k))
        par = rng.binomial(2, f, size=(2 * FAMILIES, k)).astype(float)
        G[np.arange(FAMILIES)[:, None] * 4 + [0, 1]] = par.reshape(FAMILIES, 2, k)
        for c in (2, 3):   # a parent with g copies passes one on with probability g / 2
            fa = rng.binomial(1, par[0::2] / 2)
            mo = rng.binomial(1, par[1::2] / 2)
            G[np.arange(FAMILIES) * 4 + c] = fa + mo
        G[4 * FAMILIES:] = rng.binomial(2, f, size=(UNRELATED, k))
        return G if samples is None else G[samples]


def pedigree():
    fam = np.arange(FAMILIES)[:, None] * 4 + np.arange(4)
    Kf = np.array([[1, 0, .5, .5], [0, 1, .5, .5], [.5, .5, 1, .5], [.5, .5, .5, 1]])
    singles = 4 * FAMILIES + np.arange(UNRELATED)[:, None]
    return BN.BlockK(N, [(fam, np.broadcast_to(Kf, (FAMILIES, 4, 4)).copy()),
                         (singles, np.ones((UNRELATED, 1, 1)))]), Kf


def null_trait(prevalence: float, rng, X, Kf, tau=0.5):
    L = np.linalg.cholesky(Kf)
    b = np.concatenate([(rng.normal(size=(FAMILIES, 4)) @ L.T).reshape(-1),
                        rng.normal(size=UNRELATED)]) * np.sqrt(tau)
    lin = 0.3 * X[:, 0] + b
    a = optimize.brentq(lambda a: special.expit(a + lin).mean() - prevalence, -20, 20)
    return (rng.random(N) < special.expit(a + lin)).astype(float)


@pytest.fixture(scope="module")
def scans():
    rng = np.random.default_rng(32)
    X = np.column_stack([rng.normal(size=N), np.ones(N)])
    BK, Kf = pedigree()
    src = PedigreeGenotypes()
    markers = binary.imputed(src.read(None, 2 * PER_MAF, 2 * PER_MAF + 30))  # MAF 5%
    out = {}
    for prev in (0.5, 0.05, 0.01):
        y = null_trait(prev, rng, X, Kf)
        full = BN.pql_ai_reml(y, X, BK)
        null = binary.BinaryScanNull(
            X, [binary._trait_null(BK, X, y, full, markers, 0.0)], 0.0, np.arange(30))
        parts = [binary.test_block(src, np.arange(N), Block(0, "1", s, s + BLOCK),
                                   Filters(maf=0.0, max_missing=0.1), null, ["y"])[0]
                 for s in range(0, len(MAFS) * PER_MAF, BLOCK)]
        d = np.concatenate([p["variant_index"].to_numpy() for p in parts])
        out[prev] = {"maf": np.asarray(MAFS)[d // PER_MAF], "tau": full.tau,
                     "ratio": null.traits[0].ratio,
                     "p": np.concatenate([p["p_value"].to_numpy() for p in parts]),
                     "p_normal": np.concatenate([p["p_normal"].to_numpy() for p in parts])}
    return out


@pytest.mark.parametrize("prev", [0.5, 0.05, 0.01])
def test_saddlepoint_p_values_hold_their_level(scans, prev):
    s = scans[prev]
    if prev >= 0.05:   # the family effect is found (PQL's tau is biased low), and the
        assert s["tau"] > 0.05 and s["ratio"] < 0.99   # relatives' ratio is below 1
    for maf in MAFS:
        p = s["p"][s["maf"] == maf]
        assert len(p) > 0.99 * PER_MAF
        for alpha in ALPHAS:
            hits = int(np.sum(p < alpha))
            hi = binom.ppf(0.9995, len(p), alpha)
            assert hits <= hi, (prev, maf, alpha, hits, hi)
            if prev >= 0.05 and maf >= 0.05:   # many carriers in the cases: on both sides
                lo = binom.ppf(0.0005, len(p), alpha)
                assert hits >= lo, (prev, maf, alpha, hits, lo)


def test_without_the_saddlepoint_rare_variants_are_inflated_at_one_percent(scans):
    s = scans[0.01]
    rare = s["maf"] == 0.005   # about 0.3 copies expected among the 30 cases
    for alpha in (1e-3, 1e-4):
        normal = int(np.sum(s["p_normal"][rare] < alpha))
        spa = int(np.sum(s["p"][rare] < alpha))
        hi = binom.ppf(0.9995, int(rare.sum()), alpha)
        assert normal > 3 * hi, (alpha, normal, hi)
        assert spa <= hi
