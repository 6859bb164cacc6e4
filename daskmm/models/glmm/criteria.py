"""The GLMM's criteria: the Laplace (or AGQ) deviance of ``(theta, beta)`` (and the first
stage's nAGQ = 0 criterion of ``theta``) evaluated over the partitions, each as lme4 does it
for its random-effect structure. Every criterion of ``(theta, beta)`` follows
:class:`Criterion`; the stages (:mod:`daskmm.models.glmm.stages`) ask nothing else of it. The
per-partition work they send to the workers is the ``_``-named task functions here; their
PIRLS steps share one step-halving loop (:func:`halve_until_lower`)."""

from __future__ import annotations

import math
import types
from typing import Protocol

import numpy as np

from daskmm.core.reterm import RandomTerm
from daskmm.distributed.execution import is_in_process
from daskmm.distributed.mapreduce import map_parts
from daskmm.events import emit
from daskmm.kernels import laplace_grad as LG
from daskmm.kernels import pirls as P
from daskmm.kernels import scalar_re as K
from daskmm.kernels.pls import group_Lambda, group_modes, lambda_tilde, profiled
from daskmm.kernels.stats import Layout
from daskmm.models.glmm.encode import (
    GlmmPartition,
    with_size,
)
from daskmm.models.shared.structure import (
    lambdas,
    ranef_tables,
)
from daskmm.results.base import RanefTable


class Criterion(Protocol):
    """What a GLMM fit asks of its criterion of ``(theta, beta)`` (and, for the negative
    binomial, the size ``k``).

    Attributes
    ----------
    has_gradient : bool
        ``value_grad(theta, beta, size)`` gives the criterion and its exact gradient.
    takes_first_stage : bool
        lme4's first stage (nAGQ = 0, ``theta`` alone with ``beta`` inside PIRLS,
        :class:`JointCriterion`) applies before the joint optimisation.
    """

    has_gradient: bool
    takes_first_stage: bool

    def __call__(self, theta, beta, size=None) -> float:
        """The criterion (the Laplace or AGQ deviance, -2 log-likelihood)."""

    def ranef(self, theta, beta, size=None) -> dict:
        """The conditional modes and their variances, by grouping factor."""

    def to_full_tolerance(self) -> None:
        """From here on PIRLS runs to its full tolerance (no early stop): what the Hessian's
        finite differences of the criterion need."""


def halve_until_lower(attempt, ref: float, rtol: float = 1e-12, t_min: float = 1e-8):
    """The step-halving loop of every PIRLS iteration here (lme4's): ``attempt(t)`` for
    ``t = 1, 1/2, 1/4, ...`` until its value is not above ``ref`` (within ``rtol``) or ``t``
    falls below ``t_min``. ``attempt`` returns ``(value, what)``, ``value`` None for a step
    with no finite point; returns ``(t, what)`` of the last attempt."""
    t = 1.0
    while True:
        value, what = attempt(t)
        if (value is not None and value <= ref + rtol * abs(ref)) or t < t_min:
            return t, what
        t *= 0.5


class Dispersion:
    """glmer's Laplace criterion for a family with a dispersion (Gamma, inverse Gaussian,
    Gaussian with another link): the kernels give ``raw = deviance + |u|^2 + log|L|^2`` (their
    "log-likelihood" is ``-deviance / 2``) and the deviance; the criterion is
    ``raw - deviance + aic(deviance)`` (:meth:`daskmm.core.families.Family.laplace_aic`),
    the data's constant added by the caller as for every family."""

    def __init__(self, family, n: int, wsum: float):
        self.family, self.n, self.wsum = family, int(n), float(wsum)

    def __call__(self, raw: float, dev: float) -> float:
        if not (math.isfinite(raw) and math.isfinite(dev)):
            return math.inf
        return raw - dev + self.family.laplace_aic(dev, self.n, self.wsum)


def _criterion(disp: Dispersion | None, raw: float, dev: float) -> float:
    """The criterion from the kernels' ``raw`` value and deviance."""
    return raw if disp is None else disp(raw, dev)


EXTRA_STEPS = 40
"""At most this many PIRLS steps past its tolerance, to the rounding floor, for a family with
a dispersion (:func:`daskmm.kernels.pirls.local_laplace`, :func:`daskmm.kernels.pirls.
rounding_floor`)."""


def _lower(value: float, ref: float, rtol: float = 1e-12) -> bool:
    """``value`` is not above ``ref`` (within ``rtol``): what a PIRLS step must achieve."""
    return value <= ref + rtol * abs(ref)


