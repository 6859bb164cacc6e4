"""R's rules for printing numbers and tables, so that daskmm's summaries read as R's do.

Each function reproduces one R function (R 4.2) closely enough to give the same characters:
``format()`` of a numeric vector (``formatReal``: common decimals, fixed or scientific by
width), ``round()`` (R 4's nearest-representable rule), ``formatC(format = "g")``,
``format.pval``, ``zapsmall``, ``quantile(type = 7)``, ``abbreviate``, ``strwrap``,
``cat(fill = TRUE)``, ``printCoefmat`` and ``print.default`` of a named vector or a character
matrix. ``tests/fixtures/printouts/format_cases.json`` holds R's own answers on seeded inputs;
``tests/results/test_rformat.py`` checks every one.

Pure functions of their inputs; no model code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

WIDTH = 80
"""R's ``getOption("width")``."""
EPS = float(np.finfo(float).eps)
SIGNIF_LEGEND = "0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"
"""R's legend of the significance stars (ASCII quotes, as R prints them in a C locale)."""

_KP_MAX = 27
_TBL = [np.longdouble(0.1)] + [np.longdouble(float(10.0 ** k)) for k in range(_KP_MAX + 1)]
"""R's ``tbl``: ``tbl[k + 1] = 10^k`` as long doubles made from double literals."""


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float, np.floating, np.integer)) \
        and math.isfinite(float(x))


def _scientific(x: float, digits: int) -> tuple[int, int, int, bool]:
    """R's ``scientific()``: ``(neg, kpower, nsig, roundingwidens)`` of ``x`` at ``digits``
    significant digits, with R's long-double scaling."""
    if x == 0.0:
        return 0, 0, 1, False
    neg = 1 if x < 0 else 0
    r = -x if neg else x
    kp = math.floor(math.log10(r)) - digits + 1
    r_prec = np.longdouble(r)
    if abs(kp) <= _KP_MAX:
        if kp > 0:
            r_prec /= _TBL[kp + 1]
        elif kp < 0:
            r_prec *= _TBL[-kp + 1]
    else:
        r_prec /= np.power(np.longdouble(10.0), np.longdouble(kp))
    if r_prec < _TBL[digits]:
        r_prec *= 10
        kp -= 1
    alpha = float(np.rint(r_prec))
    nsig = digits
    for _ in range(digits):
        alpha /= 10.0
        if alpha == math.floor(alpha):
            nsig -= 1
        else:
            break
    if nsig == 0 and digits > 0:
        nsig = 1
        kp += 1
    kpower = kp + digits - 1
    rgt = min(max(digits - kpower, 0), _KP_MAX)
    fuzz = 0.5 / float(_TBL[1 + rgt])
    widens = 0 < kpower <= _KP_MAX and r < float(_TBL[kpower + 1]) - fuzz
    return neg, kpower, nsig, widens


def format_info(xs: Sequence[float], digits: int = 7, nsmall: int = 0) -> tuple[int, int, int]:
    """R's ``formatReal``: ``(w, d, e)``: field width, decimals, and 0 for fixed notation or
    the exponent's digits less one for scientific."""
    rgt = mxl = mxsl = mxns = -(10 ** 9)
    mnl = 10 ** 9
    neg = 0
    na = False
    special = 0  # the width of NaN, Inf, -Inf
    for x in xs:
        if not _finite(x):
            if x is None:
                na = True
            else:
                special = max(special, 3 if (math.isnan(x) or x > 0) else 4)
            continue
        neg_i, kpower, nsig, widens = _scientific(float(x), digits)
        left = kpower + 1 - (1 if widens else 0)
        sleft = neg_i + (1 if left <= 0 else left)
        right = nsig - left
        neg = neg or neg_i
        rgt, mxl, mnl = max(rgt, right), max(mxl, left), min(mnl, left)
        mxsl, mxns = max(mxsl, sleft), max(mxns, nsig)
    if mxns < 0:  # no finite value
        return max(2 if na else 0, special), 0, 0
    if mxl < 0:
        mxsl = 1 + neg
    rgt = max(rgt, 0)
    wf = mxsl + rgt + (rgt != 0)
    e = 2 if (mxl > 100 or mnl <= -99) else 1
    d = mxns - 1
    w = neg + (d > 0) + d + 4 + e
    if wf <= w:
        e = 0
        if nsmall > rgt:
            rgt = nsmall
            wf = mxsl + rgt + (rgt != 0)
        d, w = rgt, wf
    if na:
        w = max(w, 2)
    return max(w, special), d, e


