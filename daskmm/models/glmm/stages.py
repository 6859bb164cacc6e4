"""The stages of a GLMM fit around its criterion (lme4's): the GLM start of ``beta``
(:func:`glm_start`), the first stage over ``theta`` at nAGQ = 0 (:func:`stage1`), the
optimisation over ``(theta, beta)`` (:func:`optimise_joint`), and the covariance of the estimates
from the Hessian (:func:`hessian`, :func:`hessian_of_gradient`, :func:`vcov`)."""

from __future__ import annotations

import math

import numpy as np

from daskmm.core.optimizer import certified_optimum, minimize
from daskmm.distributed.mapreduce import map_parts
from daskmm.errors import DataError, FitError
from daskmm.kernels import glm_start as G
from daskmm.kernels.aliasing import estimable_columns
from daskmm.kernels.numderiv import (
    derivatives,
    forward_hessian_of_gradient,
    hessian_of_gradient,
    steps_for,
    vcov_of,
)
from daskmm.models.glmm.criteria import JointCriterion, SizeAppended


def _scoring(part, beta: np.ndarray | None, family: int, link: int):
    return G.scoring_step(part.X, part.offset, part.y, part.wt, family, link, beta) + \
        (len(part.y), part.const) + (G.column_moments(part.X) if beta is None else ())


def glm_start(c, parts, family, link, names: list[str], max_iter: int = 50,
               max_halvings: int = 30):
    """The GLM without random effects, as ``glm.fit``: the estimable columns (aliased ones
    dropped with a warning, as lme4), and their ``beta`` by Fisher scoring from ``glm``'s
    ``mustart`` with step halving; each iteration one map over the partitions.

    Returns ``(keep, beta, n, const, (T, T^-1))``: ``beta = T gamma`` maps the optimiser's
    standardised coordinates of the kept columns (:func:`daskmm.kernels.glm_start.
    standardising`, from column moments taken in the first map) to ``beta``."""
    moments = []

    def step(beta):
        out = c.gather(map_parts(c, _scoring, parts, beta=beta, family=family, link=link,
                                 pure=False))
        if beta is None:
            moments.extend([sum(o[5] for o in out), sum(o[6] for o in out)])
        return (sum(o[0] for o in out), sum(o[1] for o in out), sum(o[2] for o in out),
                sum(o[3] for o in out), sum(o[4] for o in out))

    A, b, _, n, const = step(None)
    if n == 0:
        return (np.ones(len(names), dtype=bool), np.zeros(len(names)), 0, 0.0,
                (np.eye(len(names)), np.eye(len(names))))
    keep = estimable_columns(A, names)
    scale = G.standardising(moments[0][keep], moments[1][keep], n,
                            np.array([nm == "(Intercept)" for nm in names])[keep])
    sub = np.ix_(keep, keep)

    def solve(A, b):
        return G.normal_equations(A[sub], b[keep])

    def full(beta_k):
        out = np.zeros(len(names))
        out[keep] = beta_k
        return out

    beta = solve(A, b)
    A, b, ll, _, _ = step(full(beta))
    for _ in range(max_iter):
        new = solve(A, b)
        A2, b2, ll2, _, _ = step(full(new))
        halvings = 0
        while not math.isfinite(ll2) or ll2 < ll - 1e-10 * abs(ll):
            if halvings == max_halvings:
                raise FitError("the GLM start cannot improve its log-likelihood by step "
                               "halving; the response may separate the data completely")
            new = 0.5 * (new + beta)
            A2, b2, ll2, _, _ = step(full(new))
            halvings += 1
        done = (abs(ll2 - ll) <= 1e-12 * (abs(ll2) + 0.1)
                and np.max(np.abs(new - beta)) <= 1e-8 * (1 + np.max(np.abs(new))))
        beta, A, b, ll = new, A2, b2, ll2
        if done:
            break
    # on the standardised columns' scale: a covariate in other units (x = 1000 + 0.01 z) has a
    # large coefficient without anything diverging
    if not np.all(np.isfinite(beta)) or np.max(np.abs(scale[1] @ beta)) > 30:
        raise DataError("the GLM start diverges (|beta| > 30 per standard deviation of its "
                        "column): the response may separate the data completely (a level or "
                        "a column value with all 0 or all 1)")
    return keep, beta, int(n), float(const), scale


