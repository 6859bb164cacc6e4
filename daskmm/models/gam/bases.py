"""Spline bases as mgcv builds them, before identifiability constraints.

Each class is set up once from the covariate values of a first pass (knots placed as mgcv
places them) and then evaluates its columns at any values (``predict``), so that every
partition builds identical columns. Pure numpy/scipy: no dask, no fitting.

* :class:`CubicRegression` -- ``bs = "cr"`` (and ``"cs"``, its shrinkage version): a cubic
  spline parametrised by its values at ``k`` knots placed at quantiles of the unique
  covariate values, penalty the integrated squared second derivative (mgcv's ``crspl``).
* :class:`Cyclic` -- ``bs = "cc"``: cubic spline whose ends match to second derivative.
* :class:`PSpline` -- ``bs = "ps"``: Eilers and Marx's B-splines with a difference penalty.
* :class:`RandomEffect` -- ``bs = "re"``: indicator (or covariate-times-indicator) columns
  with an identity penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def r_quantile(x: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """R's default (type 7) quantiles of ``x``."""
    xs = np.sort(np.asarray(x, dtype=float))
    n = len(xs)
    h = (n - 1) * probs
    lo = np.floor(h).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def place_knots(x: np.ndarray, nk: int) -> np.ndarray:
    """mgcv's ``place.knots``: ``nk`` knots evenly spread through the sorted unique values."""
    xu = np.unique(np.asarray(x, dtype=float))
    n = len(xu)
    if nk == 2:
        return np.array([xu[0], xu[-1]])
    delta = (n - 1) / (nk - 1)
    i = np.arange(1, nk - 1)
    lbi = np.floor(delta * i).astype(int)  # 0-based: R's lbi - 1
    frac = delta * i + 1 - (lbi + 1)
    knots = np.empty(nk)
    knots[0], knots[-1] = xu[0], xu[-1]
    knots[1:-1] = xu[lbi] * (1 - frac) + xu[lbi + 1] * frac
    return knots


@dataclass
class CubicRegression:
    """``bs = "cr"``: values at the knots as coefficients (mgcv's ``cr.smooth``)."""

    knots: np.ndarray
    shrink: float | None = None
    F: np.ndarray = field(init=False, repr=False)
    S: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        xk = np.asarray(self.knots, dtype=float)
        n = len(xk)
        h = np.diff(xk)
        D = np.zeros((n - 2, n))
        B = np.zeros((n - 2, n - 2))
        for i in range(n - 2):
            D[i, i] = 1 / h[i]
            D[i, i + 1] = -1 / h[i] - 1 / h[i + 1]
            D[i, i + 2] = 1 / h[i + 1]
            B[i, i] = (h[i] + h[i + 1]) / 3
            if i < n - 3:
                B[i, i + 1] = B[i + 1, i] = h[i + 1] / 6
        BinvD = np.linalg.solve(B, D)
        self.F = np.zeros((n, n))
        self.F[1:-1] = BinvD
        S = D.T @ BinvD
        S = (S + S.T) / 2
        if self.shrink is not None:
            # mgcv's cs: the null space's two eigenvalues set to shrink and shrink^2 times the
            # smallest positive one. mgcv leaves the null space's basis to eigen(), whose
            # rotation of a double zero eigenvalue is rounding (it changes between k = 6 and
            # k = 12 on ChickWeight's Time, and between two constructions of the same S in one
            # R session); here it is fixed: the centred linear term (what the sum-to-zero
            # constraint keeps) shrunk by shrink, the constant by shrink^2
            a = np.linalg.eigvalsh(S)[2]
            vc = np.full(n, 1.0 / np.sqrt(n))
            vl = xk - xk.mean()
            vl /= np.linalg.norm(vl)
            S = S + a * self.shrink * np.outer(vl, vl) + a * self.shrink ** 2 * np.outer(vc, vc)
        self.S = S

    @classmethod
    def setup(cls, x: np.ndarray, k: int, shrink: float | None = None) -> CubicRegression:
        xu = np.unique(np.asarray(x, dtype=float))
        return cls(knots=r_quantile(xu, np.linspace(0, 1, k)), shrink=shrink)

    @property
    def rank(self) -> int:
        return len(self.knots) if self.shrink is not None else len(self.knots) - 2

    @property
    def null_space_dim(self) -> int:
        return 0 if self.shrink is not None else 2

    @property
    def penalties(self) -> list[np.ndarray]:
        return [self.S]

    def predict(self, x: np.ndarray) -> np.ndarray:
        from daskmm.kernels.spline_jit import cr_rows
        x = np.ascontiguousarray(x, dtype=float)
        X = np.empty((len(x), len(self.knots)))
        cr_rows(x, np.ascontiguousarray(self.knots, dtype=float), np.ascontiguousarray(self.F),
                X)
        return X

    def predict_numpy(self, x: np.ndarray) -> np.ndarray:
        """:meth:`predict` in numpy (the reference the compiled loop is tested against)."""
        xk, F = self.knots, self.F
        x = np.asarray(x, dtype=float)
        nk = len(xk)
        X = np.zeros((len(x), nk))
        j = np.clip(np.searchsorted(xk, x, side="right") - 1, 0, nk - 2)
        inside = (x >= xk[0]) & (x <= xk[-1])
        ii = np.flatnonzero(inside)
        jj = j[ii]
        h = xk[jj + 1] - xk[jj]
        am = (xk[jj + 1] - x[ii]) / h
        ap = (x[ii] - xk[jj]) / h
        cm = ((xk[jj + 1] - x[ii]) ** 3 / h - h * (xk[jj + 1] - x[ii])) / 6
        cp = ((x[ii] - xk[jj]) ** 3 / h - h * (x[ii] - xk[jj])) / 6
        X[ii] = cm[:, None] * F[jj] + cp[:, None] * F[jj + 1]
        X[ii, jj] += am
        X[ii, jj + 1] += ap
        lo = np.flatnonzero(x < xk[0])
        if len(lo):  # linear extrapolation below the first knot
            h = xk[1] - xk[0]
            xik = x[lo] - xk[0]
            X[lo] = (-xik * h / 3)[:, None] * F[0] + (-xik * h / 6)[:, None] * F[1]
            X[lo, 0] += 1 - xik / h
            X[lo, 1] += xik / h
        hi = np.flatnonzero(x > xk[-1])
        if len(hi):  # and above the last
            h = xk[-1] - xk[-2]
            xik = x[hi] - xk[-1]
            X[hi] = (xik * h / 6)[:, None] * F[-2] + (xik * h / 3)[:, None] * F[-1]
            X[hi, -2] -= xik / h
            X[hi, -1] += 1 + xik / h
        return X