def _value(new):
    """An outer step's summary as :func:`halve_until_lower` reads it."""
    return (None if new is None else new[0]), new


def _evaluate(part: GlmmPartition, theta: float, beta: np.ndarray, family: int, link: int,
              nodes: np.ndarray, weights: np.ndarray, modes: bool = False,
              size: float | None = None):
    with_size(part, size)
    eta0 = part.X @ beta + part.offset
    m = len(part.levels)
    warm = part.u_warm is not None
    u = part.u_warm.copy() if warm else np.zeros(m)
    L = np.ones(m)
    val = K.levels_objective(part.starts, eta0, part.y, part.wt, part.nb_k, float(theta),
                             family, link, nodes, weights, u, L, warm)
    if math.isfinite(val):
        part.u_warm = u  # the next evaluation starts here (same worker, same object)
    if modes:
        return val, part.levels, u, L
    return val


def _local_eval(data: P.PirlsData, layout: Layout, lam: dict, beta: np.ndarray, family: int,
                link: int, size: float | None = None, newton: bool = False,
                with_dev: bool = False) -> float | tuple[float, float]:
    with_size(data, size)
    return P.local_laplace(data, layout, lam, beta, family, link, newton=newton,
                           with_dev=with_dev, extra=EXTRA_STEPS if with_dev else 0)


def _local_point(data: P.PirlsData, layout: Layout, lam: dict, beta: np.ndarray, family: int,
                 link: int, size: float | None = None) -> P.Point:
    with_size(data, size)
    return P.local_point(data, layout, lam, beta, family, link)


def _g_point(data: P.PirlsData, done: None, layout: Layout, lam: dict, beta: np.ndarray,
             b_G: np.ndarray, family: int, link: int, size: float | None = None) -> P.Point:
    """The whole :class:`~daskmm.kernels.pirls.Point` at the final ``(theta, beta)``, for the
    conditional modes: the local modes to convergence given the crossed factors' ``b_G``
    (warm from the fit), then the blocked point there. The result stays on the worker.
    ``done``: the last solve's :func:`_c_finish` on this partition (run first)."""
    with_size(data, size)
    value = P.local_laplace(data, layout, lam, beta, family, link,
                            eta_extra=P.global_zb(data, layout, b_G))
    if not math.isfinite(value):
        data.u_warm = None
        return P.rejected_point(data, layout)
    groups = data.g_groups  # the level groups depend only on the keys (build_index's)
    eta_fixed = data.X @ beta + data.offset
    if groups is None:
        groups = data.g_groups = P.point(data, layout, lam, eta_fixed, None, b_G, family,
                                         link).groups
    return P.point(data, layout, lam, eta_fixed, P.split_local(data, data.u_warm), b_G,
                   family, link, groups)


def _c_start(data: P.PirlsData, done: None, layout: Layout, lam: dict, beta: np.ndarray,
             b_G: np.ndarray, family: int, link: int, size: float | None = None,
             shift: tuple[np.ndarray, np.ndarray] | None = None,
             cold: bool = False) -> P.CrossedState | None:
    """The joint PIRLS state at the last evaluation's local modes (or zero); it stays on the
    worker as a future. With ``shift = (w, Lambda_G dv_G)`` and the pieces the last gradient
    left (:func:`daskmm.kernels.pirls.crossed_gradient`), the modes are first moved to first
    order in the change of ``(theta, beta)`` (:func:`daskmm.kernels.laplace_grad.local_shift`).
    ``done``: the last solve's :func:`_c_finish` on this partition (run first)."""
    with_size(data, size)
    n_loc = data.index.Z_loc.shape[1]
    st = None
    warm = not cold and isinstance(data.u_warm, np.ndarray) and len(data.u_warm) == n_loc
    pieces = getattr(data, "_shift", None)
    if warm and shift is not None and pieces is not None:
        L, blocks, E, Y_loc = pieces
        u0 = data.u_warm + LG.local_shift(L, blocks, E, Y_loc, shift[0], shift[1])
        st = P.crossed_state(data, layout, lam, beta, u0, b_G, family, link)
    if st is None and warm:
        st = P.crossed_state(data, layout, lam, beta, data.u_warm, b_G, family, link)
    if st is None:
        st = P.crossed_state(data, layout, lam, beta, np.zeros(n_loc), b_G, family, link)
    return st


def _c_try(data: P.PirlsData, st: P.CrossedState, layout: Layout, lam: dict, beta: np.ndarray,
           b_G_target: np.ndarray, t: float, family: int, link: int,
           size: float | None = None) -> P.CrossedState | None:
    with_size(data, size)
    return P.crossed_try(data, st, layout, lam, beta, b_G_target, t, family, link)


