"""Likelihood-ratio comparison of nested LMMs, as lme4's ``anova(m0, m1)``, and the test that
a variance component is zero.

``anova`` refits REML fits by maximum likelihood first (lme4's ``refit = TRUE``), orders the
models by their number of parameters, and tests each against the one before it with
``Chisq = deviance_{i-1} - deviance_i`` on ``Df = npar_i - npar_{i-1}`` degrees of freedom.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from daskmm.errors import ModelError
from daskmm.models.lmm.criterion import objective, optimise


def ml_deviance(result) -> float:
    """-2 log-likelihood at the ML optimum: the fit's own for an ML fit (and for a GLMM,
    whose criterion is the Laplace or quadrature deviance); a refit from the fit's ``theta``
    on its statistics for a REML fit (lme4's ``refitML``)."""
    if not getattr(result, "reml", False):
        return float(result.objective)
    prob = getattr(result, "problem", None)
    if prob is None:
        raise ModelError("this REML result has no statistics attached (it was read from a "
                         "document); anova needs an ML refit: fit again, or fit with "
                         "reml=False")
    theta, _ = optimise(prob, reml=False, x0=np.asarray(result.theta, float))
    prof, _ = objective(prob, theta, False)
    return float(prof.objective)


def anova(*results, names: list[str] | None = None, refit: bool = True) -> pd.DataFrame:
    """lme4's ``anova(m0, m1, ...)`` table.

    Parameters
    ----------
    *results : LmmResult or GlmmResult
        Two or more fits to the same rows (the same ``nobs``), all LMMs or all GLMMs of one
        family.
    names : list of str, optional
        Row labels (default ``m0``, ``m1``, ... in the order given).
    refit : bool
        Refit REML fits by ML (lme4's default). With ``refit=False`` all fits must be REML
        fits with the same fixed effects, and their REML criteria are compared.

    Returns
    -------
    pandas.DataFrame
        Indexed by model, sorted by ``npar``: ``npar, AIC, BIC, logLik, deviance, Chisq, Df,
        Pr(>Chisq)`` (``deviance`` is -2 log-likelihood, as lme4 >= 1.1-32 prints it).
    """
    if len(results) < 2:
        raise ModelError(f"anova compares two or more fits; received {len(results)}")
    names = list(names) if names is not None else [f"m{i}" for i in range(len(results))]
    for nm, r in zip(names, results):
        crossed = getattr(r, "optinfo", {}).get("crossed") or {}
        if crossed.get("path") == "matrix-free":
            raise ModelError(f"anova compares criteria, and {nm}'s is a matrix-free estimate "
                             f"(standard error {crossed.get('criterion_se', float('nan')):.3g}"
                             "), not lme4's value: fit the models with crossed='sparse' or "
                             "'dense' to compare them")
    if len(names) != len(results):
        raise ModelError(f"{len(names)} names for {len(results)} fits; give one name per fit")
    nobs = {int(r.nobs) for r in results}
    if len(nobs) > 1:
        raise ModelError("the fits use different numbers of observations "
                         f"({', '.join(str(int(r.nobs)) for r in results)}); fit every model "
                         "to the same rows (drop rows with missing values in any model's "
                         "columns first)")
    if refit:
        devs = [ml_deviance(r) for r in results]
    else:
        if not all(getattr(r, "reml", False) for r in results) or len({tuple(r.fixef_names)
                                                     for r in results}) > 1:
            raise ModelError("refit=False compares REML criteria, which needs REML fits with "
                             "the same fixed effects; use refit=True")
        devs = [float(r.objective) for r in results]
    kinds = {(r.kind, getattr(r, "family", "gaussian")) for r in results}
    if len(kinds) > 1:
        raise ModelError("anova compares fits of one kind and family; received "
                         f"{', '.join(sorted(f'{k} ({f})' for k, f in kinds))}")
    n = nobs.pop()
    npar = [int(r.df) for r in results]
    order = sorted(range(len(results)), key=lambda i: npar[i])
    rows = []
    prev = None
    for i in order:
        d = devs[i]
        row = {"model": names[i], "npar": npar[i], "AIC": d + 2 * npar[i],
               "BIC": d + npar[i] * math.log(n), "logLik": -d / 2, "deviance": d,
               "Chisq": np.nan, "Df": np.nan, "Pr(>Chisq)": np.nan}
        if prev is not None:
            chisq = devs[prev] - d
            df = npar[i] - npar[prev]
            row["Chisq"] = chisq
            row["Df"] = df
            row["Pr(>Chisq)"] = float(stats.chi2.sf(chisq, df)) if df > 0 else np.nan
        rows.append(row)
        prev = i
    return pd.DataFrame(rows).set_index("model")


def variance_component_test(full, reduced) -> dict:
    """Likelihood-ratio test that the variance components in ``full`` but not in ``reduced``
    are zero, with the boundary-corrected null distribution: a 50:50 mixture of
    ``chi2(df - 1)`` and ``chi2(df)`` (Self & Liang 1987; Stram & Lee 1994), ``df`` the
    number of covariance parameters dropped (one variance: ``chi2(0)`` and ``chi2(1)``).

    REML fits with the same fixed effects are compared by their REML criteria (no refit);
    otherwise by ML deviances. Returns ``statistic, df, p_value, method``.
    """
    dk = len(full.theta) - len(reduced.theta)
    if dk < 1:
        raise ModelError("the full model must have more covariance parameters than the "
                         f"reduced one (received {len(full.theta)} and {len(reduced.theta)})")
    if int(full.nobs) != int(reduced.nobs):
        raise ModelError(f"the fits use different rows ({full.nobs} and {reduced.nobs} "
                         "observations)")
    same_fixed = tuple(full.fixef_names) == tuple(reduced.fixef_names)
    if full.reml and reduced.reml and same_fixed:
        stat, kind = float(reduced.objective - full.objective), "REML"
    else:
        stat, kind = float(ml_deviance(reduced) - ml_deviance(full)), "ML"
    stat = max(stat, 0.0)
    p = 0.5 * stats.chi2.sf(stat, dk) + (0.5 * stats.chi2.sf(stat, dk - 1) if dk > 1
                                         else (0.5 if stat <= 0 else 0.0))
    return {"statistic": stat, "df": dk, "p_value": float(p),
            "method": f"{kind} likelihood ratio, 50:50 mixture of chi2({dk - 1}) and "
                      f"chi2({dk})"}
