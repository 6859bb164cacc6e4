"""Fits that once reported convergence short of their optimum, against lme4's best of several
tight optimisers (tests/fixtures/certify/make_references.R): the optimum is reached, and the
fit's own checks (``optinfo.checks``) say what they tested."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import daskmm
import daskmm.core.optimizer as optimizer

HERE = Path(__file__).resolve().parents[1] / "fixtures" / "certify"
REFS = json.loads((HERE / "refs.json").read_text())


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def _chem97(**kw):
    ref = REFS["chem97"]
    return ref, daskmm.lmm(ref["formula"], str(HERE / ref["data"]), mode="in-process", **kw)


def _check_chem97(ref, fit):
    # never worse than the reference by more than 1e-6 relative (better is fine)
    assert fit.objective <= ref["objective"] * (1 + 1e-12) + 1e-6 * abs(ref["objective"])
    assert abs(fit.objective - ref["objective"]) < 1e-6 * abs(ref["objective"])
    assert _rel(fit.theta, ref["theta"]) < 1e-4
    assert fit.fixef_names == list(ref["fixef"])
    assert _rel(fit.beta, list(ref["fixef"].values())) < 1e-6
    assert _rel(fit.se, ref["se"]) < 1e-4
    checks = fit.optinfo.checks
    assert checks["certified"] and fit.optinfo.certified
    assert checks["free"] == ["school:lea.(Intercept)", "lea.(Intercept)"]
    assert checks["newton_decrease"] < 1e-6 and min(checks["hessian_eigenvalues"]) > 0


def test_chem97_nested_lmm_reaches_lme4s_optimum_off_the_boundary():
    """L-BFGS-B once ended at theta_lea = 6e-19 with a zero projected gradient (the criterion
    is even in theta: its derivative at 0 is always 0), REML criterion 2.75 above lme4's."""
    ref, fit = _chem97()
    _check_chem97(ref, fit)
    assert fit.theta[1] > 0.06


def test_chem97_the_certificate_alone_repairs_a_boundary_stall(monkeypatch):
    """With the optimiser's own look inside its bounds switched off it stops on the boundary
    again; the fit's check finds the criterion lower inside, runs again from there and
    records it."""
    monkeypatch.setattr(optimizer, "_inside_bound", lambda *a: None)
    ref, fit = _chem97()
    _check_chem97(ref, fit)
    actions = fit.optinfo.checks["actions"]
    assert len(actions) == 1 and actions[0].startswith("ran again from inside a bound: "
                                                       "criterion lower by 2.75")
    assert fit.optinfo.restarted


@pytest.mark.parametrize("case, height", [("grouseticks_uncentred", "HEIGHT"),
                                          ("grouseticks_centred", "cHEIGHT")])
def test_an_uncentred_covariate_reaches_the_same_glmm_optimum(case, height):
    """lme4's grouseticks Poisson model with HEIGHT uncentred once stopped at logLik
    -890.3040 (NLOPT_FTOL_REACHED after 1,895 evaluations, reported converged); the
    optimiser now works on standardised columns, and both reach lme4's best."""
    ref = REFS[case]
    base = REFS["grouseticks_uncentred"]
    fit = daskmm.glmm(base["formula"].replace("HEIGHT", height), str(HERE / base["data"]),
                      family="poisson", factors=base["factors"], mode="in-process")
    d = -2 * fit.loglik
    assert d <= ref["deviance"] + 1e-6 * ref["deviance"]
    assert abs(d - ref["deviance"]) < 1e-6 * ref["deviance"]
    assert fit.fixef_names == list(ref["fixef"])
    assert _rel(fit.beta, list(ref["fixef"].values())) < 1e-4
    assert _rel(fit.theta, ref["theta"]) < 1e-3
    assert _rel(fit.se, ref["se"]) < 1e-3
    assert fit.optinfo.checks["certified"], fit.optinfo.checks["messages"]
    assert fit.optinfo.feval < 400  # was 1,895 uncentred


