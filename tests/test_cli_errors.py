"""Bad input: a one-line error naming the problem, a non-zero exit, and no output directory.

Each case runs the real CLI in a subprocess against files written here.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import CONFORMANCE

SLEEP = str(CONFORMANCE / "data" / "sleepstudy.csv")
GOOD = "Reaction ~ Days + (Days | Subject)"


def run_cli(args, address):
    return subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", *args, "--scheduler",
                           address], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def address(client):
    return client.scheduler.address


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    sleep = pd.read_csv(SLEEP)
    (d / "empty.csv").write_text("")
    (d / "header_only.csv").write_text("Reaction,Days,Subject\n")
    one = sleep.assign(Subject=308)
    one.to_csv(d / "one_level.csv", index=False)
    inf = sleep.astype({"Days": float})
    inf.loc[5, "Days"] = np.inf
    inf.to_parquet(d / "inf.parquet")
    txt = sleep.assign(Reaction=["fast" if i % 2 else "slow" for i in range(len(sleep))])
    txt.to_csv(d / "text_response.csv", index=False)
    return d


CASES = [
    ("missing file", ["{d}/nope.csv", "--formula", GOOD], "does not exist"),
    ("empty file", ["{d}/empty.csv", "--formula", GOOD], "empty"),
    ("header only", ["{d}/header_only.csv", "--formula", GOOD], "no data rows"),
    ("unknown column", [SLEEP, "--formula", "Reaction ~ Dayz + (1 | Subject)"], "'Dayz'"),
    ("unknown grouping column", [SLEEP, "--formula", "Reaction ~ Days + (1 | Subj)"], "'Subj'"),
    ("unparsable formula", [SLEEP, "--formula", "Reaction ~ Days + (1 | Subject"],
     "unbalanced"),
    ("no tilde", [SLEEP, "--formula", "Reaction Days (1 | Subject)"], "no '~'"),
    ("no random term", [SLEEP, "--formula", "Reaction ~ Days"], "no random-effect term"),
    ("non-numeric response", ["{d}/text_response.csv", "--formula", GOOD], "not numeric"),
    ("one level", ["{d}/one_level.csv", "--formula", "Reaction ~ Days + (1 | Subject)"],
     "'Subject' has 1 level"),
    ("inf value", ["{d}/inf.parquet", "--formula", GOOD], "'Days' holds an infinite value"),
    ("unknown weights column", [SLEEP, "--formula", GOOD, "--weights", "wt"], "'wt'"),
    ("unknown factor column", [SLEEP, "--formula", GOOD, "--factors", "Dayz"], "'Dayz'"),
    ("GLMM: non-integer counts", [SLEEP, "--formula", "Reaction ~ Days + (1 | Subject)",
                                  "--family", "poisson"], "not non-negative integers"),
    ("GLMM: response outside 0..1", [SLEEP, "--formula", "Reaction ~ Days + (1 | Subject)",
                                     "--family", "binomial"], "out of range"),
    ("GLMM: AGQ with slopes", [SLEEP, "--formula", GOOD, "--family", "poisson", "--nagq", "9"],
     "nagq=9"),
    ("GLMM: link of another family", [SLEEP, "--formula", GOOD, "--family", "poisson",
                                      "--link", "logit"], "link 'logit' is not available"),
]


@pytest.mark.parametrize("name,args,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_cleanly(name, args, needle, bad_files, address, tmp_path):
    out = tmp_path / "out"
    proc = run_cli([a.format(d=bad_files) for a in args] + ["--out", str(out)], address)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("daskmm: error:")]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".out*")), "temporary output left behind"


def test_unreachable_scheduler_fails_cleanly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "daskmm.cli", "fit", SLEEP, "--formula", GOOD,
                           "--scheduler", "tcp://127.0.0.1:1", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no Dask scheduler answered at 'tcp://127.0.0.1:1'" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_long_fit_reports_its_progress(capsys, monkeypatch):
    """After 2 s a fit's optimiser progress goes to stderr, a line every 5 s off a terminal
    (evaluations, the best criterion so far, the time); nothing before 2 s, and the events
    stop reaching it when the command ends."""
    from daskmm import cli, events

    now = [0.0]
    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: False)
    progress = cli._FitProgress()
    progress.clock = lambda: now[0]
    progress.t0 = progress.last = 0.0
    events.set_listener(progress)
    try:
        for i in range(1, 60):
            now[0] = 0.25 * i
            events.emit("evaluation", feval=i, best=1000.0 - i)
    finally:
        progress.end()
    events.emit("evaluation", feval=99, best=1.0)  # after the end: not shown
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["daskmm: optimising: 8 evaluations, criterion 992 (2 s)",
                     "daskmm: optimising: 28 evaluations, criterion 972 (7 s)",
                     "daskmm: optimising: 48 evaluations, criterion 952 (12 s)"]
