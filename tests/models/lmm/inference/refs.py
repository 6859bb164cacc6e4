"""Loading the R references of tests/fixtures/inference (made by make_references.R)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3] / "fixtures" / "inference"
CASES = ["sleepstudy", "dyestuff", "penicillin", "pastes", "sleepstudy_unbalanced",
         "sleepstudy_factors", "cake"]


def load(case: str) -> dict:
    return json.loads((ROOT / "refs" / f"{case}.json").read_text())


def frame(ref: dict) -> pd.DataFrame:
    """The case's data, grouping and factor columns as text (as the R script's factors)."""
    df = pd.read_csv(ROOT / ref["data"])
    for c in ref["factors"]:
        df[c] = df[c].astype(str)
    return df


def rel(a, b) -> float:
    a, b = float(a), float(b)
    return abs(a - b) / max(abs(b), 1e-300)
