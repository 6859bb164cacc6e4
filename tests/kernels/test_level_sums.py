"""The per-level sums equal numpy's bincount for every key type and weighting, on both paths
(compiled from ``JIT_MIN_ROWS`` rows, numpy below), and the two paths agree to the last bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from daskmm.kernels import level_sums
from daskmm.kernels.level_sums import ONES, level_pair_sums

PAIRS = np.array([[ONES, ONES], [ONES, 0], [0, 0], [1, ONES], [0, 1], [1, 1]])


def reference(keys, cols, w):
    codes, levels = pd.factorize(keys, sort=True)
    ones = np.ones(len(keys))
    get = [*cols, ones]
    out = []
    for a, b in PAIRS:
        prod = get[a] * get[b] * (w if w is not None else 1.0)
        out.append(np.bincount(codes, prod, minlength=len(levels)))
    return np.array(out), np.asarray(levels), codes


@pytest.fixture(params=["compiled", "numpy"])
def path(request, monkeypatch):
    monkeypatch.setattr(level_sums, "JIT_MIN_ROWS", 0 if request.param == "compiled" else 10**12)
    return request.param


@pytest.mark.parametrize("kind", ["compact", "wide", "negative", "string"])
@pytest.mark.parametrize("weighted", [False, True])
def test_equals_bincount(kind, weighted, path):
    rng = np.random.default_rng(3)
    n = 5000
    base = rng.integers(0, 300, n)
    keys = {"compact": base + 10_000, "wide": base * 10 ** 9, "negative": base - 150,
            "string": np.array([f"L{k}" for k in base], dtype=object)}[kind]
    cols = [rng.normal(size=n), rng.normal(size=n)]
    w = rng.uniform(0.5, 2.0, n) if weighted else None
    sums, levels, codes = level_pair_sums(keys, cols, PAIRS, w, want_codes=True)
    ref, ref_levels, ref_codes = reference(keys, cols, w)
    np.testing.assert_array_equal(levels, ref_levels)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_allclose(sums, ref, rtol=1e-13, atol=1e-12)


def test_empty_and_readonly_columns(path):
    sums, levels, codes = level_pair_sums(np.array([], dtype=np.int64), [np.array([])], PAIRS[:3])
    assert sums.shape == (3, 0) and len(levels) == 0 and codes is None
    x = np.arange(4.0)
    x.flags.writeable = False  # Arrow-backed columns arrive read-only
    sums, levels, _ = level_pair_sums(np.array([1, 1, 2, 2]), [x], np.array([[0, 0]]))
    np.testing.assert_array_equal(sums, [[1.0, 13.0]])
    np.testing.assert_array_equal(levels, [1, 2])


@pytest.mark.parametrize("weighted", [False, True])
def test_compiled_and_numpy_paths_agree_bitwise(weighted, monkeypatch):
    rng = np.random.default_rng(5)
    n = 20_000
    keys = rng.integers(0, 700, n)
    cols = [rng.normal(size=n) * 1e3, rng.lognormal(size=n)]
    w = rng.uniform(0.1, 3.0, n) if weighted else None
    out = {}
    for name, limit in (("compiled", 0), ("numpy", 10 ** 12)):
        monkeypatch.setattr(level_sums, "JIT_MIN_ROWS", limit)
        sums, levels, codes = level_pair_sums(keys, cols, PAIRS, w, want_codes=True)
        out[name] = (sums.copy(), levels.copy(), codes.copy())
    for a, b in zip(out["compiled"], out["numpy"]):
        np.testing.assert_array_equal(a, b)
