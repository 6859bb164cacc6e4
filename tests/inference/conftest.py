"""Fits shared by the inference tests (module scope: each case is fitted once)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from daskmm.lmm import lmm, objective
from tests.inference.refs import CASES, frame, load


@pytest.fixture(scope="session")
def fits() -> dict:
    """case -> (reference, our REML fit in process)."""
    out = {}
    for case in CASES:
        ref = load(case)
        out[case] = (ref, lmm(ref["formula"], frame(ref), mode="in-process"))
    return out


def at_reference(fit, ref: dict):
    """Our fit moved to the reference's optimum (its theta; beta and sigma follow): checks of
    what is computed *after* the fit, free of where lme4's optimiser stopped."""
    theta = np.asarray(ref["theta"], float)
    prof, _ = objective(fit.problem, theta, True)
    return dataclasses.replace(fit, theta=theta, beta=prof.beta(), sigma=prof.sigma(True),
                               tests=None, ci=[])
