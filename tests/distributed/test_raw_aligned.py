"""``raw_aligned``: whether a primary factor's levels already sit in one partition each, read
from the raw columns before any encoding (a GLMM shuffles first when they do not)."""

from __future__ import annotations

import dask.dataframe as dd
import pandas as pd

from daskmm.distributed.passes import raw_aligned
from daskmm.formula.spec import FactorSpec


def two_partitions(a_first, a_second, b_first=None, b_second=None) -> dd.DataFrame:
    """Rows split by position: the first lists in partition 0, the second in partition 1."""
    df = pd.DataFrame({"a": [*a_first, *a_second]})
    if b_first is not None:
        df["b"] = [*b_first, *b_second]
    ddf = dd.from_pandas(df, npartitions=2, sort=False)
    assert [len(p) for p in ddf.partitions] == [len(a_first), len(a_second)]
    return ddf


def test_disjoint_levels_are_aligned(client):
    ddf = two_partitions(["x", "y"], ["z", "w"])
    assert raw_aligned(client, ddf, FactorSpec("a", ("a",)))


def test_a_level_in_two_partitions_is_not(client):
    ddf = two_partitions(["x", "y"], ["y", "z"])
    assert not raw_aligned(client, ddf, FactorSpec("a", ("a",)))


def test_interaction_levels_compare_as_tuples(client):
    ddf = two_partitions(["x", "x"], ["x", "y"], ["1", "2"], ["3", "1"])
    assert raw_aligned(client, ddf, FactorSpec("a:b", ("a", "b")))
    ddf = two_partitions(["x", "x"], ["x", "y"], ["1", "2"], ["2", "1"])
    assert not raw_aligned(client, ddf, FactorSpec("a:b", ("a", "b")))


def test_missing_keys_do_not_count_as_a_shared_level(client):
    ddf = two_partitions(["x", None], [None, "y"])
    assert raw_aligned(client, ddf, FactorSpec("a", ("a",)))
