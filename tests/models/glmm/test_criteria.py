"""The GLMM criteria's PIRLS passes report their progress (daskmm.events): pass number and
penalised deviance, cheaply, beside the optimiser's evaluations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from daskmm import events
from daskmm.models.glmm.fit import glmm

from .test_gradient import crossed_frame


def _slopes_frame(n: int = 400, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g, x = rng.integers(0, 20, n), rng.normal(size=n)
    eta = -0.3 + 0.5 * x + rng.normal(0, 0.7, 20)[g] + rng.normal(0, 0.4, 20)[g] * x
    return pd.DataFrame({"g": g.astype(str), "x": x, "y": rng.poisson(np.exp(eta))})


@pytest.mark.parametrize("formula, frame", [
    ("y ~ x + (1 | a) + (1 | b)", lambda: crossed_frame("binomial", n=300)),  # crossed
    ("y ~ x + (x | g)", _slopes_frame),  # lme4's first stage, PIRLS over (u, beta)
], ids=["crossed", "first-stage"])
def test_pirls_passes_are_reported_within_evaluations(formula, frame, monkeypatch):
    heard = []
    monkeypatch.setattr(events, "_listener", lambda kind, fields: heard.append((kind, fields)))
    family = "binomial" if "a" in formula else "poisson"
    glmm(formula, frame(), family, mode="in-process")
    passes = [f for k, f in heard if k == "pirls"]
    assert passes and all(set(f) == {"npass", "deviance"} for f in passes)
    assert all(math.isfinite(f["deviance"]) for f in passes)
    # numbered from 1 in each evaluation's PIRLS
    seq = [f["npass"] for f in passes]
    assert seq[0] == 1 and all(b == a + 1 or b == 1 for a, b in zip(seq, seq[1:]))
    kinds = [k for k, _ in heard]  # interleaved with the optimiser's evaluations
    assert "evaluation" in kinds[kinds.index("pirls"):]
    assert "pirls" in kinds[kinds.index("evaluation"):]