def optimise_joint(crit, theta0: np.ndarray, lower_theta: np.ndarray, beta0: np.ndarray,
              opts: dict, mode: str, near: bool = False):
    """BOBYQA over ``(theta, beta)`` from glmer's start with lme4's ``nloptwrap`` tolerances,
    then the boundary snap and Newton polish (:func:`daskmm.core.optimizer.minimize`).

    A step of 1e-3 for the polish (not the LMM's 1e-4): the Laplace criterion carries the
    PIRLS tolerance as well as rounding, and the wider stencil keeps that noise in the
    finite-difference gradient below what would move the point by 1e-8; the forward-
    difference Hessian is then rougher, so up to 3 Newton steps.

    (Searching ``beta`` in units of its GLM standard errors was tried: on grouseticks it took
    1364 evaluations against 765 in raw units, so the raw units stay.)"""
    nt = len(theta0)
    x0 = np.concatenate([theta0, beta0])
    lower = np.concatenate([lower_theta, np.full(len(beta0), -np.inf)])
    step = np.concatenate([np.where(lower_theta == 0, 0.2, 0.1), np.full(len(beta0), 0.1)])
    if near:  # from the nAGQ = 0 optimum: the Laplace optimum is close
        step = step * NEAR_STEP
    fg = None
    if crit.has_gradient:
        def fg(x):
            return crit.value_grad(x[:nt], x[nt:])
    elif opts.get("method", "auto") in ("auto", "lbfgsb"):
        opts = {**opts, "method": "bobyqa"}
    return minimize(x0, lower, f=lambda x: crit(x[:nt], x[nt:]), fg=fg, options=opts,
                    initial_step=step, polish_step=1e-3, polish_iter=3, mode=mode)


NEAR_STEP = 0.1
"""BOBYQA's initial steps after the nAGQ = 0 stage, as a fraction of those from glmer's
start."""


FIRST_STAGE_SCALES = (1.0, 0.1, 0.01)
"""The first stage's starts: glmer's, then scaled down where its criterion is not finite
(:func:`first_stage`)."""


def first_stage(crit: JointCriterion, theta0: np.ndarray, lower: np.ndarray, opts: dict,
            mode: str):
    """lme4's first stage (``nAGQ = 0``): BOBYQA over ``theta`` alone, ``beta`` found with
    the modes by PIRLS at each ``theta``. Where the joint criterion is not finite at the
    start (PIRLS overflows: glmer's start ``theta = 1`` on a log link whose scale is the
    response's, as a gaussian(log) model on sleepstudy's reaction times), it starts from the
    start scaled by a tenth, then a hundredth: skipping the stage sent that fit's joint
    BOBYQA into a worse of two singular optima (20 deviance units above glmer's), on some
    machines' rounding. Returns ``(theta, beta, summary)`` or None when it fails (not finite
    at any of those starts)."""
    for scale in FIRST_STAGE_SCALES:
        if math.isfinite(crit(theta0 * scale)):
            theta0 = theta0 * scale
            break
    else:
        return None
    step = np.where(lower == 0, 0.2, 0.1)
    theta, info = minimize(theta0, lower, f=crit, options={"method": "bobyqa",
                                                           "polish": False,
                                                           "ftol_abs": 1e-6},
                           initial_step=step, mode=mode)
    crit(theta)
    return theta, crit.beta.copy(), {"feval": info.feval, "message": info.message,
                                     "theta": theta.tolist()}


def optimise_stages(crit, spec, beta0: np.ndarray, Tinv: np.ndarray, opts: dict, where: str,
                    first: JointCriterion | None = None, size_free: bool = False,
                    theta_start: np.ndarray | None = None):
    """glmer's stages from its start ``beta0``: with ``first`` (a :class:`JointCriterion`)
    lme4's nAGQ = 0 stage over ``theta`` alone, then the joint optimisation over ``(theta,
    gamma)`` (and ``log k``, the negative binomial's size, when ``size_free``), ``crit`` a
    :class:`~daskmm.models.glmm.criteria.Standardised` criterion, ``gamma = Tinv beta``.
    ``theta_start``: a start for ``theta`` near the optimum (BOBYQA's first steps then a
    tenth of those from glmer's start, :data:`NEAR_STEP`), in place of glmer's.
    Returns ``(x, optinfo, size, lower)``: ``x = (theta, gamma)``."""
    beta0 = Tinv @ beta0
    theta0 = np.concatenate([t.theta_init() for t in spec.terms]) if theta_start is None \
        else np.asarray(theta_start, float)
    lower = np.concatenate([t.theta_lower() for t in spec.terms])
    if size_free:  # log k is one more free parameter, after beta
        x, optinfo = optimise_joint(SizeAppended(crit), theta0, lower,
                                    np.concatenate([beta0, [0.0]]), opts, where)
        return x[:-1], optinfo, float(np.exp(x[-1])), lower
    stage1 = first_stage(first, theta0, lower, opts, where) if first is not None else None
    if stage1 is not None:  # lme4's nAGQ = 0 stage: theta with beta inside PIRLS
        theta0, beta1, info1 = stage1
        beta0 = Tinv @ beta1
    x, optinfo = optimise_joint(crit, theta0, lower, beta0,
                                {k: v for k, v in opts.items() if k != "stages"}, where,
                                near=stage1 is not None or theta_start is not None)
    if stage1 is not None:
        optinfo.settings["stage1"] = info1
        optinfo.feval += info1["feval"]
    return x, optinfo, None, lower


