"""Random slopes on one crossed factor, ``y ~ x + (1 + x | f1) + (1 | f2)``, on the sparse
and matrix-free paths (daskmm/models/lmm/iterative.py): against lmer on designs it fits
(tests/fixtures/crossed/make_crossed_slopes.R: 2 x 10^4 rows, slopes on the factor with
more levels and on the one with fewer), against daskmm's dense path, and the same on a
cluster whatever the partitions."""

from __future__ import annotations

import json
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.kernels import crossed_iter as ci
from daskmm.kernels.crossed_sparse import exact_criterion

from .crossed_data import slopes_design

REFS = json.loads((Path(__file__).parents[2] / "fixtures" / "crossed" /
                   "lme4_crossed_slopes.json").read_text())
DESIGNS = {"wide": (20_000, 1000, 600, [0.8, 0.5, 0.3]),
           "narrow": (20_000, 300, 1500, [0.8, 0.5, 0.4])}
SLOPES_F = "y ~ x + (1 + x | f1) + (1 | f2)"


@pytest.fixture(scope="module")
def designs():
    return {k: slopes_design(*v) for k, v in DESIGNS.items()}


def stats_of(frame: pd.DataFrame) -> ci.CrossedStats:
    """The statistics in the fit's order: the factor with slopes first."""
    codes = [pd.factorize(frame[f], sort=True)[0] for f in ("f1", "f2")]
    X = np.column_stack([np.ones(len(frame)), frame["x"]])
    return ci.crossed_stats(frame["y"].to_numpy(), X, codes,
                            [frame[f].nunique() for f in ("f1", "f2")], slopes=X)


def stats_theta(ref: dict) -> np.ndarray:
    """lme4's theta in the statistics' order (f1's triangle, then f2)."""
    pos = {nm: v for nm, v in zip(ref["theta_names"], ref["theta"])}
    return np.array([pos[nm] for nm in ("f1.(Intercept)", "f1.x.(Intercept)", "f1.x",
                                        "f2.(Intercept)")])


@pytest.mark.parametrize("name", ["wide_reml", "wide_ml", "narrow_reml"])
def test_the_sparse_criterion_is_lme4s_at_its_optimum(designs, name):
    ref = REFS[name]
    frame = designs[name.split("_")[0]]
    # the data are R's, up to the last bit of its libm's log and cos
    assert frame["y"].sum() == pytest.approx(ref["check"]["sum_y"], rel=1e-13)
    st = stats_of(frame)
    theta = stats_theta(ref)
    at = exact_criterion(st, theta, ref["reml"])
    assert at.objective == pytest.approx(ref["criterion"], rel=1e-11)
    np.testing.assert_allclose(at.beta, ref["beta"], rtol=1e-8)
    dof = st.n - 2 if ref["reml"] else st.n
    sigma = np.sqrt(at.r2 / dof)
    assert sigma == pytest.approx(ref["sigma"], rel=1e-8)
    np.testing.assert_allclose(np.sqrt(np.diag(sigma ** 2 * at.S_inverse())), ref["se"],
                               rtol=1e-7)
    # conditional modes b = Lambda u and their covariances sigma^2 T A^-1_l T', exactly
    idx = np.asarray(ref["ranef"]["levels"]) - 1
    b = st.lam_apply(theta, at.u)
    k = st.q_sizes[0]
    np.testing.assert_allclose(b[:k].reshape(-1, 2)[idx], ref["ranef"]["f1"], rtol=1e-7,
                               atol=1e-10)
    np.testing.assert_allclose(b[k:][idx], ref["ranef"]["f2"], rtol=1e-7, atol=1e-10)
    first, rest = at.factor.inverse_blocks(chunk=256)
    T = st.first_T(theta)
    pv = sigma ** 2 * np.einsum("ab,lbc,dc->lad", T, first[idx], T)
    np.testing.assert_allclose(pv, ref["ranef"]["f1_postvar"], rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(sigma ** 2 * theta[3] ** 2 * rest[idx],
                               ref["ranef"]["f2_postvar"], rtol=1e-7)


@pytest.mark.parametrize("name", ["wide_reml", "narrow_reml"])
def test_the_matrix_free_fit_is_lme4s_within_its_error(designs, name):
    ref = REFS[name]
    frame = designs[name.split("_")[0]]
    fit = daskmm.lmm(SLOPES_F, frame, reml=ref["reml"], crossed="matrix-free",
                     mode="in-process")
    info = fit.optinfo.crossed
    # the factor with slopes is eliminated first, whatever its levels
    assert info["path"] == "matrix-free" and info["factors"] == ["f1", "f2"]
    assert fit.ngroups == ref["ngroups"]
    # theta in lme4's order; 1e-3 relative, or 2e-4 absolute for an entry near 0 (the
    # slopes' correlation term: 0.01 and 0.003 here)
    np.testing.assert_allclose(fit.theta, ref["theta"], rtol=1e-3, atol=2e-4)
    big = np.abs(ref["theta"]) > 0.1
    np.testing.assert_allclose(np.asarray(fit.theta)[big], np.asarray(ref["theta"])[big],
                               rtol=1e-3)
    np.testing.assert_allclose(fit.beta, ref["beta"], rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov)), ref["se"], rtol=1e-3)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-4)
    # lme4's criterion at its optimum within 4 of the estimate's standard errors: that
    # error is itself estimated from 10 probes (its own relative error about a quarter);
    # over seeds 0-5 at lme4's optimum the estimate's errors were -1.3 to +3.0 of them
    assert abs(fit.objective - ref["criterion"]) < 4 * info["criterion_se"]
    assert fit.converged and fit.certified
    assert fit.optinfo.feval <= 25  # Newton steps on the gradient
    # the modes near lme4's (at the fit's theta); their covariances by the stated
    # approximation, within 2%
    rr = ref["ranef"]
    idx = np.asarray(rr["levels"]) - 1
    g, h = fit.ranef["f1"], fit.ranef["f2"]
    assert [g.levels[i] for i in idx] == rr["f1_names"]
    np.testing.assert_allclose(g.b[idx], rr["f1"], atol=1e-4)
    np.testing.assert_allclose(h.b[idx, 0], rr["f2"], atol=1e-4)
    np.testing.assert_allclose(g.cov[idx], rr["f1_postvar"], rtol=2e-2, atol=1e-4)
    np.testing.assert_allclose(h.cov[idx, 0, 0], rr["f2_postvar"], rtol=2e-2)
    assert "REML criterion estimated (matrix-free crossed fit)" in fit.summary()


