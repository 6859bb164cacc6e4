"""deploy/Dockerfile: parsed and checked against the repository (no Docker daemon needed)."""

from __future__ import annotations

import posixpath
import shlex
from pathlib import Path

import pytest

from daskmm.cli import _parser
from daskmm.jobs.spec import load_job
from tests.deploy import dockerfile as dfm


@pytest.fixture(scope="module")
def df() -> dfm.Dockerfile:
    """The parsed deploy/Dockerfile."""
    return dfm.load()


def test_base_image(df: dfm.Dockerfile) -> None:
    """One stage on the slim CPython 3.11 image (the project's Python)."""
    assert [i.args for i in df.get("FROM")] == ["python:3.11-slim"]


def test_copy_sources_exist_and_reach_the_context(df: dfm.Dockerfile) -> None:
    """Every COPY source is in the repository and not dropped by the .dockerignore."""
    assert df.copies
    assert dfm.copy_problems(df) == []


def test_installs_the_project(df: dfm.Dockerfile) -> None:
    """``pip install --no-cache-dir .`` runs where pyproject.toml, its readme and the
    package were copied."""
    runs = [i for i in df.get("RUN") if "pip install" in i.args]
    assert len(runs) == 1
    words = shlex.split(runs[0].args)
    at = words.index("install")
    assert "--no-cache-dir" in words[at:] and "." in words[at:]
    src = next(c.dest for c in df.copies if "pyproject.toml" in c.sources)
    for name in ("pyproject.toml", "README.md", "daskmm"):
        assert df.source_of(f"{src.rstrip('/')}/{name}") == dfm.ROOT / name


def test_default_command_is_provided_and_parses(df: dfm.Dockerfile) -> None:
    """CMD is exec form, runs ``daskmm`` (a console script of the package) with arguments
    its parser accepts."""
    assert dfm.command_problems(df) == []
    cmd = df.command()
    assert cmd[:2] == ["daskmm", "run"]
    args = _parser().parse_args(cmd[1:])
    assert args.command == "run"


def test_default_job_is_in_the_image(df: dfm.Dockerfile) -> None:
    """``daskmm run jobs/example.yaml`` from WORKDIR finds the job and its input data."""
    job_in_image = str(Path(df.workdir) / df.command()[2])
    repo_job = df.source_of(job_in_image)
    assert repo_job is not None and repo_job.is_file()
    job = load_job(repo_job)
    # the job's input, resolved as inside the image, is copied into the image too
    data = df.source_of(posixpath.join(posixpath.dirname(job_in_image), job.raw["data"]))
    assert data is not None and data.is_file()


def test_runs_as_non_root_with_a_warm_numba_cache(df: dfm.Dockerfile) -> None:
    """A non-root USER; NUMBA_CACHE_DIR set, created for that user, and filled by running
    daskmm at build time after the install."""
    assert df.user not in (None, "", "0", "root")
    cache = df.env.get("NUMBA_CACHE_DIR")
    assert cache and cache.startswith("/")
    kinds = [i.keyword for i in df.instructions]
    user_at = kinds.index("USER")
    install_at = next(k for k, i in enumerate(df.instructions) if "pip install" in i.args)
    prepares = [i for i in df.instructions[install_at:user_at]
                if i.keyword == "RUN" and Path(cache).name in i.args and "chown" in i.args]
    assert prepares, "NUMBA_CACHE_DIR is not created and handed to the runtime user"
    warm = [i for i in df.instructions[user_at:] if i.keyword == "RUN" and "daskmm" in i.args]
    assert warm, "no RUN of daskmm as the runtime user warms numba's cache"


def test_exposes_dask_ports(df: dfm.Dockerfile) -> None:
    """Scheduler comm and dashboard, worker dashboard."""
    assert {8786, 8787, 8788} <= df.exposed


# ------------------------------------------------------------------ the checks can fail
def test_checker_flags_missing_and_ignored_sources(tmp_path: Path) -> None:
    """A COPY of a missing path, or of one the .dockerignore drops, is reported."""
    text = "FROM python:3.11-slim\nWORKDIR /x\nCOPY no_such_dir ./a\nCOPY tests ./t\n" \
           'CMD ["daskmm", "run", "jobs/example.yaml"]\n'
    problems = dfm.copy_problems(dfm.parse(text))
    assert any("no_such_dir" in p and "not in the repository" in p for p in problems)
    assert any("'tests'" in p and "excluded" in p for p in problems)


@pytest.mark.parametrize("cmd", ['CMD ["dask-scheduler"]', "CMD daskmm run jobs/example.yaml",
                                 'ENTRYPOINT ["kubectl"]'])
def test_checker_flags_unknown_tools_and_shell_form(cmd: str) -> None:
    """A tool no dependency installs (``dask-scheduler`` is gone from distributed), or the
    shell form, is reported."""
    assert dfm.command_problems(dfm.parse(f"FROM python:3.11-slim\n{cmd}\n"))


def test_parser_handles_continuations_and_comments() -> None:
    """Backslash continuations join; comment lines inside them are dropped."""
    df = dfm.parse("FROM a\n# c\nRUN one \\\n  # inside\n  && two\nWORKDIR /w\nWORKDIR x\n"
                   "COPY --chown=1:1 src/ dst/\n")
    assert [i.keyword for i in df.instructions] == ["FROM", "RUN", "WORKDIR", "WORKDIR", "COPY"]
    assert df.get("RUN")[0].args == "one && two"
    assert df.workdir == "/w/x"
    assert df.copies[0].sources == ["src"] and df.copies[0].dest == "/w/x/dst/"
