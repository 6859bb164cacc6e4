"""Variance parameters after the fit (pure numpy; never imports dask).

An LMM's covariance parameters have three scales:

* ``theta``: lme4's relative Cholesky factor entries (what the fit optimises);
* ``varpar = (theta, sigma)``: what lmerTest differentiates for Satterthwaite's method;
* ``sdcor``: per term the standard deviations and correlations, at the positions of ``theta``
  (diagonal entry -> ``sd_``, off-diagonal -> ``cor_``), then ``sigma``: what lme4 profiles
  (``profile(fit, prof.scale = "sdcor")`` and ``confint(method = "profile")``).

The deviance as a function of ``(theta, sigma)`` with ``beta`` at its conditional optimum is
lmerTest's ``devfun_vp``::

    D(theta, sigma) = log|L_Z|^2 - sum(log w) + pwrss(theta) / sigma^2 + n log(2 pi sigma^2)
                      [REML: + log|R_X|^2 - p log(2 pi sigma^2)]

which at ``sigma^2 = pwrss / n`` (``/(n - p)`` for REML) is the profiled criterion.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from daskmm.core.reterm import split_theta


def sdcor_names(terms: list, groups: list[str] | None = None) -> list[str]:
    """lme4's ``oldNames = FALSE`` names of the covariance parameters, in ``theta`` order,
    then ``sigma``: ``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``."""
    groups = groups or [t.factor for t in terms]
    names = []
    for t, grp in zip(terms, groups):
        r, c = t.tril_index()
        for i, j in zip(r, c):
            names.append(f"sd_{t.columns[i]}|{grp}" if i == j
                         else f"cor_{t.columns[i]}.{t.columns[j]}|{grp}")
    return names + ["sigma"]


def theta_to_sdcor(terms: list, theta: np.ndarray, sigma: float) -> np.ndarray:
    """``theta`` and ``sigma`` -> standard deviations and correlations (``theta``'s positions),
    then ``sigma``. A correlation with a zero standard deviation is 0, as lme4 reports it."""
    out = []
    for t, th in zip(terms, split_theta(terms, theta)):
        lam = t.Lambda(th)
        cov = sigma ** 2 * lam @ lam.T
        sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
        r, c = t.tril_index()
        for i, j in zip(r, c):
            if i == j:
                out.append(sd[i])
            else:
                den = sd[i] * sd[j]
                out.append(cov[i, j] / den if den > 0 else 0.0)
    return np.array(out + [sigma], dtype=float)


def sdcor_to_theta(terms: list, sdcor: np.ndarray) -> np.ndarray | None:
    """Inverse of :func:`theta_to_sdcor`: ``Lambda = diag(sd / sigma) chol(C)``, ``C`` the
    correlation matrix. None when a correlation matrix is not positive semi-definite or a
    standard deviation is negative (lme4's profile returns ``NA`` there)."""
    sigma = float(sdcor[-1])
    if not sigma > 0:
        return None
    out, k = [], 0
    for t in terms:
        r, c = t.tril_index()
        vals = sdcor[k:k + t.n_theta]
        k += t.n_theta
        sd = np.zeros(t.q)
        C = np.eye(t.q)
        for v, i, j in zip(vals, r, c):
            if i == j:
                sd[i] = v
            else:
                C[i, j] = C[j, i] = v
        if np.any(sd < 0):
            return None
        L = _psd_cholesky(C)
        if L is None:
            return None
        lam = (sd / sigma)[:, None] * L
        out.append(lam[r, c])
    return np.concatenate(out) if out else np.zeros(0)


def _psd_cholesky(C: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor of a correlation matrix, allowing a singular one (|cor| = 1)."""
    q = C.shape[0]
    if q == 1:
        return np.ones((1, 1))
    if np.any(np.abs(C[np.tril_indices(q, -1)]) > 1.0):
        return None
    try:
        return np.linalg.cholesky(C)
    except np.linalg.LinAlgError:
        pass
    L = np.zeros_like(C)
    for j in range(q):
        d = C[j, j] - L[j, :j] @ L[j, :j]
        if d < -1e-12:
            return None
        L[j, j] = np.sqrt(max(d, 0.0))
        for i in range(j + 1, q):
            rest = C[i, j] - L[i, :j] @ L[j, :j]
            if L[j, j] > 0:
                L[i, j] = rest / L[j, j]
            elif abs(rest) > 1e-10:
                return None
    return L


def deviance_vp(ldL2: float, pwrss: float, ldRX2: float, sigma: float, n: int, p: int,
                reml: bool) -> float:
    """lmerTest's ``devfun_vp``: the deviance at ``(theta, sigma)``; ``ldL2`` already has
    ``sum(log w)`` taken off."""
    s2 = sigma ** 2
    dev = ldL2 + pwrss / s2 + n * np.log(2 * np.pi * s2)
    if reml:
        dev += ldRX2 - p * np.log(2 * np.pi * s2)
    return float(dev)


ZERO_TOL = float(np.sqrt(np.finfo(float).eps / 7e-7))
"""numDeriv's ``zero.tol``: coordinates smaller than this step by ``eps`` instead of ``d |x|``."""


def richardson_hessian(f: Callable[[np.ndarray], float], x: np.ndarray, d: float = 0.1,
                       eps: float = 1e-4, r: int = 4, v: float = 2.0) -> np.ndarray:
    """Hessian by numDeriv's ``genD`` (what lmerTest calls): central differences at ``r``
    steps ``h0 / v^k``, ``h0 = d |x| + eps [|x| < zero.tol]``, combined by Richardson
    extrapolation; cross terms from ``f(x + h_i + h_j)`` and ``f(x - h_i - h_j)`` and the
    diagonal."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    h0 = np.abs(d * x) + eps * (np.abs(x) < ZERO_TOL)
    f0 = f(x)
    unit = np.eye(n)
    Hd = np.empty(n)
    for i in range(n):
        h, ap = h0.copy(), np.empty(r)
        for k in range(r):
            f1, f2 = f(x + unit[i] * h), f(x - unit[i] * h)
            ap[k] = (f1 - 2 * f0 + f2) / h[i] ** 2
            h = h / v
        Hd[i] = _extrapolate(ap)
    H = np.diag(Hd)
    for i in range(n):
        for j in range(i):
            h, ap = h0.copy(), np.empty(r)
            for k in range(r):
                step = unit[i] * h + unit[j] * h
                f1, f2 = f(x + step), f(x - step)
                ap[k] = (f1 - 2 * f0 + f2 - Hd[i] * h[i] ** 2 - Hd[j] * h[j] ** 2) / (
                    2 * h[i] * h[j])
                h = h / v
            H[i, j] = H[j, i] = _extrapolate(ap)
    return H


def richardson_jacobian(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                        d: float = 1e-4, eps: float = 1e-4, r: int = 4,
                        v: float = 2.0) -> np.ndarray:
    """Jacobian ``d f / d x`` (``f`` array-valued; the result has ``f``'s shape plus one axis
    for ``x``) by numDeriv's ``jacobian(method = "Richardson")``: central differences at ``r``
    steps from ``h0 = d |x| + eps [|x| < zero.tol]``, extrapolated."""
    x = np.asarray(x, dtype=float)
    h0 = np.abs(d * x) + eps * (np.abs(x) < ZERO_TOL)
    cols = []
    for i in range(len(x)):
        e = np.zeros_like(x)
        ap = []
        h = h0[i]
        for _ in range(r):
            e[i] = h
            ap.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h))
            h = h / v
        cols.append(_extrapolate(np.stack(ap)))
    return np.stack(cols, axis=-1)


def _extrapolate(ap: np.ndarray) -> np.ndarray:
    """Richardson's table over steps halved each time (error terms in ``h^2``, ``h^4``...)."""
    ap = np.array(ap, dtype=float)
    r = ap.shape[0]
    for m in range(1, r):
        ap = (ap[1:r - m + 1] * 4 ** m - ap[:r - m]) / (4 ** m - 1)
    return ap[0]


def pinv_sym(H: np.ndarray, tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Moore-Penrose inverse of a symmetric matrix over eigenvalues above ``tol`` (as
    lmerTest), and the eigenvalues (for the caller's convergence warnings)."""
    w, V = np.linalg.eigh((H + H.T) / 2)
    pos = w > tol
    return (V[:, pos] / w[pos]) @ V[:, pos].T, w


def satterthwaite(Lc: np.ndarray, vcov: np.ndarray, jac: np.ndarray,
                  A: np.ndarray) -> tuple[float, float]:
    """Variance and Satterthwaite degrees of freedom of the contrast ``Lc' beta``.

    ``jac[:, :, i]`` is ``d vcov(beta) / d varpar_i``, ``A`` the asymptotic covariance of
    ``varpar`` (twice the inverse Hessian of the deviance): ``df = 2 v^2 / (g' A g)``,
    ``v = L' V L``, ``g_i = L' J_i L`` (lmerTest's ``contest1D``).
    """
    v = float(Lc @ vcov @ Lc)
    g = np.einsum("a,abi,b->i", Lc, jac, Lc)
    den = float(g @ A @ g)
    return v, (2 * v ** 2 / den) if den > 0 else np.inf


def satterthwaite_f(Lm: np.ndarray, beta: np.ndarray, vcov: np.ndarray, jac: np.ndarray,
                    A: np.ndarray, tol: float = 1e-8) -> tuple[float, int, float]:
    """Multi-degree-of-freedom F test of ``L beta = 0`` with Satterthwaite's denominator
    degrees of freedom (lmerTest's ``contestMD`` and ``get_Fstat_ddf``): ``(F, ndf, ddf)``."""
    Lm = np.atleast_2d(Lm)
    VL = Lm @ vcov @ Lm.T
    d, P = np.linalg.eigh(VL)
    order = np.argsort(d)[::-1]
    d, P = d[order], P[:, order]
    pos = d > tol * max(d[0], 0)
    d, P = d[pos], P[:, pos]
    q = len(d)
    PtL = P.T @ Lm
    t2 = (PtL @ beta) ** 2 / d
    F = float(t2.sum() / q)
    nu = np.array([satterthwaite(PtL[m], vcov, jac, A)[1] for m in range(q)])
    return F, q, _f_ddf(nu)


def _f_ddf(nu: np.ndarray, tol: float = 1e-8) -> float:
    """lmerTest's ``get_Fstat_ddf``: the F statistic's denominator df from the df of its
    independent t statistics (2 when any is at most 2; their mean when all agree)."""
    if len(nu) == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2)))
    return 2 * E / (E - len(nu))


def hessian_se(H: np.ndarray) -> np.ndarray:
    """Standard errors from the Hessian of a deviance: ``sqrt(diag(2 H^+))`` (NaN where the
    pseudo-inverse cannot be had)."""
    try:
        cov = 2 * np.linalg.pinv(H)
        return np.sqrt(np.maximum(np.diag(cov), 0))
    except np.linalg.LinAlgError:
        return np.full(len(H), np.nan)
