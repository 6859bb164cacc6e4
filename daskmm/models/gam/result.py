"""The result of a GAM fit, read as mgcv users read ``summary.gam``: parametric coefficients,
approximate significance of smooth terms (edf, Ref.df, F or Chi.sq, p-value), R-sq.(adj),
deviance explained, the fREML score, the scale and n.

:func:`post_fit` turns the REML fit's small matrices into the result (mgcv's
``Sl.postproc`` and ``summary.gam``); predictions build the model matrix of new rows from the
frozen :class:`~daskmm.models.gam.spec.GamSpec`, partition by partition.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from daskmm.core.certify import DECREASE_TOL, Checks, certify
from daskmm.data.rows import DropCounts
from daskmm.kernels import freml_blocked as fb
from daskmm.kernels.smooth_test import re_test, test_stat
from daskmm.models.gam.plots import plot_smooths
from daskmm.models.gam.predict import (
    GamPredictor,
    fitted_frame,
    predict_frame,
    residual_frame,
)
from daskmm.results import rformat as rf


@dataclass
class GamResult:
    """A fitted GAM.

    Attributes
    ----------
    formula, family, link, method : str
    coef : ndarray
        All coefficients in mgcv's order (parametric, then each smooth's).
    coef_names : list of str
    Vp : ndarray
        Bayesian posterior covariance of the coefficients (``Vp``).
    edf : ndarray
        Effective degrees of freedom per coefficient.
    sp : ndarray
        Smoothing parameters in mgcv's order.
    score : float
        The REML (fREML) score minimised.
    scale : float
        Scale estimate (mgcv's ``sig2``); 1 for the binomial and Poisson.
    smooth_table : list of dict
        ``label, edf, ref_df, statistic, p_value`` per smooth.
    """

    formula: str
    family: str
    link: str
    method: str
    coef: np.ndarray
    coef_names: list[str]
    Vp: np.ndarray
    edf: np.ndarray
    sp: np.ndarray
    score: float
    scale: float
    scale_estimated: bool
    n_param: int
    smooth_table: list[dict]
    nobs: int
    r_sq: float
    dev_expl: float
    deviance: float
    null_deviance: float
    residual_df: float
    n_dropped: DropCounts = field(default_factory=DropCounts)
    ingest_dropped: dict = field(default_factory=dict)
    optinfo: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    mode: str = "in-process"
    spec: object = field(default=None, repr=False)
    warnings: list = field(default_factory=list)
    level_cov: object = field(default=None, repr=False)
    theta: float | None = None

    kind = "gam"

    @property
    def certified(self) -> bool | None:
        """Whether the REML optimum passed the fit's own check (``optinfo["checks"]``; None
        for a result saved before fits checked their optimum)."""
        checks = self.optinfo.get("checks")
        return None if checks is None else bool(checks.get("certified"))

    # ------------------------------------------------------------ tables
    @property
    def fixef_names(self) -> list[str]:
        return self.coef_names[:self.n_param]

    def fixef(self) -> pd.DataFrame:
        """``term, estimate, std_error, statistic`` (t or z) and ``p_value``, as
        ``summary.gam``'s parametric table."""
        b = self.coef[:self.n_param]
        se = np.sqrt(np.diag(self.Vp)[:self.n_param])
        # a coefficient fixed at 0 (aliased: mgcv prints 0, 0, NaN, NaN) has no t
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(se > 0, b / np.where(se > 0, se, 1.0), np.nan)
        p = (2 * stats.t.sf(np.abs(t), self.residual_df) if self.scale_estimated
             else 2 * stats.norm.sf(np.abs(t)))
        return pd.DataFrame({"term": self.fixef_names, "estimate": b, "std_error": se,
                             "statistic": t, "p_value": p})

    def smooths(self) -> pd.DataFrame:
        """``label, edf, ref_df, statistic, p_value`` per smooth (``statistic``: F when the
        scale is estimated, else Chi.sq)."""
        return pd.DataFrame(self.smooth_table,
                            columns=["label", "edf", "ref_df", "statistic", "p_value"])

    def ranef_frame(self) -> pd.DataFrame:
        return pd.DataFrame(columns=["group", "level", "term", "estimate", "std_error"])

    # ------------------------------------------------------------ rows
    def rows_report(self) -> dict:
        fit = DropCounts(self.n_dropped or {})
        ing = DropCounts(self.ingest_dropped or {})
        return {"used": int(self.nobs), "dropped": fit.total + ing.total,
                "read": int(self.nobs) + fit.total, "dropped_missing": dict(fit),
                "dropped_at_ingest": dict(ing)}

    def dropped_line(self) -> str | None:
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

    # ------------------------------------------------------------ documents
    def to_dict(self) -> dict:
        return _clean({
            "model": {"kind": "gam"}, "formula": self.formula, "family": self.family,
            "link": self.link, "method": self.method, "nobs": self.nobs,
            "rows": self.rows_report(), "score": self.score, "scale": self.scale,
            "scale_estimated": self.scale_estimated, "sp": self.sp.tolist(),
            "smooths": self.smooth_table, "edf_total": float(self.edf.sum()),
            "residual_df": self.residual_df, "r_sq": self.r_sq, "dev_expl": self.dev_expl,
            "deviance": self.deviance, "null_deviance": self.null_deviance,
            "fixef": [dict(r._asdict()) for r in self.fixef().itertuples(index=False)],
            "coefficients": {"names": self.coef_names, "estimate": self.coef.tolist(),
                             "std_error": self.std_errors().tolist()},
            "theta": self.theta,
            "random": self.varcomp().to_dict("records"), "warnings": list(self.warnings),
            "optinfo": self.optinfo, "mode": self.mode, "timing": self.timing})

    def std_errors(self) -> np.ndarray:
        """Standard error of every coefficient (``sqrt(diag(Vp))``; for ``re`` terms kept per
        level, from each level's block of ``Vp``)."""
        se = np.sqrt(np.diag(self.Vp))
        if self.level_cov is None or len(se) == len(self.coef):
            return se
        vscale, Minv, W = self.level_cov
        P = self.Vp / vscale
        var = vscale * (np.diagonal(Minv, axis1=1, axis2=2)
                        + np.einsum("lti,ij,ltj->lt", W, P, W))
        return np.concatenate([se, np.sqrt(var.T.ravel())])

    def varcomp(self) -> pd.DataFrame:
        """Variance components of the random-effect terms (``re`` smooths and lme4 bars), as
        mgcv's ``gam.vcomp``: ``term, group, variance, sd``, the variance ``scale / (sp s)``
        for the penalty ``sp s I``."""
        rows = []
        if self.spec is not None:
            k = 0
            for sm in self.spec.smooths:
                nsp = 1 if sm.blocked else len(sm.S)
                if sm.random and nsp == 1:
                    s = sm.blocked_scale if sm.blocked else float(sm.S[0][0, 0])
                    var = self.scale / (self.sp[k] * s)
                    rows.append({"term": sm.label, "group": sm.margins[0].factor,
                                 "variance": float(var), "sd": float(math.sqrt(var))})
                k += nsp
        return pd.DataFrame(rows, columns=["term", "group", "variance", "sd"])

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    # ------------------------------------------------------------ printing
    def _family_name(self) -> str:
        fam = {"gaussian": "gaussian", "binomial": "binomial", "poisson": "poisson",
               "gamma": "Gamma"}.get(self.family, self.family)
        if self.theta is not None:  # mgcv's nb(): "Negative Binomial(3.053)"
            fam = f"Negative Binomial({f'{self.theta:.3f}'.rstrip('0').rstrip('.')})"
        return fam

    def summary(self) -> str:
        """The fit printed as ``print(summary(fit))`` prints a ``gam``."""
        fam = self._family_name()
        lines = ["", f"Family: {fam} ", f"Link function: {self.link} ", "", "Formula:",
                 _r_formula(self.formula), ""]
        fe = self.fixef()
        if len(fe):
            stat = "t value" if self.scale_estimated else "z value"
            pcol = "Pr(>|t|)" if self.scale_estimated else "Pr(>|z|)"
            x = [[r.estimate, r.std_error, r.statistic, r.p_value]
                 for r in fe.itertuples(index=False)]
            lines += ["Parametric coefficients:",
                      *rf.print_coefmat(x, list(fe["term"]),
                                        ["Estimate", "Std. Error", stat, pcol], digits=4)]
        lines.append("")
        if self.smooth_table:
            stat = "F" if self.scale_estimated else "Chi.sq"
            x = [[s["edf"], s["ref_df"], s["statistic"], s["p_value"]]
                 for s in self.smooth_table]
            lines += ["Approximate significance of smooth terms:",
                      *rf.print_coefmat(x, [s["label"] for s in self.smooth_table],
                                        ["edf", "Ref.df", stat, "p-value"], digits=4,
                                        cs_ind=[0], has_pvalue=True)]
        lines.append("")
        lines.append(f"R-sq.(adj) =  {rf.format_c(self.r_sq, 3, 5)}   Deviance explained = "
                     f"{rf.format_c(100 * self.dev_expl, 3, 4)}%")
        crit = {"fREML": "fREML", "REML": "-REML", "ML": "-ML"}.get(self.method, self.method)
        lines.append(f"{crit} = {rf.format_c(self.score, 5)}  Scale est. = "
                     f"{rf.format_c(self.scale, 5, 8, '-')}  n = {self.nobs}")
        if self.dropped_line():
            lines.append(self.dropped_line())
        for w in self.warnings:
            lines.append(f"Note: {w}")
        if self.certified is False:
            msgs = "; ".join(self.optinfo["checks"].get("messages", []))
            lines.append(f"Note: the REML optimum failed the fit's own check: {msgs}")
        return "\n".join(lines) + "\n"

    def print_text(self) -> str:
        """The fit as mgcv's ``print(fit)`` prints it (``print.gam``): family, formula, each
        smooth's edf, the total, and the score."""
        fam = self._family_name()
        lines = ["", f"Family: {fam} ", f"Link function: {self.link} ", "", "Formula:",
                 _r_formula(self.formula)]
        edf = [s["edf"] for s in self.smooth_table]
        total = _cat_num(rf.fround(float(np.sum(self.edf)), 2))
        if not edf:
            lines.append(f"Total model degrees of freedom {_cat_num(float(np.sum(self.edf)))} ")
        else:
            lines += ["", "Estimated degrees of freedom:"]
            shown = rf.format_num(rf.fround_all(edf, 4), 3)
            cur = ""
            for i, e in enumerate(shown, 1):
                cur += e + " "
                if i % 7 == 0:
                    lines.append(cur)
                    cur = ""
            lines.append(f"{cur} total = {total} ")
        lines += ["", f"{self.method} score: {_cat_num(self.score)}     "]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        """As mgcv's ``print(fit)``; :meth:`summary` is ``summary(fit)``."""
        return self.print_text()

    # ------------------------------------------------------------ predictions
    def predict(self, newdata, type: str = "link", se_fit: bool = False,
                allow_new_levels: bool = False):
        """Predictions at the rows of ``newdata`` (a pandas frame), as mgcv's
        ``predict(fit, newdata, type = "link" | "response" | "terms", se.fit =)``. A level
        of an ``re`` smooth's factor the fit did not see is refused, as ``predict.gam``
        stops, unless ``allow_new_levels`` (that term 0: the population level).

        Returns an ndarray (``link``, ``response``), a DataFrame with a column per smooth and
        parametric column (``terms``), or with ``se_fit`` a pair ``(fit, se)``.
        """
        return predict_frame(self, newdata, type=type, se_fit=se_fit,
                             allow_new_levels=allow_new_levels)

    @property
    def predictor(self):
        """The :class:`~daskmm.models.gam.predict.GamPredictor` a fit folder's ``model.pkl``
        holds (None for a result read back from its document)."""
        return None if self.spec is None else GamPredictor.of(self)

    def fitted(self, data):
        """Fitted values (response scale) of every row of ``data`` (the data fitted), in
        input order, NaN where the fit dropped a row."""
        return fitted_frame(self, data)

    def residuals(self, data, type: str = "deviance"):
        """mgcv's ``residuals(fit, type = "deviance" | "pearson" | "working" |
        "response")`` of every row of ``data`` (the data fitted), in input order, NaN where
        the fit dropped a row (a frame with column ``residual``)."""
        return residual_frame(self, data, type)

    def plot(self, out, data=None, residuals: bool = False) -> list:
        """One PNG per smooth under directory ``out`` (``data``: for the rugs and ranges);
        ``residuals``: the partial residuals on each 1-d smooth, as ``plot.gam(fit,
        residuals = TRUE)`` (needs ``data``). Returns the paths."""
        return plot_smooths(self, out, data, residuals=residuals)


