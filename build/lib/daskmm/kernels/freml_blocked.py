"""Fast REML with a block of random-effect coefficients kept per level: a GAM's ``re`` smooths
(and gamm4's lme4 bars) on a factor with many levels, without a dense column per level.

The coefficients split into ``q`` per level of one factor (``b_l``, one per ``re`` term on that
factor: an intercept, or a covariate's slope) and the ``p_d`` others (parametric and smooth,
``beta_d``). The penalty on ``b`` is ``lambda_t s_t`` on column ``t`` of every level. With the
per-level cross-products ``Z_l'WZ_l`` (``ZtZ``, ``L x q x q``), ``Z_l'WX`` (``C``, ``L x q x
p_d``) and ``Z_l'Wz`` (``bz``), and the dense ``A = X'WX``, ``b = X'Wz``, ``c = z'Wz``:

    M_l = Z_l'WZ_l + diag(lambda s),  W_l = M_l^-1 C_l,
    Sc  = A + S_d - sum_l C_l' W_l                  (Schur complement of the level blocks),
    log|H| = sum_l log|M_l| + log|Sc|.

``H^-1`` is never formed: its dense block is ``Sc^-1``, its cross block ``-W Sc^-1`` and its
level blocks ``M^-1 + W Sc^-1 W'``. The criterion, its gradient and Hessian in ``rho`` are
exactly those of :func:`daskmm.kernels.freml.evaluate` on the dense matrices (tested equal);
traces over the level block reduce to sums over levels of ``q x q`` and ``p_d x p_d``
pieces, so an evaluation costs ``O(L q p_d^2 + p_d^3)``. Pure numpy: no dask.

Smoothing parameters are in the order ``[dense penalties..., blocked columns...]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from daskmm.kernels.freml import (
    EPS,
    Penalties,
    RemlFit,
    chol_inverse,
    initial_rho,
    ml_logdet,
    newton,
    penalty_range,
    score,
    score_derivatives,
)


@dataclass
class BlockedStats:
    """Summed cross-products of a model with a per-level block (see the module docstring).

    Attributes
    ----------
    ZtZ : ndarray (L, q, q)
    C : ndarray (L, q, p_d)
    bz : ndarray (L, q)
    A : ndarray (p_d, p_d)
    b : ndarray (p_d,)
    c : float
    n : float
    s : ndarray (q,)
        Scale of each blocked column's penalty (``lambda_t s_t I``).
    """

    ZtZ: np.ndarray
    C: np.ndarray
    bz: np.ndarray
    A: np.ndarray
    b: np.ndarray
    c: float
    n: float
    s: np.ndarray

    @property
    def L(self) -> int:
        return self.ZtZ.shape[0]

    @property
    def q(self) -> int:
        return self.ZtZ.shape[1]

    @classmethod
    def from_sums(cls, st: dict, s: np.ndarray) -> BlockedStats:
        return cls(ZtZ=st["ZtZ"], C=st["C"], bz=st["bz"], A=st["A"], b=st["b"],
                   c=float(st["c"]), n=float(st["n"]), s=np.asarray(s, dtype=float))


@dataclass
class BlockedPoint:
    """The criterion at one ``rho`` and the factor it came from."""

    rho: np.ndarray
    value: float
    grad: np.ndarray
    hess: np.ndarray
    beta: np.ndarray  # the dense coefficients
    b_re: np.ndarray  # (L, q) the level coefficients
    P: np.ndarray  # Sc^-1, the dense block of H^-1
    Minv: np.ndarray  # (L, q, q)
    W: np.ndarray  # (L, q, p_d)
    r: float
    phi: float
    logdet_H: float
    logdet_S: float


def _solve(pt: BlockedPoint, vz: np.ndarray, vd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``H^-1 [vz; vd]`` from the blocked factor."""
    xd = pt.P @ (vd - np.einsum("lqi,lq->i", pt.W, vz))
    xz = np.einsum("lqr,lr->lq", pt.Minv, vz) - pt.W @ xd
    return xz, xd


