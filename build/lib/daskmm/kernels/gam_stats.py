"""Per-partition statistics of a GAM: weighted cross-products and the working model of a
PIRLS step. Additive over partitions (sum them in any order); pure numpy.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse


def cross_products(X: np.ndarray, z: np.ndarray, w: np.ndarray | None) -> dict:
    """``A = X'WX``, ``b = X'Wz``, ``c = z'Wz`` and the sums the summaries need
    (``sw = sum w``, ``swz = sum w z``, ``xs = X' sqrt(w)``, ``ys = sum sqrt(w) z``, ``sqw =
    sum sqrt(w)``).

    Returns a dict of arrays and scalars; :func:`add` sums two of them.
    """
    if w is None:
        A = X.T @ X
        b = X.T @ z
        c = float(z @ z)
        sw, swz = float(len(z)), float(z.sum())
        xs, ys, sqw = X.sum(axis=0), swz, sw
    else:
        Xw = X * w[:, None]
        A = Xw.T @ X
        b = Xw.T @ z
        c = float(z @ (w * z))
        sw, swz = float(w.sum()), float(w @ z)
        r = np.sqrt(w)
        xs, ys, sqw = r @ X, float(r @ z), float(r.sum())
    return {"A": A, "b": b, "c": c, "n": len(z), "sw": sw, "swz": swz, "xs": xs, "ys": ys,
            "sqw": sqw}


def add(parts: list[dict]) -> dict:
    """Sum statistics dicts key by key (arrays and numbers; ``None`` where absent)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    out = {}
    for k in parts[0]:
        v = parts[0][k]
        if isinstance(v, dict):
            out[k] = add([p[k] for p in parts])
        else:
            tot = v.copy() if isinstance(v, np.ndarray) else v
            for p in parts[1:]:
                tot = tot + p[k]
            out[k] = tot
    return out


