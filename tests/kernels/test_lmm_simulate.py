"""Simulated response statistics have the distribution of statistics of simulated rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from daskmm.kernels.lmm_simulate import simulate_stats, simulation_basis
from daskmm.kernels.pls import group_Lambda
from daskmm.models.lmm.fit import lmm
from daskmm.models.shared.structure import lambdas
from tests.conftest import load_fixture

R = 4000


@pytest.fixture(scope="module")
def sleep():
    df = pd.read_csv(load_fixture("sleepstudy_reml")["data_path"])
    fit = lmm("Reaction ~ Days + (Days | Subject)", df, mode="in-process")
    return df, fit


def _draws(fit, theta, beta, sigma, seed):
    prob = fit.problem
    st = prob.evaluator.stats
    lam = lambdas(prob.spec, theta)
    Lams = [group_Lambda(prob.layout, lam, g.composition) for g in st.groups]
    basis = simulation_basis(st, prob.layout.n_G + prob.layout.p)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(R):
        s = simulate_stats(st, basis, Lams, np.zeros((0, 0)), beta, sigma, rng)
        g = s.groups[0]
        # Z_1'y (first subject), X'y, y'y
        out.append(np.concatenate([g.B[:, -1, 0], s.G[:2, -1], [s.G[-1, -1]]]))
    return np.array(out), st


def _rows(df, theta, beta, sigma, seed):
    """The same statistics from simulated rows."""
    rng = np.random.default_rng(seed)
    subj = df["Subject"].to_numpy()
    levels = np.unique(subj)
    code = np.searchsorted(levels, subj)
    X = np.column_stack([np.ones(len(df)), df["Days"].to_numpy(float)])
    L = np.array([[theta[0], 0.0], [theta[1], theta[2]]])
    out = []
    first = code == 0
    for _ in range(R):
        b = sigma * rng.standard_normal((len(levels), 2)) @ L.T
        y = X @ beta + np.sum(X * b[code], axis=1) + sigma * rng.standard_normal(len(df))
        out.append(np.concatenate([X[first].T @ y[first], X.T @ y, [y @ y]]))
    return np.array(out)


@pytest.mark.parametrize("case", ["noise only", "fitted model"])
def test_simulated_statistics_match_simulated_rows(sleep, case):
    df, fit = sleep
    if case == "noise only":  # y = e: y'y / sigma^2 is chi-square(n) exactly
        theta, beta, sigma = np.zeros(3), np.zeros(2), 2.0
    else:
        theta, beta, sigma = fit.theta, np.asarray(fit.beta), fit.sigma
    a, st = _draws(fit, theta, beta, sigma, 1)
    b = _rows(df, theta, beta, sigma, 2)
    se = np.sqrt(a.var(axis=0) / R + b.var(axis=0) / R)
    assert np.all(np.abs(a.mean(axis=0) - b.mean(axis=0)) < 4.5 * se)
    # standard deviations within Monte Carlo error (sd of an sd ~ sd / sqrt(2R))
    ratio = a.std(axis=0) / b.std(axis=0)
    assert np.all(np.abs(ratio - 1) < 4.5 * np.sqrt(1 / R))
    ca, cb = np.corrcoef(a.T), np.corrcoef(b.T)
    assert np.max(np.abs(ca - cb)) < 4.5 * 2 / np.sqrt(R)
    if case == "noise only":
        n = st.n
        assert abs(a[:, -1].mean() / sigma ** 2 - n) < 4.5 * np.sqrt(2 * n / R)


def test_residual_sum_of_squares_is_chi_square_on_the_residual_df(sleep):
    """Whatever the random effects drawn, ``y'y - c' M^+ c`` (the residual sum of squares of
    ``y*`` on ``[Z X]``) is ``sigma^2 chi2(n - rank [Z X])``: a check of every term of
    ``y*'y*`` against the products ``c = [Z X]'y*``, replicate by replicate."""
    _, fit = sleep
    prob = fit.problem
    st = prob.evaluator.stats
    lam = lambdas(prob.spec, fit.theta)
    Lams = [group_Lambda(prob.layout, lam, g.composition) for g in st.groups]
    basis = simulation_basis(st, 2)
    g0 = st.groups[0]
    m, s = g0.m, g0.A.shape[1]
    M = np.zeros((m * s + 2, m * s + 2))
    for i in range(m):
        M[i * s:(i + 1) * s, i * s:(i + 1) * s] = g0.A[i]
        M[i * s:(i + 1) * s, m * s:] = g0.B[:, :2, i]
        M[m * s:, i * s:(i + 1) * s] = g0.B[:, :2, i].T
    M[m * s:, m * s:] = st.G[:2, :2]
    Mp = np.linalg.pinv(M)
    dof = st.n - np.linalg.matrix_rank(M)
    assert dof == st.n - basis.rank
    rng = np.random.default_rng(3)
    rss = []
    for _ in range(R):
        sim = simulate_stats(st, basis, Lams, np.zeros((0, 0)), np.asarray(fit.beta),
                             fit.sigma, rng)
        c = np.concatenate([sim.groups[0].B[:, -1, :].T.ravel(), sim.G[:2, -1]])
        rss.append((sim.G[-1, -1] - c @ Mp @ c) / fit.sigma ** 2)
    rss = np.array(rss)
    assert rss.min() > 0
    assert abs(rss.mean() - dof) < 4.5 * np.sqrt(2 * dof / R)
    assert abs(rss.var() / (2 * dof) - 1) < 4.5 * np.sqrt(2 / R)
