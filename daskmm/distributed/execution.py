"""Where a fit runs: in this process, or on a Dask cluster.

Small data gain nothing from a cluster: starting a LocalCluster costs seconds, and every
evaluation on it is a round trip. Below :data:`IN_PROCESS_CELLS` (rows x columns the model
uses), with no client given and no scheduler named, a fit runs **in this process**: the same
passes and kernels, called directly on one pandas partition, with no ``distributed`` import.

The in-process executor, :class:`InProcess`, answers the few calls the models make of a
``distributed.Client`` (``map``, ``submit``, ``compute``, ``gather``, ``cancel``, ``scatter``),
so the model code has one path for both. Its futures are already finished (:class:`Done`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from daskmm.errors import DaskmmError

IN_PROCESS_CELLS = 10_000_000
"""Fits of data below this many cells (rows x used columns) run in this process when no client
or scheduler is given (``DASKMM_IN_PROCESS_CELLS`` overrides it)."""

MODES = ("auto", "in-process", "gathered", "distributed")


class Done:
    """A finished result, shaped like a ``distributed.Future`` for the calls the models make."""

    __slots__ = ("value", "key")
    status = "finished"
    client = None

    def __init__(self, value: Any, key: str | None = None):
        self.value = value
        self.key = key

    def result(self, timeout: float | None = None) -> Any:
        return self.value


def _resolve(x: Any) -> Any:
    if isinstance(x, Done):
        return x.value
    if isinstance(x, list):
        return [_resolve(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_resolve(v) for v in x)
    return x


class InProcess:
    """Runs each task at once, here. ``mode`` is ``"in-process"``."""

    mode = "in-process"

    def map(self, fn, *iterables, key=None, pure=True, **kwargs) -> list[Done]:
        kw = {k: _resolve(v) for k, v in kwargs.items()}
        return [Done(fn(*map(_resolve, args), **kw)) for args in zip(*iterables)]

    def submit(self, fn, *args, key=None, pure=True, **kwargs) -> Done:
        return Done(fn(*map(_resolve, args), **{k: _resolve(v) for k, v in kwargs.items()}))

    def compute(self, tasks):
        """Run ``dask.delayed`` tasks with dask's synchronous scheduler (called directly:
        ``dask.compute`` would import ``distributed`` to look for a client)."""
        from dask.local import get_sync

        many = isinstance(tasks, (list, tuple))
        tasks = list(tasks) if many else [tasks]
        graph: dict = {}
        for t in tasks:
            graph.update(t.__dask_graph__())
        values = get_sync(graph, [t.key for t in tasks])
        done = [Done(v) for v in values]
        return done if many else done[0]

    def gather(self, futures):
        return _resolve(futures)

    def scatter(self, data, broadcast: bool = False):
        return Done(data)

    def cancel(self, futures) -> None:
        pass

    def close(self) -> None:
        pass


def in_process_limit() -> int:
    """The cell count below which fits run in process (env ``DASKMM_IN_PROCESS_CELLS``)."""
    raw = os.environ.get("DASKMM_IN_PROCESS_CELLS")
    if raw is None:
        return IN_PROCESS_CELLS
    try:
        return int(float(raw))
    except ValueError:
        raise DaskmmError(f"DASKMM_IN_PROCESS_CELLS={raw!r} is not a number; give a cell "
                          "count such as 10000000, or unset it") from None


def cluster_named(client) -> bool:
    """True when the caller named a cluster: a client, an address, ``DASK_SCHEDULER_ADDRESS``,
    or a current ``distributed`` client in this process."""
    if client is not None or os.environ.get("DASK_SCHEDULER_ADDRESS"):
        return True
    if "distributed" not in sys.modules:  # no client can exist without the import
        return False
    from distributed import Client
    try:
        Client.current()
        return True
    except ValueError:
        return False


def runs_in_process(mode: str, client, cells) -> bool:
    """Whether a fit runs here: ``mode="in-process"``, or ``"auto"`` with no cluster named and
    data known to be below :func:`in_process_limit` cells (``cells``: a count, None for
    unknown, or a callable giving either, asked only when needed)."""
    if mode not in MODES:
        raise DaskmmError(f"mode={mode!r}; allowed: {', '.join(map(repr, MODES))}")
    if mode == "in-process":
        if client is not None:
            raise DaskmmError("mode='in-process' runs without a cluster; leave out client= "
                              "(--scheduler), or choose mode 'auto', 'gathered' or "
                              "'distributed'")
        return True
    if mode != "auto" or cluster_named(client):
        return False
    if callable(cells):
        cells = cells()
    return cells is not None and cells <= in_process_limit()


@contextlib.contextmanager
def executor(in_process: bool, client=None, local: dict | None = None) -> Iterator[Any]:
    """Yield :class:`InProcess`, or a ``distributed.Client`` from
    :func:`daskmm.distributed.client.client_for` (closed on exit if it started one)."""
    if in_process:
        yield InProcess()
        return
    from daskmm.distributed.client import client_for
    with client_for(client, local=local) as c:
        yield c


def is_in_process(c) -> bool:
    return isinstance(c, InProcess)
