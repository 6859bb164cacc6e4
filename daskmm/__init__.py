"""daskmm: mixed models fitted on Dask, matching lme4."""

from daskmm.errors import (
                           ColumnNotFoundError,
                           DaskmmError,
                           DataError,
                           FitError,
                           FormulaError,
                           ModelError,
)
from daskmm.glmm import glmm
from daskmm.lmm import lmm
from daskmm.results.glmm_result import GlmmResult
from daskmm.results.lmm_result import LmmResult

__all__ = ["lmm", "LmmResult", "glmm", "GlmmResult", "DaskmmError", "FormulaError", "DataError",
           "ColumnNotFoundError", "ModelError", "FitError"]
__version__ = "0.1.0"
