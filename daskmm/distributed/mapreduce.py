"""One map-reduce for every model: a function over the partitions (or over states that stay on
the workers), and sums of what comes back by a tree of tasks, with task names that say on the
dashboard what runs (``daskmm-MODEL-STEP-TOKEN-I``: ``daskmm-glmm-joint_try-1a2b3c4d-7``).

The same calls run in process (:class:`daskmm.distributed.execution.InProcess`, every task at
once, here) and on a cluster; results are summed in the same order either way, so a fit does
not depend on where it ran. The LMM's passes, the GLMM's criteria, the GAM's statistics and
PIRLS, and the GWAS scan's relationship matrices all go through here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from daskmm.distributed.execution import is_in_process


def token() -> str:
    """A fresh token for one call's task names."""
    return uuid.uuid4().hex[:8]


def step_name(fn: Callable) -> str:
    """``MODEL-STEP`` for a task function: its model package (or module) and its name."""
    parts = fn.__module__.split(".")
    where = parts[2] if len(parts) > 2 and parts[1] == "models" else parts[-1]
    return f"{where}-{fn.__name__.lstrip('_')}"


def task_keys(name: str, n: int) -> list[str]:
    """``n`` task names for one map: ``daskmm-NAME-TOKEN-I``."""
    tok = token()
    return [f"daskmm-{name}-{tok}-{i}" for i in range(n)]


def map_parts(client, fn: Callable, *iterables, name: str | None = None, **kwargs) -> list:
    """``client.map(fn, *iterables, **kwargs)`` with named tasks (``name`` defaults to
    :func:`step_name`); in process the tasks run here, at once."""
    n = min((len(it) for it in iterables), default=0)
    keys = task_keys(name or step_name(fn), n)
    if not is_in_process(client):
        kwargs = scatter_large(client, kwargs)
    return client.map(fn, *iterables, key=keys, **kwargs)


_MAP_OPTIONS = {"pure", "workers", "allow_other_workers", "resources", "retries", "priority",
                "fifo_timeout", "actor", "actors", "batch_size"}
LARGE_ARGUMENT = 50_000
"""Bytes from which :func:`map_parts` scatters a keyword argument itself."""


def scatter_large(client, kwargs: dict) -> dict:
    """``kwargs`` with each large argument (:data:`LARGE_ARGUMENT` bytes or more) scattered
    to the cluster under a key of its own. ``Client.map`` makes a large keyword argument a
    data task keyed by the argument's *name* (distributed 2026.8, ``_MapExpr``): two maps
    with a large ``b=`` then share one key, and the second waits on, or trips over, the
    first's (a crossed GLMM fit's PIRLS passes hung that way)."""
    from dask.sizeof import sizeof
    out = {}
    for k, v in kwargs.items():
        if k not in _MAP_OPTIONS and sizeof(v) >= LARGE_ARGUMENT:
            v = client.scatter([v], hash=False)[0]  # one object (a dict or list stays whole)
        out[k] = v
    return out


def map_gather(client, fn: Callable, *iterables, name: str | None = None, **kwargs) -> list:
    """:func:`map_parts` and the results gathered, in partition order."""
    return client.gather(map_parts(client, fn, *iterables, name=name, **kwargs))


def submit(client, fn: Callable, *args, name: str | None = None, **kwargs):
    """``client.submit`` with a named task."""
    return client.submit(fn, *args, key=task_keys(name or step_name(fn), 1)[0], **kwargs)


def tree_sum(client, futures: list, combine: Callable, split_every: int = 8,
             splat: bool = False):
    """Sum ``futures`` by a tree of ``combine`` tasks (each of ``split_every`` inputs, given
    as a list, or as arguments with ``splat``); the root future."""
    futures = list(futures)
    level = 0
    while len(futures) > 1:
        keys = task_keys(f"{step_name(combine)}-{level}", len(range(0, len(futures),
                                                                    split_every)))
        futures = [client.submit(combine, *(futures[j:j + split_every] if splat else
                                            [futures[j:j + split_every]]),
                                 key=keys[k], pure=False)
                   for k, j in enumerate(range(0, len(futures), split_every))]
        level += 1
    return futures[0]


def map_delayed(client, fn: Callable, parts: list, per_part: dict | None = None,
                broadcast: Callable[[object], bool] | None = None, **kwargs) -> list:
    """``fn(part, **kwargs)`` for each partition as futures: ``parts`` a pandas frame (in
    process), futures held on the workers, or a dask frame's delayed partitions (read anew by
    each pass). Values in ``per_part`` are lists, one entry a partition; keyword values for
    which ``broadcast`` is true (a model's spec) go to every worker once."""
    per_part = per_part or {}
    name = step_name(fn)
    if is_in_process(client):
        return [client.submit(fn, p, **kwargs, **{k: v[i] for k, v in per_part.items()})
                for i, p in enumerate(parts)]
    import dask
    from dask.delayed import Delayed

    # hash=False: a new key each time (the same value scattered again under its old key
    # races with the release of the previous copy: "lost dependencies")
    kw = {k: (client.scatter(v, broadcast=True, hash=False)
              if broadcast is not None and broadcast(v) else v) for k, v in kwargs.items()}
    keys = task_keys(name, len(parts))
    if parts and not isinstance(parts[0], Delayed):  # futures held on the workers
        return [client.submit(fn, p, **kw, **{k: v[i] for k, v in per_part.items()},
                              key=keys[i], pure=False) for i, p in enumerate(parts)]
    task = dask.delayed(fn, pure=False)
    return client.compute([task(p, **kw, **{k: v[i] for k, v in per_part.items()},
                                dask_key_name=keys[i]) for i, p in enumerate(parts)])


def map_reduce(client, fn: Callable, parts: list, combine: Callable,
               broadcast: Callable[[object], bool] | None = None, **kwargs):
    """``sum(fn(part, **kwargs))`` over the partitions, gathered. On a cluster the partitions
    go in waves of 16 a worker, each wave summed to one future while the next runs, so the
    workers hold at most two waves of statistics, not one per partition (with a 10^4-level
    random effect, 5 MB a partition: all 600 partitions of 3x10^8 rows held at once took the
    peak worker memory from 0.95 to 1.9 GiB)."""
    if is_in_process(client) or not parts:
        return client.gather(tree_sum(client, map_delayed(client, fn, parts,
                                                          broadcast=broadcast, **kwargs),
                                      combine))
    from distributed import wait
    wave = 16 * max(1, len(client.scheduler_info()["workers"]))
    partials = []
    for i in range(0, len(parts), wave):
        partials.append(tree_sum(client, map_delayed(client, fn, parts[i:i + wave],
                                                     broadcast=broadcast, **kwargs), combine))
        if len(partials) >= 2:
            wait(partials[-2])
    return client.gather(tree_sum(client, partials, combine))
