"""The binomial GLMM with random slopes on one crossed factor, ``yb ~ x + (1 + x | f1) +
(1 | f2)``, on the sparse and matrix-free paths (daskmm/models/glmm/crossed.py): against
glmer (tests/fixtures/crossed/make_crossed_slopes.R: 6,000 rows at 300 x 150 levels, glmer
bobyqa at rhoend 1e-10 and tolPwrss 1e-12) and against daskmm's dense path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special

import daskmm

from ..lmm.crossed_data import slopes_design

REF = json.loads((Path(__file__).parents[2] / "fixtures" / "crossed" /
                  "lme4_crossed_glmm_slopes.json").read_text())["binomial"]


@pytest.fixture(scope="module")
def design():
    frame = slopes_design(6000, 300, 150, [0.8, 0.5, 0.4])
    assert frame["yb"].sum() == REF["check"]["sum_yb"]  # R's data, to the last row
    assert frame["x"].sum() == pytest.approx(REF["check"]["sum_x"], rel=1e-13)
    return frame


@pytest.mark.parametrize("path", ["sparse", "matrix-free"])
def test_the_fit_is_glmers(design, path):
    fit = daskmm.glmm(REF["formula"], design, "binomial", crossed=path, mode="in-process")
    info = fit.optinfo.crossed
    assert info["path"] == path and info["factors"] == ["f1", "f2"]
    assert fit.ngroups == REF["ngroups"]
    rr = REF["ranef"]
    idx = np.asarray(rr["levels"]) - 1
    g, h = fit.ranef["f1"], fit.ranef["f2"]
    assert [g.levels[i] for i in idx] == rr["f1_names"]
    assert g.b.shape == (300, 2) and g.cov.shape == (300, 2, 2)
    if path == "sparse":  # glmer's fit, to its own convergence
        np.testing.assert_allclose(fit.theta, REF["theta"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(fit.beta, REF["beta"], rtol=1e-6)
        # 2.2e-6 below glmer's: its log|L|^2 is at its last PIRLS iterate but one (the
        # crossed GLMM's glmer tests, tests/models/glmm/test_crossed.py, hold 1e-5 too)
        assert fit.objective == pytest.approx(REF["minus2loglik"], abs=1e-5)
        np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov)), REF["se"], rtol=1e-4)
        np.testing.assert_allclose(g.b[idx], rr["f1"], atol=1e-6)
        np.testing.assert_allclose(h.b[idx, 0], rr["f2"], atol=1e-6)
        # 1e-5 of the blocks' scale (0.1-0.2) on the small covariances too
        np.testing.assert_allclose(g.cov[idx], rr["f1_postvar"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h.cov[idx, 0, 0], rr["f2_postvar"], rtol=1e-5)
        assert fit.certified
    else:  # within the estimate's error; the covariances by the named approximation
        se = info["criterion_se"]
        assert 0 < se < 1 and abs(fit.objective - REF["minus2loglik"]) < 3 * se
        np.testing.assert_allclose(fit.theta, REF["theta"], rtol=1e-3, atol=2e-4)
        np.testing.assert_allclose(fit.beta, REF["beta"], rtol=1e-3)
        np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov)), REF["se"], rtol=1e-3)
        np.testing.assert_allclose(g.b[idx], rr["f1"], atol=1e-3)
        np.testing.assert_allclose(g.cov[idx], rr["f1_postvar"], rtol=5e-2, atol=1e-3)
        assert "A^-1's diagonal blocks" in info["conditional_variances"]
        # Newton steps on the estimated criterion and its gradient (T's entries too)
        assert fit.optinfo.optimizer == "Newton (stochastic trace gradient)"
        assert fit.converged and fit.certified and fit.optinfo.feval <= 30


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(8)
    n, ng, nh = 2000, 100, 40
    g, h = rng.integers(0, ng, n), rng.integers(0, nh, n)
    x = rng.normal(size=n)
    eta = (-0.3 + 0.5 * x + rng.normal(0, 0.8, ng)[g] + rng.normal(0, 0.5, ng)[g] * x
           + rng.normal(0, 0.5, nh)[h])
    return pd.DataFrame({"yc": rng.poisson(np.exp(eta)).astype(float), "x": x,
                         "yb": (rng.random(n) < special.expit(eta)).astype(float),
                         "g": [f"g{i:03d}" for i in g], "h": [f"h{i:03d}" for i in h]})


def test_the_poisson_sparse_fit_is_the_dense_fit(small):
    f = "yc ~ x + (1 + x | g) + (1 | h)"
    dense = daskmm.glmm(f, small, "poisson", crossed="dense", mode="in-process")
    sparse = daskmm.glmm(f, small, "poisson", crossed="sparse", mode="in-process")
    np.testing.assert_allclose(sparse.theta, dense.theta, rtol=1e-6, atol=1e-8)
    assert sparse.objective == pytest.approx(dense.objective, abs=1e-7)
    np.testing.assert_allclose(sparse.beta, dense.beta, rtol=1e-6)
    for f_ in ("g", "h"):
        np.testing.assert_allclose(sparse.ranef[f_].b, dense.ranef[f_].b, atol=1e-6)
        np.testing.assert_allclose(sparse.ranef[f_].cov, dense.ranef[f_].cov, rtol=1e-5,
                                   atol=1e-10)
    # predictions use the slopes: the fixed part plus the level's intercept and slope
    new = pd.DataFrame({"x": [0.3, 2.0], "g": ["g001", "g999"], "h": ["h005", "h006"]})
    got = np.asarray(sparse.predict(new, kind="link", allow_new_levels=True).compute())
    bg = dict(zip(sparse.ranef["g"].levels, sparse.ranef["g"].b))
    bh = dict(zip(sparse.ranef["h"].levels, sparse.ranef["h"].b[:, 0]))
    hand = np.column_stack([np.ones(2), new["x"]]) @ sparse.beta + \
        [bg["g001"] @ [1, 0.3] + bh["h005"], bh["h006"]]
    np.testing.assert_allclose(got, hand, rtol=1e-12)


INSTEVAL = Path(__file__).parents[2] / "fixtures" / "crossed" / "insteval.csv.gz"


@pytest.mark.parametrize("name", ["binomial", "binomial_slopes"])
def test_real_data_insteval_good_ratings_match_glmer(name):
    # lme4's InstEval (make_insteval_slopes.R): a rating of 4 or 5 (32,675 of 73,421),
    # students (2,972) x lecturers (1,128), with and without a service effect per lecturer;
    # glmer took 131 s and 1,038 s here, auto takes the matrix-free path (3 and 8 s)
    ref = json.loads((INSTEVAL.parent / "lme4_insteval_slopes.json").read_text())[name]
    frame = pd.read_csv(INSTEVAL)
    frame["yb"] = (frame["y"] >= 4).astype(float)
    fit = daskmm.glmm(ref["formula"], frame, "binomial", factors=["s", "d"],
                      mode="in-process")
    info = fit.optinfo.crossed
    assert info["path"] == "matrix-free" and fit.ngroups == ref["ngroups"]
    assert fit.converged and fit.certified
    se = info["criterion_se"]
    assert 0 < se < 1 and abs(fit.objective - ref["criterion"]) < 3 * se
    np.testing.assert_allclose(fit.theta, ref["theta"], rtol=1e-3)
    np.testing.assert_allclose(fit.beta, ref["beta"], rtol=1e-3)
    # glmer's standard errors come from its finite-difference Hessian of a deviance whose
    # log|L| lags a PIRLS iterate: off by up to 0.55% in its beta block here (the exact
    # criterion's Hessian at glmer's optimum is the same to 1e-6 at steps 1e-3 and 1e-4,
    # and gives 0.029770 and 0.023958 for the intercept model, glmer 0.029743 and 0.023889)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov)), ref["se"], rtol=5e-3)
    for f, r in ref["ranef"].items():
        got = fit.ranef[f]
        idx = [list(got.levels).index(nm) for nm in r["names"]]
        np.testing.assert_allclose(got.b[idx], r["modes"], atol=2e-4)  # 6e-5 here
        # the named approximation of the covariances: 0.34% here
        np.testing.assert_allclose(got.cov[idx], r["postvar"], rtol=1e-2, atol=1e-4)
