"""Simulation-based scaled (quantile) residuals and their tests, as DHARMa 0.5 (pure numpy and
scipy; never imports dask).

For each row, the scaled residual is where the observed response falls in the distribution of
``nsim`` responses simulated from the fitted model: DHARMa's ``method = "PIT"``,
``lower = mean(sim < obs)``, ``upper = mean(sim <= obs)``, and a uniform draw between them
where they differ (a discrete response), ``lower`` otherwise. Under a correct model the
residuals are uniform on (0, 1).

The tests are DHARMa's: ``testUniformity`` (a one-sample Kolmogorov-Smirnov test against the
uniform, R's ``ks.test``: exact below 100 residuals without ties, asymptotic otherwise) and
``testGeneric``-style simulation tests: the statistic of the observed response against the
same statistic of each simulated response, ``ratioObsSim = observed / mean(simulated)`` and the
p-value ``getP`` (two-sided: twice the smaller tail fraction, at most 1). ``testDispersion``
(``type = "DHARMa"``) takes the variance of ``response - fitted`` (``fitted`` the population
mean, ``re.form = ~0``); ``testZeroInflation`` the number of zeros.
"""

from __future__ import annotations

import numpy as np

ALTERNATIVES = ("two.sided", "greater", "less")


def pit_bounds(sims: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``mean(sims < observed)`` and ``mean(sims <= observed)`` (``sims``: rows x
    simulations)."""
    obs = np.asarray(observed, dtype=float)[:, None]
    return np.mean(sims < obs, axis=1), np.mean(sims <= obs, axis=1)


def pit_residuals(sims: np.ndarray, observed: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """DHARMa's PIT residuals: ``lower`` where ``lower == upper``, else a uniform draw between
    them (one draw per row, in row order)."""
    lower, upper = pit_bounds(sims, observed)
    u = rng.uniform(size=len(lower))
    return np.where(lower != upper, lower + u * (upper - lower), lower)


def generic_p(simulated: np.ndarray, observed: float, alternative: str = "two.sided") -> float:
    """DHARMa's ``getP``: the fraction of simulated statistics at least as extreme."""
    simulated = np.asarray(simulated, dtype=float)
    if alternative == "greater":
        return float(np.mean(simulated >= observed))
    if alternative == "less":
        return float(np.mean(simulated <= observed))
    if alternative == "two.sided":
        return float(min(2 * min(np.mean(simulated <= observed),
                                 np.mean(simulated >= observed)), 1.0))
    raise ValueError(f"alternative={alternative!r}; allowed: {', '.join(ALTERNATIVES)}")


def ks_uniform(residuals: np.ndarray) -> dict:
    """R's ``ks.test(residuals, "punif")`` (two-sided): ``statistic`` D and ``p_value``,
    exact (Marsaglia-Tsang-Wang) below 100 values without ties, else the asymptotic
    Kolmogorov distribution."""
    from scipy import stats  # here: its import costs a CLI process 0.4 s

    r = np.sort(np.asarray(residuals, dtype=float))
    r = r[np.isfinite(r)]
    n = len(r)
    if n == 0:
        return {"statistic": float("nan"), "p_value": float("nan"), "n": 0}
    cdf = np.clip(r, 0.0, 1.0)
    i = np.arange(1, n + 1)
    d = float(max(np.max(i / n - cdf), np.max(cdf - (i - 1) / n)))
    ties = len(np.unique(r)) < n
    if n < 100 and not ties:
        p = float(stats.kstwo.sf(d, n))
    else:
        p = float(stats.kstwobign.sf(np.sqrt(n) * d))
    return {"statistic": d, "p_value": min(max(p, 0.0), 1.0), "n": n}


def variance_from_sums(n: float, s: np.ndarray, ss: np.ndarray) -> np.ndarray:
    """Sample variance (``n - 1`` denominator) from a count, sums and sums of squares (the
    pieces that partitions add up)."""
    return (ss - s * s / n) / (n - 1)


def spread_sums(values: np.ndarray, fitted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``values`` (rows x k), the sum and sum of squares of
    ``values - fitted``."""
    d = values - fitted[:, None]
    return d.sum(axis=0), np.einsum("ij,ij->j", d, d)