def _c_grad(data: P.PirlsData, st: P.CrossedState, done: None, layout: Layout,
            lam: dict, factors: tuple[str, ...], beta: np.ndarray, u_G: np.ndarray,
            T: np.ndarray, family: int, link: int) -> tuple:
    """:func:`daskmm.kernels.pirls.crossed_gradient` at the solve's final state, after that
    solve's :func:`_c_finish` (``done``), which would otherwise clear what it leaves."""
    return P.crossed_gradient(data, st, layout, lam, factors, beta, u_G, T, family, link)


def _c_summary(st: P.CrossedState | None):
    if st is None:
        return (-math.inf, 0.0, math.inf, None, None, (0.0, 0.0))
    return st.pieces.summary() + (st.step,)


def _c_finish(data: P.PirlsData, st: P.CrossedState | None) -> None:
    if st is not None:
        data.u_warm = st.u
    data._shift = None  # the modes moved: the last gradient's pieces no longer apply


def _g_summary(pt: P.Point):
    return pt.summary() + (pt.step,)


def _g_modes(pt: P.Point, layout: Layout, lam: dict, prof, u_G: np.ndarray):
    LamT = lambda_tilde(layout, lam)
    out = []
    for g in pt.groups:
        b, cov = group_modes(g, group_Lambda(layout, lam, g.composition), LamT, prof,
                             np.zeros(0), u_G, 1.0, layout)
        out.append((g.composition, g.levels, g.nested_levels, b, cov))
    return out


# ------------------------------------------------------------------ criteria
class ScalarCriterion:
    """One ``(1 | g)`` term: the compiled per-level kernel (Laplace or AGQ). Not for a family
    with a dispersion (the fit sends those to :class:`LocalCriterion`)."""

    has_gradient = False
    takes_first_stage = False

    def to_full_tolerance(self) -> None:
        """Each level's modes are found to full tolerance already."""

    def __init__(self, c, parts, spec, family, link, nagq, const):
        self.c, self.parts, self.family, self.link, self.const = c, parts, family, link, const
        self.factor = spec.factors[0]
        self.nodes, self.weights = np.polynomial.hermite_e.hermegauss(nagq)

    def _map(self, theta, beta, size, modes=False):
        return map_parts(self.c, _evaluate, self.parts, theta=float(theta[0]), beta=beta,
                         family=self.family, link=self.link, nodes=self.nodes,
                         weights=self.weights, modes=modes, size=size, pure=False)

    def __call__(self, theta, beta, size=None) -> float:
        return float(sum(self.c.gather(self._map(theta, beta, size)))) - 2.0 * self.const

    def ranef(self, theta, beta, size=None) -> dict[str, RanefTable]:
        pieces = self.c.gather(self._map(theta, beta, size, modes=True))
        lv = np.concatenate([p[1] for p in pieces])
        u = np.concatenate([p[2] for p in pieces])
        L = np.concatenate([p[3] for p in pieces])
        order = np.argsort(lv, kind="stable")
        th = float(theta[0])
        return {self.factor.name: RanefTable(levels=self.factor.label(lv[order]),
                                             b=(th * u)[order][:, None],
                                             cov=((th / L) ** 2)[order][:, None, None])}


class SizeAppended:
    """A criterion of ``(theta, [beta, log k])`` for the optimiser (negative binomial): the
    size ``k`` one more free parameter, after ``beta``, without a gradient."""

    has_gradient = False
    takes_first_stage = False

    def __init__(self, crit):
        self.crit = crit

    def __call__(self, theta, rest) -> float:
        return self.crit(theta, rest[:-1], float(np.exp(rest[-1])))


class LocalCriterion:
    """No crossed factors: PIRLS to convergence inside each partition, one map an evaluation."""

    has_gradient = False
    takes_first_stage = True

    def to_full_tolerance(self) -> None:
        self.newton = False

    def __init__(self, c, parts, spec, layout, family, link, const, newton=False, disp=None):
        self.c, self.parts, self.spec, self.layout = c, parts, spec, layout
        self.family, self.link, self.const = family, link, const
        self.newton = newton  # a canonical link: PIRLS is Newton's method
        self.disp = disp

    def __call__(self, theta, beta, size=None) -> float:
        lam = lambdas(self.spec, np.asarray(theta))
        futs = map_parts(self.c, _local_eval, self.parts, layout=self.layout, lam=lam, beta=beta,
                         family=self.family, link=self.link, size=size, newton=self.newton,
                         with_dev=self.disp is not None, pure=False)
        out = self.c.gather(futs)
        if self.disp is None:
            return float(sum(out)) - 2.0 * self.const
        return self.disp(float(sum(o[0] for o in out)), float(sum(o[1] for o in out))) - \
            2.0 * self.const

    def ranef(self, theta, beta, size=None) -> dict[str, RanefTable]:
        lam = lambdas(self.spec, np.asarray(theta))
        pts = map_parts(self.c, _local_point, self.parts, layout=self.layout, lam=lam, beta=beta,
                        family=self.family, link=self.link, size=size, pure=False)
        return _ranef(self.c, pts, self.spec, self.layout, lam, np.zeros(0))


