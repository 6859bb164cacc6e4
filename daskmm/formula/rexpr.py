"""R expressions inside formulas: tokens, names, R's printed form, and Python code.

lme4 formulas are R code. This module reads the pieces daskmm needs, as R reads them:

* names are R names: letters (any alphabet), digits, ``.`` and ``_`` (``dose.mg``, ``größe``),
  or any text between back quotes (`` `my var` ``);
* inside a call (``I(x^2)``, ``log(dose + 1)``) ``^`` is a power, as in R (Python would read
  it as exclusive or);
* :func:`deparse` prints an expression as R's ``deparse`` does, which is how R names model
  columns (``I(age^2)``, ``log(x + 1)``, `` `my var` ``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from daskmm.errors import FormulaError

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<bq>`[^`]*`)
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?L?)
  | (?P<name>(?:[^\W\d]|\.(?![\d]))[\w.]*)
  | (?P<str>"[^"]*"|'[^']*')
  | (?P<op>%[^%]*%|\*\*|==|!=|<=|>=|&&|\|\||[-+*/^:~|(),=<>!&])
""", re.VERBOSE)

R_CONSTANTS = {"pi", "TRUE", "FALSE", "T", "F", "NA", "Inf", "NaN", "NULL"}
_RESERVED = {"if", "else", "repeat", "while", "function", "for", "next", "break", "TRUE",
             "FALSE", "NULL", "Inf", "NaN", "NA", "in"}
_SYNTACTIC = re.compile(r"^(?:[^\W\d_]|\.(?!\d))[\w.]*$|^\.$")


