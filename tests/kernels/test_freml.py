"""The fast REML kernel: derivatives against finite differences, profiled against joint
scale, and the optimum a stationary point."""

from __future__ import annotations

import numpy as np
import pytest

from daskmm.kernels import freml


def _problem(seed=3, n=400):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 9))])
    y = X[:, 1] - 0.5 * X[:, 4] + rng.normal(size=n)
    D = np.diff(np.eye(5), 2, axis=0)
    S1 = D.T @ D
    S2 = np.diag([1.0, 1, 1, 0, 0])
    blocks = [freml.PenaltyBlock(1, 6, [S1]), freml.PenaltyBlock(5, 10, [S1, S2])]
    pen = freml.Penalties(10, blocks)
    return X.T @ X, X.T @ y, float(y @ y), n, pen


@pytest.mark.parametrize("phi", [None, 1.3])
def test_gradient_and_hessian_match_finite_differences(phi):
    A, b, c, n, pen = _problem()
    rho = np.array([0.3, -1.0, 1.5])
    p = freml.evaluate(A, b, c, n, pen, rho, phi)
    h = 1e-5
    g = np.zeros(3)
    H = np.zeros((3, 3))
    for k in range(3):
        e = np.zeros(3)
        e[k] = h
        up = freml.evaluate(A, b, c, n, pen, rho + e, phi)
        dn = freml.evaluate(A, b, c, n, pen, rho - e, phi)
        g[k] = (up.value - dn.value) / (2 * h)
        H[k] = (up.grad - dn.grad) / (2 * h)
    np.testing.assert_allclose(p.grad, g, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(p.hess, H, rtol=1e-5, atol=1e-7)


def test_profiled_scale_has_the_joint_optimum():
    A, b, c, n, pen = _problem()
    fit = freml.fit(A, b, c, n, pen)
    assert fit.converged
    # mgcv's test: every gradient component below sqrt(eps) times the score's scale
    tol = (abs(fit.point.value) + fit.point.r / n) * np.finfo(float).eps ** 0.5
    assert np.max(np.abs(fit.point.grad)) < tol
    # at the optimum phi = r / (n - Mp), and the criterion with that phi fixed is the same
    fixed = freml.evaluate(A, b, c, n, pen, fit.point.rho, fit.point.phi)
    assert fixed.value == pytest.approx(fit.point.value, rel=1e-12)
    assert fit.point.phi == pytest.approx(fit.point.r / (n - pen.Mp), rel=1e-12)


def test_unidentifiable_model_is_a_clear_error():
    A, b, c, n, pen = _problem()
    A = A.copy()
    A[:, 0] = A[0, :] = 0.0  # an unpenalised column with no data
    with pytest.raises(freml.FitError, match="not identifiable"):
        freml.evaluate(A, b, c, n, pen, np.zeros(3))
