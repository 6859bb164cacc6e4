"""Which Dask client a fit runs on."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from distributed import Client, LocalCluster

from daskmm.errors import DaskmmError

log = logging.getLogger("daskmm")


@contextlib.contextmanager
def client_for(client: Client | str | None = None, timeout: float = 10.0,
               local: dict | None = None) -> Iterator[Client]:
    """Yield a client: the one given, one for a scheduler address, the current one, or a new
    LocalCluster (closed again on exit).

    ``client`` may be a :class:`distributed.Client`, a scheduler address (``tcp://host:8786``),
    or None: then ``DASK_SCHEDULER_ADDRESS`` if set, else the current client, else a
    LocalCluster sized to this machine (``local``: its ``n_workers``, ``threads_per_worker``,
    ``memory_limit``; one thread per worker process by default).
    """
    if isinstance(client, Client):
        yield client
        return
    address = client or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            c = Client(address, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise DaskmmError(f"no Dask scheduler answered at {address!r} within {timeout:g}s; "
                              "check the address or leave it out to use a local cluster") from exc
        try:
            yield c
        finally:
            c.close()
        return
    try:
        yield Client.current()
        return
    except ValueError:
        pass
    kwargs = {"threads_per_worker": 1, **(local or {})}
    log.info("starting a LocalCluster (%s)", ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    with LocalCluster(processes=True, dashboard_address=None, **kwargs) as cluster, \
            Client(cluster) as c:
        yield c
