"""A real fitting service for the tests: ``daskmm serve`` as a separate process on 127.0.0.1,
in front of a real cluster of processes (``dask scheduler`` and two ``dask worker`` over TCP,
without nannies so that a killed worker stays dead), with two owners' tokens."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import load_fixture
from tests.distributed.test_dask_processes import process_cluster

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef00"}
SLEEP_JOB = {"name": "sleepstudy", "data": "sleepstudy.csv",
             "formula": "Reaction ~ Days + (Days | Subject)", "factors": ["Subject"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, method: str = "GET", token: str | None = "alice", body=None,
         headers: dict | None = None, timeout: float = 60) -> tuple[int, object]:
    """One request; ``(status, parsed JSON or text or bytes)``. ``token`` is an owner's name
    (its token is sent), a literal token, or None (no header)."""
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {TOKENS.get(token, token)}"
    data = None
    if body is not None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        else:
            data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw, ctype = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("content-type", "")
    if "json" in ctype:
        return status, json.loads(raw or b"null")
    if ctype.startswith("text/"):
        return status, raw.decode()
    return status, raw


@dataclass
class Server:
    """A ``daskmm serve`` process and what it was given."""

    results: Path
    data: Path
    scheduler: str
    tokens_file: Path
    max_concurrent: int = 2
    store: str | None = None
    replica: str | None = None
    env: dict = field(default_factory=dict)
    results_url: str | None = None  # --results as this URL (then --state-dir is results)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Server:
        self.log = self.results.parent / f"server-{self.port}-{time.time_ns()}.log"
        where = ["--results", self.results_url, "--state-dir", str(self.results)] \
            if self.results_url else ["--results", str(self.results)]
        cmd = [sys.executable, "-m", "daskmm.cli", "serve", "--host", "127.0.0.1", "--port",
               str(self.port), *where, "--data-root", str(self.data),
               "--tokens", str(self.tokens_file), "--scheduler", self.scheduler,
               "--max-concurrent", str(self.max_concurrent), "--max-body", "65536"]
        if self.store:
            cmd += ["--store", self.store]
        if self.replica:
            cmd += ["--replica", self.replica]
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env})
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if call(self.url + "/healthz", token=None, timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not answer: {self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # requests
    def submit(self, job: dict, owner: str = "alice", **kw) -> tuple[int, object]:
        return call(self.url + "/v1/jobs", "POST", owner, job, **kw)

    def job(self, job_id: str, owner: str = "alice") -> dict:
        status, doc = call(f"{self.url}/v1/jobs/{job_id}", token=owner)
        assert status == 200, doc
        return doc

    def wait(self, job_id: str, states=("succeeded", "failed", "cancelled"),
             timeout: float = 240, owner: str = "alice", until=None) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            doc = self.job(job_id, owner)
            if doc["state"] in states and (until is None or until(doc)):
                return doc
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not reach {states}: {doc}")


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    """``(address, worker processes)`` of a TCP process cluster shared by the service tests."""
    with process_cluster(tmp_path_factory.mktemp("svc-cluster"), nanny=False) as out:
        yield out


@pytest.fixture(scope="package")
def data_root(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("svc-data")
    shutil.copy(load_fixture("sleepstudy_reml")["data_path"], d / "sleepstudy.csv")
    return d


@pytest.fixture(scope="package")
def tokens_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("svc-tokens") / "tokens.txt"
    p.write_text("# owner token\n" + "".join(f"{o} {t}\n" for o, t in TOKENS.items()))
    return p


@pytest.fixture(scope="module")
def server(tmp_path_factory, cluster, data_root, tokens_file):
    """A server shared by a test module (each module its own results folder and store)."""
    results = tmp_path_factory.mktemp("svc-results")
    s = Server(results, data_root, cluster[0], tokens_file).start()
    yield s
    s.stop()


@pytest.fixture
def fresh_server(tmp_path, cluster, data_root, tokens_file):
    """A server of the test's own (its own store), stopped at the end."""
    s = Server(tmp_path / "results", data_root, cluster[0], tokens_file, max_concurrent=1)
    s.results.mkdir()
    yield s
    s.stop(signal.SIGKILL)


@pytest.fixture(scope="package")
def postgres_url():
    """A PostgreSQL server of its own on 127.0.0.1 (initdb + pg_ctl, as an unprivileged user
    when the tests run as root), stopped at the end."""
    if not PG_BIN:
        pytest.fail("PostgreSQL is not installed: apt-get install -y postgresql (.ci/run does)")
    pytest.importorskip("psycopg", reason="pip install -e '.[postgres]' (.ci/run does)")
    bin_ = PG_BIN[-1]
    # under /tmp itself: pytest's own temporary folders are private to root
    d = Path(tempfile.mkdtemp(prefix="daskmm-pg-"))
    data = d / "data"
    port = free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(d, "nobody")
        prefix = ["runuser", "-u", "nobody", "--"]
    subprocess.run(prefix + [f"{bin_}/initdb", "-D", str(data), "-A", "trust", "-U", "daskmm"],
                   check=True, capture_output=True)
    subprocess.run(prefix + [f"{bin_}/pg_ctl", "-D", str(data), "-l", str(d / "log"), "-w",
                             "-o", f"-p {port} -k {d} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        url = f"postgresql+psycopg://daskmm@127.0.0.1:{port}/postgres"
        yield url
    finally:
        subprocess.run(prefix + [f"{bin_}/pg_ctl", "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def simulated_dataset(data_root: Path, scheduler: str, rows: int = 400_000,
                      groups: int = 40_000) -> str:
    """A dataset big enough that a distributed fit takes seconds (made once)."""
    out = data_root / f"sim-{rows}.dataset"
    if not out.exists():
        from distributed import Client

        from daskmm.data.simulate import simulate
        with Client(scheduler, set_as_default=False) as c:
            simulate(out, rows, groups=groups, crossed=0, buckets=4, seed=7, client=c)
    return out.name

