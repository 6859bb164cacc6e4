"""Fitted values and predictions of a GLMM."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from daskmm.models.glmm.fit import glmm
from tests.models.glmm.helpers import slopes_frame


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
    pred = fit.predict(new, kind="link", allow_new_levels=True).compute()
    assert pred.iloc[0] == pytest.approx(fit.beta[0] + 0.5 * fit.beta[1] + rf.loc[
        str(df.g.iloc[0]), "(Intercept)"] + 0.5 * rf.loc[str(df.g.iloc[0]), "x"])
    assert pred.iloc[1] == pytest.approx(fit.beta[0] + 0.5 * fit.beta[1])  # new level: b = 0
    assert np.isnan(pred.iloc[2])
    fixed_only = fit.predict(new, kind="response", re=False).compute()
    assert fixed_only.iloc[0] == pytest.approx(np.exp(fit.beta[0] + 0.5 * fit.beta[1]))
