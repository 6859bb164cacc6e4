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


def _replay(progress, now: list, steps) -> None:
    """Send ``(time, kind, fields)`` events to ``progress`` on a patched clock."""
    from daskmm import events
    progress.clock = lambda: now[0]
    progress.t0 = progress.last = 0.0
    events.set_listener(progress)
    try:
        for t, kind, fields in steps:
            now[0] = t
            events.emit(kind, **fields)
    finally:
        progress.end()


def _steps() -> list:
    """A GLMM's optimisation with PIRLS passes (3 s), a bootstrap of 40 replicates (10 s), a
    profile of two parameters (3.6 s)."""
    out = []
    for i in range(1, 12):
        out.append((0.25 * i, "evaluation", {"feval": i, "best": 1000.0 - i}))
        out.append((0.25 * i + 0.1, "pirls", {"npass": i, "deviance": 2000.5 - i}))
    out.append((3.0, "replicates_start", {"label": "bootstrap", "total": 40}))
    out += [(3.0 + 0.25 * i, "replicate", {"label": "bootstrap", "done": i, "total": 40})
            for i in range(1, 41)]
    out.append((14.0, "profile_start", {"total": 2}))
    out += [(14.0 + 0.5 * k, "profile_point", {"parameter": "sigma", "points": k})
            for k in range(1, 7)]
    out.append((17.2, "profile", {"parameter": "sigma", "done": 1, "total": 2, "points": 6}))
    out.append((17.6, "profile", {"parameter": "(Intercept)", "done": 2, "total": 2,
                                  "points": 5}))
    return out


def test_each_long_step_reports_its_own_progress(capsys, monkeypatch):
    """Every step over 2 s has its own progress, timed from its start: the optimiser with a
    GLMM's last PIRLS pass, a bootstrap's replicates (its last line when it ends), a
    profile's parameters and points; off a terminal a line every 5 s at most a step."""
    from daskmm import cli

    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: False)
    _replay(cli._FitProgress(), [0.0], _steps())
    assert capsys.readouterr().err.splitlines() == [
        "daskmm: optimising: 8 evaluations, criterion 992, PIRLS pass 7, deviance 1993.5 (2 s)",
        "daskmm: bootstrap: 8/40 replicates (2 s)",
        "daskmm: bootstrap: 28/40 replicates (7 s)",
        "daskmm: bootstrap: 40/40 replicates (10 s)",
        "daskmm: profile: 0/2 parameters, sigma: 4 points (2 s)",
        "daskmm: profile: 2/2 parameters (4 s)"]
    # on a terminal: one line a step, rewritten in place; the last of each step stays
    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: True)
    _replay(cli._FitProgress(), [0.0], _steps())
    shown = [ln.rsplit("\r", 1)[-1].rstrip() for ln in capsys.readouterr().err.split("\n")]
    assert shown == [
        "daskmm: optimising: 11 evaluations, criterion 989, PIRLS pass 11, deviance 1989.5 (3 s)",
        "daskmm: bootstrap: 40/40 replicates (10 s)",
        "daskmm: profile: 2/2 parameters (4 s)", ""]

