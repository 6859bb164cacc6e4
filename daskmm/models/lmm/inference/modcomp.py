"""Tests of nested fixed-effect hypotheses between two LMMs, as pbkrtest's ``KRmodcomp`` (a
Kenward-Roger F test) and ``PBmodcomp`` (a parametric bootstrap of the likelihood-ratio test).

The small model is the large one with some fixed-effect columns removed, with the same random
effects, fitted to the same rows: it is given as a fit, or as the names of the large model's
columns to remove (pbkrtest accepts both). Either way both models are evaluated on the large
fit's statistics: the small model's cross-products are a subset of them, so a bootstrap
replicate simulates the large model's response statistics once
(:mod:`daskmm.kernels.lmm_simulate`) and refits both models on them, with no pass over the
rows. A small model given as a fit is checked against those statistics (the same data, the
same random effects), and refused in one line if it does not match.

``PBmodcomp`` follows pbkrtest 0.5: both models refitted by ML; the observed statistic
``2 (logLik_large - logLik_small)``; ``nsim`` responses simulated from the small model's ML
fit, both models refitted to each; the bootstrap p-value ``(1 + #{ref > tobs}) / (1 + npos)``
over the ``npos`` positive replicates. Replicate ``i`` draws from child ``i`` of
``SeedSequence(seed)``; with a client the replicates run as tasks ``daskmm-pbtest-*``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from daskmm.distributed.evaluator import GatheredEvaluator
from daskmm.errors import ModelError
from daskmm.kernels.kenward_roger import kr_f
from daskmm.kernels.lmm_simulate import SimulationBasis
from daskmm.kernels.stats import LevelGroup, PartitionStats
from daskmm.models.lmm.criterion import Problem, objective, optimise
from daskmm.models.lmm.inference.bootstrap import (
    REFIT_OPTIONS,
    run_replicates,
    simulated_problem,
    simulation_setup,
)

log = logging.getLogger("daskmm")

STATS_RTOL = 1e-8
"""A small model given as a fit must have the large fit's cross-products (restricted to its
columns) to this relative tolerance."""


# ----------------------------------------------------------------------------- nesting
def fixed_subset_problem(prob: Problem, keep: np.ndarray) -> Problem:
    """The problem with only the fixed-effect columns ``keep`` (indices into ``X``): a
    selection of the statistics, not a pass over the rows."""
    ev = prob.evaluator
    if not isinstance(ev, GatheredEvaluator):
        raise ModelError("comparing nested models selects from the fit's statistics, which "
                         "this fit kept on the workers (mode='distributed'); fit with "
                         "mode='gathered'")
    lay = prob.layout
    nG, p = lay.n_G, lay.p
    cols = np.concatenate([np.arange(nG), nG + np.asarray(keep, dtype=int),
                           [nG + p]]).astype(int)
    st = ev.stats
    groups = [LevelGroup(g.composition, g.levels, g.nested_levels, g.A, g.B[:, cols, :])
              for g in st.groups]
    G = prob.G[np.ix_(cols, cols)]
    layout = dataclasses.replace(lay, p=len(keep))
    sub = PartitionStats(groups, G, st.n, st.sum_log_w, st.n_dropped)
    return dataclasses.replace(prob, layout=layout, G=G,
                               evaluator=GatheredEvaluator(sub, layout, mode=ev.mode))


def _random_structure(prob: Problem) -> tuple:
    lay = prob.layout
    return ([(t.factor, tuple(t.columns)) for t in prob.spec.terms], lay.primary,
            tuple(lay.nested), tuple(lay.global_factors), dict(lay.q))


def _problem_of(result, what: str) -> Problem:
    prob = getattr(result, "problem", None)
    if prob is None or getattr(result, "kind", None) != "lmm":
        raise ModelError(f"{what} compares LMM fits that hold their statistics (fits made in "
                         "this session, not read from a document); received "
                         f"{type(result).__name__}")
    return prob


@dataclass
class Nesting:
    """The large model and which of its fixed-effect columns the small model keeps."""

    large: Problem
    names: list[str]
    keep: np.ndarray
    dropped: list[str]
    small_formula: str

    @property
    def L(self) -> np.ndarray:
        """pbkrtest's restriction matrix: one row per removed column."""
        idx = [self.names.index(d) for d in self.dropped]
        return np.eye(len(self.names))[idx]


