"""The models daskmm fits, gathered in one place.

:func:`choose` picks the model for a formula and a family (a GAM for smooth terms, an LMM for
the gaussian family, a GLMM otherwise) and :func:`check` has that model's own options object
(:class:`~daskmm.models.options.ModelOptions`) check what was given: ``daskmm.fit``, the
command line and job files all go through them, once, each naming options its own way.
Importing this also names every model's result module
(:data:`daskmm.results.base.RESULT_MODULES`), so :meth:`MixedResult.from_dict` reads any result
document, importing that model's result when a document of its kind is first read (a command
that stops at its first check imports none of them).
"""

from __future__ import annotations

import importlib

from daskmm.core.families import get_family
from daskmm.formula.parse import is_gam_formula
from daskmm.models.gam.options import GamOptions
from daskmm.models.glmm.options import GlmmOptions
from daskmm.models.lmm.options import LmmOptions
from daskmm.models.options import API, ModelOptions, Spell
from daskmm.results.base import RESULT_MODULES, MixedResult

__all__ = ["MixedResult", "MODELS", "check", "choose"]  # GlmmResult, LmmResult: __getattr__

RESULT_MODULES.update({"lmm": "daskmm.models.lmm.result", "glmm": "daskmm.models.glmm.result"})
_RESULTS = {"LmmResult": "lmm", "GlmmResult": "glmm"}


def __getattr__(name: str):
    """``GlmmResult`` and ``LmmResult``, imported when first asked for."""
    if name in _RESULTS:
        return getattr(importlib.import_module(RESULT_MODULES[_RESULTS[name]]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

MODELS: dict[str, ModelOptions] = {o.kind: o for o in (LmmOptions(), GlmmOptions(),
                                                       GamOptions())}


def choose(formula: str, family: str, link: str | None = None) -> ModelOptions:
    """The model for ``formula``, ``family`` and ``link``: a GAM for smooth terms, an LMM
    for the gaussian family with the identity link, a GLMM otherwise."""
    if is_gam_formula(formula):
        return MODELS["gam"]
    return MODELS["lmm"] if get_family(family).is_lmm(link) else MODELS["glmm"]


def check(formula: str, family: str, given: dict, spell: Spell = API
          ) -> tuple[ModelOptions, dict]:
    """``(model, its fit's keyword arguments)`` for the options ``given`` (only those the
    caller set); raises :class:`~daskmm.errors.ModelError` naming an option ``spell``'s way."""
    model = choose(formula, family, given.get("link"))
    return model, model.check(given, spell)
