"""The columns of an input, and what to say when a model names one it lacks.

A fit in this process reads only the columns its model uses (:func:`daskmm.data.local
.read_local`); the frame then remembers every column of the file in ``attrs``
(:data:`ALL_COLUMNS`), so a message about a missing column lists all of them, unused ones
included, and suggests the nearest name ("did you mean 'dose'?").
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from daskmm.errors import ColumnNotFoundError

ALL_COLUMNS = "daskmm_columns"
"""``frame.attrs`` key: every column of the input the frame was read from, in file order."""
LISTED = 40
"""At most this many column names in a message."""


def data_columns(frame) -> list[str]:
    """Every column of the input ``frame`` came from (file order), not only those read."""
    attrs = getattr(frame, "attrs", None) or {}
    have = attrs.get(ALL_COLUMNS)
    return [str(c) for c in (have if have is not None else frame.columns)]


def listing(columns: Sequence[str]) -> str:
    cols = [str(c) for c in columns]
    if not cols:
        return "none"
    more = len(cols) - LISTED
    return ", ".join(cols[:LISTED]) + (f" and {more} more" if more > 0 else "")


def suggestion(name: str, columns: Iterable[str]) -> str | None:
    """The column a user most likely meant by ``name`` (case, a letter or two), or None."""
    cols = [str(c) for c in columns]
    same_case = [c for c in cols if c.lower() == name.lower()]
    if same_case:
        return same_case[0]
    close = difflib.get_close_matches(name, cols, n=1, cutoff=0.6)
    return close[0] if close else None


def missing_column(name: str, columns: Sequence[str],
                   what: str = "named in the formula") -> ColumnNotFoundError:
    """The error for a column ``name`` the data lack: the nearest name and every column."""
    near = suggestion(name, columns)
    hint = f" (did you mean {near!r}?)" if near else ""
    return ColumnNotFoundError(f"column {name!r} {what} is not in the data{hint}; the data "
                               f"have: {listing(columns)}")


def check_factors(factors: Iterable[str], columns: Sequence[str]) -> None:
    """Each column named as a factor is in the data (all of its columns, not only those the
    model reads: a factors list may name the dataset's factors, some of which this formula
    does not use, as the conformance fixtures' lists do; those are ignored).

    Raises
    ------
    ColumnNotFoundError
        A factor the data lack, with the nearest name and every column.
    """
    for f in factors:
        if f not in columns:
            raise missing_column(f, columns, "named as a factor")