def _cat_num(x: float) -> str:
    """A number as R's ``cat`` prints it (7 significant digits)."""
    return rf.format_num([x])[0]


def _r_formula(formula: str) -> str:
    """The formula as R prints it: strings in double quotes."""
    return re.sub(r"'([^'\"]*)'", r'"\1"', formula)












def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ---------------------------------------------------------------- post-processing
def _root(A: np.ndarray) -> np.ndarray:
    """An ``R`` with ``R'R = A`` (``A`` positive semi-definite)."""
    try:
        return np.linalg.cholesky(A).T
    except np.linalg.LinAlgError:
        ev, U = np.linalg.eigh((A + A.T) / 2)
        ev[ev < 0] = 0
        return (U * np.sqrt(ev)).T


def _pinv_psd(M: np.ndarray) -> np.ndarray:
    ev, U = np.linalg.eigh((M + M.T) / 2)
    ind = ev > ev.max() * np.finfo(float).eps ** 0.8
    inv = np.zeros_like(ev)
    inv[ind] = 1 / ev[ind]
    return (U * inv) @ U.T


DENSE_POST_COEFS = 3000
"""Blocked ``re`` terms with at most this many coefficients are written out as dense columns
after the fit, so the result is exactly a dense fit's (mgcv's coefficient order, ``Vp``,
``reTest``); above it the result keeps the per-level block (no ``reTest``)."""


