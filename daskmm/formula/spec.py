"""The model spec: a formula with every encoding frozen.

A :class:`ModelSpec` is built once on the client from the formula and the metadata of the whole
dataset (levels of every categorical column), then shipped to the workers, where
:meth:`ModelSpec.encode` turns any partition into the same columns in the same order. Nothing in
it depends on which partition it sees (formulaic's idea of a stateful, data-free spec).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from formulaic import model_matrix
from formulaic.errors import FormulaicError

from daskmm.core.reterm import RandomTerm
from daskmm.data.columns import missing_column
from daskmm.data.rows import DropCounts, missing_rows
from daskmm.errors import DataError, FormulaError, ModelError
from daskmm.formula.levels import level_label
from daskmm.formula.parse import ParsedFormula
from daskmm.formula.rexpr import identifiers, tokenize
from daskmm.formula.transforms import LOGICAL_LEVELS, Rewriter
from daskmm.kernels.scratch import scratch

_EXACT = float(2 ** 53)


def is_categorical_dtype(dtype: object) -> bool:
    return not (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype))


@dataclass
class FactorSpec:
    """A grouping factor: one column or the interaction of several.

    Attributes
    ----------
    name : str
        As lme4 prints it (``"recipe:replicate"``).
    columns : tuple of str
        Component columns.
    terms : list of int
        Indices (in :attr:`ModelSpec.terms`) of the random-effect terms on this factor.
    levels : list of str or None
        Sorted level labels, when known from a metadata pass.
    """

    name: str
    columns: tuple[str, ...]
    terms: list[int] = field(default_factory=list)
    levels: list[str] | None = None

    def keys(self, df: pd.DataFrame) -> np.ndarray:
        """Per-row key: the raw value for one column, the ``"a:b"`` label for an interaction."""
        if len(self.columns) == 1:
            return df[self.columns[0]].to_numpy()
        cols = [df[c].map(level_label).astype(str) for c in self.columns]
        out = cols[0]
        for c in cols[1:]:
            out = out + ":" + c
        return out.to_numpy(dtype=object)

    def label(self, keys: np.ndarray) -> list[str]:
        return [level_label(k) for k in keys] if len(self.columns) == 1 else [str(k) for k in keys]


@dataclass
class Encoded:
    """One partition, encoded.

    ``y`` already has the offset subtracted; ``Z[name]`` holds the model columns of every term
    on factor ``name``, terms side by side in :attr:`ModelSpec.terms` order.
    """

    y: np.ndarray
    X: np.ndarray
    w: np.ndarray | None
    Z: dict[str, np.ndarray]
    keys: dict[str, np.ndarray]
    n_dropped: DropCounts
    names: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class ModelSpec:
    """Frozen encodings of a mixed-model formula.

    Attributes
    ----------
    formula : ParsedFormula
    categorical : dict
        Column -> sorted level labels, for every categorical column the fixed part or a term's
        left-hand side uses.
    factors : list of FactorSpec
        Grouping factors, in lme4's term order of their first term.
    terms : list of RandomTerm
        Random-effect terms in lme4's order (decreasing number of levels, stable).
    fixef_names : list of str
        Fixed-effect column names as R writes them, before aliased columns are dropped.
    weights : str or None
        Column of prior weights.
    """

    formula: ParsedFormula
    categorical: dict[str, list[str]]
    factors: list[FactorSpec]
    terms: list[RandomTerm]
    fixef_names: list[str]
    weights: str | None
    used_columns: list[str]
    _fixed_spec: object = None
    _term_specs: list = field(default_factory=list)
    _response_spec: object = None
    _offset_specs: list = field(default_factory=list)
    _direct_fixed: list | None = None  # raw column (None: intercept) of each X column
    _rewriter: Rewriter | None = None
    _response_column: str | None = None  # the response when it is a plain column

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, formula: ParsedFormula, schema: dict[str, object],
              categorical: dict[str, list[str]], weights: str | None = None,
              factor_levels: dict[str, list[str]] | None = None,
              rewriter: Rewriter | None = None, require_bars: bool = True) -> ModelSpec:
        """Freeze the encodings.

        Parameters
        ----------
        formula : ParsedFormula
        schema : dict
            Column -> dtype of the data.
        categorical : dict
            Column -> sorted level labels for the categorical columns used outside the bars.
        weights : str, optional
        factor_levels : dict, optional
            Factor name -> sorted levels, when a metadata pass computed them.
        rewriter : Rewriter, optional
            From :func:`plan_formula`, with the state of ``scale()``, ``poly()`` and
            ``factor()`` frozen (:func:`daskmm.distributed.passes.metadata_pass`); a new one
            when the formula has no such call.
        require_bars : bool
            A mixed model needs a random-effect term; a GAM's parametric part does not.
        """
        if require_bars and not formula.bars:
            raise FormulaError(
                f"formula {formula.text!r} has no random-effect term; add one such as '(1 | g)' "
                "(for a model without random effects use an ordinary linear model)")
        rw = rewriter if rewriter is not None else plan_formula(formula, list(schema))
        missing = [t.r_name for t in rw.transforms.values() if t.stateful and t.state is None]
        if missing:
            raise FormulaError(f"{missing[0]} needs its state from the whole data, which was not "
                               "computed (internal: pass the planned rewriter)")
        # every piece rewritten first: a piece may add a call (the GLMM's trials) the
        # prototype must hold
        texts = {piece: rw.rewrite(piece) for piece in (
            formula.response, formula.fixed, *formula.offsets, *(b.lhs for b in formula.bars))}
        for piece in (formula.fixed, *(b.lhs for b in formula.bars)):
            texts[piece] = r_term_order(texts[piece])
        proto = _prototype(schema, categorical, rw)
        pkey = _proto_key(proto)
        if identifiers(formula.response) & set(categorical):
            raise DataError(
                f"response {formula.response!r} is not numeric; a linear mixed model needs a "
                "numeric response")
        resp = _materialize(f"0 + {_response_term(texts[formula.response])}", proto,
                            f"response {formula.response!r}", pkey)
        if len(resp.column_names) != 1:
            raise FormulaError(f"the response {formula.response!r} must be one numeric column")
        fixed = _materialize(texts[formula.fixed], proto,
                             f"fixed part {formula.fixed!r}", pkey)
        offsets = [_materialize(f"0 + {texts[o]}", proto, f"offset {o!r}", pkey)
                   for o in formula.offsets]
        # group terms by factor; order terms by decreasing number of levels (lme4, stable)
        bars = list(formula.bars)
        nlev = {b.factor_name: len((factor_levels or {}).get(b.factor_name, ()))
                for b in bars}
        order = sorted(range(len(bars)), key=lambda i: -nlev[bars[i].factor_name])
        terms: list[RandomTerm] = []
        term_specs = []
        factors: dict[str, FactorSpec] = {}
        for i in order:
            b = bars[i]
            ts = _materialize(texts[b.lhs], proto,
                              f"random-effect term ({b.lhs} | {b.factor_name})", pkey)
            cols = [rw.r_name(c) for c in ts.column_names]
            if not cols:
                raise FormulaError(f"random-effect term ({b.lhs} | {b.factor_name}) has no columns")
            fs = factors.setdefault(b.factor_name, FactorSpec(b.factor_name, b.factor))
            fs.terms.append(len(terms))
            if factor_levels and b.factor_name in factor_levels:
                fs.levels = factor_levels[b.factor_name]
            terms.append(RandomTerm(factor=b.factor_name, columns=tuple(cols), lhs=b.lhs))
            term_specs.append(ts)
        used = sorted(formula.columns | ({weights} if weights else set()))
        fixef_names = [rw.r_name(c) for c in fixed.column_names]
        # intercept and plain numeric columns: copied straight from the frame, no formula engine
        by_key = {k: c for c, k in rw.column_keys.items()}
        direct = [None if c == "Intercept" else by_key.get(c) for c in fixed.column_names]
        plain = all(c == "Intercept" or (c in by_key and by_key[c] not in categorical
                                         and not is_categorical_dtype(schema[by_key[c]]))
                    for c in fixed.column_names)
        toks = tokenize(formula.response)
        response_column = toks[0].text if len(toks) == 1 and toks[0].kind == "name" else None
        return cls(formula=formula, categorical=categorical, factors=list(factors.values()),
                   terms=terms, fixef_names=fixef_names,
                   weights=weights, used_columns=used, _fixed_spec=fixed,
                   _term_specs=term_specs, _response_spec=resp, _offset_specs=offsets,
                   _direct_fixed=direct if plain else None, _rewriter=rw,
                   _response_column=response_column)

    # ------------------------------------------------------------------ queries
    @functools.cached_property
    def numeric_columns(self) -> set[str]:
        """Columns read as numbers: in the response, fixed part, offsets and term columns,
        and the weights, less the categorical ones."""
        f = self.formula
        names: set[str] = set()
        for piece in (f.response, f.fixed, *f.offsets, *(b.lhs for b in f.bars)):
            names |= identifiers(piece)
        if self.weights:
            names.add(self.weights)
        return names - set(self.categorical)

    def factor(self, name: str) -> FactorSpec:
        return next(f for f in self.factors if f.name == name)

    def factor_q(self, name: str) -> int:
        return sum(self.terms[t].q for t in self.factor(name).terms)

    @property
    def n_theta(self) -> int:
        return sum(t.n_theta for t in self.terms)

    # ------------------------------------------------------------------ encoding
    def check_new_levels(self, df: pd.DataFrame) -> None:
        """Refuse, naming the column and the level, a level the fit did not see of a factor
        the fixed part or a term's left-hand side uses (R's ``predict``: "factor f has new
        level zz"); levels of grouping factors are the random effects' business."""
        f = self.formula
        used: set[str] = set()
        for piece in (f.fixed, *f.offsets, *(b.lhs for b in f.bars)):
            used |= identifiers(piece)
        for c in self.categorical:
            if c not in used or c not in df.columns:
                continue
            seen = {str(v) for v in self.categorical[c]}
            vals = df[c]
            have = pd.unique(vals[vals.notna()].astype(str))
            new = [v for v in have if v not in seen]
            if new:
                shown = ", ".join(repr(v) for v in new[:5]) + (" ..." if len(new) > 5 else "")
                raise DataError(f"column {c!r} has level(s) {shown} in the new data that the "
                                f"fit did not see (it saw {len(seen)}: "
                                f"{', '.join(map(repr, list(self.categorical[c])[:10]))}"
                                f"{' ...' if len(seen) > 10 else ''}); a fixed-effect factor "
                                f"cannot predict an unseen level (R: factor {c} has new "
                                "levels): remove those rows or give them a level the fit saw")

    def prepare(self, df: pd.DataFrame) -> tuple[pd.DataFrame, DropCounts]:
        """Select the used columns, drop rows with a missing value (lme4's ``na.omit``) and
        check for infinities. Returns the frame and the rows dropped, by column."""
        if set(df.columns) != set(self.used_columns):
            df = df[self.used_columns]
        ok = {}
        for c in self.used_columns:
            col = df[c]
            if col.dtype.kind in "iub":  # no missing values, no infinities
                if col.dtype.kind in "iu" and c in self.numeric_columns and len(col):
                    a = col.to_numpy()
                    big = np.abs(a.astype(np.float64)) > _EXACT
                    if big.any():
                        raise DataError(
                            f"column {c!r} holds the integer {int(a[big][0])}, beyond 2^53: "
                            "float64 cannot hold it exactly, so a model using it as a number "
                            "would silently round it; if it is an identifier, use it as a "
                            "grouping factor or name it in factors")
                continue
            if col.dtype.kind == "f" and c not in self.categorical:
                a = col.to_numpy()
                finite = np.isfinite(a)
                if finite.all():
                    continue
                if np.isinf(a).any():
                    raise DataError(f"column {c!r} holds an infinite value; remove or replace "
                                    "it before fitting")
                ok[c] = finite
            else:
                good = col.notna().to_numpy()
                check_values(col, good)
                if not good.all():
                    ok[c] = good
        if not ok:
            return df, DropCounts()
        mask, dropped = missing_rows(df, [c for c in self.used_columns if c in ok], ok)
        return df.loc[mask], dropped

    def _direct_X(self, df: pd.DataFrame) -> np.ndarray:
        """Fixed-effects matrix of plain numeric columns (column-major: columns contiguous).

        It lives in a per-thread scratch buffer: valid until the next partition is encoded on
        this thread, which is all the statistics pass needs."""
        n, p = len(df), len(self.fixef_names)
        X = scratch("direct_X", n * p).reshape(p, n).T  # column-major, reused across partitions
        for j, c in enumerate(self._direct_fixed):
            X[:, j] = 1.0 if c is None else df[c].to_numpy(dtype=float)
        return X

    def fixed_terms(self) -> list[dict]:
        """The fixed part's terms other than the intercept, in ``X`` order: ``label`` (R's
        ``a:b``), ``variables`` (data columns), ``numeric`` (the numeric ones among them) and
        ``columns`` (indices into :attr:`fixef_names`). Terms built from calls (``log(x)``,
        ``poly(x, 2)``) have no data column and raise :class:`ModelError`."""
        inverse = {k: c for c, k in self._rewriter.column_keys.items()} if self._rewriter \
            else {}
        out = []
        for term, sl in self._fixed_spec.term_slices.items():
            names = [str(f) for f in term.factors]
            if names == ["1"]:
                continue
            missing = [n for n in names if n not in inverse]
            if missing:
                raise ModelError(f"term {self.fixef_names[sl.start]!r} is built from a call; "
                                 "type III contrasts are built for plain columns: compute the "
                                 "transformed column in the data first")
            cols = [inverse[n] for n in names]
            out.append({"label": ":".join(cols), "variables": cols,
                        "numeric": [c for c in cols if c not in self.categorical],
                        "columns": list(range(sl.start, sl.stop))})
        return out

    def fixed_matrix(self, df: pd.DataFrame) -> np.ndarray:
        """The fixed-effects matrix of ``df`` (the fixed part's columns only; no response,
        no grouping factors, no missing values)."""
        frame = _LazyFrame(self, df)
        return _dense(self._fixed_spec, frame, len(df))

    def encode(self, df: pd.DataFrame) -> Encoded:
        """Encode one partition (:meth:`prepare` is applied first).

        For speed the arrays may be views of ``df`` or of per-thread scratch memory (plain
        numeric fixed effects): use them before encoding the next partition on the same
        thread, or copy them (work that keeps encoded data across iterations, as PIRLS will).
        """
        df, dropped = self.prepare(df)
        frame = _LazyFrame(self, df)
        if self._response_column is not None:  # a plain column: no formula machinery
            y = df[self._response_column].to_numpy(dtype=float, copy=bool(self._offset_specs))
        else:
            y = np.asarray(self._response_spec.get_model_matrix(frame.get()), dtype=float)
            if y.ndim != 2 or y.shape[1] != 1:
                raise DataError(f"response {self.formula.response!r} must be one numeric column")
            y = y[:, 0].copy()
        if not np.isfinite(y).all():
            raise DataError(f"response {self.formula.response!r} has a non-finite value "
                            "(e.g. log of a non-positive number)")
        for spec in self._offset_specs:
            y -= np.asarray(spec.get_model_matrix(frame.get()), float)[:, 0]
        X = (self._direct_X(df) if self._direct_fixed is not None
             else _dense(self._fixed_spec, frame, len(df)))
        w = np.asarray(df[self.weights], dtype=float) if self.weights else None
        if w is not None and (w <= 0).any():
            raise DataError(f"weights column {self.weights!r} has a value <= 0; "
                            "prior weights must be positive")
        Z: dict[str, np.ndarray] = {}
        keys: dict[str, np.ndarray] = {}
        # a column's R name fixes its values, so a term column that is also a fixed-effect
        # column (x in y ~ x + (x | g)) is taken from X instead of being encoded again
        fixed_col = {name: j for j, name in enumerate(self.fixef_names)}
        for f in self.factors:
            mats = []
            for t in f.terms:
                cols = self.terms[t].columns
                if all(c in fixed_col for c in cols):
                    idx = [fixed_col[c] for c in cols]
                    contiguous = idx == list(range(idx[0], idx[0] + len(idx)))
                    mats.append(X[:, idx[0]:idx[0] + len(idx)] if contiguous else X[:, idx])
                else:
                    mats.append(_dense(self._term_specs[t], frame, len(df)))
            Z[f.name] = np.hstack(mats) if len(mats) > 1 else mats[0]
            keys[f.name] = f.keys(df)
        names = {"X": list(self.fixef_names)}
        for f in self.factors:
            names[f.name] = [c for t in f.terms for c in self.terms[t].columns]
        return Encoded(y=y, X=X, w=w, Z=Z, keys=keys, n_dropped=dropped, names=names)


