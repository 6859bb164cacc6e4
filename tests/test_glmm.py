"""``daskmm.glmm``: lme4 conformance (cbpp), an independent oracle by numerical integration,
invariance over partitions, a single read of the input, and bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from distributed import get_task_stream
from scipy import integrate, optimize, special, stats

from daskmm.errors import DataError, ModelError
from daskmm.formula.parse import parse_formula
from daskmm.formula.spec import ModelSpec, sorted_levels
from daskmm.glmm import _evaluate, _prepare, glmm
from daskmm.kernels import scalar_re as K
from tests.conftest import load_fixture


def check_fixture(fit, fx):
    assert fit.objective == pytest.approx(fx["objective"], rel=1e-6)
    assert fit.loglik == pytest.approx(fx["logLik"], rel=1e-6)
    assert fit.aic == pytest.approx(fx["AIC"], rel=1e-6)
    assert fit.bic == pytest.approx(fx["BIC"], rel=1e-6)
    assert fit.fixef_names == fx["fixef_names"]
    np.testing.assert_allclose(fit.beta, fx["fixef"], rtol=1e-4)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov)), fx["se"], rtol=1e-3)
    np.testing.assert_allclose(fit.vcov, fx["vcov"], rtol=1e-3)
    assert fit.theta == pytest.approx(fx["theta"][0], rel=1e-3)
    rf = pd.read_csv(fx["ranef_path"])
    assert [str(v) for v in fit.ranef_levels] == [str(v) for v in rf["level"]]
    scale = max(fx["theta"][0], 1e-12)
    np.testing.assert_allclose(fit.ranef_b, rf["condval"], atol=1e-3 * scale)
    np.testing.assert_allclose(fit.ranef_sd, rf["condsd"], atol=1e-3 * scale)


def test_cbpp_agq25(client):
    fx = load_fixture("cbpp_agq25")
    fit = glmm(fx["formula"], fx["data_path"], "binomial", nagq=25, factors=fx["factors"],
               client=client)
    check_fixture(fit, fx)
    assert fit.fixef()["p_value"].between(0, 1).all()


@pytest.mark.xfail(strict=True, reason="lme4's Laplace criterion differs from the exact Laplace "
                   "formula by ~5.6e-4 at lme4's own estimates (3e-6 relative); see the note")
def test_cbpp_laplace(client):
    fx = load_fixture("cbpp_laplace")
    fit = glmm(fx["formula"], fx["data_path"], "binomial", nagq=1, factors=fx["factors"],
               client=client)
    check_fixture(fit, fx)


def test_cli_family_nagq(client, tmp_path):
    fx = load_fixture("cbpp_agq25")
    out = tmp_path / "fit"
    proc = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", fx["data_path"],
                           "--formula", fx["formula"], "--family", "binomial", "--nagq", "25",
                           "--factors", ",".join(fx["factors"]), "--scheduler",
                           client.scheduler.address, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert doc["objective"] == pytest.approx(fx["objective"], rel=1e-6)
    assert doc["family"] == "binomial" and doc["nAGQ"] == 25
    assert [f["estimate"] for f in doc["fixef"]] == pytest.approx(fx["fixef"], rel=1e-4)
    rf = pd.read_parquet(out / "ranef.parquet")
    assert list(rf.columns) == ["group", "level", "term", "estimate", "std_error"]


# ------------------------------------------------------------------ oracle
def simulate(seed, family, n=120, m=8):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, m, n)
    x = rng.normal(size=n)
    eta = -0.3 + 0.6 * x + rng.normal(0, 0.8, m)[g]
    df = pd.DataFrame({"x": x, "g": g, "t": rng.uniform(0.5, 2.0, n)})
    if family == "poisson":
        df["y"] = rng.poisson(np.exp(eta + np.log(df["t"])))
    else:
        df["k"] = rng.integers(1, 6, n)
        df["y"] = rng.binomial(df["k"], special.expit(eta))
    return df


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
        return _prepare(df, ModelSpec.build(p, sch, {}, None, None), None, K.POISSON)
    p = parse_formula("y ~ x + (1 | g)")
    sch = {c: df[c].dtype for c in ("y", "x", "g", "k")}
    spec = ModelSpec.build(p, {c: sch[c] for c in ("y", "x", "g")}, {}, None, None)
    trials = ModelSpec.build(dataclasses.replace(p, response="I(k)"), sch, {}, None, None)
    return _prepare(df, spec, trials, K.BINOMIAL)


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


# ------------------------------------------------------------------ distributed behaviour
def test_invariant_to_partitions(client):
    df = simulate(3, "poisson", n=3000, m=60)
    f = "y ~ x + offset(log(t)) + (1 | g)"
    a = glmm(f, df, "poisson", client=client, npartitions=1)
    b = glmm(f, df, "poisson", client=client, npartitions=7)  # split levels: shuffled
    assert b.objective == pytest.approx(a.objective, rel=1e-10)
    assert b.theta == pytest.approx(a.theta, rel=1e-8)
    np.testing.assert_allclose(b.beta, a.beta, rtol=1e-8)
    np.testing.assert_allclose(b.ranef_b, a.ranef_b, rtol=1e-7, atol=1e-10)


def test_input_read_once(client, tmp_path):
    """Over ~100 evaluations, each input partition is read exactly once."""
    df = simulate(4, "binomial", n=2000, m=40)
    path = tmp_path / "d.parquet"
    path.mkdir()
    for i in range(4):  # 4 files, whole levels in each
        df[df["g"] % 4 == i].to_parquet(path / f"p{i}.parquet")
    with get_task_stream(client) as ts:
        fit = glmm("cbind(y, k - y) ~ x + (1 | g)", str(path), "binomial", client=client)
    assert fit.optinfo["feval"] > 20
    # dask may fuse the 4 small files into fewer read tasks once columns are projected
    reads = [str(t["key"]) for t in ts.data if "read_parquet" in str(t["key"])]
    assert 1 <= len(reads) <= dd.read_parquet(str(path)).npartitions, sorted(reads)
    assert len(set(reads)) == len(reads)  # no read task ran twice


@pytest.mark.parametrize("kw, exc, match", [
    ({"formula": "y ~ x + (1 | g)", "family": "poisson", "frame": lambda d: d.assign(y=d.y + .5)},
     DataError, "not non-negative integers"),
    ({"formula": "cbind(y, k - y) ~ x + (1 | g)", "family": "binomial",
      "frame": lambda d: d.assign(y=d.k + 1)}, DataError, "out of range"),
    ({"formula": "y ~ x + (x | g)", "family": "poisson", "frame": None}, ModelError,
     "one random intercept"),
    ({"formula": "y ~ x + (1 | g)", "family": "gamma", "frame": None}, ModelError,
     "family 'gamma' is not available"),
])
def test_bad_input(client, kw, exc, match):
    df = simulate(5, "binomial", n=200, m=10)
    if kw["frame"]:
        df = kw["frame"](df)
    with pytest.raises(exc, match=match):
        glmm(kw["formula"], df, kw["family"], client=client)


def test_levels_sorted_like_lme4(client):
    df = simulate(6, "binomial", n=300, m=12)
    df["g"] = df["g"].map(lambda v: f"h{v}")
    fit = glmm("cbind(y, k - y) ~ x + (1 | g)", df, "binomial", client=client)
    assert list(fit.ranef_levels) == sorted_levels(df["g"])