@dataclass
class Cyclic:
    """``bs = "cc"``: a cyclic cubic regression spline (mgcv's ``cyclic.smooth``)."""

    knots: np.ndarray
    BD: np.ndarray = field(init=False, repr=False)
    S: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        x = np.asarray(self.knots, dtype=float)
        h = np.diff(x)
        n = len(x) - 1
        B = np.zeros((n, n))
        D = np.zeros((n, n))
        for i in range(n):
            ip, im = (i + 1) % n, (i - 1) % n
            hm, hi = h[i - 1] if i > 0 else h[n - 1], h[i]
            B[i, im] += hm / 6
            B[i, i] += (hm + hi) / 3
            B[i, ip] += hi / 6
            D[i, im] += 1 / hm
            D[i, i] += -(1 / hm + 1 / hi)
            D[i, ip] += 1 / hi
        self.BD = np.linalg.solve(B, D)
        S = D.T @ self.BD
        self.S = (S + S.T) / 2

    @classmethod
    def setup(cls, x: np.ndarray, k: int) -> Cyclic:
        return cls(knots=place_knots(x, k))

    rank = property(lambda self: len(self.knots) - 2)
    null_space_dim = 1
    penalties = property(lambda self: [self.S])

    def predict(self, x: np.ndarray) -> np.ndarray:
        k = self.knots
        x = np.asarray(x, dtype=float)
        lo, hi = k[0], k[-1]
        if x.size and (x.max() > hi or x.min() < lo):  # mgcv's cwrap
            x = lo + np.mod(x - lo, hi - lo)
        n = len(k)
        j = np.maximum(np.searchsorted(k, x, side="left"), 1)
        j1 = j - 1
        h = k[j1 + 1] - k[j1]
        jc = np.where(j == n - 1, 0, j)
        a = k[j1 + 1] - x
        b = x - k[j1]
        X = (self.BD[j1] * (a ** 3 / (6 * h) - h * a / 6)[:, None]
             + self.BD[jc] * (b ** 3 / (6 * h) - h * b / 6)[:, None])
        rows = np.arange(len(x))
        X[rows, j1] += a / h
        X[rows, jc] += b / h
        return X


