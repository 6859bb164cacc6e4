"""The models daskmm fits, gathered in one place.

:func:`choose` picks the model for a formula and a family (a GAM for smooth terms, an LMM for
the gaussian family, a GLMM otherwise) and :func:`check` has that model's own options object
(:class:`~daskmm.models.options.ModelOptions`) check what was given: ``daskmm.fit``, the
command line and job files all go through them, once, each naming options its own way.
Importing this also registers every model's result class
(:data:`daskmm.results.base.RESULT_KINDS`), so :meth:`MixedResult.from_dict` reads any result
document.
"""

from __future__ import annotations

from daskmm.core.families import get_family
from daskmm.formula.parse import is_gam_formula
from daskmm.models.gam.options import GamOptions
from daskmm.models.glmm.options import GlmmOptions
from daskmm.models.glmm.result import GlmmResult
from daskmm.models.lmm.options import LmmOptions
from daskmm.models.lmm.result import LmmResult
from daskmm.models.options import API, ModelOptions, Spell
from daskmm.results.base import MixedResult

__all__ = ["GlmmResult", "LmmResult", "MixedResult", "MODELS", "check", "choose"]

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
