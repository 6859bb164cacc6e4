"""Which fixed-effect columns are estimable: lme4's rank check, shared by every model.

A column that is (numerically) a linear combination of the columns before it is dropped, with
a warning naming it, as lme4 does (``fixed-effect model matrix is rank deficient so dropping
N columns / coefficients``).
"""

from __future__ import annotations

import warnings

import numpy as np

from daskmm.errors import ModelError

GRAM_FLOOR = 1e-11
"""The squared relative residual at or below which a column counts as aliased
(:func:`estimable_columns`): a residual 3e-6 of the column's norm, a decade and a half above
the rounding of a cross-product (~1e-13) and below an uncentred covariate's (1e-10 for
``1000 + 0.01 z``)."""


def estimable_columns(XtX: np.ndarray, names: list[str], tol: float = 1e-7) -> np.ndarray:
    """Boolean mask of the columns to keep, from the cross-product ``X'X`` (or ``X'WX`` with
    positive weights: the same rank).

    Each column is kept when its residual on the kept columns before it, relative to its own
    norm, is above what the cross-product can resolve: the squared residual of a pivot-free
    Cholesky of the scaled matrix, in column order (so the first of two aliased columns stays,
    as lme4's QR does), against :data:`GRAM_FLOOR`. lme4's ``qr(X, tol = 1e-7)`` compares the
    unsquared residual with 1e-7, but a cross-product carries squared residuals only to
    ~1e-13 (an exactly aliased column of mlmRev's Contraception comes out at 2e-14): an
    uncentred covariate such as ``1000 + 0.01 z`` (squared residual 1e-10) is kept, as lme4
    keeps it, and an aliased column dropped, as lme4 drops it. ``tol`` is kept for the
    signature. Warns with the dropped names; raises :class:`ModelError` when none is left.
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
        if diag[j] == 0 or d <= GRAM_FLOOR:
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


def aliased_columns(X: np.ndarray, names: list[str], tol: float = 1e-10
                    ) -> list[tuple[str, list[str]]]:
    """The columns of ``X`` that are (numerically) linear combinations of the columns before
    them, each with the earlier columns it combines: ``[(name, [names it is made of]), ...]``
    (empty when ``X`` has full column rank). A column is aliased when its residual on the
    earlier independent columns is below ``tol`` times its own norm (the criterion of an
    unpivoted QR, in column order, so the first of two aliased columns is the one kept)."""
    n, p = X.shape
    out: list[tuple[str, list[str]]] = []
    kept: list[int] = []
    for j in range(p):
        x = X[:, j]
        norm = float(np.linalg.norm(x))
        if norm == 0:
            out.append((names[j], []))
            continue
        if kept:
            B = X[:, kept]
            coef, *_ = np.linalg.lstsq(B, x, rcond=None)
            resid = float(np.linalg.norm(x - B @ coef))
        else:
            coef, resid = np.zeros(0), norm
        if resid <= tol * max(norm, 1.0) * np.sqrt(n):
            big = np.abs(coef) * np.linalg.norm(X[:, kept], axis=0) > 1e-8 * norm
            out.append((names[j], [names[k] for k, b in zip(kept, big) if b]))
        else:
            kept.append(j)
    return out
