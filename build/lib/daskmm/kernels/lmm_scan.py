"""FaST-LMM's exact association scan, as pure numpy/scipy kernels.

The model (Lippert et al. 2011; ``fastlmm.association.single_snp``)::

    y = X beta + g + e,   g ~ N(0, sigma^2 h2 K),   e ~ N(0, sigma^2 (1 - h2) I)

``K`` is the genetic relationship matrix of unit-standardised variants scaled to trace ``n``.
With ``P = I - X X^+`` and ``P (K + I) P = U (S + 1) U'`` on the complement of ``X`` (``r =
n - d`` columns), the restricted likelihood is that of ``U'y``, whose covariance is diagonal::

    Sd_i = h2 S_i + 1 - h2,   nLL(h2) = 1/2 [sum log Sd + r (log(2 pi yKy / r) + 1)]

with ``yKy = sum (U'y)_i^2 / Sd_i`` (``sigma^2`` profiled out). ``h2`` is the minimum over
``[0, H2_MAX]``. Each variant ``z`` (standardised: mean 0, SD 1 over the called samples,
missing calls 0) is then tested with ``h2`` held at the null value::

    zKz = sum (U'z)^2 / Sd,  zKy = sum (U'z)(U'y) / Sd,  beta = zKy / zKz
    var(beta) = (yKy - zKy beta) / (r - 1) / zKz,  F = beta^2 / var(beta) ~ F(1, n - d - 1)

Names follow the maths: ``S`` eigenvalues, ``U`` eigenvectors, ``UY`` rotated traits, ``UZ``
rotated variants, ``Sd`` the rotated variances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy import optimize, stats

H2_MAX = 0.99999
"""FaST-LMM's upper bound on h2 (the covariance stays positive definite)."""
H2_GRID = 10
"""Grid intervals before the local refinement (FaST-LMM's ``nGridH2``)."""
CHOLESKY_TRAITS = 1
"""Up to this many traits share a null model, ``h2`` comes from the tridiagonal form
(:class:`TridiagonalReml`) and the variants are tested through the Cholesky factor of the
trait's ``V`` (a triangular solve, ``n^2`` per variant): the eigenvectors are never formed.
With more traits, the shared rotation ``U'Z`` (``2 n^2`` per variant, whatever the number of
traits) is cheaper."""


@dataclass
class VariantStats:
    """Per-variant statistics over the analysis samples, for the allele counted (allele 1).

    ``n_called`` calls, ``mean`` dosage, ``sd`` (population SD of the calls), ``af`` = mean/2.
    """

    n_called: np.ndarray
    mean: np.ndarray
    sd: np.ndarray

    @property
    def af(self) -> np.ndarray:
        return self.mean / 2.0


def variant_stats(G: np.ndarray) -> VariantStats:
    """Calls, mean and population SD of each column of ``G`` (samples x variants, NaN for a
    missing call)."""
    called = ~np.isnan(G)
    n = called.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(G, 0) / np.maximum(n, 1), np.nan)
        dev = np.where(called, G - mean, 0.0)
        sd = np.sqrt((dev * dev).sum(0) / np.maximum(n, 1))
    sd[n == 0] = 0.0
    return VariantStats(n, mean, sd)


def standardize(G: np.ndarray, st: VariantStats) -> np.ndarray:
    """Unit-standardise the columns of ``G`` (as pysnptools' ``Unit``): ``(g - mean) / sd``,
    missing calls 0, a constant column all 0. Returns a new float64 array."""
    Z = np.asarray(G, dtype=np.float64) - st.mean
    Z[np.isnan(Z)] = 0.0
    sd = np.where(st.sd > 0, st.sd, np.inf)
    Z /= sd
    return Z


def grm_update(K: np.ndarray | None, Z: np.ndarray) -> np.ndarray:
    """``K + Z Z'`` (lower triangle only, by ``dsyrk``; :func:`symmetrize` fills the rest)."""
    if Z.shape[1] == 0:
        return np.zeros((Z.shape[0],) * 2) if K is None else K
    Zf = np.asfortranarray(Z)
    if K is None:
        return scipy.linalg.blas.dsyrk(1.0, Zf, lower=1)
    return scipy.linalg.blas.dsyrk(1.0, Zf, beta=1.0, c=K, lower=1, overwrite_c=1)


