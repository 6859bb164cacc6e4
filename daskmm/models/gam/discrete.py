"""Covariate discretisation, ``bam(discrete = TRUE)``'s idea: each smooth's covariates are
rounded to a grid frozen from the first pass, so a smooth's columns are its basis at the
grid points (a small matrix ``B``) indexed by each row's grid cell, and the cross-products
come from tables of weights over the cells (:func:`daskmm.kernels.gam_stats.
discrete_cross_products`), without forming the columns.

The grid: a smooth of ``d`` covariates has ``ceil(m^(1/d))`` equally spaced values per
covariate between its minimum and maximum (so at most about ``m`` cells; ``m = 1000`` by
default); a covariate is rounded to the nearest. This is daskmm's scheme, not mgcv's
(``bam`` discretises tensor margins separately and uses its own rounding), so a discrete
fit approximates the exact one rather than reproducing ``bam(discrete = TRUE)``; compare it
with the exact fit (the benchmark prints both). Smooths with ``by``, ``re`` and ``fs``
terms keep their exact columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

DEFAULT_M = 1000


@dataclass
class Discretised:
    """One smooth's grid: ``index`` maps rows to cells; ``B`` is the smooth's columns at the
    cells (row ``c`` = cell ``c``, first covariate slowest)."""

    smooth: int
    variables: tuple[str, ...]
    lo: np.ndarray
    hi: np.ndarray
    nb: np.ndarray
    B: np.ndarray = field(repr=False)

    def index(self, frame: pd.DataFrame) -> np.ndarray:
        k = np.zeros(len(frame), dtype=np.int64)
        for v, lo, hi, nb in zip(self.variables, self.lo, self.hi, self.nb):
            x = frame[v].to_numpy(dtype=float)
            span = hi - lo if hi > lo else 1.0
            i = np.clip(np.rint((x - lo) / span * (nb - 1)), 0, nb - 1).astype(np.int64)
            k = k * int(nb) + i
        return k


def discretisable(s) -> bool:
    c = s.call
    return (c.by is None and not s.blocked and not c.bar
            and not (c.kind == "s" and c.bs[0] in ("re", "fs")))


def build(smooths: list, setup: pd.DataFrame, m: int = DEFAULT_M) -> list[Discretised]:
    """The grids of the smooths that can be discretised, from the setup rows' ranges (which
    hold every covariate's minimum and maximum)."""
    out = []
    for i, s in enumerate(smooths):
        if not discretisable(s):
            continue
        vs = s.call.variables
        d = len(vs)
        per = max(2, math.ceil(m ** (1 / d)))
        lo = np.array([float(setup[v].min()) for v in vs])
        hi = np.array([float(setup[v].max()) for v in vs])
        nb = np.full(d, per, dtype=np.int64)
        axes = [np.linspace(a, b, per) for a, b in zip(lo, hi)]
        mesh = np.meshgrid(*axes, indexing="ij")
        grid = pd.DataFrame({v: g.ravel() for v, g in zip(vs, mesh)})
        out.append(Discretised(smooth=i, variables=vs, lo=lo, hi=hi, nb=nb,
                               B=s.design(grid)))
    return out
