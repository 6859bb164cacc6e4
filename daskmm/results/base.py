"""What every mixed-model result shares: estimates, random-effect tables, rows, the
optimiser's record, and a document that reads back without the data (``to_dict`` /
``from_dict``).

:class:`~daskmm.models.lmm.result.LmmResult` and
:class:`~daskmm.models.glmm.result.GlmmResult` are siblings over :class:`MixedResult`; each
adds its own scalars, tables and printed summary. Tidy tables use broom.mixed's column names
(``effect, group, term, estimate, std_error, statistic``); the conditional-mode table has
``group, level, term, estimate, std_error``.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from daskmm.core.optimizer import OptSummary
from daskmm.core.reterm import RandomTerm, split_theta
from daskmm.data.rows import DropCounts
from daskmm.errors import DataError, FitError
from daskmm.results import rformat as rf

SINGULAR_TOL = 1e-4  # lme4::isSingular


RESULT_KINDS: dict[str, type] = {}
"""``model.kind`` -> the result class that reads such a document (:func:`result_kind`); a model's
result registers itself, so this base imports no model."""
RESULT_MODULES: dict[str, str] = {}
"""``model.kind`` -> the module whose import registers its result class
(:mod:`daskmm.models.registry` fills it): imported when a document of that kind is first read,
so a process that reads none never imports every model's result."""


def result_kind(cls):
    """Class decorator: register a :class:`MixedResult` subclass under its ``kind``."""
    RESULT_KINDS[cls.kind] = cls
    return cls


@dataclass
class RanefTable:
    """Conditional modes of one grouping factor: ``b`` (levels x q) and their conditional
    covariance ``cov`` (levels x q x q), all terms of the factor side by side."""

    levels: list[str]
    b: np.ndarray
    cov: np.ndarray


