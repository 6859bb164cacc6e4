"""The result of a GAM fit, read as mgcv users read ``summary.gam``: parametric coefficients,
approximate significance of smooth terms (edf, Ref.df, F or Chi.sq, p-value), R-sq.(adj),
deviance explained, the fREML score, the scale and n.

:func:`post_fit` turns the REML fit's small matrices into the result (mgcv's
``Sl.postproc`` and ``summary.gam``); predictions build the model matrix of new rows from the
frozen :class:`~daskmm.gam.spec.GamSpec`, partition by partition.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from daskmm.data.rows import DropCounts
from daskmm.kernels.smooth_test import re_test, test_stat

_STARS = ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, "."), (1.0, " "))


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

    kind = "gam"

    # ------------------------------------------------------------ tables
    @property
    def fixef_names(self) -> list[str]:
        return self.coef_names[:self.n_param]

    def fixef(self) -> pd.DataFrame:
        """``term, estimate, std_error, statistic`` (t or z) and ``p_value``, as
        ``summary.gam``'s parametric table."""
        b = self.coef[:self.n_param]
        se = np.sqrt(np.diag(self.Vp)[:self.n_param])
        t = b / se
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
                             "std_error": np.sqrt(np.diag(self.Vp)).tolist()},
            "optinfo": self.optinfo, "mode": self.mode, "timing": self.timing})

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    # ------------------------------------------------------------ printing
    def summary(self) -> str:
        """The fit printed as ``print(summary(fit))`` prints a ``gam``."""
        fam = {"gaussian": "gaussian", "binomial": "binomial", "poisson": "poisson",
               "gamma": "Gamma"}.get(self.family, self.family)
        lines = ["", f"Family: {fam} ", f"Link function: {self.link} ", "", "Formula:",
                 self.formula, ""]
        fe = self.fixef()
        if len(fe):
            stat = "t value" if self.scale_estimated else "z value"
            pcol = "Pr(>|t|)" if self.scale_estimated else "Pr(>|z|)"
            rows = [("", "Estimate", "Std. Error", stat, pcol, "")]
            for r in fe.itertuples(index=False):
                rows.append((r.term, _g(r.estimate), _g(r.std_error), _g(r.statistic, 3),
                             _pv(r.p_value), _star(r.p_value)))
            lines += ["Parametric coefficients:"] + _table(rows)
            lines.append("---")
            lines.append("Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1")
            lines.append("")
        if self.smooth_table:
            stat = "F" if self.scale_estimated else "Chi.sq"
            rows = [("", "edf", "Ref.df", stat, "p-value", "")]
            for s in self.smooth_table:
                rows.append((s["label"], f"{s['edf']:.3f}", f"{s['ref_df']:.3f}",
                             _g(s["statistic"], 3), _pv(s["p_value"]), _star(s["p_value"])))
            lines += ["Approximate significance of smooth terms:"] + _table(rows)
            lines.append("---")
            lines.append("Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1")
            lines.append("")
        lines.append(f"R-sq.(adj) = {_g(self.r_sq, 3)}   Deviance explained = "
                     f"{100 * self.dev_expl:.3g}%")
        crit = "fREML" if self.method == "fREML" else "-REML"
        lines.append(f"{crit} = {_g(self.score, 5)}  Scale est. = {_g(self.scale, 5)}"
                     f"    n = {self.nobs}")
        if self.dropped_line():
            lines.append(self.dropped_line())
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------ predictions
    def predict(self, newdata, type: str = "link", se_fit: bool = False):
        """Predictions at the rows of ``newdata`` (a pandas frame), as mgcv's
        ``predict(fit, newdata, type = "link" | "response" | "terms", se.fit =)``.

        Returns an ndarray (``link``, ``response``), a DataFrame with a column per smooth and
        parametric column (``terms``), or with ``se_fit`` a pair ``(fit, se)``.
        """
        from daskmm.gam.predict import predict_frame
        return predict_frame(self, newdata, type=type, se_fit=se_fit)

    def fitted(self, data):
        """Fitted values (response scale) of every row of ``data`` (the data fitted), in
        input order, NaN where the fit dropped a row."""
        from daskmm.gam.predict import fitted_frame
        return fitted_frame(self, data)

    def plot(self, out, data=None) -> list:
        """One PNG per smooth under directory ``out`` (``data``: for the rugs and ranges);
        returns the paths."""
        from daskmm.gam.plots import plot_smooths
        return plot_smooths(self, out, data)


def _g(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "NA"
    return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:.{digits}g}"


