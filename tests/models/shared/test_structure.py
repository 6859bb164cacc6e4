"""The coefficient layout reads each random-effect term's ``placement`` (the ReTerm
protocol): a new kind of term whose block must be global plugs in without touching the
models."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.core.reterm import RandomTerm, ReTerm
from daskmm.errors import ModelError
from daskmm.models.shared.structure import model_layout


@dataclasses.dataclass(frozen=True)
class GlobalTerm(RandomTerm):
    """A term whose block is one block over all its coefficients (a kinship term, say)."""

    placement: ClassVar[str | None] = "global"


def nested_fit():
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(10), 12)
    h = g * 3 + np.tile(np.repeat(np.arange(3), 4), 10)  # h nested in g
    df = pd.DataFrame({"y": rng.normal(size=120) + rng.normal(size=30)[h], "x": rng.normal(
        size=120), "g": g.astype(str), "h": h.astype(str)})
    return daskmm.fit("y ~ x + (1 | g) + (1 | h)", df), df


def test_a_term_placed_global_makes_its_factor_global():
    fit, df = nested_fit()
    spec = fit.problem.spec
    combos = df[["g", "h"]].drop_duplicates()
    plain = model_layout(spec, combos, len(spec.fixef_names))
    assert plain.global_factors == [] and set([plain.primary, *plain.nested]) == {"g", "h"}
    terms = [GlobalTerm(t.factor, t.columns, t.lhs) if t.factor == "h" else t
             for t in spec.terms]
    assert isinstance(terms[0], ReTerm)
    placed = model_layout(dataclasses.replace(spec, terms=terms), combos,
                          len(spec.fixef_names))
    assert placed.primary == "g" and placed.global_factors == ["h"]
    every = [GlobalTerm(t.factor, t.columns, t.lhs) for t in spec.terms]
    with pytest.raises(ModelError, match="needs one factor whose blocks are local"):
        model_layout(dataclasses.replace(spec, terms=every), combos, len(spec.fixef_names))
