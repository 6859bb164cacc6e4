"""Which path fits crossed random effects (``crossed=`` of :func:`daskmm.lmm` and
:func:`daskmm.glmm`): the dense block of crossed levels, a sparse factor of it, or the
matrix-free criterion; shared by the LMM and the GLMM."""

from __future__ import annotations

from typing import TYPE_CHECKING

from daskmm.core.reterm import RandomTerm
from daskmm.errors import ModelError

if TYPE_CHECKING:
    from daskmm.formula.spec import ModelSpec
    from daskmm.kernels.stats import Layout

CROSSED_PATHS = ("auto", "dense", "sparse", "matrix-free")
"""``crossed=`` of ``daskmm.lmm`` and ``daskmm.glmm``: choose by size, the dense block of
crossed levels (exact), a sparse factor of it (exact), or the matrix-free criterion
(estimated)."""

SPARSE_MAX_FILL = 500_000
"""``crossed="auto"``: past :data:`MATRIX_FREE_MIN_LEVELS` the sparse path is taken when its
factor at the start holds at most this many non-zeros (each of its some 40 evaluations a
few hundredths of a second), else the matrix-free one. Random crossings fill in: 5,000 x
10,000 levels with 3 rows a level made 8 x 10^6 non-zeros from 10^5 (1.6 s a
factorisation)."""

MATRIX_FREE_MIN_LEVELS = 1000
"""``crossed="auto"`` leaves the dense path above this many crossed (global-block) levels,
for the sparse or the matrix-free one: the dense Cholesky of that block per evaluation then
costs more than a whole matrix-free fit (10^6 rows, 2,000 crossed levels: 53.7 s dense
against about 2 s)."""


TABLES_ON_WORKERS = 4_000_000
"""On a cluster the matrix-free path keeps the first factor's crossing tables in blocks of its
levels on the workers (:mod:`daskmm.kernels.crossed_blocks`) from this many values (their
entries times the columns of its term); below, they are summed to the client (the GLMM's at
each PIRLS step), which then makes its products with them without a round trip each (about
20 ms on a 2-core machine's local cluster). Measured there (2 workers, a binomial fit,
``benchmarks/bench_crossed.py``): at 10^6 entries the blocks took 1.75 times as long, at
4 x 10^6 1.03 times (the client growing by 0.66 GB, not 1.07 GB), at 10^7 0.84 times."""


def scalar_reason(spec: ModelSpec, slopes: bool = False) -> str | None:
    """Why the sparse and matrix-free paths cannot fit ``spec`` (None: they can): they fit
    random intercepts ``(1 | f)``, one term per factor, two factors or more; ``slopes``
    (the LMM's): one of the factors may have random slopes instead, ``(1 + x | f)``."""
    if len(spec.factors) < 2:
        return "it has one grouping factor"
    if len({t.factor for t in spec.terms}) != len(spec.terms):
        return "a factor has two terms"
    vector = [t for t in spec.terms
              if type(t) is not RandomTerm or tuple(t.columns) != ("(Intercept)",)]
    for t in vector:
        if type(t) is not RandomTerm or not slopes or t.q < 2:
            return (f"its term ({t.lhs} | {t.factor}) is not a random intercept; the sparse "
                    "and matrix-free paths fit (1 | f) terms"
                    + (", and random slopes (1 + x | f) on one factor" if slopes else ""))
    if len(vector) > 1:
        return (f"{len(vector)} factors have random slopes "
                f"({', '.join(t.factor for t in vector)}); the sparse and matrix-free paths "
                "fit random slopes on one factor, (1 | f) on the others")
    return None


def slope_factor(spec: ModelSpec) -> str | None:
    """The factor whose term has more than an intercept (random slopes), if any."""
    for t in spec.terms:
        if tuple(t.columns) != ("(Intercept)",):
            return t.factor
    return None


def choose_crossed(spec: ModelSpec, layout: Layout, crossed: str, slopes: bool = False
                   ) -> str:
    """The path :func:`daskmm.lmm` and :func:`daskmm.glmm` fit crossed random effects by:
    ``"dense"`` (one dense block of the crossed levels: any terms), ``"sparse"`` or
    ``"matrix-free"`` (random intercepts, and random slopes on one factor where ``slopes``:
    :func:`scalar_reason`), or ``"large"``: ``crossed="auto"`` past
    :data:`MATRIX_FREE_MIN_LEVELS` crossed levels, sparse or matrix-free as the sparse
    factor's size decides."""
    if crossed not in CROSSED_PATHS:
        raise ModelError(f"crossed={crossed!r}; allowed: "
                         f"{', '.join(map(repr, CROSSED_PATHS))}")
    if crossed == "dense":
        return "dense"
    reason = scalar_reason(spec, slopes)
    if crossed != "auto":
        if reason:
            raise ModelError(f"crossed={crossed!r} cannot fit this model: {reason}; use "
                             "crossed='dense' (or 'auto')")
        return crossed
    if reason is None and layout.global_factors and layout.n_G > MATRIX_FREE_MIN_LEVELS:
        return "large"
    return "dense"
