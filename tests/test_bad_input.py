"""Ordinary mistakes, through the real CLI: one ``daskmm: error:`` line naming the problem, a
non-zero exit, no traceback, no output, numbers printed as numbers.

The subprocesses run four at a time (:func:`results`): each is a whole ``daskmm`` process, and
most stop long before a fit would start.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import CONFORMANCE

SLEEP = str(CONFORMANCE / "data" / "sleepstudy.csv")
GOOD = "Reaction ~ Days + (Days | Subject)"
SIMPLE = "y ~ x + (1 | g)"


def frame(n=400, seed=3):
    rng = np.random.default_rng(seed)
    g = np.arange(n) % 20
    x = rng.normal(size=n).round(4)
    return pd.DataFrame({"y": (1 + 0.5 * x + rng.normal(size=20)[g] + rng.normal(size=n))
                         .round(4), "x": x, "g": g})


class _Quiet(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_port():
    """A port that answers, in HTTP: not a Dask scheduler."""
    server = HTTPServer(("127.0.0.1", 0), _Quiet)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    df = frame()
    df.to_csv(d / "good.csv", index=False)
    lines = (d / "good.csv").read_text().splitlines()
    ragged = lines.copy()
    ragged[150] += ",7"
    (d / "ragged.csv").write_text("\n".join(ragged) + "\n")
    late = lines.copy()
    late[-3] = late[-3].split(",")[0] + ",abc," + late[-3].split(",")[2]
    (d / "late_bad.csv").write_text("\n".join(late) + "\n")
    (d / "dup.csv").write_text("y,x,x,g\n" + "\n".join(f"{r.y},{r.x},{r.x},{r.g}"
                                                       for r in df.itertuples()) + "\n")
    df.assign(big=2 ** 60 + np.arange(len(df))).to_parquet(d / "bigint.parquet")
    start = datetime.datetime(2024, 1, 1)
    pq.write_table(pa.table({
        "y": df["y"], "x": df["x"], "g": df["g"],
        "ts": pa.array([start + datetime.timedelta(days=int(i)) for i in range(len(df))]),
        "day": pa.array([(start + datetime.timedelta(days=int(i))).date()
                         for i in range(len(df))]),
        "lst": pa.array([[float(i)] for i in range(len(df))]),
        "rec": pa.array([{"a": float(i)} for i in range(len(df))]),
    }), d / "types.parquet")
    df.assign(y=3.5).to_csv(d / "constant_y.csv", index=False)
    df.assign(z=5.0).to_csv(d / "constant_z.csv", index=False)
    (d / "latin1.csv").write_bytes(b"y,x,g,name\n" + b"".join(
        f"{r.y},{r.x},{r.g},".encode() + "Zürich\n".encode("latin-1")
        for r in df.itertuples()))
    (d / "a_file.txt").write_text("not a folder\n")
    return d


# name, argv after "daskmm", expected text in the one error line, extra environment
CASES = [
    ("s3 without s3fs", ["fit", "s3://some-bucket/data.csv", "--formula", SIMPLE], "s3fs", {}),
    ("ragged CSV row", ["fit", "{d}/ragged.csv", "--formula", SIMPLE],
     "Expected 3 fields", {"DASKMM_CSV_BLOCKSIZE": "4KB"}),
    ("bad value after the first block", ["fit", "{d}/late_bad.csv", "--formula", SIMPLE],
     "'x' (a str value where the first rows are float64)", {"DASKMM_CSV_BLOCKSIZE": "4KB"}),
    ("number column with a stray word", ["fit", "{d}/late_bad.csv", "--formula", SIMPLE],
     "column 'x' holds numbers but also 'abc'", {}),
    ("integer beyond float64", ["fit", "{d}/bigint.parquet", "--formula",
                                "y ~ big + (1 | g)"], "beyond 2^53", {}),
    ("timestamp column", ["fit", "{d}/types.parquet", "--formula", "y ~ ts + (1 | g)"],
     "column 'ts' is a timestamp", {}),
    ("timestamp as a factor", ["fit", "{d}/types.parquet", "--formula", "y ~ x + (1 | ts)"],
     "column 'ts' is a timestamp", {}),
    ("date column", ["fit", "{d}/types.parquet", "--formula", "y ~ day + (1 | g)"],
     "column 'day' is a date", {}),
    ("list column", ["fit", "{d}/types.parquet", "--formula", "y ~ lst + (1 | g)"],
     "column 'lst' holds list values", {}),
    ("struct column", ["fit", "{d}/types.parquet", "--formula", "y ~ rec + (1 | g)"],
     "column 'rec' holds struct values", {}),
    ("duplicated column name", ["fit", "{d}/dup.csv", "--formula", SIMPLE],
     "names the column 'x' twice", {}),
    ("--out below a file", ["fit", "{d}/good.csv", "--formula", SIMPLE, "--out",
                            "{d}/a_file.txt/result"], "is not a folder", {}),
    ("--out is a file", ["fit", "{d}/good.csv", "--formula", SIMPLE, "--out",
                         "{d}/a_file.txt"], "exists and is not a folder", {}),
    ("--out inside the input", ["fit", "{d}/good.csv", "--formula", SIMPLE, "--out",
                                "{d}/good.csv/fit"], "is inside the input", {}),
    ("--out holds the input", ["fit", "{d}/good.csv", "--formula", SIMPLE, "--out", "{d}"],
     "holds the input", {}),
    ("malformed --scheduler", ["fit", "{d}/good.csv", "--formula", SIMPLE, "--scheduler",
                               "tcp://:::8786"], "is not of the form tcp://HOST:PORT", {}),
    ("port that is not a scheduler", ["fit", "{d}/good.csv", "--formula", SIMPLE,
                                      "--scheduler", "tcp://127.0.0.1:{http}"],
     "did not answer as a Dask scheduler", {}),
    ("--link with the gaussian family", ["fit", "{d}/good.csv", "--formula", SIMPLE,
                                         "--link", "logit"],
     "link 'logit' is not available for the gaussian family; use one of: identity, log, "
     "inverse", {}),
    ("--nagq with the gaussian family", ["fit", "{d}/good.csv", "--formula", SIMPLE,
                                         "--nagq", "7"],
     "--nagq 7 does not apply to the gaussian family", {}),
    ("constant response (LMM)", ["fit", "{d}/constant_y.csv", "--formula", SIMPLE],
     "the response 'y' is constant (every value is 3.5)", {}),
    ("constant response (GLMM)", ["fit", "{d}/constant_y.csv", "--formula",
                                  "I(y * 0) ~ x + (1 | g)", "--family", "poisson"],
     "is constant (every value is 0.0)", {}),
    ("constant random-effect covariate", ["fit", "{d}/constant_z.csv", "--formula",
                                          "y ~ x + (1 + z | g)"],
     "column 'z' of the random-effect term (1 + z | g) is constant (every value is 5.0)", {}),
    ("simulate --buckets 0", ["simulate", "--rows", "100", "--buckets", "0"],
     "buckets must be a positive integer; got 0", {}),
    ("ingest --buckets 0", ["ingest", "{d}/good.csv", "--by", "g", "--buckets", "0"],
     "buckets must be a positive integer; got 0", {}),
    ("unknown function", ["fit", "{d}/good.csv", "--formula", "y ~ foo(x) + (1 | g)"],
     "function 'foo' in foo(x) is not available", {}),
    ("name with a space, unquoted", ["fit", SLEEP, "--formula",
                                     "Reaction ~ Days Days + (1 | Subject)"],
     "cannot understand the fixed part", {}),
    ("binomial proportion out of range", ["fit", "{d}/good.csv", "--formula",
                                          "I(abs(y) + 1.5) ~ x + (1 | g)", "--family",
                                          "binomial"], "out of range", {}),
    ("not UTF-8", ["fit", "{d}/latin1.csv", "--formula", SIMPLE], "UTF-8", {}),
    ("log of zero", ["fit", "{d}/good.csv", "--formula", "y ~ log(x - x) + (1 | g)"],
     "log(x - x) is -inf", {}),
]


ON_CLUSTER = {"ragged CSV row", "bad value after the first block", "integer beyond float64",
              "timestamp column", "list column", "duplicated column name", "not UTF-8",
              "constant response (GLMM)", "constant random-effect covariate", "log of zero",
              "binomial proportion out of range"}
"""Cases also run with ``--scheduler``: the data are read and checked by the workers there.
Every case runs in the default mode, which for these small files is in process."""

CLUSTER_ONLY = {"bad value after the first block"}
"""A CSV read in blocks (on a cluster) can meet a value of another type after the first block;
a file read whole (in process) types the column from all of its values, as R does, and the
stray word is then found among the column's levels ("number column with a stray word"). (The
dask reader types a column from its first rows, so on a cluster the same file meets the
mismatch message.)"""

RUNS = [(case, where) for case in CASES
        for where in (("cluster",) if case[0] in CLUSTER_ONLY else
                      ("default", "cluster") if case[0] in ON_CLUSTER else ("default",))]


def _argv(args, d, http, out):
    argv = [a.format(d=d, http=http) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    return argv


@pytest.fixture(scope="module")
def results(files, http_port, client, tmp_path_factory):
    """Every run's process, four at a time: ``(name, where) -> (proc, out path, seconds)``."""
    outs = tmp_path_factory.mktemp("outs")

    def run(case_where):
        (name, args, _, env), where = case_where
        out = outs / f"{where}_{name.replace(' ', '_').replace('-', '')}"
        argv = _argv(args, files, http_port, out)
        if where == "cluster":
            argv += ["--scheduler", client.scheduler.address]
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "daskmm.cli", *argv], capture_output=True,
                              text=True, timeout=300, env={**os.environ, **env})
        return (name, where), (proc, out, time.perf_counter() - t)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return dict(pool.map(run, RUNS))


