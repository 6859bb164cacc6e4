"""Denominator degrees of freedom for fixed-effect tests: Satterthwaite's method as lmerTest.

lmerTest takes the Hessian of the deviance in ``varpar = (theta, sigma)`` (REML or ML as the
fit), ``A = 2 H^+`` as the covariance of ``varpar``, and the Jacobian of ``vcov(beta)`` in
``varpar``; a contrast ``L'beta`` then has ``df = 2 (L'VL)^2 / (g'Ag)``, ``g_i = L' J_i L``.
lmerTest differentiates numerically (numDeriv); so do we, with Richardson-extrapolated central
differences, each point one evaluation of the profiled criterion on the fit's statistics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from daskmm.distributed.evaluator import GatheredEvaluator
from daskmm.errors import ModelError
from daskmm.kernels.kenward_roger import lb_ddf, vcov_adjusted
from daskmm.kernels.pls import group_Lambda, lambda_tilde
from daskmm.kernels.varpar import (
    pinv_sym,
    richardson_hessian,
    richardson_jacobian,
    satterthwaite,
    satterthwaite_f,
)
from daskmm.models.lmm.inference.deviance import Deviance, blas_threads
from daskmm.models.shared.structure import lambdas

log = logging.getLogger("daskmm")

DDF_METHODS = ("satterthwaite", "kenward-roger")


@dataclass
class VarparCov:
    """What Satterthwaite's method needs, computed once per fit.

    Attributes
    ----------
    varpar : ndarray
        ``(theta, sigma)`` at the optimum.
    hessian : ndarray
        Hessian of the deviance in ``varpar``.
    A : ndarray
        Asymptotic covariance of ``varpar`` (``2 H^+``).
    vcov : ndarray
        ``vcov(beta)``.
    jac : ndarray, shape (p, p, len(varpar))
        Derivatives of ``vcov(beta)``.
    warnings : list of str
        lmerTest's convergence warnings (negative or near-zero Hessian eigenvalues).
    """

    varpar: np.ndarray
    hessian: np.ndarray
    A: np.ndarray
    vcov: np.ndarray
    jac: np.ndarray
    warnings: list[str] = field(default_factory=list)


def varpar_cov(dev: Deviance, theta: np.ndarray, sigma: float, reml: bool,
               tol: float = 1e-8) -> VarparCov:
    """Hessian of lmerTest's ``devfun_vp`` and Jacobian of ``vcov(beta)`` at the optimum."""
    varpar = np.append(np.asarray(theta, dtype=float), sigma)
    with blas_threads(dev.prob):
        H = richardson_hessian(lambda v: dev.vp(v, reml), varpar)
        jac = richardson_jacobian(dev.covbeta, varpar)
    Hinv, w = pinv_sym(H, tol)
    warnings = []
    neg = w < -tol
    if np.any(neg):
        vals = " ".join(f"{v:.1e}" for v in w[neg])
        warnings.append(f"Model failed to converge with {int(neg.sum())} negative "
                        f"eigenvalue(s): {vals}")
    near = (w > -tol) & (w < tol)
    if np.any(near):
        vals = " ".join(f"{v:.1e}" for v in w[near])
        warnings.append(f"Model may not have converged with {int(near.sum())} eigenvalue(s) "
                        f"close to zero: {vals}")
    for msg in warnings:
        log.warning(msg)
    return VarparCov(varpar, H, 2 * Hinv, dev.covbeta(varpar), jac, warnings)


def coef_tests(names: list[str], beta: np.ndarray, info: VarparCov) -> pd.DataFrame:
    """lmerTest's coefficient table: ``term, estimate, std_error, df, statistic, p_value``
    (t tests with Satterthwaite's df)."""
    from scipy import stats
    rows = []
    for j, name in enumerate(names):
        e = np.zeros(len(beta))
        e[j] = 1.0
        v, df = satterthwaite(e, info.vcov, info.jac, info.A)
        se = np.sqrt(v)
        t = beta[j] / se
        rows.append((name, beta[j], se, df, t, float(2 * stats.t.sf(abs(t), df))))
    return pd.DataFrame(rows, columns=["term", "estimate", "std_error", "df", "statistic",
                                       "p_value"])


def f_test(L: np.ndarray, beta: np.ndarray, info: VarparCov) -> dict:
    """F test of ``L beta = 0`` (lmerTest's ``contestMD``): ``F, ndf, ddf, p_value``."""
    from scipy import stats
    F, ndf, ddf = satterthwaite_f(L, beta, info.vcov, info.jac, info.A,
                                  tol=np.sqrt(np.finfo(float).eps))
    return {"F": F, "ndf": ndf, "ddf": ddf, "p_value": float(stats.f.sf(F, ndf, ddf))}


KR_DENSE_MAX = 3000
"""With crossed factors, Kenward-Roger works on the dense ``q x q`` ``Z'Z`` of all random
effects; above this many random-effect coefficients it is refused (use Satterthwaite)."""


def _param_positions(spec, lay) -> list[tuple[str, int, int]]:
    """Each covariance parameter of the random effects (pbkrtest's order, lme4's theta
    order): ``(factor, a, b)`` with ``a, b`` its row and column within the factor's columns."""
    params = []
    for f in spec.factors:
        off = 0
        for ti in f.terms:
            t = spec.terms[ti]
            r, c = t.tril_index()
            for a, b in zip(r, c):
                params.append((f.name, off + a, off + b))
            off += t.q
    return params


