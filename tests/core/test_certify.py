"""A fit's own check of its optimum (daskmm.core.certify, core.optimizer.certified_optimum):
each check fails on the kind of point it exists for, and passes at a true optimum."""

from __future__ import annotations

import numpy as np

from daskmm.core.certify import DECREASE_TOL, certify
from daskmm.core.optimizer import OptSummary, certified_optimum, minimize
from daskmm.kernels.numderiv import derivatives


def _even(t):
    """An LMM-like criterion even in theta_2, optimum at theta = (0.5, 0.06): derivative 0 at
    theta_2 = 0, where the criterion is a local maximum along it."""
    return 100.0 * (t[0] - 0.5) ** 2 + 1e4 * (t[1] ** 2 - 0.06 ** 2) ** 2


def _derivs(f, lower):
    def d(x):
        g, H = derivatives(f, np.asarray(x, float), lower)
        return f(x), g, H
    return d


def test_a_zero_gradient_on_a_bound_is_not_taken_for_an_optimum():
    lower = np.array([0.0, 0.0])
    x = np.array([0.5, 6e-19])
    fx, g, H = _derivs(_even, lower)(x)
    # the exact derivative along theta_2 is 0 there: nothing a projected-gradient test sees
    assert abs(4e4 * x[1] * (x[1] ** 2 - 0.06 ** 2)) < 1e-12
    checks = certify(_even, x, lower, fx, g, H, ["a", "b"])
    assert not checks.certified
    assert checks.boundary[0]["name"] == "b" and checks.boundary[0]["steps"][-1][1] < 0
    assert checks.inside is not None
    assert "stopped on the boundary short of the optimum" in checks.messages[0]


def test_a_true_boundary_optimum_is_certified():
    def f(t):
        return 100.0 * (t[0] - 0.5) ** 2 + 1e4 * (t[1] ** 2 + 0.01) ** 2
    lower = np.array([0.0, 0.0])
    x = np.array([0.5, 0.0])
    checks = certify(f, x, lower, *_derivs(f, lower)(x), ["a", "b"])
    assert checks.certified, checks.messages
    assert [b["name"] for b in checks.boundary] == ["b"] and checks.free == ["a"]
    assert all(s > 0 for _, s in checks.boundary[0]["steps"])


def test_a_point_short_of_the_optimum_fails_the_newton_check():
    def f(t):
        return (t[0] - 1.0) ** 2 + 10.0 * (t[0] - t[1]) ** 2
    lower = np.full(2, -np.inf)
    x = np.array([0.99, 0.99])  # decrease 1e-4 away
    checks = certify(f, x, lower, *_derivs(f, lower)(x))
    assert not checks.certified and checks.newton_decrease > DECREASE_TOL
    np.testing.assert_allclose(checks.newton_point, [1.0, 1.0], atol=1e-6)
    good = np.array([1.0, 1.0])
    assert certify(f, good, lower, *_derivs(f, lower)(good)).certified


def test_a_saddle_gets_lme4s_message():
    def f(t):
        return t[0] ** 2 - t[1] ** 2
    lower = np.full(2, -np.inf)
    x = np.zeros(2)
    checks = certify(f, x, lower, *_derivs(f, lower)(x))
    assert not checks.certified
    assert "Model failed to converge: degenerate  Hessian with 1 negative eigenvalues" \
        in checks.messages


def test_lme4s_scaled_gradient_message():
    def f(t):
        return 1e-4 * (t[0] - 1.0) ** 2
    lower = np.full(1, -np.inf)
    x = np.array([-20.0])  # gradient 4.2e-3, scaled 0.3
    checks = certify(f, x, lower, *_derivs(f, lower)(x))
    assert any(m.startswith("Model failed to converge with max|grad| = ") and
               "(tol = 0.002, component 1)" in m for m in checks.messages)


def test_a_stalled_optimum_is_repaired_and_the_record_says_so():
    lower = np.array([0.0, 0.0])

    def run(start):
        return minimize(start, lower, f=_even, options={"method": "bobyqa"})

    stalled = np.array([0.5, 0.0])
    summary = OptSummary("stalled", {}, stalled.tolist(), fmin=_even(stalled), feval=7)
    x, summary, (fx, _, _) = certified_optimum(run, _derivs(_even, lower), _even, stalled,
                                               summary, lower, ["a", "b"])
    np.testing.assert_allclose(x, [0.5, 0.06], atol=1e-5)
    assert summary.certified and summary.restarted and summary.feval > 7
    assert summary.checks["actions"][0].startswith("ran again from inside a bound")
    assert fx < _even(stalled) - 0.1


def test_a_repair_that_finds_nothing_lower_keeps_the_first_optimum():
    def f(t):
        return abs(t[0] - 1.0)  # a kink: the finite-difference Hessian is useless there
    lower = np.full(1, -np.inf)

    def run(start):
        return np.array([5.0]), OptSummary("worse", {}, [5.0], fmin=4.0)

    x0 = np.array([1.0])
    summary = OptSummary("first", {}, [1.0], fmin=0.0)

    def derivs(x):
        return f(x), np.array([0.3]), np.array([[1e-3]])  # promises a decrease of 45

    x, summary, _ = certified_optimum(run, derivs, f, x0, summary, lower, ["a"])
    assert x.tolist() == [1.0] and summary.optimizer == "first"
    assert not summary.certified and "the first optimum stands" in summary.checks["actions"][0]


def test_an_interior_minimum_above_the_bounds_value_fails_and_points_at_the_bound():
    """glmer's gaussian(log) criterion is lowest at theta = 0 and steep just above it: an
    optimiser from inside stops at an interior minimum. Moving the parameter onto its bound
    finds the lower value."""
    def f(x):
        return float((x[0] - 1) ** 2 + 0.5 - 2 * np.exp(-(x[0] / 0.01) ** 2))
    x = np.array([1.0])
    lower = np.array([0.0])
    checks = certify(f, x, lower, f(x), np.array([0.0]), np.array([[2.0]]), ["theta"])
    assert not checks.certified and checks.at_bound == [0.0]
    assert "with theta on its bound 0" in checks.messages[0]
    quiet = certify(f, x, lower, f(x), np.array([0.0]), np.array([[2.0]]), ["theta"],
                    bound_values=False)
    assert quiet.certified and quiet.at_bound is None
