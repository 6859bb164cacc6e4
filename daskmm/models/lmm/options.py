"""The options of a linear mixed model (``lmer``): REML or ML, inference after the fit."""

from __future__ import annotations

from daskmm.errors import ModelError
from daskmm.models.lmm.inference.options import check_level, check_nboot
from daskmm.models.options import API, SHARED, ModelOptions, Spell


class LmmOptions(ModelOptions):
    kind = "lmm"
    what = "a linear mixed model (family gaussian)"
    takes = SHARED | {"link", "nagq", "reml", "method", "optimizer_options", "ddf", "ci",
                      "level", "nboot", "seed", "crossed"}

    def check(self, given: dict, spell: Spell = API) -> dict:
        self.refuse(given, spell)
        out = dict(given)
        link = out.pop("link", None)
        if link not in (None, "identity"):
            raise ModelError(f"{spell('link', link)} does not apply to the gaussian family (its "
                             "link is identity); give family binomial, poisson or "
                             "negative_binomial for a GLMM, or leave the link out")
        nagq = out.pop("nagq", 1)
        if nagq != 1:
            raise ModelError(f"{spell('nagq', nagq)} does not apply to the gaussian family (an "
                             "LMM's likelihood is exact); leave it out")
        method = out.pop("method", None)
        if method is not None:
            if method not in ("REML", "ML"):
                raise ModelError(f"{spell('method', method)}; a mixed model takes 'REML' or "
                                 "'ML' ('fREML' is for GAMs, formulas with s() terms)")
            out["reml"] = method == "REML"
        if out.get("reml") is None:
            out.pop("reml", None)
        ci = out.get("ci")
        if "level" in out and ci is None:
            raise ModelError(f"{spell('level', out['level'])} applies to confidence intervals; "
                             f"give {spell('ci', 'wald')} (or profile, boot) with it, or leave "
                             "it out")
        if "nboot" in out and ci != "boot":
            raise ModelError(f"{spell('nboot', out['nboot'])} applies to the parametric "
                             f"bootstrap; give {spell('ci', 'boot')} with it, or leave it out")
        if ci == "boot":
            check_nboot(out.get("nboot", 500))
        if ci is not None:
            check_level(out.get("level", 0.95))
        return out

    def fit(self, formula: str, data, family: str, options: dict):
        from daskmm.models.lmm.fit import lmm
        return lmm(formula, data, **options)

    def outputs(self, result, data, plots: bool = False, seed: int | None = None):
        """With ``plots``, the LMM's diagnostic plots under ``plots/`` (the profile zeta
        plot where profiles were computed)."""
        if not plots:
            return None

        def extra(tmp) -> None:
            from daskmm.models.lmm.plots import KINDS
            for kind in KINDS:
                if kind != "zeta" or result.profiles:
                    result.plot(kind, tmp / "plots")
        return extra
