"""Fits shared by the inference tests (module scope: each case is fitted once)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from daskmm.models.lmm.criterion import objective
from daskmm.models.lmm.fit import lmm, predictor_for
from daskmm.models.shared.structure import ranef_tables
from tests.models.lmm.inference.refs import CASES, frame, load


@pytest.fixture(scope="session")
def fits() -> dict:
    """case -> (reference, our REML fit in process)."""
    out = {}
    for case in CASES:
        ref = load(case)
        out[case] = (ref, lmm(ref["formula"], frame(ref), mode="in-process"))
    return out


def at_reference(fit, ref: dict, data=None):
    """Our fit moved to the reference's optimum (its theta; beta, sigma and the conditional
    modes follow): checks of what is computed *after* the fit, free of where lme4's
    optimiser stopped (~1e-5 relative in theta on these data)."""
    theta = np.asarray(ref["theta"], float)
    prob = fit.problem
    prof, lam = objective(prob, theta, True)
    beta, sigma = prof.beta(), prof.sigma(True)
    tables = ranef_tables(prob, lam, prof, beta, prof.u_G(beta), sigma)
    Linv = np.linalg.inv(prof.L_XX)
    out = dataclasses.replace(fit, theta=theta, beta=beta, sigma=sigma, ranef=tables,
                              vcov=sigma ** 2 * Linv.T @ Linv, tests=None, ci=[])
    out.predictor = predictor_for(out, data, None)
    return out