@dataclass(frozen=True)
class Token:
    kind: str  # "name", "num", "str", "op"
    text: str  # for names: the name itself, back quotes removed
    start: int
    end: int
    quoted: bool = False


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``; raises :class:`FormulaError` at a character R would not read."""
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise FormulaError(f"cannot read {text[pos:pos + 10]!r} at position {pos} of "
                               f"{text!r}; names with spaces or symbols go in back quotes, "
                               "e.g. `my var`")
        kind = m.lastgroup
        if kind != "ws":
            s = m.group()
            if kind == "bq":
                out.append(Token("name", s[1:-1], m.start(), m.end(), quoted=True))
            else:
                out.append(Token(kind, s, m.start(), m.end()))
        pos = m.end()
    return out


def is_syntactic(name: str) -> bool:
    """A name R writes without back quotes."""
    return bool(_SYNTACTIC.match(name)) and name not in _RESERVED


def r_quote(name: str) -> str:
    """A name as R prints it in a coefficient name: `` `my var` `` for a non-syntactic one."""
    return name if is_syntactic(name) else f"`{name}`"


def matching_paren(tokens: list[Token], i: int) -> int:
    """Index of the ``)`` closing the ``(`` at ``tokens[i]``."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j].text == "(" and tokens[j].kind == "op":
            depth += 1
        elif tokens[j].text == ")" and tokens[j].kind == "op":
            depth -= 1
            if depth == 0:
                return j
    raise FormulaError("unbalanced '(' in the formula; check the parentheses")


def is_call(tokens: list[Token], i: int) -> bool:
    return (tokens[i].kind == "name" and not tokens[i].quoted and i + 1 < len(tokens)
            and tokens[i + 1].kind == "op" and tokens[i + 1].text == "(")


def identifiers(text: str) -> set[str]:
    """Names in an R expression that may be data columns: every name that is not called as a
    function, is not an R constant and is not an argument name (``degree =``)."""
    toks = tokenize(text)
    out = set()
    for i, t in enumerate(toks):
        if t.kind != "name" or is_call(toks, i):
            continue
        if not t.quoted and t.text in R_CONSTANTS:
            continue
        if i + 1 < len(toks) and toks[i + 1].text == "=" and i > 0 and toks[i - 1].text in (
                ",", "("):
            continue
        out.add(t.text)
    return out


_BINARY_SPACED = {"+", "-", "*", "==", "!=", "<", ">", "<=", ">=", "&", "|", "&&", "||", "~",
                  "="}
_NUMBER = re.compile(r"^(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def _deparse_number(s: str) -> str:
    s = s.rstrip("L")
    v = float(s)
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.15g}"


def deparse(tokens: list[Token]) -> str:
    """``tokens`` printed as R's ``deparse`` prints the expression: spaces around binary
    ``+ - * == ...`` and ``=``, none around ``^``, ``:`` and ``/``, ``", "`` between
    arguments, numbers without trailing zeros, non-syntactic names in back quotes."""
    out = []
    prev: Token | None = None
    for t in tokens:
        if t.kind == "name":
            piece = t.text if not t.quoted and t.text in _RESERVED | R_CONSTANTS \
                else r_quote(t.text)
        elif t.kind == "num":
            piece = _deparse_number(t.text)
        elif t.kind == "str":
            piece = '"' + t.text[1:-1] + '"'
        else:
            piece = t.text
        unary = t.kind == "op" and t.text in "+-" and (
            prev is None or (prev.kind == "op" and prev.text not in (")",)))
        if t.kind == "op" and t.text == ",":
            out.append(", ")
        elif t.kind == "op" and t.text in _BINARY_SPACED and not unary:
            out.append(f" {piece} ")
        else:
            out.append(piece)
        prev = t
    return "".join(out).replace("( ", "(")


def to_python(tokens: list[Token], names: dict[str, str], functions: dict[str, str]) -> str:
    """Python code for an R arithmetic expression: names mapped through ``names`` (data
    column -> variable), calls through ``functions`` (R -> Python name), ``^`` -> ``**``,
    ``%%`` -> ``%``, ``%/%`` -> ``//``, R's constants."""
    out = []
    for i, t in enumerate(tokens):
        if t.kind == "name":
            if is_call(tokens, i):
                if t.text not in functions:
                    raise FormulaError(
                        f"function {t.text!r} is not available inside a formula term; use one "
                        f"of: {', '.join(sorted(functions))}")
                out.append(functions[t.text])
            elif t.text in names:
                out.append(names[t.text])
            elif not t.quoted and t.text in ("pi", "TRUE", "T", "FALSE", "F"):
                out.append({"pi": "pi", "TRUE": "True", "T": "True"}.get(t.text, "False"))
            else:
                raise FormulaError(f"{t.text!r} in a formula term is neither a column of the "
                                   "data nor a number")
        elif t.kind == "num":
            out.append(t.text.rstrip("L"))
        elif t.kind == "str":
            raise FormulaError(f"text {t.text} cannot be used inside a numeric formula term")
        elif t.text == "^":
            out.append("**")
        elif t.text == "%%":
            out.append("%")
        elif t.text == "%/%":
            out.append("//")
        elif t.text in ("+", "-", "*", "/", "(", ")", ",", "**", "<", ">", "<=", ">=", "==",
                        "!=", "&", "|"):
            out.append(t.text)
        else:
            raise FormulaError(f"operator {t.text!r} is not available inside a formula term")
    return _logical_precedence(out)


def _logical_precedence(parts: list[str]) -> str:
    """Python code from translated tokens, with R's precedence for ``&`` and ``|``: in R they
    bind more loosely than comparisons (``x > 0 & z < 1``), in Python (on arrays, bitwise)
    more tightly, so at each level of parentheses the operands of ``&`` and ``|`` are put in
    parentheses of their own."""
    stack: list[list[str]] = [[]]
    for p in parts:
        if p == "(":
            stack.append([])
        elif p == ")" and len(stack) > 1:
            inner = _level(stack.pop())
            stack[-1].append("(" + inner + ")")
        else:
            stack[-1].append(p)
    while len(stack) > 1:  # unbalanced: left for Python to report
        inner = _level(stack.pop())
        stack[-1].append("(" + inner)
    return _level(stack[0])


def _level(parts: list[str]) -> str:
    args, cur = [], []
    for p in parts + [","]:
        if p == ",":
            pieces, piece = [], []
            for q in cur + ["&"]:
                if q in ("&", "|"):
                    pieces.append((" ".join(piece), q))
                    piece = []
                else:
                    piece.append(q)
            if len(pieces) == 1:
                args.append(pieces[0][0])
            else:
                args.append(" ".join(f"({code}) {op}" for code, op in pieces[:-1]) +
                            f" ({pieces[-1][0]})")
            cur = []
        else:
            cur.append(p)
    return ", ".join(args)


def split_args(tokens: list[Token]) -> list[tuple[str | None, list[Token]]]:
    """The arguments of a call, ``tokens`` being what lies between its parentheses: a list of
    ``(name or None, tokens)``."""
    args: list[tuple[str | None, list[Token]]] = []
    depth, cur = 0, []
    for t in tokens:
        if t.kind == "op" and t.text == "(":
            depth += 1
        elif t.kind == "op" and t.text == ")":
            depth -= 1
        if depth == 0 and t.kind == "op" and t.text == ",":
            args.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur or args:
        args.append(cur)
    named = []
    for a in args:
        if len(a) >= 2 and a[0].kind == "name" and a[1].kind == "op" and a[1].text == "=":
            named.append((a[0].text, a[2:]))
        else:
            named.append((None, a))
    return named


def is_number(tokens: list[Token]) -> bool:
    return len(tokens) == 1 and tokens[0].kind == "num" and bool(
        _NUMBER.match(tokens[0].text.rstrip("L")))
