"""Progress of long passes: a bar on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

from daskmm.events import emit

log = logging.getLogger("daskmm")


def track(futures: list, label: str, every_s: float = 5.0) -> None:
    """Wait for ``futures``, showing progress.

    On a terminal (stderr is a TTY) this is ``distributed.progress``'s text bar. Otherwise
    (a batch job's log) a line ``label: done/total tasks`` is logged at INFO level at most
    every ``every_s`` seconds, and once at the end. Failures are not raised here: the caller
    gathers the results and gets the task's exception then.
    """
    if not futures or getattr(futures[0], "client", None) is None:  # none, or in process
        return
    emit("pass_start", label=label, total=len(futures))
    from distributed import as_completed
    client = futures[0].client  # not necessarily the default client (set_as_default=False)
    if sys.stderr.isatty() and log.isEnabledFor(logging.INFO):
        from distributed.diagnostics.progressbar import progress
        log.info("%s", label)
        with client.as_current():
            progress(futures, notebook=False, multi=False)
        print(file=sys.stderr)
        return
    total, done, last = len(futures), 0, time.monotonic()
    for _ in as_completed(futures, loop=client.loop):
        done += 1
        now = time.monotonic()
        if now - last >= every_s and done < total:
            log.info("%s: %d/%d tasks", label, done, total)
            last = now
    log.info("%s: %d/%d tasks done", label, total, total)
    emit("pass", label=label, done=total, total=total)
