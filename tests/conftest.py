"""Shared fixtures: a real LocalCluster and the reference fits in tests/fixtures/conformance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from daskmm.distributed.client import NO_DASHBOARD

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT / "tests" / "fixtures" / "conformance"
"""lme4/mgcv reference fits, inside the repository (README.md there: provenance)."""

LMM_FIXTURES = ["dyestuff_reml", "dyestuff_ml", "dyestuff2_reml_singular", "sleepstudy_reml",
                "sleepstudy_ml", "sleepstudy_uncorr_reml", "penicillin_crossed_reml",
                "pastes_nested_reml", "cake_reml"]


def load_fixture(fid: str) -> dict:
    fx = json.loads((CONFORMANCE / "fits" / f"{fid}.json").read_text())
    fx["data_path"] = str(CONFORMANCE / fx["data"])
    fx["ranef_path"] = str(CONFORMANCE / fx["ranef"])
    return fx


@pytest.fixture(scope="session")
def client():
    """Two worker processes, one thread each: real serialisation between client and workers."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      **NO_DASHBOARD) as cluster, Client(cluster) as c:
        yield c
