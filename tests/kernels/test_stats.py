"""Per-partition statistics: any chunking of the rows gives the single-machine statistics
(sgkit style: run the kernel over several chunkings and compare)."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.kernels.stats import Layout, concat_groups, merge_levels, partition_stats


def data(seed=0, n=500, ng=23, nh=6):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, ng, n)
    h = rng.integers(0, nh, n)
    inner = g * 10 + rng.integers(0, 3, n)  # nested in g
    x = rng.normal(size=n)
    X = np.column_stack([np.ones(n), x])
    y = rng.normal(size=n)
    w = rng.uniform(0.5, 2, n)
    Z = {"g": X, "h": np.ones((n, 1)), "in": np.ones((n, 1))}
    keys = {"g": g, "h": h, "in": inner}
    return y, X, w, Z, keys


def layout(nested):
    return Layout("g", ["in"] if nested else [], ["h"], {"g": 2, "h": 1, "in": 1},
                  {"h": np.arange(6)}, p=2)


def take(arrs, idx):
    y, X, w, Z, keys = arrs
    return y[idx], X[idx], w[idx], {k: v[idx] for k, v in Z.items()}, \
        {k: v[idx] for k, v in keys.items()}


def assert_same(a, b):
    np.testing.assert_allclose(a.G, b.G, rtol=1e-12, atol=1e-12)
    assert a.n == b.n
    assert len(a.groups) == len(b.groups)
    for ga, gb in zip(a.groups, b.groups, strict=True):
        assert ga.composition == gb.composition
        np.testing.assert_array_equal(ga.levels, gb.levels)
        for na, nb in zip(ga.nested_levels, gb.nested_levels, strict=True):
            np.testing.assert_array_equal(na, nb)
        np.testing.assert_allclose(ga.A, gb.A, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ga.B, gb.B, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("nchunks", [2, 5, 11])
def test_aligned_chunkings_match_single_machine(nested, nchunks):
    arrs = data()
    lay = layout(nested)
    whole = concat_groups([partition_stats(*arrs, lay)])
    rng = np.random.default_rng(nchunks)
    bucket = rng.integers(0, nchunks, 23)[arrs[4]["g"]]  # all rows of a level together
    parts = [partition_stats(*take(arrs, np.flatnonzero(bucket == b)), lay)
             for b in range(nchunks)]
    assert_same(concat_groups(parts), whole)


@pytest.mark.parametrize("nchunks", [2, 7])
def test_row_chunkings_merge_by_level(nchunks):
    arrs = data(1)
    lay = layout(False)
    whole = concat_groups([partition_stats(*arrs, lay)])
    chunks = np.array_split(np.arange(len(arrs[0])), nchunks)
    parts = [partition_stats(*take(arrs, c), lay) for c in chunks]
    assert_same(merge_levels(parts), whole)


def test_nested_blocks_hold_their_inner_levels():
    arrs = data(2)
    st = concat_groups([partition_stats(*arrs, layout(True))])
    g, inner = arrs[4]["g"], arrs[4]["in"]
    for grp in st.groups:
        for lev, row in zip(grp.levels, grp.nested_levels[0], strict=True):
            assert sorted(row) == sorted(set(inner[g == lev]))
            assert grp.A.shape[1] == 2 + len(row)
