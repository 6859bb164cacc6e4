"""The result of a GLMM fit: the LMM's document and tables with glmer's differences (no
residual variance, z statistics and Wald p-values, the family and the integration method), plus
fitted values and predictions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import ndtr

from daskmm.errors import ModelError
from daskmm.results import rformat as rf
from daskmm.results.base import MixedResult, result_kind


@result_kind
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
    sigma : float
        A family with a dispersion (Gamma, inverse Gaussian, Gaussian): lme4's ``sigma``,
        ``sqrt((wrss + |u|^2) / n)``, by which ``VarCorr`` scales ``theta`` (lme4 1.1); 1
        otherwise.
    warnings : list of str
        Conditions worth a look (levels with all-zero responses, separation, boundary).
    scaled_residuals : dict or None
        lme4's ``Scaled residuals:`` quantiles (:meth:`residual_summary`).
    """

    family: str = "binomial"
    link: str = "logit"
    nagq: int = 1
    nb_size: float | None = None
    sigma: float = 1.0
    warnings: list[str] = field(default_factory=list)
    scaled_residuals: dict | None = None
    rows_here: object = field(default=None, repr=False, compare=False)
    predictor: object = field(default=None, repr=False, compare=False)  # GlmmRows
    dharma: object = field(default=None, repr=False, compare=False)
    # refit(**kw) -> GlmmResult: glmm() again with this fit's data and arguments (set by the
    # fit; None for a result read from a document)
    refit: object = field(default=None, repr=False, compare=False)

    kind = "glmm"

    def all_fit(self, client=None):
        """lme4's ``allFit``: the model refitted by each optimiser
        (:data:`daskmm.models.shared.allfit.OPTIMIZERS`), side by side
        (:class:`~daskmm.models.shared.allfit.AllFit`; print its ``summary()``). A fit that ran
        in process refits as one task per optimiser on ``client`` (in this process without
        one); a distributed fit refits one optimiser after another, each on the cluster."""
        from daskmm.models.shared.allfit import all_fit
        if self.refit is None:
            raise ModelError("all_fit needs the fit's data and arguments, and this result "
                             "has none (it was read from a document): fit again")
        again = self.refit
        if self.mode == "in-process":
            def refit(opts, again=again):
                return again(mode="in-process", optimizer_options=opts)
            return all_fit(refit, client)

        def refit_here(opts, again=again):
            return again(client=client, optimizer_options=opts)
        return all_fit(refit_here, None)

    @property
    def method(self) -> str:
        return "Laplace" if self.nagq == 1 else f"AGQ({self.nagq})"

    @property
    def scaled(self) -> bool:
        """A family with a dispersion (glmer's ``useSc``): Gamma, inverse Gaussian, Gaussian."""
        from daskmm.core.families import get_family
        return get_family(self.family).scaled

    @property
    def df(self) -> int:
        """Parameters counted by lme4's logLik: fixed effects and theta (and the NB size, or
        the dispersion of a family that has one)."""
        return len(self.beta) + len(self.theta) + (self.nb_size is not None) + self.scaled

    def varcorr(self) -> pd.DataFrame:
        """Rows as ``as.data.frame(VarCorr(fit))``, with lme4's ``Residual`` row (``sigma``)
        for a family with a dispersion."""
        rows = self._varcorr_rows()
        if self.scaled:
            rows.append(("Residual", None, None, self.sigma ** 2, self.sigma))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

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

    def confint(self, method: str = "wald", level: float = 0.95) -> pd.DataFrame:
        """lme4's ``confint(fit, method = "Wald")`` for a GLMM: ``estimate -/+ z se`` for the
        fixed effects (``parameter, lower, upper, method, level``). Profile and bootstrap
        intervals are built for LMMs only."""
        from scipy import stats
        if str(method).lower() != "wald":
            raise ModelError(f"method={method!r}; for a GLMM 'wald' is built (profile and "
                             "bootstrap intervals are built for linear mixed models)")
        if not 0 < level < 1:
            raise ModelError(f"level={level!r}; a confidence level is between 0 and 1")
        z = float(stats.norm.ppf((1 + level) / 2))
        return pd.DataFrame({"parameter": list(self.fixef_names),
                             "lower": self.beta - z * self.se, "upper": self.beta + z * self.se,
                             "method": "wald", "level": level})

    def fitted(self, kind: str = "response"):
        """Fitted values on the ``"response"`` (``mu``; the success probability for the
        binomial) or ``"link"`` (``eta``) scale, conditional on the modes, for the rows of the
        data the model was fitted to, as a lazy dask Series in their order."""
        return self.predict(None, kind=kind)

    def predict(self, newdata=None, kind: str = "response", re: bool = True,
                allow_new_levels: bool = False):
        """Predictions as lme4's ``predict(fit, newdata, type=, re.form=,
        allow.new.levels=)``.

        Parameters
        ----------
        newdata : path, pandas or dask DataFrame, optional
            Rows to predict for (the fitted data when omitted).
        kind : {"response", "link"}
        re : bool
            Include the conditional modes (``re.form = NULL``) or not (``re.form = NA``).
        allow_new_levels : bool
            Predict a level of a grouping factor not in the fit with a random effect of 0;
            otherwise such a level raises :class:`~daskmm.errors.DataError` (lme4's default).

        Returns
        -------
        dask.dataframe.Series
            Lazy; ``.compute()`` it or write it with ``.to_frame().to_parquet(...)``.
        """
        if kind not in ("response", "link"):
            raise ModelError(f"kind={kind!r}; use 'response' or 'link'")
        return self._rows().predict(newdata, kind, re, allow_new_levels)

    def residuals(self, type: str = "deviance"):
        """lme4's ``residuals(fit, type=)``: ``"deviance"`` (lme4's default for a GLMM),
        ``"pearson"`` or ``"response"`` (``y - mu``, ``y`` the proportion of successes for
        the binomial), a lazy dask Series over the fitted rows."""
        return self._rows().residuals(type)

    def residual_summary(self) -> dict | None:
        """lme4's ``Scaled residuals:`` quantiles (``Min, 1Q, Median, 3Q, Max`` of the
        Pearson residuals over ``sigma``), computed once, exactly, when first asked for, in
        a few passes over the fitted rows (on the workers for a cluster fit). None for a
        result read from a document without them, or when the cluster is gone."""
        if self.scaled_residuals is None and self.predictor is not None:
            from daskmm.models.shared.prediction import quantiles_or_none
            if self.rows_here is not None:  # an in-process fit: its rows, no second read
                values = self.predictor.residual_values(self.rows_here, "pearson").to_numpy()
            else:
                values = self.residuals("pearson")
            if self.scaled:
                values = values / self.sigma
            self.scaled_residuals = quantiles_or_none(values)
            self.rows_here = None
        return self.scaled_residuals

    def simulate(self, nsim: int = 1, seed: int = 0, re: str = "unconditional"):
        """lme4's ``simulate(fit, nsim, seed)``: responses (successes for the binomial,
        counts otherwise) from new random effects (``re="unconditional"``, lme4's
        ``re.form = NA``) or from the conditional modes (``"conditional"``); a lazy dask
        DataFrame ``sim_1 .. sim_nsim``."""
        return self._rows().simulate(nsim, seed, re)

    def simulate_residuals(self, n: int = 250, seed: int = 123,
                           simulate_re: str = "conditional", client=None):
        """DHARMa's ``simulateResiduals(fit, n, seed)``: scaled (quantile) residuals from
        ``n`` simulated responses per row, with ``test_uniformity()``,
        ``test_dispersion()`` and ``test_zero_inflation()``
        (:class:`daskmm.models.glmm.rows.DharmaResult`). ``simulate_re="conditional"`` is DHARMa
        0.5's default (the conditional modes); ``"unconditional"`` draws new random
        effects."""
        # the row code (and PIRLS's compiled kernels) only when asked for: an LMM's process
        # imports this module (:mod:`daskmm.models.registry`) and no numba
        from daskmm.models.glmm.rows import simulate_residuals
        self.dharma = simulate_residuals(self._rows(), n, seed, simulate_re, client)
        return self.dharma

    def plot(self, kind: str, out) -> list:
        """Write diagnostic plots as PNG under folder ``out``
        (:mod:`daskmm.models.glmm.plots`): ``dharma`` (DHARMa's QQ and residual plots),
        ``caterpillar`` (lme4's ``dotplot(ranef(fit, condVar = TRUE))``, a file per factor
        and term)."""
        from daskmm.models.glmm.plots import plot
        return plot(self, kind, out)

    def _rows(self):
        if self.predictor is None:
            raise ModelError("this result has no data attached (it was read from a "
                             "document): fit again to predict or simulate")
        return self.predictor

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
        if self.scaled:
            doc["sigma"] = self.sigma
        if self.residual_summary():
            doc["scaled_residuals"] = dict(self.scaled_residuals)
        if self.dharma is not None:
            doc["scaled_residuals_dharma"] = self.dharma.summary()
        return doc

    @classmethod
    def _own_fields(cls, doc: dict) -> dict:
        return {"family": doc["family"], "link": doc["link"], "nagq": int(doc["nAGQ"]),
                "nb_size": doc.get("nb_size"), "sigma": float(doc.get("sigma", 1.0)),
                "warnings": list(doc.get("warnings") or []),
                "scaled_residuals": doc.get("scaled_residuals")}

    def _head(self) -> tuple[list[str], list[str]]:
        """lme4's title and ``Family:`` lines."""
        how = ("(Laplace Approximation)" if self.nagq == 1
               else f"(Adaptive Gauss-Hermite Quadrature, nAGQ = {self.nagq})")
        from daskmm.core.families import get_family
        # MASS's negative.binomial(theta) names itself with format(round(theta, 4))
        fam = get_family(self.family).r_name if self.nb_size is None else \
            f"Negative Binomial({rf.format_num([rf.fround(self.nb_size, 4)])[0]})"
        return (self._title_lines("Generalized linear mixed model fit by maximum likelihood "
                                  f"{how}", "glmerMod"), [f" Family: {fam}  ( {self.link} )"])

    def print_text(self) -> str:
        """The fit as lme4's ``print(glmer(...))`` prints it (``print(fit)`` here)."""
        return "\n".join(self._short_lines(*self._head())) + "\n"

    def summary(self) -> str:
        """Printed summary laid out like lme4's ``summary(glmer(...))``."""
        title, family = self._head()
        lines = [*title, *family, f"Formula: {self.formula}", "",
                  *self._criteria_lines(), ""]
        lines += self._resid_lines(self.residual_summary())
        lines += [*self._random_effects_lines(residual=self.scaled), *self._nobs_lines()]
        # lme4 heads the statistic "t value" where the family has a dispersion (the p-value
        # is still the normal's)
        lines += self._fixef_lines([("estimate", "Estimate"), ("std_error", "Std. Error"),
                                    ("statistic", "t value" if self.scaled else "z value"),
                                    ("p_value", "Pr(>|z|)")])
        lines += self._correlation_lines(list(self.fixef()["term"])) + self._tail_lines()
        for msg in self.warnings:
            lines += ["", f"warning: {msg}"]
        return "\n".join(lines) + "\n"

