"""Variance decomposition of an LMM: Nakagawa's marginal and conditional R^2 and the ICC, as
``performance::r2_nakagawa`` and ``performance::icc`` (through ``insight::get_variance``).

With ``V_f`` the variance of the fixed-effect predictions ``X beta`` over the rows (``n - 1``
denominator), ``V_r`` the random-effect variance and ``V_e = sigma^2``::

    R2_marginal = V_f / (V_f + V_r + V_e)      R2_conditional = (V_f + V_r) / (V_f + V_r + V_e)
    ICC_adjusted = V_r / (V_r + V_e)            ICC_unadjusted = V_r / (V_f + V_r + V_e)

``V_r`` sums over grouping factors ``tr(Sigma Z'Z) / n`` with ``Z`` the covariance's columns
taken from the fixed-effect design (insight's definition: for ``(1 | g)`` it is the variance
itself; with random slopes it averages ``z' Sigma z`` over the rows). As insight 0.19 does,
only the **first** term of each grouping factor counts (``VarCorr(fit)[names(ranef(fit))]``):
in ``(1 | g) + (0 + x | g)`` the slope's variance is left out of ``V_r``. The ICC of a
grouping factor (``icc(by_group = TRUE)``) is its intercept variance over ``V_r + V_e``.
Every piece is in the fit's cross-products (``X'X`` and its intercept row), so no pass over
the rows is needed.
"""

from __future__ import annotations

import numpy as np

from daskmm.core.reterm import split_theta
from daskmm.errors import ModelError


def _xtx(result) -> np.ndarray:
    prob = getattr(result, "problem", None)
    if prob is None:
        raise ModelError("this result has no statistics attached (it was read from a "
                         "document); R2 and ICC need the fit's cross-products: fit again")
    if prob.spec.weights:
        raise ModelError(f"R2 and ICC with prior weights ({prob.spec.weights!r}) are not "
                         "defined as performance::r2_nakagawa computes them; fit without "
                         "weights")
    g, p = prob.layout.n_G, prob.layout.p
    return prob.G[g:g + p, g:g + p]


def variance_components(result) -> dict:
    """``fixed``, ``random`` (total), ``random_by_group`` and ``residual`` variances."""
    XtX = _xtx(result)
    names = list(result.fixef_names)
    if "(Intercept)" not in names:
        raise ModelError("R2 and ICC need the variance of the fixed-effect predictions, which "
                         "daskmm takes from the intercept's cross-products; the model has no "
                         "intercept")
    n = int(result.nobs)
    beta = np.asarray(result.beta, float)
    i0 = names.index("(Intercept)")
    total = float(XtX[i0] @ beta)  # sum over rows of X beta
    ss = float(beta @ XtX @ beta)
    v_fixed = (ss - total ** 2 / n) / (n - 1)
    by_group: dict[str, float] = {}
    intercepts: dict[str, float] = {}
    for t, grp, th in zip(result.terms, result.term_groups(), split_theta(result.terms,
                                                                        result.theta)):
        if grp != t.factor:  # a factor's later terms: not in insight's sum
            continue
        lam = t.Lambda(th)
        Sigma = result.sigma ** 2 * lam @ lam.T
        missing = [c for c in t.columns if c not in names]
        if missing:
            raise ModelError(f"random-effect column(s) {', '.join(missing)} of ({t.lhs} | "
                             f"{t.factor}) are not fixed-effect columns; insight's random "
                             "variance uses the fixed-effect design's columns: add them to "
                             "the fixed part")
        idx = [names.index(c) for c in t.columns]
        ZtZ = XtX[np.ix_(idx, idx)]
        by_group[grp] = float(np.trace(Sigma @ ZtZ)) / n
        if "(Intercept)" in t.columns:
            i = t.columns.index("(Intercept)")
            intercepts[grp] = float(Sigma[i, i])
    return {"fixed": v_fixed, "random": float(sum(by_group.values())),
            "random_by_group": by_group, "intercept_by_group": intercepts,
            "residual": float(result.sigma ** 2)}


def r2_nakagawa(result) -> dict:
    """``R2_marginal`` and ``R2_conditional`` (``performance::r2_nakagawa``)."""
    vc = variance_components(result)
    tot = vc["fixed"] + vc["random"] + vc["residual"]
    return {"R2_marginal": vc["fixed"] / tot,
            "R2_conditional": (vc["fixed"] + vc["random"]) / tot}


def icc(result) -> dict:
    """``ICC_adjusted``, ``ICC_unadjusted`` and, per grouping factor with a random
    intercept, its intercept variance over ``V_r + V_e`` (``performance::icc(by_group =
    TRUE)``, which warns that with random slopes this is not an ICC in the usual sense)."""
    vc = variance_components(result)
    vr, ve, vf = vc["random"], vc["residual"], vc["fixed"]
    return {"ICC_adjusted": vr / (vr + ve), "ICC_unadjusted": vr / (vf + vr + ve),
            "by_group": {g: v / (vr + ve) for g, v in vc["intercept_by_group"].items()}}
