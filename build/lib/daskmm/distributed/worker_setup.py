"""Worker preload (``preload=["daskmm.distributed.worker_setup"]``) for the LocalClusters
daskmm starts: a worker ignores SIGINT, so a Ctrl-C at the terminal (sent to the whole process
group) stops the client, which shuts the cluster down in order, instead of every worker
printing its own traceback."""

from __future__ import annotations

import signal
import threading


def dask_setup(worker) -> None:  # noqa: ARG001 - the preload protocol passes the worker
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
