"""The result of an LMM fit (``lmerMod``): sigma, t statistics, REML or ML, and lme4's printed
summary, over :class:`~daskmm.results.base.MixedResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from daskmm.errors import ModelError

# the inference modules load where they are used: a process that fits (or fails on its
# input) pays for none of them
from daskmm.models.lmm.inference.ddf import DDF_METHODS
from daskmm.models.shared.prediction import quantiles_or_none
from daskmm.results.base import SINGULAR_TOL, MixedResult, RanefTable, result_kind

CI_METHODS = ("wald", "profile", "boot")

__all__ = ["LmmResult", "RanefTable", "SINGULAR_TOL"]


@result_kind
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
    problem: object = field(default=None, repr=False, compare=False)
    tests: pd.DataFrame | None = field(default=None, repr=False)
    ddf: str | None = None
    ci: list = field(default_factory=list)
    boot: object = field(default=None, repr=False)
    profiles: list = field(default_factory=list, repr=False)
    predictor: object = field(default=None, repr=False, compare=False)
    scaled_residuals: dict | None = None
    rows_here: object = field(default=None, repr=False, compare=False)
    # refit(optimizer_options) -> LmmResult from the fit's statistics (set by the fit)
    refit: object = field(default=None, repr=False, compare=False)

    kind = "lmm"

    @property
    def method(self) -> str:
        return "REML" if self.reml else "ML"

    @property
    def df(self) -> int:
        """Parameters counted by lme4's logLik: fixed effects, theta and sigma."""
        return len(self.beta) + len(self.theta) + 1

    def fixef(self) -> pd.DataFrame:
        """``term, estimate, std_error, statistic`` (t value), with ``df`` and ``p_value``
        after :meth:`test_fixef` (lmerTest's coefficient table)."""
        out = pd.DataFrame({"term": self.fixef_names, "estimate": self.beta,
                            "std_error": self.se, "statistic": self.beta / self.se})
        if self.tests is not None:  # Kenward-Roger's standard errors are the adjusted ones
            out["std_error"] = self.tests["std_error"].to_numpy()
            out["statistic"] = self.tests["statistic"].to_numpy()
            out["df"] = self.tests["df"].to_numpy()
            out["p_value"] = self.tests["p_value"].to_numpy()
        return out

    # ------------------------------------------------------------ rows
    def _predictor(self):
        if self.predictor is None:
            raise ModelError("this result has no model spec attached (it was read from "
                             "summary.json); predict from the fit directory's model.pkl with "
                             "daskmm.load_model(DIR) or `daskmm predict DIR DATA`")
        return self.predictor

    def predict(self, newdata=None, re: bool = True, allow_new_levels: bool = False):
        """Predictions as lme4's ``predict(fit, newdata, re.form =, allow.new.levels =)``: a
        lazy dask Series in the rows' order (NaN where a column the model uses is missing).

        Parameters
        ----------
        newdata : path, pandas or dask DataFrame, optional
            Rows to predict (the fitted rows when omitted); the response is not needed.
        re : bool
            Include the conditional modes (``re.form = NULL``); False: the fixed part only.
        allow_new_levels : bool
            A level not in the fit predicts at the population level; False (lme4's default)
            raises :class:`~daskmm.errors.DataError` naming the level.
        """
        return self._predictor().predict(newdata, re, allow_new_levels)

    def residual_summary(self) -> dict | None:
        """lme4's ``Scaled residuals:`` quantiles (``Min, 1Q, Median, 3Q, Max`` of the
        scaled Pearson residuals), computed once, exactly, when first asked for: from the
        rows when the fit held them in this process, otherwise in a few passes over the
        workers' partitions (:func:`~daskmm.models.shared.prediction.residual_quantiles`).
        None for a result read from a document without them, or when the cluster that held
        the rows is gone."""
        if self.scaled_residuals is None and self.predictor is not None:
            if self.rows_here is not None:
                values = self.predictor.residual_values(self.rows_here, "pearson",
                                                        scaled=True).to_numpy()
            else:
                values = self.residuals("pearson", scaled=True)
            self.scaled_residuals = quantiles_or_none(values)
            self.rows_here = None
        return self.scaled_residuals

    def fitted(self):
        """Fitted values (``fitted(fit)``): a lazy dask Series over the fitted rows."""
        return self._predictor().predict(None, True, False)

    def residuals(self, type: str = "response", scaled: bool = False):
        """``residuals(fit, type = "response" | "pearson" | "deviance", scaled =)``: lazy.
        For an LMM, pearson and deviance residuals are ``sqrt(w) (y - mu)``; ``scaled``
        divides by ``sigma``."""
        return self._predictor().residuals(type, scaled)

    def simulate(self, nsim: int = 1, seed: int = 0, newdata=None):
        """Responses simulated from the fit (``simulate(fit, nsim, seed)``): new random effects
        and residuals; a lazy dask DataFrame ``sim_1 .. sim_nsim``."""
        return self._predictor().simulate(nsim, seed, newdata)

    def plot(self, kind: str, out) -> list:
        """Write diagnostic plots as PNG under folder ``out``
        (:mod:`daskmm.models.lmm.plots`): ``caterpillar``, ``residuals``, ``qq``,
        ``ranef_qq`` or ``zeta`` (after :meth:`confint` with ``"profile"``)."""
        from daskmm.models.lmm.plots import plot
        return plot(self, kind, out)

    # ------------------------------------------------------------ inference
    def all_fit(self, client=None):
        """lme4's ``allFit``: the model refitted by each optimiser
        (:data:`daskmm.models.shared.allfit.OPTIMIZERS`) from the fit's own statistics (no
        pass over the data), side by side (:class:`~daskmm.models.shared.allfit.AllFit`;
        print its ``summary()``). One task per optimiser on ``client`` when the statistics
        are in this process (in this process without a client); one after another when they
        stayed on the workers (``mode="distributed"``)."""
        from daskmm.models.shared.allfit import all_fit
        prob = self._problem("all_fit")
        refit = self.refit
        if prob.evaluator.mode == "distributed":
            return all_fit(refit, None)
        return all_fit(refit, client)

    def _problem(self, what: str):
        if self.problem is None and (self.optinfo.get("crossed") or {}).get("path") == \
                "matrix-free":
            raise ModelError(f"{what} is not available for a matrix-free crossed fit "
                             "(optinfo['crossed']); fit with crossed='dense' or 'sparse' for it")
        if self.problem is None:
            raise ModelError(f"{what} needs the fit's statistics, and this result has none "
                             "(it was read from a document): fit again, with the option on "
                             "the fit (ci=..., ddf=...)")
        client = getattr(self.problem.evaluator, "client", None)
        if client is not None and getattr(client, "status", "running") != "running":
            raise ModelError(f"{what} needs the fit's statistics, which stayed on a cluster "
                             "that has closed (mode='distributed'): ask for it in the fit "
                             "(ci=..., ddf=...) or keep the client open")
        return self.problem

    def test_fixef(self, ddf: str = "satterthwaite") -> pd.DataFrame:
        """t tests of the fixed effects with Satterthwaite's degrees of freedom (lmerTest's
        ``summary``); the table is kept for :meth:`fixef`, the summary and the document.

        Parameters
        ----------
        ddf : {"satterthwaite", "kenward-roger"}
            Kenward-Roger (pbkrtest's ``vcovAdj`` and ``Lb_ddf``, lmerTest's ``ddf =
            "Kenward-Roger"``): REML fits without prior weights (with crossed factors, up to
            :data:`daskmm.models.lmm.inference.ddf.KR_DENSE_MAX` random-effect coefficients); the
            standard errors become the adjusted ones.
        """
        key = str(ddf).lower()
        if key not in DDF_METHODS:
            raise ModelError(f"ddf={ddf!r}; allowed: {', '.join(DDF_METHODS)}")
        if key == "kenward-roger":
            from daskmm.models.lmm.inference.ddf import kr_coef_tests
            self.tests = kr_coef_tests(self.fixef_names, np.asarray(self.beta), self.vcov,
                                       self.kenward_roger_info())
            self.ddf = "Kenward-Roger"
            return self.tests
        from daskmm.models.lmm.inference.ddf import coef_tests
        self.tests = coef_tests(self.fixef_names, np.asarray(self.beta),
                                self.satterthwaite_info())
        self.ddf = "Satterthwaite"
        return self.tests

    def kenward_roger_info(self):
        """pbkrtest's ``vcovAdj`` pieces (:class:`daskmm.kernels.kenward_roger.KRParts`:
        ``P``, ``W`` and the adjusted covariance ``Phi_A``), computed once per result."""
        if getattr(self, "_kr_parts", None) is None:
            if not self.reml:
                raise ModelError("Kenward-Roger applies to REML fits (pbkrtest refits by "
                                 "REML); fit with reml=True")
            from daskmm.models.lmm.inference.ddf import kenward_roger_parts
            self._kr_parts = kenward_roger_parts(self._problem("Kenward-Roger's method"),
                                                 np.asarray(self.theta), self.sigma,
                                                 self.vcov)
        return self._kr_parts

    def satterthwaite_info(self):
        """What Satterthwaite's method needs (:class:`daskmm.models.lmm.inference.ddf.VarparCov`:
        the deviance's Hessian in ``(theta, sigma)`` and the derivatives of ``vcov(beta)``),
        computed once per result."""
        if getattr(self, "_varpar_cov", None) is None:
            from daskmm.models.lmm.inference.ddf import varpar_cov
            from daskmm.models.lmm.inference.deviance import Deviance
            self._varpar_cov = varpar_cov(Deviance(self._problem("Satterthwaite's method")),
                                          self.theta, self.sigma, self.reml)
        return self._varpar_cov

    def confint(self, method: str = "profile", level: float = 0.95, *, nboot: int = 500,
                seed: int | None = None, client=None) -> pd.DataFrame:
        """Confidence intervals as lme4's ``confint(fit, method=, oldNames = FALSE)``:
        ``parameter, lower, upper, method, level``.

        Parameters
        ----------
        method : {"profile", "wald", "boot"}
            ``profile``: profile likelihood (ML deviance, lme4's steps and spline) for every
            parameter; ``wald``: fixed effects only (``estimate -/+ z se``; lme4 gives NA for
            the covariance parameters); ``boot``: parametric bootstrap percentile intervals.
        level : float
        nboot, seed : int
            Bootstrap replicates and seed (``seed=None`` draws one and records it).
        client : distributed.Client, optional
            Run the profiles or replicates as tasks on its workers.
        """
        from scipy import stats
        key = str(method).lower()
        if key not in CI_METHODS:
            raise ModelError(f"method={method!r}; allowed: {', '.join(CI_METHODS)}")
        if not 0 < level < 1:
            raise ModelError(f"level={level!r}; a confidence level is between 0 and 1")
        if key == "wald":
            z = float(stats.norm.ppf((1 + level) / 2))
            rows = [{"parameter": n, "lower": b - z * se, "upper": b + z * se}
                    for n, b, se in zip(self.fixef_names, self.beta, self.se)]
        elif key == "profile":
            from daskmm.models.lmm.inference.profile import profile_intervals
            traces = profile_intervals(self._problem("a profile"), np.asarray(self.theta),
                                       list(self.fixef_names), level, client=client)
            self.profiles = traces
            rows = [{"parameter": t.parameter, "lower": t.lower, "upper": t.upper}
                    for t in traces]
        else:
            prob = self._problem("the bootstrap")
            if seed is None:
                seed = int(np.random.SeedSequence().generate_state(1)[0])
            from daskmm.models.lmm.inference.bootstrap import bootstrap
            from daskmm.models.lmm.inference.profile import parameter_names
            self.boot = bootstrap(prob, np.asarray(self.theta), np.asarray(self.beta),
                                  self.sigma, self.reml, parameter_names(prob, self.fixef_names),
                                  nboot, seed, client=client)
            rows = self.boot.intervals(level)
        out = pd.DataFrame(rows, columns=["parameter", "lower", "upper"])
        out["method"] = key
        out["level"] = level
        self.ci = [r for r in self.ci if r["method"] != key] + out.to_dict("records")
        return out

    def anova(self, type: int = 3, ddf: str = "satterthwaite") -> pd.DataFrame:
        """F tests of the fixed-effect terms, as lmerTest's ``anova(fit, ddf=)`` (type III):
        ``Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F)`` per term. With
        ``ddf="kenward-roger"`` each term is pbkrtest's ``KRmodcomp`` F test (scaled F).
        To compare fits, use :func:`daskmm.anova`."""
        if type != 3:
            raise ModelError(f"type={type!r}; type III (lmerTest's default) is built; "
                             "compare nested fits with daskmm.anova(m0, m1)")
        key = str(ddf).lower()
        if key not in DDF_METHODS:
            raise ModelError(f"ddf={ddf!r}; allowed: {', '.join(DDF_METHODS)}")
        self._problem("type III tests")
        from daskmm.models.lmm.inference.type3 import anova_type3
        return anova_type3(self, key)

    def r2(self) -> dict:
        """Nakagawa's marginal and conditional R^2 (``performance::r2_nakagawa``)."""
        from daskmm.models.lmm.inference.variance import r2_nakagawa
        return r2_nakagawa(self)

    def icc(self) -> dict:
        """Intraclass correlation (``performance::icc``), also per grouping factor."""
        from daskmm.models.lmm.inference.variance import icc
        return icc(self)

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
        if self.ddf:
            doc["ddf"] = self.ddf
        if self.ci:
            doc["ci"] = [dict(r) for r in self.ci]
        if self.residual_summary():
            doc["scaled_residuals"] = dict(self.scaled_residuals)
        if self.boot is not None:
            level = next((float(r["level"]) for r in (self.ci or []) if "level" in r), 0.95)
            doc["bootstrap"] = {"nboot": int(len(self.boot.t)), "seed": self.boot.seed,
                                "n_failed": self.boot.n_failed,
                                "warnings": self.boot.cautions(level)}
        return doc

    @classmethod
    def _own_fields(cls, doc: dict) -> dict:
        out = {"reml": doc["method"] == "REML", "sigma": float(doc["sigma"]),
               "ddf": doc.get("ddf"), "ci": list(doc.get("ci") or []),
               "scaled_residuals": doc.get("scaled_residuals")}
        if doc.get("ddf"):
            out["tests"] = pd.DataFrame(
                {"term": [r["term"] for r in doc["fixef"]],
                 "std_error": [r["std_error"] for r in doc["fixef"]],
                 "statistic": [r["statistic"] for r in doc["fixef"]],
                 "df": [np.nan if r.get("df") is None else r["df"] for r in doc["fixef"]],
                 "p_value": [np.nan if r.get("p_value") is None else r["p_value"]
                             for r in doc["fixef"]]})
        return out

    def print_text(self) -> str:
        """The fit as lme4's ``print(lmer(...))`` prints it (``print(fit)`` here)."""
        how = "REML" if self.reml else "maximum likelihood "
        title = f"Linear mixed model fit by {how}"
        title_lines = (self._title_lines(f"{title}. t-tests use {self.ddf}'s method",
                                         "lmerModLmerTest") if self.tests is not None
                       else self._title_lines(title, "lmerMod"))
        return "\n".join(self._short_lines(title_lines, [])) + "\n"

    def summary(self) -> str:
        """Printed summary laid out like lme4's ``summary(lmer(...))``."""
        # lme4's methTitle pastes an empty GLMM part after "maximum likelihood": a space
        how = "REML" if self.reml else "maximum likelihood "
        title = f"Linear mixed model fit by {how}"
        if self.tests is not None:
            lines = self._title_lines(f"{title}. t-tests use {self.ddf}'s method",
                                      "lmerModLmerTest")
        else:
            lines = self._title_lines(title, "lmerMod")
        lines += [f"Formula: {self.formula}", "", *self._criteria_lines(), ""]
        lines += self._resid_lines(self.residual_summary())
        lines += [*self._random_effects_lines(residual=True), *self._nobs_lines()]
        stat = [("statistic", "t value")]
        if self.tests is None:
            lines += self._fixef_lines([("estimate", "Estimate"), ("std_error", "Std. Error"),
                                        *stat])
        else:
            lines += self._fixef_lines([("estimate", "Estimate"), ("std_error", "Std. Error"),
                                        ("df", "df"), *stat, ("p_value", "Pr(>|t|)")])
        lines += self._correlation_lines(list(self.fixef()["term"]))
        lines += self._tail_lines()
        if self.ci:
            lines += ["", "Confidence intervals:"]
            pw = max(len(r["parameter"]) for r in self.ci)
            for m in dict.fromkeys(r["method"] for r in self.ci):
                rows = [r for r in self.ci if r["method"] == m]
                a = (1 - rows[0]["level"]) / 2
                lines.append(f"  {m}:" + " " * max(pw - len(m) - 1, 1)
                             + f"{100 * a:>8.1f} %{100 * (1 - a):>9.1f} %")
                for r in rows:
                    lines.append(f"  {r['parameter']:<{pw}}{_num(r['lower']):>10}"
                                 f"{_num(r['upper']):>11}")
        return "\n".join(lines) + "\n"






def _num(x) -> str:
    return "NA" if x is None or not np.isfinite(x) else f"{x:.6g}"
