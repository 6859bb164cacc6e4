"""Where a dataset came from, and whether that source has changed since it was ingested.

A local source (a file, or a directory of files) is recorded file by file as ``(path, size,
modification time in ns)``; a URL as what its filesystem reports (size and, where given, ETag or
modification time). A source whose record differs now is *stale*: a job re-ingests it, and a
fit of the dataset warns.
"""

from __future__ import annotations

import os
from pathlib import Path

from daskmm.data.confine import active, inside


def absolute_source(src: str | os.PathLike) -> str:
    """A local path made absolute (workers on other machines, and later runs from another
    folder, must find it); a URL as given."""
    s = os.fspath(src)
    if "://" in s:
        return s
    return str(Path(s).expanduser().absolute())


def _local_files(p: Path) -> list[Path]:
    if p.is_file():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file()
                  and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts))


def source_info(src: str | os.PathLike) -> dict:
    """The provenance record of ``src`` (empty for a source that cannot be described)."""
    s = os.fspath(src)
    if "://" not in s:
        p = Path(s)
        if not p.exists():
            return {}
        return {"files": [[str(f), f.stat().st_size, f.stat().st_mtime_ns]
                          for f in _local_files(p)]}
    try:
        import fsspec
        fs, _, paths = fsspec.get_fs_token_paths(s)
        info = fs.info(paths[0])
    except Exception:  # no credentials, no network: record nothing rather than fail
        return {}
    keep = {k: info[k] for k in ("size", "ETag", "etag", "mtime", "LastModified", "md5Hash")
            if k in info}
    return {"url": {k: str(v) for k, v in keep.items()}} if keep else {}


def stale_reason(source: str, recorded: dict) -> str | None:
    """Why ``source`` no longer matches ``recorded`` (None when it matches, when there is
    nothing to compare, or when the source is gone: then the dataset is all there is)."""
    if not recorded or not source or source == "simulate":
        return None
    roots = active()
    if roots is not None and ("://" in source or
                              not inside(os.path.realpath(source), roots)):
        # a service job: a source outside the job's places is not looked at (a manifest is
        # the user's file; what it names must not be probed, nor named in an error)
        return None
    now = source_info(source)
    if not now:  # gone (or unreachable): the dataset is all there is
        return None
    if "files" in recorded:
        old = {f: (size, mtime) for f, size, mtime in recorded["files"]}
        new = {f: (size, mtime) for f, size, mtime in now.get("files", [])}
        for f in sorted(set(old) | set(new)):
            if f not in new:
                return f"{f!r} was removed"
            if f not in old:
                return f"{f!r} was added"
            if old[f][0] != new[f][0]:
                return f"{f!r} changed size ({old[f][0]} -> {new[f][0]} bytes)"
            if old[f][1] != new[f][1]:
                return f"{f!r} was modified"
        return None
    if recorded.get("url") != now.get("url"):
        return f"the source {source!r} changed ({recorded.get('url')} -> {now.get('url')})"
    return None