@dataclass
class MixedResult:
    """A fitted mixed model.

    Attributes
    ----------
    formula : str
    theta : ndarray
        Relative covariance parameters in lme4's order.
    beta, fixef_names, vcov
        Fixed effects (aliased columns dropped), their names and covariance.
    objective : float
        The criterion minimised (REML criterion, or -2 log-likelihood).
    nobs : int
    n_dropped : DropCounts
        Rows this fit dropped for a missing value in a column it uses, by column.
    ngroups : dict
        Levels per grouping factor.
    ranef : dict
        Factor name -> :class:`RanefTable` (empty for a result read back without them).
    optinfo : OptSummary
        What the optimiser did (:class:`daskmm.core.optimizer.OptSummary`).
    terms : list of RandomTerm
        The random-effect terms, in lme4's order.
    factor_terms : dict
        Factor name -> indices of its terms.
    spec : ModelSpec or None
        The frozen model spec (None for a result read back from its document).
    ingest_dropped : dict
        Rows ``daskmm ingest`` dropped before (``na_action: omit``), by column.
    """

    formula: str
    theta: np.ndarray
    beta: np.ndarray
    fixef_names: list[str]
    vcov: np.ndarray
    objective: float
    nobs: int
    n_dropped: dict
    ngroups: dict
    ranef: dict
    optinfo: OptSummary
    terms: list = field(default_factory=list)
    factor_terms: dict = field(default_factory=dict)
    spec: object = None
    timing: dict = field(default_factory=dict)
    ingest_dropped: dict = field(default_factory=dict)

    kind = "mixed"
    sigma = 1.0

    # ------------------------------------------------------------ scalars
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
        lower = np.concatenate([t.theta_lower() for t in self.terms])
        return bool(np.any(self.theta[lower == 0] < SINGULAR_TOL))

    @property
    def converged(self) -> bool:
        return bool(self.optinfo.get("converged", False))

    @property
    def mode(self) -> str:
        """Where the fit ran: ``in-process``, ``gathered`` or ``distributed``."""
        return self.optinfo.get("mode", "")

    # ------------------------------------------------------------ tables
    def term_groups(self) -> list[str]:
        """Group label of each term as lme4 writes it (``Subject``, ``Subject.1``)."""
        seen: dict[str, int] = {}
        out = []
        for t in self.terms:
            k = seen.get(t.factor, 0)
            out.append(t.factor if k == 0 else f"{t.factor}.{k}")
            seen[t.factor] = k + 1
        return out

    def _varcorr_rows(self) -> list[tuple]:
        rows = []
        for t, grp, th in zip(self.terms, self.term_groups(), split_theta(self.terms,
                                                                         self.theta)):
            lam = t.Lambda(th)
            cov = self.sigma ** 2 * lam @ lam.T
            sd = np.sqrt(np.diag(cov))
            for i, name in enumerate(t.columns):
                rows.append((grp, name, None, cov[i, i], sd[i]))
            for i in range(t.q):
                for j in range(i + 1, t.q):
                    corr = cov[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else float("nan")
                    rows.append((grp, t.columns[i], t.columns[j], cov[i, j], corr))
        return rows

    def varcorr(self) -> pd.DataFrame:
        """Rows as ``as.data.frame(VarCorr(fit))``: ``grp, var1, var2, vcov, sdcor``."""
        return pd.DataFrame(self._varcorr_rows(), columns=["grp", "var1", "var2", "vcov",
                                                           "sdcor"])

    def ranef_frame(self) -> pd.DataFrame:
        """Conditional modes: ``group, level, term, estimate, std_error`` (group as lme4's
        factor name; terms of one factor are side by side in ``b``)."""
        frames = []
        for name, ids in self.factor_terms.items():
            if name not in self.ranef:
                continue
            tab = self.ranef[name]
            cols = [c for ti in ids for c in self.terms[ti].columns]
            sd = np.sqrt(np.maximum(np.diagonal(tab.cov, axis1=1, axis2=2), 0))
            for j, term in enumerate(cols):
                frames.append(pd.DataFrame({"group": name, "level": tab.levels, "term": term,
                                            "estimate": tab.b[:, j], "std_error": sd[:, j]}))
        if not frames:
            return pd.DataFrame(columns=["group", "level", "term", "estimate", "std_error"])
        return pd.concat(frames, ignore_index=True)

    def _fixef_rows(self) -> list[dict]:
        return [dict(r._asdict()) for r in self.fixef().itertuples(index=False)]

    def _varcorr_doc(self) -> list[dict]:
        return [{"grp": r.grp, "var1": r.var1, "var2": r.var2, "vcov": r.vcov,
                 "sdcor": r.sdcor} for r in self.varcorr().itertuples(index=False)]

    # ------------------------------------------------------------ documents
    def _common_doc(self) -> dict:
        return {"formula": self.formula, "nobs": self.nobs,
                "n_dropped_na": self.rows_report()["dropped"], "rows": self.rows_report(),
                "ngroups": {k: int(v) for k, v in self.ngroups.items()},
                "objective": self.objective, "logLik": self.loglik, "df": self.df,
                "AIC": self.aic, "BIC": self.bic, "theta": np.asarray(self.theta).tolist(),
                "fixef": self._fixef_rows(), "vcov": np.asarray(self.vcov).tolist(),
                "varcorr": self._varcorr_doc(), "converged": self.converged,
                "certified": self.certified,
                "singular": self.singular, "mode": self.mode,
                "optinfo": self.optinfo.to_dict() if hasattr(self.optinfo, "to_dict")
                else dict(self.optinfo),
                "timing": self.timing,
                "model": {"kind": self.kind,
                          "terms": [{"factor": t.factor, "columns": list(t.columns),
                                     "lhs": t.lhs} for t in self.terms],
                          "factor_terms": {k: list(v) for k, v in self.factor_terms.items()},
                          "fixef_names": list(self.fixef_names),
                          "n_dropped": dict(self.n_dropped or {}),
                          "ingest_dropped": dict(self.ingest_dropped or {})}}

    def to_dict(self, ranef: bool = False) -> dict:
        """The result document (``summary.json``); with ``ranef`` also the conditional modes
        and their covariances (for a document :meth:`from_dict` reads back whole)."""
        doc = self._doc()
        if ranef:
            doc["ranef"] = {f: {"levels": [str(v) for v in t.levels], "b": t.b.tolist(),
                                "cov": t.cov.tolist()} for f, t in self.ranef.items()}
        return _clean(doc)

    def _doc(self) -> dict:
        return self._common_doc()

    def to_json(self, **kw) -> str:
        return json.dumps(_clean(self.to_dict()), **kw)

    @classmethod
    def _common_fields(cls, doc: dict) -> dict:
        model = doc["model"]
        fixef = doc["fixef"]
        return dict(
            formula=doc["formula"], theta=np.asarray(doc["theta"], dtype=float),
            beta=np.array([r["estimate"] for r in fixef], dtype=float),
            fixef_names=list(model["fixef_names"]),
            vcov=np.asarray(doc["vcov"], dtype=float).reshape(len(fixef), len(fixef)),
            objective=float(doc["objective"]), nobs=int(doc["nobs"]),
            n_dropped=DropCounts(model.get("n_dropped") or {}),
            ngroups=dict(doc["ngroups"]),
            ranef={f: RanefTable(list(t["levels"]), np.asarray(t["b"], dtype=float),
                                 np.asarray(t["cov"], dtype=float))
                   for f, t in (doc.get("ranef") or {}).items()},
            optinfo=OptSummary.from_dict(doc.get("optinfo") or {"optimizer": "", "settings": {},
                                                                 "x0": []}),
            terms=[RandomTerm(t["factor"], tuple(t["columns"]), t["lhs"])
                   for t in model["terms"]],
            factor_terms={k: list(v) for k, v in model["factor_terms"].items()},
            timing=dict(doc.get("timing") or {}),
            ingest_dropped=dict(model.get("ingest_dropped") or {}))

    @classmethod
    def from_dict(cls, doc: dict) -> MixedResult:
        """A result from its document (:meth:`to_dict`), without the data: estimates, tables
        and summary as fitted; no predictions (they need the model spec and the data)."""
        kind = (doc.get("model") or {}).get("kind")
        if cls is MixedResult:
            target = RESULT_KINDS.get(kind)
            if target is None and kind in RESULT_MODULES:
                importlib.import_module(RESULT_MODULES[kind])
                target = RESULT_KINDS.get(kind)
            if target is None:
                kinds = ", ".join(sorted(set(RESULT_KINDS) | set(RESULT_MODULES)))
                raise DataError(f"the document's model.kind is {kind!r}; a daskmm result "
                                f"document has one of: {kinds} "
                                "(read it with daskmm.MixedResult.from_dict)")
            return target.from_dict(doc)
        return cls(**cls._common_fields(doc), **cls._own_fields(doc))

    @classmethod
    def _own_fields(cls, doc: dict) -> dict:
        return {}

    # ------------------------------------------------------------ printing
    def _title_lines(self, title: str, cls: str) -> list[str]:
        """lme4's ``.prt.methTit``: ``TITLE ['CLASS']``, or, past 80 characters, the title
        wrapped and ``[CLASS]`` after it."""
        if len(title) + 5 + len(cls) > rf.WIDTH:
            return rf.cat_fill([*rf.strwrap(title, rf.WIDTH - 2, exdent=2), " [", cls, "]"],
                               sep="")
        return [f"{title} ['{cls}']"]

    def _criteria_lines(self) -> list[str]:
        """lme4's ``.prt.aictab``: ``REML criterion at convergence:`` or the ``AIC BIC
        logLik deviance df.resid`` table, rounded to one decimal and formatted together."""
        if getattr(self, "reml", False):
            return [f"REML criterion at convergence: {_cat_num(rf.fround(self.objective, 1))}"]
        vals = rf.fround_all([self.aic, self.bic, self.loglik, -2 * self.loglik,
                              float(self.nobs - self.df)], 1)
        shown = rf.format_num(vals)
        shown[-1] = rf.format_num([vals[-1]])[0]
        return rf.print_named(shown, ["AIC", "BIC", "logLik", "deviance", "df.resid"])

    def _resid_lines(self, quantiles: dict | None) -> list[str]:
        """lme4's ``.prt.resids``: the quantiles of the scaled residuals, zapped to 5 and
        printed to 4 digits; nothing when the fit has none."""
        if not quantiles:
            return []
        keys = ["Min", "1Q", "Median", "3Q", "Max"]
        q = rf.zapsmall([quantiles[k] for k in keys], 5)
        return ["Scaled residuals: ", *rf.print_named(rf.format_num(q, 4), keys), ""]

    def _fixef_lines(self, columns: list[tuple[str, str]]) -> list[str]:
        """``Fixed effects:`` through R's ``printCoefmat(digits = 4)``; ``columns``: the
        ``(fixef() column, printed header)`` pairs in order."""
        fe = self.fixef()
        x = [[getattr(r, c) for c, _ in columns] for r in fe.itertuples(index=False)]
        return ["", "Fixed effects:", *rf.print_coefmat(x, list(fe["term"]),
                                                         [h for _, h in columns], digits=4)]

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
        """lme4's ``.prt.grps``: ``Number of obs: N, groups:  g, n; h, m``."""
        # lme4's flist: the factors by decreasing number of levels (ties in term order)
        order = sorted(self.ngroups.items(), key=lambda kv: -int(kv[1]))
        groups = "; ".join(f"{k}, {v}" for k, v in order)
        lines = rf.cat_fill([f"Number of obs: {self.nobs}, groups: ", groups])
        if self.dropped_line():
            lines.append(self.dropped_line())
        return lines

    def _random_effects_lines(self, residual: bool, variance: bool = True) -> list[str]:
        """lme4's ``Random effects:`` block (``formatVC`` printed as a character matrix):
        ``Groups Name Variance Std.Dev.`` (``variance=False``: without ``Variance``, as
        ``print(fit)``), and ``Corr`` where a factor has several terms."""
        vc = self.varcorr()
        groups = []  # (grp, names, sds, correlation matrix)
        for grp in self.term_groups():
            sub = vc[vc["grp"] == grp]
            var = sub[sub["var2"].isna()]
            names = list(var["var1"])
            cor = np.eye(len(names))
            for r in sub[sub["var2"].notna()].itertuples(index=False):
                i, j = names.index(r.var1), names.index(r.var2)
                cor[i, j] = cor[j, i] = r.sdcor
            groups.append((grp, names, list(var["sdcor"]), cor))
        if residual:
            groups.append(("Residual", [""], [self.sigma], np.eye(1)))
        sds = [s for g in groups for s in g[2]]
        variances = rf.format_num([s * s for s in sds], 4)
        stddev = rf.format_num(sds, 4)
        rows = []
        for grp, names, _, _ in groups:
            rows += [[grp if i == 0 else "", n] for i, n in enumerate(names)]
        for row, v, sd in zip(rows, variances, stddev):
            row += [v, sd] if variance else [sd]
        heads = ["Groups", "Name", *(["Variance"] if variance else []), "Std.Dev."]
        maxlen = max(len(g[1]) for g in groups)
        if maxlen > 1:
            k = 0
            for _, names, _, cor in groups:
                n = len(names)
                cells = rf.format_num(rf.fround_all(cor.ravel().tolist(), 2), nsmall=2)
                for i in range(n):
                    rows[k + i] += [cells[i * n + j] if j < i else "" for j in range(maxlen - 1)]
                k += n
            heads += ["Corr"] + [""] * (maxlen - 2)
        return ["Random effects:", *rf.print_matrix(rows, [""] * len(rows), heads)]

    def _short_lines(self, title: list[str], family: list[str]) -> list[str]:
        """lme4's ``print(fit)`` (``print.merMod``): title, family, formula, the criterion
        to 4 decimals, standard deviations, groups, and the fixed effects as a named
        vector."""
        lines = [*title, *family, f"Formula: {self.formula}"]
        if getattr(self, "reml", False):
            lines.append("REML criterion at convergence: "
                         f"{_cat_num(rf.fround(self.objective, 4))}")
        else:
            vals = rf.fround_all([self.aic, self.bic, self.loglik, -2 * self.loglik,
                                  float(self.nobs - self.df)], 4)
            shown = rf.format_num(vals)
            shown[-1] = rf.format_num([vals[-1]])[0]
            lines += rf.print_named(shown, ["AIC", "BIC", "logLik", "deviance", "df.resid"])
        lines += self._random_effects_lines(residual=getattr(self, "scaled", True),
                                            variance=False)
        lines += self._nobs_lines()
        fe = self.fixef()
        if len(fe):
            lines += ["Fixed Effects:", *rf.print_named(
                rf.format_num(list(fe["estimate"]), 4), list(fe["term"]), gap=2)]
        else:
            lines.append("No fixed effect coefficients")
        msgs = self.convergence_messages()
        if msgs or not self.converged:
            code = 0 if self.converged else (self.optinfo.get("code") or -1)
            state = "(OK)" if code == 0 else f"({self.optinfo.get('message')})"
            lines.append(f"optimizer ({self.optinfo.get('optimizer')}) convergence code: "
                         f"{code} {state} ; 0 optimizer warnings; {len(msgs)} lme4 warnings ")
        return lines

    def _correlation_lines(self, names: list[str]) -> list[str]:
        """lme4's ``Correlation of Fixed Effects:`` (2 to 12 fixed effects): the lower
        triangle to 3 decimals, rows named by ``abbreviate(11)``, columns by
        ``abbreviate(6)``."""
        p = len(names)
        if p < 2 or p > 12:
            return []
        sd = self.se
        corr = np.asarray(self.vcov) / np.outer(sd, sd)
        cells = rf.format_num(rf.fround_all(corr.ravel().tolist(), 3), nsmall=3)
        rows = [[cells[i * p + j] if j < i else "" for j in range(p - 1)] for i in range(1, p)]
        return ["", "Correlation of Fixed Effects:",
                *rf.print_matrix(rows, rf.abbreviate(names, 11)[1:],
                                 rf.abbreviate(names, 6)[:-1])]

    def _tail_lines(self) -> list[str]:
        """lme4's convergence lines (``.prt.warn``): ``optimizer (NAME) convergence code: 0
        (OK)`` followed by the messages, when there are any: the singular-fit message, what
        the fit's own check of its optimum found (``optinfo.checks``) and lme4's
        identifiability warnings."""
        msgs = self.convergence_messages()
        if not msgs and self.converged:
            return []
        code = 0 if self.converged else (self.optinfo.get("code") or -1)
        state = "(OK)" if code == 0 else f"({self.optinfo.get('message')})"
        # lme4's cat(..., sep = "\n") ends with a newline of its own, then cat("\n")
        return [f"optimizer ({self.optinfo.get('optimizer')}) convergence code: {code} "
                f"{state}", *msgs, ""]

    def convergence_messages(self) -> list[str]:
        """The lines :meth:`_tail_lines` prints under the optimizer's: lme4's singular-fit
        message, then what failed in the check of the optimum, then lme4's warnings."""
        checks = self.optinfo.get("checks") or {}
        msgs = ["boundary (singular) fit: see help('isSingular')"] if self.singular else []
        msgs += list(checks.get("messages", [])) + list(checks.get("warnings", []))
        return msgs

    @property
    def certified(self) -> bool | None:
        """Whether the optimum passed the fit's own checks (``optinfo.checks``; None for a
        result saved before fits checked their optimum)."""
        checks = self.optinfo.get("checks")
        return None if checks is None else bool(checks.get("certified"))

    def __str__(self) -> str:
        """As R's ``print(fit)`` (the short form; :meth:`summary` is ``summary(fit)``)."""
        return self.print_text()

    def print_text(self) -> str:  # pragma: no cover - each model prints its own
        raise NotImplementedError

    def summary(self) -> str:  # pragma: no cover - each model prints its own
        raise NotImplementedError


def require_certified(result, allowed: bool, how_to_allow: str, written: str | None = None
                      ) -> None:
    """Raise :class:`~daskmm.errors.FitError` with one line when the fit's optimum failed its
    own checks (``result.certified is False``) and the user did not allow that
    (``how_to_allow``: the flag or job field that does). ``written``: where the results were
    written anyway, for inspection."""
    if allowed or getattr(result, "certified", None) is not False:
        return
    msgs = "; ".join(result.optinfo.get("checks", {}).get("messages", [])) or "see optinfo"
    where = (f"the results in {written} are marked so (summary.json \"certified\": false); "
             if written else "")
    raise FitError(f"the optimum failed the fit's own check: {msgs}; {where}look at the "
                   f"data's scaling or the model, or give {how_to_allow} to accept it")


def spec_terms(spec) -> tuple[list, dict]:
    """``(terms, factor_terms)`` of a model spec, for a result."""
    return list(spec.terms), {f.name: list(f.terms) for f in spec.factors}


def _cat_num(x: float) -> str:
    """A number as R's ``cat`` prints it (7 significant digits)."""
    return rf.format_num([x])[0]


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