def post_fit(gspec, fit, coef: np.ndarray, st: dict, fam, link, method: str, iterations: int,
             formula: str) -> GamResult:
    """The result from the REML fit and the summed statistics (mgcv's ``Sl.postproc`` and
    ``summary.gam``). ``coef``: the coefficients in the fit's layout."""
    if gspec.blocked:
        bst = fb.BlockedStats.from_sums(st, gspec.blocked_scales())
        if bst.L * bst.q > DENSE_POST_COEFS:
            return _post_blocked(gspec, fit, coef, st, bst, fam, link, method, iterations,
                                 formula)
        # write the level block out as dense columns, in mgcv's (formula) order
        A, b = fb.dense_cross_products(bst)
        P = fb.dense_inverse(fit.point)
        dense = _dense_spec(gspec)
        perm = _fit_positions(gspec, dense)
        st = dict(st, A=A[np.ix_(perm, perm)], b=b[perm],
                  xs=np.concatenate([st["xs"], st["zs"].T.ravel()])[perm])
        return _post_dense(dense, fit, coef[perm], P[np.ix_(perm, perm)],
                           np.exp(fit.point.rho)[gspec.sp_order()], st, fam, link, method,
                           iterations, formula)
    return _post_dense(gspec, fit, coef, fit.point.P, np.exp(fit.point.rho), st, fam, link,
                       method, iterations, formula)