def _joint_start(data: P.PirlsData, layout: Layout, lam: dict, beta: np.ndarray, family: int,
                 link: int) -> P.JointState | None:
    """Stage 1, the first point of PIRLS over ``(u, beta)`` in this partition (from the modes
    the last evaluation left, if any). The state stays on the worker as a future."""
    sys_ = P.local_system(data, layout, lam)
    n_loc = sys_[0].shape[1]
    st = None
    if isinstance(data.u_warm, np.ndarray) and len(data.u_warm) == n_loc:
        st = P.joint_state(data, *sys_, data.u_warm, beta, family, link)
    if st is None:
        st = P.joint_state(data, *sys_, np.zeros(n_loc), beta, family, link)
    return st


def _joint_try(data: P.PirlsData, st: P.JointState, layout: Layout, lam: dict,
               beta_target: np.ndarray, t: float, family: int, link: int
               ) -> P.JointState | None:
    """The state a step ``t`` from ``st`` towards the PLS solution at ``beta_target``."""
    u_target = st.Minv_c - st.Minv_C @ beta_target
    cand = P.joint_state(data, *P.local_system(data, layout, lam),
                         st.u + t * (u_target - st.u), st.beta + t * (beta_target - st.beta),
                         family, link)
    if cand is not None:
        cand.step = (float(np.max(np.abs(u_target - st.u), initial=0.0)),
                     float(np.max(np.abs(st.u), initial=0.0)))
    return cand


def _joint_outer(data: P.PirlsData, layout: Layout, lam: dict, beta: np.ndarray, family: int,
                 link: int):
    """On a cluster, one outer step of stage 1 in one task: the local modes to convergence at
    ``beta`` (warm), then the fixed-effect Schur pieces there (the client's Newton step for
    ``beta``)."""
    if not math.isfinite(P.local_laplace(data, layout, lam, beta, family, link)):
        data.u_warm = None
        return None
    st = P.joint_state(data, *P.local_system(data, layout, lam), data.u_warm, beta, family,
                       link)
    return None if st is None else (st.pdev, st.Sx, st.sx, st.logdet, 0.0, 0.0, st.dev)


def _joint_summary(st: P.JointState | None):
    if st is None:
        return None
    return (st.pdev, st.Sx, st.sx, st.logdet) + getattr(st, "step", (0.0, 0.0)) + (st.dev,)


def _joint_finish(data: P.PirlsData, st: P.JointState | None) -> None:
    """Keep the modes as the next evaluation's start (a cache: only a warm start)."""
    if st is not None:
        data.u_warm = st.u


