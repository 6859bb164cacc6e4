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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from daskmm.errors import DataError, ModelError, num

# integer codes shared with daskmm.kernels.scalar_re (kept equal there: the kernels must not
# import this module's scipy dependencies at compile time)
BINOMIAL, POISSON, NEGBIN = 0, 1, 2
GAMMA = 3  # GAMs only: no mixed-model kernel takes it
LOGIT, PROBIT, CLOGLOG, LOG, IDENTITY, INVERSE = 0, 1, 2, 3, 4, 5


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
}


@dataclass(frozen=True)
class Family:
    """A response distribution.

    Attributes
    ----------
    name : str
        ``gaussian``, ``binomial``, ``poisson``, ``negative_binomial``.
    code : int or None
        The kernels' code (None: the Gaussian, fitted by the LMM).
    links : tuple of str
        Allowed links, the default first.
    label : str
        As printed in messages.
    canonical : str or None
        The canonical link, for which Fisher scoring (PIRLS) is Newton's method and converges
        quadratically (the negative binomial's log link is not its canonical one).
    """

    name: str
    code: int | None
    links: tuple[str, ...]
    label: str
    canonical: str | None = None

    @property
    def default_link(self) -> str:
        return self.links[0]

    def link(self, name: str | None = None) -> Link:
        """The link ``name`` (the family's default when None)."""
        name = name or self.default_link
        if name not in self.links:
            raise ModelError(f"link {name!r} is not available for the {self.name} family; use "
                             f"one of: {', '.join(self.links)}")
        return LINKS[name]

    def variance(self, mu: np.ndarray, size: float | None = None) -> np.ndarray:
        """``V(mu)``: 1, ``mu (1 - mu)``, ``mu``, ``mu + mu^2 / size``."""
        if self.code is None:
            return np.ones_like(mu)
        if self.code == BINOMIAL:
            return mu * (1 - mu)
        if self.code == POISSON:
            return mu
        if self.code == GAMMA:
            return mu ** 2
        return mu + mu ** 2 / size

    def unit_deviance(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray,
                      size: float | None = None) -> np.ndarray:
        """R's ``family()$dev.resids``: each row's deviance contribution, ``y`` on the
        mean's scale (the proportion of successes for the binomial, with ``wt`` trials)."""
        from scipy.special import xlogy
        if self.code is None:
            return wt * (y - mu) ** 2
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
               size: float | None = None) -> np.ndarray:
        """Draw responses with mean ``mu``: the number of successes of ``wt`` trials for the
        binomial, counts for the Poisson and the negative binomial (``Var = mu + mu^2 /
        size``), as lme4's ``simulate``."""
        if self.code == BINOMIAL:
            return rng.binomial(np.asarray(wt, dtype=np.int64), mu).astype(float)
        if self.code == POISSON:
            return rng.poisson(mu).astype(float)
        if self.code == NEGBIN:
            return rng.negative_binomial(size, size / (size + mu)).astype(float)
        raise ModelError(f"simulating the {self.label} family is not built")

    def check_response(self, y: np.ndarray, wt: np.ndarray, column: str) -> None:
        """Raise :class:`DataError` naming ``column`` for a value the family cannot model."""
        if self.code is None:
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
        binomial, ``-sum wt log y!`` for the Poisson (``wt`` its prior weights), ``-sum log
        y!`` for the negative binomial."""
        from scipy.special import gammaln
        if self.code == BINOMIAL:
            return float(np.sum(gammaln(wt + 1) - gammaln(y + 1) - gammaln(wt - y + 1)))
        if self.code == POISSON:  # wt: prior weights, as R's poisson()$aic
            return float(-np.sum(wt * gammaln(y + 1)))
        return float(-np.sum(gammaln(y + 1)))


FAMILIES = {
    "gaussian": Family("gaussian", None, ("identity",), "Gaussian", "identity"),
    "binomial": Family("binomial", BINOMIAL, ("logit", "probit", "cloglog"), "binomial",
                       "logit"),
    "poisson": Family("poisson", POISSON, ("log",), "Poisson", "log"),
    "negative_binomial": Family("negative_binomial", NEGBIN, ("log",), "negative binomial"),
}
GAMMA_FAMILY = Family("gamma", GAMMA, ("inverse", "log", "identity"), "Gamma", "inverse")
"""The Gamma family (``V(mu) = mu^2``), for GAMs: not among the mixed models' families."""

ALIASES = {"nbinom2": "negative_binomial", "negbin": "negative_binomial", "normal": "gaussian"}


def get_family(name: str) -> Family:
    """The family called ``name`` (or an alias: ``nbinom2``, ``negbin``, ``normal``)."""
    key = ALIASES.get(name, name)
    if key not in FAMILIES:
        raise ModelError(f"family {name!r} is not available; use one of: "
                         f"{', '.join(FAMILIES)}")
    return FAMILIES[key]
