"""CSV missing values as R's read.csv reads them: ``NA`` and empty fields only. A level
called ``None`` (nlme's Alfalfa ``Date``), ``null`` or ``N/A`` is a level, not a missing
value (pandas' defaults dropped those rows)."""

from __future__ import annotations

import numpy as np
import pandas as pd

import daskmm


def _frame(tmp_path):
    rng = np.random.default_rng(3)
    n = 120
    d = pd.DataFrame({"y": rng.normal(size=n), "g": [f"g{i % 12}" for i in range(n)],
                      "lev": np.array(["None", "null", "N/A", "S1"])[np.arange(n) % 4]})
    d["y"] += (d.lev == "None") * 2.0
    path = tmp_path / "d.csv"
    d.to_csv(path, index=False)
    text = path.read_text().splitlines()
    text[5] = text[5].split(",")[0].replace(text[5].split(",")[0], "NA") + "," + \
        ",".join(text[5].split(",")[1:])  # one missing response, written NA
    path.write_text("\n".join(text) + "\n")
    return d, path


def test_none_null_and_na_slash_are_levels_and_na_is_missing(tmp_path):
    d, path = _frame(tmp_path)
    for mode in ("in-process", "distributed"):
        fit = daskmm.lmm("y ~ lev + (1 | g)", str(path), mode=mode)
        assert fit.nobs == len(d) - 1  # only the NA row dropped
        assert sorted(fit.fixef_names) == ["(Intercept)", "levNone", "levS1", "levnull"]
