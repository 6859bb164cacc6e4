"""The sparse (biobank) scan, fastGWA's model: a relationship matrix of close relatives only,
kept sparse, with FaST-LMM's REML and exact GLS test per variant.

``K`` is the GRM ``Z Z' / M`` (unit-standardised variants) with every off-diagonal entry at
or below ``threshold`` set to 0 (GCTA's ``--make-bK-sparse``), scaled to trace ``n``. Such a
``K`` is block diagonal after a permutation: its connected components are families. Its
eigendecomposition is one small dense ``eigh`` per component, so ``U`` is block diagonal and
``U'Z`` costs ``sum_c k_c^2`` per variant instead of ``n^2``.

The covariates are not projected out (that would make ``U`` dense). The same REML and test
come from GLS in the rotated space, with ``D = diag(1 / Sd)``, ``Sd = h2 S + 1 - h2``::

    P = D - D X~ (X~' D X~)^-1 X~' D,    nLL = 1/2 [sum log Sd + log|X~'DX~| - log|X'X|
                                                    + r (log(2 pi y~'Py~ / r) + 1)],  r = n - d
    beta = z~'Py~ / z~'Pz~,   var = (y~'Py~ - z~'Py~ beta) / (r - 1) / z~'Pz~   ~ F(1, n - d - 1)

``A (A'VA)^-1 A' = V^-1 - V^-1 X (X'V^-1 X)^-1 X' V^-1`` for any basis ``A`` of the complement of
``X``, so these are FaST-LMM's numbers for the same ``K``, to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.sparse
from scipy import stats
from scipy.sparse.csgraph import connected_components

from daskmm.kernels.lmm_scan import h2_upper, minimize_h2


def grm_tile(ZI: np.ndarray, ZJ: np.ndarray, K: np.ndarray | None = None) -> np.ndarray:
    """``K + ZI ZJ'`` for two tiles of samples (rows) over the same variants."""
    P = ZI @ ZJ.T
    return P if K is None else K + P


def sparse_entries(K: np.ndarray, m: int, threshold: float, rows: np.ndarray,
                   cols: np.ndarray, diagonal: bool) -> tuple[np.ndarray, ...]:
    """``(i, j, value)`` of the GRM tile ``K / m`` kept in the sparse GRM: off-diagonal values
    above ``threshold``, and (``diagonal`` tile) the whole diagonal; ``rows``/``cols`` are the
    tile's sample indices. For a diagonal tile only ``i <= j`` is returned."""
    G = K / m
    keep = G > threshold
    if diagonal:
        keep = np.triu(keep, 1)
        np.fill_diagonal(keep, True)
    i, j = np.nonzero(keep)
    return rows[i], cols[j], G[i, j]


def assemble(n: int, entries: list[tuple[np.ndarray, ...]]) -> scipy.sparse.csr_matrix:
    """The symmetric sparse GRM from upper-triangle entries (``i <= j``), scaled to trace
    ``n``."""
    i = np.concatenate([e[0] for e in entries])
    j = np.concatenate([e[1] for e in entries])
    v = np.concatenate([e[2] for e in entries])
    off = i != j
    K = scipy.sparse.coo_matrix((np.concatenate([v, v[off]]),
                                 (np.concatenate([i, j[off]]), np.concatenate([j, i[off]]))),
                                shape=(n, n)).tocsr()
    K.sum_duplicates()
    return K * (n / K.diagonal().sum())


@dataclass
class BlockRotation:
    """The eigendecomposition of a block-diagonal ``K``, grouped by component size.

    ``groups``: per size ``k``, ``(idx, U)`` with ``idx`` (``c x k``) the samples of the ``c``
    components of that size and ``U`` (``c x k x k``) their eigenvectors; ``S`` the
    eigenvalues in rotated order (the groups' ``idx`` flattened in turn)."""

    groups: list[tuple[np.ndarray, np.ndarray]]
    S: np.ndarray
    n: int

    @property
    def largest(self) -> int:
        return max(idx.shape[1] for idx, _ in self.groups)

    def rotate(self, A: np.ndarray) -> np.ndarray:
        """``U'A`` (``n x m``), rows in rotated order."""
        out = []
        for idx, U in self.groups:
            block = A[idx]                              # c x k x m
            out.append(np.matmul(U.transpose(0, 2, 1), block).reshape(-1, A.shape[1]))
        return np.concatenate(out)