class JointCriterion:
    """The nAGQ = 0 criterion of lme4's first stage over ``theta``: PIRLS over the modes and
    ``beta`` together (the LMM's system at the working weights: per-level blocks and the
    fixed-effect Schur complement), the Laplace deviance at the joint modes. Each PIRLS step
    is one map over the partitions; ``beta`` of the last evaluation is kept as ``beta``."""

    def __init__(self, c, parts, spec, layout, family, link, const, beta0, disp=None):
        self.c, self.parts, self.spec, self.layout = c, parts, spec, layout
        self.family, self.link, self.const = family, link, const
        self.beta = np.asarray(beta0, dtype=float).copy()
        self.beta0 = self.beta.copy()
        self.disp = disp

    def _sum(self, outs):
        if any(o is None for o in outs):
            return None
        return [sum(o[i] for o in outs) for i in range(4)] + [max(o[4] for o in outs),
                                                             max(o[5] for o in outs),
                                                             sum(o[6] for o in outs)]

    def _fused(self, theta) -> tuple[float, bool]:
        """On a cluster: each outer step one map, the local modes converged inside each task
        (:func:`_joint_outer`), Newton steps on ``beta`` here."""
        c = self.c
        lam = lambdas(self.spec, np.asarray(theta))

        def at(beta):
            return self._sum(c.gather(map_parts(c, _joint_outer, self.parts, layout=self.layout,
                                                lam=lam, beta=beta, family=self.family,
                                                link=self.link, pure=False)))
        beta = self.beta.copy()
        cur = at(beta)
        if cur is None:
            return math.inf, False
        done = False
        for npass in range(1, P.MAX_ITER + 1):
            target = P.newton_target(cur[1], cur[2])
            if target is None:
                break
            step = float(np.max(np.abs(target - beta), initial=0.0))
            scale = float(np.max(np.abs(beta), initial=0.0))
            if step < P.TOL_U * (1.0 + scale):
                done = True
                break
            t, new = halve_until_lower(
                lambda t, b=beta, d=target - beta: _value(at(b + t * d)), cur[0])
            if new is None or not _lower(new[0], cur[0]):
                done = _rounding(step, scale)
                break
            beta, cur = beta + t * (target - beta), new
            emit("pirls", npass=npass, deviance=float(cur[0]))
        self.beta = beta
        return (_criterion(self.disp, float(cur[0] + cur[3]), float(cur[6])) - 2.0 * self.const,
                done)

    def _local(self, theta) -> tuple[float, bool]:
        """In process: each PIRLS step over the modes and ``beta`` one map."""
        c, kw = self.c, dict(family=self.family, link=self.link, pure=False)
        lam = lambdas(self.spec, np.asarray(theta))
        states = map_parts(c, _joint_start, self.parts, layout=self.layout, lam=lam, beta=self.beta,
                           **kw)
        cur = self._sum(c.gather(map_parts(c, _joint_summary, states, pure=False)))
        if cur is None:
            return math.inf, False
        beta = self.beta.copy()
        done = False
        for npass in range(1, P.MAX_ITER + 1):
            target = P.newton_target(cur[1], cur[2])
            if target is None:
                break
            def attempt(t, target=target, states=states):
                cands = map_parts(c, _joint_try, self.parts, states, layout=self.layout, lam=lam,
                                  beta_target=target, t=t, **kw)
                new = self._sum(c.gather(map_parts(c, _joint_summary, cands, pure=False)))
                return (None if new is None else new[0]), (new, cands)
            t, (new, cands) = halve_until_lower(attempt, cur[0])
            if new is None or not _lower(new[0], cur[0]):
                done = _rounding(float(np.max(np.abs(target - beta), initial=0.0)),
                                 float(np.max(np.abs(beta), initial=0.0)))
                break
            step = max(new[4], float(np.max(np.abs(target - beta), initial=0.0)))
            scale = max(new[5], float(np.max(np.abs(beta), initial=0.0)))
            beta = beta + t * (target - beta)
            cur, states = new, cands
            emit("pirls", npass=npass, deviance=float(cur[0]))
            if step < P.TOL_U * (1.0 + scale):
                done = True
                break
        c.gather(map_parts(c, _joint_finish, self.parts, states, pure=False))
        self.beta = beta
        return (_criterion(self.disp, float(cur[0] + cur[3]), float(cur[6])) - 2.0 * self.const,
                done)

    def __call__(self, theta) -> float:
        """The criterion at ``theta``, PIRLS warm from the last evaluation's ``beta`` and
        modes. When PIRLS does not converge from there (a singular Newton system, or step
        halving that cannot lower the deviance while the step is still large: the last
        evaluation left it where the weights are extreme), once more from the GLM start and
        zero modes; when that fails too the criterion is infinite there, not the value where
        PIRLS stopped."""
        run = self._local if is_in_process(self.c) else self._fused
        value, done = run(theta)
        if done:
            return value
        self.beta = self.beta0.copy()
        self.c.gather(map_parts(self.c, _joint_forget, self.parts, pure=False))
        value, done = run(theta)
        return value if done else math.inf


def _rounding(step: float, scale: float) -> bool:
    """A step that halving cannot make lower the deviance is rounding, not failure, when it is
    this small: PIRLS is at its modes."""
    return step < 1e-6 * (1.0 + scale)


def _joint_forget(data: P.PirlsData) -> None:
    """Drop the warm start (the modes of the last evaluation)."""
    data.u_warm = None


