"""daskmm: mixed models fitted on Dask, matching lme4.

``daskmm.fit`` fits any model (``daskmm.lmm``, ``daskmm.glmm`` and ``daskmm.gam`` are the
familiar names); ``daskmm.gwas`` runs a mixed-model association scan.
The models are imported when first used, so ``import
daskmm`` and the command line start quickly and a Ctrl-C during start-up is handled."""

import sys
import types

from daskmm.errors import (
    ColumnNotFoundError,
    DaskmmError,
    DataError,
    FitError,
    FormulaError,
    ModelError,
)

_LAZY = {"fit": ("daskmm.api", "fit"), "lmm": ("daskmm.models.lmm.fit", "lmm"),
         "glmm": ("daskmm.models.glmm.fit", "glmm"), "gam": ("daskmm.models.gam.model", "gam"),
         "MixedResult": ("daskmm.models.registry", "MixedResult"),
         "LmmResult": ("daskmm.models.lmm.result", "LmmResult"),
         "GlmmResult": ("daskmm.models.glmm.result", "GlmmResult"),
         "GamResult": ("daskmm.models.gam.result", "GamResult"),
         "gwas": ("daskmm.models.gwas.api", "gwas"),
         "GwasResult": ("daskmm.models.gwas.api", "GwasResult"),
         "read_results": ("daskmm.models.gwas.output", "read_results"),
         "anova": ("daskmm.models.lmm.inference.compare", "anova"),
         "kr_modcomp": ("daskmm.models.lmm.inference.modcomp", "kr_modcomp"),
         "pb_modcomp": ("daskmm.models.lmm.inference.modcomp", "pb_modcomp"),
         "load_model": ("daskmm.models.shared.prediction", "load_model")}

__all__ = ["fit", "MixedResult", "lmm", "LmmResult", "glmm", "GlmmResult", "gam", "GamResult",
           "gwas", "GwasResult", "read_results", "anova", "kr_modcomp", "pb_modcomp", "load_model",
           "DaskmmError",
           "FormulaError", "DataError", "ColumnNotFoundError", "ModelError", "FitError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'daskmm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """Importing the submodule ``daskmm.lmm`` must not replace the function ``daskmm.lmm``
    (Python sets a package attribute for each submodule it imports)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
