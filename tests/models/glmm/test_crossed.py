"""The GLMM's sparse and matrix-free crossed paths (daskmm/models/glmm/crossed.py): against
glmer on crossed designs R draws identically (tests/fixtures/crossed/make_crossed_glmm.R),
against daskmm's dense path, chosen by size, refused in one line where they cannot fit, the
same on a cluster whatever the partitions, from the command line and a job file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from scipy import special

import daskmm
from daskmm.errors import ModelError
from daskmm.kernels import crossed_glmm as CG
from daskmm.kernels import scalar_re as K
from daskmm.models.glmm import crossed as CX
from daskmm.models.shared import crossed as crossed_paths
from tests.task_stream import workers_by_step

from ..lmm.crossed_data import crossed_glmm_design

REFS = json.loads((Path(__file__).parents[2] / "fixtures" / "crossed" /
                   "lme4_crossed_glmm.json").read_text())
DESIGNS = {"binomial_two": ((20_000, [800, 500], [0.8, 0.5]), {}),
           "poisson_three": ((20_000, [600, 300, 100], [0.5, 0.4, 0.3]), {"seed": 777})}


@pytest.fixture(scope="module")
def designs():
    return {k: crossed_glmm_design(*a, **kw) for k, (a, kw) in DESIGNS.items()}


def _check_data(frame, ref):
    resp = "yb" if ref["family"] == "binomial" else "yc"
    assert frame[resp].sum() == ref["check"]["sum_y"]  # R's data, to the last row
    assert frame["x"].sum() == pytest.approx(ref["check"]["sum_x"], rel=1e-13)
    return resp


def test_the_sparse_fit_is_glmers(designs):
    ref = REFS["binomial_two"]
    frame = designs["binomial_two"]
    _check_data(frame, ref)
    fit = daskmm.glmm(ref["formula"], frame, "binomial", crossed="sparse", mode="in-process")
    info = fit.optinfo.crossed
    assert info["path"] == "sparse" and info["fill"] > 0 and fit.optinfo.mode == \
        "in-process, sparse"
    assert fit.ngroups == ref["ngroups"]
    np.testing.assert_allclose(fit.theta, ref["theta"], rtol=2e-6)
    np.testing.assert_allclose(fit.beta, ref["beta"], rtol=1e-6)
    assert fit.objective == pytest.approx(ref["deviance"], abs=1e-5)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov)), ref["se"], rtol=1e-4)
    for f, r in ref["ranef"].items():
        tab = fit.ranef[f]
        assert tab.levels[:5] == r["levels"]
        np.testing.assert_allclose(tab.b[:5, 0], r["mode"], atol=1e-6)
        np.testing.assert_allclose(np.sqrt(tab.cov[:5, 0, 0]), r["sd"], rtol=1e-6)
    assert fit.certified


def test_the_matrix_free_fit_is_glmers_within_its_error(designs):
    ref = REFS["binomial_two"]
    fit = daskmm.glmm(ref["formula"], designs["binomial_two"], "binomial",
                      crossed="matrix-free", seed=4, mode="in-process")
    info = fit.optinfo.crossed
    assert info["path"] == "matrix-free" and info["seed"] == 4
    assert 0 < info["criterion_se"] < 1
    np.testing.assert_allclose(fit.theta, ref["theta"], rtol=1e-3)
    np.testing.assert_allclose(fit.beta, ref["beta"], rtol=1e-4)
    assert abs(fit.objective - ref["deviance"]) < 3 * info["criterion_se"]
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov)), ref["se"], rtol=1e-3)
    for f, r in ref["ranef"].items():
        np.testing.assert_allclose(fit.ranef[f].b[:5, 0], r["mode"], atol=1e-4)
        # the named approximation of the conditional variances: within 1% here
        np.testing.assert_allclose(np.sqrt(fit.ranef[f].cov[:5, 0, 0]), r["sd"], rtol=1e-2)
    assert any("deviance estimated (matrix-free crossed fit)" in w
               for w in fit.optinfo.checks["warnings"])
    # Newton steps on the estimated criterion and gradient: a handful of evaluations where
    # BOBYQA took some 100
    assert fit.optinfo.optimizer == "Newton (stochastic trace gradient)"
    assert fit.optinfo.converged and fit.certified and fit.optinfo.feval <= 25


def _kernel(frame, resp, family, path):
    fam, link = (K.BINOMIAL, K.LOGIT) if family == "binomial" else (K.POISSON, K.LOG)
    factors = sorted([c for c in frame.columns if c.startswith("f")],
                     key=lambda f: -frame[f].nunique())
    levels = [np.sort(frame[f].unique()) for f in factors]
    sizes = tuple(len(v) for v in levels)
    X = np.column_stack([np.ones(len(frame)), frame["x"]])
    rows = CG.crossed_rows(X, frame[resp].to_numpy(float), np.ones(len(frame)),
                           np.zeros(len(frame)), [frame[f].to_numpy() for f in factors],
                           levels, 0.0, None)
    keys = CG.merge_keys([CG.pair_keys(rows, sizes)])
    rows = CG.with_pattern(rows, keys, sizes)
    pat = CG.Patterns.of(keys, sizes)
    return CG.CrossedLaplace(pat, lambda beta, b: CG.add_passes([CG.weighted_pass(
        rows, beta, b, fam, link, sizes)], pat.nnz), path), factors


@pytest.mark.parametrize("path", ["sparse", "matrix-free"])
def test_the_poisson_criterion_at_glmers_optimum_is_glmers(designs, path):
    # three crossed factors: glmer's deviance at glmer's estimates (the fit itself is the
    # binomial's above and the dense path's below), part by part
    ref = REFS["poisson_three"]
    frame = designs["poisson_three"]
    resp = _check_data(frame, ref)
    crit, factors = _kernel(frame, resp, "poisson", path)
    theta = np.array([ref["theta"][ref["theta_names"].index(f"{f}.(Intercept)")]
                      for f in factors])
    pt = crit.evaluate(theta, np.array(ref["beta"]))
    const = -float(np.sum(special.gammaln(frame[resp].to_numpy() + 1.0)))
    parts = ref["parts"]
    assert -2 * (pt.ll + const) == pytest.approx(parts["aic"], rel=1e-11)
    assert pt.uu == pytest.approx(parts["sqrL"], rel=1e-9)
    if path == "matrix-free":
        assert abs(pt.logdet - parts["ldL2"]) < 3 * pt.se and 0 < pt.se < 2
        return
    # lme4 factors L at the weights of its last PIRLS iterate but one (internal_glmerWrkIter
    # updates the decomposition, then the modes): at tolPwrss = 1e-12 its step here leaves
    # 5e-4 in log|L|^2. Ours is log|A| at the modes: a dense determinant there, to rounding
    lam = np.repeat(theta, crit.sizes)
    bounds = np.concatenate([[0], np.cumsum(crit.sizes)])
    idx = [bounds[j] + np.searchsorted(np.sort(frame[f].unique()), frame[f].to_numpy())
           for j, f in enumerate(factors)]
    b = lam * pt.u
    w = np.exp(ref["beta"][0] + ref["beta"][1] * frame["x"].to_numpy() +
               sum(b[i] for i in idx))
    A = np.eye(int(bounds[-1]))
    for i in idx:
        for k in idx:
            np.add.at(A, (i, k), w * lam[i] * lam[k])
    assert pt.logdet == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)
    assert pt.logdet == pytest.approx(parts["ldL2"], abs=1e-3)
    assert pt.value - 2 * const == pytest.approx(ref["deviance"], abs=1e-3)


def small_crossing(n=3000, ng=120, nh=80, seed=2):
    rng = np.random.default_rng(seed)
    g, h = rng.integers(0, ng, n), rng.integers(0, nh, n)
    x = rng.normal(size=n)
    eta = -0.4 + 0.5 * x + rng.normal(0, 0.8, ng)[g] + rng.normal(0, 0.5, nh)[h]
    return pd.DataFrame({"y": (rng.random(n) < special.expit(eta)).astype(float),
                         "c": rng.poisson(np.exp(eta)), "x": x,
                         "g": [f"g{i:03d}" for i in g], "h": [f"h{i:03d}" for i in h]})


@pytest.fixture(scope="module")
def small():
    return small_crossing()


@pytest.fixture(scope="module")
def dense_poisson(small):
    return daskmm.glmm("c ~ x + (1 | g) + (1 | h)", small, "poisson", crossed="dense",
                       mode="in-process")


def test_the_sparse_path_is_the_dense_path(small, dense_poisson):
    sparse = daskmm.glmm("c ~ x + (1 | g) + (1 | h)", small, "poisson", crossed="sparse",
                         mode="in-process")
    assert dense_poisson.optinfo.crossed is None or \
        dense_poisson.optinfo.crossed.get("path") != "sparse"
    assert sparse.objective == pytest.approx(dense_poisson.objective, abs=1e-6)
    np.testing.assert_allclose(sparse.theta, dense_poisson.theta, rtol=1e-4)
    np.testing.assert_allclose(sparse.beta, dense_poisson.beta, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sparse.vcov, dense_poisson.vcov, rtol=1e-3)
    for f in ("g", "h"):
        assert sparse.ranef[f].levels == dense_poisson.ranef[f].levels
        np.testing.assert_allclose(sparse.ranef[f].b, dense_poisson.ranef[f].b, atol=1e-5)
        np.testing.assert_allclose(sparse.ranef[f].cov, dense_poisson.ranef[f].cov, rtol=1e-4)
    # predictions: seen levels with their modes, a new level at zero when allowed
    new = small.iloc[:3].assign(h=["h999", "h000", "h001"])
    link = sparse.predict(new, kind="link", allow_new_levels=True).compute().to_numpy()
    bg = dict(zip(sparse.ranef["g"].levels, sparse.ranef["g"].b[:, 0]))
    bh = dict(zip(sparse.ranef["h"].levels, sparse.ranef["h"].b[:, 0]))
    expect = [sparse.beta[0] + sparse.beta[1] * r.x + bg[r.g] + bh.get(r.h, 0.0)
              for r in new.itertuples()]
    np.testing.assert_allclose(link, expect, rtol=1e-12)


def test_auto_chooses_the_path_by_size(small, monkeypatch):
    f = "y ~ x + (1 | g) + (1 | h)"
    dense = daskmm.glmm(f, small, "binomial", mode="in-process")  # 80 crossed levels
    assert dense.optinfo.crossed is None or dense.optinfo.crossed.get("path") is None
    monkeypatch.setattr(crossed_paths, "MATRIX_FREE_MIN_LEVELS", 50)
    sparse = daskmm.glmm(f, small, "binomial", mode="in-process").optinfo.crossed
    assert sparse["path"] == "sparse" and 0 < sparse["fill"] <= 80 * 81  # L and U
    monkeypatch.setattr(crossed_paths, "SPARSE_MAX_FILL", 500)
    free = daskmm.glmm(f, small, "binomial", mode="in-process")
    assert free.optinfo.crossed["path"] == "matrix-free"
    assert free.optinfo.mode == "in-process, matrix-free"
    # another family stays dense under auto (random slopes on two factors do for the LMM and
    # the GLMM alike: daskmm.models.shared.crossed.choose_crossed,
    # tests/models/lmm/test_iterative.py)
    assert CX.check_family("large", "auto", "gamma") == "dense"
    assert CX.check_family("large", "auto", "poisson") == "large"


@pytest.mark.parametrize("kwargs,match", [
    ({"family": "gamma", "link": "log", "crossed": "sparse"},
     "crossed='sparse' fits the binomial and Poisson GLMMs; the gamma family is fitted with "
     "crossed='dense'"),
    ({"family": "binomial", "crossed": "matrix-free", "formula": "y ~ x + (x | g) + (x | h)"},
     "crossed='matrix-free' cannot fit this model: 2 factors have random slopes \\(g, h\\); "
     "the sparse and matrix-free paths fit random slopes on one factor"),
    ({"family": "binomial", "crossed": "exact"}, "crossed='exact'; allowed: 'auto', 'dense'"),
])
def test_a_path_that_cannot_fit_is_refused_in_one_line(small, kwargs, match):
    kwargs = dict(kwargs)
    formula = kwargs.pop("formula", "y ~ x + (1 | g) + (1 | h)")
    data = small.assign(y=small.y + 1) if kwargs["family"] == "gamma" else small
    with pytest.raises(ModelError, match=match) as err:
        daskmm.glmm(formula, data, mode="in-process", **kwargs)
    assert "\n" not in str(err.value)


def test_on_a_cluster_the_partitions_change_nothing(client, small):
    # the matrix-free path (its passes over the rows are the sparse path's; the two differ
    # only in what the client does with their sums): the same probes, the sums in another
    # order, the same fit to rounding
    f = "y ~ x + (1 | g) + (1 | h)"
    here = daskmm.glmm(f, small, "binomial", crossed="matrix-free", mode="in-process")
    there = daskmm.glmm(f, dd.from_pandas(small, npartitions=3), "binomial", client=client,
                        crossed="matrix-free")
    assert there.optinfo.mode == "distributed, matrix-free"
    np.testing.assert_allclose(there.theta, here.theta, rtol=1e-6)
    np.testing.assert_allclose(there.beta, here.beta, rtol=1e-6)
    assert there.objective == pytest.approx(here.objective, rel=1e-10)
    for f_ in ("g", "h"):
        np.testing.assert_allclose(there.ranef[f_].b, here.ranef[f_].b, atol=1e-7)


def test_on_a_cluster_the_tables_held_on_the_workers_change_nothing(client, monkeypatch):
    # the first factor's tables kept in one block a worker (each PIRLS step's sums made
    # there, every product with them a task on each block's worker): the fit in process's,
    # up to the order of additions
    from distributed import get_task_stream

    small = small_crossing(n=1500, ng=60, nh=40, seed=5)
    f = "y ~ x + (1 | g) + (1 | h)"
    here = daskmm.glmm(f, small, "binomial", crossed="matrix-free", mode="in-process")
    monkeypatch.setattr(crossed_paths, "TABLES_ON_WORKERS", 0)
    with get_task_stream(client) as ts:
        there = daskmm.glmm(f, dd.from_pandas(small, npartitions=3), "binomial",
                            client=client, crossed="matrix-free")
    assert there.optinfo.crossed["tables"] == "workers: 2 blocks of g's levels"
    assert here.optinfo.crossed["tables"] == "client"
    ran = workers_by_step(ts.data)
    assert len(ran["fill_block"]) == 2 and len(ran["block_schur"]) == 2
    np.testing.assert_allclose(there.theta, here.theta, rtol=1e-6)
    np.testing.assert_allclose(there.beta, here.beta, rtol=1e-6)
    assert there.objective == pytest.approx(here.objective, rel=1e-10)
    for f_ in ("g", "h"):
        np.testing.assert_allclose(there.ranef[f_].b, here.ranef[f_].b, atol=1e-7)
        np.testing.assert_allclose(there.ranef[f_].cov, here.ranef[f_].cov, rtol=1e-6)


def test_the_tables_go_to_the_workers_on_a_cluster_from_their_size(client, monkeypatch):
    from daskmm.distributed.execution import InProcess

    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 50, 400), rng.integers(0, 30, 400)]
    keys = {(0, 1): np.unique(codes[0] * 30 + codes[1])}
    data = CX.CrossedData([], ["g", "h"], [np.arange(50), np.arange(30)],
                          CG.Patterns.of(keys, (50, 30)), [], [], 400.0, cols=2)
    values = 2 * len(keys[(0, 1)])  # entries x the first term's columns
    monkeypatch.setattr(crossed_paths, "TABLES_ON_WORKERS", values + 1)
    assert CX.tables_at(client, data, "matrix-free") == "client"
    monkeypatch.setattr(crossed_paths, "TABLES_ON_WORKERS", values)
    assert CX.tables_at(client, data, "matrix-free") == "workers"
    assert CX.tables_at(client, data, "sparse") == "client"  # it factors the whole tables
    assert CX.tables_at(client, data, "matrix-free", "client") == "client"
    assert CX.tables_at(InProcess(), data, "matrix-free") == "client"
    assert CX.tables_at(InProcess(), data, "matrix-free", "workers") == "workers"
    with pytest.raises(ValueError, match="tables='disk'; allowed: 'auto', 'client', "
                                         "'workers'"):
        CX.tables_at(client, data, "matrix-free", "disk")


def test_the_command_line_and_a_job_file_take_the_path(small, tmp_path):
    data = tmp_path / "crossed.csv"
    small.to_csv(data, index=False)
    out = tmp_path / "fit"
    proc = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", str(data), "--formula",
                           "c ~ x + (1 | g) + (1 | h)", "--family", "poisson", "--crossed",
                           "matrix-free", "--seed", "3", "--mode", "in-process", "--out",
                           str(out), "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((out / "summary.json").read_text())["optinfo"]["crossed"]
    assert info["path"] == "matrix-free" and info["seed"] == 3
    from daskmm.jobs.spec import load_job
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {data}\nformula: \"y ~ x + (1 | g) + (1 | h)\"\nfamily: binomial\n"
                   f"crossed: sparse\nseed: 2\noutput: {tmp_path / 'o'}\n")
    # (the runner hands a job's options to the fit as tests/models/lmm/test_iterative.py's
    # job shows for the LMM)
    spec = load_job(job)
    assert spec.inference["crossed"] == "sparse" and spec.inference["seed"] == 2


def test_an_aliased_column_is_dropped_and_changes_nothing(small):
    f = "y ~ x + (1 | g) + (1 | h)"
    with pytest.warns(UserWarning, match="dropping 1 column"):
        aliased = daskmm.glmm("y ~ x + x2 + (1 | g) + (1 | h)", small.assign(x2=2 * small.x),
                              "binomial", crossed="matrix-free", mode="in-process")
    plain = daskmm.glmm(f, small, "binomial", crossed="matrix-free", mode="in-process")
    assert aliased.fixef_names == ["(Intercept)", "x"]
    np.testing.assert_allclose(aliased.beta, plain.beta, rtol=1e-10)
    np.testing.assert_allclose(aliased.theta, plain.theta, rtol=1e-10)


@pytest.mark.parametrize("path", ["sparse", "matrix-free"])
def test_real_data_verbagg_is_glmers(path):
    # lme4's VerbAgg: 7,584 binary answers, 316 respondents crossed with 24 items; glmer's
    # tight fit from the corpus (tests/fixtures/corpus/make_corpus.R)
    corpus = Path(__file__).parents[2] / "fixtures" / "corpus"
    ref = json.loads((corpus / "refs" / "verbagg_main.json").read_text())
    fit = daskmm.glmm(ref["formula"], str(corpus / ref["data"]), "binomial",
                      factors=["id", "item"], crossed=path, mode="in-process")
    assert fit.optinfo.crossed["path"] == path and fit.certified
    beta = [ref["fixef"][k] for k in fit.fixef_names]
    se = [ref["se"][k] for k in fit.fixef_names]
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov)), se, rtol=1e-3)
    if path == "sparse":
        assert fit.objective == pytest.approx(ref["objective"], abs=1e-6)
        np.testing.assert_allclose(fit.theta, ref["theta"], rtol=1e-5)
        np.testing.assert_allclose(fit.beta, beta, rtol=1e-5, atol=1e-6)
    else:
        assert abs(fit.objective - ref["objective"]) < 3 * fit.optinfo.crossed["criterion_se"]
        np.testing.assert_allclose(fit.theta, ref["theta"], rtol=1e-3)
        np.testing.assert_allclose(fit.beta, beta, atol=1e-4)
