"""A GLMM's rows made into what its kernels read: how the response is read
(:class:`Response`: ``cbind`` trials, a two-level factor, a proportion with weights), each
partition encoded (:func:`encode_partition`) and laid out for the one-intercept kernel
(:class:`GlmmPartition`) or for PIRLS (:func:`prepare_partition`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from daskmm.core.families import FAMILIES
from daskmm.data.rows import DropCounts, missing_rows
from daskmm.errors import DataError, ModelError, num
from daskmm.formula.checks import column_ranges
from daskmm.formula.parse import identifiers, split_top
from daskmm.formula.spec import (
    ModelSpec,
    level_label,
)
from daskmm.kernels import pirls as P
from daskmm.kernels import scalar_re as K
from daskmm.kernels.stats import Layout

FAMILY_OF_CODE = {f.code: f for f in FAMILIES.values()}
PRIOR_WEIGHTS = (K.POISSON, K.NEGBIN, K.GAMMA, K.INVERSE_GAUSSIAN, K.GAUSSIAN)
"""Families whose ``weights`` are prior weights (each row's log-likelihood, or deviance,
times its weight), as glmer's; the binomial's are the trials of a proportion."""


# ------------------------------------------------------------------ per partition (workers)
@dataclasses.dataclass
class GlmmPartition:
    """One partition's rows for the one-intercept kernel, sorted by level: ``starts`` delimit
    the levels."""

    levels: np.ndarray
    starts: np.ndarray
    X: np.ndarray
    y: np.ndarray
    wt: np.ndarray
    offset: np.ndarray
    const: float  # sum of the family's log normalising constants
    n_dropped: DropCounts
    u_warm: np.ndarray | None = None  # modes of the last evaluation (a cache on the worker)
    nb_k: float = 0.0  # the negative binomial's size at the current evaluation


@dataclasses.dataclass(frozen=True)
class Response:
    """How the response is read: ``trials`` (a spec of ``successes + failures`` for
    ``cbind``), ``success`` (the second of two levels of a categorical response, which becomes
    1), ``weights`` (prior weights: binomial trials for a proportion response)."""

    column: str
    trials: ModelSpec | None = None
    success: str | None = None
    weights: str | None = None


def encode_partition(df: pd.DataFrame, spec: ModelSpec, resp: Response, family: int):
    """Encoded arrays of one partition: ``(enc, X, y, wt, offset, const, dropped)``; ``y``
    counts successes for the binomial (of ``wt`` trials), rows with a missing value dropped
    (counted in ``dropped``)."""
    cols = sorted(set(spec.used_columns) | set(resp.trials.used_columns if resp.trials else []))
    df = df[cols]
    ok, dropped = missing_rows(df, cols)
    if ok is not None:
        df = df.loc[ok]
    if resp.success is not None:
        lab = df[resp.column].map(level_label)
        df = df.assign(**{resp.column: (lab == resp.success).astype(float)})
    enc = spec.encode(df)
    y = np.array(enc.y, dtype=float)
    X = np.array(enc.X, dtype=float, order="C")
    offset = np.zeros(len(y))
    if spec._offset_specs:  # encode() returns y - offset: recover the offset
        if spec.formula.response not in df.columns:
            raise ModelError("an offset needs a plain response column")
        raw = df[spec.formula.response].to_numpy(dtype=float)
        offset = raw - y
        y = raw
    if resp.trials is not None:
        wt = np.array(resp.trials.encode(df).y, dtype=float)
        if resp.trials._offset_specs:
            wt = wt + offset
    elif resp.weights is not None and family in PRIOR_WEIGHTS:
        wt = np.array(enc.w, dtype=float)  # checked positive by the shared set-up
    elif resp.weights is not None:  # proportions with weights: successes = y * weights
        wt = np.array(enc.w, dtype=float)
        check_proportion(y, resp.column)
        y = y * wt
        near = np.round(y)
        y = np.where(np.abs(y - near) < 1e-8 * np.maximum(wt, 1.0), near, y)
    else:
        wt = np.ones(len(y))
    fam = FAMILY_OF_CODE[family]
    fam.check_response(y, wt, spec.formula.response)
    const = fam.log_constant(y, wt)
    return enc, X, y, wt, offset, const, dropped + enc.n_dropped


def prepare_partition(df: pd.DataFrame, spec: ModelSpec, resp: Response, family: int,
             layout: Layout | None) -> GlmmPartition | P.PirlsData:
    """Encode one partition for the fit: the one-intercept layout when ``layout`` is None,
    else PIRLS data for ``layout`` (:func:`daskmm.kernels.pirls.pls_layout`)."""
    enc, X, y, wt, offset, const, dropped = encode_partition(df, spec, resp, family)
    if layout is not None:
        # rows grouped by primary level: each pass then reads and writes one level's block
        # and its row of the crossed products at a time, not a random one a row; within a
        # level, ordered by all their values, so that the sums do not depend on the order in
        # which a shuffle delivered the rows (nothing per row leaves the fit)
        codes = {f: pd.factorize(np.asarray(k), sort=True)[0] for f, k in enc.keys.items()}
        values = [*X.T[::-1], offset, wt, y,
                  *(col for z in enc.Z.values()
                    for col in np.asarray(z, float).reshape(len(y), -1).T)]
        o = np.lexsort([*values, *(codes[f] for f in codes if f != layout.primary),
                        codes[layout.primary]])
        data = P.PirlsData(X[o], y[o], wt[o], offset[o],
                           {f: np.array(z, dtype=float)[o] for f, z in enc.Z.items()},
                           {f: np.asarray(k)[o] for f, k in enc.keys.items()}, const,
                           dropped)
        P.build_index(data, layout)
        return data
    keys = enc.keys[spec.factors[0].name]
    codes, levels = pd.factorize(keys, sort=True)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(levels) + 1))
    return GlmmPartition(np.asarray(levels), starts.astype(np.int64), X[order], y[order],
                         wt[order], offset[order], const, dropped)


def check_proportion(y, name) -> None:
    bad = (y < 0) | (y > 1)
    if bad.any():
        raise DataError(f"binomial response {name!r} with weights must be a proportion in "
                        f"[0, 1]; got {num(y[bad][0])}")


def partition_keys(part, family: int) -> tuple[np.ndarray, int, dict]:
    """Primary-level keys of a partition, rows dropped, and per-level response totals (for the
    all-zero / all-success warnings)."""
    if isinstance(part, GlmmPartition):
        levels = part.levels
        ysum = np.add.reduceat(part.y, part.starts[:-1]) if len(part.y) else np.zeros(0)
        wsum = np.add.reduceat(part.wt, part.starts[:-1]) if len(part.y) else np.zeros(0)
    else:
        codes, levels = pd.factorize(part.keys[part.primary], sort=True)
        ysum = np.bincount(codes, part.y, minlength=len(levels))
        wsum = np.bincount(codes, part.wt, minlength=len(levels))
    Z = {} if isinstance(part, GlmmPartition) else part.Z
    ranges = column_ranges(part.y / part.wt if family == K.BINOMIAL else part.y, Z)
    return np.asarray(levels), part.n_dropped, {"ysum": ysum, "wsum": wsum, "ranges": ranges,
                                                "weight_sum": float(part.wt.sum())}


def with_size(part, size: float | None):
    """Set the negative binomial's size ``k`` on the cached partition before each use (the
    kernels read it beside the rows' prior weights ``wt``)."""
    if size is not None:
        part.nb_k = float(size)
    return part


def read_response(parsed, family: str):
    """``(parsed with the response column, the response column, trials text or None)``."""
    resp, trials_text = parsed.response.strip(), None
    if resp.startswith("cbind(") and resp.endswith(")"):
        if family != "binomial":
            raise ModelError("cbind(successes, failures) is a binomial response; use a count "
                             f"column for the {family} family")
        args = [p for _, p in split_top(resp[len("cbind("):-1], ",")]
        if len(args) != 2:
            raise ModelError(f"cbind() needs two arguments (successes, failures); got {resp!r}")
        a, b = args[0].strip(), args[1].strip()
        resp = a if a.isidentifier() else f"I({a})"  # formulaic reads bare '+'/'-' as terms
        trials_text = f"I(({a}) + ({b}))"
    col = resp if resp.isidentifier() else next(iter(sorted(identifiers(resp))), resp)
    return dataclasses.replace(parsed, response=resp), col, trials_text