class GlobalCriterion:
    """Crossed factors: PIRLS over local and crossed modes together (:meth:`_solve`), the
    dense global block solved here; the partitions' states stay where the data are."""

    def __init__(self, c, parts, spec, layout, family, link, const, newton=False, disp=None):
        self.c, self.parts, self.spec, self.layout = c, parts, spec, layout
        self.family, self.link, self.const = family, link, const
        self.newton = newton  # a canonical link: PIRLS is Newton's method
        self.disp = disp
        self.u_G = np.zeros(layout.n_G)
        self.c_newton: float | None = None  # Newton's constant, from the last two-step solve
        self._shift = None  # (theta, beta, size, S^-1, psi, lam_G) of the last gradient
        self._solved: dict = {}  # (theta, beta, size) -> (u_G, sums) of the recent solves
        self._done = [None] * len(parts)  # the last solve's _c_finish tasks
        # the exact gradient (daskmm.kernels.laplace_grad): a canonical link and one scalar
        # term a factor, in theta's order
        names = tuple(t.factor for t in spec.terms)
        self.factors = names if newton and disp is None and len(set(names)) == len(names) and all(
            isinstance(t, RandomTerm) and t.q == 1 for t in spec.terms) else None
        if self.factors is not None:
            self.g_factor = np.concatenate(
                [np.full(len(layout.global_levels[f]), names.index(f), dtype=np.int64)
                 for f in layout.global_factors])

    takes_first_stage = False

    @property
    def has_gradient(self) -> bool:
        return self.factors is not None

    def to_full_tolerance(self) -> None:
        """Without the exact gradient the Hessian differences the criterion itself (steps of
        1e-4, divided by 1e-8): Newton's early stop goes; with it, it differences the
        gradient (divided by 1e-4 only) and the early stop stays."""
        if not self.has_gradient:
            self.newton = False

    def _Lam_G(self, lam) -> np.ndarray:
        factors = self.layout.global_factors
        return P.global_lambda([len(self.layout.global_levels[f]) for f in factors],
                               [lam[f] for f in factors])

    def _solve(self, theta, beta, size=None):
        """PIRLS steps over the local and crossed modes together (lme4's), each the PLS
        solution at the current weights: the crossed block by its Schur complement here, the
        local modes from the same block factors in the partition (:func:`_c_try`); the step
        halved while the penalised deviance rises.

        On a cluster each step is one round: a map of :func:`_c_try` over the partitions'
        states (futures on the workers that hold the data) and a map of their small summaries,
        gathered. An earlier design ran the local PIRLS to convergence inside each task for
        every global step (fewer rounds, but about five passes over the rows a round); at
        2x10^5 rows on 2 workers it took 33 s against 27 s for this, and the gap grows with
        the rows."""
        c, lay = self.c, self.layout
        lam = lambdas(self.spec, np.asarray(theta))
        Lam_G = self._Lam_G(lam)
        kw = dict(layout=lay, lam=lam, beta=beta, family=self.family, link=self.link,
                  size=size)
        shift, self._shift = self._predict(theta, beta, size), None
        # starts in turn: the modes moved to first order (value_grad's pieces), the last
        # modes, zero. A start that is finite but far off (the first-order move from a
        # gradient on the boundary, theta = 0, can put eta near 40) can still break the
        # iteration (a global block not positive definite in rounding): the evaluation
        # then goes on from the next start rather than returning inf, so that its value is
        # the criterion's at (theta, beta), not an accident of where the last one was
        starts = [(self.u_G + shift[2], shift[:2])] if shift is not None else []
        cold = self.disp is not None  # cold starts (pirls.local_laplace's note)
        if not cold:
            starts += [(self.u_G.copy(), None)]
        starts += [(np.zeros(lay.n_G), None)]
        for k, (u_G, sh) in enumerate(starts):
            b_G = np.zeros(lay.n_G) if k == len(starts) - 1 else Lam_G @ u_G
            states = map_parts(c, _c_start, self.parts, self._done, b_G=b_G, shift=sh, pure=False,
                               cold=cold, **kw)
            s = self._sum_states(states)
            if not math.isfinite(s[0]):
                continue
            out = self._iterate(states, s, u_G, Lam_G, kw)
            if out is not None:
                states, u_G, p0, s = out
                break
        else:
            return math.inf, None, u_G, lam, None
        _, ld_G, _ = P.global_step(s[4], s[3], Lam_G)
        # not waited for: the next task on each partition (a start, the gradient, the
        # modes) takes it as an argument, so runs after it
        self._done = map_parts(c, _c_finish, self.parts, states, pure=False)
        self.u_G = u_G
        sums = (s[4], s[3], s[2])
        self._solved[self._key(theta, beta, size)] = (u_G.copy(), sums)
        while len(self._solved) > 16:
            self._solved.pop(next(iter(self._solved)))
        return (_criterion(self.disp, p0 + s[2] + ld_G, -2.0 * s[0]), states, u_G, lam,
                sums)

    def _iterate(self, states, s, u_G, Lam_G, kw):
        """The PIRLS steps of :meth:`_solve` from a start: ``(states, u_G, p, sums)`` at
        convergence, None when a step fails (the global block not positive definite, no
        finite point along the step)."""
        c = self.c
        p0 = P.pdev(s[0], s[1]) + float(u_G @ u_G)
        prev = None  # the last full step's size
        extra = EXTRA_STEPS if self.disp is not None else 0
        last_small = None
        for npass in range(1, P.MAX_ITER + extra + 1):
            try:
                _, _, u_target = P.global_step(s[4], s[3], Lam_G)
            except P.LinAlgError:
                return None
            b_target = Lam_G @ u_target
            def attempt(t, u_target=u_target, b_target=b_target, u_G=u_G, states=states):
                u_c = u_G + t * (u_target - u_G)
                cands = map_parts(c, _c_try, self.parts, states, b_G_target=b_target, t=t,
                                  pure=False, **kw)
                new = self._sum_states(cands)
                p = P.pdev(new[0], new[1]) + float(u_c @ u_c)
                return p, (p, u_c, cands, new)
            t, (p, u_c, cands, new) = halve_until_lower(attempt, p0)
            if not math.isfinite(p):
                return None
            d_G = float(np.max(np.abs(u_target - u_G), initial=0.0))
            scale = max(new[6], float(np.max(np.abs(u_G), initial=0.0)))
            states, u_G, p0, s = cands, u_c, p, new
            emit("pirls", npass=npass, deviance=p)
            step = max(new[5], d_G)
            if step < P.TOL_U * (1.0 + scale):  # the full step is tiny
                # a family with a dispersion: on to rounding (local_laplace's note)
                if not P.rounding_floor(extra, step, last_small):
                    break
                extra -= 1
                last_small = step
                continue
            if self.newton and t == 1.0 and P.newton_done(prev, step, scale, self.c_newton):
                break  # Newton: the point reached is within C step^2 of the modes
            if self.newton and t == 1.0 and prev is not None:
                self.c_newton = P.newton_constant(prev, step)
            prev = step if t == 1.0 else None
        return states, u_G, p0, s

    @staticmethod
    def _key(theta, beta, size):
        return (np.asarray(theta, float).tobytes(), np.asarray(beta, float).tobytes(), size)

    def _sum_states(self, states):
        out = self.c.gather(map_parts(self.c, _c_summary, states, pure=False))
        if any(o[3] is None for o in out):
            return (-math.inf, 0.0, math.inf, None, None, math.inf, 0.0)
        return (sum(o[0] for o in out), sum(o[1] for o in out), sum(o[2] for o in out),
                sum(o[3] for o in out), sum(o[4] for o in out),
                max(o[5][0] for o in out), max(o[5][1] for o in out))

    def __call__(self, theta, beta, size=None) -> float:
        return self._solve(theta, beta, size)[0] - 2.0 * self.const

    def value_grad(self, theta, beta, size=None) -> tuple[float, np.ndarray]:
        """The criterion and its exact gradient in ``(theta, beta)``
        (:mod:`daskmm.kernels.laplace_grad`): after the PIRLS steps, one more round, a map of
        :func:`_c_grad` over the partitions' states with the crossed block's ``T``."""
        theta = np.asarray(theta, dtype=float)
        val, states, u_G, lam, sums = self._solve(theta, beta, size)
        nan = np.full(len(theta) + len(beta), np.nan)
        if not math.isfinite(val):
            return math.inf, nan
        lam_G = np.concatenate([np.full(len(self.layout.global_levels[f]),
                                        float(lam[f][0, 0]))
                                for f in self.layout.global_factors])
        try:
            S_inv = P.global_inverse(sums[0], sums[1], np.diag(lam_G))
        except P.LinAlgError:
            return math.inf, nan
        T = LG.crossed_T(S_inv, lam_G)
        pieces = self.c.gather(map_parts(self.c,
            _c_grad, self.parts, states, self._done, layout=self.layout, lam=lam,
            factors=self.factors, beta=beta, u_G=u_G, T=T, family=self.family, link=self.link,
            pure=False))
        g, psi = LG.combine(pieces, S_inv, lam_G, self.g_factor, theta, len(beta))
        self._shift = (theta.copy(), np.array(beta, dtype=float), size, S_inv, psi, lam_G)
        return val - 2.0 * self.const, g

    def _predict(self, theta, beta, size):
        """``(w, Lambda_G dv_G, dv_G)``: the first-order move of the modes from the last
        gradient's point to ``(theta, beta)`` (:func:`daskmm.kernels.laplace_grad.
        crossed_shift`), or None without one."""
        if self._shift is None:
            return None
        theta0, beta0, size0, S_inv, psi, lam_G = self._shift
        if size0 != size or len(beta0) != len(beta):
            return None
        w = LG.shift_weights(np.asarray(theta, float) - theta0, np.asarray(beta, float) - beta0)
        dv_G = LG.crossed_shift(S_inv, psi, w)
        return w, lam_G * dv_G, dv_G

    def ranef(self, theta, beta, size=None) -> dict[str, RanefTable]:
        """The conditional modes at ``(theta, beta)``: the crossed ones from the solve there
        (one of the recent ones when the optimiser evaluated this point), the local ones to
        convergence given them (:func:`_g_point`)."""
        done = self._solved.get(self._key(theta, beta, size))
        if done is not None:
            u_G, sums = done
            lam = lambdas(self.spec, np.asarray(theta))
        else:
            _, _, u_G, lam, sums = self._solve(theta, beta, size)
        pts = map_parts(self.c, _g_point, self.parts, self._done, layout=self.layout, lam=lam,
                        beta=beta, b_G=self._Lam_G(lam) @ u_G, family=self.family,
                        link=self.link, size=size, pure=False)
        return _ranef(self.c, pts, self.spec, self.layout, lam, u_G, sums)


