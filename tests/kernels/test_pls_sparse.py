"""The sparse ``R'R`` path of the blocked factor (many crossed levels, each level of the primary
factor meeting few of them) gives the dense path's criterion and gradient."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

from daskmm.distributed.execution import InProcess
from daskmm.formula.parse import parse_formula
from daskmm.kernels import pls

lmm_module = importlib.import_module("daskmm.models.lmm.criterion")


def courses(seed: int, n: int = 6000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 400, n)
    pool = rng.integers(0, 300, (400, 6))
    i = pool[s, rng.integers(0, 6, n)]
    x = rng.normal(size=n)
    y = (x * 0.3 + rng.normal(size=400)[s] + 0.5 * rng.normal(size=300)[i]
         + 0.3 * rng.normal(size=10)[i % 10] + rng.normal(size=n))
    return pd.DataFrame({"y": y, "x": x, "s": s.astype(str), "i": i.astype(str),
                         "d": (i % 10).astype(str)})


@pytest.mark.parametrize("formula", ["y ~ x + (1 | s) + (1 | i) + (1 | d)",
                                     "y ~ x + (1 + x | s) + (1 | i)"])
@pytest.mark.parametrize("reml", [True, False])
def test_sparse_equals_dense(formula, reml, monkeypatch):
    parsed = parse_formula(formula)
    df = courses(4)
    theta = None
    out = {}
    for name, limit in (("sparse", 256), ("dense", 10 ** 9)):
        monkeypatch.setattr(pls, "SPARSE_B_MIN_K", limit)
        prob = lmm_module.prepare_problem(InProcess(), parsed, df[sorted(parsed.columns)], [],
                                          None, "auto")
        assert prob.layout.k >= 256
        if theta is None:
            theta = np.concatenate([t.theta_init() for t in prob.spec.terms]) * 0.7
        used = pls.sparse_B(prob.evaluator.stats.groups[0]) is not None
        assert used == (name == "sparse")
        out[name] = lmm_module.objective_grad(prob, theta, reml)
    assert out["sparse"][0] == pytest.approx(out["dense"][0], rel=1e-12)
    np.testing.assert_allclose(out["sparse"][1], out["dense"][1], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("reml", [True, False])
def test_scalar_shortcut_equals_general_gradient(reml, monkeypatch):
    """For scalar crossed terms the gradient along a global ``theta`` comes from the diagonal
    of the leading blocks' inverses alone; it equals the general trace formula, also with
    another global ``theta`` on its zero bound (where the shortcut is not used for it)."""
    parsed = parse_formula("y ~ x + (1 | s) + (1 | i) + (1 | d)")
    df = courses(6)
    prob = lmm_module.prepare_problem(InProcess(), parsed, df[sorted(parsed.columns)], [],
                                      None, "auto")
    for theta in (np.array([0.8, 0.6, 0.4]), np.array([0.8, 0.6, 0.0])):
        short = lmm_module.objective_grad(prob, theta, reml)
        with monkeypatch.context() as mp:
            mp.setattr(pls, "diagonal_of", lambda A: None)
            general = lmm_module.objective_grad(prob, theta, reml)
        assert short[0] == pytest.approx(general[0], rel=1e-12)
        np.testing.assert_allclose(short[1], general[1], rtol=1e-9, atol=1e-9)
