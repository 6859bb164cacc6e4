"""GLMM row quantities (lme4's fitted, residuals, predict, simulate) and DHARMa's scaled
residuals and tests (references: tests/fixtures/inference/make_glmm_references.R)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.errors import DataError, ModelError
from daskmm.kernels import quantile_residuals as QR
from daskmm.models.glmm.rows import DharmaResult, add_sums, new_sums
from tests.models.lmm.inference.refs import ROOT

CASES = ["cbpp_laplace_tight", "slopes_poisson", "nb2_glmernb", "binary_factor_response"]


def _load(case: str) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    ref = json.loads((ROOT / "refs" / f"glmm_{case}.json").read_text())
    df = pd.read_csv(ROOT / ref["data"])
    for c in ref["factors"]:
        df[c] = df[c].astype(str)
    rows = pd.read_csv(ROOT / "refs" / f"glmm_{case}_rows.csv")
    return ref, df, rows


@pytest.fixture(scope="module")
def glmm_fits() -> dict:
    out = {}
    for case in CASES:
        ref, df, rows = _load(case)
        fit = daskmm.glmm(ref["formula"], df, ref["family"], mode="in-process")
        out[case] = (ref, df, rows, fit)
    return out


def at_reference(fit, ref: dict):
    """The fit's row code with lme4's fixed effects, conditional modes and NB size."""
    rows = fit.predictor
    spec = rows.base.spec
    beta = np.array([ref["fixef"].get(n, 0.0) for n in spec.fixef_names])
    tables = {m["factor"]: (pd.Index(m["levels"]), np.array(m["b"], float).reshape(
        len(m["levels"]), -1)) for m in ref["modes"]}
    base = dataclasses.replace(rows.base, beta=beta, tables=tables)
    return dataclasses.replace(rows, base=base, nb_size=ref.get("nb_size"))


@pytest.mark.parametrize("case", CASES)
def test_rows_match_lme4_at_its_estimates(glmm_fits, case):
    ref, df, want, fit = glmm_fits[case]
    rows = at_reference(fit, ref)
    np.testing.assert_allclose(rows.predict(None, "response").compute().to_numpy(),
                               want["fitted"], rtol=1e-10)
    for kind in ("response", "pearson", "deviance"):
        got = rows.residuals(kind).compute().to_numpy()
        np.testing.assert_allclose(got, want[f"resid_{kind}"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rows.predict(None, "link", re=False).compute().to_numpy(),
                               want["fixed_link"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_our_fits_rows_are_close_to_lme4s(glmm_fits, case):
    """From our own fit (estimates within the conformance tolerances of lme4's)."""
    _, _, want, fit = glmm_fits[case]
    np.testing.assert_allclose(fit.fitted().compute().to_numpy(), want["fitted"], rtol=1e-4)
    got = fit.residuals().compute().to_numpy()  # lme4's default type: deviance
    np.testing.assert_allclose(got, want["resid_deviance"], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_dharma_on_lme4s_simulations_matches_dharma(glmm_fits, case):
    ref, df, want, fit = glmm_fits[case]
    sims = want[[f"sim_{i + 1}" for i in range(ref["nsim"])]].to_numpy()
    # the observed response (successes) and population mean DHARMa uses, from our row code
    rows = at_reference(fit, ref)
    ok, enc, y, wt, offset = rows.rows(df)
    assert ok.all()
    np.testing.assert_array_equal(y, want["observed"])
    fitted = rows.mean(enc.X @ rows.base.beta + offset)
    np.testing.assert_allclose(fitted, want["fitted_pop"], rtol=1e-10)
    # PIT: DHARMa's (randomised) residual lies between our bounds, equal where they meet
    lower, upper = QR.pit_bounds(sims, y)
    r = want["dharma"].to_numpy()
    assert np.all((r >= lower - 1e-12) & (r <= upper + 1e-12))
    point = lower == upper
    np.testing.assert_array_equal(r[point], lower[point])
    # the simulation tests from the same simulations and residuals
    acc = new_sums(ref["nsim"])
    add_sums(acc, sims, y, fitted)
    res = DharmaResult(pd.Series(r), ref["nsim"], 0, "conditional", acc)
    d = res.test_dispersion()
    assert d["statistic"] == pytest.approx(ref["dispersion"]["statistic"], rel=1e-10)
    assert d["p_value"] == pytest.approx(ref["dispersion"]["p_value"], abs=1e-12)
    z = res.test_zero_inflation()
    assert z["statistic"] == pytest.approx(ref["zero_inflation"]["statistic"], rel=1e-10)
    assert z["p_value"] == pytest.approx(ref["zero_inflation"]["p_value"], abs=1e-12)
    u = res.test_uniformity()
    assert u["statistic"] == pytest.approx(ref["uniformity"]["statistic"], rel=1e-10)
    assert u["p_value"] == pytest.approx(ref["uniformity"]["p_value"], rel=1e-6)


def test_ks_test_is_exact_below_100_values_as_r():
    # R 4.2: ks.test(c(0.05, 0.2, 0.31, 0.5, 0.77, 0.9), "punif") (exact)
    got = QR.ks_uniform(np.array([0.05, 0.2, 0.31, 0.5, 0.77, 0.9]))
    assert got["statistic"] == pytest.approx(0.18999999999999997, rel=1e-12)
    assert got["p_value"] == pytest.approx(0.95271336296691356, rel=1e-10)


def test_scaled_residuals_are_uniform_for_a_correct_model(glmm_fits):
    _, _, _, fit = glmm_fits["slopes_poisson"]
    res = fit.simulate_residuals(250, seed=7)
    r = res.residuals.to_numpy()
    assert len(r) == fit.nobs and np.all((r >= 0) & (r <= 1))
    assert res.test_uniformity()["p_value"] > 0.01
    assert res.test_dispersion()["p_value"] > 0.05
    assert 0.85 < res.test_dispersion()["statistic"] < 1.15
    again = fit.simulate_residuals(250, seed=7)
    np.testing.assert_array_equal(again.residuals.to_numpy(), r)
    doc = fit.to_dict()["scaled_residuals_dharma"]
    assert doc["nsim"] == 250 and doc["simulate_re"] == "conditional"


def test_dispersion_test_detects_overdispersed_counts():
    rng = np.random.default_rng(3)
    n, m = 2000, 40
    g = rng.integers(0, m, n)
    x = rng.normal(size=n)
    eta = 0.5 + 0.3 * x + rng.normal(0, 0.4, m)[g] + rng.normal(0, 0.8, n)  # row-level noise
    df = pd.DataFrame({"y": rng.poisson(np.exp(eta)), "x": x, "g": g.astype(str)})
    fit = daskmm.glmm("y ~ x + (1 | g)", df, "poisson", mode="in-process")
    res = fit.simulate_residuals(200, seed=1)
    disp = res.test_dispersion()
    assert disp["statistic"] > 1.5 and disp["p_value"] < 0.01
    assert res.test_uniformity()["p_value"] < 1e-3


def test_scaled_residuals_are_the_same_with_and_without_a_cluster(client):
    ref, df, _ = _load("cbpp_laplace_tight")
    fit = daskmm.glmm(ref["formula"], df, "binomial", client=client, npartitions=2)
    a = fit.simulate_residuals(60, seed=5, client=client)
    b = fit.simulate_residuals(60, seed=5)
    pd.testing.assert_series_equal(a.residuals.sort_index(), b.residuals.sort_index())
    assert a.summary() == b.summary()


def test_simulate_draws_around_the_fitted_mean(glmm_fits):
    _, df, _, fit = glmm_fits["cbpp_laplace_tight"]
    sims = fit.simulate(400, seed=2, re="conditional").compute().to_numpy()
    mean = fit.fitted().compute().to_numpy() * df["size"].to_numpy()
    se = np.sqrt(mean * (1 - mean / df["size"].to_numpy()) / 400)
    assert np.all(np.abs(sims.mean(axis=1) - mean) < 5 * se + 1e-9)
    un = fit.simulate(400, seed=2).compute().to_numpy()
    # new random effects: more spread between simulations than with the modes held
    assert un.var(axis=1).mean() > sims.var(axis=1).mean()
    with pytest.raises(ModelError, match="allowed: unconditional, conditional"):
        fit.simulate(2, re="NA")


def test_new_levels_need_allow_new_levels_as_lme4(glmm_fits):
    _, df, _, fit = glmm_fits["slopes_poisson"]
    new = pd.DataFrame({"x": [0.5, 0.5], "g": [df.g.iloc[0], "unseen"]})
    with pytest.raises(DataError, match="new level\\(s\\) of 'g'.*'unseen'.*allow_new_levels"):
        fit.predict(new).compute()
    got = fit.predict(new, kind="link", allow_new_levels=True).compute()
    assert got.iloc[1] == pytest.approx(fit.beta[0] + 0.5 * fit.beta[1])


@pytest.mark.parametrize("case", ["cbpp_laplace_tight", "slopes_poisson"])
def test_glmm_anova_matches_lme4(glmm_fits, case):
    ref, df, _, fit = glmm_fits[case]
    reduced = {"cbpp_laplace_tight": "cbind(incidence, size - incidence) ~ 1 + (1 | herd)",
               "slopes_poisson": "y ~ 1 + (1 + x | g)"}[case]
    m0 = daskmm.glmm(reduced, df, ref["family"], mode="in-process")
    tab = daskmm.anova(m0, fit)
    want = ref["anova"]
    assert tab["npar"].tolist() == want["npar"]
    np.testing.assert_allclose(tab["logLik"], want["logLik"], rtol=1e-8)
    np.testing.assert_allclose(tab["AIC"], want["AIC"], rtol=1e-8)
    assert tab["Chisq"].iloc[1] == pytest.approx(want["Chisq"], rel=1e-6)
    assert tab["Df"].iloc[1] == want["Df"]
    assert tab["Pr(>Chisq)"].iloc[1] == pytest.approx(want["p_value"], rel=1e-6)
    with pytest.raises(ModelError, match="one kind and family"):
        daskmm.anova(daskmm.lmm("incidence ~ 1 + (1 | herd)", df, mode="in-process")
                     if case.startswith("cbpp") else
                     daskmm.lmm("y ~ 1 + (1 | g)", df, mode="in-process"), fit)


@pytest.mark.parametrize("case", CASES)
def test_glmm_wald_intervals_match_lme4(glmm_fits, case):
    """To 1e-4 of the half-width: lme4's standard errors come from a finite-difference
    Hessian (daskmm's agree with them to ~3e-5)."""
    ref, _, _, fit = glmm_fits[case]
    ci = fit.confint("wald").set_index("parameter")
    for row in ref["wald_ci"]:
        half = (row["upper"] - row["lower"]) / 2
        assert abs(ci.loc[row["parameter"], "lower"] - row["lower"]) < 1e-4 * half
        assert abs(ci.loc[row["parameter"], "upper"] - row["upper"]) < 1e-4 * half
    with pytest.raises(ModelError, match="'wald' is built"):
        fit.confint("profile")