def _encode(x, w: int, d: int, e: int, na: str = "NA") -> str:
    if not _finite(x):
        if x is None:
            return na.rjust(w)
        if math.isnan(x):
            return "NaN".rjust(w)
        return ("Inf" if x > 0 else "-Inf").rjust(w)
    x = float(x) + 0.0  # R prints a negative zero as zero
    if x == 0.0:
        x = 0.0
    if e:
        return (f"%#{w}.{d}e" if d else f"%{w}.{d}e") % x
    return f"%{w}.{d}f" % x


def format_num(xs: Sequence[float], digits: int = 7, nsmall: int = 0) -> list[str]:
    """R's ``format(x, digits = digits, nsmall = nsmall)`` of a numeric vector: one string per
    value, all of the common width (``NA`` for a missing value)."""
    w, d, e = format_info(xs, digits, nsmall)
    return [_encode(x, w, d, e) for x in xs]


def fround(x: float, digits: int) -> float:
    """R's ``round(x, digits)`` (R >= 4.0.0: the nearer of the two candidates, ties to the
    even last digit)."""
    if not _finite(x) or x == 0.0:
        return x
    x = float(x)
    if digits == 0:
        return float(np.rint(x))
    dig = int(math.floor(digits + 0.5))
    sgn = -1.0 if x < 0 else 1.0
    x = abs(x)
    if 0.30102999566398119521 * (0.5 + math.frexp(x)[1] - 1) + dig > 15:
        return sgn * x
    p10 = 10.0 ** dig if dig >= 0 else 1.0 / 10.0 ** (-dig)
    x10 = x * p10
    i10 = math.floor(x10)
    xd = i10 / p10
    xu = math.ceil(x10) / p10
    du, dd = xu - x, x - xd
    return sgn * (xu if (du < dd or (math.fmod(i10, 2.0) == 1 and du == dd)) else xd)


def fround_all(xs: Sequence[float], digits: int) -> list[float]:
    return [fround(x, digits) if _finite(x) else x for x in xs]


def format_c(x: float, digits: int, width: int | None = None, flag: str = "") -> str:
    """R's ``formatC(x, digits = digits, width = width, flag = flag)`` (format ``"g"``;
    R's default width is ``digits + 1``, and a width of 0 means ``digits``)."""
    if width is None:
        width = digits + 1
    elif width == 0:
        width = digits
    return f"%{flag}{width}.{digits}g" % float(x)


def zapsmall(xs: Sequence[float], digits: int = 7) -> list[float]:
    """R's ``zapsmall(x, digits)`` (R 4.2: ``round(x, digits - log10(max|x|))``)."""
    fin = [abs(float(x)) for x in xs if _finite(x)]
    if not fin:
        return list(xs)
    mx = max(fin)
    d = max(0.0, digits - math.log10(mx)) if mx > 0 else digits
    return fround_all(xs, int(math.floor(d + 0.5)))


def quantile7(xs: Sequence[float]) -> list[float]:
    """R's ``quantile(x)`` (type 7) at 0, .25, .5, .75, 1, with R's arithmetic."""
    x = np.sort(np.asarray([v for v in xs if _finite(v)], float))
    n = len(x)
    out = []
    for p in (0.0, 0.25, 0.5, 0.75, 1.0):
        index = 1 + max(n - 1, 0) * p
        lo, hi = math.floor(index), math.ceil(index)
        q = float(x[lo - 1])
        if index > lo and x[hi - 1] != q:
            h = index - lo
            q = (1 - h) * q + h * float(x[hi - 1])
        out.append(q)
    return out


