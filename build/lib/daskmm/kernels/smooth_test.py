"""Approximate significance of smooth terms, as mgcv's ``summary.gam`` computes it.

* :func:`test_stat` -- mgcv's ``testStat`` (``type = 0``, Wood 2013, Biometrika): a Wald
  statistic with a rank-``r`` pseudo-inverse of the term's covariance, ``r`` the term's
  effective degrees of freedom ``edf1`` (rounded as mgcv does, with the fractional part
  handled by a two-term mixture), referred to a weighted sum of chi-squares, or of
  F-ratios when the scale is estimated.
* :func:`re_test` -- mgcv's ``reTest`` for ``bs = "re"`` terms (Wood 2013, Biometrika 100):
  the statistic ``b'Sch b / phi`` referred to the weighted chi-square sum with the
  eigenvalues of its covariance.
* :func:`psum_chisq` -- upper tail of ``sum_j lambda_j chi^2_{h_j}``, by inverting the
  cumulant generating function along the line through its saddlepoint (mgcv uses Davies'
  algorithm, whose accuracy is absolute, 2e-5 by default: it reports 0 where this gives a
  tiny number, and the two agree to that accuracy).

Every input is a small matrix from the fit: no data, no dask.
"""

from __future__ import annotations

import cmath
import math
import warnings

import numpy as np
from scipy import integrate, optimize, stats

EPS = np.finfo(float).eps


def psum_chisq(q: float, lam: np.ndarray, df: np.ndarray | None = None) -> float:
    """``P(sum_j lam_j X_j > q)``, ``X_j`` independent chi-square on ``df_j``.

    The inversion integral of the cumulant generating function ``K`` taken along the
    vertical line through its saddlepoint ``t`` (``K'(t) = q``), where the integrand is
    smooth and of the size of the answer: relative accuracy about 1e-6 from the centre of
    the distribution to probabilities of 1e-300 (an integral along the real axis, Imhof's,
    has only absolute accuracy).
    """
    lam = np.asarray(lam, dtype=float)
    h = np.ones_like(lam) if df is None else np.asarray(df, dtype=float)
    keep = lam != 0
    lam, h = lam[keep], h[keep]
    if len(lam) == 0:
        return 1.0 if q < 0 else 0.0
    if len(lam) == 1 and lam[0] > 0:
        return float(stats.chi2.sf(q / lam[0], h[0]))
    if len(lam) == 1:
        return float(stats.chi2.cdf(q / lam[0], h[0]))
    hi = 1 / (2 * lam.max()) if lam.max() > 0 else math.inf
    lo = 1 / (2 * lam.min()) if lam.min() < 0 else -math.inf

    def k1(t: float) -> float:
        return float(np.sum(h * lam / (1 - 2 * t * lam))) - q

    a = lo + 1e-10 * max(1.0, abs(lo)) if math.isfinite(lo) else -1.0
    b = hi - 1e-10 * max(1.0, abs(hi)) if math.isfinite(hi) else 1.0
    while not math.isfinite(lo) and k1(a) > 0:
        a *= 2
    while not math.isfinite(hi) and k1(b) < 0:
        b *= 2
    if k1(a) > 0:  # q below the support
        return 1.0
    if k1(b) < 0:
        return 0.0
    t = optimize.brentq(k1, a, b, xtol=1e-300, rtol=1e-14, maxiter=500)
    if abs(t) < 1e-6 * min(abs(a), abs(b)):  # the pole at 0: step off it
        t = 0.1 * (b if abs(b) < abs(a) else a)
    pairs = list(zip(lam.tolist(), h.tolist()))

    def K(z: complex) -> complex:
        return -0.5 * sum(hh * cmath.log(1 - 2 * z * ll) for ll, hh in pairs)

    c0 = (K(t) - t * q).real

    def f(y: float) -> float:
        z = complex(t, y)
        return (cmath.exp(K(z) - z * q - c0) / z).real

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        val, _ = integrate.quad(f, 0, np.inf, limit=200, epsabs=0, epsrel=1e-7)
    p = val / math.pi * math.exp(c0)
    if t < 0:
        p = 1 + p
    return float(min(1.0, max(0.0, p)))


