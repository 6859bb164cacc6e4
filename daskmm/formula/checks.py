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
    constant"), or a non-intercept column of a random-effect term is zero, or constant beside
    another constant column of its factor (the intercept included): its variance cannot be
    told from the other's. A constant column alone is a scaled intercept, as lme4 fits it."""
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
        # a constant column is a scaled intercept: fine alone (lme4 fits (0 + one | g) as
        # (1 | g)), not beside another constant column of the same factor nor when zero
        const = [(term, c, mins[j]) for j, (term, c) in enumerate(cols)
                 if c == "(Intercept)" or mins[j] == maxs[j]]
        for term, c, v in const:
            if c == "(Intercept)":
                continue
            if v == 0:
                raise ModelError(
                    f"column {c!r} of the random-effect term ({term.lhs} | {term.factor}) is 0 "
                    "in every row, so its variance cannot be estimated; drop it from the term")
            if len(const) > 1:
                other = next(o for o in const if o[1] != c)
                raise ModelError(
                    f"column {c!r} of the random-effect term ({term.lhs} | {term.factor}) is "
                    f"constant (every value is {num(v)}), so its variance cannot be "
                    f"estimated apart from that of {other[1]!r} ({other[0].lhs} | "
                    f"{other[0].factor}); drop it from the term")