class _LazyFrame:
    """The frame formulaic encodes (columns and calls as plain variables), built on first use:
    a fit of plain numeric columns never builds it."""

    def __init__(self, spec: ModelSpec, df: pd.DataFrame):
        self.spec, self.df, self.frame = spec, df, None

    def get(self) -> pd.DataFrame:
        if self.frame is None:
            self.frame = encoding_frame(self.spec._rewriter, self.df, self.spec.categorical)
        return self.frame


def encoding_frame(rw: Rewriter, df: pd.DataFrame, categorical: dict[str, list[str]]
                   ) -> pd.DataFrame:
    """``df`` as formulaic sees it: each used column under its variable (categorical ones as
    pandas Categoricals with the frozen levels) and each call's model column(s)."""
    data: dict[str, object] = {}
    env = {}
    for c, k in rw.column_keys.items():
        if c not in df.columns:  # a column of another spec sharing the rewriter
            continue
        raw = df[c].to_numpy()
        env[k] = raw
        if c in categorical:
            data[k] = pd.Categorical(df[c].map(level_label), categories=categorical[c])
        else:
            data[k] = raw
    for tr in rw.transforms.values():
        if not all(rw.column_keys[c] in env for c in tr.columns):
            continue
        data.update(tr.columns_of({k: env[k] for k in (rw.column_keys[c] for c in tr.columns)}
                                  | ({} if tr.columns else {"_n": np.zeros(len(df))})))
    return pd.DataFrame(data, index=pd.RangeIndex(len(df)))


