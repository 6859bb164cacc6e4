"""The result of a GLMM fit: the LMM's document and tables with glmer's differences (no
residual variance, z statistics and Wald p-values, the family and the integration method), plus
fitted values and predictions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import ndtr

from daskmm.results.base import MixedResult


@dataclass
class GlmmResult(MixedResult):
    """A fitted generalized linear mixed model (``glmerMod``).

    Attributes (beyond :class:`~daskmm.results.base.MixedResult`)
    ----------
    family, link : str
    nagq : int
        1 for the Laplace approximation, more for adaptive Gauss-Hermite quadrature.
    nb_size : float or None
        Negative binomial size ``k`` (``Var = mu + mu^2 / k``), as ``glmer.nb``'s theta.
    warnings : list of str
        Conditions worth a look (levels with all-zero responses, separation, boundary).
    """

    family: str = "binomial"
    link: str = "logit"
    nagq: int = 1
    nb_size: float | None = None
    warnings: list[str] = field(default_factory=list)
    predictor: object = None  # set by glmm(): callable(data, kind, re) -> dask Series

    kind = "glmm"

    @property
    def method(self) -> str:
        return "Laplace" if self.nagq == 1 else f"AGQ({self.nagq})"

    @property
    def df(self) -> int:
        """Parameters counted by lme4's logLik: fixed effects and theta (and the NB size)."""
        return len(self.beta) + len(self.theta) + (self.nb_size is not None)

    def fixef(self) -> pd.DataFrame:
        """``term, estimate, std_error, statistic`` (z) and ``p_value`` (Wald, two-sided)."""
        se = self.se
        z = self.beta / se
        return pd.DataFrame({"term": self.fixef_names, "estimate": self.beta, "std_error": se,
                             "statistic": z, "p_value": 2 * ndtr(-np.abs(z))})

    def tidy(self) -> pd.DataFrame:
        fe = self.fixef().assign(effect="fixed", group=None)
        rows = []
        for r in self.varcorr().itertuples(index=False):
            term = f"sd__{r.var1}" if pd.isna(r.var2) else f"cor__{r.var1}.{r.var2}"
            rows.append(("ran_pars", r.grp, term, r.sdcor))
        rp = pd.DataFrame(rows, columns=["effect", "group", "term", "estimate"])
        cols = ["effect", "group", "term", "estimate", "std_error", "statistic", "p_value"]
        return pd.concat([fe[cols], rp.reindex(columns=cols)], ignore_index=True)

    def fitted(self, kind: str = "response"):
        """Fitted values on the ``"response"`` (``mu``; the success probability for the
        binomial) or ``"link"`` (``eta``) scale, conditional on the modes, for the rows of the
        data the model was fitted to, as a lazy dask Series in their order."""
        return self.predict(None, kind=kind)

    def predict(self, newdata=None, kind: str = "response", re: bool = True):
        """Predictions as lme4's ``predict(fit, newdata, type=, re.form=)``.

        Parameters
        ----------
        newdata : path, pandas or dask DataFrame, optional
            Rows to predict for (the fitted data when omitted). Levels of a grouping factor not
            in the fit get a random effect of 0 (lme4's ``allow.new.levels = TRUE``).
        kind : {"response", "link"}
        re : bool
            Include the conditional modes (``re.form = NULL``) or not (``re.form = NA``).

        Returns
        -------
        dask.dataframe.Series
            Lazy; ``.compute()`` it or write it with ``.to_frame().to_parquet(...)``.
        """
        if kind not in ("response", "link"):
            raise ValueError(f"kind={kind!r}; use 'response' or 'link'")
        if self.predictor is None:
            raise RuntimeError("this result has no data attached to predict from")
        return self.predictor(newdata, kind, re)

    def _doc(self) -> dict:
        doc = self._common_doc()
        doc.update({"family": self.family, "link": self.link, "method": self.method,
                    "nAGQ": self.nagq,
                    "objective_kind": ("-2 log-likelihood, Laplace approximation"
                                       if self.nagq == 1 else "-2 log-likelihood, adaptive "
                                       f"Gauss-Hermite ({self.nagq} nodes)"),
                    "warnings": list(self.warnings)})
        if self.nb_size is not None:
            doc["nb_size"] = self.nb_size
        return doc

    @classmethod
    def _own_fields(cls, doc: dict) -> dict:
        return {"family": doc["family"], "link": doc["link"], "nagq": int(doc["nAGQ"]),
                "nb_size": doc.get("nb_size"), "warnings": list(doc.get("warnings") or [])}

    def summary(self) -> str:
        """Printed summary laid out like lme4's ``summary(glmer(...))``."""
        how = ("Laplace Approximation" if self.nagq == 1
               else f"Adaptive Gauss-Hermite Quadrature, nAGQ = {self.nagq}")
        fam = self.family if self.nb_size is None else f"Negative Binomial({self.nb_size:.4g})"
        lines = [f"Generalized linear mixed model fit by maximum likelihood ({how}) "
                 "['glmerMod']", f" Family: {fam}  ( {self.link} )",
                 f"Formula: {self.formula}", ""]
        lines += [*self._criteria_lines(), "", "Random effects:",
                  *self._random_effects_lines(residual=False), *self._nobs_lines()]
        lines += ["", "Fixed effects:"]
        fe = self.fixef()
        names = list(fe["term"])
        nw = max(len(n) for n in names)
        lines.append(" " * nw + f"{'Estimate':>11}{'Std. Error':>12}{'z value':>9}"
                     f"{'Pr(>|z|)':>10}")
        for r in fe.itertuples(index=False):
            lines.append(f"{r.term:<{nw}}{r.estimate:>11.5g}{r.std_error:>12.5g}"
                         f"{r.statistic:>9.3f}{_pval(r.p_value):>10}")
        lines += self._correlation_lines(names, nw) + self._tail_lines()
        for msg in self.warnings:
            lines += ["", f"warning: {msg}"]
        lines += self._convergence_lines()
        return "\n".join(lines) + "\n"


def _pval(p: float) -> str:
    if not math.isfinite(p):
        return "NA"
    return "<2e-16" if p < 2e-16 else f"{p:.3g}"
