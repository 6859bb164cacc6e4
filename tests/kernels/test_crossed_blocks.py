"""The crossing tables held in blocks of the first factor's levels
(daskmm/kernels/crossed_blocks.py): the partitions' passes summed into blocks give the whole
tables' values; the blocked criterion, modes, gradient and conditional variances equal the
whole tables' at any number of blocks (the same estimator: its deflation basis and Lanczos
steps shared, the sums only in another order)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from daskmm.kernels import crossed_blocks as CB
from daskmm.kernels import crossed_glmm as CG
from daskmm.kernels import scalar_re as K

from .test_crossed_glmm import crossing


def _rows(X, y, codes, sizes, slopes, parts):
    levels = [np.arange(L) for L in sizes]
    chunks = np.array_split(np.arange(len(y)), parts)
    rows = [CG.crossed_rows(X[i], y[i], np.ones(len(i)), np.zeros(len(i)),
                            [c[i] for c in codes], levels, 0.0, None,
                            slopes=X[i] if slopes else None) for i in chunks]
    keys = CG.merge_keys([CG.pair_keys(r, tuple(sizes)) for r in rows])
    rows = [CG.with_pattern(r, keys, tuple(sizes)) for r in rows]
    return rows, CG.Patterns.of(keys, tuple(sizes))


def _engines(family, sizes, slopes, blocks, groups=2):
    """The whole tables' criterion and the blocked one over the same partitions (the
    partitions summed into each block in ``groups``, as the workers that hold them)."""
    X, y, codes = crossing(1500, sizes, family, seed=4)
    fam, link = (K.BINOMIAL, K.LOGIT) if family == "binomial" else (K.POISSON, K.LOG)
    r = 2 if slopes else 1
    rows, pat = _rows(X, y, codes, sizes, slopes, parts=5)
    sizes = pat.sizes
    nnz = pat.nnz
    table_sizes = tuple(nnz[(0, k)] for k in range(1, len(sizes)))
    per_level = sum(np.diff(pat.csr[(0, k)][0]) for k in range(1, len(sizes)))
    bounds = CB.block_bounds(per_level, blocks)
    first = {jk: v for jk, v in pat.csr.items() if jk[0] == 0}
    tmpls = [CB.block_template(first, sizes, int(lo), int(hi), r)
             for lo, hi in zip(bounds[:-1], bounds[1:])]
    split = np.array_split(np.arange(len(rows)), groups)

    def whole(beta, b):
        return CG.add_passes([CG.weighted_pass(rw, beta, b, fam, link, sizes) for rw in rows],
                             nnz)

    def blocked(beta, b):
        outs = [CG.weighted_pass(rw, beta, b, fam, link, sizes) for rw in rows]
        wp = CG.add_passes([CB.pass_head(o) for o in outs], nnz)
        assert all(jk[0] != 0 for jk in wp.tables)  # the first factor's stay in the blocks
        if not np.isfinite(wp.ll):
            return wp
        held = tuple(CB.fill_block(t, [CB.block_values([outs[i] for i in g], t.places, r)
                                       for g in split], wp.counts[0][t.lo:t.hi])
                     for t in tmpls)
        x = CB.BlockedCrossing(sizes[0] * r, np.asarray(wp.counts[0], float),
                               *CB.rest_block(pat.csr, sizes, wp.counts, wp.tables), r, bounds,
                               held, CB.LocalBlocks(), sum(table_sizes), table_sizes)
        return dataclasses.replace(wp, crossing=x)

    kw = {"seed": 0, "family": (fam, link), "cols": r}
    ref = CG.CrossedLaplace(pat, whole, "matrix-free", **kw)
    blk = CG.CrossedLaplace(pat, blocked, "matrix-free", **kw)
    return ref, blk, rows, whole, tmpls, split


def test_the_blocks_sum_the_partitions_to_the_whole_tables():
    for slopes in (False, True):
        ref, blk, rows, whole, tmpls, split = _engines("poisson", [50, 30, 12], slopes, 3)
        r = 2 if slopes else 1
        beta, b = np.array([-0.2, 0.4]), [np.full(q, 0.1) for q in ref.q_sizes]
        wp = whole(beta, b)
        fam, link = ref.family
        outs = [CG.weighted_pass(rw, beta, b, fam, link, ref.sizes) for rw in rows]
        for t in tmpls:
            one = CB.fill_block(t, [CB.block_values(outs, t.places, r)], wp.counts[0][t.lo:t.hi])
            for k, (a, z) in enumerate(t.places, start=1):
                got = one.vals[sum(p[1] - p[0] for p in t.places[:k - 1]):][:z - a]
                # one group: the same additions in the same order as the whole tables'
                np.testing.assert_array_equal(got.reshape(z - a, -1),
                                              np.asarray(wp.tables[(0, k)])[a:z].reshape(z - a, -1))
            many = CB.fill_block(t, [CB.block_values([outs[i] for i in g], t.places, r)
                                     for g in split], wp.counts[0][t.lo:t.hi])
            np.testing.assert_allclose(many.vals, one.vals, rtol=1e-14)
            # the block's N is the whole N's rows
            x = ref.patterns.crossing(wp)
            np.testing.assert_allclose(many.x.N.toarray(),
                                       x.N[t.lo * r:t.hi * r].toarray(), rtol=1e-14)


@pytest.mark.parametrize("family,sizes,slopes", [("binomial", [60, 40], False),
                                                 ("binomial", [60, 40], True),
                                                 ("poisson", [50, 30, 12], False),
                                                 ("poisson", [50, 30, 12], True)])
@pytest.mark.parametrize("blocks", [1, 4])
def test_the_blocked_criterion_is_the_whole_tables(family, sizes, slopes, blocks):
    ref, blk, rows, *_ = _engines(family, sizes, slopes, blocks)
    theta = np.r_[[0.8, 0.3, 0.5] if slopes else [0.8], np.linspace(0.4, 0.9, len(sizes) - 1)]
    beta = np.array([-0.2, 0.4])
    p1 = ref.evaluate(theta, beta)
    # the estimator's own choices made once, by the first fit: the same for both
    blk.basis, blk.fixed_steps = ref.basis, ref.fixed_steps
    p2 = blk.evaluate(theta, beta)
    assert isinstance(p2.reduced, CB.BlockedReduced if not slopes else
                      CB.BlockedVectorReduced)
    assert p2.value == pytest.approx(p1.value, rel=1e-12)
    assert p2.se == pytest.approx(p1.se, rel=1e-8)
    np.testing.assert_allclose(p2.u, p1.u, rtol=0, atol=1e-10)

    def apply(fn, **kw):
        return [fn(rw, **kw) for rw in rows]
    np.testing.assert_allclose(blk.gradient(theta, beta, p2, apply),
                               ref.gradient(theta, beta, p1, apply), rtol=1e-8, atol=1e-8)
    if slopes:
        for a, b in zip(blk.inverse_blocks(p2), ref.inverse_blocks(p1)):
            np.testing.assert_allclose(a, b, rtol=1e-12)
    else:
        np.testing.assert_allclose(blk.inverse_diag(p2), ref.inverse_diag(p1), rtol=1e-12)
    # at another point, warm from the last modes, as an optimiser goes
    theta2, beta2 = theta * 1.1, beta + 0.05
    assert blk.evaluate(theta2, beta2).value == pytest.approx(
        ref.evaluate(theta2, beta2).value, rel=1e-12)


def test_the_blocks_split_the_entries_evenly_and_cover_every_level():
    rng = np.random.default_rng(0)
    per_level = rng.zipf(1.5, 1000).clip(max=200)
    for blocks in (1, 2, 3, 7, 1000, 2000):
        b = CB.block_bounds(per_level, blocks)
        assert b[0] == 0 and b[-1] == 1000 and np.all(np.diff(b) > 0)
        assert len(b) - 1 == min(blocks, 1000)
        sums = np.add.reduceat(per_level, b[:-1])
        if blocks <= 7:  # within one level's entries of an even share
            assert np.max(np.abs(sums - per_level.sum() / blocks)) <= per_level.max()


@pytest.mark.parametrize("slopes,sizes", [(False, [60, 40]), (True, [60, 40]),
                                          (False, [50, 30, 12]), (True, [50, 30, 12])])
def test_the_lmm_criterion_over_blocks_is_the_whole_tables(slopes, sizes):
    # the LMM's cross-products of four partitions summed into 3 blocks in two groups: the
    # REML criterion and its gradient, and the conditional variances, the whole tables'
    from daskmm.kernels import crossed_iter as CI

    X, _, codes = crossing(1500, sizes, "poisson", seed=6)
    y = X @ [1.0, 0.5] + sum(np.random.default_rng(j).normal(0, 0.6, L)[c]
                             for j, (L, c) in enumerate(zip(sizes, codes)))
    y = y + np.random.default_rng(9).normal(size=len(y))
    chunks = np.array_split(np.arange(len(y)), 4)
    parts = [CI.crossed_stats(y[i], X[i], [c[i] for c in codes], sizes,
                              slopes=X[i] if slopes else None) for i in chunks]
    whole = CI.add_crossed([(p, 0.0) for p in parts])[0]
    head = CB.add_heads([(p, 0.0) for p in parts])[0]
    assert all(jk[0] != 0 for jk in head.tables)
    r = whole.cols
    entries = sum(CB.stats_row_entries(p) for p in parts)
    bounds = CB.block_bounds(entries, 3)
    held = tuple(CB.stats_block([CB.stats_values([(p, 0.0) for p in parts[:2]], lo, hi),
                                 CB.stats_values([(p, 0.0) for p in parts[2:]], lo, hi)],
                                head.counts[0][lo:hi], r)
                 for lo, hi in zip(bounds[:-1], bounds[1:]))
    x = CB.BlockedCrossing(head.q_sizes[0], np.asarray(head.counts[0], float),
                           *CB.rest_of_tables(head.counts, head.tables), r, bounds, held,
                           CB.LocalBlocks(), 0, ())
    theta = np.r_[[0.8, 0.2, 0.4] if slopes else [0.8], np.linspace(0.5, 0.7, len(sizes) - 1)]
    basis = CI.deflation_basis(CI.Reduced.of(whole, theta).schur,
                               CI.Reduced.of(whole, theta).schur_diag(), 5)
    for reml in (True, False):
        a = CI.criterion(whole, theta, reml, probes=8, steps=30, basis=basis, gradient=True,
                         rtol=0.0)
        b = CI.criterion(head, theta, reml, probes=8, steps=30, basis=basis, gradient=True,
                         crossing=x, rtol=0.0)
        assert b.objective == pytest.approx(a.objective, rel=1e-12)
        np.testing.assert_allclose(b.gradient, a.gradient, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(b.beta, a.beta, rtol=1e-12)
        np.testing.assert_allclose(b.u, a.u, rtol=0, atol=1e-11)
    red_b, red_a = CI.Reduced.of(head, theta, x), CI.Reduced.of(whole, theta)
    if slopes:
        for p, q in zip(red_b.inverse_blocks(), red_a.inverse_blocks()):
            np.testing.assert_allclose(p, q, rtol=1e-12)
    else:
        np.testing.assert_allclose(red_b.inverse_diag(), red_a.inverse_diag(), rtol=1e-12)
