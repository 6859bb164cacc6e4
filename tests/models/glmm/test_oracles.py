"""The GLMM criterion against independent oracles: numerical integration (AGQ), an independent
Laplace, and a dense Laplace on small random problems."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, optimize, special, stats

from daskmm.formula.parse import parse_formula
from daskmm.formula.spec import ModelSpec
from daskmm.kernels import scalar_re as K
from daskmm.models.glmm.criteria import _evaluate
from daskmm.models.glmm.encode import Response
from daskmm.models.glmm.encode import prepare_partition as _prepare
from daskmm.models.glmm.fit import glmm
from tests.models.glmm.helpers import simulate


def exact_minus2loglik(df, family, link, theta, beta):
    """-2 log of the marginal likelihood, level by level, by adaptive quadrature (scipy)."""
    inv = {"logit": special.expit, "probit": stats.norm.cdf,
           "cloglog": lambda e: -np.expm1(-np.exp(e)), "log": np.exp}[link]
    total = 0.0
    for _, d in df.groupby("g"):
        eta0 = beta[0] + beta[1] * d["x"].to_numpy()
        if family == "poisson":
            eta0 = eta0 + np.log(d["t"].to_numpy())

        def logf(u, d=d, eta0=eta0):
            mu = inv(eta0 + theta * u)
            if family == "poisson":
                ll = stats.poisson.logpmf(d["y"], mu).sum()
            else:
                ll = stats.binom.logpmf(d["y"], d["k"], mu).sum()
            return ll + stats.norm.logpdf(u)
        peak = optimize.minimize_scalar(lambda u: -logf(u), bounds=(-10, 10),
                                        method="bounded").x
        c = logf(peak)
        # u ~ N(0, 1) a priori: beyond +-12 around the peak nothing is left to integrate
        val, _ = integrate.quad(lambda u, c=c: np.exp(logf(u) - c), peak - 12, peak + 12,
                                points=[peak], epsabs=0, epsrel=1e-12, limit=400)
        total += -2 * (np.log(val) + c)
    return total


def encoded(df, family):
    if family == "poisson":
        p = parse_formula("y ~ x + offset(log(t)) + (1 | g)")
        sch = {c: df[c].dtype for c in ("y", "x", "t", "g")}
        return _prepare(df, ModelSpec.build(p, sch, {}, None, None), Response("y"),
                        K.POISSON, None)
    p = parse_formula("y ~ x + (1 | g)")
    sch = {c: df[c].dtype for c in ("y", "x", "g", "k")}
    spec = ModelSpec.build(p, {c: sch[c] for c in ("y", "x", "g")}, {}, None, None)
    trials = ModelSpec.build(dataclasses.replace(p, response="I(k)"), sch, {}, None, None)
    return _prepare(df, spec, Response("y", trials), K.BINOMIAL, None)


@pytest.mark.parametrize("family, link", [("binomial", "logit"), ("binomial", "probit"),
                                          ("binomial", "cloglog"), ("poisson", "log")])
@pytest.mark.parametrize("theta, beta", [(0.7, (-0.2, 0.5)), (1.6, (0.3, -0.4))])
def test_agq_equals_numerical_integration(family, link, theta, beta):
    df = simulate(1, family)
    part = encoded(df, family)
    codes = {"logit": K.LOGIT, "probit": K.PROBIT, "cloglog": K.CLOGLOG, "log": K.LOG}
    fam = K.POISSON if family == "poisson" else K.BINOMIAL
    nodes, w = np.polynomial.hermite_e.hermegauss(25)
    ours = _evaluate(part, theta, np.array(beta), fam, codes[link], nodes, w) - 2 * part.const
    exact = exact_minus2loglik(df, family, link, theta, beta)
    assert ours == pytest.approx(exact, rel=1e-8)


@pytest.mark.parametrize("family, link", [("binomial", "logit"), ("binomial", "cloglog"),
                                          ("poisson", "log")])
def test_laplace_equals_independent_laplace(family, link):
    """Laplace: -2 [f(u*) - u*^2/2] + log(1 + theta^2 sum W(u*)), the mode found by scipy and
    the Fisher weights written out, level by level."""
    theta, beta = 0.9, np.array([-0.1, 0.4])
    df = simulate(2, family)
    part = encoded(df, family)
    inv = {"logit": special.expit, "cloglog": lambda e: -np.expm1(-np.exp(e)),
           "log": np.exp}[link]
    total = 0.0
    for _, d in df.groupby("g"):
        eta0 = beta[0] + beta[1] * d["x"].to_numpy()
        if family == "poisson":
            eta0 = eta0 + np.log(d["t"].to_numpy())

        def pen(u, d=d, eta0=eta0):
            mu = inv(eta0 + theta * u)
            ll = (stats.poisson.logpmf(d["y"], mu) if family == "poisson"
                  else stats.binom.logpmf(d["y"], d["k"], mu)).sum()
            return ll - u * u / 2
        u = optimize.minimize_scalar(lambda v: -pen(v), bounds=(-10, 10), method="bounded",
                                     options={"xatol": 1e-12}).x
        eta = eta0 + theta * u
        if family == "poisson":
            W = np.exp(eta)
        elif link == "logit":
            p = special.expit(eta)
            W = d["k"] * p * (1 - p)
        else:
            p = inv(eta)
            dmu = np.exp(eta - np.exp(eta))
            W = d["k"] * dmu ** 2 / (p * (1 - p))
        total += -2 * pen(u) + np.log(1 + theta ** 2 * np.sum(W))
    codes = {"logit": K.LOGIT, "cloglog": K.CLOGLOG, "log": K.LOG}
    fam = K.POISSON if family == "poisson" else K.BINOMIAL
    nodes, w = np.polynomial.hermite_e.hermegauss(1)
    ours = _evaluate(part, theta, beta, fam, codes[link], nodes, w) - 2 * part.const
    assert ours == pytest.approx(total, rel=1e-9)


def dense_laplace(y, wt, X, Z, Lam, beta, family):
    """-2 log-likelihood by the Laplace approximation with dense matrices: Newton on the
    penalised log-likelihood for ``u`` (``eta = X beta + Z Lam u``), then
    ``-2 [l(u*) - |u*|^2/2] + log det(I + Lam'Z' W Z Lam)`` (canonical links: W is the
    negative Hessian of l)."""
    ZL = Z @ Lam
    u = np.zeros(ZL.shape[1])
    for _ in range(100):
        eta = X @ beta + ZL @ u
        mu = special.expit(eta) * wt if family == "binomial" else np.exp(eta)
        W = mu * (1 - mu / wt) if family == "binomial" else mu
        H = ZL.T @ (W[:, None] * ZL) + np.eye(len(u))
        step = np.linalg.solve(H, ZL.T @ (y - mu) - u)
        u += step
        if np.max(np.abs(step)) < 1e-13:
            break
    eta = X @ beta + ZL @ u
    if family == "binomial":
        ll = stats.binom.logpmf(y, wt, special.expit(eta)).sum()
        mu = special.expit(eta) * wt
        W = mu * (1 - mu / wt)
    else:
        ll = stats.poisson.logpmf(y, np.exp(eta)).sum()
        W = np.exp(eta)
    H = ZL.T @ (W[:, None] * ZL) + np.eye(len(u))
    return -2 * (ll - u @ u / 2) + np.linalg.slogdet(H)[1]


def indicators(codes):
    return (codes[:, None] == np.unique(codes)[None, :]).astype(float)


@pytest.mark.parametrize("case", ["slopes", "crossed", "nested"])
def test_laplace_equals_dense_laplace(case, client):
    """The criterion reported at a fit's (theta, beta) equals a dense single-machine Laplace
    approximation built without any daskmm code (blocked local PIRLS for slopes and nesting,
    the client-driven global PIRLS for crossed factors). The optimiser is stopped early: the
    check is of the criterion, at whatever point it stopped."""
    early = {"maxeval": 25, "polish": False}
    rng = np.random.default_rng(11)
    n = 400
    df = pd.DataFrame({"x": rng.normal(size=n), "g": rng.integers(0, 12, n),
                       "h": rng.integers(0, 7, n)})
    if case == "slopes":
        eta = 0.2 + 0.4 * df.x + rng.normal(0, .5, 12)[df.g] + rng.normal(0, .3, 12)[df.g] * df.x
        df["y"] = rng.poisson(np.exp(eta))
        fit = glmm("y ~ x + (1 + x | g)", df, "poisson", client=client, npartitions=3,
                   optimizer_options=early)
        G = indicators(df.g.to_numpy())
        Z = np.hstack([G, G * df.x.to_numpy()[:, None]])
        t = fit.theta
        lam = np.array([[t[0], 0], [t[1], t[2]]])
        # columns ordered intercepts then slopes: Lambda acts per level on (intercept, slope)
        m = G.shape[1]
        Lam = np.kron(lam, np.eye(m))
        family, wt = "poisson", np.ones(n)
    else:
        df["k"] = rng.integers(1, 5, n)
        inner = df.g * 10 + df.h if case == "nested" else df.h
        eta = -0.2 + 0.5 * df.x + rng.normal(0, .6, 12)[df.g] + rng.normal(0, .5, 200)[inner]
        df["y"] = rng.binomial(df.k, special.expit(eta))
        if case == "nested":
            fit = glmm("cbind(y, k - y) ~ x + (1 | g/h)", df, "binomial", client=client,
                       factors=["g", "h"], npartitions=3, optimizer_options=early)
            terms = {"h:g": (df.g * 10 + df.h).to_numpy(), "g": df.g.to_numpy()}
        else:
            fit = glmm("cbind(y, k - y) ~ x + (1 | g) + (1 | h)", df, "binomial",
                       client=client, factors=["g", "h"], npartitions=3,
                       optimizer_options=early)
            terms = {"g": df.g.to_numpy(), "h": df.h.to_numpy()}
        blocks = [indicators(v) for v in terms.values()]
        Z = np.hstack(blocks)
        Lam = np.diag(np.concatenate([np.full(b.shape[1], t) for b, t in zip(blocks,
                                                                               fit.theta)]))
        family, wt = "binomial", df.k.to_numpy(float)
    X = np.column_stack([np.ones(n), df.x])
    want = dense_laplace(df.y.to_numpy(float), wt, X, Z, Lam, fit.beta, family)
    assert fit.objective == pytest.approx(want, rel=1e-9)


# ------------------------------------------------------------------ distributed behaviour
