"""Where the service's results live: a local folder, or an fsspec URL (``s3://bucket/prefix``,
``gs://...``, ``file:///...``).

With a URL, a job writes its result into a local staging folder (``--state-dir``) exactly as
``daskmm run`` does (atomically, ``_SUCCESS`` last), and its process then publishes it: every
file is copied to ``ROOT/OWNER/ID/`` and ``_SUCCESS`` last, and the staging copy removed. The
job only becomes ``succeeded`` after that, so a reader never sees a partial result as a
finished one. Listing, reading and deleting go through the same filesystem object.
"""

from __future__ import annotations

import posixpath
import shutil
from pathlib import Path

SUCCESS = "_SUCCESS"


def is_url(root: str) -> bool:
    return "://" in str(root)


class ResultsRoot:
    """The results root: ``root`` a local folder or an fsspec URL."""

    def __init__(self, root: str):
        self.root = str(root).rstrip("/") if is_url(root) else str(Path(root).resolve())
        self.url = is_url(root)
        if self.url:
            import fsspec
            self.fs, self.path = fsspec.core.url_to_fs(self.root)
            self.fs.makedirs(self.path, exist_ok=True)
        else:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def job_location(self, owner: str, job_id: str) -> str:
        if self.url:
            return f"{self.root}/{owner}/{job_id}"
        return str(Path(self.root) / owner / job_id)

    def _fs_path(self, location: str) -> str:
        import fsspec
        return fsspec.core.url_to_fs(location)[1]

    def contains(self, location: str, owner: str) -> bool:
        """``location`` lies inside ``owner``'s prefix of this root (not the prefix itself)."""
        prefix = self.job_location(owner, "")
        if self.url:
            return location.startswith(prefix.rstrip("/") + "/")
        p = Path(location).resolve()
        return Path(prefix).resolve() in p.parents

    def names(self, location: str, owner: str) -> list[str]:
        """The result files of a job of ``owner`` (no hidden files, no marker), sorted; none
        when ``location`` is not in that owner's prefix."""
        if not self.contains(location, owner):
            return []
        if self.url:
            base = self._fs_path(location)
            if not self.fs.exists(base):
                return []
            found = self.fs.find(base)
            rel = [posixpath.relpath(f, base) for f in found]
        else:
            base = Path(location)
            if not base.is_dir():
                return []
            rel = [str(p.relative_to(base)) for p in base.rglob("*")
                   if p.is_file() and not p.is_symlink()]
        return sorted(r for r in rel if not posixpath.basename(r).startswith((".", "_")))

    def local_file(self, location: str, name: str, owner: str) -> Path | None:
        """For a local root: the file's path if it is one of the job's result files."""
        if name not in self.names(location, owner):
            return None
        base = Path(location).resolve()
        path = (base / name).resolve()
        return path if base in path.parents and path.is_file() else None

    def read(self, location: str, name: str, owner: str) -> bytes | None:
        """For a URL root: the file's bytes (None when it is not one of the job's files)."""
        if name not in self.names(location, owner):
            return None
        with self.fs.open(posixpath.join(self._fs_path(location), name), "rb") as fh:
            return fh.read()

    def remove(self, location: str, owner: str) -> None:
        """Delete a job's result folder (only ever inside ``owner``'s prefix)."""
        if not self.contains(location, owner):
            return
        if self.url:
            base = self._fs_path(location)
            if self.fs.exists(base):
                self.fs.rm(base, recursive=True)
        else:
            shutil.rmtree(location, ignore_errors=True)


def publish(local: str | Path, dest: str) -> None:
    """Copy a finished result folder to ``dest`` (an fsspec URL), ``_SUCCESS`` last, then
    remove the local copy."""
    import fsspec
    fs, base = fsspec.core.url_to_fs(dest)
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    marker = [p for p in files if p.name == SUCCESS and p.parent == local]
    for p in [p for p in files if p not in marker] + marker:
        target = posixpath.join(base, p.relative_to(local).as_posix())
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        fs.put_file(str(p), target)
    shutil.rmtree(local, ignore_errors=True)


def unpublish(dest: str) -> None:
    """Remove what :func:`publish` copied to ``dest`` (all of it or part)."""
    import fsspec
    fs, base = fsspec.core.url_to_fs(dest)
    if fs.exists(base):
        fs.rm(base, recursive=True)