def _dense_spec(gspec):
    """``gspec`` with its blocked terms as ordinary dense ``re`` smooths."""
    from dataclasses import replace
    smooths = [replace(s, S=[s.blocked_scale * np.eye(s.p)], blocked_scale=None)
               if s.blocked else s for s in gspec.smooths]
    return replace(gspec, smooths=smooths)


def _fit_positions(gspec, dense) -> np.ndarray:
    """For each coefficient of ``dense`` (mgcv's order), its position in ``gspec``'s layout."""
    perm = np.arange(gspec.p)
    for a, b in zip(dense.slices(), gspec.slices()):
        perm[a] = np.arange(b.start, b.stop)
    return perm


def _smooth_index(gspec) -> dict:
    sp_of, k = {}, 0
    for i, s in enumerate(gspec.smooths):
        n = 1 if s.blocked else len(s.S)
        sp_of[i] = list(range(k, k + n))
        k += n
    return sp_of


def _r2_dev(st: dict, beta: np.ndarray, fam, n: float, residual_df: float,
            level_part: float = 0.0, rss: float | None = None) -> tuple[dict, float, float]:
    fin = _final_sums(st, beta, fam, level_part, rss)
    var1 = (fin["r2"] - fin["r1"] ** 2 / n) / (n - 1)
    ybar = fin["swy"] / fin["sw"]
    s0 = fin["ys"] - ybar * fin["sqw"]
    s00 = fin["yy"] - 2 * ybar * fin["swy"] + ybar ** 2 * fin["sw"]
    var0 = (s00 - s0 ** 2 / n) / (n - 1)
    r_sq = 1 - var1 * (n - 1) / (var0 * residual_df)
    dev_expl = (fin["null_dev"] - fin["dev"]) / fin["null_dev"]
    return fin, float(r_sq), float(dev_expl)