def estimates(crit, x: np.ndarray, lower: np.ndarray, optinfo, size: float | None,
              opts: dict, where: str, names: list[str], hessian: np.ndarray | None = None,
              one_sided: bool = False):
    """Check and repair the optimum ``x`` (:func:`daskmm.core.optimizer.certified_optimum`)
    and return ``(theta, beta, criterion, vcov(beta), conditional modes, optinfo)``: ``vcov``
    from the Hessian in ``(theta, beta)`` the check uses (glmer's ``use.hessian = TRUE``), at
    the estimated size for the negative binomial (as glmer.nb reports it: the last glmer fit,
    k fixed; its optimum is checked, not repaired). ``hessian``: an estimate of the Hessian at
    ``x`` (a quasi-Newton optimiser's), whose standard errors choose the steps of the first
    differences of the gradient at once (:func:`~daskmm.kernels.numderiv.steps_for`).
    ``one_sided``: forward differences of the gradient (``k`` gradients, not ``2 k``; the
    matrix-free crossed fits', whose criterion and gradient are estimates: the difference's
    own error, about the step times the third derivative, lies far below the estimate's)."""
    nt = len(lower)
    guess = [hessian]
    # the Hessian divides differences of the criterion by delta^2 = 1e-8: from here on PIRLS
    # runs to its full tolerance, without Newton's early stop (differences of the exact
    # gradient divide by 1e-4 only: the early stop stays)
    crit.to_full_tolerance()
    graded = crit.has_gradient
    bounds = np.concatenate([lower, np.full(len(x) - nt, -np.inf)])

    def f(v):
        return crit(v[:nt], v[nt:], size)

    def derivs(v):
        # steps of 1e-4 (lme4's deriv12), then, where a parameter's standard error is so
        # small that the step under-resolves its curvature, again with steps scaled to the
        # standard errors (numderiv.steps_for)
        if graded:
            val, g = crit.value_grad(v[:nt], v[nt:], size)

            def grad(u):
                return crit.value_grad(u[:nt], u[nt:], size)[1]

            def second(h):
                if one_sided:
                    return forward_hessian_of_gradient(grad, v, g, delta=h)
                return hessian_of_gradient(grad, v, bounds, h)
            if guess[0] is not None:  # the optimiser's Hessian gives the steps: one round
                h, guess[0] = steps_for(guess[0]), None
                return val, g, second(1e-4 if h is None else h)
            H = second(1e-4)
            h = steps_for(H)
            if h is not None:
                H = second(h)
            return val, g, H
        f0 = f(v)
        g, H = derivatives(f, v, bounds, f0=f0)
        h = steps_for(H)
        if h is not None:
            g, H = derivatives(f, v, bounds, h, f0=f0)
        return f0, g, H

    def run(start):
        return optimise_joint(crit, start[:nt], lower, start[nt:],
                              {k: v for k, v in opts.items() if k != "stages"}, where,
                              near=True)

    x, optinfo, (objective, _, H) = certified_optimum(
        run, derivs, f, np.asarray(x, dtype=float), optinfo, bounds, names,
        repairs=0 if size is not None else 2)
    if not math.isfinite(objective):
        raise FitError("the criterion is not finite at the optimum; the model may be "
                       "overparameterised or the data separated")
    theta, beta = x[:nt], x[nt:]
    return (theta, beta, objective, vcov_of(H, nt, theta, lower),
            crit.ranef(theta, beta, size), optinfo)
