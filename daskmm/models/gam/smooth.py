"""Frozen smooths: bases with their identifiability constraints and scaled penalties, as
mgcv's ``smoothCon`` makes them.

:func:`build_smooths` turns a :class:`~daskmm.models.gam.terms.SmoothCall` and the first pass's
setup rows into one :class:`Smooth` (or one per level of a ``by`` factor). A ``Smooth`` holds
everything needed to build its columns for any rows -- knots, the constraint's null-space
matrix ``Z``, penalties -- so each partition builds identical columns with
:meth:`Smooth.design`. Steps, in mgcv's order:

1. the basis on the setup rows (:mod:`daskmm.models.gam.bases`); ``te``: the marginal bases, each
   penalty divided by its largest eigenvalue, the row-wise Kronecker product of the columns
   and the Kronecker-sum penalties; ``ti``: the same with each margin centred first;
2. the constraint: column means of the basis (sum to zero over the setup rows), none for
   ``re``, ``ti`` or a numeric ``by`` that is not constant;
3. penalties divided by ``norm(S, "O") / norm(X, "I")^2`` (``S.scale``);
4. the constraint absorbed: ``Z`` spans the null space of ``C`` (the Householder reflector
   of ``C'`` less its first column), ``X Z`` and ``Z' S Z``;
5. ``by``: a factor gives one copy per level, times that level's indicator (label
   ``s(x):flevel``); a number multiplies the columns (label ``s(x):z``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from daskmm.errors import DataError, FormulaError
from daskmm.formula.levels import level_label
from daskmm.models.gam.bases import (
    CubicRegression,
    Cyclic,
    FactorSmooth,
    PSpline,
    RandomEffect,
    ThinPlate,
)
from daskmm.models.gam.terms import SmoothCall

DEFAULT_K = {"cr": 10, "cs": 10, "cc": 10, "ps": -1, "tp": 10}
TE_DEFAULT_K = 5


def factor_codes(col: pd.Series | np.ndarray, levels: list[str]) -> np.ndarray:
    """Level index of each value (labels as R prints them), -1 for a value not in ``levels``."""
    codes, uniques = pd.factorize(pd.Series(col), use_na_sentinel=True)
    index = {lab: i for i, lab in enumerate(levels)}
    m = np.array([index.get(level_label(u), -1) for u in uniques] + [-1], dtype=np.int64)
    return m[codes]


def _householder_null(C: np.ndarray) -> np.ndarray:
    """``Z``: the last ``k - 1`` columns of the Householder reflector taking ``C'`` to a
    multiple of the first unit vector (R's ``qr(t(C))`` with one constraint)."""
    c = np.asarray(C, dtype=float).ravel()
    u = c.copy()
    nrm = np.linalg.norm(c)
    u[0] += np.copysign(nrm, c[0]) if c[0] != 0 else nrm
    H = np.eye(len(c)) - 2 * np.outer(u, u) / (u @ u)
    return H[:, 1:]


def constraint_null(C: np.ndarray) -> np.ndarray:
    """Null-space matrix for one sum-to-zero constraint, as ``smoothCon`` absorbs it: columns
    where ``C`` is zero are left alone and only the others are rotated."""
    C = np.asarray(C, dtype=float).ravel()
    k = len(C)
    indi = np.flatnonzero(C != 0)
    if len(indi) == k:
        return _householder_null(C)
    Zs = _householder_null(C[indi])  # nx x (nx - 1)
    keep = [j for j in range(k) if j not in set(indi[-1:])]
    Z = np.zeros((k, k - 1))
    col = {j: i for i, j in enumerate(keep)}
    for j in range(k):
        if j not in set(indi):
            Z[j, col[j]] = 1.0
    for a in range(len(indi) - 1):
        Z[indi, col[indi[a]]] = Zs[:, a]
    return Z


@dataclass
class Smooth:
    """One smooth term's frozen columns and penalties.

    Attributes
    ----------
    label : str
        As mgcv writes it: ``s(x0)``, ``te(x,z)``, ``s(x):fb``, ``s(fac)``.
    call : SmoothCall
    margins : list
        Basis objects (one for ``s``, one per margin for ``te``/``ti``).
    margin_Z : list of ndarray or None
        ``ti``: each margin's own constraint.
    Z : ndarray or None
        Null space of the term's constraint (None: unconstrained).
    S : list of ndarray
        Penalties on the term's ``p`` coefficients, scaled as mgcv scales them.
    rank : list of int
        Rank of each penalty.
    by_level : str or None
        The level of a ``by`` factor this copy is for.
    levels : dict
        Sorted levels of the factor columns the smooth reads.
    deleted : ndarray or None
        Columns (of the constrained columns) deleted to make the term identifiable beside
        lower-order terms sharing its covariates (mgcv's ``gam.side``,
        :mod:`daskmm.models.gam.side`); ``p``, ``S`` and ``rank`` are after the deletion.
    """

    label: str
    call: SmoothCall
    margins: list
    margin_Z: list | None
    Z: np.ndarray | None
    S: list[np.ndarray]
    rank: list[int]
    by_level: str | None = None
    by_numeric: bool = False
    levels: dict = field(default_factory=dict)
    S_scale: list[float] = field(default_factory=list)
    p: int = 0
    sweep: tuple[np.ndarray, np.ndarray] | None = None
    blocked_scale: float | None = None
    deleted: np.ndarray | None = None

    @property
    def blocked(self) -> bool:
        """An ``re`` term kept as a per-level block (no dense columns, no dense penalty):
        its penalty is ``blocked_scale * I``."""
        return self.blocked_scale is not None

    def level_values(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """A blocked term's ``(codes, values)``: each row's level of the factor (-1 for a
        level the fit did not see) and its value in that level's column (1, or the product
        of the covariates)."""
        re = self.margins[0]
        codes = factor_codes(frame[re.factor], self.levels[re.factor])
        v = np.ones(len(frame))
        for c in re.covariates:
            v = v * frame[c].to_numpy(dtype=float)
        return codes, v

    @property
    def random(self) -> bool:
        """An ``re`` term (tested by mgcv's ``reTest``, as a random effect)."""
        return self.call.bs[0] == "re" and self.call.kind == "s"

    @property
    def null_space_dim(self) -> int:
        tot = sum(self.S)
        ev = np.linalg.eigvalsh(tot) if self.S else np.zeros(0)
        return int(self.p - np.sum(ev > ev.max() * 1e-10)) if self.S else self.p

    def raw(self, frame: pd.DataFrame) -> np.ndarray:
        """The columns before the term's constraint (and before ``by``)."""
        c = self.call
        if c.kind == "s" and c.bs[0] == "re":
            re = self.margins[0]
            codes = factor_codes(frame[re.factor], self.levels[re.factor])
            covs = [frame[v].to_numpy(dtype=float) for v in re.covariates]
            return re.predict_frame(codes, covs)
        if c.kind == "s" and c.bs[0] == "fs":
            fs = self.margins[0]
            codes = factor_codes(frame[fs.factor], self.levels[fs.factor])
            cov = [v for v in c.variables if v != fs.factor][0]
            return fs.predict_frame(codes, frame[cov].to_numpy(dtype=float))
        if c.kind == "s" and c.bs[0] == "tp":
            return self.margins[0].predict(frame[list(c.variables)].to_numpy(dtype=float))
        mats = []
        for i, (m, v) in enumerate(zip(self.margins, c.variables)):
            Xm = m.predict(frame[v].to_numpy(dtype=float))
            if self.margin_Z is not None:
                Xm = Xm @ self.margin_Z[i]
            mats.append(Xm)
        return row_kron(mats)

    def design(self, frame: pd.DataFrame) -> np.ndarray:
        """The term's model columns for ``frame`` (rows already complete)."""
        X = self.raw(frame)
        if self.Z is not None:
            X = X @ self.Z
        elif self.sweep is not None:
            keep, shift = self.sweep
            # the kept columns by a selection product (a BLAS call; a fancy-indexed copy of
            # the columns of a C-ordered matrix costs several times more), then centred
            sel = np.zeros((X.shape[1], len(keep)))
            sel[keep, np.arange(len(keep))] = 1.0
            X = X @ sel
            X -= shift
        by = self.call.by
        if by is not None:
            if self.by_numeric:
                X = X * frame[by].to_numpy(dtype=float)[:, None]
            else:
                codes = factor_codes(frame[by], self.levels[by])
                X = X * (codes == self.levels[by].index(self.by_level))[:, None]
        if self.deleted is not None:
            X = np.delete(X, self.deleted, axis=1)
        return X


def row_kron(mats: list[np.ndarray]) -> np.ndarray:
    """Row-wise Kronecker product (mgcv's ``tensor.prod.model.matrix``)."""
    X = mats[0]
    for M in mats[1:]:
        X = (X[:, :, None] * M[:, None, :]).reshape(len(X), -1)
    return X


def kron_penalties(S: list[np.ndarray]) -> list[np.ndarray]:
    """mgcv's ``tensor.prod.penalties``: ``I x .. x S_i x .. x I`` for each margin."""
    out = []
    for i in range(len(S)):
        M = S[0] if i == 0 else np.eye(S[0].shape[0])
        for j in range(1, len(S)):
            M = np.kron(M, S[j] if i == j else np.eye(S[j].shape[0]))
        out.append((M + M.T) / 2)
    return out


def _margin(bs: str, x: np.ndarray, k: int, m, where: str):
    nu = len(np.unique(x))
    if bs in ("cr", "cs", "cc"):
        if k < 0:
            k = DEFAULT_K[bs]
        k = max(k, 4 if bs == "cc" else 3)
        if nu < k:
            raise DataError(f"smooth {where}: the covariate has {nu} distinct values, too few "
                            f"for k = {k} knots; lower k below {nu}")
        if bs == "cc":
            return Cyclic.setup(x, k)
        return CubicRegression.setup(x, k, shrink=0.1 if bs == "cs" else None)
    if bs == "ps":
        b = PSpline.setup(x, k, m)
        if b.k - b.m[0] <= 0:
            raise DataError(f"smooth {where}: basis dimension k = {b.k} is too small for a "
                            f"B-spline of order {b.m[0] + 2}; raise k")
        if nu < b.k:
            raise DataError(f"smooth {where}: the covariate has {nu} distinct values, fewer "
                            f"than k = {b.k}; lower k below {nu}")
        return b
    raise FormulaError(f"smooth {where}: basis {bs!r} is not available here")


def _max_abs_row_sum(X: np.ndarray) -> float:
    return float(np.abs(X).sum(axis=1).max()) if X.size else 0.0


def build_smooths(call: SmoothCall, setup: pd.DataFrame, levels: dict[str, list[str]],
                  constraint: str = "sweep", blocked: bool = False) -> list[Smooth]:
    """Freeze ``call`` on the setup rows.

    Parameters
    ----------
    call : SmoothCall
    setup : pandas.DataFrame
        The first pass's rows (complete cases of the columns the model uses).
    levels : dict
        Sorted levels of the categorical columns.
    constraint : {"sweep", "qr"}
        How the sum-to-zero constraint is absorbed: ``"sweep"`` as ``bam`` (drop a column,
        centre the rest: ``sparse.cons = -1``), ``"qr"`` as ``gam`` and ``bam(discrete =
        TRUE)`` (the null space of the constraint by a Householder reflection).
    blocked : bool
        An ``re`` term kept as a per-level block: no dense penalty or columns are built (its
        scaled penalty is ``blocked_scale * I``).

    Returns
    -------
    list of Smooth
        One, or one per level of a ``by`` factor, in level order.
    """
    where = call.text or call.label
    for v in call.variables:
        if v in levels and not (call.bs[0] in ("re", "fs") and call.kind == "s"):
            raise DataError(f"smooth {where}: column {v!r} is categorical; a smooth needs a "
                            f"numeric covariate (for a factor use s({v}, bs = 're') or put it "
                            "in the parametric part)")
    by_numeric = call.by is not None and call.by not in levels
    margin_Z = None
    if call.kind == "s" and call.bs[0] == "re":
        facs = [v for v in call.variables if v in levels]
        covs = tuple(v for v in call.variables if v not in levels)
        if len(facs) != 1:
            raise FormulaError(f"smooth {where}: an 're' smooth takes one factor (and "
                               "optionally numeric covariates), e.g. s(g, bs = 're') or "
                               "s(x, g, bs = 're')")
        if len(levels[facs[0]]) < 2:
            only = list(levels[facs[0]])
            raise DataError(f"smooth {where}: factor {facs[0]!r} has "
                            f"{'one level, ' + repr(str(only[0])) if only else 'no levels'}; a "
                            "random effect needs two or more (mgcv stops: contrasts can be "
                            "applied only to factors with 2 or more levels): drop the term")
        re = RandomEffect(factor=facs[0], levels=levels[facs[0]], covariates=covs)
        margins = [re]
        if blocked:  # each row has one non-zero: smoothCon's scale is max |value|^2
            v = np.ones(len(setup))
            for cv in covs:
                v = v * setup[cv].to_numpy(dtype=float)
            maXX = float(np.max(np.abs(v))) ** 2 if len(v) else 1.0
            return [Smooth(label=call.label, call=call, margins=margins, margin_Z=None, Z=None,
                           S=[], rank=[re.k], levels=levels, S_scale=[1.0 / maXX], p=re.k,
                           blocked_scale=maXX)]
        sm = Smooth(label=call.label, call=call, margins=margins, margin_Z=None, Z=None,
                    S=[np.eye(re.k)], rank=[re.k], levels=levels)
        X = sm.raw(setup)
        S_raw, C_rows = [np.eye(re.k)], 0
    elif call.kind == "s" and call.bs[0] == "tp":
        x = setup[list(call.variables)].to_numpy(dtype=float)
        nu = len(np.unique(x, axis=0))
        b = ThinPlate.setup(x, call.k[0], call.m[0] if call.m else None)
        if nu < b.k:
            raise DataError(f"smooth {where}: the covariates have {nu} distinct values, too "
                            f"few for k = {b.k}; lower k below {nu}")
        margins = [b]
        X = b.predict(x)
        S_raw = [b.S]
        ranks = [b.rank]
        C_rows = 1
    elif call.kind == "s" and call.bs[0] == "fs":
        facs = [v for v in call.variables if v in levels]
        covs = [v for v in call.variables if v not in levels]
        if len(facs) != 1 or len(covs) != 1:
            raise FormulaError(f"smooth {where}: an 'fs' smooth is s(x, g, bs = 'fs'): one "
                               "numeric covariate and one factor")
        x = setup[covs[0]].to_numpy(dtype=float)
        nu = len(np.unique(x))
        k = 10 if call.k[0] < 0 else call.k[0]
        if nu < k:
            raise DataError(f"smooth {where}: the covariate has {nu} distinct values, too "
                            f"few for k = {k}; lower k below {nu}")
        b = FactorSmooth.setup(x, k, call.m[0] if call.m else None, facs[0], levels[facs[0]])
        margins = [b]
        X = None
        S_raw = b.penalties
        ranks = b.ranks()
        C_rows = 0
    elif call.kind == "s":
        x = setup[call.variables[0]].to_numpy(dtype=float)
        b = _margin(call.bs[0], x, call.k[0], call.m, where)
        margins = [b]
        X = b.predict(x)
        S_raw = [b.S]
        ranks = [b.rank]
        C_rows = 1
    else:
        margins, Xm, Sm, ranks_m, margin_Z = [], [], [], [], []
        for v, bs, k in zip(call.variables, call.bs, call.k):
            x = setup[v].to_numpy(dtype=float)
            b = _margin(bs, x, TE_DEFAULT_K if k < 0 else k, call.m, where)
            Xi = b.predict(x)
            Si = b.S
            ri = b.rank
            if call.kind == "ti":  # each margin centred, its penalty scaled, as smoothCon
                Zi = constraint_null(Xi.mean(axis=0))
                Si = Si / (np.abs(Si).sum(axis=0).max() / _max_abs_row_sum(Xi) ** 2)
                Xi, Si = Xi @ Zi, Zi.T @ Si @ Zi
                ri = min(ri, Xi.shape[1])
                margin_Z.append(Zi)
            Ti = margin_Z[-1] if call.kind == "ti" else np.eye(Xi.shape[1])
            if isinstance(b, PSpline):  # te's np = TRUE: values at even points as coefficients
                npt = Xi.shape[1]
                P = b.predict(np.linspace(x.min(), x.max(), npt)) @ Ti
                u, dd, vt = np.linalg.svd(P)
                if dd[-1] / dd[0] >= np.finfo(float).eps ** 0.66:
                    XP = vt.T @ (u.T / dd[:, None])
                    Xi, Si, Ti = Xi @ XP, XP.T @ Si @ XP, Ti @ XP
            if call.kind == "ti":
                margin_Z[-1] = Ti
            else:
                margin_Z.append(Ti)
            Si = Si / np.linalg.eigvalsh(Si)[-1]
            margins.append(b)
            Xm.append(Xi)
            Sm.append(Si)
            ranks_m.append(ri)
        X = row_kron(Xm)
        S_raw = kron_penalties(Sm)
        d = [s.shape[0] for s in Sm]
        ranks = [int(round(np.prod(d) * r / di)) for r, di in zip(ranks_m, d)]
        C_rows = 0 if call.kind == "ti" else 1
    if call.kind == "s" and call.bs[0] == "re":
        ranks = [re.k]
    if by_numeric:
        z = setup[call.by].to_numpy(dtype=float)
        if z.std(ddof=1) > abs(z.mean()) * np.finfo(float).eps * 1000:
            C_rows = 0
    if X is None:  # fs: the columns of the setup rows, one block per level
        X = Smooth(label=call.label, call=call, margins=margins, margin_Z=None, Z=None,
                   S=[], rank=[], levels=levels).raw(setup)
    # penalty scaling (smoothCon's scale.penalty), on the unconstrained basis
    maXX = _max_abs_row_sum(X) ** 2
    scales = [float(np.abs(S).sum(axis=0).max() / maXX) for S in S_raw]
    S_scaled = [S / s for S, s in zip(S_raw, scales)]
    if call.fx:
        S_scaled, ranks, scales = [], [], []
    Z = sweep = None
    if C_rows and constraint == "sweep":
        # bam's default (sparse.cons = -1): drop the column of least variance and centre the
        # others on their setup-row means
        # the first of the columns whose variance ties for the least (within rounding: R's
        # var() sums in long double, numpy pairwise; a cr basis with a knot at every distinct
        # value of a balanced design has equal variances, and which one is dropped changes
        # the penalty and so the score: Loblolly's s(age, k = 6) was 0.41 off bam's)
        var = X.var(axis=0, ddof=1)
        drop = int(np.flatnonzero(var <= var.min() * (1 + 1e-10) + 1e-300)[0])
        keep = np.array([j for j in range(X.shape[1]) if j != drop])
        sweep = (keep, X.mean(axis=0)[keep])
        S_fin = [S[np.ix_(keep, keep)] for S in S_scaled]
    elif C_rows:
        Z = constraint_null(X.mean(axis=0))
        S_fin = [Z.T @ S @ Z for S in S_scaled]
    else:
        S_fin = S_scaled
    S_fin = [(S + S.T) / 2 for S in S_fin]
    if C_rows:
        ranks = [min(r, X.shape[1] - 1) for r in ranks]
    common = dict(p=X.shape[1] - C_rows, sweep=sweep, call=call, margins=margins,
                  margin_Z=margin_Z, Z=Z, S=S_fin, rank=ranks,
                  by_numeric=by_numeric, levels=levels, S_scale=scales)
    if call.by is None:
        return [Smooth(label=call.label, **common)]
    if by_numeric:
        return [Smooth(label=f"{call.label}:{call.by}", **common)]
    return [Smooth(label=f"{call.label}:{call.by}{lev}", by_level=lev, **common)
            for lev in levels[call.by]]
