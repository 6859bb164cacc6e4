"""Smooth terms in a formula, as mgcv writes them: ``s()``, ``te()`` and ``ti()``.

:func:`split_smooths` takes the smooth calls out of a formula's right-hand side and leaves the
rest (the parametric part and any lme4 bars, gamm4's model) for the mixed-model formula code.
Each call becomes a :class:`SmoothCall`, a data-free record of what the user asked for; the
bases are built from it (:mod:`daskmm.models.gam.smooth`) once a first pass has seen the data.
"""

from __future__ import annotations

from dataclasses import dataclass

from daskmm.errors import FormulaError
from daskmm.formula import rexpr
from daskmm.formula.parse import split_top

BASES = ("cr", "cs", "cc", "ps", "re", "tp", "fs")
"""Basis names :func:`split_smooths` accepts (mgcv's ``bs``)."""

SMOOTH_CALLS = ("s", "te", "ti")


@dataclass(frozen=True)
class SmoothCall:
    """One smooth term as written.

    Attributes
    ----------
    kind : {"s", "te", "ti"}
    variables : tuple of str
        The covariates, in the order written.
    bs : tuple of str
        Basis per margin (``te``/``ti``) or one basis (``s``).
    k : tuple of int
        Basis dimension per margin (or one), ``-1`` for mgcv's default.
    by : str or None
        A ``by`` column: a factor (one smooth per level) or a number (varying coefficient).
    m : tuple of int or None
        Penalty order (``ps``: B-spline order and difference order).
    fx : bool
        An unpenalised (fixed degrees of freedom) smooth.
    text : str
        The call as written, for messages.
    """

    kind: str
    variables: tuple[str, ...]
    bs: tuple[str, ...]
    k: tuple[int, ...]
    by: str | None = None
    m: tuple[int, ...] | None = None
    fx: bool = False
    text: str = ""
    bar: bool = False

    @property
    def label(self) -> str:
        """mgcv's label before any ``by``: ``s(x0)``, ``te(x,z)``, ``s(x,g)``; an lme4 bar
        keeps lme4's: ``(1 | g)``, ``(0 + x | g)``."""
        if self.bar:
            return self.text
        return f"{self.kind}({','.join(self.variables)})"

    @property
    def columns(self) -> set[str]:
        return set(self.variables) | ({self.by} if self.by else set())


