"""A binary trait's score test per variant, SAIGE's step 2 (issue 32; pure numpy/scipy): the
covariate-adjusted genotype, the score, its variance under the null logistic mixed model
(exactly, and by SAIGE's variance ratio), and the p-value by the saddlepoint approximation
where the score is far out (:mod:`daskmm.kernels.spa`).

The null model (fitted elsewhere) gives the fitted probabilities ``mu`` (with the random
effect), ``W = diag(mu (1 - mu))``, the covariates ``X`` and, with a relationship matrix ``K``
and its variance ``tau``, the working covariance ``Sigma = W^-1 + tau K`` and

    P = Sigma^-1 - Sigma^-1 X (X' Sigma^-1 X)^-1 X' Sigma^-1.

For a variant ``G`` (dosages):

    G~  = G - X (X'WX)^-1 X'W G            the covariate-adjusted genotype
    T   = G~' (y - mu)                     the score
    Var = G' P G                           exact; ``r G~'W G~`` by the variance ratio
    r   = mean over markers of G'PG / G~'WG~

(``tau = 0``: ``P = W - WX(X'WX)^-1X'W`` and ``G'PG = G~'WG~`` exactly, ``r = 1``.) For the
saddlepoint the score is rescaled to the variance of independent Bernoulli draws, ``q = T
sqrt(G~'WG~ / Var)``, and its law is ``sum g~_i (y_i - mu_i)`` (SAIGE's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.linalg as la
from scipy.stats import norm

from daskmm.kernels.spa import CUTOFF, spa_pvalues


@dataclass(frozen=True)
class ScoreNull:
    """What the score test needs of a fitted null model (:func:`score_null`).

    Attributes
    ----------
    X : numpy.ndarray
        Covariates (``n x p``, the intercept included).
    mu, resid, w : numpy.ndarray
        Fitted probabilities, ``y - mu``, ``mu (1 - mu)``.
    XWX : tuple
        ``X'WX``'s Cholesky factor (``scipy.linalg.cho_factor``).
    solve : callable or None
        ``B -> Sigma^-1 B``; ``None`` without a random effect (``tau = 0``).
    SiX, XSiX : numpy.ndarray or None
        ``Sigma^-1 X`` and ``(X' Sigma^-1 X)``'s Cholesky factor.
    """

    X: np.ndarray
    mu: np.ndarray
    resid: np.ndarray
    w: np.ndarray
    XWX: tuple
    solve: Callable[[np.ndarray], np.ndarray] | None
    SiX: np.ndarray | None
    XSiX: tuple | None


def score_null(y: np.ndarray, X: np.ndarray, mu: np.ndarray, K: np.ndarray | None = None,
               tau: float = 0.0, solve: Callable[[np.ndarray], np.ndarray] | None = None
               ) -> ScoreNull:
    """:class:`ScoreNull` of a fitted null: the 0/1 trait ``y``, covariates ``X``, fitted
    probabilities ``mu`` and, for a mixed null, the relationship matrix ``K`` (dense, ``n x
    n``) and its variance ``tau``, or ``solve`` (``B -> Sigma^-1 B``, a factor the null's fit
    made already)."""
    y, X, mu = np.asarray(y, float), np.asarray(X, float), np.asarray(mu, float)
    if not np.all((mu > 0) & (mu < 1)):
        raise ValueError("mu: fitted probabilities strictly between 0 and 1")
    w = mu * (1.0 - mu)
    XWX = la.cho_factor(X.T @ (w[:, None] * X), lower=True)
    if solve is None:
        if K is None or tau <= 0:
            return ScoreNull(X, mu, y - mu, w, XWX, None, None, None)
        S = tau * np.asarray(K, float)
        S[np.diag_indices_from(S)] += 1.0 / w
        solve = partial(la.cho_solve, la.cho_factor(S, lower=True))
    SiX = solve(X)
    return ScoreNull(X, mu, y - mu, w, XWX, solve, SiX, la.cho_factor(X.T @ SiX, lower=True))


def adjusted(null: ScoreNull, G: np.ndarray) -> np.ndarray:
    """``G~ = G - X (X'WX)^-1 X'W G`` for variants in the columns of ``G`` (``n x m``)."""
    G = np.asarray(G, float)
    return G - null.X @ la.cho_solve(null.XWX, null.X.T @ (null.w[:, None] * G))


def exact_variance(null: ScoreNull, G: np.ndarray) -> np.ndarray:
    """``diag(G' P G)``: each variant's score variance under the null (``G~'WG~`` without a
    random effect)."""
    G = np.asarray(G, float)
    if null.solve is None:
        Gt = adjusted(null, G)
        return np.einsum("im,i,im->m", Gt, null.w, Gt)
    SiG = null.solve(G)
    XSiG = null.SiX.T @ G
    return (np.einsum("im,im->m", G, SiG)
            - np.einsum("pm,pm->m", XSiG, la.cho_solve(null.XSiX, XSiG)))


def variance_ratio(null: ScoreNull, markers: np.ndarray) -> float:
    """SAIGE's variance ratio: the mean over ``markers`` (columns; SAIGE takes 30 at random
    with a minor allele count of 20 or more) of ``G'PG / G~'WG~``."""
    Gt = adjusted(null, markers)
    return float(np.mean(exact_variance(null, markers) /
                         np.einsum("im,i,im->m", Gt, null.w, Gt)))


@dataclass(frozen=True)
class ScoreTest:
    """Per variant: the score ``T``, its variance (``r G~'WG~``), ``z = T / sd``, the
    two-sided p-value and whether the saddlepoint gave it."""

    T: np.ndarray
    var: np.ndarray
    z: np.ndarray
    p: np.ndarray
    spa: np.ndarray


def score_tests(nulls: list[ScoreNull], G: np.ndarray, ratios: list[float],
                spa: bool = True, cutoff: float = CUTOFF) -> list[ScoreTest]:
    """:func:`score_test` for several traits of the same samples and covariates at once: the
    scores and ``G~'WG~`` of every trait from two passes over ``G`` (``G'[r_1, W_1 X, ...,
    r_k, W_k X]`` and ``(G * G)'[w_1, ..., w_k]``) without forming ``G~``:

        T    = G'r - B'C^-1 X'r,       G~'WG~ = diag(G'WG) - diag(B'C^-1 B),

    ``B = X'WG``, ``C = X'WX`` (the difference loses at most ``log10(G'WG / G~'WG~)`` digits,
    3 for a variant of allele frequency 0.999 coded 0/1/2). ``G~`` is formed only for the
    variants the saddlepoint takes."""
    G = np.asarray(G, float)
    if not nulls:
        return []
    X = nulls[0].X
    d = X.shape[1]
    cols = np.concatenate([np.column_stack([nl.resid, nl.w[:, None] * X]) for nl in nulls],
                          axis=1)
    GR = G.T @ cols                                   # m x k(1 + d)
    GWG = (G * G).T @ np.column_stack([nl.w for nl in nulls])   # m x k
    out = []
    for j, (nl, ratio) in enumerate(zip(nulls, ratios)):
        Gr, B = GR[:, j * (1 + d)], GR[:, j * (1 + d) + 1:(j + 1) * (1 + d)].T
        CB = la.cho_solve(nl.XWX, B)
        T = Gr - CB.T @ (X.T @ nl.resid)
        indep = np.maximum(GWG[:, j] - np.einsum("pm,pm->m", B, CB), 0.0)
        out.append(_finish(nl, G, T, indep, ratio, spa, cutoff))
    return out


def _finish(null: ScoreNull, G: np.ndarray, T: np.ndarray, indep: np.ndarray, ratio: float,
            spa: bool, cutoff: float) -> ScoreTest:
    var = ratio * indep
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, T / np.sqrt(var), 0.0)
    p = 2.0 * norm.sf(np.abs(z))
    used = np.zeros(len(T), bool)
    far = np.flatnonzero(np.abs(z) >= cutoff) if spa else np.zeros(0, int)
    if far.size:  # the block's saddlepoints together, on the independent draws' scale
        q = T[far] * np.sqrt(indep[far] / var[far])
        p[far], used[far] = spa_pvalues(q, adjusted(null, G[:, far]), null.mu, cutoff)
    return ScoreTest(T, var, z, p, used)


def score_test(null: ScoreNull, G: np.ndarray, ratio: float = 1.0, spa: bool = True,
               cutoff: float = CUTOFF) -> ScoreTest:
    """The score test of each variant in ``G``'s columns (module docstring): the variance
    ``ratio`` times ``G~'WG~``; the saddlepoint's p-value where ``|z| >= cutoff`` (``spa``),
    else (and without ``spa``) the normal's."""
    Gt = adjusted(null, G)
    T = Gt.T @ null.resid
    indep = np.einsum("im,i,im->m", Gt, null.w, Gt)
    return _finish(null, np.asarray(G, float), T, indep, ratio, spa, cutoff)