@pytest.mark.parametrize("case, where", RUNS, ids=[f"{c[0]}-{w}" for c, w in RUNS])
def test_one_clear_line_and_no_output(results, files, case, where):
    name, args, needle, env = case
    proc, out, _ = results[name, where]
    assert proc.returncode not in (0, None), proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("daskmm: error:")]
    assert len(errors) == 1, proc.stderr
    assert needle in errors[0], errors[0]
    assert "Traceback" not in proc.stderr and "np.float64" not in proc.stderr, proc.stderr
    if "--out" not in args:
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}*")), "temporary output left behind"


def test_user_files_untouched(results, files):
    """The cases that aimed --out at a file or at the input's folder changed nothing there."""
    assert (files / "a_file.txt").read_text() == "not a folder\n"
    assert pd.read_csv(files / "good.csv").equals(frame())


def test_non_scheduler_port_answers_within_the_timeout(results):
    assert results["port that is not a scheduler", "default"][2] < 60


def test_gzipped_csv_fits_like_plain(files, client, tmp_path):
    with gzip.open(files / "good.csv.gz", "wb") as fh:
        fh.write((files / "good.csv").read_bytes())
    docs = []
    for name in ("good.csv", "good.csv.gz"):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", str(files / name),
                               "--formula", SIMPLE, "--scheduler", client.scheduler.address,
                               "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        docs.append(json.loads((out / "summary.json").read_text()))
    assert docs[0]["objective"] == pytest.approx(docs[1]["objective"], rel=1e-12)
    assert docs[0]["nobs"] == docs[1]["nobs"] == 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _crossed_csv(path) -> None:
    """A crossed binomial GLMM that takes seconds after its ``optimising`` line, in process
    and on a local cluster (30,000 rows took 0.9 s in all on this machine: the Ctrl-C then
    met an interpreter already shutting down)."""
    rng = np.random.default_rng(11)
    n = 200_000
    a, b, x = rng.integers(0, 5000, n), rng.integers(0, 25, n), rng.normal(size=n)
    eta = 0.5 * x + rng.normal(0, 0.7, 5000)[a] + rng.normal(0, 0.4, 25)[b]
    pd.DataFrame({"y": (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int), "x": x,
                  "a": a, "b": b}).to_csv(path, index=False)


