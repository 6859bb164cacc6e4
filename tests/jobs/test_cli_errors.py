"""Bad input to ``daskmm ingest`` and ``daskmm run``: one line naming the problem, a non-zero
exit, and nothing half-written (no dataset, no output directory, no temporary left)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import CONFORMANCE

SLEEP = str(CONFORMANCE / "data" / "sleepstudy.csv")
GOOD = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("badjobs")
    (d / "empty.csv").write_text("")
    nan = pd.read_csv(SLEEP).astype({"Subject": float})
    nan.loc[7, "Subject"] = np.nan
    nan.to_csv(d / "nan_level.csv", index=False)
    return d


def job(d, name, **fields):
    doc = {"data": SLEEP, "formula": GOOD, "output": str(d / f"out_{name}"), **fields}
    p = d / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


CASES = [
    ("ingest: missing file", lambda d, a: ["ingest", f"{d}/nope.csv", "--by", "Subject",
                                           "--out", f"{d}/ds1", "--scheduler", a],
     "does not exist", "ds1"),
    ("ingest: unknown column", lambda d, a: ["ingest", SLEEP, "--by", "Subj", "--out",
                                             f"{d}/ds2", "--scheduler", a],
     "partition key 'Subj' is not a column", "ds2"),
    ("ingest: empty file", lambda d, a: ["ingest", f"{d}/empty.csv", "--by", "Subject",
                                         "--out", f"{d}/ds3", "--scheduler", a],
     "is empty", "ds3"),
    ("ingest: a level with NaN", lambda d, a: ["ingest", f"{d}/nan_level.csv", "--by",
                                               "Subject", "--na-action", "fail", "--out",
                                               f"{d}/ds4", "--scheduler", a],
     "column 'Subject' has 1 missing value", "ds4"),
    ("run: typo'd key", lambda d, a: ["run", job(d, "typo", formla=GOOD), "--scheduler", a],
     "unknown field 'formla'", "out_typo"),
    ("run: formula names a missing column",
     lambda d, a: ["run", job(d, "col", formula="Reaction ~ Dayz + (1 | Subject)"),
                   "--scheduler", a], "column 'Dayz'", "out_col"),
    ("run: missing data", lambda d, a: ["run", job(d, "nodata", data=f"{d}/none.parquet"),
                                        "--scheduler", a], "does not exist", "out_nodata"),
    ("run: missing job file", lambda d, a: ["run", f"{d}/nope.yaml", "--scheduler", a],
     "job file .* does not exist", "out_nope"),
    ("run: scheduler nobody answers",
     lambda d, a: ["run", job(d, "sched"), "--scheduler", "tcp://127.0.0.1:9"],
     "no Dask scheduler answered at 'tcp://127.0.0.1:9'", "out_sched"),
]


@pytest.mark.parametrize("name, args, match, product", CASES, ids=[c[0] for c in CASES])
def test_bad_input(client, files, name, args, match, product):
    proc = subprocess.run([sys.executable, "-m", "daskmm.cli",
                           *args(files, client.scheduler.address)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("daskmm: error:")]
    assert len(err) == 1, proc.stderr
    assert re.search(match, err[0]), err[0]
    assert "Traceback" not in proc.stderr
    assert not (files / product).exists()
    assert not list(files.glob(f".{product}.tmp-*"))
