"""The matrix-free fit of crossed random intercepts (daskmm/models/lmm/iterative.py): against
lme4 on crossed designs it can fit (tests/fixtures/crossed/make_crossed.R: 10^5 rows at
2,000 x 2,000 levels, and three factors), against daskmm's exact path, chosen by size in
``daskmm.lmm``, the same on a cluster whatever the partitions, and its conditional modes."""

from __future__ import annotations

import json
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.errors import ModelError
from daskmm.kernels import crossed_iter as ci
from daskmm.models.lmm.iterative import fit_crossed, moment_start
from daskmm.models.shared import crossed as crossed_paths
from tests.task_stream import workers_by_step

from .crossed_data import crossed_design

REFS = json.loads((Path(__file__).parents[2] / "fixtures" / "crossed" /
                   "lme4_crossed.json").read_text())
DESIGNS = {"two": (100_000, [2000, 2000], [0.8, 0.5]),
           "three": (30_000, [1000, 600, 200], [0.7, 0.5, 0.3])}


@pytest.fixture(scope="module")
def designs():
    return {k: crossed_design(*v) for k, v in DESIGNS.items()}


@pytest.mark.parametrize("name", ["two_reml", "two_ml", "three_reml"])
def test_the_matrix_free_fit_is_lme4s_within_its_error(designs, name):
    ref = REFS[name]
    frame = designs[name.split("_")[0]]
    # the data are R's, up to the last bit of its libm's log and cos
    assert frame["y"].sum() == pytest.approx(ref["check"]["sum_y"], rel=1e-13)
    fit = daskmm.lmm(ref["formula"], frame, reml=ref["reml"], crossed="matrix-free",
                     mode="in-process")
    info = fit.optinfo.crossed
    assert info["path"] == "matrix-free" and fit.mode == "in-process, matrix-free"
    assert fit.ngroups == ref["ngroups"]
    np.testing.assert_allclose(fit.theta, ref["theta"], rtol=1e-3)
    np.testing.assert_allclose(fit.beta, ref["beta"], rtol=1e-5)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-5)
    # lme4's criterion at its optimum: within 3 of the estimate's standard errors
    assert abs(fit.objective - ref["criterion"]) < 3 * info["criterion_se"]
    assert 0 < info["criterion_se"] < 2
    assert fit.converged and fit.certified


def small_crossing(n=6000, ng=400, nh=150, seed=1):
    rng = np.random.default_rng(seed)
    g, h = rng.integers(0, ng, n), rng.integers(0, nh, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(0, 0.8, ng)[g] + rng.normal(0, 0.5, nh)[h] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i:03d}" for i in g],
                         "h": [f"h{i:03d}" for i in h], "w": rng.uniform(0.5, 2.0, n)})


@pytest.fixture(scope="module")
def small():
    return small_crossing()


@pytest.fixture(scope="module")
def dense_fits(small):
    """The dense (lme4-conformant) fits of ``small``, unweighted and weighted, made once for
    the tests that compare the other paths with them."""
    return {w: daskmm.lmm("y ~ x + (1 | g) + (1 | h)", small, weights=w, crossed="dense",
                          mode="in-process")
            for w in (None, "w")}


@pytest.mark.parametrize("weights", [None, "w"])
def test_it_is_the_exact_path_within_its_error(small, dense_fits, weights):
    f = "y ~ x + (1 | g) + (1 | h)"
    exact = dense_fits[weights]
    free = daskmm.lmm(f, small, weights=weights, crossed="matrix-free")
    assert exact.optinfo.crossed == {"path": "dense", "levels": 150, "factors": ["h"]}
    np.testing.assert_allclose(free.theta, exact.theta, rtol=1e-3)
    np.testing.assert_allclose(free.beta, exact.beta, rtol=1e-5)
    np.testing.assert_allclose(free.vcov, exact.vcov, rtol=1e-3)
    assert free.sigma == pytest.approx(exact.sigma, rel=1e-5)
    assert abs(free.objective - exact.objective) < 3 * free.optinfo.crossed["criterion_se"]
    for f_ in ("g", "h"):
        # the conditional modes exactly (at the fit's theta); their variances approximated
        # (the Schur complement's inverse by its diagonal's): within 5%, and at most the
        # exact ones on the factor whose levels the Schur complement holds
        assert free.ranef[f_].levels == exact.ranef[f_].levels
        np.testing.assert_allclose(free.ranef[f_].b, exact.ranef[f_].b, rtol=2e-3, atol=1e-5)
        np.testing.assert_allclose(free.ranef[f_].cov, exact.ranef[f_].cov, rtol=5e-2)
    assert np.all(free.ranef["h"].cov <= exact.ranef["h"].cov * (1 + 1e-3))
    assert "conditional_variances" in free.optinfo.crossed
    text = free.summary()
    assert "REML criterion estimated (matrix-free crossed fit): standard error" in text
    assert "Newton (stochastic trace gradient)" in text