def plan_formula(formula: ParsedFormula, columns: list[str]) -> Rewriter:
    """Read every piece of ``formula`` (response, fixed part, offsets, term columns) into one
    :class:`~daskmm.formula.transforms.Rewriter`: each column and call gets its variable, and
    the calls whose state comes from the whole data (``scale``, ``poly``, ``factor``) are in
    ``[t for t in rw.transforms.values() if t.stateful]``, to be frozen before
    :meth:`ModelSpec.build`."""
    rw = Rewriter([str(c) for c in columns])
    for piece in (formula.response, formula.fixed, *formula.offsets,
                  *(b.lhs for b in formula.bars)):
        rw.rewrite(piece)
    return rw


def _dense(spec: object, frame: _LazyFrame, n: int) -> np.ndarray:
    m = spec.get_model_matrix(frame.get())
    a = np.asarray(m, dtype=float)
    if a.shape[0] != n:  # formulaic collapses an intercept-only matrix on empty frames
        a = np.broadcast_to(a, (n, a.shape[1])).copy()
    return np.ascontiguousarray(a)


_SPEC_CACHE: dict[tuple, object] = {}
SPEC_CACHE_SIZE = 256
"""formulaic specs kept per (text, prototype): building one costs milliseconds, a fit of a
small model a few more, and a service or a loop fits the same formula many times."""


