"""GLMM with one scalar random effect per level: conditional modes, Laplace and adaptive
Gauss-Hermite quadrature, level by level (numba-compiled; never imports dask).

For level ``l`` with rows ``i`` and ``eta_i = eta0_i + theta u`` (``eta0 = X beta + offset``,
``u ~ N(0, 1)``, ``b = theta u``), the conditional log-likelihood is
``f_l(u) = sum_i log p(y_i | eta_i)`` and the marginal likelihood of the level is

    I_l = int exp(f_l(u)) phi(u) du.

The mode ``u*`` of ``f_l(u) - u^2/2`` is found by Fisher scoring (lme4's PIRLS for one scalar
coefficient), with step halving; ``L_l^2 = 1 + theta^2 sum_i W_i(u*)`` with the PIRLS weights
``W = mu_eta^2 / V(mu)`` (times the binomial trials). With the probabilists' Gauss-Hermite rule
``(z_k, w_k)`` of ``K`` nodes (weight ``exp(-z^2/2)``),

    I_l ~ (1 / L_l) sum_k w_k exp(z_k^2 / 2) exp(f_l(u_k) - u_k^2/2) / sqrt(2 pi),
    u_k = u* + z_k / L_l,

which for ``K = 1`` is the Laplace approximation ``exp(f_l(u*) - u*^2/2) / L_l``. The
criterion returned is ``-2 sum_l log I_l`` without the normalising constants of the family
(log binomial coefficients, ``-log y!``), which the caller adds once: they do not depend on
the parameters.

Families and links are integer codes so that one compiled kernel serves all of them:
:data:`BINOMIAL`, :data:`POISSON`, :data:`NEGBIN` (whose size ``k`` is the argument
``nb_k``), and the families with a dispersion, :data:`GAMMA`, :data:`INVERSE_GAUSSIAN`,
:data:`GAUSSIAN`, whose "log-likelihood" here is ``-deviance / 2`` (lme4's PIRLS minimises
``deviance + |u|^2`` for them, the dispersion entering only the criterion's ``aic`` term,
:meth:`daskmm.core.families.Family.laplace_aic`); :data:`LOGIT`, :data:`PROBIT`,
:data:`CLOGLOG`, :data:`LOG`, :data:`IDENTITY`, :data:`INVERSE`, :data:`INVERSE_SQUARE`
(``1/mu^2``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

BINOMIAL, POISSON, NEGBIN = 0, 1, 2
GAMMA, INVERSE_GAUSSIAN, GAUSSIAN = 3, 4, 5
LOGIT, PROBIT, CLOGLOG, LOG, IDENTITY, INVERSE, INVERSE_SQUARE = 0, 1, 2, 3, 4, 5, 6

_EPS = 1e-300
_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@numba.njit(cache=True, nogil=True)
def _mu(eta, link):  # pragma: no cover - compiled
    """Mean (success probability for the binomial) and d mu / d eta."""
    if link == LOGIT:
        if eta >= 0:
            e = math.exp(-eta)
            p = 1.0 / (1.0 + e)
        else:
            e = math.exp(eta)
            p = e / (1.0 + e)
        return p, p * (1.0 - p)
    if link == PROBIT:
        p = 0.5 * math.erfc(-eta / _SQRT2)
        return p, math.exp(-0.5 * eta * eta - _LOG_SQRT_2PI)
    if link == CLOGLOG:
        ee = math.exp(min(eta, 700.0))
        p = -math.expm1(-ee)
        return p, ee * math.exp(-ee)
    if link == IDENTITY:
        return eta, 1.0
    if link == INVERSE:
        return 1.0 / eta, -1.0 / (eta * eta)
    if link == INVERSE_SQUARE:
        r = 1.0 / math.sqrt(eta) if eta > 0 else math.nan
        return r, -0.5 * r * r * r
    mu = math.exp(eta)  # LOG
    return mu, mu


@numba.njit(cache=True, nogil=True)
def _scaled_term(eta, y, wt, family, link):  # pragma: no cover - compiled
    """``(-wt d(y, mu) / 2, score, Fisher weight)`` of a family with a dispersion (the unit
    deviance ``d``; ``-inf`` where ``mu`` is outside the family's range)."""
    mu, d = _mu(eta, link)
    if family == GAUSSIAN:
        if not math.isfinite(mu):
            return -math.inf, 0.0, 0.0
        v = 1.0
        ll = -0.5 * wt * (y - mu) * (y - mu)
    else:
        if not (mu > 0.0 and math.isfinite(mu)):
            return -math.inf, 0.0, 0.0
        if family == GAMMA:
            v = mu * mu
            ll = wt * (math.log(y / mu) - (y - mu) / mu)
        else:  # INVERSE_GAUSSIAN
            v = mu * mu * mu
            ll = -0.5 * wt * (y - mu) * (y - mu) / (y * mu * mu)
    return ll, wt * (y - mu) * d / v, wt * d * d / v


@numba.njit(cache=True, nogil=True)
def row_term(eta, y, wt, nb_k, family, link):  # pragma: no cover - compiled
    """(log-likelihood without constant, score d/d eta, Fisher weight) of one row.

    Binomial rows carry ``y`` successes out of ``wt`` trials; Poisson rows a count ``y`` with
    prior weight ``wt`` (glmer's ``weights``: the row's log-likelihood times ``wt``);
    negative binomial (NB2, log link) rows a count ``y`` with prior weight ``wt`` and the
    size ``nb_k`` (``Var = mu + mu^2 / k``; glmmTMB's weights: the row's log-likelihood times
    ``wt``), whose log-likelihood terms in ``k`` are kept here because ``k`` is estimated;
    ``nb_k`` is unused by the other families. The families with a dispersion
    (:func:`_scaled_term`) carry prior weights in ``wt``."""
    if family >= GAMMA:
        return _scaled_term(eta, y, wt, family, link)
    if family == POISSON:  # wt: prior weights (1 without)
        mu = math.exp(eta)
        return wt * (y * eta - mu), wt * (y - mu), wt * mu
    if family == NEGBIN:
        mu = math.exp(eta)
        k = nb_k
        ll = (math.lgamma(y + k) - math.lgamma(k) + k * math.log(k)
              - (k + y) * math.log(k + mu) + y * eta)
        return wt * ll, wt * k * (y - mu) / (k + mu), wt * mu * k / (k + mu)
    if link == LOGIT:  # stable form y eta - n log(1 + e^eta), one exp: e = e^-|eta|
        e = math.exp(-abs(eta))
        q = 1.0 + e
        # log1p(e) as log(q) corrected for q's rounding (Goldberg's): within an ulp of
        # log1p and a third of its cost, which is most of a crossed PIRLS pass's row
        l1 = math.log(q) - ((q - 1.0) - e) / q
        if eta > 0:
            p = 1.0 / q
            ll = y * eta - wt * (eta + l1)
        else:
            p = e / q
            ll = y * eta - wt * l1
        return ll, y - wt * p, wt * p * (1.0 - p)
    p, d = _mu(eta, link)
    if link == PROBIT:
        q = 0.5 * math.erfc(eta / _SQRT2)
    else:  # CLOGLOG: 1 - p = exp(-e^eta), exactly
        q = math.exp(-math.exp(min(eta, 700.0)))
    p = max(p, _EPS)
    q = max(q, _EPS)
    ll = y * math.log(p) + (wt - y) * math.log(q)
    v = p * q
    return ll, (y - wt * p) * d / v, wt * d * d / v


@numba.njit(cache=True, nogil=True)
def _level_ll(lo, hi, eta0, y, wt, nb_k, theta, u, family, link):  # pragma: no cover - compiled
    s_ll = 0.0
    s_sc = 0.0
    s_w = 0.0
    for i in range(lo, hi):
        ll, sc, w = row_term(eta0[i] + theta * u, y[i], wt[i], nb_k, family, link)
        s_ll += ll
        s_sc += sc
        s_w += w
    return s_ll, s_sc, s_w


@numba.njit(cache=True, nogil=True)
def levels_objective(starts, eta0, y, wt, nb_k, theta, family, link, nodes, weights,
                     out_u, out_L, warm):  # pragma: no cover - compiled
    """``-2 sum_l log I_l`` (no family constants) over the levels ``[starts[l], starts[l+1])``
    of rows sorted by level; writes each level's mode ``u*`` and ``L_l`` into ``out_u`` and
    ``out_L``. Returns ``inf`` if a mode cannot be found (non-finite likelihood).

    With ``warm`` the search for each mode starts from ``out_u`` (the modes of the previous
    evaluation, a few Fisher steps closer than 0 when the optimiser moves a little); it stops at
    the same tolerance either way, so the criterion agrees with a cold start to rounding."""
    m = starts.shape[0] - 1
    total = 0.0
    K = nodes.shape[0]
    canonical = family == POISSON or (family == BINOMIAL and link == LOGIT)
    for lv in range(m):
        lo = starts[lv]
        hi = starts[lv + 1]
        u = out_u[lv] if warm and math.isfinite(out_u[lv]) else 0.0
        ll, sc, w = _level_ll(lo, hi, eta0, y, wt, nb_k, theta, u, family, link)
        obj = ll - 0.5 * u * u
        for _ in range(100):
            step = (theta * sc - u) / (theta * theta * w + 1.0)
            t = 1.0
            while True:
                un = u + t * step
                lln, scn, wn = _level_ll(lo, hi, eta0, y, wt, nb_k, theta, un, family, link)
                objn = lln - 0.5 * un * un
                if objn >= obj - 1e-12 * abs(obj) or t < 1e-10:
                    break
                t *= 0.5
            # Fisher scoring is Newton's method for canonical links (logit, Poisson log):
            # after a step below 1e-7 the error is O(1e-14) and one more pass is wasted.
            tol = 1e-7 if canonical else 1e-11
            done = abs(un - u) < tol * (1.0 + abs(u))
            u, ll, sc, w, obj = un, lln, scn, wn, objn
            if done:
                break
        if not math.isfinite(obj):
            return math.inf
        L = math.sqrt(theta * theta * w + 1.0)
        out_u[lv] = u
        out_L[lv] = L
        if K == 1:
            total += -2.0 * obj + 2.0 * math.log(L)
            continue
        terms = np.empty(K)
        big = -math.inf
        for k in range(K):
            uk = u + nodes[k] / L
            llk, _, _ = _level_ll(lo, hi, eta0, y, wt, nb_k, theta, uk, family, link)
            terms[k] = (math.log(weights[k]) + 0.5 * nodes[k] * nodes[k] + llk
                        - 0.5 * uk * uk - math.log(L) - _LOG_SQRT_2PI)
            if terms[k] > big:
                big = terms[k]
        acc = 0.0
        for k in range(K):
            acc += math.exp(terms[k] - big)
        total += -2.0 * (big + math.log(acc))
    return total


@numba.njit(cache=True, nogil=True)
def row_terms(eta, y, wt, nb_k, family, link):  # pragma: no cover - compiled
    """Per row: log-likelihood without the family constant, score ``d ll / d eta`` and Fisher
    weight ``W = wt mu_eta^2 / V(mu)``, vectorised over rows (the general PIRLS uses these)."""
    n = eta.shape[0]
    ll = np.empty(n)
    sc = np.empty(n)
    w = np.empty(n)
    for i in range(n):
        ll[i], sc[i], w[i] = row_term(eta[i], y[i], wt[i], nb_k, family, link)
    return ll, sc, w


@numba.njit(cache=True, parallel=True, nogil=True)
def row_terms_parallel(eta, y, wt, nb_k, family, link):  # pragma: no cover - compiled
    """:func:`row_terms` with the rows shared out over the cores (the crossed GLMM's
    partitions of 10^5-10^7 rows; each row's terms alone, so the same numbers)."""
    n = eta.shape[0]
    ll = np.empty(n)
    sc = np.empty(n)
    w = np.empty(n)
    for i in numba.prange(n):
        ll[i], sc[i], w[i] = row_term(eta[i], y[i], wt[i], nb_k, family, link)
    return ll, sc, w


def inverse_link(eta: np.ndarray, link: int) -> np.ndarray:
    """``mu`` from ``eta`` (vectorised; the binomial's success probability)."""
    from scipy import special
    if link == LOGIT:
        return special.expit(eta)
    if link == PROBIT:
        return special.ndtr(eta)
    if link == CLOGLOG:
        return -np.expm1(-np.exp(eta))
    if link == IDENTITY:
        return np.asarray(eta, dtype=float)
    if link == INVERSE:
        return 1.0 / eta
    if link == INVERSE_SQUARE:
        return 1.0 / np.sqrt(eta)
    return np.exp(eta)
