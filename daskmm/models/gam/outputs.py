"""What a GAM adds to its result folder beyond the shared files (``daskmm fit`` and ``daskmm
run`` write both)."""

from __future__ import annotations

import pandas as pd

from daskmm.data.source import Source
from daskmm.models.gam.predict import fitted_frame


def gam_extra(result, data, plots: bool = False):
    """``fitted.parquet`` (column ``fitted``, one row per input row in input order, NaN where
    the fit dropped the row) and, with ``plots``, one PNG per smooth, as a writer of the result
    folder (:func:`daskmm.results.writing.write_outputs`'s ``extra``)."""
    def extra(tmp) -> None:
        src = data if isinstance(data, pd.DataFrame) else Source.open(data).frame()
        fitted = fitted_frame(result, src)
        if not isinstance(fitted, pd.DataFrame):
            fitted = fitted.compute()
        fitted.reset_index(drop=True).to_parquet(tmp / "fitted.parquet", index=False)
        if plots:
            result.plot(tmp / "plots", data=src)
    return extra
