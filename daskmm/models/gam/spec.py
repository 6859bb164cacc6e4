"""The frozen model of a GAM: parametric part, smooths, coefficient layout and penalties.

A :class:`GamSpec` is built once, on the client, from the first pass's setup rows; it is
small and pickles to the workers, where :meth:`GamSpec.design` builds any partition's model
matrix. Coefficients are in mgcv's order: the parametric columns, then each smooth's columns
in formula order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from daskmm.data.rows import DropCounts
from daskmm.formula.spec import ModelSpec
from daskmm.kernels.freml import Penalties, PenaltyBlock
from daskmm.models.gam.smooth import Smooth


@dataclass
class GamSpec:
    """Parametric :class:`~daskmm.formula.spec.ModelSpec` plus the frozen smooths.

    Attributes
    ----------
    param : ModelSpec
        Response, weights, offsets and parametric columns (with frozen encodings).
    smooths : list of Smooth
        In mgcv's order.
    columns : list of str
        Every data column the model reads.
    ar_rho : float
        AR1 correlation of the residuals within a series (bam's ``rho``; 0: independent).
    ar_start : str or None
        Logical column, true where a series starts (bam's ``AR.start``).
    discrete : list of Discretised
        The smooths fitted on a covariate grid (:mod:`daskmm.models.gam.discrete`); empty for the
        exact fit.
    notes : list of str
        Warnings from freezing the model (mgcv's for a repeated 1-d smooth).
    """

    param: ModelSpec
    smooths: list[Smooth]
    columns: list[str]
    ar_rho: float = 0.0
    ar_start: str | None = None
    discrete: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def n_param(self) -> int:
        return len(self.param.fixef_names)

    @property
    def p(self) -> int:
        return self.n_param + sum(s.p for s in self.smooths)

    @property
    def p_dense(self) -> int:
        """Coefficients with a model column: all but the blocked ``re`` terms'."""
        return self.n_param + sum(s.p for s in self.smooths if not s.blocked)

    @property
    def blocked(self) -> list[int]:
        """Indices of the smooths kept as a per-level block (``re`` terms on one factor with
        many levels; see :mod:`daskmm.kernels.freml_blocked`)."""
        return [i for i, s in enumerate(self.smooths) if s.blocked]

    @property
    def n_levels(self) -> int:
        """Levels of the blocked factor (0 without one)."""
        b = self.blocked
        return self.smooths[b[0]].p if b else 0

    def slices(self) -> list[slice]:
        """The coefficients of each smooth (in the smooths' order). Coefficients are laid out
        as the parametric ones, the dense smooths' in formula order, then the blocked terms'
        (all levels of the first blocked term, then the next); without blocked terms this
        is mgcv's order."""
        out: list[slice | None] = [None] * len(self.smooths)
        o = self.n_param
        for dense in (True, False):
            for i, s in enumerate(self.smooths):
                if (not s.blocked) == dense:
                    out[i] = slice(o, o + s.p)
                    o += s.p
        return out

    def sp_order(self) -> np.ndarray:
        """For each smoothing parameter in mgcv's order (the smooths' order), its position in
        the fit's order (the dense penalties first, then one per blocked term)."""
        fit_pos, k = {}, 0
        for dense in (True, False):
            for i, s in enumerate(self.smooths):
                if (not s.blocked) == dense:
                    for j in range(1 if s.blocked else len(s.S)):
                        fit_pos[(i, j)] = k
                        k += 1
        return np.array([fit_pos[(i, j)] for i, s in enumerate(self.smooths)
                         for j in range(1 if s.blocked else len(s.S))], dtype=int)

    def level_columns(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The blocked terms' ``(codes, Zv)`` of complete rows: the level of the blocked
        factor (-1 for one the fit did not see) and one value column per blocked term."""
        b = self.blocked
        codes, vals = None, []
        for i in b:
            codes, v = self.smooths[i].level_values(frame)
            vals.append(v)
        return codes, np.column_stack(vals) if vals else np.zeros((len(frame), 0))

    def blocked_scales(self) -> np.ndarray:
        return np.array([self.smooths[i].blocked_scale for i in self.blocked], dtype=float)

    def coef_names(self) -> list[str]:
        """As mgcv names them: ``(Intercept)``, ``s(x0).1``, ..."""
        names = [""] * self.p
        names[:self.n_param] = list(self.param.fixef_names)
        for s, sl in zip(self.smooths, self.slices()):
            names[sl] = [f"{s.label}.{i + 1}" for i in range(s.p)]
        return names

    def penalties(self) -> Penalties:
        """The dense coefficients' penalties (blocked terms are not in it)."""
        blocks = [PenaltyBlock(sl.start, sl.stop, s.S)
                  for s, sl in zip(self.smooths, self.slices()) if s.S and not s.blocked]
        return Penalties(self.p_dense, blocks)

    def prepare(self, df: pd.DataFrame) -> tuple[pd.DataFrame, DropCounts]:
        """Complete rows of the columns the model uses (rows missing one are dropped and
        counted by column, as ``na.omit``)."""
        return self.param.prepare(df)

    def design(self, df: pd.DataFrame, exact: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, DropCounts]:
        """``(y, X, w, dropped)`` of one partition; ``y`` has the offset subtracted. ``X``
        holds the dense columns only (parametric and smooth; blocked terms are read with
        :meth:`level_columns`); discretised smooths at their grid cells unless ``exact``
        (predictions use the exact covariates)."""
        enc = self.param.encode(df)
        frame, _ = self.param.prepare(df)
        mats = [np.asarray(enc.X, dtype=float)]
        grids = {} if exact else {d.smooth: d for d in self.discrete}
        for i, s in enumerate(self.smooths):
            if i in grids:  # the smooth at its grid cell (the discretised model)
                mats.append(grids[i].B[grids[i].index(frame)])
            elif not s.blocked:
                mats.append(s.design(frame))
        X = np.hstack(mats) if len(mats) > 1 else mats[0].copy()
        return np.asarray(enc.y, dtype=float).copy(), X, (
            None if enc.w is None else np.asarray(enc.w, dtype=float).copy()), enc.n_dropped

    def offset(self, df: pd.DataFrame) -> np.ndarray:
        """The offset of each complete row (zeros without one)."""
        frame, _ = self.param.prepare(df)
        enc = self.param.encode(df)
        y_raw = frame[self.param._response_column].to_numpy(dtype=float) \
            if self.param._response_column else None
        if y_raw is None or not self.param._offset_specs:
            return np.zeros(len(frame))
        return y_raw - enc.y

    def ar_starts(self, df: pd.DataFrame) -> np.ndarray:
        """Whether each complete row starts an AR1 series (all false without ``ar_start``)."""
        frame, _ = self.param.prepare(df)
        if self.ar_start is None:
            return np.zeros(len(frame), dtype=bool)
        return frame[self.ar_start].to_numpy().astype(bool)

    def discrete_parts(self, df: pd.DataFrame):
        """For :func:`daskmm.kernels.gam_stats.discrete_cross_products`: ``(y, Xd, w,
        dropped, dense_pos, terms)``, ``Xd`` the columns that are not discretised."""
        enc = self.param.encode(df)
        frame, _ = self.param.prepare(df)
        grids = {d.smooth: d for d in self.discrete}
        mats = [np.asarray(enc.X, dtype=float)]
        pos = [np.arange(self.n_param)]
        terms = []
        for i, (s, sl) in enumerate(zip(self.smooths, self.slices())):
            if i in grids:
                terms.append((grids[i].index(frame), grids[i].B, np.arange(sl.start, sl.stop)))
            elif not s.blocked:
                mats.append(s.design(frame))
                pos.append(np.arange(sl.start, sl.stop))
        Xd = np.hstack(mats) if len(mats) > 1 else mats[0]
        w = None if enc.w is None else np.asarray(enc.w, dtype=float)
        return (np.asarray(enc.y, dtype=float), Xd, w, enc.n_dropped, np.concatenate(pos),
                terms)