def _ranef(c, pts, spec, layout, lam, u_G, sums=None) -> dict[str, RanefTable]:
    """Conditional modes and SDs (lme4's ``condVar``) from the final points on the workers."""
    if sums is None:
        out = c.gather(map_parts(c, _g_summary, pts, pure=False))
        sums = (sum(o[4] for o in out), sum(o[3] for o in out), sum(o[2] for o in out))
    G, RtR, logdet = sums
    n = 1  # the profiled criterion is not used; only its factor
    prof = profiled(G, RtR, logdet, lambda_tilde(layout, lam), layout.n_G, 0, n, 0.0, False)

    class _Modes:
        mode = "distributed"

        @staticmethod
        def modes(lam_, prof_, beta_, u_G_, sigma_):
            futs = map_parts(c, _g_modes, pts, layout=layout, lam=lam_, prof=prof_, u_G=u_G_,
                             pure=False)
            return [item for part in c.gather(futs) for item in part]
    prob = types.SimpleNamespace(spec=spec, layout=layout, evaluator=_Modes())
    return ranef_tables(prob, lam, prof, np.zeros(0), u_G, 1.0)


class _FixedEffectsMap:
    """A criterion seen through a map of its fixed effects (``beta = full(b)``): what it
    declares of itself passes through."""

    crit: object

    def full(self, b: np.ndarray) -> np.ndarray:  # pragma: no cover - each map defines it
        raise NotImplementedError

    def grad_of(self, g_beta: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, theta, b, size=None):
        return self.crit(theta, self.full(b), size)

    def value_grad(self, theta, b, size=None):
        v, g = self.crit.value_grad(theta, self.full(b), size)
        nt = len(theta)
        return v, np.concatenate([g[:nt], self.grad_of(g[nt:])])

    def ranef(self, theta, b, size=None):
        return self.crit.ranef(theta, self.full(b), size)

    @property
    def has_gradient(self) -> bool:
        return self.crit.has_gradient

    @property
    def takes_first_stage(self) -> bool:
        return self.crit.takes_first_stage

    def to_full_tolerance(self) -> None:
        self.crit.to_full_tolerance()


class Estimable(_FixedEffectsMap):
    """The criterion over the estimable fixed effects: aliased ones held at zero."""

    def __init__(self, crit, keep: np.ndarray):
        self.crit, self.keep = crit, keep

    def full(self, beta: np.ndarray) -> np.ndarray:
        out = np.zeros(len(self.keep))
        out[self.keep] = beta
        return out

    def grad_of(self, g_beta: np.ndarray) -> np.ndarray:
        return g_beta[self.keep]


class Standardised(_FixedEffectsMap):
    """The criterion over ``gamma``, the fixed effects of standardised columns: ``beta = T
    gamma`` (:func:`daskmm.kernels.glm_start.standardising`). The optimiser sees the same
    problem whether a covariate was centred and scaled or not; estimates and covariances are
    mapped back by the fit (the optimiser's record, ``optinfo.x`` and ``optinfo.checks``,
    stays in these coordinates)."""

    def __init__(self, crit, T: np.ndarray):
        self.crit, self.T = crit, T

    def full(self, gamma: np.ndarray) -> np.ndarray:
        return self.T @ gamma

    def grad_of(self, g_beta: np.ndarray) -> np.ndarray:
        return self.T.T @ g_beta