def format_pval(pv: Sequence[float], digits: int = 3, eps: float = EPS,
                na: str = "NA") -> list[str]:
    """R's ``format.pval(pv, digits, eps)``."""
    ok = [i for i, p in enumerate(pv) if _finite(p)]
    vals = [float(pv[i]) for i in ok]
    is0 = [p < eps for p in vals]
    r = [""] * len(vals)
    rest = [i for i, z in enumerate(is0) if not z]
    rr: list[str] = []
    if rest:
        sub = [vals[i] for i in rest]
        expo = [math.floor(math.log10(p if p > 0 else 1e-50)) for p in sub]
        fixp = [ex >= -3 or (ex == -4 and digits > 1) for ex in expo]
        rr = [""] * len(sub)
        for flag in (True, False):
            idx = [j for j, f in enumerate(fixp) if f == flag]
            if idx:
                for j, s in zip(idx, format_num([sub[j] for j in idx], digits)):
                    rr[j] = s
        for i, s in zip(rest, rr):
            r[i] = s
    if any(is0):
        dg = max(1, digits - 2)
        if rest:
            nc = max(len(s) for s in rr)
            if dg > 1 and dg + 6 > nc:
                dg = max(1, nc - 7)
            sep = "" if (dg == 1 and nc <= 6) else " "
        else:
            sep = "" if dg == 1 else " "
        small = "<" + sep + format_num([eps], dg)[0]
        r = [small if z else s for s, z in zip(r, is0)]
    out = [na] * len(pv)
    for i, s in zip(ok, r):
        out[i] = s
    return out


def stars(p: float | None) -> str:
    """R's ``symnum`` significance stars (``" "`` above 0.1, ``""`` for a missing p)."""
    if not _finite(p):
        return ""
    for cut, mark in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p <= cut:
            return mark
    return " "


# ------------------------------------------------------------------ strings
def _strip_chars(s: str, minlen: int, use_classes: bool = True) -> str:
    """R's C ``stripchars`` (the work of ``abbreviate``)."""
    b = list(s.strip())

    def first(i):  # the start of a word
        return b[i - 1].isspace()

    def last(i):  # the end of a word
        return (not b[i - 1].isspace()) and (i + 1 >= len(b) or b[i + 1].isspace())

    nspace = 0

    def done() -> bool:
        return len(b) - nspace <= minlen

    finished = False
    for i in range(len(b) - 1, 0, -1):
        if b[i].isspace():
            nspace += 1
        if done():
            finished = True
            break
    passes = []
    if use_classes:
        passes = [lambda i: b[i] in "aeiou" and last(i),
                  lambda i: b[i] in "aeiou" and not first(i),
                  lambda i: b[i].islower() and last(i),
                  lambda i: b[i].islower() and not first(i)]
    passes.append(lambda i: not first(i) and not b[i].isspace())
    for rule in passes:
        if finished:
            break
        i = len(b) - 1
        while i > 0:
            if i < len(b) and rule(i):
                del b[i]
            if done():
                finished = True
                break
            i -= 1
    if len(b) > minlen:
        b = [b[0]] + [c for c in b[1:] if not c.isspace()]
    return "".join(b)


