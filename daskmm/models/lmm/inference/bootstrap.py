"""Parametric bootstrap of an LMM, as lme4's ``bootMer`` with ``confint(method = "boot")``.

Each replicate simulates from the fitted model and refits it. The simulation replaces only the
response's products with the design (:mod:`daskmm.kernels.lmm_simulate`); the refit is an
optimisation over the same statistics, started at the fit's ``theta`` (as ``refit`` in
``bootMer``). Replicate ``i`` draws from the ``i``-th child of ``SeedSequence(seed)``, so the
replicates do not depend on how they are batched or how many workers run them. With a cluster
the replicates run as tasks (``daskmm-boot-*``) on the workers, the statistics sent to each
worker once.

Intervals are percentile intervals computed as the ``boot`` package does
(``boot.ci(type = "perc")``: order statistics interpolated on the normal quantile scale,
``norm.inter``), over the parameters ``confint.merMod`` reports: the covariance parameters as
standard deviations and correlations, ``sigma``, then the fixed effects.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
import warnings
from dataclasses import dataclass

import numpy as np

from daskmm.distributed.evaluator import GatheredEvaluator
from daskmm.errors import ModelError
from daskmm.events import emit, muted
from daskmm.kernels.lmm_simulate import SimulationBasis, simulate_stats, simulation_basis
from daskmm.kernels.pls import group_Lambda, lambda_tilde
from daskmm.kernels.varpar import theta_to_sdcor
from daskmm.models.lmm.criterion import Problem, objective, optimise
from daskmm.models.lmm.inference.deviance import blas_threads
from daskmm.models.lmm.inference.options import MIN_NBOOT, check_nboot
from daskmm.models.shared.structure import lambdas

log = logging.getLogger("daskmm")

BATCHES_PER_WORKER = 4
REFIT_OPTIONS = {"method": "bobyqa"}
"""A replicate's refit: BOBYQA from the fit's ``theta`` (as bootMer's refit, with lme4's
optimiser; first radius about the sampling spread of ``theta``) and the Newton polish. From that
start it needs ~6x less time than the gradient method, whose evaluations cost ~10x an
objective's on small blocks; ``theta`` agrees with the gradient method's to ~1e-8."""


@dataclass
class BootResult:
    """Replicates of a parametric bootstrap.

    Attributes
    ----------
    names : list of str
        Parameters, in lme4's ``confint`` order and names.
    t0 : ndarray
        Their estimates from the fit.
    t : ndarray, shape (nboot, len(names))
        Their replicates (a row of NaN for a replicate whose refit failed).
    seed : int
    n_failed : int
        Replicates whose refit failed (left out of the intervals, as ``boot.ci``).
    """

    names: list[str]
    t0: np.ndarray
    t: np.ndarray
    seed: int
    n_failed: int

    def intervals(self, level: float = 0.95) -> list[dict]:
        """Percentile intervals: ``parameter, lower, upper``, with ``boot.ci``'s warnings
        (:meth:`cautions`) issued. A parameter whose replicates are all equal gets NaN
        (``boot.ci``: "All values of t are equal ... Cannot calculate confidence
        intervals"; lme4's ``confint`` then stops with an error instead)."""
        a = (1 - level) / 2
        out = []
        for j, name in enumerate(self.names):
            t = self.t[:, j]
            t = t[np.isfinite(t)]
            if len(t) == 0 or np.all(t == t[0]):
                lo, hi = np.nan, np.nan
            else:
                lo, hi = norm_inter(t, np.array([a, 1 - a]))
            out.append({"parameter": name, "lower": lo, "upper": hi})
        for text in self.cautions(level):
            warnings.warn(text, stacklevel=2)
        return out

    def cautions(self, level: float = 0.95) -> list[str]:
        """What ``boot.ci`` warns about these replicates at ``level``: endpoints that are
        extreme order statistics, parameters whose replicates are all equal."""
        out = []
        R = int(np.sum(np.all(np.isfinite(self.t), axis=1)))
        if R < needed_replicates(level):
            out.append(f"the {level:g} percentile intervals use extreme order statistics as "
                       f"endpoints ({R} replicates; boot.ci warns: extreme order statistics "
                       f"used as endpoints): use {needed_replicates(level)} or more "
                       "replicates, 1000 or more for steady endpoints")
        flat = [name for j, name in enumerate(self.names)
                if (lambda t: len(t) == 0 or np.all(t == t[0]))(
                    self.t[:, j][np.isfinite(self.t[:, j])])]
        if flat:
            out.append(f"all bootstrap replicates of {', '.join(flat)} are equal, so no "
                       "interval can be calculated for them (NaN; boot.ci: Cannot calculate "
                       "confidence intervals)")
        return out


def needed_replicates(level: float) -> int:
    """The fewest replicates whose ``level`` percentile interval uses no extreme order
    statistic as an endpoint (``boot``'s ``norm.inter``: ``1 < (R + 1) alpha < R``)."""
    a = (1 - level) / 2
    R = MIN_NBOOT
    while not ((R + 1) * a > 1 and (R + 1) * (1 - a) < R):
        R += 1
    return R


def norm_inter(t: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The ``boot`` package's ``norm.inter``: quantiles ``alpha`` of the finite replicates
    ``t`` at order statistic ``(R + 1) alpha``, interpolated on the normal scale between the
    neighbouring order statistics."""
    from scipy import stats
    t = np.sort(t[np.isfinite(t)])
    R = len(t)
    if R == 0:
        return np.full(len(alpha), np.nan)
    rk = (R + 1) * np.asarray(alpha, dtype=float)
    k = np.trunc(rk).astype(int)
    out = np.empty(len(alpha))
    for i in range(len(alpha)):
        if k[i] == rk[i] and 0 < k[i] <= R:
            out[i] = t[k[i] - 1]
        elif k[i] <= 0:
            out[i] = t[0]
        elif k[i] >= R:
            out[i] = t[R - 1]
        else:
            z1 = stats.norm.ppf(alpha[i])
            z2 = stats.norm.ppf(k[i] / (R + 1))
            z3 = stats.norm.ppf((k[i] + 1) / (R + 1))
            tk, tk1 = t[k[i] - 1], t[k[i]]
            out[i] = tk + (z1 - z2) / (z3 - z2) * (tk1 - tk)
    return out


@dataclass
class _Setup:
    """What every replicate needs (sent to each worker once)."""

    prob: Problem
    basis: SimulationBasis
    Lams: list
    Lam_G: np.ndarray
    theta: np.ndarray
    beta: np.ndarray
    sigma: float
    reml: bool
    step: np.ndarray


def simulated_problem(prob: Problem, basis: SimulationBasis, Lams: list, Lam_G: np.ndarray,
                      beta: np.ndarray, sigma: float,
                      seed: np.random.SeedSequence) -> Problem:
    """``prob`` with its response statistics replaced by ones simulated from ``(Lambdas,
    beta, sigma)`` with the generator of ``seed`` (:func:`simulate_stats`)."""
    st = simulate_stats(prob.evaluator.stats, basis, Lams, Lam_G, beta, sigma,
                        np.random.default_rng(seed))
    ev = GatheredEvaluator(st, prob.layout, mode=prob.evaluator.mode)
    return dataclasses.replace(prob, evaluator=ev, G=st.G)


def replicate(setup: _Setup, seed: np.random.SeedSequence) -> np.ndarray:
    """One replicate: simulate the response statistics, refit, return the parameters."""
    prob = setup.prob
    sim = simulated_problem(prob, setup.basis, setup.Lams, setup.Lam_G, setup.beta,
                            setup.sigma, seed)
    terms = list(prob.spec.terms)
    try:
        theta, _ = optimise(sim, setup.reml, REFIT_OPTIONS, x0=setup.theta, certify=False,
                            initial_step=setup.step)
        prof, _ = objective(sim, theta, setup.reml)
        if not np.isfinite(prof.objective):
            raise FloatingPointError("objective not finite")
        return np.concatenate([theta_to_sdcor(terms, theta, prof.sigma(setup.reml)),
                               prof.beta()])
    except Exception as exc:  # a failed refit is counted, as bootMer does
        log.warning("bootstrap replicate failed: %s", exc)
        return np.full(sum(t.n_theta for t in terms) + 1 + len(setup.beta), np.nan)


def simulation_setup(prob: Problem, theta: np.ndarray):
    """What simulating from ``theta`` on the problem's statistics needs, shared by every
    replicate: per level group its block's ``Lambda``, the global columns' ``Lambda``, the
    :class:`~daskmm.kernels.lmm_simulate.SimulationBasis`, and BOBYQA's first radius for a
    refit started at ``theta`` (about the sampling spread of ``theta``: the relative sd of a
    variance estimate is ~ ``sqrt(2 / levels)``, so a refit needs few steps)."""
    theta = np.asarray(theta, float)
    layout = prob.layout
    lam = lambdas(prob.spec, theta)
    stats_ = prob.evaluator.stats
    Lams = [group_Lambda(layout, lam, g.composition) for g in stats_.groups]
    nG = layout.n_G
    Lam_G = lambda_tilde(layout, lam)[:nG, :nG].toarray() if nG else np.zeros((0, 0))
    basis = simulation_basis(stats_, nG + layout.p)
    rel = float(np.clip(np.sqrt(2.0 / max(min(prob.ngroups.values()), 1)), 0.01, 0.3))
    return Lams, Lam_G, basis, rel * np.maximum(np.abs(theta), 0.05)


def _batch(fn, setup, seeds: list) -> np.ndarray:
    return np.stack([fn(setup, s) for s in seeds])


def run_replicates(fn, setup, seed: int, n: int, client=None, name: str = "boot",
                   label: str = "bootstrap") -> np.ndarray:
    """``np.stack([fn(setup, s_i)])`` over the children ``s_i`` of ``SeedSequence(seed)``:
    in this process, or with ``client`` as batches of tasks ``daskmm-<name>-*`` (about
    :data:`BATCHES_PER_WORKER` per worker, ``setup`` sent to each worker once). Replicate
    ``i`` always draws from child ``i``, so the result does not depend on the batching.

    Progress goes out as events (:mod:`daskmm.events`): ``replicates_start`` and, as
    replicates finish, ``replicate`` with ``done`` and ``total`` (one a replicate in this
    process, one a finished batch on a cluster, counted here as its task ends), ``label``
    naming the step; the refits' own ``evaluation`` events are left out."""
    seeds = np.random.SeedSequence(seed).spawn(n)
    emit("replicates_start", label=label, total=n)
    if client is None:
        out = []
        with blas_threads(setup.prob), muted("evaluation"):
            for i, s in enumerate(seeds, 1):
                out.append(fn(setup, s))
                emit("replicate", label=label, done=i, total=n)
        return np.stack(out)
    from distributed import as_completed
    nw = max(len(client.scheduler_info().get("workers", {})), 1)
    size = max(1, -(-n // (BATCHES_PER_WORKER * nw)))
    chunks = [seeds[i:i + size] for i in range(0, n, size)]
    sf = client.scatter(setup, broadcast=True)
    tok = uuid.uuid4().hex[:8]
    futs = [client.submit(_batch, fn, sf, ch, key=f"daskmm-{name}-{tok}-{i}")
            for i, ch in enumerate(chunks)]
    sizes = {f.key: len(ch) for f, ch in zip(futs, chunks)}
    done = 0
    for fut in as_completed(futs, loop=client.loop):
        done += sizes[fut.key]
        emit("replicate", label=label, done=done, total=n)
    return np.concatenate(client.gather(futs))


def bootstrap(prob: Problem, theta: np.ndarray, beta: np.ndarray, sigma: float, reml: bool,
              names: list[str], nboot: int, seed: int, client=None) -> BootResult:
    """Parametric bootstrap of a fitted LMM.

    Parameters
    ----------
    prob : daskmm.models.lmm.fit.Problem
        The fit's problem; its statistics must be held on the client (``in-process`` or
        ``gathered``).
    theta, beta, sigma, reml
        The fit.
    names : list of str
        Parameter names (sd/cor, ``sigma``, fixed effects).
    nboot : int
        Replicates.
    seed : int
        Seed of the replicates' ``SeedSequence``.
    client : distributed.Client, optional
        Run the replicates as tasks on its workers.
    """
    check_nboot(nboot)
    if prob.evaluator.mode == "distributed":
        raise ModelError("the parametric bootstrap refits on statistics held on the client; "
                         "this fit kept them on the workers (mode='distributed'). Fit with "
                         "mode='gathered' to bootstrap")
    Lams, Lam_G, basis, step = simulation_setup(prob, theta)
    setup = _Setup(prob, basis, Lams, Lam_G, np.asarray(theta, float), np.asarray(beta, float),
                   float(sigma), reml, step)
    t = run_replicates(replicate, setup, seed, nboot, client, "boot")
    terms = list(prob.spec.terms)
    t0 = np.concatenate([theta_to_sdcor(terms, theta, sigma), beta])
    n_failed = int(np.sum(~np.all(np.isfinite(t), axis=1)))
    if n_failed:
        log.warning("%d of %d bootstrap refits failed; the intervals use the other %d",
                    n_failed, nboot, nboot - n_failed)
    return BootResult(list(names), t0, t, int(seed), n_failed)
