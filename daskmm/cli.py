"""Command line: ``daskmm fit``, ``daskmm ingest``, ``daskmm simulate``, ``daskmm run``,
``daskmm gwas``, ``daskmm gwas-ingest``, ``daskmm predict``; the fitting service's ``daskmm
serve`` and its clients ``daskmm submit``, ``status``, ``fetch``, ``cancel``.

Outputs are written to a temporary sibling directory and renamed into place at the end, so a
failed or killed run never leaves a ``DIR`` that looks complete.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import sys
import threading
import warnings

from daskmm.data.staging import check_output
from daskmm.errors import DaskmmError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="daskmm", description="Mixed models on Dask.")
    sub = p.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a mixed model (lme4's lmer, glmer) or, for a formula "
                         "with s()/te()/ti() terms, a GAM (mgcv's bam)")
    fit.add_argument("data", help="CSV file, Parquet file or directory, local or fsspec URL")
    fit.add_argument("--formula", required=True, help="lme4 formula, e.g. 'y ~ x + (x | g)', "
                     "or mgcv formula, e.g. 'y ~ s(x0) + te(x1, x2) + z'")
    fit.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    fit.add_argument("--method", default=None, choices=["fREML", "REML", "ML"],
                     help="GAM: fREML (bam's default), REML or ML; mixed model: REML or ML")
    fit.add_argument("--rho", type=float, default=0.0,
                     help="GAM: AR1 correlation of the residuals within series (bam's rho)")
    fit.add_argument("--ar-start", default=None, help="GAM: logical column, true on the "
                     "first row of each series (bam's AR.start)")
    fit.add_argument("--discrete", action="store_true", help="GAM: fit on a covariate grid "
                     "(about 1000 cells a smooth), faster and approximate")
    fit.add_argument("--factors", default="", help="comma-separated columns to treat as "
                     "categorical whatever their type")
    fit.add_argument("--weights", default=None, help="column of prior weights")
    fit.add_argument("--family", default="gaussian",
                     choices=["gaussian", "binomial", "poisson", "negative_binomial",
                              "gamma", "inverse_gaussian"],
                     help="gaussian: lmer (with --link log or inverse: glmer); binomial, "
                     "poisson, gamma, inverse_gaussian: glmer; negative_binomial: glmer.nb "
                     "(NB2, size estimated)")
    fit.add_argument("--link", default=None, help="logit, probit, cloglog (binomial); log; "
                     "inverse, identity (gamma, inverse_gaussian, gaussian); 1/mu^2 "
                     "(inverse_gaussian)")
    fit.add_argument("--nagq", type=int, default=1,
                     help="GLMM: 1 = Laplace, up to 25 = adaptive Gauss-Hermite quadrature")
    fit.add_argument("--ddf", default=None, choices=["satterthwaite", "kenward-roger"],
                     help="LMM: degrees of freedom and p-values for the fixed effects "
                     "(lmerTest's t tests)")
    fit.add_argument("--ci", default=None, choices=["wald", "profile", "boot"],
                     help="LMM: confidence intervals (lme4's confint, oldNames = FALSE)")
    fit.add_argument("--level", type=float, default=None, help="--ci: confidence level "
                     "(0.95)")
    fit.add_argument("--nboot", type=int, default=None,
                     help="--ci boot: parametric bootstrap replicates (500; at least 2)")
    fit.add_argument("--seed", type=int, default=None,
                     help="--ci boot: seed of the replicates (recorded in summary.json); "
                     "--crossed matrix-free: seed of its probes (0)")
    fit.add_argument("--crossed", default=None,
                     choices=["auto", "dense", "sparse", "matrix-free"],
                     help="LMM, binomial and Poisson GLMM: how crossed random effects are "
                     "fitted. dense: one dense block of the crossed levels (lme4's criterion; "
                     "cost the cube of those levels); for random intercepts (1 | f): sparse, "
                     "lme4's criterion by a "
                     "sparse factor of that block; matrix-free, conjugate gradients and "
                     "stochastic Lanczos quadrature, the criterion an estimate with its "
                     "standard error; auto (default): dense up to 1000 crossed levels, then "
                     "sparse where its factor is small, else matrix-free")
    fit.add_argument("--scheduler", default=None, help="Dask scheduler address "
                     "(default: DASK_SCHEDULER_ADDRESS, else a local cluster)")
    fit.add_argument("--mode", default="auto",
                     choices=["auto", "in-process", "gathered", "distributed"],
                     help="in-process: no cluster; gathered: statistics on a cluster, the "
                     "optimiser here; distributed: every evaluation on the workers; auto: in "
                     "process for small data when no scheduler is given (the default)")
    fit.add_argument("--out", required=True, help="output directory: a new folder, or a "
                     "previous daskmm fit with --force")
    fit.add_argument("--force", action="store_true", help="replace a previous daskmm fit at "
                     "--out (never a folder daskmm did not write)")
    fit.add_argument("--all-fit", action="store_true", help="refit with every optimiser "
                     "(lme4's allFit) and print the tables side by side; also written to "
                     "OUT/allfit.txt (LMMs and GLMMs)")
    fit.add_argument("--allow-uncertified", action="store_true", help="exit 0 even when the "
                     "fit's own check of its optimum fails (the summary says what failed)")
    fit.add_argument("--plots", action="store_true", help="write PNG plots under OUT/plots: "
                     "GAM: one per smooth (with its +-2 SE band and a rug); LMM: caterpillar "
                     "plots, residuals against fitted, QQ plots of residuals and random "
                     "effects, and with --ci profile the zeta plots; GLMM: DHARMa's scaled "
                     "residual plots (250 simulations, seed --seed or 123; their tests go "
                     "into summary.json) and caterpillar plots")
    fit.add_argument("-v", "--verbose", action="store_true")
    fit.add_argument("-q", "--quiet", action="store_true",
                     help="no progress lines (the optimiser's, after 2 s)")

    ing = sub.add_parser("ingest", help="write CSV/Parquet as a dataset bucketed by a factor")
    ing.add_argument("src", help="CSV or Parquet input, local path or fsspec URL")
    ing.add_argument("--by", required=True, help="grouping column to bucket by")
    ing.add_argument("--buckets", type=int, default=None,
                     help="number of buckets (default: about 2 million rows each)")
    ing.add_argument("--na-action", default="keep", choices=["keep", "omit", "fail"],
                     help="keep rows with missing values (each fit drops those missing a "
                     "value it uses, as lme4's na.omit, and reports them), drop every row "
                     "with a missing value, or stop")
    ing.add_argument("--factors", default="", help="float columns whose levels to record")
    ing.add_argument("--scheduler", default=None, help="Dask scheduler address")
    ing.add_argument("--force", action="store_true", help="replace an existing dataset")
    ing.add_argument("--out", required=True, help="dataset directory to create")
    ing.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    sim = sub.add_parser("simulate", help="simulate a dataset with known parameters")
    sim.add_argument("--rows", type=int, required=True)
    sim.add_argument("--groups", type=int, default=10_000, help="levels of g")
    sim.add_argument("--crossed", type=int, default=200, help="levels of h (0: none)")
    sim.add_argument("--buckets", type=int, default=None, help="number of buckets (>= 1)")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--scheduler", default=None, help="Dask scheduler address")
    sim.add_argument("--force", action="store_true", help="replace an existing dataset")
    sim.add_argument("--out", required=True, help="dataset directory to create")
    sim.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    pr = sub.add_parser("predict", help="predictions of a fitted LMM, GLMM or GAM for new "
                        "rows, from its result folder (model.pkl), without refitting")
    pr.add_argument("result", help="folder written by daskmm fit --out")
    pr.add_argument("data", help="rows to predict: CSV or Parquet (the response is not needed)")
    pr.add_argument("--out", required=True, help="file to write: .parquet or .csv, a column "
                    "'fit' in the rows' order (NaN where a column the model uses is missing; "
                    "with --se-fit also 'se_fit')")
    pr.add_argument("--type", choices=["response", "link"], default="response",
                    help="the scale of a GLMM's or GAM's predictions (predict()'s type; "
                    "default response)")
    pr.add_argument("--se-fit", action="store_true",
                    help="a GAM's standard errors too (predict.gam's se.fit = TRUE)")
    pr.add_argument("--no-re", action="store_true", help="the fixed part only (re.form = NA)")
    pr.add_argument("--allow-new-levels", action="store_true",
                    help="predict unseen levels at the population level (default: refuse)")
    pr.add_argument("--scheduler", default=None, help="Dask scheduler address (default: this "
                    "process)")
    pr.add_argument("--force", action="store_true", help="replace an existing --out file")
    gw = sub.add_parser("gwas", help="mixed-model association scan (FaST-LMM's exact test, "
                        "leaving out each chromosome)")
    src = gw.add_mutually_exclusive_group(required=True)
    src.add_argument("--bed", help="PLINK prefix: PREFIX.bed, .bim, .fam")
    src.add_argument("--zarr", help="sgkit / VCF-Zarr store (e.g. from daskmm gwas-ingest)")
    gw.add_argument("--pheno", required=True, help="trait table: FID IID or one sample-id "
                    "column, then traits (whitespace or CSV, with a header)")
    gw.add_argument("--pheno-name", nargs="+", default=None, help="traits to scan "
                    "(default: every column of --pheno but the ids)")
    gw.add_argument("--covar", default=None, help="covariate table (as --pheno)")
    gw.add_argument("--covar-name", nargs="+", default=None, help="covariates to use "
                    "(default: every column of --covar but the ids); an intercept is added")
    gw.add_argument("--no-loco", action="store_true", help="one relationship matrix from "
                    "every chromosome (default: leave the tested chromosome out)")
    gw.add_argument("--maf", type=float, default=0.01, help="skip variants with a minor "
                    "allele frequency below this (default 0.01)")
    gw.add_argument("--max-missing", type=float, default=0.1, help="skip variants with a "
                    "larger missing-call rate (default 0.1)")
    gw.add_argument("--mode", default="exact", choices=["exact", "sparse"],
                    help="exact: FaST-LMM's dense scan, LOCO; sparse: fastGWA's sparse GRM of "
                    "close relatives (biobank N), no LOCO")
    gw.add_argument("--sparse-threshold", type=float, default=0.05, help="sparse mode: GRM "
                    "entries kept above this (default 0.05, fastGWA's)")
    gw.add_argument("--grm-variants", type=int, default=None, help="sparse mode: evenly "
                    "spaced variants for the GRM (default: all)")
    gw.add_argument("--block-size", type=int, default=None, help="variants per task")
    gw.add_argument("--trait-type", nargs="+", default=["quantitative"],
                    metavar="TYPE|TRAIT=TYPE",
                    help="quantitative (default) or binary: case/control traits coded 0/1 or "
                    "1/2 (PLINK), scanned as SAIGE does (logistic mixed null, score test with "
                    "saddlepoint p-values); or per trait, e.g. asthma=binary bmi=quantitative")
    gw.add_argument("--firth-p", type=float, default=0.01, help="binary traits: Firth effects "
                    "for variants with a p-value below this (default 0.01; 0: none)")
    gw.add_argument("--scheduler", default=None, help="Dask scheduler address")
    gw.add_argument("--no-plots", action="store_true", help="skip manhattan.png and qq.png")
    gw.add_argument("--force", action="store_true", help="replace a previous scan at --out")
    gw.add_argument("--out", required=True, help="result folder; a rerun of an unfinished "
                    "scan resumes it")
    gw.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    gi = sub.add_parser("gwas-ingest", help="convert PLINK .bed to a chunked Zarr store "
                        "(sgkit layout) for repeated scans")
    gi.add_argument("--bed", required=True, help="PLINK prefix")
    gi.add_argument("--out", required=True, help="Zarr store to create (a new folder)")
    gi.add_argument("--chunk-variants", type=int, default=10_000)
    gi.add_argument("--scheduler", default=None, help="Dask scheduler address")
    gi.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    run = sub.add_parser("run", help="run a job file (YAML): data, model, output, cluster")
    run.add_argument("job", help="job file, e.g. jobs/example.yaml")
    run.add_argument("--scheduler", default=None, help="Dask scheduler address (overrides "
                     "the job's cluster.scheduler)")
    run.add_argument("--force", action="store_true", help="run even if the output is done")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    sv = sub.add_parser("serve", help="run the fitting service (HTTP API, job store, web page)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--results", required=True, help="where the jobs' results go: a folder, or "
                    "an fsspec URL (s3://bucket/prefix; then give --state-dir)")
    sv.add_argument("--state-dir", default=None, help="local folder for the job store and "
                    "job staging (default: RESULTS/.daskmm-service; needed with a URL)")
    sv.add_argument("--store", default=None, help="job store URL (default: SQLite file "
                    "RESULTS/daskmm-service.sqlite; postgresql+psycopg://... for replicas)")
    sv.add_argument("--data-root", action="append", default=[], dest="data_roots",
                    help="a folder (or URL prefix) jobs may read data from; repeatable")
    sv.add_argument("--tokens", required=True, help="file of 'owner token' lines")
    sv.add_argument("--scheduler", default=None, help="the shared Dask scheduler's address")
    sv.add_argument("--max-concurrent", type=int, default=2, help="jobs run at once (2)")
    sv.add_argument("--max-body", type=int, default=1 << 20, help="request size limit, bytes")
    sv.add_argument("--replica", default=None, help="this server's name in the store "
                    "(default: the host name); one name a replica")
    sv.add_argument("--standby", type=int, default=1, help="job processes kept warm (their "
                    "imports done) for the next jobs (1; 0: start each when its job starts)")

    for name, what in (("submit", "submit a job file to a fitting service"),
                       ("status", "a service job's state and progress"),
                       ("fetch", "download a service job's results"),
                       ("cancel", "cancel a service job")):
        c = sub.add_parser(name, help=what + " (token: DASKMM_TOKEN)")
        c.add_argument("job" if name == "submit" else "id",
                       help="job file (YAML)" if name == "submit" else "job id")
        c.add_argument("--server", default=None, help="service URL (default DASKMM_SERVER, "
                       "else http://127.0.0.1:8000)")
        if name == "submit":
            c.add_argument("--priority", type=int, default=0, help="higher runs first (0)")
            c.add_argument("--idempotency-key", default=None)
            c.add_argument("--wait", action="store_true", help="wait until the job ends")
        if name == "fetch":
            c.add_argument("--out", required=True, help="new folder for the result files")
            c.add_argument("--force", action="store_true")
    return p


def _serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from daskmm.service.app import Config, serve
    from daskmm.service.auth import Tokens
    for flag, value, low in (("--max-concurrent", args.max_concurrent, 1),
                             ("--max-body", args.max_body, 1024), ("--standby", args.standby, 0),
                             ("--port", args.port, 1)):
        if value < low:
            raise DaskmmError(f"{flag} {value}: give {low} or more"
                              + (" (jobs run at once)" if flag == "--max-concurrent" else ""))
    if args.port > 65535:
        raise DaskmmError(f"--port {args.port}: give a port from 1 to 65535")
    if "://" in args.results:
        if not args.state_dir:
            raise DaskmmError(f"--results {args.results!r} is a URL; give --state-dir, a local "
                              "folder for the job store and job staging")
        results: str | Path = args.results
        state = Path(args.state_dir).resolve()
    else:
        results = Path(args.results).resolve()
        if results.exists() and not results.is_dir():
            raise DaskmmError(f"--results {args.results!r} is a file; give a folder")
        results.mkdir(parents=True, exist_ok=True)
        state = Path(args.state_dir).resolve() if args.state_dir else results
    state.mkdir(parents=True, exist_ok=True)
    for root in args.data_roots:
        if "://" not in root and not Path(root).is_dir():
            raise DaskmmError(f"--data-root {root!r} is not a folder")
    _disjoint_roots(args, results, state)
    store = args.store or f"sqlite:///{state / 'daskmm-service.sqlite'}"
    cfg = Config(results=str(results), store_url=store, tokens=Tokens.read(args.tokens),
                 data_roots=list(args.data_roots), scheduler=args.scheduler,
                 max_concurrent=args.max_concurrent, max_body=args.max_body,
                 replica=args.replica, standby=args.standby,
                 state_dir=state / ".daskmm-service" if args.state_dir else None)
    serve(cfg, args.host, args.port)
    return 0


def _disjoint_roots(args: argparse.Namespace, results, state) -> None:
    """Jobs read the data roots: no data root may hold (or lie in) the results, the
    service's state (job store and job files) or the tokens file, or jobs could read other
    owners' results, every job's body, or the tokens."""
    from pathlib import Path

    def real(p) -> Path:
        return Path(os.path.realpath(p))

    private = [("--tokens", real(args.tokens)), ("--state-dir", real(state))]
    if "://" not in str(results):
        private.append(("--results", real(results)))
    if args.store and args.store.startswith("sqlite:///"):
        private.append(("--store", real(args.store[len("sqlite:///"):])))
    for root in args.data_roots:
        if root.startswith("file://"):
            root = root[len("file://"):]
        if "://" in root:
            continue
        r = real(root)
        for flag, p in private:
            if r == p or r in p.parents or (flag not in ("--tokens", "--store")
                                             and p in r.parents):
                raise DaskmmError(f"--data-root {root!r} and {flag} {str(p)!r} overlap: jobs "
                                  "read every data root, so they could read other owners' "
                                  "results, the job store or the tokens; give folders apart "
                                  "from each other")


def _service_command(args: argparse.Namespace) -> int:
    import json
    import time

    from daskmm.service.client import ServiceClient
    c = ServiceClient(args.server)
    if args.command == "submit":
        out = c.submit(args.job, args.priority, args.idempotency_key)
        print(out["id"] if out.get("created", True) else
              f"{out['id']} (already submitted: {out['state']})")
        if not args.wait:
            return 0
        said = None
        while True:
            job = c.status(out["id"])
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            line = _progress_line(job)
            if line != said:  # the job's progress as it changes, on stderr
                print(f"daskmm: {out['id']} {line}", file=sys.stderr, flush=True)
                said = line
            time.sleep(1.0)
        print(f"{job['id']} {job['state']}" + (f": {job['error']}" if job["error"] else ""))
        return 0 if job["state"] == "succeeded" else 1
    if args.command == "status":
        job = c.status(args.id)
        doc = {k: job[k] for k in ("id", "name", "state", "progress", "error")}
        doc["timings"] = _readable_times(job["timings"])
        print(json.dumps(doc, indent=1))
        return 0
    if args.command == "cancel":
        out = c.cancel(args.id)
        print(f"{out['id']} {out['state']}" + (" (stopping)" if out.get("cancel_requested")
                                               and out["state"] == "running" else ""))
        return 0
    files = c.fetch(args.id, args.out, force=args.force)
    print(f"wrote {len(files)} files to {args.out}")
    return 0


class _FitProgress:
    """Each step's progress on stderr once the step has run :data:`AFTER_S` seconds: on a
    terminal one line rewritten in place, otherwise a line every :data:`EVERY_S` seconds (and
    a counted step's last line). The steps (from :mod:`daskmm.events`), timed from their own
    start (the first from the command's):

    - the optimiser: ``daskmm: optimising: 120 evaluations, criterion 1743.63 (12 s)``, with a
      GLMM's last PIRLS pass: ``..., PIRLS pass 7, deviance 1234.5 (12 s)``;
    - replicates: ``daskmm: bootstrap: 120/500 replicates (14 s)``;
    - profiles: ``daskmm: profile: 2/5 parameters, sigma: 7 points (14 s)``.
    """

    AFTER_S = 2.0
    EVERY_S = 5.0
    STEPS = {"evaluation": "optimising", "pirls": "optimising",
             "replicates_start": "replicates", "replicate": "replicates",
             "profile_start": "profile", "profile_point": "profile", "profile": "profile"}
    """The step each event belongs to; ``*_start`` events begin a new one."""

    def __init__(self):
        import time
        self.clock = time.monotonic
        self.t0 = self.clock()
        self.last = self.t0
        self.tty = sys.stderr.isatty()
        self.shown = False  # a line of the current step was printed
        self.step: str | None = None
        self.since: float | None = None  # the current step's start (None: the command's)
        self.at = self.t0  # the current step's last event
        self.state: dict = {}
        self.width = 0

    def __call__(self, kind: str, fields: dict) -> None:
        step = self.STEPS.get(kind)
        if step is None:
            return
        now = self.clock()
        if step != self.step or kind.endswith("_start"):
            self._begin(step, now)
        self.at = now
        st = self.state
        st.update(fields)
        if kind == "profile":  # a parameter finished: no current point until the next one
            st.pop("points", None)
        if kind == "pirls":
            st["pirls"] = True
        final = kind in ("replicate", "profile") and fields.get("done") == fields.get("total")
        every = 0.5 if self.tty else self.EVERY_S
        if now - self._since() < self.AFTER_S or (self.shown and now - self.last < every
                                                  and not final):
            return
        self.last, self.shown = now, True
        self._show(now)

    def _since(self) -> float:
        return self.t0 if self.since is None else self.since

    def _show(self, now: float) -> None:
        text = f"daskmm: {self._text()} ({now - self._since():.0f} s)"
        if self.tty:
            print("\r" + text.ljust(self.width), end="", file=sys.stderr, flush=True)
            self.width = len(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def _begin(self, step: str, now: float) -> None:
        """A new step: on a terminal the last one's line is brought up to date and kept."""
        if self.tty and self.shown:
            self._show(self.at)  # as at the last step's last event
            print(file=sys.stderr, flush=True)
        if self.step is not None:
            self.since = now
        self.step, self.state, self.shown, self.width = step, {}, False, 0

    def _text(self) -> str:
        st = self.state
        if self.step == "replicates":
            return (f"{st.get('label', 'replicates')}: {st.get('done', 0)}/{st.get('total')} "
                    "replicates")
        if self.step == "profile":
            text = f"profile: {st.get('done', 0)}/{st.get('total')} parameters"
            if st.get("points"):
                text += f", {st['parameter']}: {st['points']} points"
            return text
        best = st.get("best")
        text = (f"optimising: {st.get('feval', 0)} evaluations"
                + (f", criterion {best:.6g}" if best is not None and best < float("inf")
                   else ""))
        if st.get("pirls"):
            text += f", PIRLS pass {st['npass']}, deviance {st['deviance']:.6g}"
        return text

    def end(self) -> None:
        from daskmm.events import set_listener
        set_listener(None)
        if self.tty and self.shown:
            self._show(self.at)
            print(file=sys.stderr, flush=True)


def _progress_line(job: dict) -> str:
    """A service job's state and progress as one line (``running: optimising, 24
    evaluations, PIRLS pass 3 (cluster)``, ``running: bootstrap, 120/500 replicates, 45
    evaluations (in-process)``), as the web page writes it."""
    p = job.get("progress") or {}
    parts = [job["state"]]
    if p.get("phase"):
        text = str(p["phase"])
        if p.get("total"):
            text += f", {p.get('done') or 0}/{p['total']} {p.get('unit', '')}".rstrip()
        if p.get("evaluations"):
            text += f", {p['evaluations']} evaluations"
        if p.get("pirls"):
            text += f", PIRLS pass {p['pirls']}"
        if p.get("passes"):
            text += f", {p['passes']} pass" + ("" if p["passes"] == 1 else "es")
        if p.get("where"):
            text += f" ({p['where']})"
        parts.append(text)
    return ": ".join(parts)


def _readable_times(timings: dict) -> dict:
    """The service's epoch seconds as local ISO 8601 times (``2026-12-07T00:09:12+00:00``),
    durations to 0.1 s."""
    import datetime

    out = {}
    for k, v in timings.items():
        if v is not None and k.endswith("_at"):
            v = datetime.datetime.fromtimestamp(v).astimezone().isoformat(timespec="seconds")
        elif v is not None and k.endswith("_s"):
            v = round(float(v), 1)
        out[k] = v
    return out


FLAGS = {"reml": "--ml", "client": "--scheduler", "ar_start": "--ar-start"}
"""Options whose flag is not ``--`` and the option's name."""


def _spell(name: str, value: object) -> str:
    """An option as the command line writes it: ``--nagq 7``, ``--discrete``."""
    if name == "reml":
        return "--ml" if value is False else "--method REML"
    flag = FLAGS.get(name, "--" + name.replace("_", "-"))
    if isinstance(value, bool) or value is True:
        return flag
    if isinstance(value, (list, tuple)):
        return f"{flag} {','.join(map(str, value))}"
    return f"{flag} {value}"


def _fit_options(args: argparse.Namespace) -> dict:
    """The fit's options the command line set (:func:`daskmm.api.given_options`)."""
    from daskmm.api import DEFAULTS, given_options
    values = {"link": args.link, "nagq": args.nagq, "factors": _split_list(args.factors),
              "weights": args.weights, "client": args.scheduler, "mode": args.mode,
              "method": args.method, "rho": args.rho, "ar_start": args.ar_start,
              "discrete": args.discrete, "ddf": args.ddf, "ci": args.ci,
              "level": args.level, "nboot": args.nboot,
              "crossed": args.crossed,
              # the seed is the bootstrap's or the matrix-free path's; a GLMM's --plots
              # takes it for DHARMa's draws
              "seed": args.seed if args.ci == "boot" or args.crossed == "matrix-free"
              else None}
    if args.ml:
        if args.method not in (None, "ML"):
            raise DaskmmError(f"--ml and --method {args.method} disagree; give one of them")
        values["reml"] = False
    # a flag not given is None (--level, --nboot): the option's own default then
    return given_options({k: v for k, v in values.items() if v is not None or
                          DEFAULTS[k] is None})


def _fit(args: argparse.Namespace) -> int:
    from daskmm.models.registry import check
    from daskmm.results.base import require_certified
    from daskmm.results.writing import report_rows, write_outputs

    model, options = check(args.formula, args.family, _fit_options(args), spell=_spell)
    if args.all_fit and model.kind == "gam":
        raise DaskmmError("--all-fit applies to LMMs and GLMMs (a GAM's smoothing parameters "
                          "have one optimiser, fREML's Newton)")
    out = check_output(args.out, "fit", force=args.force, inputs=[args.data], what="--out")
    result = model.fit(args.formula, args.data, args.family, options)
    extra = model.outputs(result, args.data, plots=args.plots, seed=args.seed)
    allfit = None
    if args.all_fit:
        allfit = result.all_fit()
        inner = extra

        def extra(tmp) -> None:
            if inner is not None:
                inner(tmp)
            (tmp / "allfit.txt").write_text(allfit.summary() + "\n")
    write_outputs(result, out, extra=extra)
    print(result.summary())
    if allfit is not None:
        print(allfit.summary())
    report_rows(result)
    files = ("fixef.parquet, fitted.parquet, model.pkl" if model.kind == "gam" else
             "fixef.parquet, ranef.parquet, model.pkl")
    print(f"wrote {out}/summary.json, summary.txt, {files}"
          + (", plots" if args.plots else "") + f" (fitted {result.mode})")
    require_certified(result, args.allow_uncertified, "--allow-uncertified", written=str(out))
    return 0


def _split_list(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def _ingest(args: argparse.Namespace) -> int:
    from daskmm.data.ingest import ingest

    m = ingest(args.src, args.by, args.out, buckets=args.buckets, na_action=args.na_action,
               factors=_split_list(args.factors), client=args.scheduler, force=args.force)
    dropped = sum(m.na_dropped.values())
    kept = sum(m.na_counts.values())
    print(f"wrote {args.out}: {m.nrows} rows in {m.buckets} buckets by {m.key!r}; "
          f"{dropped} rows dropped for missing values"
          + (f" ({', '.join(f'{c}: {k}' for c, k in m.na_dropped.items())})" if dropped else "")
          + (f"; missing values kept ({', '.join(f'{c}: {k}' for c, k in m.na_counts.items())})"
             ", each fit drops the rows it cannot use and reports them" if kept else ""))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from daskmm.data.simulate import simulate

    m = simulate(args.out, args.rows, groups=args.groups, crossed=args.crossed,
                 buckets=args.buckets, seed=args.seed, client=args.scheduler, force=args.force)
    print(f"wrote {args.out}: {m.nrows} rows in {m.buckets} buckets by {m.key!r}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from daskmm.models.shared.prediction import load_model

    out = Path(args.out).resolve()
    if out.suffix not in (".parquet", ".csv"):
        raise DaskmmError(f"--out {args.out!r}: give a .parquet or .csv file name")
    if out == Path(args.data).resolve() or Path(args.result).resolve() in out.parents:
        raise DaskmmError(f"--out {args.out!r} would overwrite the input data or the result "
                          "folder; give another path")
    if out.is_dir():
        raise DaskmmError(f"--out {args.out!r} is a folder; give a .parquet or .csv file name")
    if out.exists() and not args.force:
        raise DaskmmError(f"--out {args.out!r} exists; give a new file name or --force to "
                          "replace it")
    if not out.parent.is_dir():
        raise DaskmmError(f"--out {args.out!r}: folder {str(out.parent)!r} does not exist")
    pred = load_model(args.result)
    kw = {"re": not args.no_re, "allow_new_levels": args.allow_new_levels}
    gam = type(pred).__name__ == "GamPredictor"
    if gam:
        kw.update(kind=args.type, se_fit=args.se_fit)
    elif args.se_fit:
        raise DaskmmError("--se-fit: standard errors of predictions are a GAM's "
                          "(predict.gam); lme4's predict() for LMMs and GLMMs has none")
    elif hasattr(pred, "base"):  # a GLMM's rows
        kw["kind"] = args.type
    series = pred.predict(args.data, **kw)
    if args.scheduler:
        from daskmm.distributed.client import client_for
        with client_for(args.scheduler) as c:
            values = c.compute(series).result()
    else:
        values = series.compute()
    frame = values.reset_index(drop=True)
    frame = frame.to_frame("fit") if isinstance(frame, pd.Series) else frame
    tmp = out.with_name(f".{out.name}.partial")
    if out.suffix == ".parquet":
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False)
    os.replace(tmp, out)
    n_na = int(frame["fit"].isna().sum())
    print(f"wrote {out}: {len(frame)} predictions"
          + (f" ({n_na} NaN: a column the model uses is missing there)" if n_na else ""))
    return 0


def _trait_type_arg(values: list[str]) -> str | dict[str, str]:
    """``--trait-type``: one type for every trait, or ``TRAIT=TYPE`` pairs."""
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    bad = [v for v in values if v.count("=") != 1]
    if bad:
        raise DaskmmError(f"--trait-type {' '.join(values)}: give one type (quantitative or "
                          "binary) for every trait, or TRAIT=TYPE pairs; "
                          f"{bad[0]!r} is neither")
    return dict(v.split("=") for v in values)


def _gwas(args: argparse.Namespace) -> int:
    from daskmm.models.gwas import gwas

    r = gwas(bed=args.bed, zarr=args.zarr, pheno=args.pheno, pheno_name=args.pheno_name,
             covar=args.covar, covar_name=args.covar_name, out=args.out,
             loco=False if args.no_loco else None, maf=args.maf,
             max_missing=args.max_missing, mode=args.mode,
             sparse_threshold=args.sparse_threshold, grm_variants=args.grm_variants,
             block_size=args.block_size, client=args.scheduler,
             force=args.force, plot=not args.no_plots,
             trait_type=_trait_type_arg(args.trait_type), firth_p=args.firth_p)
    print(r.summary())
    print(f"wrote {r.path}/results.parquet, skipped.parquet, summary.json, summary.txt"
          + ("" if args.no_plots else ", manhattan.png, qq.png"))
    return 0


def _gwas_ingest(args: argparse.Namespace) -> int:
    from daskmm.models.gwas.genotypes import BedGenotypes, bed_to_zarr

    if args.chunk_variants < 1:
        raise DaskmmError(f"--chunk-variants {args.chunk_variants}; give a positive number")
    src = BedGenotypes(args.bed)
    out = check_output(args.out, "zarr", inputs=[str(f) for f in src.files()], what="--out")
    if out.exists() and any(out.iterdir()):
        raise DaskmmError(f"--out {str(out)!r} exists and is not empty; give a new folder")
    if args.scheduler:
        from daskmm.distributed.client import client_for
        with client_for(args.scheduler) as c:
            bed_to_zarr(src, out, args.chunk_variants, client=c)
    else:
        bed_to_zarr(src, out, args.chunk_variants)
    print(f"wrote {out}: {src.n_variants} variants x {src.n_samples} samples "
          f"(call_genotype, chunks of {args.chunk_variants} variants)")
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


COMMANDS = {"fit": _fit, "ingest": _ingest, "simulate": _simulate, "run": _run,
            "gwas": _gwas, "gwas-ingest": _gwas_ingest, "predict": _predict, "serve": _serve,
            "submit": _service_command, "status": _service_command,
            "fetch": _service_command, "cancel": _service_command}


_DISK = {errno.ENOSPC: ("the disk is full", "free space there"),
         errno.EDQUOT: ("the disk quota is exceeded", "free space or raise the quota"),
         errno.EFBIG: ("a file would exceed the file-size limit",
                       "raise the limit (ulimit -f) or write elsewhere"),
         errno.EROFS: ("the file system is read-only", "give a folder on a writable one"),
         errno.EACCES: ("permission is denied", "give a path you may use"),
         errno.EPERM: ("the operation is not permitted", "give a path you may use"),
         errno.EIO: ("the device reported an input/output error", "check the disk")}


def _os_error(exc: OSError, args: argparse.Namespace | None) -> str | None:
    """One line for a file-system error: what happened, where, and what to do."""
    if exc.errno not in _DISK and exc.filename is None:
        return None
    what, todo = _DISK.get(exc.errno, (exc.strerror or type(exc).__name__, "check the path"))
    where = exc.filename or getattr(args, "out", None)
    at = f" at {str(where)!r}" if where else ""
    left = (" (no partial output was kept)" if exc.filename is None and
            getattr(args, "out", None) else "")
    verb = "write" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS) \
        else "access"
    return f"cannot {verb}{at}: {what} ({exc.strerror or exc}); {todo}{left}"


def explain(exc: BaseException, args: argparse.Namespace | None = None) -> str:
    """One line for an exception that is not one of daskmm's own: what a reader of CSV or
    Parquet or the file system said, or, for what daskmm failed to check, that it failed
    and how to report it."""
    if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
        said = _os_error(exc, args)
        if said is not None:
            return said
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if "Mismatched dtypes found in `pd.read_csv`" in text:
        rows = re.findall(r"^\|\s*(.+?)\s*\|\s*(\S+)\s*\|\s*(\S+)\s*\|$", text, re.M)
        rows = [r for r in rows if r[0] != "Column"]
        cols = ", ".join(f"{c!r} (a {found} value where the first rows are {want})"
                         for c, found, want in rows)
        return (f"the CSV input has a value that does not match the type of its column in a "
                f"later part of the file: {cols or 'see the data'}; fix or remove that "
                "value, or convert the file to Parquet with explicit types")
    mod = type(exc).__module__ or ""
    if type(exc).__name__ == "ParserError" or "Error tokenizing data" in text:
        return f"cannot read the CSV input: {first} (a row with more or fewer fields?)"
    if mod.startswith("pyarrow"):
        return f"cannot read the Parquet input: {first}"
    if isinstance(exc, UnicodeDecodeError):
        return f"cannot read the input as UTF-8 text: {first}"
    if isinstance(exc, MemoryError):
        return ("out of memory; give the workers more memory (cluster.memory_limit), use more "
                "partitions, or run on a larger cluster")
    return (f"daskmm failed on this input without saying what is wrong with it "
            f"({type(exc).__name__}: {first}); that is daskmm's fault: please report it with "
            "the traceback (run again with DASKMM_DEBUG=1)")


_INTERRUPTED = []


def _quiet_interrupt(signum, frame):
    """Ctrl-C: no more log lines or asyncio noise from the shutdown, then KeyboardInterrupt
    (remembered: a library that swallows it must not turn it into a result)."""
    _INTERRUPTED.append(True)
    from daskmm import events
    events.request_stop()  # if this KeyboardInterrupt is lost, the next evaluation raises
    logging.disable(logging.CRITICAL)
    sys.unraisablehook = lambda *a: None
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not break the cleanup
    raise KeyboardInterrupt


def _interrupted_exit() -> int:
    """Exit status 130. Before any local cluster started, leave at once: a Ctrl-C that landed
    inside an extension module's import can otherwise kill the interpreter with SIGINT on its
    way out (seen with numpy and numba). After one started, exit normally: its processes and
    semaphores are released by the interpreter's own shutdown."""
    client = sys.modules.get("daskmm.distributed.client")
    if client is None or not getattr(client, "LOCAL_CLUSTER_STARTED", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return 130


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    verbose = getattr(args, "verbose", False) or (args.command != "fit"
                                                   and not getattr(args, "quiet", False))
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("daskmm: %(message)s"))
    log = logging.getLogger("daskmm")  # ours only: Dask's loggers keep their own settings
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"daskmm: warning: {msg}\n"
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _quiet_interrupt)
    progress = None
    if args.command in ("fit", "run") and not getattr(args, "quiet", False):
        from daskmm.events import set_listener
        progress = _FitProgress()
        set_listener(progress)
    try:
        rc = COMMANDS[args.command](args)
        if _INTERRUPTED:
            raise KeyboardInterrupt
        return rc
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        sys.stderr.close()
        return 0
    except (KeyboardInterrupt, Exception) as exc:
        if _INTERRUPTED or isinstance(exc, KeyboardInterrupt):
            # a Ctrl-C, however a library passed it on (an import it broke, a callback)
            done = getattr(sys.modules.get("daskmm.results.writing"), "WRITTEN", None)
            if done:  # during the cluster's shutdown, after the result was complete
                print(f"daskmm: interrupted after writing {done[-1]}", file=sys.stderr)
            else:
                print("daskmm: interrupted; no output written", file=sys.stderr)
            return _interrupted_exit()
        if isinstance(exc, DaskmmError):
            print(f"daskmm: error: {exc}", file=sys.stderr)
            _quiet_shutdown()
            return 2
        if os.environ.get("DASKMM_DEBUG"):
            raise
        print(f"daskmm: error: {explain(exc, args)}", file=sys.stderr)
        _quiet_shutdown()
        return 1
    finally:
        if progress is not None:
            progress.end()


def _quiet_shutdown() -> None:
    """After the one error line: the process exits while a library's event loop may still
    hold tasks (zarr's concurrent chunk reads, when one chunk failed), and asyncio would log
    "Task was destroyed but it is pending!" for each at shutdown. The error is said; that
    logger is silenced."""
    logging.getLogger("asyncio").disabled = True

if __name__ == "__main__":
    sys.exit(main())