def abbreviate(names: Sequence[str], minlength: int = 4) -> list[str]:
    """R's ``abbreviate(names, minlength)`` (method ``"left.kept"``, classes used)."""
    names = [n.strip() for n in names]
    uniq = list(dict.fromkeys(names))

    def one(n: str, m: int) -> str:
        return _strip_chars(n, m) if len(n) > m else n

    x = [one(n, minlength) for n in uniq]
    m = minlength
    while True:
        seen: dict[str, int] = {}
        dup = [False] * len(x)
        for i, v in enumerate(x):
            if v in seen:
                dup[i] = True
            seen.setdefault(v, i)
        if not any(dup):
            break
        m += 1
        dups = {x[i] for i, d in enumerate(dup) if d}
        redo = [i for i, v in enumerate(x) if dup[i] or v in dups]
        for i in redo:
            x[i] = one(uniq[i], m)
    pos = {n: i for i, n in enumerate(uniq)}
    return [x[pos[n]] for n in names]


def strwrap(text: str, width: int, exdent: int = 0) -> list[str]:
    """R's ``strwrap(text, width, exdent = exdent)`` for one paragraph of single-spaced
    words: lines shorter than ``width``."""
    words = text.split()
    lines: list[str] = []
    cur = ""
    for wd in words:
        ind = 0 if not lines else exdent
        if cur and ind + len(cur) + 1 + len(wd) >= width:
            lines.append(cur)
            cur = wd
        else:
            cur = f"{cur} {wd}" if cur else wd
    lines.append(cur)
    return [(" " * exdent if i else "") + s for i, s in enumerate(lines)]


def cat_fill(items: Sequence[str], sep: str = " ", width: int = WIDTH) -> list[str]:
    """R's ``cat(..., sep = sep, fill = TRUE)``: the lines it prints (a new line before an
    item that would pass ``width``)."""
    lines, cur, w = [], "", 0
    for k, it in enumerate(items):
        if k and w + len(it) + len(sep) > width:
            lines.append(cur.rstrip(" ") if sep == " " else cur)
            cur, w = "", 0
        cur += it + (sep if k < len(items) - 1 else "")
        w += len(it) + len(sep)
    lines.append(cur)
    return lines


