"""The options of a generalized linear mixed model (``glmer``, ``glmer.nb``)."""

from __future__ import annotations

from daskmm.errors import ModelError
from daskmm.models.options import API, SHARED, ModelOptions, Spell


class GlmmOptions(ModelOptions):
    kind = "glmm"
    what = "a generalized linear mixed model"
    takes = SHARED | {"link", "nagq", "reml", "method", "optimizer_options", "crossed", "seed"}

    def check(self, given: dict, spell: Spell = API) -> dict:
        self.refuse(given, spell)
        out = dict(given)
        method = out.pop("method", None)
        if method is not None and method not in ("REML", "ML"):
            raise ModelError(f"{spell('method', method)}; a mixed model takes 'REML' or 'ML' "
                             "('fREML' is for GAMs, formulas with s() terms)")
        reml = out.pop("reml", None)
        if reml or method == "REML":
            raise ModelError(f"{spell('reml', True) if reml else spell('method', 'REML')}: "
                             "REML applies to the gaussian family; a GLMM is fitted by maximum "
                             "likelihood (leave it out)")
        if out.get("mode") == "gathered":
            raise ModelError(f"{spell('mode', 'gathered')} applies to gaussian fits; a GLMM "
                             "runs in-process or distributed (or auto)")
        return out

    def fit(self, formula: str, data, family: str, options: dict):
        from daskmm.models.glmm.fit import glmm
        return glmm(formula, data, family, **options)

    def outputs(self, result, data, plots: bool = False, seed: int | None = None):
        """With ``plots``, DHARMa's residual panels (``plots/dharma.png``; 250 simulations,
        seed 123 by default, conditional random effects), their tests in summary.json, and
        caterpillar plots of the conditional modes (``plots/caterpillar_*.png``)."""
        if not plots:
            return None
        result.simulate_residuals(seed=seed if seed is not None else 123)

        def extra(tmp) -> None:
            for kind in ("dharma", "caterpillar"):
                result.plot(kind, tmp / "plots")
        return extra
