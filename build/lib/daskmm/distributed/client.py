"""Which Dask client a fit runs on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import socket
from collections.abc import Iterator

from distributed import Client, LocalCluster

from daskmm.errors import DaskmmError

log = logging.getLogger("daskmm")


LOCAL_CLUSTER_STARTED = False
"""Set once this process starts a LocalCluster (the CLI's Ctrl-C exit looks at it)."""

NO_DASHBOARD = {"dashboard_address": None, "scheduler_kwargs": {"dashboard_address": ":0"}}
"""LocalCluster settings for no dashboard: the scheduler's own HTTP server (health, metrics)
still starts, on a free port instead of 8787, which another cluster may hold."""

_ADDRESS = re.compile(r"^(?:(tcp|tls|ws|wss|ucx)://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)"
                      r":(\d{1,5})/?$")


def check_scheduler(address: str, timeout: float = 10.0) -> None:
    """Raise :class:`DaskmmError` unless ``address`` is a well-formed scheduler address
    (``tcp://HOST:PORT``) where a Dask scheduler answers within ``timeout`` seconds.

    ``distributed.Client`` waits without limit on a port that accepts the connection but
    speaks another protocol (an HTTP server, say); this asks the scheduler's ``identity``
    with a hard deadline first."""
    m = _ADDRESS.match(address.strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise DaskmmError(f"scheduler address {address!r} is not of the form tcp://HOST:PORT "
                          "(e.g. tcp://127.0.0.1:8786); check --scheduler, the job's "
                          "cluster.scheduler or DASK_SCHEDULER_ADDRESS")
    full = address.strip() if m.group(1) else f"tcp://{address.strip()}"

    connected = []
    if m.group(1) in (None, "tcp", "tls"):
        host = m.group(2).strip("[]")
        try:
            socket.create_connection((host, int(m.group(3))), timeout=timeout).close()
            connected.append(True)
        except ConnectionRefusedError as exc:  # nothing listens: no use waiting
            raise DaskmmError(f"no Dask scheduler answered at {address!r}: nothing listens "
                              "on that port (connection refused); check the address or leave "
                              "it out to use a local cluster") from exc
        except OSError:
            pass

    async def identity():
        from distributed.comm import connect
        comm = await connect(full, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    def run():
        return asyncio.run(asyncio.wait_for(identity(), timeout))

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            reply = pool.submit(run).result(timeout + 5)
    except (OSError, TimeoutError, concurrent.futures.TimeoutError) as exc:
        if connected:
            raise DaskmmError(f"{address!r} accepted the connection but did not answer as a "
                              f"Dask scheduler within {timeout:g}s; check the port (a "
                              "scheduler listens on 8786 by default)") from exc
        raise DaskmmError(f"no Dask scheduler answered at {address!r} within {timeout:g}s; "
                          "check the address or leave it out to use a local cluster") from exc
    except Exception as exc:  # it answered, in another protocol
        raise DaskmmError(f"{address!r} answered but is not a Dask scheduler "
                          f"({type(exc).__name__}); check the port") from exc
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        what = reply.get("type") if isinstance(reply, dict) else type(reply).__name__
        raise DaskmmError(f"{address!r} answered but is not a Dask scheduler (it is a "
                          f"{what}); give the scheduler's address, usually port 8786")


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
        check_scheduler(address, timeout)
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
        current = Client.current()
    except ValueError:  # no current client
        current = None
    if current is not None:
        # outside the try: an error of the caller's (a ValueError too) must not be taken
        # for "no current client"
        yield current
        return
    kwargs = {"threads_per_worker": 1, **(local or {})}
    log.info("starting a LocalCluster (%s)", ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    # workers' own error logs would repeat, as noise, what the fit raises here; workers
    # ignore SIGINT (worker_setup): a Ctrl-C stops this process, which closes the cluster
    global LOCAL_CLUSTER_STARTED
    LOCAL_CLUSTER_STARTED = True
    with LocalCluster(processes=True, silence_logs=logging.CRITICAL,
                      preload=["daskmm.distributed.worker_setup"], **NO_DASHBOARD,
                      **kwargs) as cluster, \
            Client(cluster) as c:
        yield c
