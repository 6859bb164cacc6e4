"""Independent oracle: the profiled criterion equals the marginal (restricted) likelihood
computed densely from ``V = Z Lambda Lambda' Z' + W^{-1}`` on small random problems, at
arbitrary ``theta`` (not only at the optimum), for one factor, crossed, nested and weighted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from daskmm.data.io import read_data
from daskmm.formula.parse import parse_formula
from daskmm.models.lmm.criterion import objective, prepare_problem


def dense_criterion(y, X, Z, Lam, w, reml):
    n, p = X.shape
    V = Z @ Lam @ Lam.T @ Z.T + np.diag(1.0 / w)
    Vi = np.linalg.inv(V)
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    r = y - X @ beta
    quad = r @ Vi @ r
    ldV = np.linalg.slogdet(V)[1]
    if reml:
        s2 = quad / (n - p)
        return (n - p) * np.log(2 * np.pi * s2) + ldV + np.linalg.slogdet(X.T @ Vi @ X)[1] + (n - p)
    return n * np.log(2 * np.pi * quad / n) + ldV + n


def indicator(codes, nlev):
    M = np.zeros((len(codes), nlev))
    M[np.arange(len(codes)), codes] = 1.0
    return M


def simulate(rng, n=120, ng=9, nh=4, weighted=False):
    g = rng.integers(0, ng, n)
    g[:ng] = np.arange(ng)
    h = rng.integers(0, nh, n)
    h[:nh] = np.arange(nh)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=ng)[g] + rng.normal(size=nh)[h] + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "x": x, "g": [f"g{i:02d}" for i in g],
                       "h": [f"h{i}" for i in h],
                       "w": rng.uniform(0.5, 2.0, n) if weighted else np.ones(n)})
    return df, g, h


CASES = [
    # formula, theta, builder of (Z, Lambda) from (df, g, h, theta)
    ("y ~ x + (1 + x | g)", [0.8, -0.3, 0.5], "slope"),
    ("y ~ x + (1 | g) + (1 | h)", [0.7, 1.3], "crossed"),
    ("y ~ x + (1 | h/g)", [0.6, 0.9], "nested"),
    ("y ~ x + (x || g)", [1.1, 0.4], "uncorr"),
]


def build(kind, df, g, h, theta):
    x = df["x"].to_numpy()
    ng, nh = g.max() + 1, h.max() + 1
    Ig, Ih = indicator(g, ng), indicator(h, nh)
    if kind == "slope":
        Z = np.hstack([Ig, Ig * x[:, None]])  # blocked by column; Lambda to match
        L = np.array([[theta[0], 0], [theta[1], theta[2]]])
        Lam = np.kron(L, np.eye(ng))
    elif kind == "crossed":  # g has more levels: first in lme4's order
        Z = np.hstack([Ig, Ih])
        Lam = np.diag(np.r_[np.full(ng, theta[0]), np.full(nh, theta[1])])
    elif kind == "nested":  # g:h (inner, more levels) first, then h
        inner = pd.factorize(pd.Series(g).astype(str) + ":" + pd.Series(h).astype(str))[0]
        Z = np.hstack([indicator(inner, inner.max() + 1), Ih])
        Lam = np.diag(np.r_[np.full(inner.max() + 1, theta[0]), np.full(nh, theta[1])])
    else:
        Z = np.hstack([Ig, Ig * x[:, None]])
        Lam = np.diag(np.r_[np.full(ng, theta[0]), np.full(ng, theta[1])])
    return Z, Lam


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("formula,theta,kind", CASES)
@pytest.mark.parametrize("weighted", [False, True])
def test_objective_equals_dense_likelihood(formula, theta, kind, reml, weighted, client):
    rng = np.random.default_rng(abs(hash((kind, weighted))) % 2 ** 32)
    df, g, h = simulate(rng, weighted=weighted)
    prob = prepare_problem(client, parse_formula(formula), read_data(df, npartitions=3), [],
                           "w" if weighted else None, "gathered")
    ours = objective(prob, np.asarray(theta), reml)[0].objective
    Z, Lam = build(kind, df, g, h, theta)
    X = np.column_stack([np.ones(len(df)), df["x"]])
    ref = dense_criterion(df["y"].to_numpy(), X, Z, Lam, df["w"].to_numpy(), reml)
    assert ours == pytest.approx(ref, rel=1e-10)
