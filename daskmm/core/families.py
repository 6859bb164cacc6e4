"""Families and links, as objects, in one place (glum's and R's ``family()`` idea).

A :class:`Family` knows its name as lme4 and glmmTMB write it, its links, its variance
function, how to check a response, and the constant of its log-likelihood that glmer includes
(the binomial coefficient, ``-log y!``). A :class:`Link` knows the link, its inverse and
``d mu / d eta``. The compiled kernels take the integer ``code`` of each (numba dispatches on
integers); every other module goes through these objects.

``get_family("binomial").link("probit")`` is the whole lookup; unknown names raise
:class:`~daskmm.errors.ModelError` naming the allowed ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from daskmm.errors import DataError, ModelError, num

# integer codes shared with daskmm.kernels.scalar_re (kept equal there: the kernels must not
# import this module's scipy dependencies at compile time)
BINOMIAL, POISSON, NEGBIN = 0, 1, 2
GAMMA, INVERSE_GAUSSIAN, GAUSSIAN = 3, 4, 5
SCALED = (GAMMA, INVERSE_GAUSSIAN, GAUSSIAN)
"""The families with a dispersion (glmer's ``useSc``): their Laplace criterion is lme4's
``ldL2 + |u|^2 + aic(deviance)`` (:meth:`Family.laplace_aic`)."""
LOGIT, PROBIT, CLOGLOG, LOG, IDENTITY, INVERSE, INVERSE_SQUARE = 0, 1, 2, 3, 4, 5, 6


def _expit(eta):
    from scipy import special
    return special.expit(eta)


def _ndtr(eta):
    from scipy import special
    return special.ndtr(eta)


def _ndtri(mu):
    from scipy import special
    return special.ndtri(mu)


@dataclass(frozen=True)
class Link:
    """A link function ``eta = g(mu)``."""

    name: str
    code: int
    link: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]
    mu_eta: Callable[[np.ndarray], np.ndarray]


LINKS = {
    "logit": Link("logit", LOGIT, lambda mu: np.log(mu / (1 - mu)), _expit,
                  lambda eta: _expit(eta) * (1 - _expit(eta))),
    "probit": Link("probit", PROBIT, _ndtri, _ndtr,
                   lambda eta: np.exp(-0.5 * eta ** 2) / np.sqrt(2 * np.pi)),
    "cloglog": Link("cloglog", CLOGLOG, lambda mu: np.log(-np.log1p(-mu)),
                    lambda eta: -np.expm1(-np.exp(eta)),
                    lambda eta: np.exp(eta - np.exp(eta))),
    "log": Link("log", LOG, np.log, np.exp, np.exp),
    "identity": Link("identity", IDENTITY, lambda mu: mu, lambda eta: eta,
                     lambda eta: np.ones_like(eta)),
    "inverse": Link("inverse", INVERSE, lambda mu: 1 / mu, lambda eta: 1 / eta,
                    lambda eta: -1 / eta ** 2),
    "1/mu^2": Link("1/mu^2", INVERSE_SQUARE, lambda mu: 1 / mu ** 2,
                   lambda eta: 1 / np.sqrt(eta), lambda eta: -0.5 * eta ** -1.5),
}


@dataclass(frozen=True)
class Family:
    """A response distribution.

    Attributes
    ----------
    name : str
        ``gaussian``, ``binomial``, ``poisson``, ``negative_binomial``, ``gamma``,
        ``inverse_gaussian``.
    code : int
        The kernels' code. The gaussian family with the identity link is the LMM's; with
        another link a GLMM's (:meth:`is_lmm`).
    links : tuple of str
        Allowed links, the default first.
    label : str
        As printed in messages.
    canonical : str or None
        The canonical link, for which Fisher scoring (PIRLS) is Newton's method and converges
        quadratically (the negative binomial's log link is not its canonical one).
    """

    name: str
    code: int
    links: tuple[str, ...]
    label: str
    canonical: str | None = None
    r_name: str = ""

    @property
    def default_link(self) -> str:
        return self.links[0]

    @property
    def scaled(self) -> bool:
        """A family with a dispersion parameter (glmer's ``useSc``): Gamma, inverse Gaussian,
        Gaussian."""
        return self.code in SCALED

    def is_lmm(self, link: str | None) -> bool:
        """The gaussian family with the identity link: a linear mixed model."""
        return self.code == GAUSSIAN and (link or self.default_link) == "identity"

    def link(self, name: str | None = None) -> Link:
        """The link ``name`` (the family's default when None)."""
        name = name or self.default_link
        if name not in self.links:
            raise ModelError(f"link {name!r} is not available for the {self.name} family; use "
                             f"one of: {', '.join(self.links)}")
        return LINKS[name]

    def variance(self, mu: np.ndarray, size: float | None = None) -> np.ndarray:
        """``V(mu)``: 1, ``mu (1 - mu)``, ``mu``, ``mu + mu^2 / size``."""
        if self.code == GAUSSIAN:
            return np.ones_like(mu)
        if self.code == BINOMIAL:
            return mu * (1 - mu)
        if self.code == POISSON:
            return mu
        if self.code == GAMMA:
            return mu ** 2
        if self.code == INVERSE_GAUSSIAN:
            return mu ** 3
        return mu + mu ** 2 / size

    def unit_deviance(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray,
                      size: float | None = None) -> np.ndarray:
        """R's ``family()$dev.resids``: each row's deviance contribution, ``y`` on the
        mean's scale (the proportion of successes for the binomial, with ``wt`` trials)."""
        from scipy.special import xlogy
        if self.code == GAUSSIAN:
            return wt * (y - mu) ** 2
        if self.code == INVERSE_GAUSSIAN:
            return wt * (y - mu) ** 2 / (y * mu ** 2)
        if self.code == BINOMIAL:
            return 2 * wt * (xlogy(y, y / mu) + xlogy(1 - y, (1 - y) / (1 - mu)))
        if self.code == POISSON:
            return 2 * wt * (xlogy(y, y / mu) - (y - mu))
        if self.code == GAMMA:
            return -2 * wt * (np.log(np.where(y == 0, 1.0, y / mu)) - (y - mu) / mu)
        # MASS::negative.binomial(theta)$dev.resids
        return 2 * wt * (y * np.log(np.maximum(y, 1) / mu)
                         - (y + size) * np.log((y + size) / (mu + size)))

    def sample(self, mu: np.ndarray, wt: np.ndarray, rng: np.random.Generator,
               size: float | None = None, sigma: float = 1.0) -> np.ndarray:
        """Draw responses with mean ``mu``: the number of successes of ``wt`` trials for the
        binomial, counts for the Poisson and the negative binomial (``Var = mu + mu^2 /
        size``), as lme4's ``simulate``; for the families with a dispersion ``phi =
        sigma^2 / wt`` (``wt`` the prior weights): Gamma with shape ``1 / phi`` (``Var =
        phi mu^2``), inverse Gaussian with ``Var = phi mu^3``, normal with ``Var = phi``."""
        if self.code in SCALED:
            phi = sigma ** 2 / np.asarray(wt, dtype=float)
            if self.code == GAMMA:
                return rng.gamma(1.0 / phi, mu * phi)
            if self.code == INVERSE_GAUSSIAN:
                return rng.wald(mu, 1.0 / phi)
            return rng.normal(mu, np.sqrt(phi))
        if self.code == BINOMIAL:
            return rng.binomial(np.asarray(wt, dtype=np.int64), mu).astype(float)
        if self.code == POISSON:
            return rng.poisson(mu).astype(float)
        if self.code == NEGBIN:
            return rng.negative_binomial(size, size / (size + mu)).astype(float)
        raise ModelError(f"simulating the {self.label} family is not built")

    def check_response(self, y: np.ndarray, wt: np.ndarray, column: str) -> None:
        """Raise :class:`DataError` naming ``column`` for a value the family cannot model."""
        if self.code == GAUSSIAN:
            return
        if self.code in (GAMMA, INVERSE_GAUSSIAN):
            bad = ~(y > 0)
            if bad.any():
                raise DataError(f"response {column!r} has {int(bad.sum())} value(s) that are "
                                f"not positive (e.g. {num(y[bad][0])}); the {self.label} "
                                "family needs positive values")
            return
        if self.code in (POISSON, NEGBIN):
            bad = (y < 0) | (y != np.round(y))
            if bad.any():
                raise DataError(f"response {column!r} has {int(bad.sum())} value(s) that are "
                                f"not non-negative integers (e.g. {num(y[bad][0])}); the "
                                f"{self.label} family needs counts")
            return
        bad = (y < 0) | (y > wt) | (wt <= 0)
        if bad.any():
            i = np.flatnonzero(bad)[0]
            raise DataError(f"binomial response {column!r} out of range: {num(y[i])} successes "
                            f"of {num(wt[i])} trials; use 0/1, a two-level factor, "
                            "cbind(successes, failures) with non-negative counts, or a "
                            "proportion with weights")
        frac = y != np.round(y)
        if frac.any():
            raise DataError(f"binomial response {column!r} has non-integer successes (e.g. "
                            f"{num(y[frac][0])}); give cbind(successes, failures) counts, or a "
                            "proportion whose weights are the trials")

    def log_constant(self, y: np.ndarray, wt: np.ndarray) -> float:
        """The data's constant in glmer's log-likelihood: ``sum log C(wt, y)`` for the
        binomial, ``-sum wt log y!`` for the Poisson and the negative binomial (``wt`` their
        prior weights); for the families with a dispersion, the part of
        lme4's ``aic`` that depends on the data alone, times ``-1/2``: ``-sum wt log y``
        (Gamma), ``-3/2 sum wt log y`` (inverse Gaussian), ``1/2 sum log wt`` (Gaussian)."""
        from scipy.special import gammaln
        if self.code == GAMMA:
            return float(-np.sum(wt * np.log(y)))
        if self.code == INVERSE_GAUSSIAN:
            return float(-1.5 * np.sum(wt * np.log(y)))
        if self.code == GAUSSIAN:
            return float(0.5 * np.sum(np.log(wt)))
        if self.code == BINOMIAL:
            return float(np.sum(gammaln(wt + 1) - gammaln(y + 1) - gammaln(wt - y + 1)))
        # POISSON, NEGBIN; wt: prior weights (R's poisson()$aic, glmmTMB's nbinom2)
        return float(-np.sum(wt * gammaln(y + 1)))


    def laplace_aic(self, dev: float, n: int, wsum: float) -> float:
        """lme4's ``aic(y, n, mu, wt, dev)`` (``glmFamily.cpp``) of a family with a
        dispersion, at the deviance ``dev`` of ``n`` rows with prior weights summing to
        ``wsum``, less ``-2`` :meth:`log_constant` (the data's part, added by the caller):

        * Gamma: ``-2 sum wt log dgamma(y, 1/d, mu d) + 2``, ``d = dev / wsum``, which is
          ``wsum + 2 wsum / d + 2 wsum lgamma(1/d) + 2 (wsum / d) log d + 2`` beside
          ``2 sum wt log y`` (the Gamma deviance holds ``sum wt (y / mu + log mu)``);
        * inverse Gaussian: ``wsum (log(2 pi dev / wsum) + 1) + 2`` beside ``3 sum wt log y``;
        * Gaussian: ``n (log(2 pi dev / n) + 1) + 2`` beside ``-sum log wt``.

        glmer's Laplace criterion is ``log|L|^2 + |u|^2 +`` this, the conditional modes those
        of ``deviance + |u|^2`` (dispersion 1 inside PIRLS)."""
        if not dev > 0:
            return math.inf
        if self.code == GAMMA:
            # with the shape a = wsum / dev: wsum + 2 wsum (a + lgamma(a) - a log a) + 2;
            # the bracket is a difference of terms ~a log a (1e6 when the dispersion is 1e-5,
            # as in Oxide): Stirling's series gives it without the cancellation
            a = wsum / dev
            return wsum + 2 * wsum * _gamma_bracket(a) + 2
        if self.code == INVERSE_GAUSSIAN:
            return wsum * (math.log(2 * math.pi * dev / wsum) + 1) + 2
        if self.code == GAUSSIAN:
            return n * (math.log(2 * math.pi * dev / n) + 1) + 2
        raise ModelError(f"the {self.label} family has no dispersion")


def _gamma_bracket(a: float) -> float:
    """``a + lgamma(a) - a log a``, accurate for large ``a``: ``log(2 pi / a) / 2`` plus
    Stirling's error series (``1/(12a) - 1/(360a^3) + ...``, below 1e-17 beyond a = 15)."""
    from scipy.special import gammaln
    if a < 15.0:
        return a + float(gammaln(a)) - a * math.log(a)
    r = 1.0 / (a * a)
    series = (1.0 / 12 - r * (1.0 / 360 - r * (1.0 / 1260 - r * (1.0 / 1680 - r / 1188)))) / a
    return 0.5 * math.log(2 * math.pi / a) + series


FAMILIES = {
    "gaussian": Family("gaussian", GAUSSIAN, ("identity", "log", "inverse"), "Gaussian",
                       "identity", "gaussian"),
    "binomial": Family("binomial", BINOMIAL, ("logit", "probit", "cloglog"), "binomial",
                       "logit", "binomial"),
    "poisson": Family("poisson", POISSON, ("log",), "Poisson", "log", "poisson"),
    "negative_binomial": Family("negative_binomial", NEGBIN, ("log",), "negative binomial",
                                None, "Negative Binomial"),
    "gamma": Family("gamma", GAMMA, ("inverse", "log", "identity"), "Gamma", "inverse",
                    "Gamma"),
    "inverse_gaussian": Family("inverse_gaussian", INVERSE_GAUSSIAN,
                               ("1/mu^2", "inverse", "log", "identity"), "inverse Gaussian",
                               "1/mu^2", "inverse.gaussian"),
}
GAMMA_FAMILY = FAMILIES["gamma"]
"""The Gamma family (``V(mu) = mu^2``)."""

ALIASES = {"nbinom2": "negative_binomial", "negbin": "negative_binomial", "normal": "gaussian",
           "Gamma": "gamma", "inverse.gaussian": "inverse_gaussian",
           "inverse_gaussian": "inverse_gaussian"}


def get_family(name: str) -> Family:
    """The family called ``name`` (or an alias: ``nbinom2``, ``negbin``, ``normal``)."""
    key = ALIASES.get(name, name)
    if key not in FAMILIES:
        raise ModelError(f"family {name!r} is not available; use one of: "
                         f"{', '.join(FAMILIES)}")
    return FAMILIES[key]
