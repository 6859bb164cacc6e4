"""Random-effect terms: the relative covariance factor ``Lambda`` and its parameters ``theta``.

A term ``(1 + x | g)`` has ``q = 2`` model columns per level of ``g``. Its covariance is
``sigma^2 Lambda_t Lambda_t'`` with ``Lambda_t`` lower triangular; ``theta_t`` holds the lower
triangle column by column (lme4's order), so ``theta = [L11, L21, L22]``. Diagonal entries are
bounded below by zero, off-diagonal ones are free. The starting value is the identity, as lme4.

Terms on the same factor are stacked block-diagonally into one ``Lambda`` per factor level.

Every kind of random-effect term the engine fits follows the small protocol :class:`ReTerm`:
its parameters (``n_theta``, ``theta_init``, ``theta_lower``), ``Lambda(theta)``, and where
its block lives (``placement``): ``None`` for an lme4 bar, whose block the layout makes local
to a level of the primary factor (the primary factor itself and factors nested in it) or
global (crossed factors, :func:`daskmm.models.shared.structure.choose_layout`); ``"global"`` for a
term whose block is one dense or sparse block over all its coefficients (a smooth's penalised
block, a kinship term). ``Lambda`` is linear in ``theta``, so ``Lambda`` at a unit vector is
its derivative, which the exact gradient uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ReTerm(Protocol):
    """What the engine needs of a random-effect term."""

    factor: str
    placement: ClassVar[str | None]

    @property
    def q(self) -> int:
        """Columns per level."""

    @property
    def n_theta(self) -> int:
        """Number of covariance parameters."""

    def Lambda(self, theta_t: np.ndarray) -> np.ndarray:
        """The ``q x q`` relative covariance factor (linear in ``theta_t``)."""

    def theta_init(self) -> np.ndarray:
        """lme4's start."""

    def theta_lower(self) -> np.ndarray:
        """Lower bounds (0 for a standard deviation, ``-inf`` for a free parameter)."""

    def theta_names(self) -> list[str]:
        """lme4's names of the covariance parameters."""


@dataclass(frozen=True)
class RandomTerm:
    """One ``(lhs | factor)`` term.

    Attributes
    ----------
    factor : str
        Grouping factor name as lme4 prints it.
    columns : tuple of str
        Names of the term's model columns (``"(Intercept)"``, ``"Days"``).
    lhs : str
        The left-hand side formula it was built from.
    """

    factor: str
    columns: tuple[str, ...]
    lhs: str

    placement: ClassVar[str | None] = None  # the layout decides: local or global

    @property
    def q(self) -> int:
        return len(self.columns)

    @property
    def n_theta(self) -> int:
        return self.q * (self.q + 1) // 2

    def tril_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the lower triangle in column-major order, lme4's theta order."""
        rows, cols = [], []
        for j in range(self.q):
            for i in range(j, self.q):
                rows.append(i)
                cols.append(j)
        return np.array(rows), np.array(cols)

    def Lambda(self, theta_t: np.ndarray) -> np.ndarray:
        """``q x q`` lower-triangular relative covariance factor."""
        L = np.zeros((self.q, self.q))
        r, c = self.tril_index()
        L[r, c] = theta_t
        return L

    def theta_init(self) -> np.ndarray:
        r, c = self.tril_index()
        return (r == c).astype(float)

    def theta_names(self) -> list[str]:
        """lme4's names of ``theta`` (``getME(m, "theta")``): ``Subject.(Intercept)``,
        ``Subject.Days.(Intercept)``, ``Subject.Days``."""
        r, c = self.tril_index()
        return [f"{self.factor}.{self.columns[i]}" if i == j else
                f"{self.factor}.{self.columns[i]}.{self.columns[j]}" for i, j in zip(r, c)]

    def theta_lower(self) -> np.ndarray:
        r, c = self.tril_index()
        return np.where(r == c, 0.0, -np.inf)


def split_theta(terms: list[RandomTerm], theta: np.ndarray) -> list[np.ndarray]:
    """Split the full ``theta`` into one slice per term."""
    out, k = [], 0
    for t in terms:
        out.append(np.asarray(theta[k:k + t.n_theta], dtype=float))
        k += t.n_theta
    return out


@lru_cache(maxsize=256)
def _fill_index(terms: tuple[RandomTerm, ...], term_ids: tuple[int, ...]):
    """``(size, rows, cols, theta positions)`` placing ``theta`` into a factor's ``Lambda``."""
    start = np.cumsum([0] + [t.n_theta for t in terms])
    rows, cols, pos, off = [], [], [], 0
    for i in term_ids:
        r, c = terms[i].tril_index()
        rows.append(r + off)
        cols.append(c + off)
        pos.append(np.arange(start[i], start[i] + terms[i].n_theta))
        off += terms[i].q
    def cat(parts):
        return np.concatenate(parts) if parts else np.zeros(0, dtype=int)
    return off, cat(rows), cat(cols), cat(pos)


def factor_Lambda(terms: list[RandomTerm], term_ids: list[int], theta: np.ndarray) -> np.ndarray:
    """Block-diagonal ``Lambda`` for one level of a factor carrying ``term_ids``."""
    size, rows, cols, pos = _fill_index(tuple(terms), tuple(term_ids))
    out = np.zeros((size, size))
    out[rows, cols] = np.asarray(theta, dtype=float)[pos]
    return out


def lambdas(terms: list[RandomTerm], factors, theta: np.ndarray) -> dict[str, np.ndarray]:
    """Per-factor ``Lambda`` blocks (``factors``: objects with ``name`` and ``terms``, the
    indices of their terms); ``Lambda`` is linear in ``theta``, so at a unit vector this is the
    derivative along that parameter."""
    return {f.name: factor_Lambda(terms, f.terms, theta) for f in factors}
