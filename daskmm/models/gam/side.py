"""Identifiability of nested smooths, as mgcv's ``gam.side`` (mgcv 1.8-41): a smooth whose
covariates overlap those of lower-dimensional smooths (``s(x0) + s(x0, x1)``, ``s(x0) +
s(x1) + te(x0, x1)``, or a 1-d smooth repeated) can reproduce part of their span; the columns
that make it do so are deleted from the higher-dimensional smooth, with the rows and columns
of its penalties, and the penalties' ranks recomputed.

mgcv's rule, followed here step by step:

* each smooth's variable names are its covariates, suffixed by its ``by`` variable (and the
  level of a ``by`` factor), so ``s(x0)`` and ``s(x0, by = z)`` do not overlap; ``re`` and
  ``fs`` terms are never constrained (mgcv's ``side.constrain = FALSE``);
* smooths are visited by dimension, then formula order; a smooth is tested against every
  smooth listed before it under any of its variables (lower dimension, or the same
  dimension earlier in the formula), plus a constant column when the parametric part spans
  one (:func:`spans_constant`);
* :func:`fix_dependence` (mgcv's ``fixDependence``): the columns of the smooth, projected
  off the lower terms' columns, by a column-pivoted QR; the trailing pivots whose block of
  ``R`` averages below ``sqrt(eps)`` times the lower terms' first pivot are the columns
  deleted. The same LAPACK routines as R's ``qr(LAPACK = TRUE)`` and ``qr.qty``.

mgcv uses the setup rows (bam's ``mini.mf``) and the constrained columns (after the
sum-to-zero constraint); so does :func:`constrain`. Where the setup rows are fewer than the
model's columns mgcv tests penalty-augmented columns instead; that case is refused.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy.linalg import lapack

from daskmm.errors import DataError
from daskmm.models.gam.smooth import Smooth

TOL = float(np.finfo(float).eps ** 0.5)
"""``fixDependence``'s and ``gam.side``'s tolerance."""


def _geqp3(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LAPACK's column-pivoted QR (R's ``qr(A, LAPACK = TRUE)``): the packed factor, the
    0-based pivots and the Householder scalars."""
    qr, jpvt, tau, _, info = lapack.dgeqp3(np.asfortranarray(A, dtype=float))
    if info != 0:
        raise np.linalg.LinAlgError(f"dgeqp3 failed (info {info})")
    return qr, np.asarray(jpvt, dtype=np.int64) - 1, tau


