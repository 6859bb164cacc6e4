"""The crossed Laplace criterion (daskmm/kernels/crossed_glmm.py) against a direct dense
computation: Newton's method on the penalised deviance with dense solves, ``log|A|`` by a
dense Cholesky; the sparse path equal to it, the matrix-free one within its error."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from daskmm.kernels import crossed_glmm as CG
from daskmm.kernels import scalar_re as K


def dense_laplace(X, y, codes, sizes, theta, beta, family):
    """``-2 ll + |u|^2 + log|A|`` (no constants) and the modes, all dense."""
    n, q = len(y), sum(sizes)
    Z = np.zeros((n, q))
    off = np.concatenate([[0], np.cumsum(sizes)])
    for j, c in enumerate(codes):
        Z[np.arange(n), off[j] + c] = 1.0
    value, u, _ = dense_pirls(X, y, Z * np.repeat(theta, sizes), beta, family)
    return value, u


def dense_pirls(X, y, ZL, beta, family):
    """Newton's method on the penalised deviance with ``Z Lambda = ZL``, dense: the Laplace
    criterion (no constants), the modes and ``A`` at them."""
    q = ZL.shape[1]
    eta0 = X @ beta
    u = np.zeros(q)
    for _ in range(100):
        eta = eta0 + ZL @ u
        mu = special.expit(eta) if family == "binomial" else np.exp(eta)
        w = mu * (1 - mu) if family == "binomial" else mu
        A = ZL.T @ (w[:, None] * ZL) + np.eye(q)
        step = np.linalg.solve(A, ZL.T @ (y - mu) - u)
        u = u + step
        if np.max(np.abs(step)) < 1e-13:
            break
    eta = eta0 + ZL @ u
    if family == "binomial":
        ll = np.sum(y * eta - np.logaddexp(0.0, eta))
        mu = special.expit(eta)
        w = mu * (1 - mu)
    else:
        mu = np.exp(eta)
        ll = np.sum(y * eta - mu)
        w = mu
    A = ZL.T @ (w[:, None] * ZL) + np.eye(q)
    return -2 * ll + u @ u + 2 * np.sum(np.log(np.diag(np.linalg.cholesky(A)))), u, A


def crossing(n, sizes, family, seed=3):
    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, L, n) for L in sizes]
    x = rng.normal(size=n)
    eta = -0.3 + 0.5 * x + sum(rng.normal(0, 0.7, L)[c] for L, c in zip(sizes, codes))
    y = (rng.random(n) < special.expit(eta)).astype(float) if family == "binomial" else \
        rng.poisson(np.exp(eta)).astype(float)
    X = np.column_stack([np.ones(n), x])
    return X, y, codes


def criterion(X, y, codes, sizes, family, path, parts=1, **kw):
    """The kernel's criterion over ``parts`` partitions of the rows."""
    fam = K.BINOMIAL if family == "binomial" else K.POISSON
    link = K.LOGIT if family == "binomial" else K.LOG
    levels = [np.arange(L) for L in sizes]
    chunks = np.array_split(np.arange(len(y)), parts)
    rows = [CG.crossed_rows(X[i], y[i], np.ones(len(i)), np.zeros(len(i)),
                            [c[i] for c in codes], levels, 0.0, None) for i in chunks]
    keys = CG.merge_keys([CG.pair_keys(r, tuple(sizes)) for r in rows])
    rows = [CG.with_pattern(r, keys, tuple(sizes)) for r in rows]
    pat = CG.Patterns.of(keys, tuple(sizes))

    def passes(beta, b):
        return CG.add_passes([CG.weighted_pass(r, beta, b, fam, link, tuple(sizes))
                              for r in rows], pat.nnz)
    return CG.CrossedLaplace(pat, passes, path, **kw)


