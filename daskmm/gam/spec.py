"""The frozen model of a GAM: parametric part, smooths, coefficient layout and penalties.

A :class:`GamSpec` is built once, on the client, from the first pass's setup rows; it is
small and pickles to the workers, where :meth:`GamSpec.design` builds any partition's model
matrix. Coefficients are in mgcv's order: the parametric columns, then each smooth's columns
in formula order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from daskmm.data.rows import DropCounts
from daskmm.formula.spec import ModelSpec
from daskmm.gam.smooth import Smooth
from daskmm.kernels.freml import Penalties, PenaltyBlock


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
    """

    param: ModelSpec
    smooths: list[Smooth]
    columns: list[str]

    @property
    def n_param(self) -> int:
        return len(self.param.fixef_names)

    @property
    def p(self) -> int:
        return self.n_param + sum(s.p for s in self.smooths)

    def slices(self) -> list[slice]:
        """The coefficients of each smooth."""
        out, o = [], self.n_param
        for s in self.smooths:
            out.append(slice(o, o + s.p))
            o += s.p
        return out

    def coef_names(self) -> list[str]:
        """As mgcv names them: ``(Intercept)``, ``s(x0).1``, ..."""
        names = list(self.param.fixef_names)
        for s in self.smooths:
            names += [f"{s.label}.{i + 1}" for i in range(s.p)]
        return names

    def penalties(self) -> Penalties:
        blocks = [PenaltyBlock(sl.start, sl.stop, s.S)
                  for s, sl in zip(self.smooths, self.slices()) if s.S]
        return Penalties(self.p, blocks)

    def prepare(self, df: pd.DataFrame) -> tuple[pd.DataFrame, DropCounts]:
        """Complete rows of the columns the model uses (rows missing one are dropped and
        counted by column, as ``na.omit``)."""
        return self.param.prepare(df)

    def design(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                 DropCounts]:
        """``(y, X, w, dropped)`` of one partition; ``y`` has the offset subtracted."""
        enc = self.param.encode(df)
        frame, _ = self.param.prepare(df)
        mats = [np.asarray(enc.X, dtype=float)]
        for s in self.smooths:
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