def test_the_size_chooses_the_path(small, monkeypatch):
    f = "y ~ x + (1 | g) + (1 | h)"
    # the choice is made where the fit is driven, the same in process and on a cluster
    # (test_on_a_cluster_the_partitions_change_nothing fits each path there)
    here = {"mode": "in-process"}
    assert daskmm.lmm(f, small, **here).optinfo.crossed["path"] == "dense"  # 150 levels
    monkeypatch.setattr(crossed_paths, "MATRIX_FREE_MIN_LEVELS", 100)
    sparse = daskmm.lmm(f, small, **here).optinfo.crossed  # its factor: 150 x 150 at most
    assert sparse["path"] == "sparse" and 0 < sparse["fill"] <= 2 * 150 * 150
    monkeypatch.setattr(crossed_paths, "SPARSE_MAX_FILL", 1000)
    assert daskmm.lmm(f, small, **here).optinfo.crossed["path"] == "matrix-free"
    # random slopes on one factor: they can; on two, neither can, so auto stays dense
    slopes = daskmm.lmm("y ~ x + (x | g) + (1 | h)", small, mode="in-process")
    assert slopes.optinfo.crossed["path"] == "matrix-free"
    two = daskmm.lmm("y ~ x + (x | g) + (x | h)", small, mode="in-process")
    assert two.optinfo.crossed["path"] == "dense"
    assert daskmm.lmm("y ~ x + (1 | g)", small, **here).optinfo.crossed is None


@pytest.mark.parametrize("crossed, formula, match", [
    ("matrix-free", "y ~ x + (x | g) + (x | h)", r"2 factors have random slopes \(g, h\)"),
    ("sparse", "y ~ x + (0 + x | g) + (1 | h)",
     r"\(0 \+ x \| g\) is not a random intercept.*random slopes \(1 \+ x \| f\) on one"),
    ("sparse", "y ~ x + (1 | g)", "one grouping factor.*crossed='dense'"),
    ("exact", "y ~ x + (1 | g) + (1 | h)", r"crossed='exact'; allowed: 'auto', 'dense'"),
])
def test_a_path_that_cannot_fit_says_so(small, crossed, formula, match):
    with pytest.raises(ModelError, match=match):
        daskmm.lmm(formula, small, crossed=crossed)


def test_what_needs_the_exact_statistics_says_how_to_get_them(small):
    free = daskmm.lmm("y ~ x + (1 | g) + (1 | h)", small, crossed="matrix-free")
    with pytest.raises(ModelError, match=r"not available for a matrix-free crossed fit .*"
                       r"crossed='dense' or 'sparse'"):
        free.test_fixef()


def test_the_seed_moves_only_the_estimate(small):
    a = daskmm.lmm("y ~ x + (1 | g) + (1 | h)", small, crossed="matrix-free", seed=0)
    b = daskmm.lmm("y ~ x + (1 | g) + (1 | h)", small, crossed="matrix-free", seed=0)
    c = daskmm.lmm("y ~ x + (1 | g) + (1 | h)", small, crossed="matrix-free", seed=7)
    assert a.objective == b.objective and np.array_equal(a.theta, b.theta)
    assert a.objective != c.objective
    assert c.optinfo.crossed["seed"] == 7
    np.testing.assert_allclose(a.theta, c.theta, rtol=1e-3)


@pytest.mark.parametrize("path, nparts", [("matrix-free", 1), ("matrix-free", 4),
                                         ("sparse", 3)])