@pytest.mark.parametrize("family,sizes", [("binomial", [60, 40]), ("poisson", [50, 30, 12])])
def test_the_sparse_criterion_is_the_dense_laplace(family, sizes):
    X, y, codes = crossing(1500, sizes, family)
    crit = criterion(X, y, codes, sizes, family, "sparse", parts=3)
    for theta, beta in [(np.full(len(sizes), 0.8), np.array([-0.2, 0.4])),
                        (np.linspace(0.3, 1.2, len(sizes)), np.array([0.1, 0.6])),
                        (np.r_[0.0, np.full(len(sizes) - 1, 0.5)], np.array([-0.3, 0.5]))]:
        ref, u = dense_laplace(X, y, codes, sizes, theta, beta, family)
        pt = crit.evaluate(theta, beta)
        assert pt.value == pytest.approx(ref, rel=1e-11)
        assert pt.se == 0.0
        np.testing.assert_allclose(pt.u, u, atol=1e-9)
        # the conditional variances' diag(A^-1), exactly
        lam = np.repeat(theta, sizes)
        n, q = len(y), sum(sizes)
        Z = np.zeros((n, q))
        off = np.concatenate([[0], np.cumsum(sizes)])
        for j, c in enumerate(codes):
            Z[np.arange(n), off[j] + c] = 1.0
        eta = X @ beta + (Z * lam) @ u
        mu = special.expit(eta) if family == "binomial" else np.exp(eta)
        w = mu * (1 - mu) if family == "binomial" else mu
        A = (Z * lam).T @ (w[:, None] * Z * lam) + np.eye(q)
        np.testing.assert_allclose(crit.inverse_diag(pt), np.diag(np.linalg.inv(A)),
                                   rtol=1e-9)


def test_the_matrix_free_criterion_is_within_its_error():
    sizes = [120, 80]
    X, y, codes = crossing(3000, sizes, "binomial", seed=5)
    crit = criterion(X, y, codes, sizes, "binomial", "matrix-free", seed=2)
    theta, beta = np.array([0.7, 0.5]), np.array([-0.3, 0.5])
    ref, u = dense_laplace(X, y, codes, sizes, theta, beta, "binomial")
    pt = crit.evaluate(theta, beta)
    assert 0 < pt.se < 1
    assert abs(pt.value - ref) < 3 * pt.se
    np.testing.assert_allclose(pt.u, u, atol=1e-8)  # the modes exactly (CG)
    # the same probes at every evaluation, the Lanczos steps fixed at the first: one smooth
    # function, whatever the warm start
    assert crit.fixed_steps is not None
    other = crit.evaluate(theta * 1.1, beta)
    again = crit.evaluate(theta, beta)
    assert again.value == pytest.approx(pt.value, abs=1e-8)
    assert other.value != pytest.approx(pt.value, abs=1e-3)


def test_an_unusable_point_is_infinite_not_an_error():
    sizes = [30, 20]
    X, y, codes = crossing(600, sizes, "poisson")
    crit = criterion(X, y, codes, sizes, "poisson", "sparse")
    pt = crit.evaluate(np.array([0.5, 0.5]), np.array([800.0, 0.0]))  # exp(800) overflows
    assert pt.value == np.inf
    assert np.isfinite(crit.evaluate(np.array([0.5, 0.5]), np.array([0.0, 0.3])).value)


@pytest.mark.parametrize("family,sizes", [("binomial", [30, 20]), ("poisson", [25, 15, 8])])
def test_the_gradient_is_the_criterions_derivative(family, sizes):
    # the matrix-free criterion with a deflation basis spanning the whole space and no
    # probes is exact, and so are its gradient's traces: against central differences of the
    # sparse (exact) criterion
    X, y, codes = crossing(800, sizes, family)
    check_gradient(X, y, codes, sizes, family, np.linspace(0.5, 0.9, len(sizes)), criterion)


def check_gradient(X, y, codes, sizes, family, theta, make, slopes=None):
    """The matrix-free gradient (exact: a basis spanning the space, no probes) against
    central differences of the sparse criterion, both made by ``make``."""
    fam = (K.BINOMIAL, K.LOGIT) if family == "binomial" else (K.POISSON, K.LOG)
    r = sum(sizes) - sizes[0]
    exact = make(X, y, codes, sizes, family, "sparse")
    free = make(X, y, codes, sizes, family, "matrix-free", probes=0, deflate=0, steps=r + 2)
    free.family, free.basis = fam, np.eye(r)
    levels = [np.arange(L) for L in sizes]
    rows = CG.crossed_rows(X, y, np.ones(len(y)), np.zeros(len(y)), codes, levels, 0.0, None,
                           slopes=slopes)
    rows = CG.with_pattern(rows, CG.merge_keys([CG.pair_keys(rows, tuple(sizes))]),
                           tuple(sizes))
    beta = np.array([-0.2, 0.4])
    pt = free.evaluate(theta, beta)
    assert pt.se == 0.0
    assert pt.value == pytest.approx(exact.evaluate(theta, beta).value, rel=1e-12)
    g = free.gradient(theta, beta, pt, lambda fn, **kw: [fn(rows, **kw)])
    x0, nk = np.r_[theta, beta], len(theta)
    fd = []
    for i in range(len(x0)):
        up, down = x0.copy(), x0.copy()
        up[i] += 1e-5
        down[i] -= 1e-5
        fd.append((exact.evaluate(up[:nk], up[nk:]).value -
                   exact.evaluate(down[:nk], down[nk:]).value) / 2e-5)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-5)