@pytest.mark.parametrize("when, where", [("start-up", "in-process"),
                                         ("fit", "distributed"), ("fit", "in-process")])
def test_ctrl_c_prints_one_line(tmp_path, when, where):
    """Ctrl-C at the terminal (SIGINT to the whole process group, workers included), during
    start-up and during the fit, on a cluster and in process: one line, exit 130, no
    traceback or asyncio noise, no output and no temporary folder.

    "During the fit" is after the fit logs ``optimising`` (``-v``): on a cluster its workers
    are up by then; the crossed binomial below takes seconds more, in process or not."""
    out = tmp_path / "fit"
    if when == "fit":
        _crossed_csv(tmp_path / "crossed.csv")
        args = [str(tmp_path / "crossed.csv"), "--formula", "y ~ x + (1 | a) + (1 | b)",
                "--family", "binomial", "--factors", "a,b"]
    else:
        args = [str(CONFORMANCE / "data" / "grouseticks.csv"), "--formula",
                "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)",
                "--family", "poisson", "--factors", "YEAR,BROOD,INDEX,LOCATION"]
    verbose = ["-v"] if when == "fit" else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "daskmm.cli", "fit", *args, "--mode", where, "--out", str(out),
         *verbose], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    seen = []
    if verbose:
        for line in proc.stderr:
            seen.append(line)
            if "optimising" in line:
                break
    time.sleep(0.3)
    assert proc.poll() is None, "the fit ended before the Ctrl-C: make it longer"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines()
             if not (verbose and ln.startswith("daskmm: ") and "interrupted" not in ln)]
    assert lines == ["daskmm: interrupted; no output written"], "".join(seen) + err
    assert not out.exists() and not list(tmp_path.glob(".fit*"))