def _proto_key(proto: pd.DataFrame) -> tuple:
    """What :func:`_prototype` put in ``proto``: each column's name and levels (numeric
    columns all hold the same values), and the row count."""
    return (len(proto),) + tuple(
        (c, tuple(proto[c].cat.categories) if isinstance(proto[c].dtype, pd.CategoricalDtype)
         else None) for c in proto.columns)


def _materialize(text: str, proto: pd.DataFrame, what: str, key: tuple | None = None):
    """formulaic's spec of ``text`` (rewritten by the Rewriter); ``what`` names the piece, as
    the user wrote it, in the message. ``key`` (:func:`_proto_key` of ``proto``) looks it up
    in, and adds it to, a bounded cache; formulaic's specs are immutable."""
    if key is not None and (text, key) in _SPEC_CACHE:
        return _SPEC_CACHE[text, key]
    try:
        spec = model_matrix(text, proto, na_action="ignore").model_spec
    except (FormulaicError, Exception) as exc:  # formulaic raises plain errors for some syntax
        raise FormulaError(f"cannot understand the {what}: {str(exc).splitlines()[0]}") from exc
    if key is not None:
        if len(_SPEC_CACHE) >= SPEC_CACHE_SIZE:
            _SPEC_CACHE.pop(next(iter(_SPEC_CACHE)))
        _SPEC_CACHE[text, key] = spec
    return spec