def dense_laplace_slopes(X, y, codes, sizes, T, rest, beta, family):
    """:func:`dense_laplace` with random slopes ``(1 + x | f1)``: ``Z`` with the first
    factor's two columns per level, ``Lambda = blockdiag(I (x) T, rest on their levels)``;
    the criterion, the modes and ``A``."""
    n, L = len(y), sizes[0]
    x = X[:, 1]
    q = 2 * L + sum(sizes[1:])
    Z = np.zeros((n, q))
    Z[np.arange(n), 2 * codes[0]] = 1.0
    Z[np.arange(n), 2 * codes[0] + 1] = x
    off = 2 * L + np.concatenate([[0], np.cumsum(sizes[1:])])
    for j, c in enumerate(codes[1:]):
        Z[np.arange(n), off[j] + c] = 1.0
    Lam = np.zeros((q, q))
    Lam[:2 * L, :2 * L] = np.kron(np.eye(L), T)
    Lam[2 * L:, 2 * L:] = np.diag(np.repeat(rest, sizes[1:]))
    return dense_pirls(X, y, Z @ Lam, beta, family)


def criterion_slopes(X, y, codes, sizes, family, path, parts=1, **kw):
    fam = K.BINOMIAL if family == "binomial" else K.POISSON
    link = K.LOGIT if family == "binomial" else K.LOG
    levels = [np.arange(L) for L in sizes]
    chunks = np.array_split(np.arange(len(y)), parts)
    rows = [CG.crossed_rows(X[i], y[i], np.ones(len(i)), np.zeros(len(i)),
                            [c[i] for c in codes], levels, 0.0, None, slopes=X[i])
            for i in chunks]
    keys = CG.merge_keys([CG.pair_keys(r, tuple(sizes)) for r in rows])
    rows = [CG.with_pattern(r, keys, tuple(sizes)) for r in rows]
    pat = CG.Patterns.of(keys, tuple(sizes))

    def passes(beta, b):
        return CG.add_passes([CG.weighted_pass(r, beta, b, fam, link, tuple(sizes))
                              for r in rows], pat.nnz)
    return CG.CrossedLaplace(pat, passes, path, cols=2, **kw)


