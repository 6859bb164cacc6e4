"""Levels of a factor as R labels and sorts them (a helper of both the spec and the
transforms)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def level_label(value: object) -> str:
    """A level as R prints it (integral floats without the ``.0``)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (bool, np.bool_)):
        return "TRUE" if value else "FALSE"
    return str(value)


def sorted_levels(values: np.ndarray | pd.Series) -> list[str]:
    """Distinct values sorted (numerically when numeric), as labels."""
    u = pd.unique(pd.Series(values).dropna())
    try:
        u = np.sort(np.asarray(u))
    except TypeError:
        u = np.array(sorted(u, key=str), dtype=object)
    return [level_label(v) for v in u]