@dataclass
class PSpline:
    """``bs = "ps"``: B-splines of order ``m[0] + 2`` on evenly spaced knots, penalty on the
    ``m[1]``-th differences of the coefficients (mgcv's ``pspline.smooth``)."""

    knots: np.ndarray
    m: tuple[int, int]
    k: int

    @classmethod
    def setup(cls, x: np.ndarray, k: int, m: tuple[int, ...] | None) -> PSpline:
        mm = (2, 2) if m is None else (tuple(m) * 2 if len(m) == 1 else tuple(m[:2]))
        if k < 0:
            k = max(10, mm[0] + 1)
        nk = k - mm[0]
        x = np.asarray(x, dtype=float)
        xl, xu = x.min(), x.max()
        xr = xu - xl
        xl, xu = xl - xr * 0.001, xu + xr * 0.001
        dx = (xu - xl) / (nk - 1)
        knots = np.linspace(xl - dx * (mm[0] + 1), xu + dx * (mm[0] + 1), nk + 2 * mm[0] + 2)
        return cls(knots=knots, m=mm, k=k)

    @property
    def S(self) -> np.ndarray:
        Dm = np.diff(np.eye(self.k), n=self.m[1], axis=0) if self.m[1] > 0 else np.eye(self.k)
        return Dm.T @ Dm

    rank = property(lambda self: self.k - self.m[1])
    null_space_dim = property(lambda self: self.m[1])
    penalties = property(lambda self: [self.S])

    def predict(self, x: np.ndarray) -> np.ndarray:
        from scipy.interpolate import BSpline

        x = np.asarray(x, dtype=float)
        deg = self.m[0] + 1
        lo, hi = self.knots[deg], self.knots[len(self.knots) - deg - 1]
        inside = (x >= lo) & (x <= hi)
        X = np.zeros((len(x), self.k))
        if inside.any():
            X[inside] = BSpline.design_matrix(x[inside], self.knots, deg).toarray()
        out = ~inside
        if out.any():  # linear extrapolation beyond the knots, as mgcv's Predict.matrix
            for edge, sel in ((lo, x < lo), (hi, x > hi)):
                if not sel.any():
                    continue
                e = np.array([edge])
                v = BSpline.design_matrix(e, self.knots, deg).toarray()[0]
                d = np.zeros(self.k)
                for c in range(self.k):
                    coef = np.zeros(self.k)
                    coef[c] = 1
                    d[c] = BSpline(self.knots, coef, deg).derivative()(edge)
                X[sel] = v + (x[sel] - edge)[:, None] * d
        return X


@dataclass
class RandomEffect:
    """``bs = "re"``: ``s(g, bs = "re")`` is one column per level of ``g``; ``s(x, g, bs =
    "re")`` one column ``x`` times the indicator per level (R's ``model.matrix(~ x:g - 1)``);
    an identity penalty."""

    factor: str
    levels: list[str]
    covariates: tuple[str, ...] = ()

    @property
    def k(self) -> int:
        return len(self.levels)

    rank = property(lambda self: self.k)
    null_space_dim = 0
    penalties = property(lambda self: [np.eye(self.k)])

    def predict_frame(self, codes: np.ndarray, covs: list[np.ndarray]) -> np.ndarray:
        X = np.zeros((len(codes), self.k))
        v = np.ones(len(codes))
        for c in covs:
            v = v * c
        ok = codes >= 0
        X[np.flatnonzero(ok), codes[ok]] = v[ok]
        return X


def _tps_m(d: int, m: int) -> int:
    return m if 2 * m > d and m > 0 else (d + 1) // 2 + 1


def _poly_powers(d: int, m: int) -> list[tuple[int, ...]]:
    """Exponents of the monomials of total degree below ``m`` in ``d`` variables, in the
    order mgcv's ``gen_tps_poly_powers`` lists them (first variable fastest)."""
    out = []

    def rec(prefix, left, i):
        if i == d:
            out.append(tuple(prefix))
            return
        for p in range(left + 1):
            rec(prefix + [p], left - p, i + 1)

    rec([], m - 1, 0)
    out.sort(key=lambda p: (sum(p), tuple(reversed(p))))
    return out