def _pv(p: float) -> str:
    return "<2e-16" if p < 2e-16 else f"{p:.3g}"


def _star(p: float) -> str:
    for cut, s in _STARS:
        if p <= cut:
            return s
    return " "


def _table(rows: list[tuple]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [str(r[0]).ljust(widths[0])] + [str(v).rjust(w) for v, w in
                                               zip(r[1:-1], widths[1:-1])] + [str(r[-1])]
        out.append(" ".join(cells).rstrip())
    return out


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


def post_fit(gspec, fit, st: dict, fam, link, method: str, iterations: int,
             formula: str) -> GamResult:
    """The result from the REML fit and the summed statistics (mgcv's ``Sl.postproc`` and
    ``summary.gam``)."""
    pt = fit.point
    beta, P = pt.beta, pt.P
    A, b, c = st["A"], st["b"], st["c"]
    n = st["n"]
    F = P @ A
    edf = np.diag(F).copy()
    edf1 = 2 * edf - np.einsum("ij,ji->i", F, F)
    scale_estimated = fam.name in ("gaussian", "gamma")
    rss = float(c - 2 * beta @ b + beta @ A @ beta)
    if scale_estimated:
        sig2 = pt.phi
        vscale = rss / (n - edf.sum())
    else:
        sig2 = vscale = 1.0
    Vp = P * vscale
    residual_df = n - float(edf.sum())
    R = _root(A)
    pen = gspec.penalties()
    lam = np.exp(pt.rho)
    slices = gspec.slices()
    sp_of = {}
    k = 0
    for i, s in enumerate(gspec.smooths):
        sp_of[i] = list(range(k, k + len(s.S)))
        k += len(s.S)
    Ve = F @ Vp
    table = []
    for i, (s, sl) in enumerate(zip(gspec.smooths, slices)):
        edf_i = float(edf[sl].sum())
        edf1_i = float(edf1[sl].sum())
        if s.S and s.null_space_dim == 0:
            others = [j for j, o in enumerate(gspec.smooths) if o.random and j != i]
            stat, pval, rank = _re_test(i, others, gspec, A, lam, sp_of, Vp, Ve, P, beta,
                                        sig2, scale_estimated, residual_df, slices)
        else:
            stat, pval, rank = test_stat(beta[sl], R[:, sl], Vp[sl, sl],
                                         min(sl.stop - sl.start, edf1_i),
                                         residual_df if scale_estimated else -1)
        table.append({"label": s.label, "edf": edf_i, "ref_df": rank,
                      "statistic": stat / rank if scale_estimated else stat,
                      "p_value": pval})
    fin = _final_sums(st, beta, fam)
    var1 = (fin["r2"] - fin["r1"] ** 2 / n) / (n - 1)
    ybar = fin["swy"] / fin["sw"]
    s0 = fin["ys"] - ybar * fin["sqw"]
    s00 = fin["yy"] - 2 * ybar * fin["swy"] + ybar ** 2 * fin["sw"]
    var0 = (s00 - s0 ** 2 / n) / (n - 1)
    r_sq = 1 - var1 * (n - 1) / (var0 * residual_df)
    dev_expl = (fin["null_dev"] - fin["dev"]) / fin["null_dev"]
    del pen
    return GamResult(
        formula=formula, family=fam.name, link=link.name, method=method, coef=beta,
        coef_names=gspec.coef_names(), Vp=Vp, edf=edf, sp=lam, score=float(pt.value),
        scale=float(sig2), scale_estimated=scale_estimated, n_param=gspec.n_param,
        smooth_table=table, nobs=int(n), r_sq=float(r_sq), dev_expl=float(dev_expl),
        deviance=float(fin["dev"]), null_deviance=float(fin["null_dev"]),
        residual_df=residual_df, n_dropped=DropCounts(st.get("dropped") or {}),
        optinfo={"reml_iterations": fit.iterations, "reml_converged": fit.converged,
                 "reml_message": fit.message, "pirls_iterations": iterations,
                 "gradient": np.asarray(pt.grad).tolist()},
        spec=gspec)


def _final_sums(st: dict, beta: np.ndarray, fam) -> dict:
    if "final" in st:
        return st["final"]
    A, b, c = st["A"], st["b"], st["c"]
    ybar = st["swz"] / st["sw"]
    r2 = float(c - 2 * beta @ b + beta @ A @ beta)
    return {"r1": float(st["ys"] - beta @ st["xs"]), "r2": r2, "ys": st["ys"], "yy": c,
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
