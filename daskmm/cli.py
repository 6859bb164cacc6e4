"""Command line: ``daskmm fit DATA --formula F --out DIR``.

Outputs are written to a temporary sibling directory and renamed into place at the end, so a
failed or killed run never leaves a ``DIR`` that looks complete.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from daskmm.errors import DaskmmError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="daskmm", description="Mixed models on Dask.")
    sub = p.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a linear mixed model (lme4's lmer)")
    fit.add_argument("data", help="CSV file, Parquet file or directory, local or fsspec URL")
    fit.add_argument("--formula", required=True, help="lme4 formula, e.g. 'y ~ x + (x | g)'")
    fit.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    fit.add_argument("--factors", default="", help="comma-separated columns to treat as "
                     "categorical whatever their type")
    fit.add_argument("--weights", default=None, help="column of prior weights")
    fit.add_argument("--scheduler", default=None, help="Dask scheduler address "
                     "(default: DASK_SCHEDULER_ADDRESS, else a local cluster)")
    fit.add_argument("--mode", default="auto", choices=["auto", "gathered", "distributed"],
                     help="evaluate the objective on the client or on the workers")
    fit.add_argument("--out", required=True, help="output directory")
    fit.add_argument("-v", "--verbose", action="store_true")
    return p


def write_outputs(result, out: str | os.PathLike) -> Path:
    """Write ``summary.json``, ``summary.txt``, ``fixef.parquet`` and ``ranef.parquet``
    atomically into ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "summary.json").write_text(result.to_json(indent=2) + "\n")
        (tmp / "summary.txt").write_text(result.summary())
        result.fixef().to_parquet(tmp / "fixef.parquet", index=False)
        result.ranef_frame().to_parquet(tmp / "ranef.parquet", index=False)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fit(args: argparse.Namespace) -> int:
    import daskmm

    factors = [f.strip() for f in args.factors.split(",") if f.strip()]
    result = daskmm.lmm(args.formula, args.data, reml=not args.ml, factors=factors,
                        weights=args.weights, client=args.scheduler, mode=args.mode)
    out = write_outputs(result, args.out)
    print(result.summary())
    print(f"wrote {out}/summary.json, summary.txt, fixef.parquet, ranef.parquet")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="daskmm: %(message)s")
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"daskmm: warning: {msg}\n"
    try:
        return _fit(args)
    except DaskmmError as exc:
        print(f"daskmm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("daskmm: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
