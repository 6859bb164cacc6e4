"""GAM residuals as mgcv's ``residuals(bam_fit, type)`` (references:
tests/fixtures/gam/make_residuals.R): the formulas at mgcv's own fitted values, and our fits'
residuals against mgcv's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from daskmm.errors import ModelError
from daskmm.models.gam.model import gam
from daskmm.models.gam.predict import RESIDUAL_TYPES, residual_values

ROOT = Path(__file__).resolve().parents[2] / "fixtures" / "gam"
CASES = {"cr_four": "gaussian", "poisson_cr": "poisson", "binomial_cr": "binomial",
         "gamma_log": "gamma", "nb_cr": "negative_binomial"}


@pytest.fixture(scope="module")
def fits() -> dict:
    out = {}
    for fid, fam in CASES.items():
        ref = json.loads((ROOT / "fits" / f"{fid}.json").read_text())
        data = pd.read_csv(ROOT / ref["data"])
        want = pd.read_csv(ROOT / "fits" / f"{fid}_residuals.csv")
        out[fid] = (ref, data, want, gam(ref["formula"], data, fam, link=ref["link"],
                                         method="fREML"))
    return out


@pytest.mark.parametrize("fid", list(CASES))
def test_residual_formulas_at_mgcvs_fit(fits, fid):
    ref, data, want, res = fits[fid]
    theta = ROOT / "fits" / f"{fid}_theta.txt"
    if theta.exists():  # mgcv's estimated NB size, so the check is of the formulas alone
        import dataclasses
        res = dataclasses.replace(res, theta=float(theta.read_text()))
    y = data["y"].to_numpy(float)
    for t in RESIDUAL_TYPES:
        got = residual_values(res, y, want["mu"].to_numpy(), want["eta"].to_numpy(), None, t)
        np.testing.assert_allclose(got, want[t], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fid", list(CASES))
def test_residuals_of_our_fit_match_mgcv(fits, fid):
    """To 1e-5 of their spread (the gaussian fit's coefficients agree with mgcv's to ~1e-6;
    the others to ~1e-10)."""
    _, data, want, res = fits[fid]
    for t in RESIDUAL_TYPES:
        got = res.residuals(data, t)["residual"].to_numpy()
        assert np.max(np.abs(got - want[t])) < 1e-5 * np.std(want[t]), t


def test_dropped_rows_are_nan_in_place_and_types_are_checked(fits):
    _, data, _, res = fits["poisson_cr"]
    d = data.copy()
    d.loc[3, "x1"] = np.nan
    r = res.residuals(d)["residual"]
    assert len(r) == len(d) and np.isnan(r.iloc[3]) and np.isfinite(r.drop(3)).all()
    with pytest.raises(ModelError, match="allowed: deviance, pearson, working, response"):
        res.residuals(d, "scaled")
