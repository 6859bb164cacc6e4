"""Safe directory outputs: check the target before any work, write under a hidden sibling,
rename into place at the end.

What daskmm writes (a fit's results, a job's output, a dataset) goes to a folder that is either
new (or empty) or a previous daskmm output of the same kind, recognised by its marker: the
dataset manifest (``_manifest.json``) or the result marker (``_daskmm.json``). Anything else
at the path (a user's folder, a regular file, the input data, a folder holding the job file) is
never replaced, ``force`` or not: :func:`check_output` refuses with one line naming the path.

Staging folders are named ``.NAME.tmp-PID-XXXXXXXX``; one left behind by a killed run (its
process is gone) is removed by the next run to the same target.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from daskmm.errors import DaskmmError

RESULT_MARKER = "_daskmm.json"
"""Written into every result folder: ``{"format": ..., "kind": ..., "name": ...}``."""
RESULT_FORMAT = "daskmm-result/1"
DATASET_MARKER = "_manifest.json"
_LEGACY_RESULT_FILES = {"summary.json", "summary.txt", "fixef.parquet", "ranef.parquet",
                        "job.json", "_SUCCESS"}


class OutputError(DaskmmError):
    """An output path that daskmm will not write to (it would destroy something)."""


def output_kind(path: Path) -> str | None:
    """``"dataset"``, the result kind in the marker (``"fit"``), ``"empty"``, or None for a
    folder that daskmm did not write (or a path that is not a folder)."""
    if not path.is_dir():
        return None
    names = {p.name for p in path.iterdir()}
    if not names:
        return "empty"
    if DATASET_MARKER in names:
        return "dataset"
    if RESULT_MARKER in names:
        try:
            doc = json.loads((path / RESULT_MARKER).read_text())
        except (OSError, ValueError):
            return None
        if isinstance(doc, dict) and doc.get("format") == RESULT_FORMAT:
            return str(doc.get("kind"))
        return None
    # results written before the marker existed: only daskmm's own files, a daskmm summary
    if names <= _LEGACY_RESULT_FILES and "summary.json" in names:
        try:
            doc = json.loads((path / "summary.json").read_text())
        except (OSError, ValueError):
            return None
        if isinstance(doc, dict) and {"formula", "fixef", "objective"} <= set(doc):
            return "fit"
    return None


def result_marker(kind: str, name: str | None = None) -> str:
    return json.dumps({"format": RESULT_FORMAT, "kind": kind, "name": name}) + "\n"


def _marker_name(path: Path) -> str | None:
    """The job that wrote a result (its marker, or ``job.json`` of an older result)."""
    for name in (RESULT_MARKER, "job.json"):
        try:
            got = json.loads((path / name).read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            continue
        if got is not None:
            return got
    return None


def _local(p: str | os.PathLike) -> Path | None:
    s = os.fspath(p)
    if "://" in s and not s.startswith("file://"):
        return None
    return Path(s.removeprefix("file://")).expanduser().resolve()


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies below it."""
    return a == b or b in a.parents


def check_output(out: str | os.PathLike, kind: str, *, force: bool = False,
                 inputs: Iterable[str | os.PathLike] = (),
                 protect: Iterable[str | os.PathLike] = (), name: str | None = None,
                 what: str = "output") -> Path:
    """Check, before any work, that ``out`` may be written; return it as an absolute path.

    Parameters
    ----------
    out : path
        The folder to be written.
    kind : {"fit", "dataset"}
        What will be written there; only a previous output of this kind may be replaced.
    force : bool
        Replace a previous output of this kind (without it, one written under another
        ``name`` is refused).
    inputs : paths
        What the work reads: ``out`` may not be one of them, lie inside one, or contain one.
    protect : paths
        Other paths that must survive (a job file): ``out`` may not be or contain them.
    name : str, optional
        The job writing a result: a previous result of the same job is replaced without
        ``force``.
    what : str
        How to name the path in messages (``"--out"``, ``"output"``, ``"ingest.out"``).

    Raises
    ------
    OutputError
        With one line naming the path and what to do.
    """
    if "\x00" in os.fspath(out) or not os.fspath(out).strip():
        raise OutputError(f"{what} path {os.fspath(out)!r} is not a valid path; give a folder "
                          "name such as results/fit1")
    if "://" in os.fspath(out):
        raise OutputError(f"{what} {os.fspath(out)!r} is a URL; daskmm writes results to a "
                          "local or mounted folder: give its path")
    path = Path(os.fspath(out)).expanduser().absolute()
    real = path.resolve()
    for src in inputs:
        s = _local(src)
        if s is None:
            continue
        if _inside(real, s):
            raise OutputError(f"{what} {str(path)!r} is inside the input {str(s)!r}; writing "
                              "there would change the data being read: choose a folder "
                              "outside it")
        if _inside(s, real):
            raise OutputError(f"{what} {str(path)!r} holds the input {str(s)!r}; replacing it "
                              "would delete the data: choose another folder")
    for keep in protect:
        k = _local(keep)
        if k is not None and _inside(k, real):
            raise OutputError(f"{what} {str(path)!r} holds {str(k)!r}; replacing it would "
                              "delete that: choose another folder")
    if (_inside(Path.cwd().resolve(), real) or _inside(Path.home().resolve(), real)
            or real == Path(real.anchor)):
        raise OutputError(f"{what} {str(path)!r} is or holds the current, home or root "
                          "folder; daskmm writes a new folder: give one, such as results/fit1")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OutputError(f"{what} {str(path)!r} exists and is not a folder; give a new "
                              "folder name (daskmm never replaces a file)")
        have = output_kind(path)
        if have is None:
            raise OutputError(f"{what} {str(path)!r} is a folder that daskmm did not write "
                              "(no daskmm marker); daskmm replaces only its own outputs: give "
                              "a new folder, or remove this one yourself")
        if have not in ("empty", kind):
            raise OutputError(f"{what} {str(path)!r} holds a daskmm {have}, not a {kind}; "
                              "give another folder")
        if have == kind and not force and not (name is not None and kind == "fit"
                                               and _marker_name(path) == name):
            raise OutputError(f"{what} {str(path)!r} already holds a daskmm {kind}; use "
                              "--force to replace it, or give a new folder")
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():
            break
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{what} {str(path)!r} cannot be created: {str(parent)!r} is not a "
                          "folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {str(path)!r} cannot be created: {str(parent)!r} is not "
                          "writable")
    return path


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` siblings of ``out`` left by processes
    that are gone (a killed run); return what was removed."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.glob(f".{out.name}.*-*-*"):
        parts = p.name[len(out.name) + 2:].split("-")
        if len(parts) != 3 or parts[0] not in ("tmp", "old") or not parts[1].isdigit():
            continue
        if _alive(int(parts[1])):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier run in this very process that was interrupted
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sibling(out: Path, tag: str) -> Path:
    return out.with_name(f".{out.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def staging_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a new hidden sibling of ``out`` (an absolute path) to write into.

    When the block ends normally the directory replaces ``out`` (an existing ``out`` is moved
    aside first and removed after, so there is never a moment without a complete one); when
    it raises, the directory is removed. A process killed inside the block leaves only the
    hidden sibling, which the next run removes (:func:`remove_stale_staging`). Call
    :func:`check_output` first: this replaces whatever is at ``out``.
    """
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    tmp = _sibling(out, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            old = _sibling(out, "old")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