def test_on_a_cluster_the_partitions_change_nothing(client, small, path, nparts):
    f = "y ~ x + (1 | g) + (1 | h)"
    here = daskmm.lmm(f, small, crossed=path, mode="in-process")
    there = daskmm.lmm(f, dd.from_pandas(small, npartitions=nparts), client=client,
                       mode="gathered", crossed=path)
    assert there.mode == f"gathered, {path}"
    # the statistics summed in another order: the same fit to rounding
    np.testing.assert_allclose(there.theta, here.theta, rtol=1e-7)
    np.testing.assert_allclose(there.beta, here.beta, rtol=1e-9)
    assert there.objective == pytest.approx(here.objective, rel=1e-10)


@pytest.mark.parametrize("formula", ["y ~ x + (1 | g) + (1 | h)",
                                     "y ~ x + (1 + x | g) + (1 | h)"])
def test_on_a_cluster_the_tables_held_on_the_workers_change_nothing(client, small, formula,
                                                                    monkeypatch):
    # the first factor's tables summed into one block a worker (each worker's partitions
    # there first), never at the client; every product with them a task on its block's
    # worker: the fit in process's, up to the order of additions
    from distributed import get_task_stream

    here = daskmm.lmm(formula, small, crossed="matrix-free", mode="in-process")
    monkeypatch.setattr(crossed_paths, "TABLES_ON_WORKERS", 0)
    gathered = daskmm.lmm(formula, dd.from_pandas(small, npartitions=3), client=client,
                          mode="gathered", crossed="matrix-free")
    assert gathered.optinfo.crossed["tables"] == "client"  # the mode asked for it
    with get_task_stream(client) as ts:
        there = daskmm.lmm(formula, dd.from_pandas(small, npartitions=3), client=client,
                           crossed="matrix-free")
    assert there.mode == "distributed, matrix-free"
    assert there.optinfo.crossed["tables"] == "workers: 2 blocks of g's levels"
    ran = workers_by_step(ts.data)
    assert len(ran["block"]) == 2 and len(ran["block_schur"]) == 2
    np.testing.assert_allclose(there.theta, here.theta, rtol=1e-7)
    np.testing.assert_allclose(there.beta, here.beta, rtol=1e-9)
    assert there.objective == pytest.approx(here.objective, rel=1e-10)
    for f in ("g", "h"):
        np.testing.assert_allclose(there.ranef[f].b, here.ranef[f].b, atol=1e-8)
        np.testing.assert_allclose(there.ranef[f].cov, here.ranef[f].cov, rtol=1e-8)


def test_the_moment_start_is_near_the_optimum(small):
    codes = [pd.factorize(small[c], sort=True)[0] for c in ("g", "h")]
    X = np.column_stack([np.ones(len(small)), small["x"]])
    st = ci.crossed_stats(small["y"].to_numpy(), X, codes, [400, 150])
    fit = fit_crossed(st, True)
    np.testing.assert_allclose(moment_start(st), fit.theta, rtol=0.05)
    # BOBYQA minimises the estimated criterion, Newton zeroes the estimated gradient (the
    # traces' estimate, not the estimate's derivative): two points within the noise
    slow = fit_crossed(st, True, method="bobyqa")
    np.testing.assert_allclose(fit.theta, slow.theta, rtol=1e-3)
    assert fit.opt.feval <= 10 < slow.opt.feval


def test_the_command_line_fits_matrix_free_and_says_so(small, tmp_path):
    import subprocess
    import sys
    data = tmp_path / "crossed.csv"
    small.to_csv(data, index=False)
    out = tmp_path / "fit"
    proc = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", str(data), "--formula",
                           "y ~ x + (1 | g) + (1 | h)", "--crossed", "matrix-free", "--seed",
                           "3", "--mode", "in-process", "--out", str(out), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "summary.json").read_text())
    info = doc["optinfo"]["crossed"]
    assert info["path"] == "matrix-free" and info["seed"] == 3 and info["criterion_se"] > 0
    assert "matrix-free crossed fit" in (out / "summary.txt").read_text()
    bad = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", str(data), "--formula",
                          "y ~ x + (x | g) + (x | h)", "--crossed", "matrix-free", "--mode",
                          "in-process", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and not (tmp_path / "bad").exists()
    assert bad.stderr.strip().count("\n") == 0 and "factors have random slopes" in bad.stderr


