"""Functions of columns in a formula, as R evaluates them, with their state frozen from the
whole dataset.

``I(age^2)``, ``log(x)``, ``log1p(x)``, ``exp(x)``, ``sqrt(x)`` and the like are computed row by
row. ``scale(x)`` (centre and standard deviation), ``poly(x, d)`` (R's orthogonal polynomials:
``alpha`` and ``norm2`` of the three-term recurrence) and ``factor(x)`` (its levels) depend on
all the data: each partition reports a small summary (:meth:`Transform.summarise`), the
summaries are added (:meth:`Transform.combine`) and the state is frozen on the client
(:meth:`Transform.freeze`) before any column is built, so every partition builds the same
columns, as R would from the whole data frame.

:class:`Rewriter` turns a formula piece into the text formulaic encodes: every data column and
every function call becomes a plain variable (``_c0``, ``_f1``), so formulaic only does R's
term algebra and contrasts, and :meth:`Rewriter.r_name` turns a model column back into the name
R gives it (``poly(x, 2)1``, ``factor(k)2``, `` `treat group`drug A ``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from daskmm.errors import DataError, FormulaError
from daskmm.formula import rexpr
from daskmm.formula.levels import level_label, sorted_levels

MATH = {"log": "log", "log1p": "log1p", "log2": "log2", "log10": "log10", "exp": "exp",
        "expm1": "expm1", "sqrt": "sqrt", "abs": "abs", "sin": "sin", "cos": "cos",
        "tan": "tan", "atan": "atan", "tanh": "tanh", "floor": "floor", "ceiling": "ceil",
        "round": "round_", "pmin": "minimum", "pmax": "maximum"}
"""R functions allowed in a numeric term, and the name they have in :data:`_ENV`."""


def _log(x, base=math.e):
    return np.log(x) if base == math.e else np.log(x) / np.log(base)


_ENV = {"log": _log, "log1p": np.log1p, "log2": np.log2, "log10": np.log10, "exp": np.exp,
        "expm1": np.expm1, "sqrt": np.sqrt, "abs": np.abs, "sin": np.sin, "cos": np.cos,
        "tan": np.tan, "atan": np.arctan, "tanh": np.tanh, "floor": np.floor, "ceil": np.ceil,
        "round_": np.round, "minimum": np.minimum, "maximum": np.maximum, "pi": math.pi,
        "True": True, "False": False}
STATEFUL = ("scale", "poly", "factor", "as.factor")
SUPPORTED = sorted([*MATH, "I", *STATEFUL])


@dataclass
class Transform:
    """One function call in a formula, turned into model column(s).

    Attributes
    ----------
    key : str
        The variable formulaic sees (``_f0``); a polynomial of degree d is ``_f0_1 ... _f0_d``.
    r_name : str
        The call as R prints it (``poly(x, 2)``), the stem of its columns' names.
    kind : {"value", "logical", "scale", "poly", "factor"}
    code : str
        Python code of the (inner) expression over column variables.
    columns : tuple of str
        Data columns it reads.
    degree, raw : int, bool
        ``poly``'s degree and ``raw = TRUE``.
    state : dict or None
        Frozen from the whole data: ``center, scale``; ``alpha, norm2``; ``levels``.
    """

    key: str
    r_name: str
    kind: str
    code: str
    columns: tuple[str, ...]
    degree: int = 0
    raw: bool = False
    state: dict | None = None

    @property
    def stateful(self) -> bool:
        return self.kind in ("scale", "factor") or (self.kind == "poly" and not self.raw)

    @property
    def keys(self) -> list[str]:
        if self.kind == "poly":
            return [f"{self.key}_{j}" for j in range(1, self.degree + 1)]
        return [self.key]

    # ---------------------------------------------------------------- row by row
    def evaluate(self, env: dict) -> np.ndarray:
        """The inner expression on one partition (``env``: column variable -> array)."""
        with np.errstate(all="ignore"):
            v = eval(self.code, {"__builtins__": {}}, {**_ENV, **env})  # noqa: S307 - our code
        if np.ndim(v) == 0:
            n = len(next(iter(env.values()))) if env else 1
            v = np.full(n, v)
        return np.asarray(v)

    def columns_of(self, env: dict) -> dict[str, object]:
        """The model column(s) of this call on one partition, by key."""
        v = self.evaluate(env)
        if self.kind == "factor":
            levels = self.state["levels"]
            return {self.key: pd.Categorical(pd.Series(v).map(_label), categories=levels)}
        if self.kind == "logical":
            return {self.key: pd.Categorical(np.where(np.asarray(v, dtype=bool), "TRUE",
                                                      "FALSE"), categories=LOGICAL_LEVELS)}
        x = np.asarray(v, dtype=float)
        if not np.isfinite(x).all():
            bad = x[~np.isfinite(x)][0]
            raise DataError(f"term {self.r_name} is {bad} for some rows (e.g. log of a value "
                            "<= 0); lme4 stops on non-finite values too: transform or filter "
                            "the data")
        if self.kind == "value":
            return {self.key: x}
        if self.kind == "scale":
            return {self.key: (x - self.state["center"]) / self.state["scale"]}
        if self.raw:
            return {k: x ** j for j, k in enumerate(self.keys, start=1)}
        cols = poly_columns(x, self.state["alpha"], self.state["norm2"])
        return {k: cols[:, j] for j, k in enumerate(self.keys)}

    # ---------------------------------------------------------------- whole-data state
    def summarise(self, env: dict, ok: np.ndarray) -> dict:
        """This partition's part of the state, over the rows ``ok``."""
        v = self.evaluate(env)[ok]
        if self.kind == "factor":
            return {"levels": pd.unique(pd.Series(v).dropna())}
        x = np.asarray(v, dtype=float)
        x = x[np.isfinite(x)]
        order = 2 * max(self.degree, 1)
        n = len(x)
        mean = float(x.mean()) if n else 0.0
        d = x - mean
        return {"n": n, "mean": mean,
                "moments": np.array([np.sum(d ** k) for k in range(order + 1)])}

    def combine(self, parts: list[dict]) -> dict:
        if self.kind == "factor":
            return {"levels": pd.unique(np.concatenate(
                [np.asarray(p["levels"], dtype=object) for p in parts]))}
        n = sum(p["n"] for p in parts)
        if n == 0:
            return {"n": 0, "mean": 0.0, "moments": parts[0]["moments"] * 0}
        mean = sum(p["n"] * p["mean"] for p in parts) / n
        K = len(parts[0]["moments"])
        total = np.zeros(K)
        for p in parts:  # move each part's central sums to the common mean (binomial shift)
            delta = p["mean"] - mean
            for k in range(K):
                total[k] += sum(math.comb(k, j) * p["moments"][j] * delta ** (k - j)
                                for j in range(k + 1))
        return {"n": n, "mean": mean, "moments": total}

    def freeze(self, summary: dict) -> None:
        """Set :attr:`state` from the combined summary of the whole data."""
        if self.kind == "factor":
            self.state = {"levels": sorted_levels(summary["levels"])}
            if not self.state["levels"]:
                raise DataError(f"{self.r_name} has no levels (every value is missing)")
            return
        n, mean, mom = summary["n"], summary["mean"], summary["moments"]
        if self.kind == "scale":
            if n < 2 or mom[2] <= 0:
                raise DataError(f"{self.r_name}: the column is constant or has fewer than two "
                                "values, so it cannot be scaled")
            self.state = {"center": float(mean), "scale": float(math.sqrt(mom[2] / (n - 1)))}
            return
        alpha, norm2 = poly_coefficients(n, mean, mom, self.degree)
        self.state = {"alpha": alpha, "norm2": norm2}