def evaluate(st: BlockedStats, pen: Penalties, rho: np.ndarray, phi: float | None = None,
             derivs: bool = True, ml: bool = False) -> BlockedPoint:
    """The REML criterion at ``rho`` (dense smoothing parameters first, then one per blocked
    column); ``phi=None``: the scale profiled out; ``ml``: mgcv's ML criterion (the level
    block is wholly penalised, so only the dense part is restricted to the penalty's range,
    as :func:`freml.ml_logdet`)."""
    md, q, L = pen.n_sp, st.q, st.L
    rho = np.asarray(rho, dtype=float)
    lam_d, lam_z = np.exp(rho[:md]), np.exp(rho[md:])
    pz = lam_z * st.s
    M = st.ZtZ.copy()
    M[:, np.arange(q), np.arange(q)] += pz
    if q == 1:
        Minv = 1.0 / M
        ldM = float(np.sum(np.log(M[:, 0, 0])))
    else:
        Lc = np.linalg.cholesky(M)
        ldM = float(2 * np.sum(np.log(np.diagonal(Lc, axis1=1, axis2=2))))
        Minv = np.linalg.inv(M)
        Minv = (Minv + np.swapaxes(Minv, 1, 2)) / 2
    W = Minv @ st.C
    u = np.einsum("lqr,lr->lq", Minv, st.bz)
    Sc = st.A + pen.full(lam_d) - np.einsum("lqi,lqj->ij", st.C, W)
    Sc = (Sc + Sc.T) / 2
    P, ldSc = chol_inverse(Sc)
    Pt = P
    if ml:
        Pt, ldSc = ml_logdet(Sc, penalty_range(pen))
    b_red = st.b - np.einsum("lqi,lq->i", st.C, u)
    c_red = st.c - float(np.sum(st.bz * u))
    beta = P @ b_red
    b_re = u - W @ beta
    r = float(c_red - beta @ b_red)
    r = max(r, EPS * abs(st.c))
    ldH = ldM + ldSc
    ldSd, dS1d, dS2d = pen.logdet(rho[:md])
    ldS = ldSd + float(L * np.sum(rho[md:] + np.log(st.s)))
    nmp = st.n if ml else st.n - pen.Mp
    value, phi_hat = score(r, nmp, ldH, ldS, phi)
    m = md + q
    pt = BlockedPoint(rho=rho, value=value, grad=np.zeros(m), hess=np.zeros((m, m)),
                      beta=beta, b_re=b_re, P=P, Minv=Minv, W=W, r=r, phi=phi_hat,
                      logdet_H=ldH, logdet_S=ldS)
    if not derivs:
        return pt
    # v_k = dS/drho_k beta, as (level part, dense part)
    pd = len(beta)
    vz, vd, sl = [], [], []
    for k, (j, i) in enumerate(pen.index()):
        blk = pen.blocks[j]
        s = slice(blk.start, blk.stop)
        v = np.zeros(pd)
        v[s] = lam_d[k] * (blk.S[i] @ beta[s])
        vz.append(np.zeros((L, q)))
        vd.append(v)
        sl.append((s, blk.S[i]))
    for t in range(q):
        v = np.zeros((L, q))
        v[:, t] = pz[t] * b_re[:, t]
        vz.append(v)
        vd.append(np.zeros(pd))
    rk = np.array([float(np.sum(a * b_re)) + float(d @ beta) for a, d in zip(vz, vd)])
    # traces: tr(H^-1 dS/drho_k) and tr(H^-1 dS_k H^-1 dS_l)
    WP = W @ Pt  # (L, q, p_d)
    Q = np.einsum("lti,lsi->lts", WP, W)  # W_l P W_l'
    G = [W[:, t, :].T @ W[:, t, :] for t in range(q)]  # sum_l w_lt w_lt'
    PS = [lam_d[k] * (Pt[:, s] @ S) for k, (s, S) in enumerate(sl)]
    PGP = [Pt @ Gt @ Pt for Gt in G]
    trk = np.zeros(m)
    for k, (s, _) in enumerate(sl):
        trk[k] = np.trace(PS[k][s])
    for t in range(q):
        trk[md + t] = pz[t] * (float(np.sum(Minv[:, t, t])) + float(np.sum(Q[:, t, t])))
    tkl = np.zeros((m, m))
    for k in range(md):
        for l in range(k, md):
            tkl[k, l] = -np.sum(PS[k][sl[l][0]] * PS[l][sl[k][0]].T)
        for t in range(q):
            s, S = sl[k]
            tkl[k, md + t] = -lam_d[k] * pz[t] * float(np.sum(S * PGP[t][s, s]))
    for t in range(q):
        for u_ in range(t, q):
            a = float(np.sum(Minv[:, t, u_] ** 2)) + 2 * float(np.sum(Minv[:, u_, t]
                                                                     * Q[:, t, u_]))
            a += float(np.sum(PGP[t] * G[u_]))
            tkl[md + t, md + u_] = -pz[t] * pz[u_] * a
    tkl = np.triu(tkl) + np.triu(tkl, 1).T + np.diag(trk)
    sol = [_solve(pt, a, d) for a, d in zip(vz, vd)]
    rkl = np.zeros((m, m))
    for k in range(m):
        for l in range(k, m):
            rkl[k, l] = rkl[l, k] = -2 * (float(np.sum(vz[k] * sol[l][0]))
                                          + float(vd[k] @ sol[l][1]))
    rkl += np.diag(rk)
    dS1 = np.concatenate([dS1d, np.full(q, float(L))])
    dS2 = np.zeros((m, m))
    dS2[:md, :md] = dS2d
    pt.grad, pt.hess = score_derivatives(rk, rkl, trk, tkl, dS1, dS2, r, nmp, phi)
    return pt


def initial(st: BlockedStats, pen: Penalties) -> np.ndarray:
    """mgcv's ``initial.sp``: the dense penalties' as :func:`freml.initial_rho`; a blocked
    column's ``log(mean diag(Z'WZ) / s_t)``."""
    rz = [math.log(max(float(np.mean(st.ZtZ[:, t, t])) / st.s[t], 1e-10))
          for t in range(st.q)]
    return np.concatenate([initial_rho(st.A, pen), rz])