def relative_groups(K: scipy.sparse.csr_matrix, max_component: int
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``K``'s connected components (groups of relatives) grouped by size: per size ``k``,
    ``(idx, blocks)`` with ``idx`` (``c x k``) the samples of the ``c`` groups of that size
    and ``blocks`` (``c x k x k``) their parts of ``K``; raises ValueError naming the size
    when a group has more than ``max_component`` samples."""
    ncomp, label = connected_components(K, directed=False)
    sizes = np.bincount(label, minlength=ncomp)
    if sizes.max() > max_component:
        raise ValueError(f"the sparse GRM links {sizes.max()} samples into one group of "
                         f"relatives (the most allowed: {max_component})")
    order = np.argsort(label, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    Kd = K.tocsr()
    out = []
    for k in np.unique(sizes):
        comps = np.flatnonzero(sizes == k)
        idx = np.stack([order[starts[c]:starts[c] + k] for c in comps])
        if k == 1:
            blocks = Kd.diagonal()[idx[:, 0]][:, None, None]
        else:
            blocks = np.stack([Kd[r][:, r].toarray() for r in idx])
        out.append((idx, blocks))
    return out


def block_eigh(K: scipy.sparse.csr_matrix, max_component: int) -> BlockRotation:
    """Eigendecompose ``K`` component by component (:func:`relative_groups`); raises
    ValueError naming the size when a component has more than ``max_component`` samples."""
    groups, S = [], []
    for idx, blocks in relative_groups(K, max_component):
        if idx.shape[1] == 1:
            U = np.ones((len(idx), 1, 1))
            s = blocks[:, 0, 0][:, None]
        else:
            s, U = np.linalg.eigh(blocks)
        groups.append((idx, U))
        S.append(np.asarray(s).reshape(-1))
    return BlockRotation(groups, np.concatenate(S), K.shape[0])


def _gls_parts(h2: float, S: np.ndarray, UX: np.ndarray, uy: np.ndarray):
    Sd = h2 * S + (1.0 - h2)
    D = 1.0 / Sd
    XD = UX.T * D
    XDX = XD @ UX
    c, low = scipy.linalg.cho_factor(XDX)
    Dy = D * uy
    beta = scipy.linalg.cho_solve((c, low), XD @ uy)
    Py = Dy - D * (UX @ beta)
    return Sd, D, c, low, Py


def gls_neg_reml(h2: float, S: np.ndarray, UX: np.ndarray, uy: np.ndarray,
                 logdet_xx: float) -> float:
    """FaST-LMM's ``nLL`` at ``h2`` from the unprojected rotated data (see module doc)."""
    Sd, D, c, low, Py = _gls_parts(h2, S, UX, uy)
    n, d = UX.shape
    r = n - d
    yPy = float(uy @ Py)
    logdet = float(np.log(Sd).sum()) + 2 * float(np.log(np.diag(c)).sum()) - logdet_xx
    return 0.5 * (logdet + r * (np.log(2.0 * np.pi * yPy / r) + 1.0))


def gls_neg_reml_grad(h2: float, S: np.ndarray, UX: np.ndarray, uy: np.ndarray,
                      logdet_xx: float = 0.0) -> float:
    """The derivative of :func:`gls_neg_reml` in ``h2``."""
    Sd, D, c, low, Py = _gls_parts(h2, S, UX, uy)
    n, d = UX.shape
    dS = S - 1.0
    XD = UX.T * D
    M = scipy.linalg.cho_solve((c, low), (XD * (D * dS)) @ UX)
    yPy = float(uy @ Py)
    return 0.5 * (float(np.sum(dS / Sd)) - float(np.trace(M))
                  - (n - d) * float(np.sum(dS * Py * Py)) / yPy)


@dataclass
class GlsNull:
    """The sparse-mode null model: the rotation, rotated covariates ``UX`` and traits ``UY``,
    ``h2``, ``nll`` and ``sigma2`` (total variance) per trait."""

    rot: BlockRotation
    UX: np.ndarray
    UY: np.ndarray
    h2: np.ndarray
    nll: np.ndarray
    sigma2: np.ndarray
    grm: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.UX.shape[0]

    @property
    def d(self) -> int:
        return self.UX.shape[1]

    def variance_components(self) -> list[dict]:
        return [{"h2": float(h), "sigma_g2": float(h * s), "sigma_e2": float((1 - h) * s),
                 "neg_reml": float(v)} for h, s, v in zip(self.h2, self.sigma2, self.nll)]


def fit_gls_null(K: scipy.sparse.csr_matrix, X: np.ndarray, Y: np.ndarray,
                 max_component: int, h2: np.ndarray | None = None) -> GlsNull:
    """Rotate by the components of ``K`` (scaled to trace ``n`` already) and fit ``h2`` per
    column of ``Y``; ``h2`` given: held at those values."""
    rot = block_eigh(K, max_component)
    S = rot.S
    UX, UY = rot.rotate(X), rot.rotate(Y)
    logdet_xx = float(np.linalg.slogdet(X.T @ X)[1])
    t = Y.shape[1]
    out_h2, nll, sigma2 = np.empty(t), np.empty(t), np.empty(t)
    r = X.shape[0] - X.shape[1]
    for j in range(t):
        uy = UY[:, j]
        if h2 is None:
            out_h2[j], nll[j] = minimize_h2(
                lambda v, uy=uy: gls_neg_reml(v, S, UX, uy, logdet_xx),
                lambda v, uy=uy: gls_neg_reml_grad(v, S, UX, uy), h2_upper(S))
        else:
            out_h2[j] = h2[j]
            nll[j] = gls_neg_reml(h2[j], S, UX, uy, logdet_xx)
        Sd, D, c, low, Py = _gls_parts(out_h2[j], S, UX, uy)
        sigma2[j] = float(uy @ Py) / r
    return GlsNull(rot, UX, UY, out_h2, nll, sigma2)


def gls_tests(null: GlsNull, UZ: np.ndarray) -> dict[str, np.ndarray]:
    """Per variant (columns of the rotated ``UZ``) and trait: ``beta``, ``se`` (per SD of the
    variant), ``statistic`` (F) and ``p_value`` (F(1, n - d - 1))."""
    S = null.rot.S
    n, d = null.UX.shape
    m, t = UZ.shape[1], null.UY.shape[1]
    out = {k: np.empty((m, t)) for k in ("beta", "se", "statistic", "p_value")}
    for j in range(t):
        Sd, D, c, low, Py = _gls_parts(null.h2[j], S, null.UX, null.UY[:, j])
        DZ = UZ * D[:, None]
        a = null.UX.T @ DZ                                   # d x m
        Ma = scipy.linalg.cho_solve((c, low), a)
        zPz = np.einsum("im,im->m", UZ, DZ) - np.einsum("dm,dm->m", a, Ma)
        zPy = UZ.T @ Py
        yPy = float(null.UY[:, j] @ Py)
        explained = np.sqrt(np.maximum(zPz, 0) / n) <= 1e-10
        with np.errstate(divide="ignore", invalid="ignore"):
            beta = np.where(explained, 0.0, zPy / zPz)
            var = (yPy - zPy * beta) / (n - d - 1.0) / zPz
            stat = np.where(explained, 0.0, beta * beta / var)
            se = np.where(explained, np.inf, np.sqrt(var))
        out["beta"][:, j] = beta
        out["se"][:, j] = se
        out["statistic"][:, j] = stat
        out["p_value"][:, j] = stats.f.sf(stat, 1, n - d - 1)
    return out