def r_term_order(text: str) -> str:
    """``text`` (a rewritten right-hand side) with each interaction's variables in R's order:
    ``terms()`` writes ``b:a`` for ``a:b`` when ``b`` comes first in the formula (its variables
    are listed by first appearance), so ``poly(age, 2) + ch + age:ch`` has the term
    ``ch:age`` and the column ``chN:age``, and ``cses + sector * cses`` the column
    ``cses:sectorPublic``; for two factors the order also decides which varies fastest.
    formulaic keeps the written order, so the terms are written again (formulaic's own
    expansion and degree order kept); text that formulaic cannot read is returned as it is,
    for :func:`_materialize` to report."""
    try:
        from formulaic import Formula
        terms = list(Formula(text))
    except Exception:  # noqa: BLE001 - the error is reported where the text is encoded
        return text
    order: dict[str, int] = {}
    for tok in tokenize(text):
        if tok.kind == "name":
            order.setdefault(tok.text, len(order))
    out, intercept, changed = [], False, False
    for t in terms:
        fs = [str(f) for f in t.factors]
        if fs == ["1"]:
            intercept = True
            continue
        ranked = sorted(fs, key=lambda f: order.get(f, len(order)))
        changed = changed or ranked != fs
        out.append(":".join(ranked))
    if not changed:
        return text
    return " + ".join((["1"] if intercept else ["0"]) + out)


