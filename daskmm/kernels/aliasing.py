"""Which fixed-effect columns are estimable: lme4's rank check, shared by every model.

A column that is (numerically) a linear combination of the columns before it is dropped, with
a warning naming it, as lme4 does (``fixed-effect model matrix is rank deficient so dropping
N columns / coefficients``).
"""

from __future__ import annotations

import warnings

import numpy as np

from daskmm.errors import ModelError


def estimable_columns(XtX: np.ndarray, names: list[str], tol: float = 1e-7) -> np.ndarray:
    """Boolean mask of the columns to keep, from the cross-product ``X'X`` (or ``X'WX`` with
    positive weights: the same rank).

    Each column is kept when its squared residual on the kept columns before it, relative to
    its own sum of squares, exceeds ``tol`` (a pivot-free Cholesky of the scaled matrix in
    column order, so the first of two aliased columns stays, as lme4's QR does). Warns with
    the dropped names; raises :class:`ModelError` when none is left.
    """
    p = XtX.shape[0]
    keep = np.ones(p, dtype=bool)
    if p == 0:
        return keep
    diag = np.diag(XtX)
    scale = np.sqrt(np.maximum(diag, 1e-300))
    C = XtX / np.outer(scale, scale)
    L = np.zeros((p, p))
    kept: list[int] = []
    for j in range(p):
        v = np.linalg.solve(L[np.ix_(kept, kept)], C[kept, j]) if kept else np.zeros(0)
        d = C[j, j] - v @ v
        if diag[j] == 0 or d <= tol:
            keep[j] = False
            continue
        if kept:
            L[j, kept] = v
        L[j, j] = np.sqrt(d)
        kept.append(j)
    if not keep.any():
        raise ModelError("every fixed-effect column is zero or aliased; check the fixed part "
                         "of the formula")
    if not keep.all():
        dropped = [names[j] for j in np.flatnonzero(~keep)]
        warnings.warn(f"fixed-effect model matrix is rank deficient so dropping "
                      f"{len(dropped)} column(s): {', '.join(dropped)}", stacklevel=4)
    return keep
