"""Parse lme4's formula language into data-free pieces.

``y ~ fixed + (lhs | g) + (lhs || g) + offset(expr)``

The random-effect bars are parsed here (a small, exact grammar); the fixed part and each bar's
left-hand side stay formula strings that :mod:`formulaic` encodes later with frozen levels.

Expansions follow lme4:

* ``(x || g)`` becomes ``(1 | g) + (0 + x | g)`` (one term per column, uncorrelated);
* ``(1 | a/b)`` becomes ``(1 | b:a) + (1 | a)`` (lme4 names the inner factor ``b:a``);
* ``(1 | a:b)`` is the interaction factor, levels written ``"la:lb"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from daskmm.errors import FormulaError
from daskmm.formula import rexpr


@dataclass(frozen=True)
class BarTerm:
    """One random-effect term ``(lhs | factor)`` after expansion.

    Attributes
    ----------
    lhs : str
        Formula for the term's model columns, e.g. ``"1 + Days"`` or ``"0 + Days"``.
    factor : tuple of str
        Columns whose interaction is the grouping factor, e.g. ``("cask", "batch")``.
    """

    lhs: str
    factor: tuple[str, ...]

    @property
    def factor_name(self) -> str:
        """The factor's name as lme4 prints it (``"cask:batch"``)."""
        return ":".join(self.factor)


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed part, offsets and random-effect terms."""

    text: str
    response: str
    fixed: str
    offsets: tuple[str, ...] = ()
    bars: tuple[BarTerm, ...] = field(default_factory=tuple)

    @property
    def columns(self) -> set[str]:
        """Every data column the formula could name (identifiers in its pieces)."""
        names: set[str] = set()
        for piece in (self.response, self.fixed, *self.offsets, *(b.lhs for b in self.bars)):
            names |= identifiers(piece)
        for b in self.bars:
            names |= set(b.factor)
        return names


def identifiers(expr: str) -> set[str]:
    """Names in an R expression that may be columns (not functions, constants or argument
    names): :func:`daskmm.formula.rexpr.identifiers`."""
    return rexpr.identifiers(expr)


def split_top(text: str, seps: str) -> list[tuple[str, str]]:
    """Split ``text`` at top-level separator characters; return (separator, piece) pairs."""
    pieces: list[tuple[str, str]] = []
    depth, start, sep = 0, 0, "+"
    quote = None
    for i, ch in enumerate(text):
        if quote:  # inside `a name` or a string: nothing splits
            quote = None if ch == quote else quote
            continue
        if ch in "`'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise FormulaError(
                    f"unbalanced ')' at position {i} in {text!r}; check the parentheses")
        elif depth == 0 and ch in seps:
            # a '-' right after an operator or at the start is a sign, not a separator
            pieces.append((sep, text[start:i].strip()))
            sep, start = ch, i + 1
    if depth != 0:
        raise FormulaError(f"unbalanced '(' in {text!r}; check the parentheses")
    pieces.append((sep, text[start:].strip()))
    return pieces


def _bar_split(inner: str) -> tuple[str, str, bool] | None:
    """``"1 + x | g"`` -> (lhs, group, double); None when there is no top-level bar."""
    depth = 0
    quote = None
    for i, ch in enumerate(inner):
        if quote:
            quote = None if ch == quote else quote
            continue
        if ch == "`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            double = i + 1 < len(inner) and inner[i + 1] == "|"
            rhs = inner[i + 2:] if double else inner[i + 1:]
            return inner[:i].strip(), rhs.strip(), double
    return None


def _group_factors(group: str, where: str) -> list[tuple[str, ...]]:
    """``"a/b"`` -> [("b", "a"), ("a",)]; ``"a:b"`` -> [("a", "b")]; names may be back-quoted
    (`` `site id` ``)."""
    if not group.strip():
        raise FormulaError(f"random-effect term {where!r} has no grouping factor after '|'")
    toks = rexpr.tokenize(group)
    nest: list[list[str]] = [[]]
    expect_name = True
    for t in toks:
        if expect_name and t.kind == "name":
            nest[-1].append(t.text)
            expect_name = False
        elif not expect_name and t.kind == "op" and t.text in (":", "/"):
            if t.text == "/":
                nest.append([])
            expect_name = True
        else:
            raise FormulaError(
                f"grouping factor {group.strip()!r} in {where!r} is not a column name; use "
                "column names joined by ':' or '/' (names with spaces in back quotes)")
    if expect_name:
        raise FormulaError(f"grouping factor {group.strip()!r} in {where!r} ends with an "
                           "operator; use column names joined by ':' or '/'")
    out = []
    for depth in range(len(nest), 0, -1):
        parts: list[str] = []
        for level in reversed(nest[:depth]):
            parts.extend(level)
        # lme4 writes the innermost first: a/b -> b:a
        out.append(tuple(parts) if depth > 1 else tuple(nest[0]))
    return out


def _has_intercept(lhs: str) -> tuple[bool, list[str]]:
    pieces = split_top(lhs, "+-")
    intercept = True
    rest = []
    for sep, p in pieces:
        if p == "":
            continue
        if p in ("0", "-1") or (sep == "-" and p == "1"):
            intercept = False
        elif p == "1":
            intercept = sep != "-"
        else:
            rest.append(p)
    return intercept, rest


def parse_formula(text: str) -> ParsedFormula:
    """Parse an lme4 formula.

    Parameters
    ----------
    text : str
        e.g. ``"Reaction ~ Days + (Days | Subject)"``.

    Returns
    -------
    ParsedFormula

    Raises
    ------
    FormulaError
        When there is no ``~``, the parentheses do not balance, a bar has no grouping factor, or
        a term cannot be understood.
    """
    if not isinstance(text, str) or "~" not in text:
        raise FormulaError(
            f"formula {text!r} has no '~'; write it as lme4 does, e.g. 'y ~ x + (1 | g)'")
    lhs, _, rhs = text.partition("~")
    response = lhs.strip()
    if not response:
        raise FormulaError(f"formula {text!r} has no response before '~'")
    if "~" in rhs:
        raise FormulaError(f"formula {text!r} has more than one '~'")
    if not rhs.strip():
        raise FormulaError(f"formula {text!r} has nothing after '~'")
    split_top(response, "+")  # balance check
    fixed: list[tuple[str, str]] = []
    offsets: list[str] = []
    bars: list[BarTerm] = []
    for sep, piece in split_top(rhs, "+-"):
        if piece == "":
            if sep == "-":
                raise FormulaError(f"formula {text!r} has a dangling '-'")
            continue
        inner = piece[1:-1] if piece.startswith("(") and piece.endswith(")") else None
        split = _bar_split(inner) if inner is not None and _balanced_outer(piece) else None
        if split is not None:
            if sep == "-":
                raise FormulaError(f"cannot subtract a random-effect term: '- {piece}'")
            bars.extend(_expand_bar(*split, where=piece))
        elif piece.startswith("offset(") and piece.endswith(")"):
            offsets.append(piece[len("offset("):-1].strip())
        else:
            if "|" in piece:
                raise FormulaError(
                    f"term {piece!r} has a '|' outside parentheses; "
                    "random-effect terms are written '(lhs | group)'")
            fixed.append((sep, piece))
    fixed_text = _join(fixed)
    return ParsedFormula(text=text.strip(), response=response, fixed=fixed_text,
                         offsets=tuple(offsets), bars=tuple(bars))


def _balanced_outer(piece: str) -> bool:
    """True when the first '(' closes at the last character."""
    depth = 0
    for i, ch in enumerate(piece):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i < len(piece) - 1:
            return False
    return True


def _expand_bar(lhs: str, group: str, double: bool, where: str) -> list[BarTerm]:
    if not lhs:
        raise FormulaError(f"random-effect term {where!r} has nothing before '|'")
    factors = _group_factors(group, where)
    if double:
        intercept, rest = _has_intercept(lhs)
        lhss = (["1"] if intercept else []) + [f"0 + {p}" for p in rest]
        if not lhss:
            raise FormulaError(f"random-effect term {where!r} has no columns")
    else:
        lhss = [lhs]
    return [BarTerm(lhs=term_lhs, factor=f) for f in factors for term_lhs in lhss]


def _join(pieces: list[tuple[str, str]]) -> str:
    if not pieces:
        return "1"
    out = ""
    for sep, p in pieces:
        out += (f" {sep} " if out else ("- " if sep == "-" else "")) + p
    return out


def is_gam_formula(formula: str) -> bool:
    """Whether ``formula`` has a smooth term (``s()``, ``te()``, ``ti()``) at its top level;
    a malformed one still counts, so that its error comes from the GAM code."""
    if not isinstance(formula, str) or "~" not in formula:
        return False
    try:
        pieces = split_top(formula.partition("~")[2], "+-")
    except FormulaError:
        return False
    return any(p.startswith(("s(", "te(", "ti(")) for _, p in pieces)
