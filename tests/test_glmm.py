"""``daskmm.glmm``: conformance with glmer (tests/fixtures/conformance and the fits made here in
fixtures/glmm), independent oracles (numerical integration, a dense Laplace), invariance over
partitions and workers, a single read of the input, predictions, and bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster, get_task_stream
from scipy import integrate, optimize, special, stats

from daskmm.distributed.client import NO_DASHBOARD
from daskmm.errors import DataError, ModelError
from daskmm.formula.parse import parse_formula
from daskmm.formula.spec import ModelSpec, sorted_levels
from daskmm.glmm import Response, _evaluate, _prepare, glmm
from daskmm.kernels import scalar_re as K
from tests.conftest import load_fixture

LOCAL = Path(__file__).resolve().parent / "fixtures" / "glmm"
"""glmer fits made here by ``fixtures/glmm/make_fixtures.R`` (tolPwrss = 1e-12)."""
LOCAL_FIXTURES = ["crossed_binomial", "slopes_poisson", "nested_binomial_cbind",
                  "binary_factor_response", "cbpp_laplace_tight", "nb2_glmernb"]


def load_local(fid: str) -> dict:
    fx = json.loads((LOCAL / "fits" / f"{fid}.json").read_text())
    fx["data_path"] = str(LOCAL / fx["data"])
    fx["ranef_path"] = str(LOCAL / fx["ranef"])
    return fx


def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def check_document(doc: dict, ranef: pd.DataFrame, fx: dict) -> None:
    """A GLMM result document and ranef table against a glmer fit, at the conformance
    README's tolerances: objective, logLik, AIC, BIC 1e-6; fixed effects 1e-4; theta, SE,
    vcov, variance components 1e-3; conditional modes and SDs 1e-3 relative to the larger of
    the value and the term's SD."""
    assert doc["nAGQ"] == fx["nAGQ"] and doc["link"] == fx["link"]
    assert doc["nobs"] == fx["nobs"] and doc["df"] == fx["df"]
    for k in ("objective", "logLik", "AIC", "BIC"):
        assert rel(doc[k], fx[k]) < 1e-6, k
    assert [f["term"] for f in doc["fixef"]] == fx["fixef_names"]
    assert rel([f["estimate"] for f in doc["fixef"]], fx["fixef"]) < 1e-4
    assert rel([f["std_error"] for f in doc["fixef"]], fx["se"]) < 1e-3
    assert all(0 <= f["p_value"] <= 1 for f in doc["fixef"])
    if "vcov" in fx:
        ref = np.asarray(fx["vcov"], float)
        scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
        assert np.max(np.abs(np.asarray(doc["vcov"]) - ref) / scale) < 1e-3
    assert rel(doc["theta"], fx["theta"]) < 1e-3
    assert len(doc["varcorr"]) == len(fx["varcorr"])
    for got, want in zip(doc["varcorr"], fx["varcorr"], strict=True):
        assert (got["grp"], got["var1"], got["var2"]) == (want["grp"], want["var1"],
                                                           want["var2"])
        assert rel(got["vcov"], want["vcov"]) < 1e-3
    ref = pd.read_csv(fx["ranef_path"], dtype={"level": str})
    got = ranef.astype({"level": str})
    assert len(got) == len(ref)
    m = ref.merge(got, on=["group", "term", "level"], how="left", validate="1:1")
    assert m["estimate"].notna().all(), "levels or terms missing from ranef"
    sd = {(r["grp"], r["var1"]): r["sdcor"] for r in fx["varcorr"] if r["var2"] is None}
    floor = np.array([max(sd[(g, t)], 1e-8) for g, t in zip(m["group"], m["term"])])
    assert np.max(np.abs(m["estimate"] - m["condval"])
                  / np.maximum(np.abs(m["condval"]), floor)) < 1e-3
    assert np.max(np.abs(m["std_error"] - m["condsd"]) / np.maximum(m["condsd"], floor)) < 1e-3


