"""Random-effect terms: the relative covariance factor ``Lambda`` and its parameters ``theta``.

A term ``(1 + x | g)`` has ``q = 2`` model columns per level of ``g``. Its covariance is
``sigma^2 Lambda_t Lambda_t'`` with ``Lambda_t`` lower triangular; ``theta_t`` holds the lower
triangle column by column (lme4's order), so ``theta = [L11, L21, L22]``. Diagonal entries are
bounded below by zero, off-diagonal ones are free. The starting value is the identity, as lme4.

Terms on the same factor are stacked block-diagonally into one ``Lambda`` per factor level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import block_diag


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


def factor_Lambda(terms: list[RandomTerm], term_ids: list[int], theta: np.ndarray) -> np.ndarray:
    """Block-diagonal ``Lambda`` for one level of a factor carrying ``term_ids``."""
    parts = split_theta(terms, theta)
    return block_diag(*[terms[i].Lambda(parts[i]) for i in term_ids])