def _eta(r: np.ndarray, d: int, m: int) -> np.ndarray:
    """The thin-plate radial basis function of order ``m`` in ``d`` dimensions."""
    from math import gamma, pi
    if d % 2:
        c = gamma(d / 2 - m) / (2 ** (2 * m) * pi ** (d / 2) * gamma(m))
        return c * r ** (2 * m - d)
    c = (-1) ** (m + 1 + d // 2) / (2 ** (2 * m - 1) * pi ** (d / 2) * gamma(m)
                                    * gamma(m - d // 2 + 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = c * r ** (2 * m - d) * np.log(r)
    return np.where(r > 0, out, 0.0)


@dataclass
class ThinPlate:
    """``bs = "tp"``: Wood's (2003) thin plate regression spline: the ``k - M`` leading
    eigenvectors of the radial-basis matrix at the knots (the unique covariate values),
    constrained orthogonal to the polynomials of degree below ``m``, plus those ``M``
    polynomials; covariates centred (mgcv's ``tprs.smooth``)."""

    knots: np.ndarray  # unique centred covariate rows (n_knots x d)
    shift: np.ndarray
    m: int
    k: int
    UZ: np.ndarray = field(repr=False)  # n_knots x (k - M)
    D: np.ndarray = field(repr=False)  # (k - M) x (k - M) penalty on the range columns
    powers: list = field(default_factory=list)
    tscale: np.ndarray | None = None

    MAX_KNOTS = 2000
    SEED = 1

    @classmethod
    def setup(cls, x: np.ndarray, k: int, m: int | None = None) -> ThinPlate:
        x = np.asarray(x, dtype=float)
        if x.ndim == 1:
            x = x[:, None]
        d = x.shape[1]
        m = _tps_m(d, 0 if m is None else m)
        powers = _poly_powers(d, m)
        M = len(powers)
        if k < 0:
            k = M + (8, 27, 100)[min(d, 3) - 1]
        k = max(k, M + 1)
        shift = x.mean(axis=0)
        xs = x - shift
        xu = np.unique(xs, axis=0)
        if len(xu) > cls.MAX_KNOTS:  # a fixed random subset, as mgcv (its RNG differs)
            rng = np.random.default_rng(cls.SEED)
            xu = xu[np.sort(rng.choice(len(xu), cls.MAX_KNOTS, replace=False))]
        E = _eta(_dist(xu, xu), d, m)
        if len(xu) > 3 * k:
            from scipy.sparse.linalg import eigsh
            # a fixed start vector: ARPACK's default is random, and with it the basis (and
            # every coefficient's sign) changed from run to run
            ev, U = eigsh(E, k=k, which="LM", tol=1e-13, v0=np.ones(len(E)))
        else:
            ev, U = np.linalg.eigh(E)
        order = np.argsort(-np.abs(ev))[:k]
        ev, U = ev[order], U[:, order]
        # each eigenvector's sign fixed (its largest entry positive): the same basis every run
        U = U * np.where(U[np.argmax(np.abs(U), axis=0), np.arange(U.shape[1])] < 0, -1.0, 1.0)
        T = _poly(xu, powers)
        # null space of T'U_k delta = 0 by a Householder QR of U_k'T
        Q, _ = np.linalg.qr(U.T @ T, mode="complete")
        Z = Q[:, M:]
        D = Z.T @ (ev[:, None] * Z)
        # mgcv's construct_tprs scales every column of the model matrix to unit mean square
        # over the data rows (ties counted, not the unique knots); for the polynomial
        # (unpenalised) columns that scale is part of the REML score (mgcv's log|S|+ leaves
        # the null space out), so it must be the data's: knots of tied data gave a score 0.09
        # below bam's (the scale of the penalised columns cancels)
        tscale = 1 / np.sqrt(np.mean(_poly(xs, powers) ** 2, axis=0))
        return cls(knots=xu, shift=shift, m=m, k=k, UZ=U @ Z, D=(D + D.T) / 2,
                   powers=powers, tscale=tscale)

    @property
    def M(self) -> int:
        return len(self.powers)

    @property
    def S(self) -> np.ndarray:
        S = np.zeros((self.k, self.k))
        r = self.k - self.M
        S[:r, :r] = self.D
        return S

    rank = property(lambda self: self.k - self.M)
    null_space_dim = property(lambda self: self.M)
    penalties = property(lambda self: [self.S])

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if x.ndim == 1:
            x = x[:, None]
        xs = x - self.shift
        d = xs.shape[1]
        out = np.empty((len(xs), self.k))
        step = 20000
        for a in range(0, len(xs), step):
            E = _eta(_dist(xs[a:a + step], self.knots), d, self.m)
            out[a:a + step, :self.k - self.M] = E @ self.UZ
        out[:, self.k - self.M:] = _poly(xs, self.powers) * self.tscale
        return out


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.shape[1] == 1:
        return np.abs(a[:, :1] - b[:, 0][None, :])
    sq = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0))


