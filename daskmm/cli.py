"""Command line: ``daskmm fit``, ``daskmm ingest``, ``daskmm simulate``, ``daskmm run``.

Outputs are written to a temporary sibling directory and renamed into place at the end, so a
failed or killed run never leaves a ``DIR`` that looks complete.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from daskmm.data.staging import staging_dir
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
    fit.add_argument("--family", default="gaussian",
                     choices=["gaussian", "binomial", "poisson", "negative_binomial"],
                     help="gaussian: lmer; binomial, poisson: glmer; negative_binomial: "
                     "glmer.nb (NB2, size estimated)")
    fit.add_argument("--link", default=None, help="logit, probit, cloglog (binomial); log")
    fit.add_argument("--nagq", type=int, default=1,
                     help="GLMM: 1 = Laplace, up to 25 = adaptive Gauss-Hermite quadrature")
    fit.add_argument("--scheduler", default=None, help="Dask scheduler address "
                     "(default: DASK_SCHEDULER_ADDRESS, else a local cluster)")
    fit.add_argument("--mode", default="auto", choices=["auto", "gathered", "distributed"],
                     help="evaluate the objective on the client or on the workers")
    fit.add_argument("--out", required=True, help="output directory")
    fit.add_argument("-v", "--verbose", action="store_true")

    ing = sub.add_parser("ingest", help="write CSV/Parquet as a dataset bucketed by a factor")
    ing.add_argument("src", help="CSV or Parquet input, local path or fsspec URL")
    ing.add_argument("--by", required=True, help="grouping column to bucket by")
    ing.add_argument("--buckets", type=int, default=None,
                     help="number of buckets (default: about 2 million rows each)")
    ing.add_argument("--na-action", default="omit", choices=["omit", "fail"],
                     help="drop rows with missing values (lme4's na.omit) or stop")
    ing.add_argument("--factors", default="", help="float columns whose levels to record")
    ing.add_argument("--scheduler", default=None, help="Dask scheduler address")
    ing.add_argument("--force", action="store_true", help="replace an existing dataset")
    ing.add_argument("--out", required=True, help="dataset directory to create")
    ing.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    sim = sub.add_parser("simulate", help="simulate a dataset with known parameters")
    sim.add_argument("--rows", type=int, required=True)
    sim.add_argument("--groups", type=int, default=10_000, help="levels of g")
    sim.add_argument("--crossed", type=int, default=200, help="levels of h (0: none)")
    sim.add_argument("--buckets", type=int, default=None)
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--scheduler", default=None, help="Dask scheduler address")
    sim.add_argument("--force", action="store_true", help="replace an existing dataset")
    sim.add_argument("--out", required=True, help="dataset directory to create")
    sim.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    run = sub.add_parser("run", help="run a job file (YAML): data, model, output, cluster")
    run.add_argument("job", help="job file, e.g. jobs/example.yaml")
    run.add_argument("--scheduler", default=None, help="Dask scheduler address (overrides "
                     "the job's cluster.scheduler)")
    run.add_argument("--force", action="store_true", help="run even if the output is done")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def write_outputs(result, out: str | os.PathLike, extra=None) -> Path:
    """Write ``summary.json``, ``summary.txt``, ``fixef.parquet`` and ``ranef.parquet``
    atomically into ``out`` (``extra(tmp_dir)`` may add files last, before the rename)."""
    with staging_dir(out) as tmp:
        (tmp / "summary.json").write_text(result.to_json(indent=2) + "\n")
        (tmp / "summary.txt").write_text(result.summary())
        result.fixef().to_parquet(tmp / "fixef.parquet", index=False)
        result.ranef_frame().to_parquet(tmp / "ranef.parquet", index=False)
        if extra is not None:
            extra(tmp)
    return Path(out)


def _fit(args: argparse.Namespace) -> int:
    import daskmm

    factors = _split_list(args.factors)
    if args.family != "gaussian":
        from daskmm.glmm import glmm
        if args.ml or args.mode != "auto":
            raise DaskmmError("--ml and --mode apply to gaussian fits; a GLMM is always fitted "
                              "by maximum likelihood")
        result = glmm(args.formula, args.data, args.family, link=args.link, nagq=args.nagq,
                      factors=factors, weights=args.weights, client=args.scheduler)
        out = write_outputs(result, args.out)
        print(result.summary())
        print(f"wrote {out}/summary.json, summary.txt, fixef.parquet, ranef.parquet")
        return 0
    result = daskmm.lmm(args.formula, args.data, reml=not args.ml, factors=factors,
                        weights=args.weights, client=args.scheduler, mode=args.mode)
    out = write_outputs(result, args.out)
    print(result.summary())
    print(f"wrote {out}/summary.json, summary.txt, fixef.parquet, ranef.parquet")
    return 0


def _split_list(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def _ingest(args: argparse.Namespace) -> int:
    from daskmm.data.ingest import ingest

    m = ingest(args.src, args.by, args.out, buckets=args.buckets, na_action=args.na_action,
               factors=_split_list(args.factors), client=args.scheduler, force=args.force)
    dropped = sum(m.na_dropped.values())
    print(f"wrote {args.out}: {m.nrows} rows in {m.buckets} buckets by {m.key!r}; "
          f"{dropped} rows dropped for missing values"
          + (f" ({', '.join(f'{c}: {k}' for c, k in m.na_dropped.items())})" if dropped else ""))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from daskmm.data.simulate import simulate

    m = simulate(args.out, args.rows, groups=args.groups, crossed=args.crossed,
                 buckets=args.buckets, seed=args.seed, client=args.scheduler, force=args.force)
    print(f"wrote {args.out}: {m.nrows} rows in {m.buckets} buckets by {m.key!r}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from daskmm.jobs.runner import run_job

    out = run_job(args.job, scheduler=args.scheduler, force=args.force)
    if out["status"] == "skipped":
        print(f"job already done: {out['output']} (use --force to run it again)")
    else:
        print(out["result"].summary())
        print(f"wrote {out['output']}")
    return 0


COMMANDS = {"fit": _fit, "ingest": _ingest, "simulate": _simulate, "run": _run}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    verbose = getattr(args, "verbose", False) or (args.command != "fit"
                                                   and not getattr(args, "quiet", False))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="daskmm: %(message)s")
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"daskmm: warning: {msg}\n"
    try:
        return COMMANDS[args.command](args)
    except DaskmmError as exc:
        print(f"daskmm: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("daskmm: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