@pytest.mark.parametrize("family,sizes", [("binomial", [60, 40]), ("poisson", [50, 30, 12])])
def test_with_random_slopes_the_sparse_criterion_is_the_dense_laplace(family, sizes):
    X, y, codes = crossing(1500, sizes, family, seed=4)
    crit = criterion_slopes(X, y, codes, sizes, family, "sparse", parts=3)
    # the fits' default seed; the error in standard errors at seeds 0-3 (Poisson, first
    # point): 0.6, -4.0, -0.7, -1.9 (10 probes estimate their own spread roughly)
    free = criterion_slopes(X, y, codes, sizes, family, "matrix-free", parts=2, seed=0)
    rest = np.linspace(0.4, 0.9, len(sizes) - 1)
    for T, beta in [(np.array([[0.8, 0.0], [0.3, 0.5]]), np.array([-0.2, 0.4])),
                    (np.array([[0.6, 0.0], [-0.4, 0.2]]), np.array([0.1, 0.6]))]:
        theta = np.r_[T[0, 0], T[1, 0], T[1, 1], rest]
        ref, u, A = dense_laplace_slopes(X, y, codes, sizes, T, rest, beta, family)
        pt = crit.evaluate(theta, beta)
        assert pt.value == pytest.approx(ref, rel=1e-11)
        np.testing.assert_allclose(pt.u, u, atol=1e-9)
        # A^-1's diagonal blocks (the conditional covariances), exactly
        Ainv = np.linalg.inv(A)
        k = 2 * sizes[0]
        first, others = crit.inverse_blocks(pt)
        np.testing.assert_allclose(first, [Ainv[i:i + 2, i:i + 2] for i in range(0, k, 2)],
                                   rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(others, np.diag(Ainv)[k:], rtol=1e-9)
        # matrix-free: the modes exactly, the criterion within its error
        fp = free.evaluate(theta, beta)
        np.testing.assert_allclose(fp.u, u, atol=1e-8)
        assert abs(fp.value - ref) < 3 * fp.se


@pytest.mark.parametrize("family,sizes", [("binomial", [40, 25]), ("poisson", [30, 20, 8])])
def test_with_random_slopes_the_gradient_is_the_criterions_derivative(family, sizes):
    # as test_the_gradient_is_the_criterions_derivative: a basis spanning the space, no
    # probes, against central differences of the sparse criterion, in T's entries too
    X, y, codes = crossing(800, sizes, family, seed=6)
    theta = np.r_[0.7, -0.25, 0.4, np.linspace(0.5, 0.9, len(sizes) - 1)]
    check_gradient(X, y, codes, sizes, family, theta, criterion_slopes, slopes=X)


def dense_zl(X, codes, sizes, theta, slopes):
    """``M = Z Lambda`` dense, the first factor's ``(level, column)`` entries level after
    level with random slopes (``theta``: its triangle, then one per other factor)."""
    n, L = len(X), sizes[0]
    r = 2 if slopes else 1
    q = r * L + sum(sizes[1:])
    Z = np.zeros((n, q))
    for a in range(r):
        Z[np.arange(n), r * codes[0] + a] = X[:, a] if slopes else 1.0
    off = r * L + np.concatenate([[0], np.cumsum(sizes[1:])])
    for j, c in enumerate(codes[1:]):
        Z[np.arange(n), off[j] + c] = 1.0
    Lam = np.zeros((q, q))
    T = np.array([[theta[0], 0.0], [theta[1], theta[2]]]) if slopes else np.array([[theta[0]]])
    Lam[:r * L, :r * L] = np.kron(np.eye(L), T)
    nt = 3 if slopes else 1
    Lam[r * L:, r * L:] = np.diag(np.repeat(theta[nt:], sizes[1:]))
    return Z @ Lam, r * L


@pytest.mark.parametrize("family,sizes,slopes", [("binomial", [40, 25], False),
                                                 ("poisson", [30, 20, 8], False),
                                                 ("binomial", [40, 25], True),
                                                 ("poisson", [30, 20, 8], True)])
def test_the_rows_leverages_give_the_probes_trace_for_any_row_weights(family, sizes, slopes):
    # sum_i v_i rho_i is the log determinant's estimator of tr(A^-1 M' diag(v) M), term by
    # term: tr(D^-1 K_11) + tr(s P'KP s) + sum_c gamma_c (x_c - z_c)' s P'KP s z_c, with
    # the probes and the deflation basis of the point (P = [-D^-1 A_12; I], s the Jacobi
    # scaling of the Schur complement), computed here densely
    X, y, codes = crossing(900, sizes, family, seed=8)
    make = criterion_slopes if slopes else criterion
    crit = make(X, y, codes, sizes, family, "matrix-free", probes=6, deflate=3, seed=2)
    theta = (np.r_[0.7, -0.25, 0.4, np.linspace(0.5, 0.9, len(sizes) - 1)] if slopes
             else np.linspace(0.6, 0.9, len(sizes)))
    beta = np.array([-0.2, 0.4])
    pt = crit.evaluate(theta, beta)
    levels = [np.arange(L) for L in sizes]
    rows = CG.crossed_rows(X, y, np.ones(len(y)), np.zeros(len(y)), codes, levels, 0.0, None,
                           slopes=X if slopes else None)
    rows = CG.with_pattern(rows, CG.merge_keys([CG.pair_keys(rows, tuple(sizes))]),
                           tuple(sizes))
    rho = CG.row_leverage(rows, CG.leverage_of(pt.reduced, pt.quad, pt.weights, crit.patterns))
    # the rows in with_pattern's order
    M, k = dense_zl(rows.X, rows.codes, sizes, theta, slopes)
    eta = rows.X @ beta + M @ pt.u
    mu = special.expit(eta) if family == "binomial" else np.exp(eta)
    w = mu * (1 - mu) if family == "binomial" else mu
    A = M.T @ (w[:, None] * M) + np.eye(M.shape[1])
    r = 2 if slopes else 1
    D = np.zeros((k, k))
    for i in range(0, k, r):
        D[i:i + r, i:i + r] = A[i:i + r, i:i + r]
    P = np.vstack([-np.linalg.solve(D, A[:k, k:]), np.eye(A.shape[0] - k)])
    quad = pt.quad
    s = quad.scale
    gamma = np.r_[np.ones(quad.k), np.full(quad.starts.shape[1] - quad.k,
                                            1.0 / (quad.starts.shape[1] - quad.k))]
    rng = np.random.default_rng(1)
    for v in [rng.normal(size=len(y)), w * (1 - 2 * mu) if family == "binomial" else w]:
        Kv = M.T @ (v[:, None] * M)
        PKP = s[:, None] * (P.T @ Kv @ P) * s[None, :]
        est = (np.trace(np.linalg.solve(D, Kv[:k, :k])) + np.trace(PKP)
               + np.sum(gamma * np.einsum("qc,qc->c", quad.solves - quad.starts,
                                          PKP @ quad.starts)))
        assert v @ rho == pytest.approx(est, rel=1e-10)
    # with a basis spanning the space and no probes the estimate is tr(A^-1 K) itself
    exact = make(X, y, codes, sizes, family, "matrix-free", probes=0, deflate=0,
                 steps=A.shape[0] - k + 2)
    exact.basis = np.eye(A.shape[0] - k)
    exact.fixed_steps = A.shape[0] - k  # every recurrence to its end: the solves exact too
    pe = exact.evaluate(theta, beta)
    rho = CG.row_leverage(rows, CG.leverage_of(pe.reduced, pe.quad, pe.weights,
                                               exact.patterns))
    np.testing.assert_allclose(rho, np.einsum("iq,qp,ip->i", M, np.linalg.inv(A), M),
                               rtol=1e-9)


def test_the_leverage_reports_its_arrays_bytes_so_a_map_sends_it_once():
    # dask.sizeof falls back to sys.getsizeof: without RowLeverage.__sizeof__ a dataclass of
    # arrays reads as ~100 bytes, below map_parts' scatter threshold, and would be pickled
    # into every partition's task
    from dask.sizeof import sizeof

    from daskmm.distributed.mapreduce import LARGE_ARGUMENT
    X, y, codes = crossing(900, [40, 25], "binomial", seed=8)
    crit = criterion(X, y, codes, [40, 25], "binomial", "matrix-free", probes=6, deflate=3)
    pt = crit.evaluate(np.array([0.6, 0.9]), np.array([-0.2, 0.4]))
    lev = CG.leverage_of(pt.reduced, pt.quad, pt.weights, crit.patterns)
    arrays = sum(v.nbytes for v in vars(lev).values())
    assert sizeof(lev) >= arrays >= 8 * 900
    big = CG.RowLeverage(*(np.zeros(LARGE_ARGUMENT // 8) for _ in range(10)))
    assert sizeof(big) >= LARGE_ARGUMENT


@pytest.mark.parametrize("slopes", [False, True])
def test_placed_rows_are_ordered_by_their_levels_and_move_whole(slopes):
    # with_pattern orders the rows by the first factor's level, then the second's (every
    # pass then walks its level and table arrays in order); each row's fields move together
    X, y, codes = crossing(700, [30, 20, 9], "poisson", seed=9)
    wt, off = np.arange(1.0, 701.0), np.linspace(-0.1, 0.1, 700)
    levels = [np.arange(L) for L in (30, 20, 9)]
    rows = CG.crossed_rows(X, y, wt, off, codes, levels, 0.0, None,
                           slopes=X if slopes else None)
    placed = CG.with_pattern(rows, CG.merge_keys([CG.pair_keys(rows, (30, 20, 9))]),
                             (30, 20, 9))
    key = placed.codes[0] * 20 + placed.codes[1]
    assert np.all(np.diff(key) >= 0) and not np.all(np.diff(codes[0] * 20 + codes[1]) >= 0)
    at = (placed.wt - 1).astype(int)  # each placed row's index in the input
    assert sorted(at) == list(range(700))
    for got, was in [(placed.X, X), (placed.y, y), (placed.offset, off),
                     *zip(placed.codes, codes)] + ([(placed.Zs, X)] if slopes else []):
        np.testing.assert_array_equal(got, was[at])
    assert rows.codes[0] is codes[0] or np.array_equal(rows.codes[0], codes[0])  # input kept
    # each row's place on each table is its own pair's
    for (j, k), (places, ix) in placed.pos.items():
        keys = CG.merge_keys([CG.pair_keys(rows, (30, 20, 9))])[(j, k)]
        sizes = (30, 20, 9)
        np.testing.assert_array_equal(keys[places[ix]],
                                      placed.codes[j] * sizes[k] + placed.codes[k])
