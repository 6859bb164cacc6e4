"""The result of an LMM fit: estimates, an lme4-style summary, tidy tables and a JSON document.

Tidy tables use broom.mixed's column names (``effect, group, term, estimate, std_error,
statistic``); the conditional-mode table has ``group, level, term, estimate, std_error``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from daskmm.data.rows import DropCounts
from daskmm.formula.spec import ModelSpec
from daskmm.reterm import split_theta

SINGULAR_TOL = 1e-4  # lme4::isSingular


@dataclass
class RanefTable:
    """Conditional modes of one grouping factor: ``b`` (levels x q) and their conditional
    covariance ``cov`` (levels x q x q), all terms of the factor side by side."""

    levels: list[str]
    b: np.ndarray
    cov: np.ndarray


@dataclass
class LmmResult:
    """A fitted linear mixed model.

    Attributes
    ----------
    beta, fixef_names, vcov
        Fixed effects (aliased columns dropped), their names and covariance.
    theta : ndarray
        Relative covariance parameters in lme4's order.
    sigma : float
        Residual standard deviation.
    objective : float
        REML criterion (``reml``) or deviance (-2 log-likelihood).
    ranef : dict
        Factor name -> :class:`RanefTable`.
    optinfo : dict
        Optimiser name, evaluations, message, ``converged``, evaluation mode.
    n_dropped : DropCounts
        Rows this fit dropped for a missing value in a column it uses, by column.
    ingest_dropped : dict
        Rows ``daskmm ingest`` dropped before (``na_action: omit``), by column.
    """

    formula: str
    spec: ModelSpec
    reml: bool
    theta: np.ndarray
    beta: np.ndarray
    fixef_names: list[str]
    vcov: np.ndarray
    sigma: float
    objective: float
    nobs: int
    n_dropped: int
    ngroups: dict
    ranef: dict
    optinfo: dict
    timing: dict = field(default_factory=dict)
    ingest_dropped: dict = field(default_factory=dict)

    # ------------------------------------------------------------ scalars
    @property
    def method(self) -> str:
        return "REML" if self.reml else "ML"

    @property
    def df(self) -> int:
        """Parameters counted by lme4's logLik: fixed effects, theta and sigma."""
        return len(self.beta) + len(self.theta) + 1

    @property
    def loglik(self) -> float:
        return -0.5 * self.objective

    @property
    def aic(self) -> float:
        return self.objective + 2 * self.df

    @property
    def bic(self) -> float:
        return self.objective + self.df * math.log(self.nobs)

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.diag(self.vcov))

    @property
    def singular(self) -> bool:
        lower = np.concatenate([t.theta_lower() for t in self.spec.terms])
        return bool(np.any(self.theta[lower == 0] < SINGULAR_TOL))

    @property
    def converged(self) -> bool:
        return bool(self.optinfo.get("converged", False))

    # ------------------------------------------------------------ tables
    def fixef(self) -> pd.DataFrame:
        """``term, estimate, std_error, statistic`` (t value)."""
        return pd.DataFrame({"term": self.fixef_names, "estimate": self.beta,
                             "std_error": self.se, "statistic": self.beta / self.se})

    def term_groups(self) -> list[str]:
        """Group label of each term as lme4 writes it (``Subject``, ``Subject.1``)."""
        seen: dict[str, int] = {}
        out = []
        for t in self.spec.terms:
            k = seen.get(t.factor, 0)
            out.append(t.factor if k == 0 else f"{t.factor}.{k}")
            seen[t.factor] = k + 1
        return out

    def varcorr(self) -> pd.DataFrame:
        """Rows as ``as.data.frame(VarCorr(fit))``: ``grp, var1, var2, vcov, sdcor``."""
        rows = []
        for t, grp, th in zip(self.spec.terms, self.term_groups(),
                              split_theta(self.spec.terms, self.theta)):
            lam = t.Lambda(th)
            cov = self.sigma ** 2 * lam @ lam.T
            sd = np.sqrt(np.diag(cov))
            for i, name in enumerate(t.columns):
                rows.append((grp, name, None, cov[i, i], sd[i]))
            for i in range(t.q):
                for j in range(i + 1, t.q):
                    corr = cov[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else float("nan")
                    rows.append((grp, t.columns[i], t.columns[j], cov[i, j], corr))
        rows.append(("Residual", None, None, self.sigma ** 2, self.sigma))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    def ranef_frame(self) -> pd.DataFrame:
        """Conditional modes: ``group, level, term, estimate, std_error`` (group as lme4's
        factor name; terms of one factor are side by side in ``b``)."""
        frames = []
        for f in self.spec.factors:
            tab = self.ranef[f.name]
            cols = [c for ti in f.terms for c in self.spec.terms[ti].columns]
            sd = np.sqrt(np.maximum(np.diagonal(tab.cov, axis1=1, axis2=2), 0))
            for j, term in enumerate(cols):
                frames.append(pd.DataFrame({"group": f.name, "level": tab.levels, "term": term,
                                            "estimate": tab.b[:, j], "std_error": sd[:, j]}))
        return pd.concat(frames, ignore_index=True)

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

    # ------------------------------------------------------------ documents
    def to_dict(self) -> dict:
        """The result document (``summary.json``)."""
        vc = self.varcorr()
        return _clean({
            "formula": self.formula, "family": "gaussian", "link": "identity",
            "method": self.method, "nobs": self.nobs,
            "n_dropped_na": self.rows_report()["dropped"], "rows": self.rows_report(),
            "ngroups": {k: int(v) for k, v in self.ngroups.items()},
            "objective": self.objective,
            "objective_kind": ("REML criterion (-2 restricted log-likelihood)" if self.reml
                               else "deviance (-2 log-likelihood)"),
            "logLik": self.loglik, "df": self.df, "AIC": self.aic, "BIC": self.bic,
            "sigma": self.sigma, "theta": self.theta.tolist(),
            "fixef": [{"term": r.term, "estimate": r.estimate, "std_error": r.std_error,
                       "statistic": r.statistic} for r in self.fixef().itertuples(index=False)],
            "vcov": self.vcov.tolist(),
            "varcorr": [{"grp": r.grp, "var1": r.var1, "var2": r.var2, "vcov": r.vcov,
                         "sdcor": r.sdcor} for r in vc.itertuples(index=False)],
            "converged": self.converged, "singular": self.singular,
            "optinfo": self.optinfo, "timing": self.timing,
        })

    def to_json(self, **kw) -> str:
        return json.dumps(_clean(self.to_dict()), **kw)

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
        if self.singular:
            lines += ["", "boundary (singular) fit: see help('isSingular')"]
        if not self.converged:
            lines += ["", f"optimizer did not report convergence: {self.optinfo.get('message')}"]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.summary()

    def _criteria_lines(self) -> list[str]:
        """lme4's ``AIC BIC logLik deviance df.resid`` header and values."""
        w = [f"{x:.1f}" for x in (self.aic, self.bic, self.loglik, self.objective)]
        w.append(str(self.nobs - self.df))
        heads = ["AIC", "BIC", "logLik", "deviance", "df.resid"]
        width = max(len(s) for s in w + heads) + 1
        return ["".join(h.rjust(width) for h in heads), "".join(s.rjust(width) for s in w)]

    def rows_report(self) -> dict:
        """Rows read, used and dropped, and why (``summary.json``'s ``rows``)."""
        fit = DropCounts(self.n_dropped or {})
        ing = DropCounts(self.ingest_dropped or {})
        return {"used": int(self.nobs), "dropped": fit.total + ing.total,
                "read": int(self.nobs) + fit.total,
                "dropped_missing": dict(fit), "dropped_at_ingest": dict(ing)}

    def dropped_line(self) -> str | None:
        """lme4's ``(N observations deleted due to missingness)``, with the columns; None
        when no row was dropped."""
        fit = DropCounts(self.n_dropped or {})
        ing = DropCounts(self.ingest_dropped or {})
        total = fit.total + ing.total
        if not total:
            return None
        why = []
        if fit:
            why.append(f"missing values in {fit.describe()}")
        if ing:
            why.append(f"at ingest for missing values in {ing.describe()}")
        return f"({total} observations deleted due to missingness: {'; '.join(why)})"

    def _nobs_lines(self) -> list[str]:
        groups = ", ".join(f"{k}, {v}" for k, v in self.ngroups.items())
        lines = [f"Number of obs: {self.nobs}, groups:  {groups}"]
        if self.dropped_line():
            lines.append(self.dropped_line())
        return lines

    def _random_effects_lines(self, residual: bool) -> list[str]:
        """lme4's ``Random effects:`` table (``Groups Name Variance Std.Dev. Corr``)."""
        vc = self.varcorr()
        table = [("Groups", "Name", "Variance", "Std.Dev.", "Corr")]
        for grp in self.term_groups():
            sub = vc[vc["grp"] == grp]
            var = sub[sub["var2"].isna()]
            cor = sub[sub["var2"].notna()]
            for i, r in enumerate(var.itertuples(index=False)):
                corr = " ".join(f"{c:.2f}" for c in cor[cor["var2"] == r.var1]["sdcor"])
                table.append((grp if i == 0 else "", r.var1, f"{r.vcov:.4g}", f"{r.sdcor:.4g}",
                              corr))
        if residual:
            table.append(("Residual", "", f"{self.sigma ** 2:.4g}", f"{self.sigma:.4g}", ""))
        widths = [max(len(r[i]) for r in table) for i in range(5)]
        return [" " + " ".join(r[i].ljust(widths[i]) for i in range(5)).rstrip() for r in table]

    def _correlation_lines(self, names: list[str], nw: int) -> list[str]:
        """lme4's ``Correlation of Fixed Effects:`` block (none for one fixed effect)."""
        if len(names) < 2:
            return []
        sd = self.se
        corr = self.vcov / np.outer(sd, sd)
        abbr = [_abbrev(n) for n in names]
        lines = ["", "Correlation of Fixed Effects:",
                 " " * (nw + 1) + " ".join(f"{a:>6}" for a in abbr[:-1])]
        for i in range(1, len(names)):
            lines.append(f"{names[i]:<{nw}} " + " ".join(f"{corr[i, j]:>6.3f}"
                                                      for j in range(i)))
        return lines


def _abbrev(name: str) -> str:
    return "(Intr)" if name == "(Intercept)" else name[:6]


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