def split_smooths(formula: str) -> tuple[str, list[SmoothCall]]:
    """Split the smooth terms out of ``formula``.

    Returns
    -------
    rest : str
        The formula without its smooth terms (``y ~ 1`` when nothing else is left, keeping a
        ``- 1`` or ``0`` the user wrote).
    smooths : list of SmoothCall
        In the order written (mgcv's order of smooths and of ``sp``).
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise FormulaError(f"formula {formula!r} has no '~'; write it as mgcv does, e.g. "
                           "'y ~ s(x) + z'")
    lhs, _, rhs = formula.partition("~")
    kept: list[tuple[str, str]] = []
    smooths: list[SmoothCall] = []
    for sep, piece in split_top(rhs, "+-"):
        call = _smooth_name(piece)
        if call is None:
            if piece:
                kept.append((sep, piece))
            continue
        if sep == "-":
            raise FormulaError(f"cannot subtract a smooth term: '- {piece}'")
        smooths.append(_parse_call(call, piece))
    rest = ""
    for sep, p in kept:
        rest += (f" {sep} " if rest else ("- " if sep == "-" else "")) + p
    if not rest or rest.startswith("- "):
        rest = ("1 " + rest) if rest else "1"
    return f"{lhs.strip()} ~ {rest}", smooths


def _smooth_name(piece: str) -> str | None:
    for name in SMOOTH_CALLS:
        if piece.startswith(name + "(") and piece.endswith(")"):
            return name
    for name in ("t2", "gp", "lo"):
        if piece.startswith(name + "("):
            raise FormulaError(f"smooth {piece!r}: {name}() is not supported; use s(), te() "
                               "or ti()")
    return None


def _parse_call(kind: str, piece: str) -> SmoothCall:
    toks = rexpr.tokenize(piece)
    close = rexpr.matching_paren(toks, 1)
    if close != len(toks) - 1:
        raise FormulaError(f"cannot read smooth term {piece!r}")
    variables: list[str] = []
    opts: dict[str, list[rexpr.Token]] = {}
    for name, arg in rexpr.split_args(toks[2:close]):
        if name is None:
            if opts:
                raise FormulaError(f"smooth {piece!r}: covariates come before named "
                                   "arguments such as bs= or k=")
            if len(arg) != 1 or arg[0].kind != "name":
                raise FormulaError(
                    f"smooth {piece!r}: {rexpr.deparse(arg)!r} is not a column name; smooths "
                    "take plain columns (make a new column for a transformed covariate)")
            variables.append(arg[0].text)
        else:
            if name in opts:
                raise FormulaError(f"smooth {piece!r} gives {name}= twice")
            opts[name] = arg
    if not variables:
        raise FormulaError(f"smooth {piece!r} names no covariate, e.g. s(x)")
    if len(set(variables)) != len(variables):
        raise FormulaError(f"smooth {piece!r} names a covariate twice")
    allowed = {"bs", "k", "by", "m", "fx", "d"}
    for name in opts:
        if name not in allowed:
            raise FormulaError(f"smooth {piece!r}: argument {name}= is not supported; "
                               f"allowed: {', '.join(sorted(allowed))}")
    nmargin = len(variables) if kind != "s" else 1
    if "d" in opts:
        d = _ints(opts["d"], piece, "d")
        if kind == "s" or d != tuple([1] * len(variables)):
            raise FormulaError(f"smooth {piece!r}: d= other than one covariate per margin is "
                               "not supported")
    bs = _strings(opts["bs"], piece) if "bs" in opts else ()
    if kind == "s":
        if not bs:
            bs = ("tp",)
        if len(bs) != 1:
            raise FormulaError(f"smooth {piece!r}: s() takes one basis, got {len(bs)}")
    else:
        bs = bs or ("cr",)
        if len(bs) == 1:
            bs = bs * nmargin
        if len(bs) != nmargin:
            raise FormulaError(f"smooth {piece!r}: {len(bs)} bases for {nmargin} margins")
    for b in bs:
        if b not in BASES:
            raise FormulaError(f"smooth {piece!r}: unknown basis bs = {b!r}; allowed: "
                               f"{', '.join(repr(x) for x in BASES)}")
    if kind != "s":
        for b in bs:
            if b in ("re", "fs", "tp"):
                raise FormulaError(f"smooth {piece!r}: basis {b!r} is not supported as a "
                                   f"margin of {kind}(); use 'cr', 'cc' or 'ps' margins")
    k = _ints(opts["k"], piece, "k") if "k" in opts else (-1,)
    if kind != "s" and len(k) == 1:
        k = k * nmargin
    if len(k) != nmargin:
        raise FormulaError(f"smooth {piece!r}: {len(k)} values of k for {nmargin} margins")
    if kind == "s" and bs[0] not in ("re", "fs") and len(variables) > 1 and bs[0] != "tp":
        raise FormulaError(f"smooth {piece!r}: basis {bs[0]!r} smooths one covariate; use "
                           "te() for a smooth of several")
    if kind == "s" and bs[0] == "fs" and len(variables) != 2:
        raise FormulaError(f"smooth {piece!r}: an 'fs' smooth is s(x, g, bs = 'fs'): one "
                           "covariate and then the factor")
    by = None
    if "by" in opts:
        a = opts["by"]
        if len(a) != 1 or a[0].kind != "name":
            raise FormulaError(f"smooth {piece!r}: by= must name a column")
        by = None if a[0].text == "NA" else a[0].text
    m = _ints(opts["m"], piece, "m") if "m" in opts else None
    fx = False
    if "fx" in opts:
        a = opts["fx"]
        if len(a) != 1 or a[0].text not in ("TRUE", "FALSE", "T", "F"):
            raise FormulaError(f"smooth {piece!r}: fx= is TRUE or FALSE")
        fx = a[0].text in ("TRUE", "T")
    return SmoothCall(kind=kind, variables=tuple(variables), bs=tuple(bs), k=tuple(k), by=by,
                      m=m, fx=fx, text=piece)


def _vector(arg: list[rexpr.Token]) -> list[list[rexpr.Token]]:
    if (len(arg) >= 3 and arg[0].kind == "name" and arg[0].text == "c"
            and arg[1].text == "("):
        return [a for _, a in rexpr.split_args(arg[2:-1])]
    return [arg]


def _strings(arg: list[rexpr.Token], piece: str) -> tuple[str, ...]:
    out = []
    for a in _vector(arg):
        if len(a) != 1 or a[0].kind != "str":
            raise FormulaError(f"smooth {piece!r}: bs= takes quoted names such as 'cr'")
        out.append(a[0].text[1:-1])
    return tuple(out)


def _ints(arg: list[rexpr.Token], piece: str, what: str) -> tuple[int, ...]:
    out = []
    for a in _vector(arg):
        neg = len(a) == 2 and a[0].text == "-"
        a2 = a[1:] if neg else a
        if not rexpr.is_number(a2) or not float(a2[0].text.rstrip("L")).is_integer():
            raise FormulaError(f"smooth {piece!r}: {what}= takes whole numbers, got "
                               f"{rexpr.deparse(a)!r}")
        v = int(float(a2[0].text.rstrip("L")))
        out.append(-v if neg else v)
    return tuple(out)


def bar_smooths(bars, formula: str) -> list[SmoothCall]:
    """gamm4's random effects: each lme4 bar of a GAM formula as the ``re`` smooth it equals
    (``(1 | g)`` is ``s(g, bs = "re")``, ``(0 + x | g)`` is ``s(x, g, bs = "re")``; ``(x ||
    g)`` is both). Correlated terms (``(1 + x | g)``) have no ``re``-smooth form."""
    out = []
    for b in bars:
        if len(b.factor) != 1:
            raise FormulaError(f"formula {formula!r}: the random-effect term (… | "
                               f"{':'.join(b.factor)}) groups by an interaction; in a GAM "
                               "formula make the interaction a column first")
        g = b.factor[0]
        lhs = " ".join(b.lhs.split())
        toks = [t.strip() for t in lhs.replace("-", "+-").split("+") if t.strip()]
        intercept = "1" in toks
        cols = [t for t in toks if t not in ("0", "1", "-1")]
        if "0" in toks or "-1" in toks:
            intercept = False
        elif cols:
            intercept = True
        if (intercept and cols) or len(cols) > 1 or any(
                not c.replace("_", "").replace(".", "").isalnum() for c in cols):
            raise FormulaError(
                f"formula {formula!r}: random-effect term ({b.lhs} | {g}) is not available in "
                "a GAM formula: use independent terms, (1 | g), (0 + x | g) or (x || g) "
                "(gamm4's model with uncorrelated effects)")
        if intercept:
            out.append(SmoothCall(kind="s", variables=(g,), bs=("re",), k=(-1,),
                                  text=f"(1 | {g})", bar=True))
        else:
            out.append(SmoothCall(kind="s", variables=(cols[0], g), bs=("re",), k=(-1,),
                                  text=f"(0 + {cols[0]} | {g})", bar=True))
    return out
