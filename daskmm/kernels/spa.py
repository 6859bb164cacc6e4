"""The saddlepoint approximation of a binary trait's score test (issue 32; pure numpy/scipy).

Under the null a variant's score ``T = sum_i g_i (y_i - mu_i)`` is a weighted sum of
independent centred Bernoulli variables (``mu_i`` the null model's fitted probabilities,
``g_i`` the covariate-adjusted genotype). With one case in a hundred or a thousand its
distribution is far from normal in the tails: a rare variant's normal p-value can be wrong by
orders of magnitude. The saddlepoint approximation (Lugannani and Rice; Dey et al. 2017's
SPAtest, SAIGE's step 2) uses ``T``'s cumulant generating function

    K(t) = sum_i log(1 - mu_i + mu_i e^{g_i t}) - t sum_i g_i mu_i,

solves ``K'(zeta) = q`` and gives

    P(T >= q) ~ 1 - Phi(w + log(v / w) / w),   w = sign(zeta) sqrt(2 (zeta q - K(zeta))),
                                               v = zeta sqrt(K''(zeta)),

each tail of the two-sided p-value on its own side (``T`` is skewed). As SPAtest, it is used
where ``|q| / sd(T)`` passes a cutoff (2); nearer the centre the normal approximation is as
good. Without a continuity correction (SAIGE's and SPAtest's choice), on a lattice (integer
genotypes) it approximates the exact mid-p tail ``P(T > q) + P(T = q) / 2``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special
from scipy.stats import norm

CUTOFF = 2.0
"""``|q| / sd(T)`` from which :func:`spa_pvalue` uses the saddlepoint (SPAtest's default);
below, the normal approximation."""


def _logit(mu: np.ndarray) -> np.ndarray:
    return np.log(mu) - np.log1p(-mu)


def cgf(t: float, g: np.ndarray, mu: np.ndarray) -> tuple[float, float, float]:
    """``(K(t), K'(t), K''(t))`` of ``T = sum g_i (y_i - mu_i)`` (module docstring), in a
    form that does not overflow: ``log(1 - mu + mu e^{gt}) = logaddexp(log(1 - mu), log mu +
    g t)``, and ``K'`` and ``K''`` from the tilted probabilities ``expit(logit mu + g t)``."""
    a = g * t
    p = special.expit(_logit(mu) + a)
    K = float(np.sum(np.logaddexp(np.log1p(-mu), np.log(mu) + a)) - t * np.dot(g, mu))
    return K, float(np.dot(g, p - mu)), float(np.dot(g * g, p * (1.0 - p)))


def saddle_root(q: float, g: np.ndarray, mu: np.ndarray) -> float:
    """``zeta`` with ``K'(zeta) = q`` (``K'`` increases from ``-sum_{g>0} g mu +
    sum_{g<0} ...`` to its upper limit; ``q`` must lie strictly inside ``T``'s range)."""
    def k1(t: float) -> float:
        return cgf(t, g, mu)[1] - q
    sd = math.sqrt(max(float(np.dot(g * g, mu * (1.0 - mu))), 1e-300))
    step = 1.0 / sd
    lo, hi = (0.0, step) if q > 0 else (-step, 0.0)
    for _ in range(200):  # expand the bracket
        if k1(lo) <= 0.0 <= k1(hi):
            break
        lo, hi = (hi, 2.0 * hi) if q > 0 else (2.0 * lo, lo)
    return optimize.brentq(k1, lo, hi, xtol=1e-14, rtol=1e-14, maxiter=500)


END_RTOL = 1e-10
"""A score within this relative distance of an end of ``T``'s range is at the end: its tail
is the exact probability of that one outcome (:func:`end_tails`)."""


def end_tails(g: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                        np.ndarray]:
    """For each column of ``g`` (a vector: one variant): the ends of ``T``'s range and the
    exact probabilities of reaching them, ``(top, P(T = top), bottom, P(T = bottom))``: every
    carrier of a positive ``g`` a case and of a negative one a control, or the reverse
    (a rare variant carried by cases only scores the top; there the saddlepoint's root is
    at infinity)."""
    g2 = g if g.ndim == 2 else g[:, None]
    m = mu[:, None]
    pos, neg = g2 > 0, g2 < 0
    top = np.einsum("im->m", np.where(pos, g2 * (1.0 - m), np.where(neg, -g2 * m, 0.0)))
    bottom = -np.einsum("im->m", np.where(pos, g2 * m, np.where(neg, -g2 * (1.0 - m), 0.0)))
    lm, l1m = np.log(m), np.log1p(-m)
    p_top = np.exp(np.einsum("im->m", np.where(pos, lm, 0.0) + np.where(neg, l1m, 0.0)))
    p_bottom = np.exp(np.einsum("im->m", np.where(pos, l1m, 0.0) + np.where(neg, lm, 0.0)))
    return top, p_top, bottom, p_bottom


def _end_tail(q: np.ndarray, top, p_top, bottom, p_bottom) -> tuple[np.ndarray, np.ndarray]:
    """``(the tail where q is at or past an end, whether it is)``."""
    at_top = q >= top - END_RTOL * np.abs(top)
    at_bottom = q <= bottom + END_RTOL * np.abs(bottom)
    tail = np.where(at_top, np.where(q <= top + END_RTOL * np.abs(top), p_top, 0.0),
                    np.where(q >= bottom - END_RTOL * np.abs(bottom), p_bottom, 0.0))
    return tail, at_top | at_bottom


def spa_tail(q: float, g: np.ndarray, mu: np.ndarray) -> float:
    """``P(T >= q)`` for ``q > 0`` (``P(T <= q)`` for ``q < 0``) by the saddlepoint
    approximation; the normal tail where the saddlepoint is too near zero for its formula
    (``|w| < 1e-8``); at an end of ``T``'s range its outcome's exact probability, past it
    0."""
    tail, at_end = _end_tail(np.array([q]), *end_tails(g, mu))
    if at_end[0]:
        return float(tail[0])
    z = saddle_root(q, g, mu)
    K, _, K2 = cgf(z, g, mu)
    w = math.copysign(math.sqrt(max(2.0 * (z * q - K), 0.0)), z)
    v = z * math.sqrt(K2)
    if abs(w) < 1e-8 or v / w <= 0:
        return float(norm.sf(abs(q) / math.sqrt(max(K2, 1e-300))))
    x = w + math.log(v / w) / w
    return float(norm.sf(x)) if q > 0 else float(norm.cdf(x))


def spa_pvalue(q: float, g: np.ndarray, mu: np.ndarray, cutoff: float = CUTOFF
               ) -> tuple[float, bool]:
    """The two-sided p-value of the score ``q = sum g_i (y_i - mu_i)`` and whether the
    saddlepoint gave it: ``P(T >= |q|) + P(T <= -|q|)``, each tail on its own side, where
    ``|q| / sd(T) >= cutoff``; the normal approximation ``2 Phi(-|q| / sd)`` below."""
    g = np.asarray(g, float)
    mu = np.asarray(mu, float)
    var = float(np.dot(g * g, mu * (1.0 - mu)))
    if var <= 0.0:
        return 1.0, False
    z = abs(q) / math.sqrt(var)
    if z < cutoff:
        return float(2.0 * norm.sf(z)), False
    p = spa_tail(abs(q), g, mu) + spa_tail(-abs(q), g, mu)
    return min(p, 1.0), True


def _roots(q: np.ndarray, G: np.ndarray, lmu: np.ndarray, mu: np.ndarray,
           iters: int = 100) -> np.ndarray:
    """``zeta_j`` with ``K_j'(zeta_j) = q_j`` for every column ``j`` of ``G`` at once:
    Newton's steps kept inside a bracket that each step's sign narrows (bisection where a
    step would leave it), to ``1e-12`` relative in ``K'``."""
    m = len(q)
    sd = np.sqrt(np.maximum(np.einsum("im,i->m", G * G, mu * (1.0 - mu)), 1e-300))
    lo = np.where(q > 0, 0.0, -1.0 / sd)
    hi = np.where(q > 0, 1.0 / sd, 0.0)

    def k1(t: np.ndarray) -> np.ndarray:
        return np.einsum("im,im->m", G, special.expit(lmu[:, None] + G * t) - mu[:, None]) - q
    for _ in range(200):  # widen each bracket until it holds its root
        flo, fhi = k1(lo), k1(hi)
        bad = (flo > 0) | (fhi < 0)
        if not bad.any():
            break
        lo = np.where(flo > 0, 2.0 * lo - hi, lo)
        hi = np.where(fhi < 0, 2.0 * hi - lo, hi)
    t = np.where(q > 0, np.minimum(q / sd ** 2, hi), np.maximum(q / sd ** 2, lo))
    act = np.arange(m)   # the columns still moving: a pass touches only their genotypes
    Ga = G
    for _ in range(iters):
        ta, qa = t[act], q[act]
        p = special.expit(lmu[:, None] + Ga * ta)
        f = np.einsum("im,im->m", Ga, p - mu[:, None]) - qa
        done = np.abs(f) <= 1e-12 * np.maximum(np.abs(qa), 1e-300)
        if done.all():
            break
        d = np.einsum("im,im->m", Ga * Ga, p * (1.0 - p))
        la, ha = np.where(f < 0, ta, lo[act]), np.where(f > 0, ta, hi[act])
        lo[act], hi[act] = la, ha
        nt = ta - f / np.maximum(d, 1e-300)
        out = (nt <= la) | (nt >= ha) | ~np.isfinite(nt)
        t[act] = np.where(done, ta, np.where(out, 0.5 * (la + ha), nt))
        if done.any():
            keep = ~done
            act = act[keep]
            Ga = Ga[:, keep]
    return t


def spa_pvalues(q: np.ndarray, G: np.ndarray, mu: np.ndarray, cutoff: float = CUTOFF
                ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`spa_pvalue` for many variants at once (``G``'s columns, their scores ``q``):
    the saddlepoints of a block found together (:func:`_roots`), so a scan's block costs a
    few passes over its genotypes, not a root-finder per variant. Returns the p-values and
    where the saddlepoint gave them."""
    q = np.asarray(q, float)
    G = np.asarray(G, float)
    mu = np.asarray(mu, float)
    var = np.einsum("im,i->m", G * G, mu * (1.0 - mu))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, np.abs(q) / np.sqrt(var), 0.0)
    p = np.where(var > 0, 2.0 * norm.sf(z), 1.0)
    far = np.flatnonzero(z >= cutoff)
    if not far.size:
        return p, np.zeros(len(q), bool)
    Gf, qf = G[:, far], np.abs(q[far])
    lmu = _logit(mu)
    ends = end_tails(Gf, mu)
    tails = np.zeros(len(far))
    for sign in (1.0, -1.0):
        qs = sign * qf
        end_tail, at_end = _end_tail(qs, *ends)
        inside = ~at_end
        zeta = np.zeros(len(far))
        if inside.any():
            zeta[inside] = _roots(qs[inside], Gf[:, inside], lmu, mu)
        a = Gf * zeta
        K = (np.einsum("im->m", np.logaddexp(np.log1p(-mu)[:, None], np.log(mu)[:, None] + a))
             - zeta * np.einsum("im,i->m", Gf, mu))
        pt = special.expit(lmu[:, None] + a)
        K2 = np.einsum("im,im->m", Gf * Gf, pt * (1.0 - pt))
        w = np.sign(zeta) * np.sqrt(np.maximum(2.0 * (zeta * qs - K), 0.0))
        v = zeta * np.sqrt(K2)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = w + np.log(v / w) / w
        tail = norm.sf(x) if sign > 0 else norm.cdf(x)
        plain = (np.abs(w) < 1e-8) | ~np.isfinite(x)
        tail = np.where(plain, norm.sf(qf / np.sqrt(np.maximum(K2, 1e-300))), tail)
        tails += np.where(inside, tail, end_tail)
    p[far] = np.minimum(tails, 1.0)
    used = np.zeros(len(q), bool)
    used[far] = True
    return p, used