def _post_dense(gspec, fit, beta, P, lam, st, fam, link, method, iterations, formula):
    pt = fit.point
    A, b, c = st["A"], st["b"], st["c"]
    n = st["n"]
    F = P @ A
    edf = np.diag(F).copy()
    edf1 = 2 * edf - np.einsum("ij,ji->i", F, F)
    scale_estimated = fam.name in ("gaussian", "gamma")
    rss = float(c - 2 * beta @ b + beta @ A @ beta)
    if scale_estimated:
        vscale = rss / (n - edf.sum())
        sig2 = vscale if method == "ML" else pt.phi  # mgcv reports the Pearson-type scale
    else:
        sig2 = vscale = 1.0
    Vp = P * vscale
    residual_df = n - float(edf.sum())
    R = _root(A)
    # bam marks an nb() fit's scale (1) as estimated: its summary tests by F and t
    f_tests = scale_estimated or fam.name == "negative_binomial"
    slices = gspec.slices()
    sp_of = _smooth_index(gspec)
    Ve = F @ Vp
    table = []
    for i, (s, sl) in enumerate(zip(gspec.smooths, slices)):
        if s.call.bar:  # gamm4: lme4 bars are variance components, not smooth terms
            continue
        edf_i = float(edf[sl].sum())
        edf1_i = float(edf1[sl].sum())
        if s.S and s.null_space_dim == 0:
            others = [j for j, o in enumerate(gspec.smooths) if o.random and j != i]
            stat, pval, rank = _re_test(i, others, gspec, A, lam, sp_of, Vp, Ve, P, beta,
                                        sig2, f_tests, residual_df, slices)
        else:
            stat, pval, rank = test_stat(beta[sl], R[:, sl], Vp[sl, sl],
                                         min(sl.stop - sl.start, edf1_i),
                                         residual_df if f_tests else -1)
        table.append({"label": s.label, "edf": edf_i, "ref_df": rank,
                      "statistic": stat / rank if f_tests else stat,
                      "p_value": pval})
    fin, r_sq, dev_expl = _r2_dev(st, beta, fam, n, residual_df)
    return GamResult(
        formula=formula, family=fam.name, link=link.name, method=method, coef=beta,
        coef_names=gspec.coef_names(), Vp=Vp, edf=edf, sp=lam, score=float(pt.value),
        scale=float(sig2), scale_estimated=f_tests, n_param=gspec.n_param,
        smooth_table=table, nobs=int(n), r_sq=r_sq, dev_expl=dev_expl,
        deviance=float(fin["dev"]), null_deviance=float(fin["null_dev"]),
        residual_df=residual_df, n_dropped=DropCounts(st.get("dropped") or {}),
        optinfo=_optinfo(fit, iterations), spec=gspec, warnings=list(gspec.notes))


