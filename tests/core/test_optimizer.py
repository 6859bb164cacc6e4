"""The optimiser (``daskmm.optimizer``) on the LMM's profiled criterion: the exact gradient
agrees with finite differences; on 30 random problems (slopes, correlated slopes, nested,
crossed; REML and ML) L-BFGS-B + Newton ends within 1e-10 of a very tight reference
optimisation with a projected gradient below 1e-6, in fewer evaluations than BOBYQA."""

from __future__ import annotations

import importlib

import nlopt
import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.core.optimizer import OptSummary, minimize, projected_gradient
from daskmm.distributed.execution import InProcess
from daskmm.formula.parse import parse_formula

lmm_module = importlib.import_module("daskmm.models.lmm.criterion")

KINDS = {
    "intercept": "y ~ x + (1 | g)",
    "slopes": "y ~ x + (x || g)",
    "correlated": "y ~ x + (x | g)",
    "nested": "y ~ x + (1 | g/h)",
    "crossed": "y ~ x + (1 | g) + (1 | c)",
}


def simulate(kind: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ng = int(rng.integers(8, 30))
    per = int(rng.integers(4, 12))
    n = ng * per
    g = np.repeat(np.arange(ng), per)
    x = rng.normal(size=n)
    sd0, sd1 = rng.uniform(0.2, 2.0, 2)
    rho = rng.uniform(-0.8, 0.8)
    b0 = rng.normal(size=ng) * sd0
    b1 = (rho * b0 / sd0 + np.sqrt(1 - rho ** 2) * rng.normal(size=ng)) * sd1
    y = 1.0 + 0.5 * x + b0[g] + (b1[g] * x if kind in ("slopes", "correlated") else 0)
    h = rng.integers(0, 3, n)
    c = rng.integers(0, 6, n)
    if kind == "nested":
        y = y + rng.normal(size=(ng, 3))[g, h] * rng.uniform(0.1, 1.5)
    if kind == "crossed":
        y = y + rng.normal(size=6)[c] * rng.uniform(0.1, 1.5)
    y = y + rng.normal(size=n) * rng.uniform(0.3, 2.0)
    return pd.DataFrame({"y": y, "x": x, "g": g.astype(str), "h": h, "c": c.astype(str)})


CASES = [(kind, seed, reml) for i, kind in enumerate(KINDS) for seed in (1, 2, 3)
         for reml in (True, False)]


def problem(kind: str, seed: int):
    parsed = parse_formula(KINDS[kind])
    df = simulate(kind, seed)
    return lmm_module.prepare_problem(InProcess(), parsed, df[sorted(parsed.columns)],
                                      ["h"] if kind == "nested" else [], None, "auto")


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("reml", [True, False])
def test_gradient_matches_finite_differences(kind, reml):
    prob = problem(kind, 7)
    rng = np.random.default_rng(3)
    nt = sum(t.n_theta for t in prob.spec.terms)
    for _ in range(3):
        theta = np.abs(rng.uniform(0.2, 1.5, nt))
        f, g = lmm_module.objective_grad(prob, theta, reml)
        assert f == pytest.approx(lmm_module.objective(prob, theta, reml)[0].objective,
                                  rel=1e-12)
        h = 1e-5
        fd = np.array([(lmm_module.objective(prob, theta + h * e, reml)[0].objective
                        - lmm_module.objective(prob, theta - h * e, reml)[0].objective) / (2 * h)
                       for e in np.eye(nt)])
        assert np.max(np.abs(g - fd)) < 1e-5 * max(1.0, np.max(np.abs(fd)))


def tight_reference(prob, reml: bool, starts: list[np.ndarray]) -> float:
    """BOBYQA far beyond lme4's tolerances from several starts: the best value found."""
    lower = np.concatenate([t.theta_lower() for t in prob.spec.terms])
    best = np.inf
    for x0 in starts:
        opt = nlopt.opt(nlopt.LN_BOBYQA, len(x0))
        opt.set_min_objective(lambda x, grad: lmm_module.objective(prob, x, reml)[0].objective)
        opt.set_lower_bounds(lower)
        opt.set_xtol_abs(1e-13)
        opt.set_ftol_abs(1e-15)
        opt.set_maxeval(20_000)
        try:
            x = opt.optimize(np.maximum(x0, lower))
        except nlopt.RoundoffLimited:
            x = x0
        best = min(best, opt.last_optimum_value(), lmm_module.objective(prob, x, reml)[0].objective)
    return best


def test_exact_optimum_on_random_problems():
    """30 problems: the criterion within 1e-10 (relative) of the tight reference, the
    projected gradient below 1e-6; evaluations counted against BOBYQA's."""
    counts = []
    for kind, seed, reml in CASES:
        prob = problem(kind, seed)
        theta, opt = lmm_module.optimise(prob, reml, {})
        _, bob = lmm_module.optimise(prob, reml, {"method": "bobyqa"})
        f = lmm_module.objective(prob, theta, reml)[0].objective
        ref = tight_reference(prob, reml, [np.asarray(opt.x0), theta, np.asarray(bob.x)])
        assert f <= ref + 1e-10 * abs(ref), (kind, seed, reml, f - ref)
        assert opt.gradient_norm < 1e-6, (kind, seed, reml, opt.gradient_norm)
        assert opt.fallback is None and opt.converged
        counts.append((kind, reml, opt.feval, bob.feval))
    ratio = np.median([a / b for _, _, a, b in counts])
    print("evaluations, gradient method / BOBYQA (median):", ratio)
    assert ratio < 0.8, counts


def test_singular_fit_lands_on_the_bound():
    df = pd.read_csv(daskmm.__file__.replace("daskmm/__init__.py", "")
                     + "tests/fixtures/conformance/data/Dyestuff2.csv")
    res = daskmm.lmm("Yield ~ 1 + (1 | Batch)", df)
    assert res.theta[0] == 0.0 and res.singular
    assert res.optinfo.gradient_norm == 0.0  # the gradient pushes into the bound


def test_fallback_to_bobyqa_is_recorded():
    """A gradient that cannot be trusted (here: wrong on purpose) ends in BOBYQA, and the
    summary says why."""
    def f(x):
        return float((x[0] - 2.0) ** 2 + (x[1] + 1.0) ** 2)

    def fg(x):
        return f(x), np.array([1.0, 1.0])  # not the gradient

    x, opt = minimize(np.zeros(2), np.array([0.0, -np.inf]), f=f, fg=fg)
    assert opt.fallback is not None and "BOBYQA" in opt.optimizer
    assert x == pytest.approx([2.0, -1.0], abs=1e-5)


def test_opt_summary_reads_like_a_dict_and_round_trips():
    s = OptSummary("x", {"gtol": 1e-8}, [1.0], feval=3, message="ok", mode="in-process")
    assert s["feval"] == 3 and s.get("mode") == "in-process" and "geval" in s
    assert OptSummary.from_dict(s.to_dict()) == s


def test_projected_gradient_drops_active_bounds():
    g = projected_gradient(np.array([2.0, -1.0, 3.0]), np.array([0.0, 0.0, 1.0]),
                           np.array([0.0, 0.0, -np.inf]))
    assert g.tolist() == [0.0, -1.0, 3.0]


def test_unknown_option_is_an_error():
    with pytest.raises(daskmm.ModelError, match="unknown optimizer option"):
        minimize(np.zeros(1), np.zeros(1), f=lambda x: 0.0, options={"tol": 1})


def test_growth_curve_reaches_the_tight_optimum():
    """nlme's Orthodont, ``distance ~ age + (age | Subject)``: lme4's default BOBYQA stops
    9e-8 above the optimum with SDs 3e-4 off; daskmm ends at a very tight lme4 refit
    (``tests/fixtures/optimum/make_fixtures.R``)."""
    from tests.conftest import ROOT
    here = ROOT / "tests" / "fixtures" / "optimum"
    fx = __import__("json").loads((here / "orthodont.json").read_text())
    res = daskmm.lmm(fx["formula"], pd.read_csv(here / fx["data"]))
    tight, default = fx["tight"], fx["lme4_default"]
    assert res.objective <= tight["objective"] + 1e-10 * tight["objective"]
    assert res.objective < default["objective"] - 5e-8
    assert np.max(np.abs(res.theta - tight["theta"])) < 1e-6
    sd = res.varcorr()["sdcor"].to_numpy()
    assert np.max(np.abs(sd - tight["sd"])) < 1e-6
    assert res.optinfo.gradient_norm < 1e-6


def test_stalled_lbfgsb_hands_over_to_newton():
    """A criterion whose values are rounded (here to 1e-4; a large criterion's rounding does the
    same near its optimum) with an exact gradient: L-BFGS-B's line search cannot see the
    decrease a small gradient promises and would try again and again; after a few flat
    evaluations the Newton steps finish from the best point, to the exact optimum."""
    rng = np.random.default_rng(2)
    c, w = rng.uniform(0.5, 2.0, 3), rng.uniform(1e3, 1e5, 3)
    A = np.diag(w) + 0.3 * np.sqrt(np.outer(w, w)) * (1 - np.eye(3))

    def fg(x):
        d = x - c
        e = np.exp(d)
        f = float(d @ A @ d) + 1e4 * float(np.sum(e - 1 - d))
        return round(f, 4), 2.0 * A @ d + 1e4 * (e - 1)

    x, summary = minimize(np.full(3, 3.0), np.zeros(3), fg=fg)
    assert summary.converged and summary.polished
    assert summary.message.startswith("STALLED"), summary.message
    np.testing.assert_allclose(x, c, rtol=0, atol=1e-9)
    assert summary.feval < 30, summary  # L-BFGS-B alone spins to 50 here


def test_a_boundary_corner_of_the_cholesky_parameters_is_left_for_the_optimum():
    """Simulated (x | g) data where L-BFGS-B from lme4's start stops at theta_11 = 0 with
    theta_21 < 0 (a KKT point of the bounded Cholesky parameters, 28 REML units above the
    optimum): the fit restarts from that corner and reaches the interior optimum."""
    import pandas as pd

    from daskmm import lmm as fit_lmm
    rng = np.random.default_rng(11)
    for _ in range(16):  # the 16th data set of this stream is such a case
        g = np.repeat(np.arange(50), 12)
        x = rng.normal(size=600)
        u = rng.multivariate_normal([0, 0], [[0.25, 0.06], [0.06, 0.16]], size=50)
        y = 1 + 0.5 * x + u[g, 0] + u[g, 1] * x + rng.normal(size=600)
    fit = fit_lmm("y ~ x + (x | g)", pd.DataFrame({"y": y, "x": x, "g": g}),
                  mode="in-process")
    assert fit.optinfo["restarted"]
    assert fit.theta[0] > 0.3
    assert fit.objective == pytest.approx(1811.5758092667884, abs=1e-6)
    truth = np.array([0.5, 0.12, 0.4 * np.sqrt(0.91)])
    other, _ = lmm_module.optimise(fit.problem, True, x0=truth)
    assert fit.objective <= lmm_module.objective(fit.problem, other, True)[0].objective + 1e-8


def test_a_requested_stop_ends_a_fit_at_its_next_evaluation(monkeypatch):
    """After a Ctrl-C whose KeyboardInterrupt was lost (raised in a finaliser, say), the next
    optimiser evaluation raises it again: the fit stops instead of running to the end."""
    from daskmm import events
    from tests.conftest import load_fixture
    df = pd.read_csv(load_fixture("sleepstudy_reml")["data_path"])
    calls = []
    monkeypatch.setattr(events, "_listener", lambda kind, fields: calls.append(kind))
    monkeypatch.setattr(events, "_stop_requested", True)
    with pytest.raises(KeyboardInterrupt):
        daskmm.lmm("Reaction ~ Days + (Days | Subject)", df, mode="in-process")
    assert calls == []  # it stopped at the first evaluation


def test_a_saddle_leads_downhill_along_the_negative_curvature():
    """descent_start: at a saddle (zero gradient, a negative Hessian eigenvalue) the lowest
    point along that eigenvector, within the bounds; None at a minimum."""
    from daskmm.core.optimizer import descent_start

    def f(x):
        return float(x[0] ** 2 - x[1] ** 2 + x[1] ** 4)
    x = np.zeros(2)
    H = np.diag([2.0, -2.0])
    y = descent_start(f, x, f(x), H, np.full(2, -np.inf))
    assert y is not None and f(y) < f(x) and abs(y[0]) < 1e-12
    # the bound keeps the step inside: x1 >= 0 allows only the upward direction
    y = descent_start(f, x, f(x), H, np.array([-np.inf, 0.0]))
    assert y is not None and y[1] > 0
    assert descent_start(f, x, f(x), np.diag([2.0, 2.0]), np.full(2, -np.inf)) is None
