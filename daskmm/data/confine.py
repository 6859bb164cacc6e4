"""Reading only inside allowed folders, checked on the opened file.

The fitting service runs each job in a process confined to the job owner's places (the data
roots and the owner's own results, :mod:`daskmm.service.jobdoc`). While a confinement is set
(:func:`confined`), every local input daskmm opens itself (CSV and Parquet files, dataset
buckets and manifests, trait tables, PLINK files) goes through :func:`open_input`: the file is
opened first and the path the *open file* has (``/proc/self/fd/N``) is checked afterwards, so
a link swapped in between a check and the open cannot lead the read elsewhere. Outside the
service no confinement is set and :func:`open_input` is a plain ``open``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from daskmm.errors import DataError

_ROOTS: tuple[str, ...] | None = None


@contextlib.contextmanager
def confined(roots: list[str] | tuple[str, ...]) -> Iterator[None]:
    """Within the block, :func:`open_input` refuses a file whose real path lies outside
    ``roots`` (local folders; URL prefixes are ignored here)."""
    global _ROOTS
    before = _ROOTS
    _ROOTS = tuple(os.path.realpath(r) for r in roots if "://" not in r)
    try:
        yield
    finally:
        _ROOTS = before


def active() -> tuple[str, ...] | None:
    """The roots of the current confinement, or None."""
    return _ROOTS


def _inside(real: str, roots: tuple[str, ...]) -> bool:
    p = Path(real)
    return any(p == Path(r) or p.is_relative_to(r) for r in roots)


def opened_path(fd: int, path: str) -> str:
    """The real path of the open file ``fd`` (on Linux, what ``/proc/self/fd`` says; elsewhere
    the real path of ``path`` when it is still that very file)."""
    proc = f"/proc/self/fd/{fd}"
    if os.path.islink(proc):
        return os.readlink(proc)
    real = os.path.realpath(path)
    a, b = os.fstat(fd), os.stat(real)
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
        return "<a file that is not at its path any more>"
    return real


def check_opened(fh, path: str | os.PathLike) -> None:
    """Under a confinement, refuse (and close) ``fh`` when the file it opened lies outside
    the allowed folders."""
    if _ROOTS is None:
        return
    try:
        fd = fh.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a local file (a URL's stream): the service checked its prefix
    real = opened_path(fd, os.fspath(path))
    if not _inside(real, _ROOTS):
        fh.close()
        raise DataError(f"input {os.fspath(path)!r} leads outside the folders this job may "
                        "read (through a symbolic link); give a file inside them")


def open_input(path: str | os.PathLike, mode: str = "rb") -> BinaryIO:
    """``open(path, mode)`` for reading, checked by :func:`check_opened`."""
    fh = open(path, mode)  # noqa: SIM115 - returned to the caller
    try:
        check_opened(fh, path)
    except BaseException:
        fh.close()
        raise
    return fh
