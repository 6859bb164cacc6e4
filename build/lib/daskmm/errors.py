"""Exception hierarchy.

Every message says what was received, what is allowed and what to do instead, in one line, so
the CLI can print it as is.
"""

from __future__ import annotations


class DaskmmError(Exception):
    """Base class of every error daskmm raises on purpose."""


class FormulaError(DaskmmError, ValueError):
    """The formula cannot be parsed or does not describe a mixed model."""


class DataError(DaskmmError, ValueError):
    """The data do not fit the model: a missing column, a bad value, an empty input."""


class ColumnNotFoundError(DataError, KeyError):
    """A formula names a column the data lack."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ModelError(DaskmmError, ValueError):
    """The model cannot be fitted as specified (e.g. a grouping factor with one level)."""


class FitError(DaskmmError, RuntimeError):
    """The optimiser or the linear algebra failed."""


def num(x: object) -> str:
    """A number as a user writes it (``2.0``, ``3``), never ``np.float64(2.0)``."""
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            x = x.item()
        except (ValueError, TypeError):
            pass
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return repr(x)
    return repr(x) if isinstance(x, (int, float)) else str(x)