def fit_fixture(fx, client, **kw):
    return glmm(fx["formula"], fx["data_path"], fx["family"], nagq=fx["nAGQ"],
                factors=fx["factors"], client=client, **kw)


@pytest.mark.parametrize("fid", ["cbpp_agq25", "grouseticks_poisson"])
def test_conformance_api(fid, client):
    fx = load_fixture(fid)
    fit = fit_fixture(fx, client)
    assert fit.converged
    check_document(fit.to_dict(), fit.ranef_frame(), fx)


@pytest.mark.xfail(strict=True, reason="the reference was made with lme4's default "
                   "tolPwrss = 1e-7: lme4's own deviance function at the reference estimates "
                   "gives 184.05313 with that tolerance and 184.05257 with 1e-12 (3e-6 "
                   "relative), and its finite-difference SEs move by up to 1.3%; daskmm "
                   "converges PIRLS fully and matches the tight refit (cbpp_laplace_tight)")
def test_cbpp_laplace(client):
    fx = load_fixture("cbpp_laplace")
    fit = fit_fixture(fx, client)
    check_document(fit.to_dict(), fit.ranef_frame(), fx)


@pytest.mark.parametrize("fid", LOCAL_FIXTURES)
def test_glmer_fits(fid, client):
    """Crossed, correlated slopes, nested with cbind, a two-level factor response, cbpp with a
    tight PIRLS and the negative binomial (glmer.nb), against glmer."""
    fx = load_local(fid)
    fit = fit_fixture(fx, client)
    assert fit.converged
    check_document(fit.to_dict(), fit.ranef_frame(), fx)
    if fid == "nb2_glmernb":
        assert rel(fit.nb_size, fx["nb_size"]) < 1e-3
        assert fit.to_dict()["nb_size"] == fit.nb_size


@pytest.mark.parametrize("fid, family", [("cbpp_agq25", "binomial")])
def test_cli_matches_glmer(fid, family, client, tmp_path):
    """The CLI path (the same fit as the API's; grouseticks through the CLI added 30 s and
    nothing the API test does not check)."""
    fx = load_fixture(fid)
    out = tmp_path / "fit"
    proc = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", fx["data_path"],
                           "--formula", fx["formula"], "--family", family, "--nagq",
                           str(fx["nAGQ"]), "--factors", ",".join(fx["factors"]),
                           "--scheduler", client.scheduler.address, "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert doc["family"] == family
    rf = pd.read_parquet(out / "ranef.parquet")
    assert list(rf.columns) == ["group", "level", "term", "estimate", "std_error"]
    check_document(doc, rf, fx)
    assert "z value" in (out / "summary.txt").read_text()


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
def slopes_frame(seed=3, n=3000, m=60):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x": rng.normal(size=n), "g": rng.integers(0, m, n),
                       "h": rng.integers(0, 6, n)})
    eta = (0.2 + 0.3 * df.x + rng.normal(0, .5, m)[df.g] + rng.normal(0, .3, m)[df.g] * df.x
           + rng.normal(0, .4, 6)[df.h])
    df["y"] = rng.poisson(np.exp(eta))
    return df


def norm_rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


def assert_same_fit(a, b):
    """Objective to 1e-10, parameter vectors to 1e-8 (relative norm, as the LMM's test)."""
    assert b.objective == pytest.approx(a.objective, rel=1e-10)
    assert norm_rel(b.theta, a.theta) < 1e-8
    assert norm_rel(b.beta, a.beta) < 1e-8
    ra, rb = a.ranef_frame(), b.ranef_frame()
    assert list(ra["level"]) == list(rb["level"])
    assert np.max(np.abs(ra["estimate"] - rb["estimate"])) < 1e-8 * (
        1 + np.max(np.abs(ra["estimate"])))