def symmetrize(K: np.ndarray) -> np.ndarray:
    """Copy the lower triangle of ``K`` onto the upper, in place."""
    iu = np.triu_indices_from(K, 1)
    K[iu] = K.T[iu]
    return K


def covariate_basis(X: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the column space of ``X`` (``n x d``); raises ValueError
    naming the rank when the columns are collinear."""
    Q, R = np.linalg.qr(X)
    diag = np.abs(np.diag(R))
    if X.shape[1] and diag.min() <= 1e-10 * max(diag.max(), 1.0):
        raise ValueError(f"the {X.shape[1]} covariate columns (with the intercept) have rank "
                         f"{np.linalg.matrix_rank(X)}")
    return Q


def complement_eigh(K: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``S`` (ascending; not clipped: a thresholded GRM has negative ones, and
    FaST-LMM keeps them) and eigenvectors ``U`` (``n x (n - d)``) of
    ``K`` on the complement of the columns of ``X``, as FaST-LMM's ``setSU_fromK``:
    the eigendecomposition of ``P (K + I) P``, its ``d`` null directions dropped, minus 1.

    ``K`` is overwritten."""
    n, d = X.shape
    _project_plus_identity(K, X)
    S, U = scipy.linalg.eigh(K, overwrite_a=True, check_finite=False, driver="evd")
    return S[d:] - 1.0, U[:, d:]


def _project_plus_identity(K: np.ndarray, X: np.ndarray) -> None:
    """``K <- P (K + I) P`` in place, ``P`` the projection off the columns of ``X``."""
    n = K.shape[0]
    Q = covariate_basis(X)
    K.flat[:: n + 1] += 1.0
    KQ = K @ Q
    QKQ = Q.T @ KQ
    K -= Q @ KQ.T
    K -= KQ @ Q.T
    K += Q @ QKQ @ Q.T


@dataclass
class TridiagonalReml:
    """FaST-LMM's REML without eigenvectors.

    ``M = P K P + beta (I - P)`` is reduced to tridiagonal ``T = Q'MQ`` (Householder,
    ``dsytrd``); ``S`` are the eigenvalues of ``T`` on the complement of the covariates (the
    ``d`` at ``beta``, far above the rest, dropped) and ``q = Q'Py``. With
    ``A = h2 T + (1 - h2) I`` (SPD, banded)::

        yKy = q' A^-1 q,   d yKy / d h2 = -(r' T r - r' r),  r = A^-1 q

    because ``Py`` has no part in the covariates' directions. Each evaluation is O(n).
    """

    S: np.ndarray
    diag: np.ndarray
    off: np.ndarray
    q: np.ndarray

    def _solve(self, h2: float) -> np.ndarray:
        ab = np.zeros((2, len(self.diag)))
        ab[0, 1:] = h2 * self.off
        ab[1] = h2 * self.diag + (1.0 - h2)
        return scipy.linalg.solveh_banded(ab, self.q, check_finite=False)

    def _tq(self, r: np.ndarray) -> np.ndarray:
        out = self.diag * r
        out[:-1] += self.off * r[1:]
        out[1:] += self.off * r[:-1]
        return out

    def yky(self, h2: float) -> float:
        return float(self.q @ self._solve(h2))

    def neg_reml(self, h2: float) -> float:
        r = len(self.S)
        Sd = h2 * self.S + (1.0 - h2)
        return 0.5 * (float(np.log(Sd).sum())
                      + r * (np.log(2.0 * np.pi * self.yky(h2) / r) + 1.0))

    def grad(self, h2: float) -> float:
        r = len(self.S)
        Sd = h2 * self.S + (1.0 - h2)
        v = self._solve(h2)
        yky = float(self.q @ v)
        dyky = -(float(v @ self._tq(v)) - float(v @ v))
        return 0.5 * (float(np.sum((self.S - 1.0) / Sd)) + r * dyky / yky)


def complement_tridiagonal(K: np.ndarray, X: np.ndarray, y: np.ndarray) -> TridiagonalReml:
    """:class:`TridiagonalReml` of ``K`` (overwritten) for one trait ``y``: ``dsytrd`` and
    the tridiagonal eigenvalues (blocked: ``lwork`` 64 n), about half the time of
    :func:`complement_eigh` (whose
    eigenvectors the Cholesky form of the test does not need)."""
    from scipy.linalg import lapack

    n, d = X.shape
    Qx = covariate_basis(X)
    KQ = K @ Qx
    QKQ = Qx.T @ KQ
    K -= Qx @ KQ.T
    K -= KQ @ Qx.T
    beta = 10.0 * max(n, float(np.abs(np.diag(K)).max()))
    K += Qx @ (QKQ + beta * np.eye(d)) @ Qx.T
    c, diag, off, tau, info = lapack.dsytrd(K, lower=1, overwrite_a=1, lwork=64 * n)
    if info != 0:
        raise np.linalg.LinAlgError(f"dsytrd failed (info {info})")
    q = np.array(y - Qx @ (Qx.T @ y), dtype=np.float64)
    for i in range(n - 1):                # Q' = H(n-1) ... H(1): apply H(1) first
        if tau[i] == 0.0:
            continue
        v = c[i + 1:, i].copy()
        v[0] = 1.0
        q[i + 1:] -= tau[i] * v * (v @ q[i + 1:])
    w = scipy.linalg.eigvalsh_tridiagonal(diag, off, check_finite=False)
    return TridiagonalReml(np.sort(w)[: n - d], diag, off, q)


def neg_reml(h2: float, S: np.ndarray, uy: np.ndarray) -> float:
    """FaST-LMM's ``nLL`` at ``h2`` for one rotated trait ``uy`` (REML, ``sigma^2``
    profiled)."""
    r = uy.shape[0]
    Sd = h2 * S + (1.0 - h2)
    yKy = float(np.sum(uy * uy / Sd))
    return 0.5 * (float(np.log(Sd).sum()) + r * (np.log(2.0 * np.pi * yKy / r) + 1.0))


def neg_reml_grad(h2: float, S: np.ndarray, uy: np.ndarray) -> float:
    """The derivative of :func:`neg_reml` in ``h2``."""
    r = uy.shape[0]
    Sd = h2 * S + (1.0 - h2)
    dS = S - 1.0
    w = uy * uy / Sd
    return 0.5 * (float(np.sum(dS / Sd)) - r * float(np.sum(w * dS / Sd)) / float(w.sum()))


def fit_h2(S: np.ndarray, uy: np.ndarray) -> tuple[float, float]:
    """``(h2, nLL)`` minimising :func:`neg_reml` over ``[0, H2_MAX]`` (:func:`minimize_h2`)."""
    return minimize_h2(lambda h: neg_reml(h, S, uy), lambda h: neg_reml_grad(h, S, uy),
                       h2_upper(S))


def h2_upper(S: np.ndarray) -> float:
    """The largest ``h2`` searched: :data:`H2_MAX`, or less when ``K`` has a negative
    eigenvalue (a thresholded GRM), so that every ``Sd = h2 S + 1 - h2`` stays positive."""
    s_min = float(S.min()) if len(S) else 0.0
    return H2_MAX if s_min >= 0 else min(H2_MAX, (1.0 - 1e-6) / (1.0 - s_min))


def minimize_h2(f, grad, upper: float = H2_MAX) -> tuple[float, float]:
    """``(h2, f(h2))`` minimising ``f`` over ``[0, upper]``, ``grad`` its derivative.

    As FaST-LMM: a grid of ``H2_GRID + 1`` points; every grid point lower than both
    neighbours, and an end point lower than its neighbour, brackets a local minimum; the best
    wins. Each minimum is located as the root of the analytic derivative (Brent's root
    finder, to ``1e-14``), or at the bound where the derivative points out of the interval,
    so ``h2`` is exact to rounding. FaST-LMM minimises the function values (Brent), which
    locates ``h2`` to about ``1e-8``, and at the bounds to ``1e-5``.
    """
    grid = np.linspace(0.0, upper, H2_GRID + 1)
    vals = np.array([f(h) for h in grid])
    best = (float(grid[vals.argmin()]), float(vals.min()))
    brackets = []
    if vals[0] < vals[1]:
        brackets.append((grid[0], grid[1]))
    if vals[-1] < vals[-2]:
        brackets.append((grid[-2], grid[-1]))
    for i in range(1, len(grid) - 1):
        if vals[i] < vals[i - 1] and vals[i] < vals[i + 1]:
            brackets.append((grid[i - 1], grid[i + 1]))
    for lo, hi in brackets:
        g_lo, g_hi = grad(lo), grad(hi)
        if lo == grid[0] and g_lo >= 0:
            x = lo
        elif hi == grid[-1] and g_hi <= 0:
            x = hi
        elif g_lo < 0 < g_hi:
            x = optimize.brentq(grad, lo, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps,
                                maxiter=200)
        else:   # no sign change: the lower end of the bracket
            x = lo if f(lo) < f(hi) else hi
        v = f(x)
        if v <= best[1]:
            best = (float(x), float(v))
    return best


@dataclass
class NullModel:
    """The null model of one LOCO block for the traits that share one sample set.

    ``S`` (r), ``U`` (n x r), ``UY`` (r x t) rotated traits, ``h2`` (t), ``nll`` (t), ``yKy``
    (t) at ``h2``, ``sigma2`` (t: total variance, ``sigma_g^2 + sigma_e^2``), ``n`` samples,
    ``d`` covariate columns with the intercept."""

    S: np.ndarray
    U: np.ndarray | None
    UY: np.ndarray
    h2: np.ndarray
    nll: np.ndarray
    yKy: np.ndarray
    sigma2: np.ndarray
    n: int
    d: int
    Q: np.ndarray | None = None
    """An orthonormal basis of the covariates (``n x d``)."""
    chol: list | None = None
    """Per trait, without ``U``: ``(L, LX, Py, XtX)``: the Cholesky factor of
    ``V = h2 K + (1 - h2) I``, ``L^-1 X``, the whitened GLS residual ``L^-1 y - L^-1 X beta``,
    and the Cholesky factor of ``X'V^-1X``."""

    @property
    def r(self) -> int:
        return self.n - self.d

    @property
    def Sd(self) -> np.ndarray:
        """``r x t``: the rotated variances at each trait's ``h2``."""
        return self.S[:, None] * self.h2[None, :] + (1.0 - self.h2)[None, :]

    def variance_components(self) -> list[dict]:
        """Per trait: ``h2``, ``sigma_g2`` and ``sigma_e2`` (REML), ``neg_reml``."""
        return [{"h2": float(h), "sigma_g2": float(h * s), "sigma_e2": float((1 - h) * s),
                 "neg_reml": float(v)}
                for h, s, v in zip(self.h2, self.sigma2, self.nll)]


def fit_null(K: np.ndarray, X: np.ndarray, Y: np.ndarray,
             h2: np.ndarray | None = None) -> NullModel:
    """Scale ``K`` (``n x n``, overwritten) to trace ``n``, rotate, and fit ``h2`` for each
    column of ``Y`` (``n x t``, no missing values); ``h2`` given: held at those values."""
    n, d = X.shape
    K *= n / np.trace(K)
    cholesky = Y.shape[1] <= CHOLESKY_TRAITS
    r = n - d
    fixed = h2
    h2, nll, yKy = (np.empty(Y.shape[1]) for _ in range(3))
    if cholesky:   # one tridiagonal form a trait, no eigenvectors
        Kv, U, UY = K, None, None
        for j in range(Y.shape[1]):
            tri = complement_tridiagonal(Kv.copy(), X, Y[:, j])
            S = tri.S
            if fixed is None:
                h2[j], nll[j] = minimize_h2(tri.neg_reml, tri.grad, h2_upper(S))
            else:
                h2[j] = fixed[j]
                nll[j] = tri.neg_reml(h2[j])
            yKy[j] = tri.yky(h2[j])
    else:
        S, U = complement_eigh(K, X)
        UY = U.T @ Y
        for j in range(Y.shape[1]):
            if fixed is None:
                h2[j], nll[j] = fit_h2(S, UY[:, j])
            else:
                h2[j] = fixed[j]
                nll[j] = neg_reml(h2[j], S, UY[:, j])
            yKy[j] = np.sum(UY[:, j] ** 2 / (h2[j] * S + 1 - h2[j]))
    chol = None
    if cholesky:
        chol = []
        for j in range(Y.shape[1]):
            V = Kv if j == Y.shape[1] - 1 else Kv.copy()
            V *= h2[j]
            V.flat[:: n + 1] += 1.0 - h2[j]
            L = scipy.linalg.cholesky(V, lower=True, overwrite_a=True, check_finite=False)
            LX = scipy.linalg.solve_triangular(L, X, lower=True, check_finite=False)
            Ly = scipy.linalg.solve_triangular(L, Y[:, j], lower=True, check_finite=False)
            XtX = scipy.linalg.cho_factor(LX.T @ LX, lower=True)
            Py = Ly - LX @ scipy.linalg.cho_solve(XtX, LX.T @ Ly)
            chol.append((L, LX, Py, XtX))
    return NullModel(S, U, UY, h2, nll, yKy, yKy / r, n, d, covariate_basis(X), chol)


def test_variants(null: NullModel, Z: np.ndarray) -> dict[str, np.ndarray]:
    """FaST-LMM's per-variant test of the standardised columns of ``Z`` (``n x m``) for every
    trait of ``null``. Returns ``m x t`` arrays ``beta``, ``se`` (per standard deviation of
    the variant), ``statistic`` (F), ``p_value`` (F(1, n - d - 1))."""
    explained = None
    if null.Q is not None:   # as FaST-LMM: the SD of z regressed on the covariates
        explained = (Z - null.Q @ (null.Q.T @ Z)).std(0) <= 1e-10
    if null.U is not None:
        return rotated_tests(null, null.U.T @ Z, explained)
    return cholesky_tests(null, Z, explained)


def cholesky_tests(null: NullModel, Z: np.ndarray,
                   explained: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:func:`test_variants` through each trait's Cholesky factor: ``Z~ = L^-1 Z``, then GLS
    on the whitened covariates. The same numbers as the rotation, to rounding
    (``A (A'VA)^-1 A' = V^-1 - V^-1 X (X'V^-1 X)^-1 X' V^-1``)."""
    m, t = Z.shape[1], len(null.chol)
    out = {k: np.empty((m, t)) for k in ("beta", "se", "statistic", "p_value")}
    r = null.n - null.d
    for j, (L, LX, Py, XtX) in enumerate(null.chol):
        Zw = scipy.linalg.solve_triangular(L, Z, lower=True, check_finite=False)
        a = LX.T @ Zw
        zPz = np.einsum("im,im->m", Zw, Zw) - np.einsum("dm,dm->m", a,
                                                          scipy.linalg.cho_solve(XtX, a))
        zPy = Zw.T @ Py
        if explained is None:
            explained = np.sqrt(np.maximum(zPz, 0.0) / null.n) <= 1e-10
        with np.errstate(divide="ignore", invalid="ignore"):
            beta = np.where(explained, 0.0, zPy / zPz)
            var = (null.yKy[j] - zPy * beta) / (r - 1.0) / zPz
            stat = np.where(explained, 0.0, beta * beta / var)
            se = np.where(explained, np.inf, np.sqrt(var))
        out["beta"][:, j] = beta
        out["se"][:, j] = se
        out["statistic"][:, j] = stat
        out["p_value"][:, j] = stats.f.sf(stat, 1, null.n - null.d - 1)
    return out


def rotated_tests(null: NullModel, UZ: np.ndarray,
                  explained: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:func:`test_variants` from the rotated variants ``UZ = U'Z`` (``r x m``).

    A variant in the span of the covariates (SD of its residual at most 1e-10, as FaST-LMM)
    carries nothing to test: beta 0, statistic 0, p-value 1."""
    if explained is None:
        explained = np.sqrt((UZ * UZ).sum(0) / null.n) <= 1e-10
    if explained.any():
        UZ = UZ.copy()
        UZ[:, explained] = 0.0
    iSd = 1.0 / null.Sd                                  # r x t
    zKz = (UZ * UZ).T @ iSd                              # m x t
    zKy = UZ.T @ (null.UY * iSd)                         # m x t
    r = null.r
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.where(zKz > 0, zKy / zKz, 0.0)
        resid = null.yKy[None, :] - zKy * beta
        var = resid / (r - 1.0) / zKz
        stat = beta * beta / var
    stat = np.where(zKz > 0, stat, 0.0)
    p = stats.f.sf(stat, 1, null.n - null.d - 1)
    with np.errstate(invalid="ignore"):
        se = np.where(explained[:, None], np.inf, np.sqrt(var))
    return {"beta": beta, "se": se, "statistic": stat, "p_value": p}
