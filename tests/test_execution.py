"""Where a fit runs (``daskmm.execution``): in this process below the size threshold with no
cluster named, with no ``distributed``, ``dask.dataframe`` or numba import; on the cluster
when one is given; the same numbers to 1e-10 either way, on every conformance fixture."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.distributed.execution import InProcess, in_process_limit, runs_in_process
from daskmm.errors import DaskmmError
from tests.conftest import LMM_FIXTURES, ROOT, load_fixture
from tests.models.glmm.helpers import LOCAL_FIXTURES, load_local

GLMM_FIXTURES = ["cbpp_laplace", "cbpp_agq25", "grouseticks_poisson", *LOCAL_FIXTURES]


def test_small_fit_runs_here_without_cluster_imports():
    """A whole process: ``daskmm.fit`` on a frame imports none of ``distributed``, ``dask``
    and numba, and says it ran in process."""
    code = (
        "import sys, json, pandas as pd, daskmm\n"
        f"df = pd.read_csv({str(ROOT / 'tests/fixtures/conformance/data/sleepstudy.csv')!r})\n"
        "r = daskmm.fit('Reaction ~ Days + (Days | Subject)', df)\n"
        "print(json.dumps({'mode': r.mode, 'objective': r.objective,\n"
        "  'mods': [m for m in ('distributed', 'dask', 'numba')\n"
        "           if m in sys.modules]}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["mode"] == "in-process"
    assert got["mods"] == []
    assert got["objective"] == pytest.approx(load_fixture("sleepstudy_reml")["objective"],
                                             rel=1e-9)


def test_cli_says_where_it_ran(tmp_path):
    fx = load_fixture("sleepstudy_reml")
    out = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", fx["data_path"],
                          "--formula", fx["formula"], "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "(fitted in-process)" in out.stdout
    doc = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert doc["mode"] == "in-process" and doc["optinfo"]["mode"] == "in-process"


CHOICES = """
from daskmm.distributed.execution import in_process_limit, runs_in_process
assert runs_in_process("auto", None, 1000)
assert runs_in_process("auto", None, lambda: 1000)  # sized only when it matters
assert not runs_in_process("auto", None, in_process_limit() + 1)
assert not runs_in_process("auto", None, None)  # size unknown: a dask DataFrame
assert not runs_in_process("auto", "tcp://127.0.0.1:1", 10)  # a scheduler named
assert runs_in_process("in-process", None, 10 ** 12)
assert not runs_in_process("gathered", None, 10)
from distributed import Client, LocalCluster
with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as lc, Client(lc):
    assert not runs_in_process("auto", None, 10)  # a current client counts as named
print("ok")
"""


def test_choice_of_where():
    """In a clean process (this one holds the suite's current client)."""
    out = subprocess.run([sys.executable, "-c", CHOICES], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
    with pytest.raises(DaskmmError, match="runs without a cluster"):
        runs_in_process("in-process", "tcp://127.0.0.1:1", 10)
    with pytest.raises(DaskmmError, match="allowed"):
        runs_in_process("fast", None, 10)


def test_current_client_is_used(client):
    fx = load_fixture("sleepstudy_reml")
    assert daskmm.lmm(fx["formula"], pd.read_csv(fx["data_path"])).mode == "gathered"


def test_threshold_is_overridable(monkeypatch):
    monkeypatch.setenv("DASKMM_IN_PROCESS_CELLS", "100")
    assert in_process_limit() == 100
    assert not runs_in_process("auto", None, 101)
    monkeypatch.setenv("DASKMM_IN_PROCESS_CELLS", "lots")
    with pytest.raises(DaskmmError, match="DASKMM_IN_PROCESS_CELLS"):
        in_process_limit()


def test_scheduler_env_means_a_cluster(monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    assert not runs_in_process("auto", None, 10)


def test_in_process_executor_runs_like_a_client():
    ex = InProcess()
    futs = ex.map(lambda a, b, k=0: a + b + k, [1, 2], [10, 20], k=100)
    assert ex.gather(futs) == [111, 122]
    assert ex.submit(sum, futs).result() == 233  # futures resolve inside arguments
    with pytest.raises(ZeroDivisionError):  # an error in a task is raised, not swallowed
        ex.map(lambda a: 1 / a, [0])


def _same(a, b, tol=1e-10):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0)) < tol


@pytest.mark.parametrize("fid", LMM_FIXTURES)
def test_lmm_in_process_equals_cluster(fid, client):
    fx = load_fixture(fid)
    kw = dict(reml=fx["REML"], factors=fx["factors"])
    here = daskmm.lmm(fx["formula"], pd.read_csv(fx["data_path"]), mode="in-process", **kw)
    there = daskmm.lmm(fx["formula"], fx["data_path"], client=client, npartitions=2, **kw)
    assert here.mode == "in-process" and there.mode == "gathered"
    _same(here.objective, there.objective)
    _same(here.theta, there.theta)
    _same(here.beta, there.beta)
    _same(here.vcov, there.vcov)
    for f in here.ranef:
        _same(here.ranef[f].b, there.ranef[f].b)


@pytest.mark.parametrize("fid", GLMM_FIXTURES)
def test_glmm_in_process_equals_cluster(fid, client):
    fx = load_local(fid) if fid in LOCAL_FIXTURES else load_fixture(fid)
    kw = dict(factors=fx["factors"], nagq=fx["nAGQ"])
    here = daskmm.glmm(fx["formula"], fx["data_path"], fx["family"], mode="in-process",
                       **kw)
    there = daskmm.glmm(fx["formula"], fx["data_path"], fx["family"], client=client, **kw)
    assert here.mode == "in-process" and there.mode == "distributed"
    _same(here.objective, there.objective)
    _same(here.theta, there.theta, 1e-8)
    _same(here.beta, there.beta, 1e-8)