def test_dropped_rows_reported_in_json_text_and_stderr(client, tmp_path):
    """Rows with a missing value in a used column are dropped, as lme4's na.omit, and counted
    exactly as pandas counts incomplete rows: in summary.json, summary.txt and on stderr. A
    missing value in a column the model does not use drops nothing."""
    df = frame().assign(note="n")
    df.loc[[1, 2, 3], "y"] = np.nan
    df.loc[[3, 9], "x"] = np.nan
    df.loc[[20, 21], "note"] = None
    df.to_csv(tmp_path / "na.csv", index=False)
    out = tmp_path / "fit"
    proc = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", str(tmp_path / "na.csv"),
                           "--formula", SIMPLE, "--scheduler", client.scheduler.address,
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    complete = len(df[["y", "x", "g"]].dropna())
    doc = json.loads((out / "summary.json").read_text())
    assert doc["nobs"] == complete and doc["rows"]["dropped"] == len(df) - complete == 4
    assert doc["rows"]["dropped_missing"] == {"x": 2, "y": 2}
    line = "4 observations deleted due to missingness: missing values in x: 2, y: 2"
    assert line in (out / "summary.txt").read_text()
    assert f"daskmm: {line}" in proc.stderr


def test_ctrl_c_after_the_result_was_written_says_so(tmp_path):
    """A Ctrl-C that lands after the result directory was completed (while a local cluster
    shuts down) must not claim that nothing was written."""
    code = ("import sys\nfrom pathlib import Path\nimport daskmm.cli as cli\n"
            "import daskmm.results.writing as w\n"
            "def fit(args):\n    w.WRITTEN.append(Path(args.out))\n    raise KeyboardInterrupt\n"
            "cli.COMMANDS['fit'] = fit\n"
            f"sys.exit(cli.main(['fit', 'd.csv', '--formula', 'y ~ x', '--out', "
            f"{str(tmp_path / 'res')!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == f"daskmm: interrupted after writing {tmp_path / 'res'}"
