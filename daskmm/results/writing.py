"""Writing a result directory: ``summary.json``, ``summary.txt``, ``fixef.parquet``,
``ranef.parquet``, ``model.pkl`` (what ``daskmm predict`` needs) and the result
marker, atomically (the CLI, the job runner and later the
service call this)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from daskmm.data.staging import RESULT_MARKER, result_marker, staging_dir
from daskmm.models.shared.prediction import save_model


def write_outputs(result, out: str | os.PathLike, extra=None, name: str | None = None) -> Path:
    """Write ``summary.json``, ``summary.txt``, ``fixef.parquet``, ``ranef.parquet`` and the
    result marker atomically into ``out`` (``extra(tmp_dir)`` may add files last, before the
    rename). Check ``out`` with :func:`~daskmm.data.staging.check_output` first."""
    with staging_dir(out) as tmp:
        (tmp / "summary.json").write_text(result.to_json(indent=2) + "\n")
        (tmp / "summary.txt").write_text(result.summary())
        result.fixef().to_parquet(tmp / "fixef.parquet", index=False)
        result.ranef_frame().to_parquet(tmp / "ranef.parquet", index=False)
        if getattr(result, "predictor", None) is not None:
            save_model(result.predictor, tmp)  # `daskmm predict DIR DATA` reads it
        (tmp / RESULT_MARKER).write_text(result_marker("fit", name))
        if extra is not None:
            extra(tmp)
    WRITTEN.append(Path(out))
    return Path(out)


WRITTEN: list[Path] = []
"""Result directories this process has completed (the CLI's Ctrl-C message names them)."""


def report_rows(result) -> None:
    """The dropped-rows line on stderr (it is in summary.json and summary.txt too)."""
    line = result.dropped_line()
    if line:
        print(f"daskmm: {line.strip('()')}", file=sys.stderr)