def nesting(large, small) -> Nesting:
    """Pair a large LMM fit with a small model: a fit with a subset of its fixed-effect
    columns, the same random effects and the same rows, or the names of columns to remove."""
    prob = _problem_of(large, "a nested-model test")
    names = list(large.fixef_names)
    if isinstance(small, str):
        small = [small]
    if isinstance(small, (list, tuple)):
        unknown = [s for s in small if s not in names]
        if unknown or not small:
            raise ModelError(f"no fixed-effect column named {unknown[0]!r} in the large model "
                             f"(its columns: {', '.join(names)})" if unknown else
                             "name at least one fixed-effect column to remove")
        dropped = [n for n in names if n in small]
        keep = np.array([i for i, n in enumerate(names) if n not in small], dtype=int)
        return Nesting(prob, names, keep, dropped, f"without {', '.join(dropped)}")
    sprob = _problem_of(small, "a nested-model test")
    if int(small.nobs) != int(large.nobs):
        raise ModelError(f"the fits use different rows ({int(large.nobs)} and "
                         f"{int(small.nobs)} observations); fit both to the same rows")
    snames = list(small.fixef_names)
    extra = [s for s in snames if s not in names]
    if extra:
        raise ModelError(f"the small model's fixed effect {extra[0]!r} is not in the large "
                         "model; the small model must keep a subset of the large model's "
                         "columns (swap the arguments if they are the wrong way round)")
    if len(snames) == len(names):
        raise ModelError("the two models have the same fixed effects; these tests compare "
                         "fixed effects (for a variance component use "
                         "daskmm.models.lmm.inference.compare.variance_component_test)")
    if _random_structure(sprob) != _random_structure(prob):
        raise ModelError("the two models have different random effects; KRmodcomp and "
                         "PBmodcomp here test fixed effects with the random effects held the "
                         "same: fit the small model with the large model's random terms")
    keep = np.array([names.index(s) for s in snames], dtype=int)
    sub = fixed_subset_problem(prob, keep)
    a, b = sub.G, sprob.G
    scale = max(float(np.max(np.abs(a))), 1e-300)
    same = a.shape == b.shape and float(np.max(np.abs(a - b))) <= STATS_RTOL * scale
    if same:
        for ga, gb in zip(sub.evaluator.stats.groups, sprob.evaluator.stats.groups):
            if ga.B.shape != gb.B.shape or np.max(np.abs(ga.B - gb.B), initial=0) > \
                    STATS_RTOL * scale or np.max(np.abs(ga.A - gb.A), initial=0) > \
                    STATS_RTOL * scale:
                same = False
                break
    if not same:
        raise ModelError("the small model's cross-products differ from the large model's: "
                         "the fits do not share their rows, response or weights; fit both to "
                         "the same data")
    dropped = [n for n in names if n not in snames]
    return Nesting(prob, names, keep, dropped,
                   getattr(small, "formula", None) or f"without {', '.join(dropped)}")


# ----------------------------------------------------------------------------- Kenward-Roger
class KRModcomp(pd.DataFrame):
    """pbkrtest's ``KRmodcomp`` table (a DataFrame: rows ``Ftest``, ``FtestU``; columns
    ``stat, ndf, ddf, F.scaling, p.value``) that prints as pbkrtest prints it."""

    _metadata = ["large", "small"]

    @property
    def _constructor(self):
        return KRModcomp

    def __str__(self) -> str:
        from daskmm.results import rformat as rf
        small = getattr(self, "small", None)
        lines = [f"large : {getattr(self, 'large', '')}"]
        if isinstance(small, str):
            lines.append(f"small : {small}")
        elif small:
            lines.append(f"small : the large model without {', '.join(small)}")
        # pbkrtest prints the scaled F where its scaling is worth it (F.scaling > 0.2)
        row = "Ftest" if self.loc["Ftest", "F.scaling"] > 0.2 else "FtestU"
        cols = ["stat", "ndf", "ddf", "F.scaling", "p.value"]
        lines += rf.print_coefmat([[self.loc[row, c] for c in cols]], [row], cols, digits=5,
                                  tst_ind=[0, 1, 2], has_pvalue=True, na_print="")
        return "\n".join(lines) + "\n"

    __repr__ = __str__


