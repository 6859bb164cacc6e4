"""Functions of columns: evaluated as R evaluates them, state frozen from the whole data and
independent of how the data are split, columns named as R names them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from daskmm.errors import FormulaError
from daskmm.formula.parse import parse_formula
from daskmm.formula.spec import ModelSpec, encoding_frame, plan_formula
from daskmm.formula.transforms import Rewriter, poly_coefficients, poly_columns


def r_poly(x: np.ndarray, degree: int):
    """R's poly(), transcribed: QR of the centred powers."""
    xbar = x.mean()
    X = np.vander(x - xbar, degree + 1, increasing=True)
    Q, R = np.linalg.qr(X)
    Z = Q * np.diag(R)
    norm2 = (Z ** 2).sum(axis=0)
    alpha = ((x - xbar)[:, None] * Z ** 2).sum(axis=0) / norm2 + xbar
    return Z[:, 1:] / np.sqrt(norm2[1:]), alpha[:degree], np.concatenate([[1.0], norm2])


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_poly_from_moments_equals_r(degree):
    x = np.random.default_rng(degree).normal(40, 7, size=500)
    want_cols, want_alpha, want_norm2 = r_poly(x, degree)
    d = x - x.mean()
    moments = np.array([np.sum(d ** k) for k in range(2 * degree + 1)])
    alpha, norm2 = poly_coefficients(len(x), x.mean(), moments, degree)
    np.testing.assert_allclose(alpha, want_alpha, rtol=1e-12)
    np.testing.assert_allclose(norm2, want_norm2, rtol=1e-10)
    cols = poly_columns(x, alpha, norm2)
    np.testing.assert_allclose(np.abs(cols), np.abs(want_cols), atol=1e-10)
    np.testing.assert_allclose(cols, want_cols * np.sign(cols[0] * want_cols[0]), atol=1e-10)


@pytest.mark.parametrize("call", ["poly(x, 3)", "scale(x)", "factor(k)"])
def test_state_does_not_depend_on_the_split(call):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(1e3, 3.0, 1000), "k": rng.integers(0, 4, 1000)})
    states = []
    for parts in (1, 7):
        rw = Rewriter(["x", "k"])
        rw.rewrite(call)
        tr = next(iter(rw.transforms.values()))
        env_key = rw.column_keys
        bounds = np.linspace(0, len(df), parts + 1).astype(int)
        chunks = [df.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        summaries = [tr.summarise({env_key[c]: chunk[c].to_numpy() for c in tr.columns},
                                  np.ones(len(chunk), dtype=bool)) for chunk in chunks]
        tr.freeze(tr.combine(summaries))
        states.append(tr.state)
    for key, value in states[0].items():
        if key == "levels":
            assert value == states[1][key] == ["0", "1", "2", "3"]
        else:
            np.testing.assert_allclose(value, states[1][key], rtol=1e-12)


def _spec(formula: str, df: pd.DataFrame, categorical=None) -> ModelSpec:
    parsed = parse_formula(formula)
    used = sorted(parsed.columns)
    rw = plan_formula(parsed, used)
    for tr in rw.transforms.values():
        if tr.stateful:
            env = {rw.column_keys[c]: df[c].to_numpy() for c in tr.columns}
            tr.freeze(tr.combine([tr.summarise(env, np.ones(len(df), dtype=bool))]))
    return ModelSpec.build(parsed, {c: df[c].dtype for c in used}, categorical or {},
                           rewriter=rw)


def test_power_inside_a_call_is_a_power_not_xor():
    df = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": [1.0, 2, 3, 5], "g": [1, 1, 2, 2]})
    spec = _spec("y ~ I(x^2) + (1 | g)", df)
    enc = spec.encode(df)
    assert spec.fixef_names == ["(Intercept)", "I(x^2)"]
    np.testing.assert_array_equal(enc.X[:, 1], [1, 4, 9, 25])


def test_crossing_to_degree_two_and_r_names():
    df = pd.DataFrame({"y": np.arange(6.0), "a": np.arange(6.0) ** 2, "b": [1.0, 0, 2, 5, 1, 3],
                       "c": ["p", "q"] * 3, "g": [1, 1, 2, 2, 3, 3]})
    spec = _spec("y ~ (a + b + c)^2 + (1 | g)", df, {"c": ["p", "q"]})
    assert spec.fixef_names == ["(Intercept)", "a", "b", "cq", "a:b", "a:cq", "b:cq"]


def test_odd_column_names_and_a_column_called_log():
    df = pd.DataFrame({"y": [1.0, 2, 3, 4], "my var": [1.0, 2, 3, 4], "log": [2.0, 1, 0, 1],
                       "g": [1, 1, 2, 2]})
    spec = _spec("y ~ `my var` + log + log(`my var`) + (1 | g)", df)
    assert spec.fixef_names == ["(Intercept)", "`my var`", "log", "log(`my var`)"]
    X = spec.encode(df).X
    np.testing.assert_allclose(X[:, 3], np.log(df["my var"]))
    np.testing.assert_allclose(X[:, 2], df["log"])


def test_encoding_frame_has_frozen_columns():
    df = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": [1.0, 2, 3, 5], "g": [1, 1, 2, 2]})
    spec = _spec("y ~ scale(x) + (1 | g)", df)
    frame = encoding_frame(spec._rewriter, df.iloc[:2], spec.categorical)
    sd = df["x"].std()
    np.testing.assert_allclose(frame.iloc[:, -1], (df["x"].iloc[:2] - df["x"].mean()) / sd)


@pytest.mark.parametrize("formula, match", [
    ("y ~ foo(x) + (1 | g)", r"function 'foo' in foo\(x\) is not available"),
    ("y ~ scale(x, center = FALSE) + (1 | g)", "only scale"),
    ("y ~ poly(x, 1.5) + (1 | g)", "must be a whole number"),
    ("y ~ I(x, 2) + (1 | g)", "I\\(\\) takes one expression"),
])
def test_unsupported_calls_say_what_is_allowed(formula, match):
    df = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": [1.0, 2, 3, 5], "g": [1, 1, 2, 2]})
    with pytest.raises(FormulaError, match=match):
        _spec(formula, df)


def test_cached_specs_follow_levels_and_frozen_state():
    """formulaic specs are cached per formula and prototype: a second build with other levels
    or another ``scale()`` state gets its own columns and values, not the first build's."""
    df = pd.DataFrame({"y": [1.0, 2, 3, 4, 5, 6], "x": [1.0, 2, 3, 5, 8, 13],
                       "f": ["a", "b", "a", "b", "c", "c"], "g": [1, 1, 2, 2, 3, 3]})
    two = _spec("y ~ f + (1 | g)", df.iloc[:4], {"f": ["a", "b"]})
    three = _spec("y ~ f + (1 | g)", df, {"f": ["a", "b", "c"]})
    assert two.fixef_names == ["(Intercept)", "fb"]
    assert three.fixef_names == ["(Intercept)", "fb", "fc"]
    first = _spec("y ~ scale(x) + (1 | g)", df.iloc[:4]).encode(df.iloc[:4])
    again = _spec("y ~ scale(x) + (1 | g)", df).encode(df)
    x = df["x"].to_numpy()
    np.testing.assert_allclose(again.X[:, 1], (x - x.mean()) / x.std(ddof=1), rtol=1e-12)
    x4 = x[:4]
    np.testing.assert_allclose(first.X[:, 1], (x4 - x4.mean()) / x4.std(ddof=1), rtol=1e-12)
