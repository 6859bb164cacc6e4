"""Tasks on blocks of a model's state held on the workers (the crossed models' crossing
tables: :mod:`daskmm.kernels.crossed_blocks`): where the blocks go, and one named task a block,
run where the block is, the results gathered or left there. The same calls run in process
(every task at once, here)."""

from __future__ import annotations

from collections.abc import Callable

from daskmm.distributed.execution import is_in_process
from daskmm.distributed.mapreduce import step_name, task_keys

INLINE_BYTES = 1 << 20
"""An argument sent to every block goes inside each task below this many bytes (one round
trip); from this size it is scattered once and fetched by each block's worker."""


class ClientBlocks:
    """:class:`~daskmm.kernels.crossed_blocks.BlockRunner` over a client: ``fn(block, ...)``
    as one task per block; a task depends on its block alone, so it runs on the block's
    worker.

    Parameters
    ----------
    client : distributed.Client or InProcess
    """

    def __init__(self, client):
        self.client = client

    def _broadcast(self, kw: dict) -> dict:
        if is_in_process(self.client):
            return kw
        from dask.sizeof import sizeof
        return {k: (self.client.scatter([v], hash=False)[0] if sizeof(v) >= INLINE_BYTES
                    else v) for k, v in kw.items()}

    def keep(self, fn: Callable, handles, per: dict | None = None, **kw) -> list:
        """``fn(block_i, **kw, **{k: per[k][i]})`` for each block, left on the workers."""
        per = per or {}
        kw = self._broadcast(kw)
        keys = task_keys(step_name(fn), len(handles))
        return [self.client.submit(fn, h, key=keys[i], pure=False, **kw,
                                   **{k: v[i] for k, v in per.items()})
                for i, h in enumerate(handles)]

    def run(self, fn: Callable, handles, per: dict | None = None, **kw) -> list:
        """:meth:`keep`, the results gathered in block order."""
        return self.client.gather(self.keep(fn, handles, per, **kw))

    def join(self, fn: Callable, handles, **kw):
        """``fn(list of the blocks' values, **kw)``, left on the workers."""
        return self.client.submit(fn, list(handles), key=task_keys(step_name(fn), 1)[0],
                                  pure=False, **kw)


class Placement:
    """Where blocks go: one a worker (``blocks`` where given), block ``i`` on worker ``i mod
    n``; and the partitions ``parts`` (futures) by the worker that holds them, so that each
    worker sums its own partitions into each block (one task per worker and block) and only
    those sums move.

    Attributes
    ----------
    n : int
        Blocks.
    workers : list
        Each block's worker (``None`` in process).
    groups : list of (worker, list of int)
        The partitions' indices by the worker holding them.
    """

    def __init__(self, client, parts: list, blocks: int | None = None):
        self.local = is_in_process(client)
        workers = [None] if self.local else \
            sorted(client.scheduler_info(n_workers=-1)["workers"])
        self.n = int(blocks or len(workers))
        self.workers = [workers[i % len(workers)] for i in range(self.n)]
        self.groups: list[tuple] = [(None, list(range(len(parts))))]
        if not self.local:
            who = client.who_has(parts)
            by: dict = {}
            for i, f in enumerate(parts):
                by.setdefault((list(who.get(f.key) or []) or [None])[0], []).append(i)
            self.groups = [(w, by[w]) for w in sorted(by, key=str)]

    def on(self, worker) -> dict:
        """``submit``'s keywords for a task on ``worker`` (another if it is gone)."""
        return {} if self.local or worker is None else \
            {"workers": [worker], "allow_other_workers": True}
