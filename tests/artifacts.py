"""Where tests keep what a person should look at (screenshots, one PNG of each plot kind):
``test-artifacts/`` at the repository root, or ``$DASKMM_TEST_ARTIFACTS``."""

from __future__ import annotations

import os
from pathlib import Path

ARTIFACTS = Path(os.environ.get("DASKMM_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "test-artifacts"))


def save_plot(fig, name: str) -> Path:
    """Write ``fig`` as ``plots/<name>`` under :data:`ARTIFACTS`; returns the path."""
    out = ARTIFACTS / "plots"
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / name, dpi=100)
    return out / name