@pytest.mark.parametrize("formula, family", [
    ("y ~ x + offset(log(t)) + (1 | g)", "poisson"),
    ("y ~ x + (1 + x | g)", "poisson"),
    ("y ~ x + (1 | g) + (1 | h)", "poisson"),
])
def test_invariant_to_partitions(client, formula, family):
    if "offset" in formula:
        df = simulate(3, "poisson", n=3000, m=60)
    elif "(1 | h)" in formula:  # crossed: a PIRLS round trip per step; keep it small
        df = slopes_frame(n=400, m=12)
    else:
        df = slopes_frame()
    a = glmm(formula, df, family, client=client, npartitions=1)
    b = glmm(formula, df, family, client=client, npartitions=3)  # split levels: shuffled
    assert_same_fit(a, b)


def test_invariant_to_workers():
    """1 worker against 3 workers (separate clusters), random slopes."""
    df = slopes_frame(seed=8, n=600, m=15)
    fits = []
    for workers in (1, 3):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          **NO_DASHBOARD) as cl, Client(cl) as c:
            fits.append(glmm("y ~ x + (1 + x | g)", df, "poisson", client=c, npartitions=3))
    assert_same_fit(*fits)


@pytest.mark.parametrize("formula", ["cbind(y, k - y) ~ x + (1 | g)",
                                     "cbind(y, k - y) ~ x + (1 + x | g)",
                                     "cbind(y, k - y) ~ x + (1 | g/h)"])
def test_input_read_once(client, tmp_path, formula):
    """Over every evaluation, each input partition is read exactly once (with several
    factors the metadata pass and the encoding share one read)."""
    df = simulate(4, "binomial", n=2000, m=40)
    df["h"] = np.arange(len(df)) % 3
    path = tmp_path / "d.parquet"
    path.mkdir()
    for i in range(4):  # 4 files, whole levels in each
        df[df["g"] % 4 == i].to_parquet(path / f"p{i}.parquet")
    with get_task_stream(client) as ts:
        fit = glmm(formula, str(path), "binomial", client=client)
    assert fit.optinfo["feval"] > 20
    # dask may fuse the 4 small files into fewer read tasks once columns are projected
    reads = [str(t["key"]) for t in ts.data if "read_parquet" in str(t["key"])]
    assert 1 <= len(reads) <= dd.read_parquet(str(path)).npartitions, sorted(reads)
    assert len(set(reads)) == len(reads)  # no read task ran twice


# ------------------------------------------------------------------ predictions
def test_fitted_and_predict(client):
    df = slopes_frame(seed=5, n=600, m=15)
    fit = glmm("y ~ x + (1 + x | g)", df, "poisson", client=client, npartitions=2)
    rf = fit.ranef_frame().pivot(index="level", columns="term", values="estimate")
    b0 = rf["(Intercept)"].reindex(df.g.astype(str)).to_numpy()
    b1 = rf["x"].reindex(df.g.astype(str)).to_numpy()
    eta = fit.beta[0] + fit.beta[1] * df.x.to_numpy() + b0 + b1 * df.x.to_numpy()
    link = fit.fitted("link").compute().sort_index()
    np.testing.assert_allclose(link.to_numpy(), eta, rtol=1e-12)
    np.testing.assert_allclose(fit.fitted().compute().sort_index().to_numpy(), np.exp(eta),
                               rtol=1e-12)
    new = pd.DataFrame({"x": [0.5, 0.5, np.nan], "g": [df.g.iloc[0], 999, 1]})
    pred = fit.predict(new, kind="link").compute()
    assert pred.iloc[0] == pytest.approx(fit.beta[0] + 0.5 * fit.beta[1] + rf.loc[
        str(df.g.iloc[0]), "(Intercept)"] + 0.5 * rf.loc[str(df.g.iloc[0]), "x"])
    assert pred.iloc[1] == pytest.approx(fit.beta[0] + 0.5 * fit.beta[1])  # new level: b = 0
    assert np.isnan(pred.iloc[2])
    fixed_only = fit.predict(new, kind="response", re=False).compute()
    assert fixed_only.iloc[0] == pytest.approx(np.exp(fit.beta[0] + 0.5 * fit.beta[1]))


