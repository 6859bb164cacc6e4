"""Loading the mgcv reference fits of ``tests/fixtures/gam`` (made by its make_fixtures.R)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parents[2] / "fixtures"
GAM = HERE / "gam"
SHARED = HERE / "conformance"

class _Families(dict):
    """mgcv's family names; ``Negative Binomial(3.05)`` carries its theta."""

    def __missing__(self, key: str) -> str:
        if key.startswith("Negative Binomial"):
            return "negative_binomial"
        raise KeyError(key)


FAMILY = _Families({"gaussian": "gaussian", "binomial": "binomial", "poisson": "poisson",
                    "Gamma": "gamma"})


def cases() -> list[tuple[Path, str]]:
    out = [(GAM, p.stem) for p in sorted((GAM / "fits").glob("*.json"))
           if p.stem != "bases" and not p.stem.startswith(("gamm4_", "fsref_"))]
    out += [(SHARED, p.stem) for p in sorted((SHARED / "fits").glob("gamsim1_*.json"))]
    return out


def load(root: Path, fid: str) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    ref = json.loads((root / "fits" / f"{fid}.json").read_text())
    data = pd.read_csv(root / ref["data"])
    fitted = pd.read_csv(root / ref["fitted"])
    return ref, data, fitted
