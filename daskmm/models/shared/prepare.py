"""The set-up every model makes before it fits, written once: the columns a formula uses
checked against the data (present, "did you mean", usable types, numeric weights), which of
them are factors, the grouping columns, and lme4's checks of the grouping factors against the
number of observations (the LMM's and the GLMM's, which differ as lme4's do).
"""

from __future__ import annotations

from dataclasses import dataclass

from daskmm.data.columns import check_factors, data_columns
from daskmm.errors import DataError, ModelError
from daskmm.formula.parse import ParsedFormula
from daskmm.formula.spec import (
    ModelSpec,
    check_column_types,
    check_columns,
    is_categorical_dtype,
)
from daskmm.models.shared.structure import outside_bars


@dataclass
class ColumnPlan:
    """What a model reads and how.

    Attributes
    ----------
    used : list of str
        The columns it reads (sorted).
    schema : dict
        Their dtypes.
    categorical : list of str
        Columns encoded as factors (named in ``factors``, or of a non-numeric dtype), grouping
        columns that appear only in a bar left out (their levels are the random effects').
    groups : list of str
        Columns of the grouping factors.
    factor_names : list of str
        The grouping factors as lme4 names them (``a:b``), in formula order.
    """

    used: list[str]
    schema: dict
    categorical: list[str]
    groups: list[str]
    factor_names: list[str]


def prepare_columns(parsed: ParsedFormula, frame, factors: list[str] | tuple[str, ...],
                    weights: str | None, *, used: list[str] | None = None,
                    not_factors: frozenset[str] | set[str] = frozenset()):
    """``(frame with only the used columns, ColumnPlan)``.

    Parameters
    ----------
    used : list of str, optional
        The columns read (default: the formula's and the weights'); a GAM adds its smooths'.
    not_factors : set of str
        Columns never encoded as factors here (a GAM's response).

    Raises
    ------
    ColumnNotFoundError
        A column the data lack, with the nearest name and every column.
    DataError
        A column of a type no model can use, or non-numeric weights.
    """
    cols = data_columns(frame)
    check_columns(parsed, cols, weights)
    check_factors(factors, cols)
    schema = {c: frame.dtypes[c] for c in frame.columns}
    used = sorted(used if used is not None else
                  parsed.columns | ({weights} if weights else set()))
    check_column_types(schema, used)
    if weights and is_categorical_dtype(schema[weights]):
        raise DataError(f"weights column {weights!r} is not numeric ({schema[weights]}); "
                        "prior weights must be positive numbers")
    groups = sorted({c for b in parsed.bars for c in b.factor})
    only_in_bars = {c for c in groups if c not in outside_bars(parsed)}
    candidates = sorted(set(used) - only_in_bars - set(not_factors)
                        - ({weights} if weights else set()))
    categorical = [c for c in candidates if c in factors or is_categorical_dtype(schema[c])]
    names = list(dict.fromkeys(b.factor_name for b in parsed.bars))
    return frame[used], ColumnPlan(used, {c: schema[c] for c in used}, categorical, groups,
                                   names)


def check_groups(spec: ModelSpec, ngroups: dict, n: int, *, allow_n: bool = False) -> None:
    """lme4's checks of the grouping factors: every factor has 2 or more levels
    (``check.nlev.gtr.1``), fewer levels than observations (``check.nobs.vs.nlev``) and no term
    more random effects than observations (``check.nobs.vs.nRE``). ``allow_n``: as ``glmer``,
    as many as the observations is allowed (an observation-level random effect).

    Raises
    ------
    ModelError
        Naming the factor or term and what to do.
    """
    for name, nl in ngroups.items():
        if nl < 2:
            raise ModelError(
                f"grouping factor {name!r} has {nl} level; a random effect needs at least 2 "
                "levels (drop the term or use a fixed effect)")
        if nl > n or (nl == n and not allow_n):
            raise ModelError(
                f"grouping factor {name!r} has {nl} levels for {n} observations; the number of "
                f"levels must be {'at most' if allow_n else 'smaller than'} the number of "
                "observations")
    for t in spec.terms:
        n_re = ngroups[t.factor] * t.q
        if n_re > n or (n_re == n and not allow_n):
            raise ModelError(
                f"term ({t.lhs} | {t.factor}) has {n_re} random effects for {n} observations; "
                "the model is not identifiable (lme4: check.nobs.vs.nRE)")


def two_levels(col: str, levels: list[str], family: str) -> str:
    """The success level of a categorical binomial response: the second of its two sorted
    levels (the first is failure, as R's factor); another family or another number of levels
    is a :class:`DataError` saying what to give."""
    if family != "binomial":
        raise DataError(f"response {col!r} is categorical; the {family} family needs counts")
    if len(levels) != 2:
        shown = ", ".join(levels[:5]) + (", ..." if len(levels) > 5 else "")
        raise DataError(f"binomial response {col!r} is categorical with {len(levels)} "
                        f"level(s) ({shown}); a factor response needs exactly 2 (the first is "
                        "failure), or give 0/1 or cbind(successes, failures)")
    return levels[1]