def fit(st: BlockedStats, pen: Penalties, phi: float | None = None,
        rho0: np.ndarray | None = None, conv_tol: float = EPS ** 0.5,
        maxit: int = 200, ml: bool = False) -> RemlFit:
    """Minimise the REML (``ml``: ML) criterion by mgcv's Newton loop
    (:func:`freml.newton`)."""
    rho = initial(st, pen) if rho0 is None else np.asarray(rho0, dtype=float).copy()
    return newton(lambda r: evaluate(st, pen, r, phi, ml=ml), rho, st.n, conv_tol, maxit)


@dataclass
class BlockedPost:
    """What ``Sl.postproc`` gives, from the blocked factor: ``edf`` per coefficient (dense
    part, then the level block as ``(L, q)``), ``edf1`` of the dense part, the penalised
    residual sum of squares at the fit's coefficients (``rss``)."""

    edf_d: np.ndarray
    edf_z: np.ndarray
    edf1_d: np.ndarray
    rss: float


def post(st: BlockedStats, pen: Penalties, pt: BlockedPoint) -> BlockedPost:
    """``F = H^-1 A`` on the diagonal, and ``diag(F F)`` of the dense part, from the blocked
    factor (``A`` the unpenalised cross-products): ``F_dd = I - Sc^-1 S_d``, ``F_Zd,l = W_l
    Sc^-1 S_d``, ``F_dZ,l = Sc^-1 (C_l' - W_l' Z_l'Z_l)``, and for each level ``F_ll = (M_l^-1 +
    W_l Sc^-1 W_l') Z_l'Z_l - W_l Sc^-1 C_l'``."""
    md = pen.n_sp
    P, W = pt.P, pt.W
    Sd = pen.full(np.exp(pt.rho[:md]))
    Fdd = np.eye(len(P)) - P @ Sd
    edf_d = np.diag(Fdd).copy()
    WP = W @ P
    Pz = pt.Minv + np.einsum("lti,lsi->lts", WP, W)
    Fzz = Pz @ st.ZtZ - np.einsum("lti,lsi->lts", WP, st.C)
    edf_z = np.diagonal(Fzz, axis1=1, axis2=2).copy()
    K = np.einsum("lti,ltj->ij", st.C, W) - np.einsum("lti,lts,lsj->ij", W, st.ZtZ, W)
    FdZFZd = P @ K @ P @ Sd
    edf1_d = 2 * edf_d - np.diag(FdZFZd) - np.einsum("ij,ji->i", Fdd, Fdd)
    beta, b_re = pt.beta, pt.b_re
    quad = (float(np.einsum("lt,lts,ls->", b_re, st.ZtZ, b_re))
            + 2 * float(np.einsum("lt,lti,i->", b_re, st.C, beta)) + float(beta @ st.A @ beta))
    rss = float(st.c - 2 * (np.sum(st.bz * b_re) + st.b @ beta) + quad)
    return BlockedPost(edf_d=edf_d, edf_z=edf_z, edf1_d=edf1_d, rss=rss)


def dense_inverse(pt: BlockedPoint) -> np.ndarray:
    """The whole ``H^-1`` as one matrix, dense coefficients first and the level block
    column-major (term ``t`` of level ``l`` at ``p_d + t L + l``); for small ``L`` only."""
    L, q, pd = pt.W.shape
    P = pt.P
    out = np.zeros((pd + L * q, pd + L * q))
    out[:pd, :pd] = P
    WP = pt.W @ P  # (L, q, pd)
    cross = -WP.transpose(1, 0, 2).reshape(L * q, pd)
    out[pd:, :pd] = cross
    out[:pd, pd:] = cross.T
    Wf = pt.W.transpose(1, 0, 2).reshape(L * q, pd)
    zz = Wf @ P @ Wf.T
    for t in range(q):
        for s in range(q):
            zz[t * L:(t + 1) * L, s * L:(s + 1) * L] += np.diag(pt.Minv[:, t, s])
    out[pd:, pd:] = zz
    return out


def dense_cross_products(st: BlockedStats) -> tuple[np.ndarray, np.ndarray]:
    """The whole ``A`` and ``b`` in :func:`dense_inverse`'s order (small ``L`` only)."""
    L, q, pd = st.C.shape
    A = np.zeros((pd + L * q, pd + L * q))
    A[:pd, :pd] = st.A
    Cf = st.C.transpose(1, 0, 2).reshape(L * q, pd)
    A[pd:, :pd] = Cf
    A[:pd, pd:] = Cf.T
    for t in range(q):
        for s in range(q):
            A[pd + t * L:pd + (t + 1) * L, pd + s * L:pd + (s + 1) * L] = np.diag(st.ZtZ[:, t, s])
    b = np.concatenate([st.b, st.bz.T.ravel()])
    return A, b
