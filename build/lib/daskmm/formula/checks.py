"""Checks of a whole dataset against the model that lme4 makes before it fits: a constant
response (``check.response.not.const``) and a constant column in a random-effect term.

Each partition reports the ranges of its response and term columns
(:func:`column_ranges`); the client combines them (:func:`check_ranges`).
"""

from __future__ import annotations

import numpy as np

from daskmm.errors import DataError, ModelError, num


def column_ranges(y: np.ndarray, Z: dict[str, np.ndarray]) -> dict:
    """``{"y": (min, max), factor: (mins, maxs)}`` of one partition (None when it is empty)."""
    if len(y) == 0:
        return {}
    out = {"y": (float(np.min(y)), float(np.max(y)))}
    for f, z in Z.items():
        if z.size:
            out[f] = (z.min(axis=0), z.max(axis=0))
    return out


def check_ranges(parts: list[dict], spec, response: str, check_terms: bool = True) -> None:
    """Raise when the response is constant over all rows (lme4 stops: "response is
    constant"), or a non-intercept column of a random-effect term is (its variance cannot be
    told from the intercept's, or it is zero)."""
    parts = [p for p in parts if p]
    if not parts:
        return
    lo = min(p["y"][0] for p in parts)
    hi = max(p["y"][1] for p in parts)
    if lo == hi:
        raise DataError(f"the response {response!r} is constant (every value is {num(lo)}); "
                        "a mixed model needs a response that varies (glmer stops: Response is "
                        "constant; lmer cannot estimate a variance from it either)")
    if not check_terms:
        return
    for f in spec.factors:
        if not any(f.name in p for p in parts):
            continue
        mins = np.min([p[f.name][0] for p in parts if f.name in p], axis=0)
        maxs = np.max([p[f.name][1] for p in parts if f.name in p], axis=0)
        cols = [(spec.terms[t], c) for t in f.terms for c in spec.terms[t].columns]
        for j, (term, c) in enumerate(cols):
            if c != "(Intercept)" and mins[j] == maxs[j]:
                raise ModelError(
                    f"column {c!r} of the random-effect term ({term.lhs} | {term.factor}) is "
                    f"constant (every value is {num(mins[j])}), so its variance cannot be "
                    "estimated apart from the intercept's; drop it from the term")
