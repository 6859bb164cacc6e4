"""What every mixed model shares before and after its optimiser: frozen levels and
encodings, the coefficient layout (primary, nested and global factors), ``Lambda(theta)`` per
factor, and the random-effect tables from the blocked factor.

Models import these public names; no model imports another model's private helpers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from daskmm.data.manifest import Manifest
from daskmm.distributed.passes import metadata_pass
from daskmm.errors import DataError, ModelError
from daskmm.formula.levels import level_label, sorted_levels
from daskmm.formula.parse import ParsedFormula, identifiers
from daskmm.formula.spec import FactorSpec, ModelSpec
from daskmm.formula.transforms import Rewriter
from daskmm.kernels.pls import global_modes
from daskmm.kernels.stats import Layout
from daskmm.results.base import RanefTable

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client


def frozen_levels(client: Client, ddf: dd.DataFrame, used: list[str], cat_cols: list[str],
                  factor_names: list[str], group_cols: list[str],
                  manifest: Manifest | None = None, hold: bool = False,
                  rewriter: Rewriter | None = None, declared: tuple | list = ()):
    """Levels of the categorical columns (from the manifest, else a metadata pass) and, with
    several grouping factors, their sorted levels and combinations (for the layout).

    With ``hold`` the projected input is kept on the workers when a pass runs, so that the
    caller's own pass reads it from memory (the GLMM reads its input once per fit).

    Returns ``(ddf, categorical, factor_levels, combos)``; ``combos`` is None without a pass.
    A text column whose levels are nearly all numbers is an error unless ``declared`` (the
    caller's ``factors``) or ``factor()`` names it (:func:`check_numbers_as_text`).
    """
    categorical: dict[str, list[str]] = {}
    factor_levels: dict[str, list[str]] = {}
    combos = None
    # a dataset's level tables count every row; a fit's levels are those of its complete
    # rows (lme4 drops unused levels after na.omit): only usable when no used column has a
    # missing value in the dataset
    complete = manifest is not None and not any(manifest.na_counts.get(c) for c in used)
    from_manifest = [c for c in cat_cols if complete
                     and (manifest.levels.get(c) or {}).get("file")]
    for c in from_manifest:
        categorical[c] = sorted_levels(manifest.level_table(c)["level"])
    scan = [c for c in cat_cols if c not in from_manifest]
    several = len(factor_names) > 1
    stateful = [t for t in (rewriter.transforms.values() if rewriter else []) if t.stateful]
    if scan or several or stateful:
        if hold and not isinstance(ddf, pd.DataFrame):
            import dask.dataframe as dd
            ddf = dd.from_delayed(client.compute(ddf.to_delayed()), meta=ddf._meta,
                                  verify_meta=False)
        meta = metadata_pass(client, ddf, used, scan, group_cols if several else [],
                             transforms=stateful,
                             keys=rewriter.column_keys if rewriter else None)
        if meta["n"] == 0:
            raise DataError("no rows left after dropping rows with missing values")
        for tr, summary in zip(stateful, meta["transforms"]):
            tr.freeze(summary)
        categorical.update({c: sorted_levels(meta["levels"][c]) for c in scan})
        combos = meta["combos"]
        for name in factor_names if several else []:
            factor_levels[name] = _sorted_factor_levels(
                FactorSpec(name, tuple(name.split(":"))), combos)
    wrapped = {c for t in (rewriter.transforms.values() if rewriter else [])
               if t.kind == "factor" for c in t.columns}
    check_numbers_as_text({c: v for c, v in categorical.items()
                           if c not in declared and c not in wrapped})
    return ddf, categorical, factor_levels, combos


NUMBERS_AS_TEXT = (20, 0.9)
"""A text column with at least this many distinct numbers making at least this share of its
levels is taken for a numeric column with a stray value (:func:`check_numbers_as_text`)."""


def check_numbers_as_text(categorical: dict[str, list[str]]) -> None:
    """Raise :class:`DataError` for a column of numbers with a few values that are not
    (``3.1, 2.7, abc``): a CSV reader then types the whole column as text, and the formula
    would take it as a factor with a level per distinct number, fitted without a word. Level
    codes (``a1``, ``ctrl``) and small sets of numeric codes with a named level pass."""
    least, share = NUMBERS_AS_TEXT
    for c, levels in categorical.items():
        bad = []
        for v in levels:
            try:
                float(v)
            except (TypeError, ValueError):
                bad.append(v)
        numbers = len(levels) - len(bad)
        if bad and numbers >= least and numbers >= share * len(levels):
            raise DataError(
                f"column {c!r} holds numbers but also {bad[0]!r} ({len(bad)} distinct "
                f"value(s) that are not numbers, among {len(levels)}), so it would be fitted "
                "as a factor with a level per number; correct those values or leave the cells "
                "empty for missing, or name the column in factors (--factors) if it is a "
                "factor")


def model_layout(spec: ModelSpec, combos: pd.DataFrame | None, p: int,
                 prefer_local: bool = False) -> Layout:
    """The coefficient layout: :func:`choose_layout` over the combinations of several grouping
    factors, else the one factor as primary."""
    q = {f.name: spec.factor_q(f.name) for f in spec.factors}
    if combos is not None:
        primary, nested, glob = choose_layout(spec, combos, q, prefer_local)
    else:
        if spec.factors[0].name in global_placed(spec):
            raise ModelError(f"grouping factor {spec.factors[0].name!r} has a term placed in "
                             "the global block, and no other factor can be primary; a model "
                             "needs one factor whose blocks are local to its levels")
        primary, nested, glob = spec.factors[0].name, [], []
    return Layout(primary=primary, nested=nested, global_factors=glob, q=q,
                  global_levels={f: level_keys(spec.factor(f), combos) for f in glob}, p=p)


def outside_bars(parsed: ParsedFormula) -> set[str]:
    names: set[str] = set()
    for piece in (parsed.response, parsed.fixed, *parsed.offsets, *(b.lhs for b in parsed.bars)):
        names |= identifiers(piece)
    return names


def _sorted_factor_levels(fs: FactorSpec, combos: pd.DataFrame) -> list[str]:
    if len(fs.columns) == 1:
        return sorted_levels(combos[fs.columns[0]])
    sub = combos[list(fs.columns)].drop_duplicates()
    order = [sorted_levels(sub[c]) for c in fs.columns]
    labels = [sub[c].map(level_label) for c in fs.columns]
    ranks = [lab.map({v: i for i, v in enumerate(o)}) for lab, o in zip(labels, order)]
    sub = sub.assign(_label=fs.keys(sub))
    idx = np.lexsort([r.to_numpy() for r in reversed(ranks)])
    return list(sub["_label"].to_numpy()[idx])


def level_keys(fs: FactorSpec, combos: pd.DataFrame) -> np.ndarray:
    """Level keys of a global factor in code order (raw values for one column)."""
    if len(fs.columns) == 1:
        u = pd.unique(combos[fs.columns[0]])
        try:
            return np.sort(np.asarray(u))
        except TypeError:
            return np.array(sorted(u, key=str), dtype=object)
    return np.asarray(_sorted_factor_levels(fs, combos), dtype=object)


def global_placed(spec: ModelSpec) -> set[str]:
    """Factors with a term whose :class:`~daskmm.core.reterm.ReTerm` ``placement`` is
    ``"global"`` (its block one dense or sparse block over all its coefficients): never
    primary, never nested."""
    return {t.factor for t in spec.terms if t.placement == "global"}


def choose_layout(spec: ModelSpec, combos: pd.DataFrame, q: dict[str, int],
                  prefer_local: bool = False) -> tuple[str, list[str], list[str]]:
    """Pick the primary factor: the one minimising the cost of factoring its local blocks
    (sum over its levels of block size cubed) plus the dense global block (size cubed).

    A factor is local to candidate ``P`` when each of its levels occurs with one level of
    ``P`` (nested); every other factor is global (crossed).

    With ``prefer_local`` (the GLMM) a layout without global factors wins whatever its cost:
    global coefficients make every PIRLS step a round trip through the client, while local
    ones let each partition iterate on its own.
    """
    keys = {f.name: pd.Series(f.keys(combos)) for f in spec.factors}
    codes = {name: pd.factorize(k)[0] for name, k in keys.items()}
    nlev = {name: int(c.max()) + 1 if len(c) else 0 for name, c in codes.items()}
    forced = global_placed(spec)
    best = None
    for cand in spec.factors:
        P = cand.name
        if P in forced:
            continue
        nested, glob = [], []
        size = pd.Series(q[P], index=pd.unique(keys[P]))
        for f in spec.factors:
            if f.name == P:
                continue
            if f.name in forced:
                glob.append(f.name)
                continue
            # f is nested in P when each of its levels meets one level of P: one pass over
            # the combinations (their distinct pairs are sorted only for a nested f)
            cf, cP = codes[f.name], codes[P]
            seen = np.empty(nlev[f.name], dtype=np.int64)
            seen[cf] = cP
            if not np.array_equal(seen[cf], cP):
                glob.append(f.name)
            else:
                pairs = pd.DataFrame({"f": keys[f.name], "P": keys[P]}).drop_duplicates()
                nested.append(f.name)
                size = size.add(pairs.groupby("P").size() * q[f.name], fill_value=0)
        n_G = sum(nlev[g] * q[g] for g in glob)
        cost = float((size.astype(float) ** 3).sum()) + float(n_G) ** 3
        if prefer_local:
            cost = (len(glob), cost)
        if best is None or cost < best[0]:
            best = (cost, P, nested, glob)
    if best is None:
        raise ModelError("every grouping factor has a term placed in the global block; a "
                         "model needs one factor whose blocks are local to its levels")
    return best[1], best[2], best[3]


def lambdas(spec: ModelSpec, theta: np.ndarray) -> dict[str, np.ndarray]:
    """Per-factor ``Lambda`` block (terms on one factor stacked block-diagonally)."""
    from daskmm.core.reterm import lambdas as _lambdas
    return _lambdas(spec.terms, spec.factors, theta)


def ranef_tables(prob, lam, prof, beta, u_G, sigma) -> dict[str, RanefTable]:
    spec, layout = prob.spec, prob.layout
    pieces: dict[str, list] = {f.name: [] for f in spec.factors}
    for comp, levels, nested_levels, b, cov in prob.evaluator.modes(lam, prof, beta, u_G, sigma):
        qP = layout.q[layout.primary]
        pieces[layout.primary].append((levels, b[:, :qP], cov[:, :qP, :qP]))
        off = qP
        for f, c, nl in zip(layout.nested, comp, nested_levels):
            qf = layout.q[f]
            for j in range(int(c)):
                sl = slice(off + j * qf, off + (j + 1) * qf)
                pieces[f].append((nl[:, j], b[:, sl], cov[:, sl, sl]))
            off += int(c) * qf
    for f, (b, cov) in global_modes(prof, u_G, lam, layout, sigma).items():
        pieces[f].append((layout.global_levels[f], b, cov))
    out = {}
    for f in spec.factors:
        fs = spec.factor(f.name)
        keys = np.concatenate([p[0] for p in pieces[f.name]])
        b = np.concatenate([p[1] for p in pieces[f.name]])
        cov = np.concatenate([p[2] for p in pieces[f.name]])
        order = _key_order(keys)
        out[f.name] = RanefTable(levels=fs.label(keys[order]), b=b[order], cov=cov[order])
    return out


def _key_order(keys: np.ndarray) -> np.ndarray:
    try:
        return np.argsort(keys, kind="stable")
    except TypeError:
        return np.argsort(keys.astype(str), kind="stable")