def _response_term(text: str) -> str:
    """The response as one term: R evaluates a formula's left-hand side as an expression, so
    ``y / n``, ``y - 100`` and ``y^2`` are arithmetic there (not nesting, interaction or
    power of terms): with an operator outside parentheses the text goes inside ``I()``, R's
    ``^`` as Python's ``**``."""
    depth = 0
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and ch in "+-*/^:%":
            return "I({})".format(text.replace("^", "**"))  # R's power is Python's **
    return text


def _prototype(schema: dict[str, object], categorical: dict[str, list[str]],
               rw: Rewriter) -> pd.DataFrame:
    """A small frame, keyed as formulaic sees the data, with every level of every categorical
    column and call, to build specs on."""
    levels_of = {rw.column_keys[c]: categorical[c] for c in rw.column_keys if c in categorical}
    for tr in rw.transforms.values():
        if tr.kind == "factor":
            levels_of[tr.key] = tr.state["levels"]
        elif tr.kind == "logical":
            levels_of[tr.key] = LOGICAL_LEVELS
    n = max([2] + [len(v) for v in levels_of.values()])
    keys = list(rw.column_keys.values()) + [k for t in rw.transforms.values() for k in t.keys]
    data = {}
    for k in keys:
        if k in levels_of:
            levels = levels_of[k]
            vals = [levels[i % len(levels)] for i in range(n)] if levels else [None] * n
            data[k] = pd.Categorical(vals, categories=levels)
        else:
            data[k] = np.linspace(1.0, 2.0, n)
    return pd.DataFrame(data)