def _optinfo(fit, iterations: int) -> dict:
    return {"reml_iterations": fit.iterations, "reml_converged": fit.converged,
            "reml_message": fit.message, "pirls_iterations": iterations,
            "gradient": np.asarray(fit.point.grad).tolist(), "checks": _checks(fit)}


def _checks(fit) -> dict:
    """The fit's own check of its REML optimum over the log smoothing parameters
    (:func:`daskmm.core.certify.certify` on the gradient and Hessian fREML's Newton ends
    with): a smoothing parameter whose gradient and curvature are both flat is at its limit
    (0 or infinite: mgcv leaves it out of the step too) and recorded as on a bound; the
    others must give a positive definite Hessian and a Newton decrease below 1e-8 of the score
    (fREML converges relative to the score, mgcv's ``conv.tol = eps^0.5``: a smoothing
    parameter heading for infinity along a nearly flat direction promises ~1e-8 of it) or
    :data:`~daskmm.core.certify.DECREASE_TOL`, whichever is larger."""
    pt = fit.point
    g = np.asarray(pt.grad, dtype=float)
    H = np.asarray(pt.hess, dtype=float)
    rho = np.asarray(pt.rho, dtype=float)
    names = [f"log(sp{i + 1})" for i in range(len(rho))]
    if len(rho) == 0:
        return Checks().to_dict()
    tol = (abs(pt.value) + 1.0) * np.finfo(float).eps ** 0.5 * 0.1
    active = (np.abs(g) > tol) | (np.abs(np.diag(H)) > tol)
    idx = np.flatnonzero(active)
    checks = certify(lambda x: pt.value, rho[idx], np.full(len(idx), -np.inf), pt.value,
                     g[idx], H[np.ix_(idx, idx)], [names[i] for i in idx],
                     decrease_tol=max(DECREASE_TOL, 1e-8 * (abs(pt.value) + 1.0)))
    checks.boundary = [{"index": int(i), "name": names[i], "value": float(rho[i]),
                        "steps": []} for i in np.flatnonzero(~active)]
    return checks.to_dict()


def _post_blocked(gspec, fit, coef, st, bst, fam, link, method, iterations, formula):
    """The result of a fit whose ``re`` terms stay per level: ``edf`` and the tests of the
    dense smooths from the blocked factor; ``Vp`` of the dense coefficients only (the level
    block's variances are kept per level, for predictions)."""
    pt = fit.point
    pen = gspec.penalties()
    post = fb.post(bst, pen, pt)
    n = st["n"]
    pd = gspec.p_dense
    edf = np.concatenate([post.edf_d, post.edf_z.T.ravel()])
    scale_estimated = fam.name in ("gaussian", "gamma")
    if scale_estimated:
        vscale = post.rss / (n - edf.sum())
        sig2 = vscale if method == "ML" else pt.phi
    else:
        sig2 = vscale = 1.0
    Vp = pt.P * vscale
    residual_df = n - float(edf.sum())
    A = st["A"]
    f_tests = scale_estimated or fam.name == "negative_binomial"
    table, warns = [], []
    for s, sl in zip(gspec.smooths, gspec.slices()):
        if s.call.bar:
            continue
        if s.blocked:
            t = gspec.blocked.index(gspec.smooths.index(s))
            table.append({"label": s.label, "edf": float(post.edf_z[:, t].sum()),
                          "ref_df": None, "statistic": None, "p_value": None})
            warns.append(f"{s.label}: the random-effect test (mgcv's reTest) is not computed "
                         f"for a term of {s.p} levels, kept per level (it needs a dense "
                         f"{s.p} x {s.p} eigendecomposition); its edf is exact")
            continue
        edf1_i = float(post.edf1_d[sl].sum())
        stat, pval, rank = test_stat(coef[sl], _root(A[sl, sl]), Vp[sl, sl],
                                     min(sl.stop - sl.start, edf1_i),
                                     residual_df if f_tests else -1)
        table.append({"label": s.label, "edf": float(post.edf_d[sl].sum()), "ref_df": rank,
                      "statistic": stat / rank if f_tests else stat,
                      "p_value": pval})
    level_part = float(np.sum(st["zs"] * pt.b_re))
    fin, r_sq, dev_expl = _r2_dev(st, coef[:pd], fam, n, residual_df, level_part, post.rss)
    res = GamResult(
        formula=formula, family=fam.name, link=link.name, method=method, coef=coef,
        coef_names=gspec.coef_names(), Vp=Vp, edf=edf,
        sp=np.exp(pt.rho)[gspec.sp_order()], score=float(pt.value),
        scale=float(sig2), scale_estimated=f_tests, n_param=gspec.n_param,
        smooth_table=table, nobs=int(n), r_sq=r_sq, dev_expl=dev_expl,
        deviance=float(fin["dev"]), null_deviance=float(fin["null_dev"]),
        residual_df=residual_df, n_dropped=DropCounts(st.get("dropped") or {}),
        optinfo=_optinfo(fit, iterations), spec=gspec)
    res.warnings = list(gspec.notes) + warns
    res.level_cov = (vscale, pt.Minv, pt.W)
    return res