def small_slopes(n=6000, ng=300, nh=120, seed=3):
    rng = np.random.default_rng(seed)
    g, h = rng.integers(0, ng, n), rng.integers(0, nh, n)
    x = rng.normal(size=n)
    y = (1 + 0.5 * x + rng.normal(0, 0.8, ng)[g] + rng.normal(0, 0.4, ng)[g] * x
         + rng.normal(0, 0.5, nh)[h] + rng.normal(size=n))
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i:03d}" for i in g],
                         "h": [f"h{i:03d}" for i in h], "w": rng.uniform(0.5, 2.0, n)})


@pytest.fixture(scope="module")
def small():
    return small_slopes()


@pytest.mark.parametrize("weights", [None, "w"])
def test_the_sparse_fit_is_the_dense_fit(small, weights):
    f = "y ~ x + (1 + x | g) + (1 | h)"
    dense = daskmm.lmm(f, small, weights=weights, crossed="dense", mode="in-process")
    sparse = daskmm.lmm(f, small, weights=weights, crossed="sparse", mode="in-process")
    assert sparse.optinfo.crossed["path"] == "sparse" and sparse.certified
    np.testing.assert_allclose(sparse.theta, dense.theta, rtol=1e-5, atol=1e-7)
    assert sparse.objective == pytest.approx(dense.objective, rel=1e-11)
    np.testing.assert_allclose(sparse.beta, dense.beta, rtol=1e-7)
    np.testing.assert_allclose(sparse.vcov, dense.vcov, rtol=1e-5)
    for f_ in ("g", "h"):  # modes and conditional covariances: exact
        assert sparse.ranef[f_].levels == dense.ranef[f_].levels
        np.testing.assert_allclose(sparse.ranef[f_].b, dense.ranef[f_].b, rtol=1e-5,
                                   atol=1e-8)
        np.testing.assert_allclose(sparse.ranef[f_].cov, dense.ranef[f_].cov, rtol=1e-5,
                                   atol=1e-10)
    assert sparse.ranef["g"].b.shape == (300, 2) and sparse.ranef["g"].cov.shape == (300, 2, 2)


def test_predictions_use_the_slopes(small):
    fit = daskmm.lmm("y ~ x + (1 + x | g) + (1 | h)", small, crossed="matrix-free",
                     mode="in-process")
    new = pd.DataFrame({"x": [0.3, -1.0, 2.0], "g": ["g001", "g999", "g002"],
                        "h": ["h005", "h006", "h999"]})
    got = np.asarray(fit.predict(new, allow_new_levels=True).compute())
    bg = dict(zip(fit.ranef["g"].levels, fit.ranef["g"].b))
    bh = dict(zip(fit.ranef["h"].levels, fit.ranef["h"].b[:, 0]))
    X = np.column_stack([np.ones(3), new["x"]])
    hand = X @ fit.beta + [bg["g001"] @ [1, 0.3] + bh["h005"], bh["h006"],
                           bg["g002"] @ [1, 2.0]]
    np.testing.assert_allclose(got, hand, rtol=1e-12)