def kr_modcomp(large, small) -> pd.DataFrame:
    """pbkrtest's ``KRmodcomp(large, small)``: the Kenward-Roger F test that the fixed
    effects in ``large`` but not in ``small`` are zero.

    Parameters
    ----------
    large : LmmResult
        A REML fit (pbkrtest refits by REML), as for ``test_fixef("kenward-roger")``.
    small : LmmResult or list of str
        The small model's fit, or the large model's columns to remove.

    Returns
    -------
    KRModcomp
        pbkrtest's table, a DataFrame: rows ``Ftest`` (scaled F) and ``FtestU``
        (unscaled); columns ``stat, ndf, ddf, F.scaling, p.value``; printed as pbkrtest's
        ``print(KRmodcomp(...))``.
    """
    nest = nesting(large, small)
    parts = large.kenward_roger_info()
    k = kr_f(nest.L, np.asarray(large.beta), np.asarray(large.vcov), parts)
    out = KRModcomp(
        {"stat": [k["F"], k["F_unscaled"]], "ndf": [k["ndf"], k["ndf"]],
         "ddf": [k["ddf"], k["ddf"]], "F.scaling": [k["F_scaling"], np.nan],
         "p.value": [k["p_value"], k["p_value_unscaled"]]},
        index=pd.Index(["Ftest", "FtestU"], name="test"))
    out.large = large.formula
    out.small = small.formula if hasattr(small, "formula") else list(small)
    return out


# ----------------------------------------------------------------------------- bootstrap
@dataclass
class PBModcomp:
    """A parametric bootstrap likelihood-ratio test (pbkrtest's ``PBmodcomp``).

    Attributes
    ----------
    statistic : float
        Observed ``2 (logLik_large - logLik_small)``, both by ML.
    df : int
        Parameters removed.
    ref : ndarray
        Replicates of the statistic under the small model (NaN where a refit failed).
    seed : int
    dropped : list of str
        The fixed-effect columns tested.
    large, small : str
        The two models' formulas (the small one's, or ``""`` when given as columns).
    """

    statistic: float
    df: int
    ref: np.ndarray
    seed: int
    dropped: list[str]
    large: str = ""
    small: str = ""

    @property
    def n_failed(self) -> int:
        return int(np.sum(~np.isfinite(self.ref)))

    @property
    def npos(self) -> int:
        return int(np.sum(self.ref > 0))

    @property
    def n_extreme(self) -> int:
        return int(np.sum(self.ref[self.ref > 0] > self.statistic))

    @property
    def p_chisq(self) -> float:
        return float(stats.chi2.sf(self.statistic, self.df))

    @property
    def p_value(self) -> float:
        """``(1 + #{ref > stat}) / (1 + npos)`` over the positive replicates."""
        return (1 + self.n_extreme) / (1 + self.npos)

    def table(self) -> pd.DataFrame:
        """pbkrtest's printed table: rows ``LRT`` and ``PBtest``; ``stat, df, p.value``."""
        return pd.DataFrame({"stat": [self.statistic, self.statistic],
                             "df": [self.df, np.nan],
                             "p.value": [self.p_chisq, self.p_value]},
                            index=pd.Index(["LRT", "PBtest"], name="test"))

    def summary(self) -> pd.DataFrame:
        """``summary(PBmodcomp(...))``'s table: also ``Gamma`` (a gamma distribution with
        the replicates' mean and variance), ``Bartlett`` (the statistic scaled by
        ``df / mean``) and ``F`` (``stat / df`` on ``F(df, ddf)``, ``ddf`` from the
        replicates' mean); columns ``stat, df, ddf, p.value``."""
        pos = self.ref[self.ref > 0]
        t, d = self.statistic, self.df
        ee, vv = float(np.mean(pos)), float(np.var(pos, ddof=1))
        bc = d * t / ee
        ee2 = ee / d
        ddf = 2 * ee2 / (ee2 - 1)
        p_f = float(stats.f.sf(t / d, d, ddf)) if ddf > 2 else np.nan
        rows = {"LRT": (t, d, np.nan, self.p_chisq),
                "PBtest": (t, np.nan, np.nan, self.p_value),
                "Gamma": (t, np.nan, np.nan,
                          float(stats.gamma.sf(t, ee ** 2 / vv, scale=vv / ee))),
                "Bartlett": (bc, d, np.nan, float(stats.chi2.sf(bc, d))),
                "F": (t / d, d, ddf, p_f)}
        return pd.DataFrame(rows.values(), columns=["stat", "df", "ddf", "p.value"],
                            index=pd.Index(list(rows), name="test"))

    def __str__(self) -> str:
        """As pbkrtest's ``print(PBmodcomp(...))`` (without its ``time:``): the samples,
        the two models, and the table through R's ``printCoefmat``."""
        from daskmm.results import rformat as rf
        n = len(self.ref)
        lines = [f"Bootstrap test; samples: {n}; extremes: {self.n_extreme};"]
        if self.n_failed:
            lines.append(f"Requested samples: {n} Used samples: {n - self.n_failed} "
                         f"Extremes: {self.n_extreme}")
        lines.append(f"large : {self.large}")
        lines.append(f"small : {self.small}" if self.small else
                     f"small : the large model without {', '.join(self.dropped)}")
        tab = self.table()
        x = [[None if not np.isfinite(v) else float(v) for v in row]
             for row in tab.to_numpy()]
        lines += rf.print_coefmat(x, list(tab.index), list(tab.columns), digits=5,
                                  tst_ind=[0], has_pvalue=True, na_print="")
        return "\n".join(lines) + "\n"