def test_stat(p: np.ndarray, X: np.ndarray, V: np.ndarray, rank: float,
              res_df: float = -1) -> tuple[float, float, float]:
    """mgcv's ``testStat(p, X, V, rank, type = 0, res.df)``.

    Parameters
    ----------
    p : ndarray
        The term's coefficients.
    X : ndarray
        A root of the term's block of ``X'WX`` (any ``X`` with that cross-product).
    V : ndarray
        The term's block of the Bayesian covariance ``Vp``.
    rank : float
        ``min(ncol, edf1)`` of the term.
    res_df : float
        Residual degrees of freedom when the scale is estimated (F reference), else -1.

    Returns
    -------
    (stat, p_value, ref_df)
    """
    _, R = np.linalg.qr(X)
    V = R @ V @ R.T
    V = (V + V.T) / 2
    ev, vec = np.linalg.eigh(V)
    ev, vec = ev[::-1], vec[:, ::-1]
    siv = np.sign(vec[0])
    siv[siv == 0] = 1
    vec = vec * siv
    k = max(0, math.floor(rank))
    nu = abs(rank - k)
    k1 = k + 1 if nu > 0 else k
    r_est = int(np.sum(ev > ev.max() * EPS ** 0.9))
    if r_est < k1:
        k1 = k = r_est
        nu = 0
        rank = r_est
    vec = vec[:, :k1].copy()
    if nu > 0 and k > 0:
        if k > 1:
            vec[:, :k - 1] = vec[:, :k - 1] / np.sqrt(ev[:k - 1])
        b12 = math.sqrt(max(0.0, 0.5 * nu * (1 - nu)))
        B = np.array([[1.0, b12], [b12, nu]])
        evk = np.diag(ev[k - 1:k1] ** -0.5)
        B = evk @ B @ evk
        eb, ebv = np.linalg.eigh(B)
        rB = ebv @ np.diag(np.sqrt(eb)) @ ebv.T
        vec1 = vec.copy()
        vec1[:, k - 1:k1] = (rB @ np.diag([-1.0, 1.0]) @ vec[:, k - 1:k1].T).T
        vec[:, k - 1:k1] = (rB @ vec[:, k - 1:k1].T).T
    else:
        if k == 0:
            vec = vec * math.sqrt(1 / ev[0])
        else:
            vec = vec / np.sqrt(ev[:k])
        vec1 = vec
        if k == 1:
            rank = 1
    Rp = R @ p
    d = float(np.sum((vec.T @ Rp) ** 2))
    d1 = float(np.sum((vec1.T @ Rp) ** 2))
    rank1 = rank
    pval = 2.0
    if nu > 0:
        if k1 == 1:
            rank1 = 1
            val = np.array([1.0])
        else:
            val = np.ones(k1)
            rp = nu + 1
            val[k - 1] = (rp + math.sqrt(rp * (2 - rp))) / 2
            val[k1 - 1] = rp - val[k - 1]
        if res_df <= 0:
            pval = (psum_chisq(d, val) + psum_chisq(d1, val)) / 2
        else:
            k0 = max(1, round(res_df))
            df = np.concatenate([np.ones(len(val)), [k0]])
            pval = (psum_chisq(0.0, np.concatenate([val, [-d / k0]]), df)
                    + psum_chisq(0.0, np.concatenate([val, [-d1 / k0]]), df)) / 2
    if pval > 1:
        if res_df <= 0:
            pval = (stats.chi2.sf(d, rank1) + stats.chi2.sf(d1, rank1)) / 2
        else:
            pval = (stats.f.sf(d / rank1, rank1, res_df) + stats.f.sf(d1 / rank1, rank1,
                                                                      res_df)) / 2
    return d, float(min(1.0, pval)), float(rank)


def re_test(b: np.ndarray, Ve_m: np.ndarray, Sch: np.ndarray, sig2: float,
            scale_estimated: bool, df_residual: float) -> tuple[float, float, float]:
    """mgcv's ``reTest`` for a random-effect term.

    Parameters
    ----------
    b : ndarray
        The term's coefficients.
    Ve_m : ndarray
        The term's block of the frequentist covariance (``recov``'s ``Ve``).
    Sch : ndarray
        ``Rm'Rm``: the Schur complement of the term's block in the penalised cross-product
        matrix (``recov``'s ``Rm``).
    sig2, scale_estimated, df_residual
        The scale, whether it was estimated, and the residual degrees of freedom.

    Returns
    -------
    (stat, p_value, rank)
    """
    stat = float(b @ Sch @ b) / sig2
    L = _psd_root(Sch)  # Sch = L L'
    ev = np.linalg.eigvalsh(L.T @ Ve_m @ L / sig2)
    ev[ev < 0] = 0
    rank = int(np.sum(ev > ev.max() * EPS ** 0.8))
    if scale_estimated:
        k = max(1, round(df_residual))
        pval = psum_chisq(0.0, np.concatenate([ev, [-stat / k]]),
                          np.concatenate([np.ones(len(ev)), [k]]))
    else:
        pval = psum_chisq(stat, ev)
    return stat, pval, float(rank)


def _psd_root(M: np.ndarray) -> np.ndarray:
    ev, U = np.linalg.eigh((M + M.T) / 2)
    ev[ev < 0] = 0
    return U * np.sqrt(ev)