SLEEP = HERE.parent / "conformance" / "data" / "sleepstudy.csv"
# a subprocess whose check cannot pass (a negative tolerance on the Newton decrease): what the
# command line does with a fit that fails its check
FAILING = ("import sys, daskmm.core.certify as c; c.DECREASE_TOL = -1.0; "
           "from daskmm.cli import main; sys.exit(main(sys.argv[1:]))")


def _cli(*args):
    return subprocess.run([sys.executable, "-c", FAILING, *args], capture_output=True,
                          text=True, timeout=300)


def test_a_fit_that_fails_its_check_says_so_and_exits_non_zero(tmp_path):
    out = tmp_path / "fit"
    r = _cli("fit", str(SLEEP), "--formula", "Reaction ~ Days + (Days | Subject)", "--out",
             str(out))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("daskmm: error: the optimum failed the fit's own check: a Newton "
                          "step from the optimum would lower the criterion")
    assert "--allow-uncertified" in err and str(out) in err
    doc = json.loads((out / "summary.json").read_text())
    assert doc["certified"] is False and doc["optinfo"]["checks"]["messages"]
    text = (out / "summary.txt").read_text()
    assert "optimizer (L-BFGS-B + Newton) convergence code: 0 (OK)\na Newton step" in text
    r = _cli("fit", str(SLEEP), "--formula", "Reaction ~ Days + (Days | Subject)", "--out",
             str(tmp_path / "fit2"), "--allow-uncertified")
    assert r.returncode == 0, r.stderr


def test_a_job_whose_fit_fails_its_check_fails_unless_allowed(tmp_path, monkeypatch):
    from daskmm.core import certify as c
    from daskmm.errors import FitError
    from daskmm.jobs.runner import run_job
    monkeypatch.setattr(c, "DECREASE_TOL", -1.0)
    job = {"data": str(SLEEP), "formula": "Reaction ~ Days + (Days | Subject)",
           "output": str(tmp_path / "out")}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    with pytest.raises(FitError, match="allow_uncertified: true in the job"):
        run_job(path)
    assert not (tmp_path / "out").exists()
    path.write_text(yaml.safe_dump({**job, "allow_uncertified": True}))
    assert run_job(path)["status"] == "done"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["certified"] is False


def test_a_certified_fit_prints_no_convergence_lines_and_a_singular_one_prints_lme4s():
    fit = daskmm.lmm("Reaction ~ Days + (Days | Subject)", str(SLEEP), mode="in-process")
    assert fit.certified and "convergence code" not in fit.summary()
    dye = daskmm.lmm("Yield ~ 1 + (1 | Batch)", str(HERE.parent / "conformance" / "data" /
                                                   "Dyestuff2.csv"), mode="in-process")
    assert dye.certified and dye.optinfo.checks["boundary"][0]["name"] == "Batch.(Intercept)"
    assert dye.summary().rstrip().endswith(
        "optimizer (L-BFGS-B + Newton) convergence code: 0 (OK)\n"
        "boundary (singular) fit: see help('isSingular')")


def test_a_constant_random_effect_column_alone_is_a_scaled_intercept(tmp_path):
    """lme4 fits (0 + one | Subject), one = 1, as a random intercept (REMLcrit
    1786.46508539492, lme4 1.1-31); beside the intercept, or zero, it is refused."""
    import pandas as pd

    from daskmm.errors import ModelError
    d = pd.read_csv(SLEEP)
    d["one"], d["zero"] = 1.0, 0.0
    fit = daskmm.lmm("Reaction ~ Days + (0 + one | Subject)", d, mode="in-process")
    assert abs(fit.objective - 1786.46508539492) < 1e-8 * 1786.5
    with pytest.raises(ModelError, match=r"apart from that of '\(Intercept\)'"):
        daskmm.lmm("Reaction ~ Days + (1 + one | Subject)", d, mode="in-process")
    with pytest.raises(ModelError, match="is 0 in every row"):
        daskmm.lmm("Reaction ~ Days + (0 + zero | Subject)", d, mode="in-process")


def _gam_alias(**kw):
    ref = REFS["gam_alias"]
    return ref, daskmm.gam(ref["formula"], str(HERE / ref["data"]), **kw)