def test_the_sparse_path_is_lme4s_criterion_exactly(designs):
    # lme4's criterion at lme4's optimum, to rounding; that the sparse fit finds the optimum
    # is the dense path's (test_the_sparse_path_is_the_dense_path), whose is lme4's
    from daskmm.kernels.crossed_sparse import exact_criterion
    ref = REFS["three_reml"]
    frame = designs["three"]
    codes = [pd.factorize(frame[f], sort=True)[0] for f in ("f1", "f2", "f3")]
    st = ci.crossed_stats(frame["y"].to_numpy(), np.column_stack([np.ones(len(frame)),
                                                                  frame["x"]]),
                          codes, [1000, 600, 200])
    at = exact_criterion(st, np.asarray(ref["theta"]), True)
    assert at.objective == pytest.approx(ref["criterion"], rel=1e-11)
    np.testing.assert_allclose(at.beta, ref["beta"], rtol=1e-8)
    assert np.sqrt(at.r2 / (len(frame) - 2)) == pytest.approx(ref["sigma"], rel=1e-8)


@pytest.mark.parametrize("weights", [None, "w"])
def test_the_sparse_path_is_the_dense_path(small, dense_fits, weights):
    f = "y ~ x + (1 | g) + (1 | h)"
    dense = dense_fits[weights]
    sparse = daskmm.lmm(f, small, weights=weights, crossed="sparse")
    np.testing.assert_allclose(sparse.theta, dense.theta, rtol=1e-5)
    assert sparse.objective == pytest.approx(dense.objective, rel=1e-11)
    np.testing.assert_allclose(sparse.vcov, dense.vcov, rtol=1e-5)
    for f_ in ("g", "h"):  # modes and conditional variances: exact
        np.testing.assert_allclose(sparse.ranef[f_].b, dense.ranef[f_].b, rtol=1e-5,
                                   atol=1e-8)
        np.testing.assert_allclose(sparse.ranef[f_].cov, dense.ranef[f_].cov, rtol=1e-5)
    assert "estimated" not in sparse.summary()


def test_predictions_for_seen_and_new_levels(small, dense_fits):
    f = "y ~ x + (1 | g) + (1 | h)"
    free = daskmm.lmm(f, small, crossed="matrix-free")
    dense = dense_fits[None]
    new = pd.DataFrame({"x": [0.3, -1.0, 2.0], "g": ["g001", "g999", "g002"],
                        "h": ["h005", "h006", "h999"]})
    got = np.asarray(free.predict(new, allow_new_levels=True).compute())
    want = np.asarray(dense.predict(new, allow_new_levels=True).compute())
    np.testing.assert_allclose(got, want, rtol=2e-3)
    # by hand: fixed part plus the seen levels' modes, a new level contributing none
    b = {fa: dict(zip(free.ranef[fa].levels, free.ranef[fa].b[:, 0])) for fa in ("g", "h")}
    X = np.column_stack([np.ones(3), new["x"]])
    hand = X @ free.beta + [b["g"]["g001"] + b["h"]["h005"], b["h"]["h006"], b["g"]["g002"]]
    np.testing.assert_allclose(got, hand, rtol=1e-12)
    fitted = np.asarray(free.fitted().compute())
    assert fitted.shape == (len(small),)
    with pytest.raises(Exception, match="g999"):
        free.predict(new).compute()


def test_a_factor_without_variance_goes_to_its_bound(small):
    rng = np.random.default_rng(3)
    e = pd.Series(rng.normal(size=len(small)))
    e = e - e.groupby(small["h"]).transform("mean")  # no h effect, not even by chance
    frame = small.assign(y=1 + 0.5 * small["x"] + e
                         + small["g"].map({f"g{i:03d}": v for i, v in
                                           enumerate(rng.normal(0, 0.8, 400))}))
    f = "y ~ x + (1 | g) + (1 | h)"
    dense = daskmm.lmm(f, frame, crossed="dense")
    assert dense.theta[1] < 1e-4  # h has no variance here
    for path in ("sparse", "matrix-free"):
        fit = daskmm.lmm(f, frame, crossed=path)
        assert fit.theta[1] < 2e-3 and fit.theta[0] == pytest.approx(dense.theta[0],
                                                                     rel=1e-3)
        assert fit.converged


