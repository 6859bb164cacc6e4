"""The environment for a reference tool's process (R, FaST-LMM) in a benchmark.

Starting Dask worker processes sets ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and
``OPENBLAS_NUM_THREADS`` to 1 in the *starting* process's environment (distributed's
``pre-spawn-environ``), and a subprocess started later inherits them: the reference tool
would then run on one core. Benchmarks start their tools with :func:`tool_env`, the
environment as it was when this module was imported (before any cluster started), so
every tool gets every core unless the user limited threads themselves."""

from __future__ import annotations

import os

_THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_BEFORE = {k: os.environ.get(k) for k in _THREADS}


def tool_env() -> dict[str, str]:
    """``os.environ`` with the thread limits as they were before Dask set them."""
    env = dict(os.environ)
    for k, v in _BEFORE.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env