def test_a_parametric_term_aliased_with_a_by_smooth_is_fixed_at_zero_as_mgcv():
    """y ~ fac + s(x2, by = fac) + s(x0), numeric fac: the parametric fac lies in the by
    smooth's null space. Once a different fREML score each run (1758, -18388; bam 971.6),
    scale 2.5e-15 and an SE of 1e7."""
    ref, fit = _gam_alias(mode="in-process")
    assert abs(fit.score - ref["score"]) < 1e-8 * abs(ref["score"])
    assert abs(fit.scale - ref["scale"]) < 1e-6 * ref["scale"]
    # (sp is not compared: daskmm's tp basis scales its penalty unlike mgcv's C code)
    data = str(HERE / ref["data"])
    np.testing.assert_allclose(np.ravel(fit.fitted(data)), ref["fitted"], rtol=0, atol=1e-6)
    fe = fit.fixef().set_index("term")
    assert fe.loc["fac", "estimate"] == 0.0 and fe.loc["fac", "std_error"] == 0.0
    assert np.isnan(fe.loc["fac", "statistic"]) and np.isnan(fe.loc["fac", "p_value"])
    # the intercept as gam() (REML, fac fixed at 0) gives it (the smooths' coefficients are in
    # another basis: daskmm's tp basis is a rotation of mgcv's)
    assert abs(fit.coef[0] - ref["gam_coef"][0]) < 1e-3 * ref["gam_se"][0]
    # printCoefmat's row of an aliased coefficient: its zeros take the column's decimals
    # (the intercept's 7.8935 and 0.3679), its t and p are NaN
    assert "fac           0.0000     0.0000     NaN      NaN    " in fit.summary().splitlines()


def test_the_aliased_gam_gives_the_same_answer_every_run_and_partitioning(client):
    _, a = _gam_alias(mode="in-process")
    _, b = _gam_alias(mode="in-process")
    _, c = _gam_alias(client=client, npartitions=3)
    # the same to rounding (the cross-products' sums are threaded BLAS reductions)
    assert abs(a.score - b.score) < 1e-11 * abs(a.score)
    np.testing.assert_allclose(b.coef, a.coef, rtol=1e-9, atol=1e-11)
    assert abs(c.score - a.score) < 1e-9 * abs(a.score)
    # the by smooth's coefficients are large (~1e3) and nearly cancel (a condition number
    # ~1e7): what they give agrees to 1e-6 of the response's SD across partitionings
    data = str(HERE / REFS["gam_alias"]["data"])
    sd = float(np.std(REFS["gam_alias"]["fitted"]))
    np.testing.assert_allclose(np.ravel(c.fitted(data)), np.ravel(a.fitted(data)),
                               rtol=0, atol=1e-6 * sd)
    assert c.coef[1] == 0.0


def test_a_gam_checks_its_reml_optimum():
    from types import SimpleNamespace

    from daskmm.models.gam.result import _checks
    data = str(HERE.parent / "conformance" / "data" / "gamsim1.csv")
    formula = "y ~ s(x0, bs = 'cr') + s(x1) + s(x2) + s(x3)"
    fit = daskmm.gam(formula, data, mode="in-process")
    checks = fit.optinfo["checks"]
    assert fit.certified and checks["free"] == ["log(sp1)", "log(sp2)", "log(sp3)",
                                                "log(sp4)"]
    assert min(checks["hessian_eigenvalues"]) > 0
    # fREML's Newton stopped one step short: the check says so; a flat smoothing parameter
    # (sp at its limit) is recorded as on a bound
    pt = SimpleNamespace(rho=np.array([1.0, 30.0]), grad=np.array([0.5, 0.0]),
                         hess=np.array([[2.0, 0.0], [0.0, 0.0]]), value=900.0)
    short = _checks(SimpleNamespace(point=pt))
    assert not short["certified"] and short["newton_decrease"] == pytest.approx(0.0625)
    assert short["free"] == ["log(sp1)"] and short["boundary"][0]["name"] == "log(sp2)"