def test_a_job_file_chooses_the_path(small, tmp_path):
    from daskmm.jobs.runner import run_job
    from daskmm.jobs.spec import JobError, load_job
    data = tmp_path / "crossed.csv"
    small.to_csv(data, index=False)
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {data}\nformula: \"y ~ x + (1 | g) + (1 | h)\"\ncrossed: sparse\n"
                   f"output: {tmp_path / 'o'}\n")
    run_job(job)
    doc = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert doc["optinfo"]["crossed"]["path"] == "sparse"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data: {data}\nformula: \"y ~ x + (1 | g) + (1 | h)\"\nfamily: gamma\n"
                   f"crossed: sparse\noutput: {tmp_path / 'b'}\n")
    with pytest.raises(JobError, match="crossed .* applies to linear mixed models and binomial "
                                       "or Poisson GLMMs .* remove it for family gamma"):
        load_job(bad)
    bad.write_text(f"data: {data}\nformula: \"y ~ x + (1 | g) + (1 | h)\"\n"
                   f"crossed: exact\noutput: {tmp_path / 'b'}\n")
    with pytest.raises(JobError, match="crossed"):
        load_job(bad)


def test_anova_refuses_estimated_criteria(small):
    f = "y ~ x + (1 | g) + (1 | h)"
    free = daskmm.lmm(f, small, reml=False, crossed="matrix-free")
    small_model = daskmm.lmm("y ~ 1 + (1 | g) + (1 | h)", small, reml=False,
                             crossed="matrix-free")
    with pytest.raises(ModelError, match=r"m0's is a matrix-free estimate \(standard error "
                                         r".*crossed='sparse' or 'dense'"):
        daskmm.anova(small_model, free)


@pytest.mark.parametrize("crossed", ["sparse", "matrix-free"])
def test_a_constant_response_is_one_clear_error(small, crossed):
    from daskmm.errors import DataError
    with pytest.raises(DataError, match="the response 'y' is constant"):
        daskmm.lmm("y ~ x + (1 | g) + (1 | h)", small.assign(y=2.5), crossed=crossed)


INSTEVAL = Path(__file__).parents[2] / "fixtures" / "crossed" / "insteval.csv.gz"


def test_real_data_insteval_matches_lme4():
    # lme4's InstEval (make_insteval.R): 73,421 ratings, 2,972 students x 1,128 lecturers x
    # 14 departments, all crossed; auto takes the matrix-free path (1,142 crossed levels)
    ref = json.loads((INSTEVAL.parent / "lme4_insteval.json").read_text())
    fit = daskmm.lmm(ref["formula"], str(INSTEVAL), factors=["s", "d", "dept"],
                     mode="in-process")
    info = fit.optinfo.crossed
    assert info["path"] == "matrix-free" and fit.certified
    assert fit.ngroups == ref["ngroups"]
    np.testing.assert_allclose(fit.theta, ref["theta"], rtol=1e-3)
    np.testing.assert_allclose(fit.beta, ref["beta"], rtol=1e-5)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-5)
    assert abs(fit.objective - ref["criterion"]) < 3 * info["criterion_se"]
    # the sparse path's criterion at lme4's optimum is lme4's, to rounding
    from daskmm.kernels.crossed_sparse import exact_criterion
    frame = pd.read_csv(INSTEVAL)
    sizes = [ref["ngroups"][f] for f in ("s", "d", "dept")]
    codes = [pd.factorize(frame[f], sort=True)[0] for f in ("s", "d", "dept")]
    st = ci.crossed_stats(frame["y"].to_numpy(float),
                          np.column_stack([np.ones(len(frame)), frame["service"]]),
                          codes, sizes)
    at = exact_criterion(st, np.asarray(ref["theta"]), True)
    assert at.objective == pytest.approx(ref["criterion"], rel=1e-10)
    np.testing.assert_allclose(at.beta, ref["beta"], rtol=1e-7)