# ------------------------------------------------------------------ printed tables
def print_named(values: Sequence[str], names: Sequence[str], right: bool = True,
                width: int = WIDTH, gap: int = 1) -> list[str]:
    """R's ``print()`` of a named vector whose values are already formatted: names over
    values, each in the common width and followed by ``gap`` spaces (``print.gap``),
    wrapped at ``width``."""
    w = max([len(v) for v in values] + [len(n) for n in names])
    per = max(1, width // (w + gap))
    out = []
    for start in range(0, len(values), per):
        sl = slice(start, start + per)
        out.append("".join(n.rjust(w) + " " * gap for n in names[sl]))
        out.append("".join((v.rjust(w) if right else v.ljust(w)) + " " * gap
                           for v in values[sl]))
    return out


def print_matrix(cells: Sequence[Sequence[str]], rownames: Sequence[str],
                 colnames: Sequence[str], right: bool = False,
                 width: int = WIDTH) -> list[str]:
    """R's ``print(m, quote = FALSE, right = right)`` of a character matrix: row names
    left-justified, a space between columns, entries and headers right- or left-justified,
    columns wrapped into blocks that fit ``width``."""
    rw = max([len(r) for r in rownames] + [0])
    ncol = len(colnames)
    cw = [max([len(colnames[j])] + [len(row[j]) for row in cells]) for j in range(ncol)]

    def just(s: str, k: int) -> str:
        return s.rjust(k) if right else s.ljust(k)

    out: list[str] = []
    j = 0
    while j < ncol or (ncol == 0 and not out):
        used = rw
        block = []
        while j < ncol and (not block or used + 1 + cw[j] <= width):
            block.append(j)
            used += 1 + cw[j]
            j += 1
        out.append(" " * rw + "".join(" " + just(colnames[k], cw[k]) for k in block))
        for r, row in zip(rownames, cells):
            out.append(r.ljust(rw) + "".join(" " + just(row[k], cw[k]) for k in block))
        if ncol == 0:
            break
    return out


def print_coefmat(x: Sequence[Sequence[float]], rownames: Sequence[str],
                  colnames: Sequence[str], digits: int = 4, signif_stars: bool = True,
                  cs_ind: Sequence[int] | None = None, tst_ind: Sequence[int] | None = None,
                  has_pvalue: bool | None = None, na_print: str = "NA",
                  dig_tst: int | None = None) -> list[str]:
    """R's ``printCoefmat(x, digits, signif.stars, cs.ind, tst.ind, has.Pvalue,
    na.print)`` (0-based column indices): the lines it prints, with the stars' legend."""
    xm = [[None if v is None else float(v) for v in row] for row in x]
    nr, nc = len(xm), len(colnames)
    if has_pvalue is None:
        has_pvalue = nc >= 4 and colnames[-1][:3] in ("Pr(", "p-v")
    if tst_ind is None:
        k = nc - has_pvalue - 1
        tst_ind = [k]
    else:
        k = nc - has_pvalue - len(tst_ind)
    if cs_ind is None:
        cs_ind = list(range(k))
    if dig_tst is None:
        dig_tst = max(1, min(5, digits - 1))
    cf = [[""] * nc for _ in range(nr)]

    def col(j):
        return [xm[i][j] for i in range(nr)]

    if cs_ind:
        vals = [v for j in cs_ind for v in col(j)]
        acs = [abs(v) for v in vals if _finite(v)]
        if acs:
            nz = [a for a in acs if a != 0]
            # R: max(1, digits - digmin) over digmin's range: the smallest value decides
            digmin = 1 + (math.floor(math.log10(min(nz))) if nz else 0)
            rd = max(1, digits - digmin)
            f = format_num(fround_all(vals, rd), digits)
            for n, j in enumerate(cs_ind):
                for i in range(nr):
                    cf[i][j] = f[n * nr + i]
    if tst_ind:
        vals = [v for j in tst_ind for v in col(j)]
        f = format_num(fround_all(vals, dig_tst), digits)
        for n, j in enumerate(tst_ind):
            for i in range(nr):
                cf[i][j] = f[n * nr + i]
    rest = [j for j in range(nc) if j not in cs_ind and j not in tst_ind
            and not (has_pvalue and j == nc - 1)]
    for j in rest:
        f = format_num(col(j), digits)
        for i in range(nr):
            cf[i][j] = f[i]
    # values that print as zero but are not: R formats them again with fewer digits
    okp = [j for j in range(nc) if j not in tst_ind and not (has_pvalue and j == nc - 1)]
    bad = [(i, j) for j in okp for i in range(nr) if _finite(xm[i][j])
           and (xm[i][j] == 0) != (float(cf[i][j]) == 0)]
    if bad:
        f = format_num([xm[i][j] for i, j in bad], max(1, digits - 1))
        for (i, j), s in zip(bad, f):
            cf[i][j] = s
    for i in range(nr):
        for j in range(nc):
            if xm[i][j] is None:
                cf[i][j] = na_print
            elif math.isnan(xm[i][j]):
                cf[i][j] = "NaN"
            elif not math.isfinite(xm[i][j]):
                cf[i][j] = "Inf" if xm[i][j] > 0 else "-Inf"
    heads = list(colnames)
    show = False
    if has_pvalue:
        pv = col(nc - 1)
        okrows = [i for i in range(nr) if _finite(pv[i])]
        if okrows:
            f = format_pval([pv[i] for i in okrows], dig_tst)
            for i, s in zip(okrows, f):
                cf[i][nc - 1] = s
            show = signif_stars and any(pv[i] < 0.1 for i in okrows)
            if show:
                st = [stars(p) if _finite(p) else "" for p in pv]
                sw = max(len(s) for s in st)
                for i in range(nr):
                    cf[i].append(st[i].ljust(sw))
                heads.append("")
    lines = print_matrix(cf, rownames, heads, right=True)
    if show:
        lines += ["---", f"Signif. codes:  {SIGNIF_LEGEND}"]
    return lines
