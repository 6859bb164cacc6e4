"""Checks of the inference options made before any work (``ci="boot"``'s replicates, the
confidence level), light enough for :func:`daskmm.fit` to run before it fits."""

from __future__ import annotations

from daskmm.errors import ModelError

MIN_NBOOT = 2
"""The fewest replicates a percentile interval can be made from (``boot.ci`` cannot
calculate one from a single replicate)."""


def check_nboot(nboot: int) -> None:
    """Refuse fewer bootstrap replicates than an interval can use."""
    if int(nboot) < MIN_NBOOT:
        raise ModelError(f"nboot={nboot}: a percentile interval needs at least {MIN_NBOOT} "
                         "replicates (boot.ci cannot calculate one from fewer); give 500 or "
                         "more, lme4's confint default, or 1000 for steadier endpoints")


def check_level(level: float) -> None:
    """A confidence level strictly between 0 and 1."""
    if not 0 < float(level) < 1:
        raise ModelError(f"level={level}; give a confidence level between 0 and 1, e.g. 0.95")
