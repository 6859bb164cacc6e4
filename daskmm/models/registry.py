"""The models daskmm fits, gathered in one place: importing this registers every model's
result class (:data:`daskmm.results.base.RESULT_KINDS`), so :meth:`MixedResult.from_dict`
reads any result document."""

from __future__ import annotations

from daskmm.models.glmm.result import GlmmResult
from daskmm.models.lmm.result import LmmResult
from daskmm.results.base import MixedResult

__all__ = ["GlmmResult", "LmmResult", "MixedResult"]