def _qty(qr: np.ndarray, tau: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``Q' C`` for the QR in ``qr``/``tau`` (R's ``qr.qty``, LAPACK's ``dormqr``)."""
    C = np.asfortranarray(C, dtype=float)
    _, work, info = lapack.dormqr("L", "T", qr, tau, C, -1)
    cq, _, info = lapack.dormqr("L", "T", qr, tau, C, int(work[0].real))
    if info != 0:
        raise np.linalg.LinAlgError(f"dormqr failed (info {info})")
    return cq


def fix_dependence(X1: np.ndarray, X2: np.ndarray, tol: float = TOL) -> np.ndarray | None:
    """The columns of ``X2`` to delete so that ``[X1, X2]`` has full column rank (0-based, in
    pivot order), or None: mgcv's ``fixDependence(X1, X2, tol)``.

    Parameters
    ----------
    X1 : ndarray (n, r)
        The lower-order terms' columns (a constant column first where the model has one).
    X2 : ndarray (n, p)
        The smooth's columns.
    tol : float
        Relative to ``|R[0, 0]|`` of ``X1``'s QR.
    """
    n, r = X1.shape
    if n <= r:
        return None
    qr1, _, tau1 = _geqp3(X1)
    r11 = abs(qr1[0, 0])
    qtx2 = _qty(qr1, tau1, X2)[r:, :]
    qr2, piv, _ = _geqp3(qtx2)
    R = np.triu(qr2[:min(qtx2.shape), :])
    rr = R.shape[0]  # R's rows: min(n - r, p)
    r0 = rr  # 1-based, as mgcv's loop: mean |R[r0:r, r0:r]| below R11 * tol
    while r0 > 0 and np.mean(np.abs(R[r0 - 1:rr, r0 - 1:rr])) < r11 * tol:
        r0 -= 1
    if r0 + 1 > rr:
        return None
    return piv[r0:rr]


def spans_constant(Xp: np.ndarray) -> bool:
    """Whether the parametric columns hold a constant, or one is in their span (mgcv's test,
    at ``eps^0.75``)."""
    if Xp.shape[1] == 0 or Xp.shape[0] == 0:
        return False
    small = float(np.finfo(float).eps ** 0.75)
    if np.any(np.std(Xp, axis=0, ddof=1) < small):
        return True
    f = np.ones(Xp.shape[0])
    coef, *_ = np.linalg.lstsq(Xp, f, rcond=None)
    return bool(np.max(np.abs(Xp @ coef - f)) < small)


def _names(s: Smooth) -> list[str]:
    c = s.call
    vn = list(c.variables)
    if c.by is not None:
        vn = [v + c.by for v in vn]
    if s.by_level is not None:
        vn = [v + s.by_level for v in vn]
    return vn


def _constrained(s: Smooth) -> bool:
    """mgcv's ``side.constrain``: false for ``re`` and ``fs`` terms (random effects)."""
    c = s.call
    return not (s.blocked or (c.kind == "s" and c.bs[0] in ("re", "fs")))


def _rank(S: np.ndarray, tol: float = TOL) -> int:
    """The numerical rank of a penalty (R's ``qr(S, tol)$rank``; its singular values at
    ``tol`` of the largest give the same count for these symmetric semi-definite
    matrices)."""
    if not np.any(S):
        return 0
    sv = np.linalg.svd(S, compute_uv=False)
    return int(np.sum(sv > tol * sv[0]))


def constrain(smooths: list[Smooth], setup: pd.DataFrame, Xp: np.ndarray
              ) -> tuple[list[Smooth], list[str]]:
    """``smooths`` with mgcv's side constraints applied (a smooth that loses columns is
    replaced by a copy whose :attr:`~daskmm.models.gam.smooth.Smooth.deleted` names them), and
    warnings (mgcv's for a repeated 1-d smooth).

    Parameters
    ----------
    smooths : list of Smooth
        In mgcv's order, each with the sum-to-zero constraint absorbed.
    setup : pandas.DataFrame
        The setup rows the smooths were frozen on.
    Xp : ndarray
        The parametric columns at the setup rows.
    """
    vns = [_names(s) for s in smooths]
    flat = [v for s, vn in zip(smooths, vns) if _constrained(s) for v in vn]
    if len(flat) == len(set(flat)):
        return smooths, []
    dims = [len(s.call.variables) for s in smooths]
    listed: dict[str, list[int]] = {}
    for d in range(1, max(dims) + 1):
        for i, s in enumerate(smooths):
            if dims[i] == d and _constrained(s):
                for v in vns[i]:
                    listed.setdefault(v, []).append(i)
    warnings = []
    if max(dims[i] for i, s in enumerate(smooths) if _constrained(s)) == 1:
        warnings.append("model has repeated 1-d smooths of same variable.")
    n = len(setup)
    p = Xp.shape[1] + sum(s.p for s in smooths if not s.blocked)
    intercept = spans_constant(Xp)
    out = list(smooths)
    cols: dict[int, np.ndarray] = {}

    def design(i: int) -> np.ndarray:
        if i not in cols:
            cols[i] = out[i].design(setup)
        return cols[i]

    for d in range(1, max(dims) + 1):
        for i, s in enumerate(smooths):
            if dims[i] != d or not _constrained(s):
                continue
            lower: list[int] = []
            for v in vns[i]:
                b = listed[v]
                for j in b[:b.index(i)]:
                    if j not in lower:
                        lower.append(j)
            if not lower:
                continue
            if n < p:
                raise DataError(
                    f"smooth {s.label} overlaps {', '.join(smooths[j].label for j in lower)}: "
                    f"mgcv makes such terms identifiable on the data's columns, but the "
                    f"{n} complete rows are fewer than the model's {p} coefficients; give "
                    "more rows or drop the overlapping term")
            X1 = np.hstack(([np.ones((n, 1))] if intercept else []) + [design(j) for j in lower])
            ind = fix_dependence(X1, design(i))
            if ind is None:
                continue
            out[i] = _delete(s, np.sort(ind))
            cols[i] = np.delete(cols[i], ind, axis=1)
    return out, warnings


def _delete(s: Smooth, ind: np.ndarray) -> Smooth:
    """``s`` without columns ``ind`` (of its constrained columns): its penalties lose those
    rows and columns and their ranks are recomputed; a penalty left zero is dropped, with its
    scale (mgcv's)."""
    keep = np.setdiff1d(np.arange(s.p), ind)
    S, rank, scale = [], [], []
    for Sj, sc in zip(s.S, s.S_scale or [1.0] * len(s.S)):
        Sk = Sj[np.ix_(keep, keep)]
        r = _rank(Sk)
        if r:
            S.append(Sk)
            rank.append(r)
            scale.append(sc)
    return dataclasses.replace(s, S=S, rank=rank, S_scale=scale if s.S_scale else [],
                               p=len(keep), deleted=np.asarray(ind, dtype=np.int64))
