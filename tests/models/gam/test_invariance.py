"""The same GAM fit in process, on 1 and 3 workers and over several partitionings, to 1e-8;
above the setup-row limit the basis sample is chosen by global row number, so it does not
depend on the partitioning either."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from daskmm.distributed.client import NO_DASHBOARD
from daskmm.models.gam.model import SETUP_ROWS, gam

FORMULA = "y ~ s(x0, bs = 'cr') + te(x1, x2, k = c(4, 4)) + s(g, bs = 're') + z"


def frame(n: int, family: str = "gaussian", seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x0": rng.uniform(size=n), "x1": rng.uniform(size=n),
                       "x2": rng.uniform(size=n), "z": rng.normal(size=n),
                       "g": rng.choice([f"l{i}" for i in range(25)], size=n)})
    u = dict(zip([f"l{i}" for i in range(25)], rng.normal(size=25) * 0.3))
    eta = (np.sin(6 * df.x0) + df.x1 * df.x2 + 0.2 * df.z + df.g.map(u)).to_numpy()
    df["y"] = eta + rng.normal(size=n) if family == "gaussian" else rng.poisson(np.exp(eta))
    return df


def assert_same(a, b, tol=1e-8):
    assert b.score == pytest.approx(a.score, rel=tol)
    assert np.linalg.norm(b.coef - a.coef) <= tol * np.linalg.norm(a.coef)
    np.testing.assert_allclose(b.edf, a.edf, rtol=0, atol=tol)
    assert b.scale == pytest.approx(a.scale, rel=tol)


@pytest.mark.parametrize("family", ["gaussian", "poisson"])
def test_invariant_to_partitions(client, family):
    df = frame(SETUP_ROWS + 2500, family)  # the setup sample path
    ref = gam(FORMULA, df, family, mode="in-process")
    for parts in (1, 7):
        assert_same(ref, gam(FORMULA, df, family, client=client, npartitions=parts))


@pytest.mark.parametrize("blocked", [False, True])
def test_invariant_to_workers(monkeypatch, blocked):
    if blocked:  # the re term kept per level, and the result too
        import importlib
        monkeypatch.setattr(importlib.import_module("daskmm.models.gam.model"), "BLOCK_LEVELS", 1)
        monkeypatch.setattr(importlib.import_module("daskmm.models.gam.result"),
                            "DENSE_POST_COEFS", 0)
    df = frame(3000, "poisson", seed=9)
    fits = []
    for workers in (1, 3):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          **NO_DASHBOARD) as cl, Client(cl) as c:
            fits.append(gam(FORMULA, df, "poisson", client=c, npartitions=4))
    assert fits[0].mode == "distributed"
    assert bool(fits[0].optinfo["blocked_terms"]) == blocked
    assert_same(*fits)


@pytest.mark.parametrize("family", ["gaussian", "poisson"])
def test_blocked_re_invariant_to_partitions(client, monkeypatch, family):
    """The re term kept per level: per-level sums from several partitions on the workers
    give the in-process fit."""
    import importlib
    monkeypatch.setattr(importlib.import_module("daskmm.models.gam.model"), "BLOCK_LEVELS", 1)
    monkeypatch.setattr(importlib.import_module("daskmm.models.gam.result"),
                        "DENSE_POST_COEFS", 0)
    df = frame(4000, family, seed=11)
    ref = gam(FORMULA, df, family, mode="in-process")
    assert ref.optinfo["blocked_terms"] == ["s(g)"]
    for parts in (1, 5):
        assert_same(ref, gam(FORMULA, df, family, client=client, npartitions=parts))
