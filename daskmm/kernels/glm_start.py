"""The GLM without random effects that starts a GLMM, as R's ``glm.fit``: pure numpy per
partition (the orchestration lives in :mod:`daskmm.models.glmm.fit`).

The first iteration starts from the data, not from ``beta = 0``: ``eta = g(mustart)`` with
``glm``'s ``mustart`` (binomial ``(y + 1/2) / (n + 1)``, Poisson ``y + 1/10``, Gamma,
inverse Gaussian and Gaussian ``y``), so counts in
the hundreds or rare events start near their answer. Each later iteration is Fisher scoring
from ``eta = X beta + offset``, with the caller halving the step when the log-likelihood falls.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from daskmm.errors import FitError
from daskmm.kernels import scalar_re as K


def link_fun(mu: np.ndarray, link: int) -> np.ndarray:
    """``eta = g(mu)``."""
    if link == K.LOGIT:
        return special.logit(mu)
    if link == K.PROBIT:
        return special.ndtri(mu)
    if link == K.CLOGLOG:
        return np.log(-np.log1p(-mu))
    if link == K.IDENTITY:
        return np.asarray(mu, dtype=float)
    if link == K.INVERSE:
        return 1.0 / mu
    if link == K.INVERSE_SQUARE:
        return 1.0 / mu ** 2
    return np.log(mu)


def mustart(y: np.ndarray, wt: np.ndarray, family: int) -> np.ndarray:
    """``glm``'s starting means (binomial: a probability; ``y`` counts successes of ``wt``;
    the families with a dispersion: ``y`` itself)."""
    if family == K.BINOMIAL:
        return (y + 0.5) / (wt + 1.0)
    if family >= K.GAMMA:
        return np.asarray(y, dtype=float)
    return y + 0.1


def scoring_step(X: np.ndarray, offset: np.ndarray, y: np.ndarray, wt: np.ndarray,
                 family: int, link: int, beta: np.ndarray | None, nb_k: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """``(X'WX, X'Wz, log-likelihood)`` at ``beta`` (None: at ``glm``'s ``mustart``, where
    the log-likelihood is that of ``mustart`` itself).

    ``W`` are the Fisher weights and ``z = eta - offset + (y - mu) / mu_eta`` the working
    response; the log-likelihood omits the family's normalising constant."""
    if beta is None:
        # a mean the link cannot take (a gaussian(log) response <= 0: glm's mustart is y)
        # gives a non-finite start; such rows sit out the first step (w > 0 below)
        with np.errstate(divide="ignore", invalid="ignore"):
            eta = link_fun(mustart(y, wt, family), link)
    else:
        eta = X @ beta + offset
    ll, score, w = K.row_terms(eta, y, wt, nb_k, family, link)
    ok = w > 0
    if not ok.all():
        X, eta, offset, score, w = X[ok], eta[ok], offset[ok], score[ok], w[ok]
    if beta is None:
        eta = eta - offset  # the offset is part of mu's start, not of the linear predictor
        z = eta + score / w
    else:
        z = eta - offset + score / w
    Xw = X * w[:, None]
    return Xw.T @ X, Xw.T @ z, float(ll.sum())


def normal_equations(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The IRLS step ``A^-1 b`` of the GLM start; a singular ``A`` is an error saying why."""
    try:
        return np.linalg.solve(A, b)
    except np.linalg.LinAlgError as exc:
        raise FitError("the GLM start failed: its weighted cross-product is singular; the "
                       "response may separate the data completely") from exc


def column_moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``X``: the sum and the sum of squares (for :func:`standardising`)."""
    return X.sum(axis=0), np.einsum("ij,ij->j", X, X)


def standardising(sums: np.ndarray, sumsq: np.ndarray, n: int,
                  intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(T, T^-1)`` with ``beta = T gamma``: the optimiser's coordinates ``gamma`` are those of
    the columns centred (when the model has an intercept) and scaled to unit standard
    deviation, so an uncentred or badly scaled covariate gives the optimiser the same problem
    as a centred one. Constant columns and the intercept are left as they are.

    Centred ``x~_j = (x_j - m_j) / s_j`` gives ``X beta = X~ gamma`` with ``gamma_j = s_j
    beta_j`` and ``gamma_0 = beta_0 + sum_j m_j beta_j``."""
    p = len(sums)
    m = sums / max(n, 1)
    s = np.sqrt(np.maximum(sumsq / max(n, 1) - m * m, 0.0))
    T = np.eye(p)
    has_int = bool(np.any(intercept))
    i0 = int(np.flatnonzero(intercept)[0]) if has_int else -1
    for j in range(p):
        if intercept[j] or not s[j] > 1e-12 * max(1.0, abs(m[j])):
            continue
        T[j, j] = 1.0 / s[j]
        if has_int:
            T[i0, j] = -m[j] / s[j]
    return T, np.linalg.inv(T)