def _level_starts(lay, composition) -> dict:
    starts = {lay.primary: [0]}
    pos = lay.q[lay.primary]
    for f, cnt in zip(lay.nested, composition):
        starts[f] = [pos + i * lay.q[f] for i in range(int(cnt))]
        pos += int(cnt) * lay.q[f]
    return starts


def _E(size: int, starts: dict, params) -> list[np.ndarray]:
    out = []
    for f, a, b in params:
        Ei = np.zeros((size, size))
        for st in starts.get(f, []):
            Ei[st + a, st + b] = Ei[st + b, st + a] = 1.0
        out.append(Ei)
    return out


def kenward_roger_parts(prob, theta: np.ndarray, sigma: float, vcov: np.ndarray):
    """pbkrtest's ``vcovAdj`` (:func:`daskmm.kernels.kenward_roger.vcov_adjusted`): per level
    of the primary factor for one grouping factor or factors nested in it; with crossed
    factors, on the dense ``Z'Z`` of all random effects (one "level" holding every
    coefficient), up to :data:`KR_DENSE_MAX` coefficients."""
    lay = prob.layout
    if prob.spec.weights:
        raise ModelError("Kenward-Roger with prior weights is not built; use "
                         "ddf='satterthwaite'")
    if not isinstance(prob.evaluator, GatheredEvaluator):
        raise ModelError("Kenward-Roger needs the statistics on the client; this fit kept them "
                         "on the workers (mode='distributed'): fit with mode='gathered'")
    spec = prob.spec
    lam = lambdas(spec, theta)
    p = lay.p
    params = _param_positions(spec, lay)
    st = prob.evaluator.stats
    XtX = prob.G[lay.n_G:lay.n_G + p, lay.n_G:lay.n_G + p]
    if not lay.global_factors:
        groups = []
        for g in st.groups:
            s = g.A.shape[1]
            B = np.transpose(g.B[:, :p, :], (2, 0, 1))
            groups.append((g.A, B, group_Lambda(lay, lam, g.composition),
                           _E(s, _level_starts(lay, g.composition), params)))
        return vcov_adjusted(groups, XtX, prob.n, sigma ** 2, vcov)
    # crossed factors: assemble Z'Z, Z'X, Lambda and each E over all coefficients, the
    # levels' local blocks first, then the global columns
    nG = lay.n_G
    n_loc = sum(g.m * g.A.shape[1] for g in st.groups)
    q = n_loc + nG
    if q > KR_DENSE_MAX:
        raise ModelError(f"Kenward-Roger with crossed factors works on the dense Z'Z of all "
                         f"{q} random-effect coefficients; above {KR_DENSE_MAX} it is not "
                         "built: use ddf='satterthwaite'")
    C = np.zeros((q, q))
    ZX = np.zeros((q, p))
    Lam = np.zeros((q, q))
    E = [np.zeros((q, q)) for _ in params]
    pos = 0
    for g in st.groups:
        if not isinstance(g.B, np.ndarray):
            raise ModelError("Kenward-Roger with crossed factors needs dense cross-products; "
                             "use ddf='satterthwaite'")
        s = g.A.shape[1]
        Lg = group_Lambda(lay, lam, g.composition)
        Eg = _E(s, _level_starts(lay, g.composition), params)
        for i in range(g.m):
            sl = slice(pos, pos + s)
            C[sl, sl] = g.A[i]
            C[sl, n_loc:] = g.B[:, :nG, i]
            C[n_loc:, sl] = g.B[:, :nG, i].T
            ZX[sl] = g.B[:, nG:nG + p, i]
            Lam[sl, sl] = Lg
            for Ei, Egi in zip(E, Eg):
                Ei[sl, sl] = Egi
            pos += s
    C[n_loc:, n_loc:] = prob.G[:nG, :nG]
    ZX[n_loc:] = prob.G[:nG, nG:nG + p]
    Lam[n_loc:, n_loc:] = lambda_tilde(lay, lam)[:nG, :nG].toarray()
    offs = lay.global_offsets
    for Ei, (f, a, b) in zip(E, params):
        if f not in offs:
            continue
        qf = lay.q[f]
        for lv in range(len(lay.global_levels[f])):
            st_ = n_loc + offs[f] + lv * qf
            Ei[st_ + a, st_ + b] = Ei[st_ + b, st_ + a] = 1.0
    return vcov_adjusted([(C[None], ZX[None], Lam, E)], XtX, prob.n, sigma ** 2, vcov)


def kr_coef_tests(names: list[str], beta: np.ndarray, vcov: np.ndarray, parts) -> pd.DataFrame:
    """lmerTest's coefficient table with ``ddf = "Kenward-Roger"``: standard errors from the
    adjusted covariance, pbkrtest's ``Lb_ddf`` degrees of freedom."""
    from scipy import stats
    rows = []
    for j, name in enumerate(names):
        e = np.zeros(len(beta))
        e[j] = 1.0
        se = float(np.sqrt(parts.Phi_A[j, j]))
        df = lb_ddf(e, vcov, parts)
        t = beta[j] / se
        rows.append((name, beta[j], se, df, t, float(2 * stats.t.sf(abs(t), df))))
    return pd.DataFrame(rows, columns=["term", "estimate", "std_error", "df", "statistic",
                                       "p_value"])
