"""Simulate an LMM's response statistics without the rows (pure numpy; never imports dask).

A parametric bootstrap (lme4's ``bootMer``) simulates ``y* = X beta + Z b* + e*`` with
``b* = sigma Lambda u*``, ``u* ~ N(0, I)``, ``e* ~ N(0, sigma^2 W^{-1})`` and refits. The refit
needs only the products of ``y*`` with the design, ``V' W y*`` (``V = [Z X]``), and ``y*' W y*``:
everything else in the statistics is unchanged. With ``s = V' W e / sigma`` and
``t = e' W e / sigma^2``,

    V' W y*   = M gamma + sigma s,            M = V' W V (the statistics we have)
    y*' W y*  = gamma' M gamma + 2 sigma gamma' s + sigma^2 t,   gamma = (b*, beta)

and ``(s, t)`` has an exact distribution that needs no rows: ``s ~ N(0, M)`` and
``t = s' M^+ s + chi^2_{n - rank M}`` independently. ``M`` is block structured (one block per
level of the primary factor, then the global and fixed-effect columns), so ``s`` is drawn
level by level from a square root of each block and then the rest from its conditional
distribution given the levels. Each replicate therefore costs ``O(levels q^3)``, whatever the
number of rows: the same distribution as simulating every row, at the price of the
statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daskmm.kernels.stats import LevelGroup, PartitionStats

RANK_TOL = 1e-10
"""Eigenvalues below this fraction of a block's largest are zero (a level whose slope column
is constant, the intercept that a factor's columns already span)."""


@dataclass
class SimulationBasis:
    """The replicate-independent part: square roots of ``M``'s blocks.

    Attributes
    ----------
    roots : list of ndarray, shape (m, s, s)
        Per level group, ``C_l`` with ``C_l C_l' = A_l``, columns of zero eigenvalues zeroed.
    pinv_B : list of ndarray, shape (m, s, r)
        ``A_l^+ B_r,l`` (``r = n_G + p`` global and fixed-effect columns).
    masks : list of ndarray, shape (m, s)
        Which columns of ``roots`` are nonzero.
    root_S : ndarray, shape (r, r)
        Square root of the Schur complement ``S = G_rr - sum_l B_r,l' A_l^+ B_r,l``.
    mask_S : ndarray, shape (r,)
    rank : int
        ``rank M``.
    """

    roots: list[np.ndarray]
    pinv_B: list[np.ndarray]
    masks: list[np.ndarray]
    root_S: np.ndarray
    mask_S: np.ndarray
    rank: int


