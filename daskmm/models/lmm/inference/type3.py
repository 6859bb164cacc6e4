"""Type III F tests of the fixed-effect terms, as lmerTest's ``anova(fit, type = 3)`` with
Satterthwaite's denominator degrees of freedom.

lmerTest builds each term's hypothesis from the treatment-coded design ``X`` and the "full"
design ``rdX`` (every level of every factor, ``model.matrix(~ 0 + term)`` per term): ``L =
t(ginv(X) rdX)``, then orthogonalises each term's columns against those of the terms that
contain it (higher order first), keeps the rows named as ``X``'s columns, and tests each
term's rows. ``rdX`` is a fixed linear map of ``X`` (both are functions of the same factor
levels and covariates), so the map is found on a small synthetic frame holding every
combination of the factors' levels, never on the data. With one term, lmerTest tests its
columns (type I); so do we.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from daskmm.errors import ModelError
from daskmm.kernels.kenward_roger import kr_f, least_squares, matrix_rank
from daskmm.models.lmm.inference.ddf import f_test


def zapsmall(x: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's ``zapsmall``: round to ``digits`` significant digits of the largest entry."""
    mx = float(np.max(np.abs(x))) if x.size else 0.0
    if mx <= 0:
        return np.round(x, digits)
    return np.round(x, max(0, digits - int(np.ceil(np.log10(mx)))))


def _synthetic(spec, terms: list[dict]) -> pd.DataFrame:
    cats = sorted({v for t in terms for v in t["variables"] if v in spec.categorical})
    nums = sorted({v for t in terms for v in t["numeric"]})
    combos = list(itertools.product(*[spec.categorical[c] for c in cats])) or [()]
    reps = len(nums) + 2
    rng = np.random.default_rng(0)
    rows = [dict(zip(cats, combo)) for combo in combos for _ in range(reps)]
    df = pd.DataFrame(rows, index=range(len(rows)))
    for c in nums:
        df[c] = rng.normal(size=len(df))
    for c in spec.used_columns:
        if c not in df.columns:
            df[c] = 1.0
    return df


def _full_design(spec, terms: list[dict], df: pd.DataFrame, intercept: bool
                 ) -> tuple[np.ndarray, list[str], dict[str, list[int]]]:
    cols, names, where = [], [], {}
    if intercept:
        cols.append(np.ones(len(df)))
        names.append("(Intercept)")
    for t in terms:
        where[t["label"]] = []
        parts = []
        for v in t["variables"]:
            if v in spec.categorical:
                parts.append([(f"{v}{lev}", (df[v].astype(str) == str(lev)).to_numpy(float))
                              for lev in spec.categorical[v]])
            else:
                parts.append([(v, df[v].to_numpy(float))])
        # R varies the first factor fastest
        for combo in itertools.product(*reversed(parts)):
            combo = combo[::-1]
            where[t["label"]].append(len(names))
            names.append(":".join(c[0] for c in combo))
            cols.append(np.prod([c[1] for c in combo], axis=0))
    return np.column_stack(cols), names, where


def _contains(a: dict, b: dict) -> bool:
    """lmerTest's ``term_contain``: ``b`` contains ``a``."""
    va, vb = set(a["variables"]), set(b["variables"])
    return va < vb and set(a["numeric"]) == set(b["numeric"])


def type3_contrasts(spec, fixef_names: list[str]) -> dict[str, np.ndarray]:
    """Term label -> its contrast matrix (rows: hypotheses, columns: ``fixef_names``)."""
    terms = spec.fixed_terms()
    names = list(spec.fixef_names)
    if names != list(fixef_names):
        raise ModelError("type III tests need every fixed-effect column estimable; this fit "
                         f"dropped {sorted(set(names) - set(fixef_names))} as aliased")
    p = len(names)
    if p <= 1 or len(terms) <= 1:
        out = {}
        for t in terms:
            L = np.zeros((len(t["columns"]), p))
            L[np.arange(len(t["columns"])), t["columns"]] = 1.0
            out[t["label"]] = L
        return out
    df = _synthetic(spec, terms)
    X = spec.fixed_matrix(df)
    if matrix_rank(X) < p:
        raise ModelError("type III contrasts: the fixed-effect design is not of full rank on "
                         "the factor levels' combinations")
    rdX, rd_names, _ = _full_design(spec, terms, df, "(Intercept)" in names)
    M = least_squares(X, rdX)
    if np.max(np.abs(X @ M - rdX)) > 1e-8 * max(1.0, np.max(np.abs(rdX))):
        raise ModelError("type III contrasts: a full-dummy column is not in the span of the "
                         "fitted design (a term without its margins); not supported")
    L = zapsmall(M.T)  # rows: rdX columns; columns: X columns
    order = sorted(terms, key=lambda t: -len(t["variables"]))
    for t in order:
        cont = [u for u in terms if _contains(t, u)]
        if not cont:
            continue
        A = L[:, [c for u in cont for c in u["columns"]]]
        Y = L[:, t["columns"]]
        coef = least_squares(A, Y)
        L[:, t["columns"]] = zapsmall(Y - A @ coef)
    index = {n: i for i, n in enumerate(rd_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ModelError(f"type III contrasts: no full-design column named {missing[0]!r}; "
                         "not supported for this model's coding")
    L = L[[index[n] for n in names], :]
    out = {}
    for t in terms:
        Lt = L[:, t["columns"]].T
        out[t["label"]] = Lt[np.abs(Lt).sum(axis=1) > 1e-8]
    return out


def anova_type3(result, ddf: str = "satterthwaite") -> pd.DataFrame:
    """lmerTest's type III table: ``Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F)`` per
    term (``Sum Sq`` and ``Mean Sq`` on the residual variance's scale, as lmerTest).

    ``ddf="kenward-roger"`` tests each term with pbkrtest's Kenward-Roger F (scaled), as
    lmerTest's ``anova(fit, ddf = "Kenward-Roger")``; otherwise Satterthwaite's."""
    beta = np.asarray(result.beta)
    if ddf == "kenward-roger":
        parts = result.kenward_roger_info()
        vcov = np.asarray(result.vcov)

        def test(L):
            k = kr_f(L, beta, vcov, parts)
            return {"F": k["F"], "ndf": k["ndf"], "ddf": k["ddf"], "p_value": k["p_value"],
                    "F_unscaled": k["F_unscaled"]}
    else:
        info = result.satterthwaite_info()

        def test(L):
            return f_test(L, beta, info)
    rows = []
    for label, L in type3_contrasts(result.problem.spec, result.fixef_names).items():
        t = test(L)
        # lmerTest: Sum Sq from the unscaled F (KR scales only the F value)
        ms = t.get("F_unscaled", t["F"]) * result.sigma ** 2
        rows.append({"term": label, "Sum Sq": ms * t["ndf"], "Mean Sq": ms,
                     "NumDF": t["ndf"], "DenDF": t["ddf"], "F value": t["F"],
                     "Pr(>F)": t["p_value"]})
    return pd.DataFrame(rows, columns=["term", "Sum Sq", "Mean Sq", "NumDF", "DenDF",
                                       "F value", "Pr(>F)"]).set_index("term")