_TEMPORAL = ("timestamp", "date", "time", "duration")
_NESTED = ("list", "struct", "map", "dictionary<")


def _unusable_kind(dtype: object) -> str | None:
    """``"timestamp"``, ``"date"``, ``"list"``, ... for a dtype no model column can be made
    of."""
    pa_type = getattr(dtype, "pyarrow_dtype", None)
    if pa_type is not None:
        t = str(pa_type).lower()
        for k in _TEMPORAL + _NESTED:
            if t.startswith(k):
                return k.rstrip("<")
    if getattr(dtype, "kind", None) in ("M", "m"):
        return "timestamp" if dtype.kind == "M" else "duration"
    text = str(dtype).lower()
    if text.startswith("datetime64") or text.startswith("timedelta64"):
        return "timestamp"
    return None


def unusable_value(value: object) -> str | None:
    """The kind of a Python value in an object column that is no number or level: a list, a
    dict (struct), a date or time, bytes."""
    import datetime
    if isinstance(value, (list, tuple, np.ndarray)):
        return "list"
    if isinstance(value, dict):
        return "struct"
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta, pd.Timestamp)):
        return "date/time"
    if isinstance(value, (bytes, bytearray)):
        return "binary"
    return None


def check_values(col: pd.Series, good: np.ndarray | None = None) -> None:
    """Raise :class:`DataError` for an object column holding lists, structs, dates or bytes
    (seen in its first present value): not numbers, not levels."""
    if col.dtype != object or not len(col):
        return
    good = col.notna().to_numpy() if good is None else good
    if good.any():
        first = col.iloc[int(np.argmax(good))]
        kind = unusable_value(first)
        if kind is not None:
            raise DataError(_type_message(str(col.name), kind, type(first).__name__))


def check_column_types(schema: dict[str, object], columns) -> None:
    """Raise :class:`DataError` for a used column of a type a model cannot use (timestamps,
    dates, durations, lists, structs): such a column is not a factor nor a number."""
    for c in columns:
        kind = _unusable_kind(schema[c])
        if kind is not None:
            raise DataError(_type_message(c, kind, schema[c]))


def _type_message(c: str, kind: str, dtype: object) -> str:
    if kind in ("timestamp", "date", "time", "duration", "date/time"):
        return (f"column {c!r} is a {kind} ({dtype}); daskmm uses neither timestamps nor dates "
                "as numbers or factors: convert it to a number (e.g. days since a start date) "
                "or to a string of levels before fitting")
    return (f"column {c!r} holds {kind} values ({dtype}); a model column must be numbers, "
            "strings or booleans: flatten it into ordinary columns first")


def check_columns(formula: ParsedFormula, columns: list[str], weights: str | None) -> None:
    """Raise :class:`ColumnNotFoundError` naming the first column the data lack."""
    have = set(columns)
    needed = set()
    for b in formula.bars:
        needed |= set(b.factor)
    for piece in (formula.response, formula.fixed, *formula.offsets,
                  *(b.lhs for b in formula.bars)):
        needed |= identifiers(piece)
    missing = sorted(needed - have)
    if missing:
        raise missing_column(missing[0], list(columns))
    if weights and weights not in have:
        raise missing_column(weights, list(columns), "named as weights")
