"""Atomic directory outputs: write under a hidden sibling, rename into place at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staging_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a new hidden sibling ``.NAME.tmp-XXXXXXXX`` of ``out`` to write into.

    When the block ends normally the directory replaces ``out`` (an existing ``out`` is moved
    aside first and removed after, so there is never a moment without a complete one); when
    it raises, the directory is removed. A process killed inside the block leaves only the
    hidden sibling, never an ``out`` that looks complete.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