def working_response(y: np.ndarray, eta: np.ndarray, prior_w: np.ndarray, family, link,
                     size: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fisher scoring's working response ``z`` and weights ``w`` at ``eta``."""
    mu = link.inverse(eta)
    d = link.mu_eta(eta)
    var = family.variance(mu, size)
    tiny = np.finfo(float).tiny
    d = np.where(np.abs(d) < tiny, tiny, d)
    z = eta + (y - mu) / d
    w = prior_w * d * d / np.maximum(var, tiny)
    return z, w


def deviance(y: np.ndarray, mu: np.ndarray, prior_w: np.ndarray, family,
             size: float | None = None) -> float:
    """The family's deviance ``sum w d(y, mu)``."""
    return float(np.sum(prior_w * unit_deviance(y, mu, family, size)))


def unit_deviance(y: np.ndarray, mu: np.ndarray, family, size: float | None = None
                  ) -> np.ndarray:
    from scipy.special import xlogy

    name = family.name
    if name == "gaussian":
        return (y - mu) ** 2
    if name == "binomial":
        return 2 * (xlogy(y, y / mu) + xlogy(1 - y, (1 - y) / (1 - mu)))
    if name == "poisson":
        return 2 * (xlogy(y, y / mu) - (y - mu))
    if name == "gamma":
        return 2 * (-np.log(y / mu) + (y - mu) / mu)
    if name == "negative_binomial":
        return 2 * (xlogy(y, y / mu) - (y + size) * np.log((y + size) / (mu + size)))
    raise ValueError(f"no deviance for family {name!r}")


def level_cross_products(X: np.ndarray, z: np.ndarray, w: np.ndarray | None,
                         codes: np.ndarray, Zv: np.ndarray, n_levels: int) -> dict:
    """The per-level block of a model with ``q`` coefficients per level of one factor (see
    :mod:`daskmm.kernels.freml_blocked`): ``ZtZ`` ``(L, q, q)``, ``C = Z_l'WX`` ``(L, q,
    p)``, ``bz = Z_l'Wz`` ``(L, q)`` and ``zs = Z_l' sqrt(w)`` ``(L, q)``.

    ``codes`` is each row's level (``0..L-1``), ``Zv`` ``(n, q)`` the value of each blocked
    column on the row (1 for an intercept, the covariate for a slope). Additive over rows.
    """
    n, q = Zv.shape
    p = X.shape[1]
    ww = np.ones(n) if w is None else w
    L = int(n_levels)
    ZtZ = np.empty((L, q, q))
    for t in range(q):
        for s in range(t, q):
            ZtZ[:, t, s] = ZtZ[:, s, t] = np.bincount(codes, ww * Zv[:, t] * Zv[:, s],
                                                      minlength=L)
    C = np.empty((L, q, p))
    bz = np.empty((L, q))
    zs = np.empty((L, q))
    r = np.sqrt(ww)
    rows = np.arange(n)
    for t in range(q):
        wz = ww * Zv[:, t]
        Zt = sparse.csr_matrix((wz, (codes, rows)), shape=(L, n))
        C[:, t, :] = Zt @ X
        bz[:, t] = np.bincount(codes, wz * z, minlength=L)
        zs[:, t] = np.bincount(codes, r * Zv[:, t], minlength=L)
    return {"ZtZ": ZtZ, "C": C, "bz": bz, "zs": zs}


def ar1_rows(M: np.ndarray, start: np.ndarray, rho: float) -> np.ndarray:
    """bam's AR1 transform of rows already scaled by ``sqrt(w)``: row ``i`` becomes
    ``(M_i - rho M_{i-1}) / sqrt(1 - rho^2)``, except where a series starts (``start``),
    which is kept as it is; the first row is returned untransformed (its predecessor, if any,
    is in another partition: :func:`ar1_boundary` joins them)."""
    ld = 1 / np.sqrt(1 - rho * rho)
    out = M.copy()
    if len(M) > 1:
        out[1:] = ld * M[1:] - rho * ld * M[:-1]
        keep = np.flatnonzero(start[1:]) + 1
        out[keep] = M[keep]
    return out


def ar1_boundary(first: np.ndarray, prev_last: np.ndarray, rho: float) -> np.ndarray:
    """The transformed first row of a partition whose series began in the partition
    before: ``(first - rho prev_last) / sqrt(1 - rho^2)``."""
    ld = 1 / np.sqrt(1 - rho * rho)
    return ld * first - rho * ld * prev_last


def nb_theta_sums(y: np.ndarray, mu: np.ndarray, w: np.ndarray, theta: float) -> dict:
    """The negative binomial log-likelihood in ``t = log(theta)`` at fixed means, summed over
    rows with prior weights ``w``: ``ll``, ``dll/dt`` and ``d2ll/dt2`` (what mgcv's
    ``estimate.theta`` maximises for ``nb()``, ``dev/2 - ls`` being ``-ll``)."""
    from scipy.special import gammaln, polygamma, psi

    th = float(theta)
    yt, mt = y + th, mu + th
    ll = gammaln(yt) - gammaln(th) - gammaln(y + 1) + th * np.log(th) + _xlogy(y, mu) \
        - yt * np.log(mt)
    d1 = psi(yt) - psi(th) + np.log(th) + 1 - np.log(mt) - yt / mt
    d2 = polygamma(1, yt) - polygamma(1, th) + 1 / th - 2 / mt + yt / mt ** 2
    g = th * d1
    h = th * th * d2 + g
    return {"ll": float(w @ ll), "g": float(w @ g), "h": float(w @ h)}


def _xlogy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.special import xlogy
    return xlogy(a, b)


def discrete_cross_products(Xd: np.ndarray, dense_pos: np.ndarray, terms: list,
                            z: np.ndarray, w: np.ndarray | None, p: int) -> dict:
    """:func:`cross_products` of a model matrix whose discretised terms are held as an index
    and a small basis: term ``j`` is ``(k_j, B_j, pos_j)``, its columns ``B_j[k_j]`` at
    positions ``pos_j`` of the ``p`` columns; ``Xd`` the other columns (at ``dense_pos``).

    Every product goes through tables of weights over the distinct values: ``B_i'(sum_rows w
    [k_i = a][k_j = b])B_j``, all filled in one compiled pass over the rows
    (:func:`daskmm.kernels.spline_jit.cell_tables`), so the discretised columns are never
    formed (Wood et al. 2017's compressed cross-products, without their tensor-margin
    refinement).
    """
    n = len(z)
    ww = np.ones(n) if w is None else w
    r = np.sqrt(ww)
    A = np.zeros((p, p))
    b = np.zeros(p)
    xs = np.zeros(p)
    dp = np.asarray(dense_pos, dtype=int)
    Xw = Xd * ww[:, None]
    A[np.ix_(dp, dp)] = Xw.T @ Xd
    b[dp] = Xw.T @ z
    xs[dp] = r @ Xd
    m = len(terms)
    if m:
        from daskmm.kernels.spline_jit import cell_tables
        sizes = np.array([B.shape[0] for _, B, _ in terms], dtype=np.int64)
        offsets = np.zeros((m, m), dtype=np.int64)
        o = 0
        for a in range(m):
            offsets[a, a] = o
            o += sizes[a]
            for c in range(a + 1, m):
                offsets[a, c] = o
                o += sizes[a] * sizes[c]
        flat = np.zeros(o)
        bz, br = np.zeros(o), np.zeros(o)
        ks = np.ascontiguousarray(np.column_stack([k for k, _, _ in terms]), dtype=np.int64)
        cell_tables(ks, np.ascontiguousarray(ww, dtype=float),
                    np.ascontiguousarray(z, dtype=float), r, sizes, offsets, flat, bz, br)
    for a, (k, B, pos) in enumerate(terms):
        u = B.shape[0]
        d = slice(offsets[a, a], offsets[a, a] + u)
        if len(dp):  # the other columns against the term: their weighted sums by cell
            S = np.zeros((u, len(dp)))
            for c in range(len(dp)):
                S[:, c] = np.bincount(k, ww * Xd[:, c], minlength=u)
            A[np.ix_(dp, pos)] = S.T @ B
            A[np.ix_(pos, dp)] = A[np.ix_(dp, pos)].T
        b[pos] = B.T @ bz[d]
        xs[pos] = B.T @ br[d]
        A[np.ix_(pos, pos)] = (B * flat[d][:, None]).T @ B
        for c in range(a + 1, m):
            kc, Bc, pc = terms[c]
            T = flat[offsets[a, c]:offsets[a, c] + u * Bc.shape[0]].reshape(u, Bc.shape[0])
            A[np.ix_(pos, pc)] = B.T @ T @ Bc
            A[np.ix_(pc, pos)] = A[np.ix_(pos, pc)].T
    sw, swz = float(ww.sum()), float(ww @ z)
    return {"A": A, "b": b, "c": float(z @ (ww * z)), "n": n, "sw": sw, "swz": swz,
            "xs": xs, "ys": float(r @ z), "sqw": float(r.sum())}


def linear_predictor(X: np.ndarray, codes: np.ndarray | None, Zv: np.ndarray | None,
                     coef: np.ndarray, p_dense: int) -> np.ndarray:
    """``X beta_d + sum_t Zv_t b_t[codes]`` (coefficients in the fit's layout; a row of a
    level the fit did not see gets no level effect)."""
    eta = X @ coef[:p_dense]
    if codes is not None and Zv is not None and Zv.shape[1]:
        q = Zv.shape[1]
        b = coef[p_dense:].reshape(q, -1).T  # (L, q)
        ok = codes >= 0
        eta[ok] += np.sum(Zv[ok] * b[codes[ok]], axis=1)
    return eta


def ar1_join(A: np.ndarray, b: np.ndarray, c: float, n: int, bounds: list, rho: float):
    """Add each partition's first transformed row to the summed cross-products: the rows
    :func:`ar1_rows` left out, joined to the last row of the partition before (bam keeps
    the very first row, and a row that starts a series, as they are). ``bounds`` in
    partition order; returns ``(A, b, c, n)``."""
    A, b = A.copy(), b.copy()
    last = None
    for bd in bounds:
        if not bd["n"]:
            continue
        row = bd["head"] if last is None or bd["head_start"] else ar1_boundary(
            bd["head"], last, rho)
        x, z = row[:-1], row[-1]
        A += np.outer(x, x)
        b += x * z
        c += float(z * z)
        n += 1
        last = bd["tail"]
    return A, b, c, n
