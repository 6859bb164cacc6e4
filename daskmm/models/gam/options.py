"""The options of a generalized additive model (``mgcv::bam``)."""

from __future__ import annotations

from daskmm.errors import ModelError
from daskmm.models.options import API, SHARED, ModelOptions, Spell


class GamOptions(ModelOptions):
    kind = "gam"
    what = "a GAM (a formula with s(), te() or ti() terms)"
    takes = SHARED | {"link", "nagq", "reml", "method", "rho", "ar_start", "discrete"}

    def check(self, given: dict, spell: Spell = API) -> dict:
        self.refuse(given, spell)
        out = dict(given)
        nagq = out.pop("nagq", 1)
        if nagq != 1:
            raise ModelError(f"{spell('nagq', nagq)} does not apply to a GAM; leave it out")
        reml = out.pop("reml", None)
        method = out.get("method")
        if reml is False and method not in (None, "ML"):
            raise ModelError(f"{spell('reml', False)} and {spell('method', method)} disagree; "
                             "for a GAM give method 'fREML', 'REML' or 'ML'")
        if reml is False:
            out["method"] = "ML"
        if out.get("mode") == "gathered":
            raise ModelError(f"{spell('mode', 'gathered')} applies to mixed models; a GAM runs "
                             "in-process or distributed (or auto)")
        out.setdefault("method", "fREML")
        return out

    def fit(self, formula: str, data, family: str, options: dict):
        from daskmm.models.gam.model import gam
        return gam(formula, data, family, **options)

    def outputs(self, result, data, plots: bool = False, seed: int | None = None):
        """``fitted.parquet`` and, with ``plots``, a PNG per smooth (plot.gam's)."""
        from daskmm.models.gam.outputs import gam_extra
        return gam_extra(result, data, plots=plots)