def test_binomial_response_forms_agree(client):
    """0/1, a two-level string factor, a logical column, cbind, and a proportion with
    weights are the same model (grouped binomial and Bernoulli differ only by a constant)."""
    rng = np.random.default_rng(9)
    n = 500
    df = pd.DataFrame({"x": rng.normal(size=n), "g": rng.integers(0, 15, n)})
    df["y"] = (rng.random(n) < special.expit(0.3 * df.x + rng.normal(0, .7, 15)[df.g])
               ).astype(int)
    df["yes"] = np.where(df.y == 1, "yes", "no")
    df["ok"] = df.y.astype(bool)
    df["one"] = 1
    base = glmm("y ~ x + (1 | g)", df, "binomial", client=client)
    for f, kw in [("yes ~ x + (1 | g)", {}), ("ok ~ x + (1 | g)", {}),
                  ("cbind(y, one - y) ~ x + (1 | g)", {}),
                  ("y ~ x + (1 | g)", {"weights": "one"})]:
        other = glmm(f, df, "binomial", client=client, **kw)
        assert other.objective == pytest.approx(base.objective, rel=1e-10)
        np.testing.assert_allclose(other.beta, base.beta, rtol=1e-7)


def test_all_zero_levels_are_reported(client):
    df = simulate(12, "poisson", n=600, m=20)
    df.loc[df.g < 3, "y"] = 0
    fit = glmm("y ~ x + offset(log(t)) + (1 | g)", df, "poisson", client=client)
    assert any("all-zero responses" in w for w in fit.to_dict()["warnings"])
    assert "warning:" in fit.summary()


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kw, exc, match", [
    ({"formula": "y ~ x + (1 | g)", "family": "poisson", "frame": lambda d: d.assign(y=d.y + .5)},
     DataError, "not non-negative integers"),
    ({"formula": "y ~ x + (1 | g)", "family": "negative_binomial",
      "frame": lambda d: d.assign(y=-d.y - 1)}, DataError, "negative binomial family"),
    ({"formula": "cbind(y, k - y) ~ x + (1 | g)", "family": "binomial",
      "frame": lambda d: d.assign(y=d.k + 1)}, DataError, "out of range"),
    ({"formula": "c ~ x + (1 | g)", "family": "binomial",
      "frame": lambda d: d.assign(c=np.array(["a", "b", "c"])[d.g % 3])}, DataError,
     "3 level"),
    ({"formula": "p ~ x + (1 | g)", "family": "binomial", "weights": "k",
      "frame": lambda d: d.assign(p=d.y / d.k + 1)}, DataError, "proportion"),
    ({"formula": "y ~ x + (1 | g)", "family": "poisson", "weights": "k", "frame": None},
     ModelError, "weights apply to a binomial"),
    ({"formula": "y ~ x + (x | g)", "family": "poisson", "nagq": 5, "frame": None},
     ModelError, "nagq=5"),
    ({"formula": "y ~ x + (1 | g)", "family": "gamma", "frame": None}, ModelError,
     "family 'gamma' is not available"),
    ({"formula": "y ~ s + (1 | g)", "family": "binomial",
      "frame": lambda d: d.assign(y=(d.x > 0).astype(int), s=d.x * 50)}, DataError,
     "separate"),
])
def test_bad_input(client, kw, exc, match):
    df = simulate(5, "binomial", n=200, m=10)
    if kw["frame"]:
        df = kw["frame"](df)
    with pytest.raises(exc, match=match):
        glmm(kw["formula"], df, kw["family"], nagq=kw.get("nagq", 1),
             weights=kw.get("weights"), client=client)


def test_levels_sorted_like_lme4(client):
    df = simulate(6, "binomial", n=300, m=12)
    df["g"] = df["g"].map(lambda v: f"h{v}")
    fit = glmm("cbind(y, k - y) ~ x + (1 | g)", df, "binomial", client=client)
    assert list(fit.ranef_frame()["level"]) == sorted_levels(df["g"])