@dataclass
class _PBSetup:
    prob: Problem  # the large problem (statistics held on the client)
    keep: np.ndarray
    basis: SimulationBasis
    Lams: list
    Lam_G: np.ndarray
    theta0: np.ndarray
    beta_sim: np.ndarray
    sigma0: float
    step: np.ndarray


def _ml_refit(prob: Problem, x0: np.ndarray, step=None, options=None) -> tuple[np.ndarray, float]:
    theta, _ = optimise(prob, False, options, x0=x0, initial_step=step, certify=False)
    prof, _ = objective(prob, theta, False)
    if not np.isfinite(prof.objective):
        raise FloatingPointError("ML deviance not finite")
    return theta, float(prof.objective)


def pb_replicate(setup: _PBSetup, seed: np.random.SeedSequence) -> float:
    """One replicate: simulate from the small model, refit both by ML, return the LRT."""
    big = simulated_problem(setup.prob, setup.basis, setup.Lams, setup.Lam_G, setup.beta_sim,
                            setup.sigma0, seed)
    small = fixed_subset_problem(big, setup.keep)
    try:
        _, d0 = _ml_refit(small, setup.theta0, setup.step, REFIT_OPTIONS)
        _, d1 = _ml_refit(big, setup.theta0, setup.step, REFIT_OPTIONS)
        return d0 - d1
    except Exception as exc:  # a failed refit is counted and left out
        log.warning("bootstrap LRT replicate failed: %s", exc)
        return np.nan


def pb_modcomp(large, small, nsim: int = 1000, seed: int | None = None,
               client=None) -> PBModcomp:
    """pbkrtest's ``PBmodcomp(large, small, nsim)``: a parametric bootstrap test that the
    fixed effects in ``large`` but not in ``small`` are zero.

    Parameters
    ----------
    large : LmmResult
        The large model's fit (REML or ML; both models are refitted by ML).
    small : LmmResult or list of str
        The small model's fit (same random effects and rows), or the large model's columns
        to remove.
    nsim : int
        Simulated data sets (pbkrtest's default 1000).
    seed : int, optional
        Seed of the replicates' ``SeedSequence`` (None: one is drawn and recorded).
    client : distributed.Client, optional
        Run the replicates as tasks on its workers; the result is the same for a seed.
    """
    if nsim < 1:
        raise ModelError(f"nsim={nsim}; the bootstrap needs at least 1 simulated data set "
                         "(pbkrtest's default is 1000)")
    nest = nesting(large, small)
    prob = nest.large
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    small_prob = fixed_subset_problem(prob, nest.keep)
    theta_l = np.asarray(large.theta, float)
    theta1, d1 = (_ml_refit(prob, theta_l) if large.reml
                  else (theta_l, float(large.objective)))
    theta0, d0 = _ml_refit(small_prob, theta1)
    prof0, _ = objective(small_prob, theta0, False)
    beta_sim = np.zeros(prob.layout.p)
    beta_sim[nest.keep] = prof0.beta()
    sigma0 = float(prof0.sigma(False))
    Lams, Lam_G, basis, step = simulation_setup(prob, theta0)
    setup = _PBSetup(prob, nest.keep, basis, Lams, Lam_G, theta0, beta_sim, sigma0, step)
    ref = run_replicates(pb_replicate, setup, seed, nsim, client, "pbtest", "PBmodcomp")
    out = PBModcomp(d0 - d1, len(nest.dropped), ref, int(seed), nest.dropped,
                    large=large.formula, small=getattr(small, "formula", ""))
    if out.n_failed:
        log.warning("%d of %d bootstrap refits failed; the p-value uses the other %d",
                    out.n_failed, nsim, nsim - out.n_failed)
    return out