LOGICAL_LEVELS = ["FALSE", "TRUE"]
"""The levels of a logical term (R codes a logical as a factor of these)."""
_LOGICAL_OPS = {"==", "!=", "<", ">", "<=", ">=", "&", "&&", "|", "||"}


def _is_logical(tokens: list[rexpr.Token]) -> bool:
    """Whether an R expression's value is logical: a comparison or a logical operator outside
    parentheses (they bind more loosely than arithmetic), or a leading ``!``."""
    if tokens and tokens[0].kind == "op" and tokens[0].text == "!":
        return True
    depth = 0
    for t in tokens:
        if t.kind != "op":
            continue
        if t.text == "(":
            depth += 1
        elif t.text == ")":
            depth -= 1
        elif depth == 0 and t.text in _LOGICAL_OPS:
            return True
    return False


def _label(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else level_label(v)


def poly_coefficients(n: int, mean: float, moments: np.ndarray, degree: int
                      ) -> tuple[list[float], list[float]]:
    """R's ``attr(poly(x, degree), "coefs")`` from ``n``, the mean and the central power sums
    ``sum (x - mean)^k``, ``k = 0..2 degree``.

    The monic orthogonal polynomials ``P_0 = 1``, ``P_{k+1} = (x - alpha_k) P_k - (norm2_{k+1}
    / norm2_k) P_{k-1}`` are carried as coefficient vectors in ``t = x - mean``; their inner
    products are ``c' H c`` with the Hankel matrix ``H_ij = sum t^(i+j)``. Returns ``alpha``
    (length ``degree``) and ``norm2 = [1, n, |P_1|^2, ..., |P_degree|^2]``, as R.
    """
    if degree < 1:
        raise FormulaError("poly() needs a degree of at least 1")
    K = degree + 1
    H = np.array([[moments[i + j] for j in range(K)] for i in range(K)], dtype=float)

    def inner(a, b):
        return float(a @ H @ b)

    def times_t(c):
        out = np.zeros(K)
        out[1:] = c[:-1]
        return out

    P = [np.eye(K)[0]]
    norm2 = [1.0, inner(P[0], P[0])]
    alpha = []
    for k in range(degree):
        a = inner(times_t(P[k]), P[k]) / norm2[k + 1]
        alpha.append(a + mean)
        nxt = times_t(P[k]) - a * P[k]
        if k > 0:
            nxt = nxt - (norm2[k + 1] / norm2[k]) * P[k - 1]
        P.append(nxt)
        norm2.append(inner(nxt, nxt))
    if degree >= n or min(norm2[2:]) <= 1e-12 * norm2[1] * max(1.0, abs(moments[2])):
        raise DataError(f"poly() of degree {degree} needs at least {degree + 1} distinct "
                        "values of its argument ('degree' must be less than the number of "
                        "unique points)")
    return alpha, norm2


def poly_columns(x: np.ndarray, alpha: list[float], norm2: list[float]) -> np.ndarray:
    """R's ``predict`` of an orthogonal ``poly`` basis: the recurrence, scaled to unit norm."""
    d = len(alpha)
    Z = np.empty((len(x), d + 1))
    Z[:, 0] = 1.0
    Z[:, 1] = x - alpha[0]
    for i in range(1, d):
        Z[:, i + 1] = (x - alpha[i]) * Z[:, i] - (norm2[i + 1] / norm2[i]) * Z[:, i - 1]
    return Z[:, 1:] / np.sqrt(np.asarray(norm2[2:]))


@dataclass
class Rewriter:
    """Formula pieces -> formulaic text over plain variables, and model columns -> R names.

    One rewriter serves all the pieces of one formula (response, fixed part, offsets, term
    left-hand sides), so a column or a call has one variable everywhere."""

    columns: list[str]
    column_keys: dict[str, str] = field(default_factory=dict)
    transforms: dict[str, Transform] = field(default_factory=dict)  # by R name

    def column_key(self, name: str) -> str:
        if name not in self.columns:
            # every column the formula names was checked against the data before; a name
            # met only here is something else (a word inside a call)
            raise FormulaError(f"{name!r} in the formula is neither a column of the data nor "
                               f"a function daskmm formulas have ({', '.join(SUPPORTED)})")
        if name not in self.column_keys:
            self.column_keys[name] = f"_c{len(self.column_keys)}"
        return self.column_keys[name]

    def rewrite(self, text: str) -> str:
        """``text`` with columns and calls replaced by variables (term algebra untouched)."""
        toks = rexpr.tokenize(text)
        out: list[str] = []
        i = 0
        while i < len(toks):
            t = toks[i]
            if rexpr.is_call(toks, i):
                j = rexpr.matching_paren(toks, i + 1)
                tr = self._transform(toks[i:j + 1])
                out.append(tr.keys[0] if len(tr.keys) == 1 else
                           "(" + " + ".join(tr.keys) + ")")
                i = j + 1
                continue
            if t.kind == "name":
                out.append(self.column_key(t.text))
            elif t.kind == "num":
                out.append(t.text.rstrip("L"))
            elif t.kind == "op" and t.text in ("+", "-", "*", "/", ":", "^", "**", "(", ")",
                                               "%in%"):
                out.append(t.text)
            else:
                raise FormulaError(f"{t.text!r} in {text!r} is not part of R's formula "
                                   "language here; put arithmetic inside I(), e.g. I(x / 2)")
            i += 1
        return " ".join(out)

    def _transform(self, call: list[rexpr.Token]) -> Transform:
        r_name = rexpr.deparse(call)
        if r_name in self.transforms:
            return self.transforms[r_name]
        fname = call[0].text
        inner = call[2:-1]
        args = rexpr.split_args(inner)
        names = {c: self.column_key(c) for c in rexpr.identifiers(rexpr.deparse(inner))
                 if inner} if inner else {}
        cols = tuple(sorted(names))
        key = f"_f{len(self.transforms)}"

        def code(tokens):
            return rexpr.to_python(tokens, names, MATH)

        if fname in ("offset", "cbind"):
            where = "as a term of the formula" if fname == "offset" else "as the response"
            raise FormulaError(f"{fname}() may only stand on its own ({where}), not inside "
                               f"{r_name}")
        if fname == "I":
            if len(args) != 1 or args[0][0] is not None:
                raise FormulaError(f"I() takes one expression; got {r_name}")
            # a comparison is a logical, which R's model.matrix codes as a factor of FALSE,
            # TRUE: the column 'I(week > 2)TRUE'
            kind = "logical" if _is_logical(args[0][1]) else "value"
            tr = Transform(key, r_name, kind, code(args[0][1]), cols)
        elif fname in MATH:
            tr = Transform(key, r_name, "value", code(call), cols)
        elif fname == "scale":
            extra = [a for a in args[1:] if not (a[0] in ("center", "scale") and
                                                 rexpr.deparse(a[1]) in ("TRUE", "T"))]
            if not args or args[0][0] not in (None, "x") or extra:
                raise FormulaError(f"only scale(x) (centred and scaled) is available; got "
                                   f"{r_name}")
            tr = Transform(key, r_name, "scale", code(args[0][1]), cols)
        elif fname == "poly":
            tr = self._poly(key, r_name, args, code, cols)
        elif fname in ("factor", "as.factor"):
            if len(args) != 1 or args[0][0] not in (None, "x"):
                raise FormulaError(f"only factor(x) is available (levels sorted, as R); got "
                                   f"{r_name}; reorder levels in the data instead")
            tr = Transform(key, r_name, "factor", code(args[0][1]), cols)
        else:
            raise FormulaError(f"function {fname!r} in {r_name} is not available in daskmm "
                               f"formulas; use one of: {', '.join(SUPPORTED)}, offset(), "
                               "cbind() (response)")
        self.transforms[r_name] = tr
        return tr

    @staticmethod
    def _poly(key, r_name, args, code, cols) -> Transform:
        x = [a for n, a in args if n in (None, "x")]
        named = {n: a for n, a in args if n is not None and n != "x"}
        pos = x[1:]
        deg_tokens = named.pop("degree", pos[0] if pos else None)
        raw_tokens = named.pop("raw", pos[1] if len(pos) > 1 else None)
        if not x or named or len(pos) > 2:
            raise FormulaError(f"poly() takes poly(x, degree) or poly(x, degree, raw = TRUE); "
                               f"got {r_name}")
        degree = 1
        if deg_tokens is not None:
            if not rexpr.is_number(deg_tokens) or not float(
                    deg_tokens[0].text.rstrip("L")).is_integer():
                raise FormulaError(f"the degree in {r_name} must be a whole number")
            degree = int(float(deg_tokens[0].text.rstrip("L")))
        raw = raw_tokens is not None and rexpr.deparse(raw_tokens) in ("TRUE", "T")
        return Transform(key, r_name, "poly", code(x[0]), cols, degree=degree, raw=raw)

    # ---------------------------------------------------------------- names back
    def r_name(self, formulaic_name: str) -> str:
        """A model column's name as R writes it: ``_c3[T.lo]:_f0_2`` -> ``clo:poly(x, 2)2``."""
        if formulaic_name == "Intercept":
            return "(Intercept)"
        by_key = {k: rexpr.r_quote(c) for c, k in self.column_keys.items()}
        for tr in self.transforms.values():
            if tr.kind == "poly":
                for j, k in enumerate(tr.keys, start=1):
                    by_key[k] = f"{tr.r_name}{j}"
            else:
                by_key[tr.key] = tr.r_name
        parts = []
        for part in formulaic_name.split(":"):
            base, level = part, ""
            if part.endswith("]") and "[" in part:
                base, _, rest = part.partition("[")
                level = rest[:-1]
                if level.startswith("T."):
                    level = level[2:]
            parts.append(by_key.get(base, base) + level)
        return ":".join(parts)