def _poly(x: np.ndarray, powers: list) -> np.ndarray:
    return np.column_stack([np.prod(x ** np.array(p)[None, :], axis=1) for p in powers])


@dataclass
class FactorSmooth:
    """``bs = "fs"``: one thin plate smooth of ``x`` per level of a factor, every part of it
    penalised (mgcv's ``fs.interaction``: gamm4's random smooth curves). The base ``tp``
    basis is reparametrised as mgcv's ``nat.param(type = 1)``: the range-space columns
    ``X'X``-orthogonal to the null space with penalty ``D I``, each null-space column with a
    penalty of its own. mgcv leaves the basis of the null space to its eigen solver (an
    arbitrary rotation of {1, x}: its fits change with the row order of the data); here it
    is fixed as nat.param's ``type = 3`` fixes it: the constant first, then the directions
    orthogonal to it (over the setup rows, centred), each block scaled to unit mean square.
    """

    base: ThinPlate
    P: np.ndarray = field(repr=False)  # k x k: base columns -> reparametrised columns
    D: float
    factor: str
    levels: list[str]

    @classmethod
    def setup(cls, x: np.ndarray, k: int, m: int | None, factor: str,
              levels: list[str]) -> FactorSmooth:
        base = ThinPlate.setup(x, k, m)
        X = base.predict(x)
        S = base.S
        r = base.rank
        Q, R = np.linalg.qr(X)
        Ri = np.linalg.solve(R, np.eye(len(R)))
        RSR = Ri.T @ S @ Ri
        ev, U = np.linalg.eigh((RSR + RSR.T) / 2)
        order = np.argsort(-ev)
        ev, U = ev[order], U[:, order]
        E = np.concatenate([np.sqrt(ev[:r]), np.ones(len(ev) - r)])
        P = (Ri @ U) / E
        Xn = (Q @ U) / E
        # the null space: constant first, then the rest orthogonal to it (type = 3)
        N = Xn[:, r:]
        Nc = N - N.mean(axis=0)
        nv, um = np.linalg.eigh(Nc.T @ Nc)
        um = um[:, np.argsort(-nv)][:, ::-1]  # smallest (the constant) first
        Xn[:, r:] = N @ um
        P[:, r:] = P[:, r:] @ um
        scale = 1 / np.sqrt(np.mean(Xn[:, :r] ** 2))
        P[:, :r] *= scale
        scalef = 1 / np.sqrt(np.mean(Xn[:, r:] ** 2))
        P[:, r:] *= scalef
        return cls(base=base, P=P, D=float(scale ** 2), factor=factor, levels=list(levels))

    @property
    def kb(self) -> int:
        """Columns per level."""
        return self.base.k

    @property
    def k(self) -> int:
        return self.kb * len(self.levels)

    @property
    def rank(self) -> int:
        return self.base.rank

    null_space_dim = 0

    @property
    def penalties(self) -> list[np.ndarray]:
        """The range-space penalty ``D I`` of every level, then one per null-space column
        (that column of every level)."""
        nf, r = len(self.levels), self.base.rank
        d = np.zeros(self.kb)
        d[:r] = self.D
        out = [np.diag(np.tile(d, nf))]
        for i in range(self.kb - r):
            e = np.zeros(self.kb)
            e[r + i] = 1.0
            out.append(np.diag(np.tile(e, nf)))
        return out

    def ranks(self) -> list[int]:
        nf = len(self.levels)
        return [self.base.rank * nf] + [nf] * (self.kb - self.base.rank)

    def predict_frame(self, codes: np.ndarray, x: np.ndarray) -> np.ndarray:
        Xb = self.base.predict(x) @ self.P
        X = np.zeros((len(codes), self.k))
        for lev in range(len(self.levels)):
            rows = np.flatnonzero(codes == lev)
            X[rows, lev * self.kb:(lev + 1) * self.kb] = Xb[rows]
        return X
