"""Fitted values, residuals, predictions and simulations of an LMM, as lme4's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.errors import DataError
from daskmm.models.shared.prediction import residual_quantiles
from tests.models.lmm.inference.conftest import at_reference
from tests.models.lmm.inference.refs import CASES, ROOT, frame, rel

# the columns the reference script replaced by an unseen level "new" in the odd rows: the
# grouping factors that are data columns (and Pastes' cask, inside cask:batch)
NEW_LEVEL_COLUMNS = {"sleepstudy": ["Subject"], "dyestuff": ["Batch"],
                     "penicillin": ["plate", "sample"], "pastes": ["batch", "cask"],
                     "sleepstudy_unbalanced": ["Subject"], "sleepstudy_factors": ["Subject"],
                     "cake": []}


@pytest.mark.parametrize("case", CASES)
def test_rows_match_lme4_at_its_optimum(fits, case):
    ref, fit = fits[case]
    df = frame(ref)
    here = at_reference(fit, ref, df)
    rows = pd.read_csv(ROOT / "refs" / f"{case}_rows.csv")
    nd = df.copy()
    for c in NEW_LEVEL_COLUMNS[case]:
        nd.loc[nd.index[::2], c] = "new"
    got = {"fitted": here.fitted(), "resid": here.residuals(),
           "scaled": here.residuals("pearson", scaled=True),
           "fixed": here.predict(re=False),
           "newlevels": here.predict(nd, allow_new_levels=True)}
    y = df[ref["formula"].split("~")[0].strip()]
    for k, s in got.items():
        v = s.compute().to_numpy()
        scale = 1.0 if k == "scaled" else y.std()
        assert np.max(np.abs(v - rows[k].to_numpy())) < 1e-8 * scale, k
    q = residual_quantiles(got["scaled"].compute().to_numpy())
    for k, v in ref["scaled_residuals"].items():
        assert rel(q[k], v) < 1e-6, k


def test_summary_prints_the_scaled_residuals(fits):
    _, fit = fits["sleepstudy"]
    text = fit.summary()
    assert "Scaled residuals:" in text
    assert "-3.9536 -0.4634  0.0231  0.4634  5.1793" in text  # lme4's block for sleepstudy
    assert fit.to_dict()["scaled_residuals"]["Max"] == pytest.approx(5.1793, abs=1e-4)


def test_new_levels_are_refused_unless_allowed(fits):
    ref, fit = fits["sleepstudy"]
    new = pd.DataFrame({"Days": [1.0, 2.0], "Subject": ["308", "999"]})
    with pytest.raises(DataError, match="new level.*'Subject'.*'999'.*allow_new_levels"):
        fit.predict(new).compute()
    p = fit.predict(new, allow_new_levels=True).compute()
    assert p.iloc[1] == pytest.approx(fit.beta[0] + 2 * fit.beta[1])


def test_missing_values_give_nan_rows_in_place(fits):
    _, fit = fits["sleepstudy"]
    new = pd.DataFrame({"Days": [1.0, None, 3.0], "Subject": ["308", "309", None]})
    p = fit.predict(new, re=False).compute()
    assert list(p.isna()) == [False, True, True]


def test_simulate_draws_from_the_fitted_model(fits):
    ref, fit = fits["sleepstudy"]
    sims = fit.simulate(400, seed=3).compute()
    assert list(sims.columns[:2]) == ["sim_1", "sim_2"] and len(sims) == fit.nobs
    again = fit.simulate(400, seed=3).compute()
    pd.testing.assert_frame_equal(sims, again)
    # the marginal variance of a row: sigma^2 + z' Sigma z
    days = frame(ref)["Days"].to_numpy(float)
    lam = fit.terms[0].Lambda(fit.theta)
    Sigma = fit.sigma ** 2 * lam @ lam.T
    var = fit.sigma ** 2 + Sigma[0, 0] + 2 * days * Sigma[0, 1] + days ** 2 * Sigma[1, 1]
    got = sims.to_numpy().var(axis=1)
    # averaged over the 180 rows: within 5% (each row's variance from 400 draws)
    assert abs(np.mean(got / var) - 1) < 0.05
    mean = fit.predict(re=False).compute().to_numpy()
    assert np.max(np.abs(sims.to_numpy().mean(axis=1) - mean) / np.sqrt(var / 400)) < 4.5


def test_fitted_rows_keep_their_order_on_a_cluster(client):
    df = frame({"data": "../conformance/data/sleepstudy.csv", "factors": ["Subject"]})
    df = df.sample(frac=1.0, random_state=1)
    fit = daskmm.lmm("Reaction ~ Days + (Days | Subject)", df, client=client, npartitions=3)
    here = daskmm.lmm("Reaction ~ Days + (Days | Subject)", df, mode="in-process")
    a = fit.fitted().compute()
    b = here.fitted().compute()
    assert list(a.index) == list(df.index)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-7)
