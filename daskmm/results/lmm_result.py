"""The result of an LMM fit (``lmerMod``): sigma, t statistics, REML or ML, and lme4's printed
summary, over :class:`~daskmm.results.base.MixedResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from daskmm.results.base import SINGULAR_TOL, MixedResult, RanefTable

__all__ = ["LmmResult", "RanefTable", "SINGULAR_TOL"]


@dataclass
class LmmResult(MixedResult):
    """A fitted linear mixed model.

    Attributes (beyond :class:`~daskmm.results.base.MixedResult`)
    ----------
    reml : bool
        REML (True) or maximum likelihood.
    sigma : float
        Residual standard deviation.
    """

    reml: bool = True
    sigma: float = math.nan

    kind = "lmm"

    @property
    def method(self) -> str:
        return "REML" if self.reml else "ML"

    @property
    def df(self) -> int:
        """Parameters counted by lme4's logLik: fixed effects, theta and sigma."""
        return len(self.beta) + len(self.theta) + 1

    def fixef(self) -> pd.DataFrame:
        """``term, estimate, std_error, statistic`` (t value)."""
        return pd.DataFrame({"term": self.fixef_names, "estimate": self.beta,
                             "std_error": self.se, "statistic": self.beta / self.se})

    def varcorr(self) -> pd.DataFrame:
        """Rows as ``as.data.frame(VarCorr(fit))``: ``grp, var1, var2, vcov, sdcor``."""
        rows = self._varcorr_rows() + [("Residual", None, None, self.sigma ** 2, self.sigma)]
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    def tidy(self) -> pd.DataFrame:
        """broom.mixed's ``tidy()``: fixed effects and random-effect parameters."""
        fe = self.fixef().assign(effect="fixed", group=None)
        rows = []
        for r in self.varcorr().itertuples(index=False):
            if r.grp == "Residual":
                rows.append(("ran_pars", "Residual", "sd__Observation", r.sdcor))
            elif pd.isna(r.var2):
                rows.append(("ran_pars", r.grp, f"sd__{r.var1}", r.sdcor))
            else:
                rows.append(("ran_pars", r.grp, f"cor__{r.var1}.{r.var2}", r.sdcor))
        rp = pd.DataFrame(rows, columns=["effect", "group", "term", "estimate"])
        cols = ["effect", "group", "term", "estimate", "std_error", "statistic"]
        return pd.concat([fe[cols], rp.reindex(columns=cols)], ignore_index=True)

    def _doc(self) -> dict:
        doc = self._common_doc()
        doc.update({"family": "gaussian", "link": "identity", "method": self.method,
                    "objective_kind": ("REML criterion (-2 restricted log-likelihood)"
                                       if self.reml else "deviance (-2 log-likelihood)"),
                    "sigma": self.sigma})
        return doc

    @classmethod
    def _own_fields(cls, doc: dict) -> dict:
        return {"reml": doc["method"] == "REML", "sigma": float(doc["sigma"])}

    def summary(self) -> str:
        """Printed summary laid out like lme4's ``summary(lmer(...))``."""
        how = "REML" if self.reml else "maximum likelihood"
        lines = [f"Linear mixed model fit by {how}  ['lmerMod']", f"Formula: {self.formula}", ""]
        if self.reml:
            lines.append(f"REML criterion at convergence: {self.objective:.1f}")
        else:
            lines += self._criteria_lines()
        lines += ["", "Random effects:", *self._random_effects_lines(residual=True),
                  *self._nobs_lines()]
        lines += ["", "Fixed effects:"]
        fe = self.fixef()
        names = list(fe["term"])
        nw = max(len(n) for n in names)
        lines.append(" " * nw + f"{'Estimate':>11}{'Std. Error':>12}{'t value':>9}")
        for r in fe.itertuples(index=False):
            lines.append(f"{r.term:<{nw}}{r.estimate:>11.5g}{r.std_error:>12.5g}"
                         f"{r.statistic:>9.3f}")
        lines += self._correlation_lines(names, nw)
        lines += self._tail_lines() + self._convergence_lines()
        return "\n".join(lines) + "\n"
