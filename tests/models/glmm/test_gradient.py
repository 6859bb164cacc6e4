"""The exact Laplace gradient of crossed GLMMs (daskmm.kernels.laplace_grad): it matches
central differences of the criterion, in process and over partitions on a cluster, and the
fits it drives end at a zero projected gradient."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
from scipy import special

from daskmm.models.glmm.fit import glmm

from .helpers import fit_fixture, load_local

# the stages module: its optimiser calls are spied on
G = importlib.import_module("daskmm.models.glmm.stages")


def crossed_frame(family: str, seed: int = 5, n: int = 900, na: int = 40, nb: int = 9,
                  slope: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, na, n), rng.integers(0, nb, n)
    x, z = rng.normal(size=n), rng.uniform(-1, 1, n)
    eta = -0.4 + 0.5 * x + rng.normal(0, 0.7, na)[a] + rng.normal(0, 0.5, nb)[b]
    if slope:
        eta = eta + rng.normal(0, 0.6, nb)[b] * z
    df = pd.DataFrame({"a": a.astype(str), "b": b.astype(str), "x": x, "z": z})
    if family == "poisson":
        df["y"] = rng.poisson(np.exp(eta))
    else:
        df["y"] = rng.binomial(1, special.expit(eta))
    return df


@pytest.fixture
def captured(monkeypatch):
    """The ``fg`` and ``f`` handed to the optimiser by the last fit."""
    seen: dict = {}
    real = G.minimize

    def spy(x0, lower, **kw):
        seen.update(kw, x0=x0, lower=lower)
        x, summary = real(x0, lower, **kw)
        seen["x"] = x
        return x, summary

    monkeypatch.setattr(G, "minimize", spy)
    return seen


def central_differences(f, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    g = np.empty_like(x)
    for i in range(len(x)):
        up, dn = x.copy(), x.copy()
        up[i] += h
        dn[i] -= h
        g[i] = (f(up) - f(dn)) / (2 * h)
    return g


def check_gradient(seen: dict, points: list[np.ndarray]) -> None:
    fg, f = seen["fg"], seen["f"]
    assert fg is not None, "a crossed canonical-link fit runs the gradient method"
    for x in points:
        v, g = fg(x)
        assert v == pytest.approx(f(x), rel=1e-12)
        fd = central_differences(f, x)
        scale = max(1.0, float(np.max(np.abs(fd))))
        assert np.max(np.abs(g - fd)) / scale < 2e-5, (x, g, fd)


def probes(seen: dict, rng: np.random.Generator) -> list[np.ndarray]:
    """The optimum, a random point near it and one with the first theta near zero."""
    x = np.asarray(seen["x"], float)
    nt = int(np.sum(np.isfinite(seen["lower"])))
    far = x + rng.normal(0, 0.15, len(x))
    far[:nt] = np.abs(far[:nt]) + 0.05
    small = x.copy()
    small[0] = 1e-3
    return [x, far, small]


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_gradient_matches_central_differences_in_process(family, captured):
    df = crossed_frame(family)
    res = glmm("y ~ x + (1 | a) + (1 | b)", df, family, mode="in-process")
    assert res.optinfo["gradient_norm"] < 1e-6
    check_gradient(captured, probes(captured, np.random.default_rng(1)))


def test_gradient_with_a_scalar_slope_term(captured):
    df = crossed_frame("poisson", slope=True)
    res = glmm("y ~ x + (1 | a) + (0 + z | b)", df, "poisson", mode="in-process")
    assert res.optinfo["gradient_norm"] < 1e-6
    check_gradient(captured, probes(captured, np.random.default_rng(2)))


def test_gradient_with_an_aliased_fixed_column(captured):
    df = crossed_frame("binomial")
    df["x2"] = 2.0 * df["x"]  # aliased: dropped, as glmer does
    res = glmm("y ~ x + x2 + (1 | a) + (1 | b)", df, "binomial", mode="in-process")
    assert [f["term"] for f in res.to_dict()["fixef"]] == ["(Intercept)", "x"]
    check_gradient(captured, probes(captured, np.random.default_rng(3))[:2])


def test_gradient_over_partitions_matches_in_process(client, captured):
    df = crossed_frame("binomial", seed=8)
    glmm("y ~ x + (1 | a) + (1 | b)", df, "binomial", mode="in-process")
    fg_local, x = captured["fg"], np.asarray(captured["x"], float)
    glmm("y ~ x + (1 | a) + (1 | b)", df, "binomial", client=client, npartitions=3,
         factors=["a"])
    probe = x + np.random.default_rng(4).normal(0, 0.1, len(x))
    probe[:2] = np.abs(probe[:2])
    v1, g1 = fg_local(probe)
    v2, g2 = captured["fg"](probe)
    assert v2 == pytest.approx(v1, rel=1e-10)
    np.testing.assert_allclose(g2, g1, rtol=1e-7, atol=1e-7)
    check_gradient(captured, [probe])


def test_gradient_method_ends_at_the_bobyqa_optimum(captured):
    """The gradient fit of the crossed fixture reaches BOBYQA's optimum (or better) in fewer
    evaluations, at a projected gradient below 1e-6."""
    fx = load_local("crossed_binomial")
    grad = fit_fixture(fx)
    bob = fit_fixture(fx, optimizer_options={"method": "bobyqa"})
    assert grad.optinfo["gradient_norm"] < 1e-6
    assert grad.objective <= bob.objective + 1e-8 * abs(bob.objective)
    assert grad.optinfo["feval"] < bob.optinfo["feval"]


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_two_factor_gradient_pass_equals_the_general_one(order):
    """The scalar loop for one local and one crossed factor gives the general pass's sums,
    with ``theta`` in either order of the two factors."""
    from daskmm.kernels.laplace_grad import gradient_pass, gradient_pass_two

    rng = np.random.default_rng(4)
    n, m, n_g, p = 3000, 60, 11, 2
    l_col, g_col = rng.integers(0, m, (1, n)), rng.integers(0, n_g, (1, n))
    l_z, g_z = rng.uniform(0.5, 1.5, (1, n)), rng.normal(size=(1, n))
    l_th, g_th = (np.array([0]), np.array([1])) if order == "ab" else \
        (np.array([1]), np.array([0]))
    lam = np.array([0.7, 0.4])
    start = np.arange(m, dtype=np.int64)
    size, col_block = np.ones(m, dtype=np.int64), np.arange(m, dtype=np.int64)
    T = rng.normal(size=(n_g, n_g))
    args = (l_col, l_z, l_th, g_col, g_z, g_th, lam, rng.normal(size=m),
            rng.normal(size=n_g), rng.normal(size=n), rng.integers(0, 2, n).astype(float),
            np.ones(n), rng.normal(size=(n, p)), 0, rng.uniform(0.1, 1, m), start, size,
            start.copy(), col_block, rng.normal(size=(m, n_g)), T @ T.T, 1e-300)
    for got, want in zip(gradient_pass_two(*args), gradient_pass(*args), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