def _final_sums(st: dict, beta: np.ndarray, fam, level_part: float = 0.0,
                rss: float | None = None) -> dict:
    """``level_part``: the blocked terms' ``sum sqrt(w) Z b``; ``rss`` when ``beta`` is only
    the dense part of the coefficients."""
    if "final" in st:
        return st["final"]
    if "raw" in st:  # AR1: the summaries are of the untransformed data
        st = st["raw"]
    A, b, c = st["A"], st["b"], st["c"]
    ybar = st["swz"] / st["sw"]
    r2 = float(c - 2 * beta @ b + beta @ A @ beta) if rss is None else rss
    return {"r1": float(st["ys"] - beta @ st["xs"] - level_part), "r2": r2, "ys": st["ys"], "yy": c,
            "sqw": st["sqw"], "sw": st["sw"], "swy": st["swz"], "dev": r2,
            "null_dev": float(c - 2 * ybar * st["swz"] + ybar ** 2 * st["sw"])}


def _re_test(i, others, gspec, A, lam, sp_of, Vp, Ve, P, beta, sig2, scale_estimated,
             residual_df, slices):
    sl = slices[i]
    b_m = beta[sl]
    p = len(beta)
    if not others:
        Sch = np.linalg.inv(P[sl, sl])
        Ve_m = (Ve + Ve.T)[sl, sl] / 2
        return re_test(b_m, Ve_m, Sch, sig2, scale_estimated, residual_df)
    rind = np.zeros(p, dtype=bool)
    for j in others:
        rind[slices[j]] = True
    S1 = np.zeros((p, p))
    S2 = np.zeros((p, p))
    for j, s in enumerate(gspec.smooths):
        for kk, Sk in zip(sp_of[j], s.S):
            tgt = S2 if rind[slices[j].start] else S1
            tgt[slices[j], slices[j]] += lam[kk] * Sk
    S2inv = np.zeros((p, p))
    S2inv[np.ix_(rind, rind)] = _pinv_psd(S2[np.ix_(rind, rind)])
    M = A + A @ S2inv @ A  # R'L'LR, L = chol(I + R2 S2^-1 R2')
    Ve_r = Vp @ M @ Vp / sig2
    keep = ~rind
    H1 = M[np.ix_(keep, keep)] + S1[np.ix_(keep, keep)]
    pos = np.flatnonzero(keep)
    mi = np.flatnonzero((pos >= sl.start) & (pos < sl.stop))
    oi = np.setdiff1d(np.arange(len(pos)), mi)
    Sch = H1[np.ix_(mi, mi)] - H1[np.ix_(mi, oi)] @ np.linalg.solve(
        H1[np.ix_(oi, oi)], H1[np.ix_(oi, mi)])
    Ve_m = (Ve_r + Ve_r.T)[sl, sl] / 2
    return re_test(b_m, Ve_m, Sch, sig2, scale_estimated, residual_df)
