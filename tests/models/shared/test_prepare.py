"""The set-up written once (:mod:`daskmm.models.shared.prepare`): every model checks its
columns and grouping factors with the same words and error classes, and the checks that
differ between lmer and glmer differ here as they do there."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.errors import ColumnNotFoundError, DataError, ModelError


def frame(n=60, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "g": np.repeat([f"g{i}" for i in range(10)], n // 10),
                         "obs": [f"o{i}" for i in range(n)], "one": "a",
                         "y": rng.poisson(np.exp(1 + 0.3 * x)).astype(float),
                         "w": np.where(x > 0, "heavy", "light")})


@pytest.mark.parametrize("family, formula", [("gaussian", "y ~ x + (1 | g)"),
                                             ("poisson", "y ~ x + (1 | g)"),
                                             ("gaussian", "y ~ s(x)")])
def test_a_missing_column_reads_the_same_for_every_model(family, formula):
    df = frame()
    with pytest.raises(ColumnNotFoundError) as e:
        daskmm.fit(formula.replace("x", "xx", 1), df, family)
    said = str(e.value)
    assert said.startswith("column 'xx' ") and said.endswith(
        "is not in the data (did you mean 'x'?); the data have: x, g, obs, one, y, w")
    if "s(" not in formula:
        assert "named in the formula" in said


@pytest.mark.parametrize("family", ["gaussian", "poisson"])
def test_a_one_level_grouping_factor_is_a_model_error_for_both(family):
    with pytest.raises(ModelError, match="grouping factor 'one' has 1 level"):
        daskmm.fit("y ~ x + (1 | one)", frame(), family)


def test_a_level_an_observation_is_glmers_overdispersion_term_but_not_lmers():
    """glmer allows as many levels as observations (an observation-level random effect);
    lmer does not (check.nobs.vs.nlev with allow.n = FALSE)."""
    df = frame()
    g = daskmm.fit("y ~ x + (1 | g) + (1 | obs)", df, "poisson")
    assert g.ngroups["obs"] == len(df)
    with pytest.raises(ModelError, match="60 levels for 60 observations; the number of levels "
                                         "must be smaller"):
        daskmm.fit("y ~ x + (1 | obs)", df)
    with pytest.raises(ModelError, match="check.nobs.vs.nRE"):
        daskmm.fit("y ~ x + (1 + x | obs)", df, "poisson")


@pytest.mark.parametrize("family, formula", [("gaussian", "y ~ x + (1 | g)"),
                                             ("binomial", "I(y > 1) ~ x + (1 | g)"),
                                             ("gaussian", "y ~ s(x)")])
def test_non_numeric_weights_are_refused_by_every_model(family, formula):
    with pytest.raises(DataError, match="weights column 'w' is not numeric"):
        daskmm.fit(formula, frame(), family, weights="w")


@pytest.mark.parametrize("formula, family, kw, words", [
    ("y ~ x + (1 | g)", "gaussian", {"nagq": 7}, "nagq=7 does not apply to the gaussian"),
    ("y ~ x + (1 | g)", "gaussian", {"rho": 0.5}, "rho=0.5 (AR1 residuals, discretisation) "
                                                  "applies to GAMs"),
    ("y ~ x + (1 | g)", "poisson", {"ci": "wald"}, "ci='wald' (inference after the fit) "
                                                    "applies to linear mixed models"),
    ("y ~ x + (1 | g)", "poisson", {"reml": True}, "REML applies to the gaussian family"),
    ("y ~ x + (1 | g)", "poisson", {"method": "REML"}, "REML applies to the gaussian family"),
    ("y ~ s(x)", "gaussian", {"optimizer_options": {"maxeval": 5}},
     "does not apply to a GAM"),
    ("y ~ s(x)", "gaussian", {"reml": False, "method": "REML"}, "disagree"),
    ("y ~ x + (1 | g)", "gaussian", {"level": 0.9}, "applies to confidence intervals"),
])
def test_each_model_refuses_an_option_it_does_not_take_before_any_work(formula, family, kw,
                                                                         words):
    """The model's own options object checks what was given (daskmm.models.registry): the
    data are never read (a path that does not exist is not reached)."""
    with pytest.raises(ModelError, match=words.replace("(", r"\(").replace(")", r"\)")):
        daskmm.fit(formula, "/nonexistent/data.csv", family, **kw)


def test_the_cli_and_job_files_name_the_options_their_own_way(tmp_path):
    import subprocess
    import sys

    from daskmm.jobs.runner import run_job
    df = frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", str(tmp_path / "d.csv"),
                        "--formula", "y ~ x + (1 | g)", "--nagq", "7", "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--nagq 7 does not apply to the gaussian family" in r.stderr
    (tmp_path / "job.yaml").write_text(f"data: {tmp_path / 'd.csv'}\nformula: y ~ x + (1|g)\n"
                                       "family: poisson\nmethod: REML\noutput: out\n")
    with pytest.raises(ModelError, match="method: REML: REML applies to the gaussian family"):
        run_job(tmp_path / "job.yaml")