def test_on_a_cluster_the_partitions_change_nothing(client, small):
    f = "y ~ x + (1 + x | g) + (1 | h)"
    here = daskmm.lmm(f, small, crossed="sparse", mode="in-process")
    there = daskmm.lmm(f, dd.from_pandas(small, npartitions=3), client=client,
                       mode="gathered", crossed="sparse")
    assert there.mode == "gathered, sparse"
    np.testing.assert_allclose(there.theta, here.theta, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(there.beta, here.beta, rtol=1e-9)
    assert there.objective == pytest.approx(here.objective, rel=1e-10)


INSTEVAL = Path(__file__).parents[2] / "fixtures" / "crossed" / "insteval.csv.gz"


def test_real_data_insteval_a_service_slope_per_lecturer_matches_lmer():
    # lme4's InstEval (make_insteval_slopes.R): 73,421 ratings, a random service effect
    # per lecturer correlated with its intercept (1,128 levels), students (2,972) and
    # departments (14) crossed; lmer took 395 s here, the matrix-free fit takes about 4
    ref = json.loads((INSTEVAL.parent / "lme4_insteval_slopes.json").read_text())
    ref = ref["lmm_slopes_reml"]
    frame = pd.read_csv(INSTEVAL)
    fit = daskmm.lmm(ref["formula"], frame, factors=["s", "d", "dept"], mode="in-process")
    info = fit.optinfo.crossed
    assert info["path"] == "matrix-free" and info["factors"][0] == "d"
    assert fit.ngroups == ref["ngroups"] and fit.converged and fit.certified
    # the well-determined parameters as lmer's; the departments' theta (14 levels: the
    # criterion is flat along it) where the estimate's noise leaves it
    th, rt = np.asarray(fit.theta), np.asarray(ref["theta"])
    np.testing.assert_allclose(th[:4], rt[:4], rtol=2e-4)
    assert th[4] == pytest.approx(rt[4], rel=2e-2)
    # within 2e-3 of their standard errors (service's: 4.8e-4 relative, along the flat
    # departments' theta)
    assert np.all(np.abs(fit.beta - ref["beta"]) < 2e-3 * np.asarray(ref["se"]))
    # service's standard error to 1e-3; the intercept's, which the departments' variance
    # sets, moves with their theta (0.45% here)
    se_fit = np.sqrt(np.diag(fit.vcov))
    assert se_fit[1] == pytest.approx(ref["se"][1], rel=1e-3)
    assert se_fit[0] == pytest.approx(ref["se"][0], rel=1e-2)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-5)
    se = info["criterion_se"]
    assert abs(fit.objective - ref["criterion"]) < 3 * se
    # the exact criterion (the sparse path's) at lmer's optimum is lmer's; at the
    # matrix-free fit's point it is within the estimate's error of that optimum
    factors = ["d", "s", "dept"]
    codes = [pd.factorize(frame[f], sort=True)[0] for f in factors]
    X = np.column_stack([np.ones(len(frame)), frame["service"]])
    st = ci.crossed_stats(frame["y"].to_numpy(float), X, codes,
                          [ref["ngroups"][f] for f in factors], slopes=X)
    order = [ref["theta_names"].index(nm) for nm in (
        "d.(Intercept)", "d.service.(Intercept)", "d.service", "s.(Intercept)",
        "dept.(Intercept)")]
    at = exact_criterion(st, rt[order], True)
    assert at.objective == pytest.approx(ref["criterion"], rel=1e-11)
    np.testing.assert_allclose(at.beta, ref["beta"], rtol=1e-8)
    mine = exact_criterion(st, th[order], True).objective
    assert 0 <= mine - ref["criterion"] < se
    # conditional modes at lmer's levels (7e-4 at most here), their covariances by the
    # named approximation (1e-3 here)
    for f, r in ref["ranef"].items():
        got = fit.ranef[f]
        idx = [list(got.levels).index(nm) for nm in r["names"]]
        np.testing.assert_allclose(got.b[idx], r["modes"], atol=1e-3)
        np.testing.assert_allclose(got.cov[idx], r["postvar"], rtol=2e-2, atol=1e-4)
