"""Parametric bootstrap: reproducible from a seed whatever the workers, boot's percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.errors import ModelError
from daskmm.models.lmm.inference.bootstrap import norm_inter


def test_replicates_are_identical_in_process_and_on_two_workers(fits, client):
    _, fit = fits["sleepstudy"]
    a = fit.confint("boot", nboot=24, seed=11)
    ta = fit.boot.t.copy()
    b = fit.confint("boot", nboot=24, seed=11, client=client)
    np.testing.assert_array_equal(fit.boot.t, ta)
    np.testing.assert_array_equal(a[["lower", "upper"]].to_numpy(),
                                  b[["lower", "upper"]].to_numpy())
    fit.confint("boot", nboot=24, seed=12)
    assert not np.array_equal(fit.boot.t, ta)


def test_replicates_are_identical_on_one_and_four_workers(fits):
    from distributed import Client, LocalCluster

    from daskmm.distributed.client import NO_DASHBOARD
    _, fit = fits["pastes"]
    fit.confint("boot", nboot=30, seed=21)
    here = fit.boot.t.copy()
    for n in (1, 4):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          **NO_DASHBOARD) as cl, Client(cl) as c:
            fit.confint("boot", nboot=30, seed=21, client=c)
        np.testing.assert_array_equal(fit.boot.t, here)


def test_bootstrap_centres_on_the_estimates_and_records_its_seed(fits):
    _, fit = fits["dyestuff"]
    ci = fit.confint("boot", nboot=200, seed=5)
    assert list(ci["parameter"]) == ["sd_(Intercept)|Batch", "sigma", "(Intercept)"]
    med = np.nanmedian(fit.boot.t, axis=0)
    # the intercept's replicates scatter around the estimate by its standard error
    assert abs(med[2] - fit.beta[0]) < 0.3 * fit.se[0]
    assert (ci["lower"] < fit.boot.t0).all() and (ci["upper"] > fit.boot.t0).all()
    doc = fit.to_dict()
    assert doc["bootstrap"] == {"nboot": 200, "seed": 5, "n_failed": 0,
                                 "warnings": []}
    assert {r["method"] for r in doc["ci"]} >= {"boot"}


def test_percentile_interpolation_matches_the_boot_package():
    # R: boot:::norm.inter(((1:500)/100)^1.5, c(0.025, 0.975, 0.5))
    t = ((np.arange(1, 501)) / 100) ** 1.5
    got = norm_inter(t[::-1].copy(), np.array([0.025, 0.975, 0.5]))
    np.testing.assert_allclose(got, [0.044397577060076479, 10.795743032331099442,
                                     3.964717467083471725], rtol=1e-13)
    # (R + 1) alpha a whole number: the order statistic itself
    t2 = ((np.arange(1, 1000)) / 100) ** 1.5
    np.testing.assert_allclose(norm_inter(t2, np.array([0.025, 0.975])),
                               [0.125, 30.444365242192191], rtol=1e-13)


def test_bootstrap_refuses_bad_requests_with_what_to_do(fits):
    _, fit = fits["dyestuff"]
    for few in (0, 1):
        with pytest.raises(ModelError, match="at least 2 replicates"):
            fit.confint("boot", nboot=few, seed=1)
    with pytest.raises(ModelError, match="allowed: wald, profile, boot"):
        fit.confint("bca")
    with pytest.raises(ModelError, match="between 0 and 1"):
        fit.confint("wald", level=95)


def test_replicate_refits_reach_the_gradient_methods_optimum(fits, monkeypatch):
    """The replicates' BOBYQA refits (from the fit's theta, small first radius) land where the
    exact-gradient method does."""
    import daskmm.models.lmm.inference.bootstrap as boot
    _, fit = fits["sleepstudy_unbalanced"]
    fit.confint("boot", nboot=16, seed=4)
    fast = fit.boot.t.copy()
    monkeypatch.setattr(boot, "REFIT_OPTIONS", {})
    fit.confint("boot", nboot=16, seed=4)
    scale = np.maximum(np.abs(fit.boot.t), 1.0)
    assert np.max(np.abs(fast - fit.boot.t) / scale) < 1e-6


@pytest.mark.filterwarnings("ignore:the 0.95 percentile intervals use extreme")
def test_replicates_report_their_progress_not_their_refits(fits, client, monkeypatch):
    """One ``replicate`` event a replicate (done of total) in process; on a cluster the count
    rises to the total as the batches finish, counted on the client. The refits' optimiser
    evaluations are not reported (a bootstrap is not one long optimisation)."""
    from daskmm import events
    heard = []
    monkeypatch.setattr(events, "_listener", lambda kind, fields: heard.append((kind, fields)))
    _, fit = fits["dyestuff"]
    fit.confint("boot", nboot=6, seed=3)
    assert heard == [("replicates_start", {"label": "bootstrap", "total": 6})] + [
        ("replicate", {"label": "bootstrap", "done": i, "total": 6}) for i in range(1, 7)]
    heard.clear()
    fit.confint("boot", nboot=6, seed=3, client=client)
    assert heard[0] == ("replicates_start", {"label": "bootstrap", "total": 6})
    done = [f["done"] for k, f in heard[1:] if k == "replicate"]
    assert [k for k, _ in heard[1:]] == ["replicate"] * len(done)
    assert done == sorted(set(done)) and done[-1] == 6
