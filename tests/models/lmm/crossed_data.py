"""Crossed designs that R and Python draw identically, for references made by lme4
(``tests/fixtures/crossed/make_crossed.R``): MINSTD's integer recurrence
``s <- 48271 s mod (2^31 - 1)``, exact in doubles in both, its uniforms ``s / (2^31 - 1)``;
levels ``floor(u * L)`` and normals by Box-Muller (``sqrt(-2 log u1) cos(2 pi u2)``), whose
last bit may differ between the two libms (a relative 1e-16 in the response, far below any
tolerance compared)."""

from __future__ import annotations

import numpy as np
import pandas as pd

M = 2147483647.0


def uniforms(n: int, seed: int) -> np.ndarray:
    """``n`` MINSTD uniforms from ``seed``."""
    out = np.empty(n)
    s = float(seed)
    for i in range(n):
        s = (48271.0 * s) % M
        out[i] = s / M
    return out


def _draws(n: int, levels: list[int], sds: list[float], seed: int):
    """The rows' level codes, each factor's effects, ``x`` and ``e``, in R's order
    (make_crossed.R): the rows' levels, factor after factor; each factor's effects; then
    ``x`` and ``e``."""
    k = len(levels)
    u = uniforms(k * n + 2 * sum(levels) + 4 * n, seed)
    pos = 0
    codes = []
    for L in levels:
        codes.append(np.floor(u[pos:pos + n] * L).astype(int))
        pos += n
    effects = []
    for L, sd in zip(levels, sds):
        a, b = u[pos:pos + L], u[pos + L:pos + 2 * L]
        effects.append(sd * np.sqrt(-2.0 * np.log(a)) * np.cos(2.0 * np.pi * b))
        pos += 2 * L
    a, b = u[pos:pos + 2 * n:2], u[pos + 1:pos + 2 * n:2]
    x = np.sqrt(-2.0 * np.log(a)) * np.cos(2.0 * np.pi * b)
    pos += 2 * n
    a, b = u[pos:pos + 2 * n:2], u[pos + 1:pos + 2 * n:2]
    e = np.sqrt(-2.0 * np.log(a)) * np.cos(2.0 * np.pi * b)
    return codes, effects, x, e


def _frame(response: dict, x: np.ndarray, codes: list[np.ndarray]) -> pd.DataFrame:
    frame = pd.DataFrame({**response, "x": x})
    for j, c in enumerate(codes):
        frame[f"f{j + 1}"] = [f"L{v:05d}" for v in c]
    return frame


def crossed_design(n: int, levels: list[int], sds: list[float], seed: int = 12345
                   ) -> pd.DataFrame:
    """``y = 1 + 0.5 x + sum_k b_k[f_k] + e``: ``x`` and ``e`` standard normal, factor ``k``
    (``f1``, ``f2``, ...) with ``levels[k]`` levels drawn uniformly, its effects normal with
    standard deviation ``sds[k]``."""
    codes, effects, x, e = _draws(n, levels, sds, seed)
    y = 1.0 + 0.5 * x + sum(eff[c] for eff, c in zip(effects, codes)) + e
    return _frame({"y": y}, x, codes)


def crossed_glmm_design(n: int, levels: list[int], sds: list[float], seed: int = 12345
                        ) -> pd.DataFrame:
    """Discrete responses on the same draws as :func:`crossed_design`, with the linear
    predictor ``eta = -0.5 + 0.5 x + sum_k b_k[f_k]``: ``yb = 1[eta + 1.6 e > 0]`` (a 0/1
    response, near a logistic model's) and ``yc = max(0, round(exp(eta) + sqrt(exp(eta))
    e))`` (counts, near a Poisson model's); make_crossed.R draws the same."""
    codes, effects, x, e = _draws(n, levels, sds, seed)
    eta = -0.5 + 0.5 * x + sum(eff[c] for eff, c in zip(effects, codes))
    mu = np.exp(eta)
    return _frame({"yb": (eta + 1.6 * e > 0).astype(float),
                   "yc": np.maximum(0.0, np.round(mu + np.sqrt(mu) * e))}, x, codes)


def slopes_design(n: int, l1: int, l2: int, sds: list[float], seed: int = 12345
                  ) -> pd.DataFrame:
    """``y = 1 + 0.5 x + a[f1] + s[f1] x + c[f2] + e`` and a 0/1 ``yb``: random slopes on ``f1``
    (make_crossed_slopes.R draws the same): the draws of three factors with ``l1``, ``l2``
    and ``l1`` levels, the third's effects the slopes ``s`` read at ``f1``'s codes."""
    codes, effects, x, e = _draws(n, [l1, l2, l1], sds, seed)
    g, h = codes[0], codes[1]
    y = 1.0 + 0.5 * x + effects[0][g] + effects[2][g] * x + effects[1][h] + e
    # a 0/1 response on the same draws: yb = 1[eta + 1.6 e > 0], near a logistic model's
    eta = -0.5 + 0.5 * x + effects[0][g] + effects[2][g] * x + effects[1][h]
    return _frame({"y": y, "yb": (eta + 1.6 * e > 0).astype(float)}, x, codes[:2])
