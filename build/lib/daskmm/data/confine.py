"""Reading only inside allowed folders, checked on the opened file.

The fitting service runs each job in a process confined to the job owner's places (the data
roots and the owner's own results, :mod:`daskmm.service.jobdoc`). While a confinement is set
(:func:`confined`), every local input daskmm opens goes through :func:`open_checked`: the file
is opened first (without blocking, so a named pipe cannot hold the job), must be a regular
file, and the path the *open file* has (``/proc/self/fd/N``) is checked afterwards against the
allowed folders, so a link swapped in between a check and the open cannot lead the read
elsewhere. This covers what the job's process reads (:func:`open_input`, :func:`check_opened`)
and what Dask workers read for it: CSV and Parquet partitions go through
:class:`ConfinedFileSystem` (an fsspec filesystem carrying the allowed folders to the workers),
PLINK ``.bed`` blocks through the checked file's descriptor. Outside the service no
confinement is set and these are plain reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from fsspec.implementations.local import LocalFileOpener, LocalFileSystem
from fsspec.registry import register_implementation
from fsspec.utils import stringify_path

from daskmm.errors import DataError

_ROOTS: tuple[str, ...] | None = None
PROTOCOL = "daskmm-confined"


@contextlib.contextmanager
def confined(roots: list[str] | tuple[str, ...]) -> Iterator[None]:
    """Within the block, local inputs are read only when their real path lies inside
    ``roots`` (local folders; URL prefixes are the service's to check)."""
    global _ROOTS
    before = _ROOTS
    _ROOTS = tuple(os.path.realpath(r) for r in roots if "://" not in r)
    try:
        yield
    finally:
        _ROOTS = before


def active() -> tuple[str, ...] | None:
    """The folders of the current confinement, or None."""
    return _ROOTS


def inside(real: str, roots: tuple[str, ...]) -> bool:
    """``real`` (a real path) is one of ``roots`` or lies below one."""
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


def _outside(path: str) -> DataError:
    return DataError(f"input {path!r} leads outside the folders this job may read (through a "
                     "symbolic link); give a file inside them")


def open_checked(path: str | os.PathLike, mode: str, roots: tuple[str, ...]):
    """Open ``path`` for reading, then refuse it unless it is a regular file whose real path
    (as the open file has it) lies inside ``roots``."""
    p = os.fspath(path)
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError(f"input {p!r} is not a regular file (a pipe, socket or device); "
                            "give a file")
        if not inside(opened_path(fd, p), roots):
            raise _outside(p)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def open_input(path: str | os.PathLike, mode: str = "rb"):
    """``open(path, mode)`` for reading; under a confinement, :func:`open_checked`."""
    if _ROOTS is None:
        return open(path, mode)  # noqa: SIM115 - returned to the caller
    return open_checked(path, mode, _ROOTS)


def check_opened(fh, path: str | os.PathLike) -> None:
    """Under a confinement, refuse (and close) ``fh``, a local file opened by another reader,
    when the file it opened lies outside the allowed folders or cannot be told."""
    if _ROOTS is None:
        return
    try:
        fd = fh.fileno()
    except (AttributeError, OSError, ValueError):
        fh.close()
        raise DataError(f"input {os.fspath(path)!r} cannot be checked once opened (its reader "
                        "gives no file descriptor); give it uncompressed or gzip-compressed"
                        ) from None
    if not inside(opened_path(fd, os.fspath(path)), _ROOTS):
        fh.close()
        raise _outside(os.fspath(path))


class _CheckedOpener(LocalFileOpener):
    def _open(self):
        if self.f is None or self.f.closed:
            from fsspec.compression import compr

            self.f = open_checked(self.path, self.mode, self.fs.roots)
            if self.compression:
                self.f = compr[self.compression](self.f, mode=self.mode)
            self.size = self.f.seek(0, 2)
            self.f.seek(0)
            self.f.size = self.size


class ConfinedFileSystem(LocalFileSystem):
    """The local filesystem, read-only, every file checked once opened to lie inside
    ``roots`` (on the worker that opens it: the instance travels with the read tasks).
    Paths may be written ``daskmm-confined:///abs/path``."""

    protocol = (PROTOCOL,)

    def __init__(self, roots: list[str] | tuple[str, ...] = (), **kwargs):
        super().__init__(**kwargs)
        self.roots = tuple(roots)

    @classmethod
    def _strip_protocol(cls, path):
        path = stringify_path(path)
        if path.startswith(PROTOCOL + "://"):
            path = path[len(PROTOCOL) + 3:]
        return super()._strip_protocol(path)

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        if "r" not in mode or "+" in mode:
            raise PermissionError(f"{path!r}: a confined read may not write")
        return _CheckedOpener(self._strip_protocol(path), mode, fs=self, **kwargs)


register_implementation(PROTOCOL, ConfinedFileSystem, clobber=True)


def confined_fs() -> ConfinedFileSystem | None:
    """The filesystem Dask should read local inputs with now (None: no confinement)."""
    return None if _ROOTS is None else ConfinedFileSystem(roots=list(_ROOTS))