def _psd_root(A: np.ndarray, scale: np.ndarray | float | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched ``(root, pinv, mask)`` of symmetric PSD matrices ``(..., s, s)``: ``root``'s
    columns are eigenvectors scaled by the root eigenvalues (zero for zero eigenvalues,
    ``mask`` False there). Eigenvalues are zero below :data:`RANK_TOL` times ``scale``
    (default: the largest eigenvalue; a Schur complement passes the scale of the matrix it
    was reduced from, or its rounding error would count as rank)."""
    w, Q = np.linalg.eigh(A)
    top = np.max(w, axis=-1, keepdims=True) if scale is None else np.asarray(scale)
    pos = w > RANK_TOL * np.maximum(top, 0) + (top <= 0)
    sq = np.where(pos, np.sqrt(np.where(pos, w, 1.0)), 0.0)
    inv = np.where(pos, 1.0 / np.where(pos, w, 1.0), 0.0)
    root = Q * sq[..., None, :]
    pinv = (Q * inv[..., None, :]) @ np.swapaxes(Q, -1, -2)
    return root, pinv, pos


def simulation_basis(stats: PartitionStats, n_rest: int) -> SimulationBasis:
    """Factor ``M`` once for all replicates (``n_rest = n_G + p``)."""
    roots, pinv_B, masks = [], [], []
    S = stats.G[:n_rest, :n_rest].copy()
    for g in stats.groups:
        root, pinv, mask = _psd_root(g.A)
        Br = np.transpose(g.B[:, :n_rest, :], (2, 0, 1))  # (m, s, r)
        PB = pinv @ Br
        S -= np.einsum("msa,msb->ab", Br, PB)
        roots.append(root)
        pinv_B.append(PB)
        masks.append(mask)
    scale = max(float(np.max(np.abs(np.diag(stats.G[:n_rest, :n_rest])), initial=0.0)),
                1e-300)
    root_S, _, mask_S = _psd_root((S + S.T) / 2, scale)
    rank = sum(int(m.sum()) for m in masks) + int(mask_S.sum())
    return SimulationBasis(roots, pinv_B, masks, root_S, mask_S, rank)


def simulate_stats(stats: PartitionStats, basis: SimulationBasis, Lams: list[np.ndarray],
                   Lam_G: np.ndarray, beta: np.ndarray, sigma: float,
                   rng: np.random.Generator) -> PartitionStats:
    """One replicate: ``stats`` with the response column replaced by a simulated one.

    Parameters
    ----------
    stats : PartitionStats
        The fit's statistics (level groups and ``G``; the last column is the response).
    basis : SimulationBasis
    Lams : list of ndarray
        Per level group, its block's ``Lambda`` (``s x s``).
    Lam_G : ndarray
        ``Lambda`` of the global columns (``n_G x n_G``; empty without crossed factors).
    beta, sigma
        The parameters to simulate from.
    rng : numpy.random.Generator
    """
    nG = Lam_G.shape[0]
    n_rest = nG + len(beta)
    gamma_r = np.concatenate([sigma * (Lam_G @ rng.standard_normal(nG)), beta])
    # draws in a fixed order: level random effects, level noise, rest noise, chi-square
    gam_l, s_l = [], []
    tsum = 0.0
    for g, Lam, root, mask in zip(stats.groups, Lams, basis.roots, basis.masks):
        u = rng.standard_normal((g.m, Lam.shape[0]))
        gam_l.append(sigma * u @ Lam.T)
        z = rng.standard_normal((g.m, root.shape[2]))
        tsum += float(np.sum(z * z * mask))
        s_l.append(np.einsum("msj,mj->ms", root, z))
    zeta_rest = rng.standard_normal(n_rest)
    tsum += float(np.sum(zeta_rest ** 2 * basis.mask_S))
    s_r = basis.root_S @ zeta_rest
    for PB, s in zip(basis.pinv_B, s_l):
        s_r += np.einsum("msr,ms->r", PB, s)
    G_rr = stats.G[:n_rest, :n_rest]
    c_r = G_rr @ gamma_r + sigma * s_r
    quad = gamma_r @ G_rr @ gamma_r + 2 * sigma * gamma_r @ s_r
    groups = []
    for g, gl, s in zip(stats.groups, gam_l, s_l):
        Br = g.B[:, :n_rest, :]
        c_l = np.einsum("mst,mt->ms", g.A, gl) + np.einsum("srm,r->ms", Br, gamma_r) \
            + sigma * s
        c_r += np.einsum("srm,ms->r", Br, gl)
        quad += np.einsum("ms,mst,mt->", gl, g.A, gl) + 2 * np.einsum("ms,srm,r->", gl, Br,
                                                                        gamma_r)
        quad += 2 * sigma * np.einsum("ms,ms->", gl, s)
        B = g.B.copy()
        B[:, -1, :] = c_l.T
        groups.append(LevelGroup(g.composition, g.levels, g.nested_levels, g.A, B))
    dof = max(stats.n - basis.rank, 0)
    t = tsum + (rng.chisquare(dof) if dof else 0.0)
    G = stats.G.copy()
    G[:n_rest, -1] = G[-1, :n_rest] = c_r
    G[-1, -1] = quad + sigma ** 2 * t
    return PartitionStats(groups, G, stats.n, stats.sum_log_w, stats.n_dropped)
