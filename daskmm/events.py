"""Progress events of a running fit, for whoever listens (the fitting service's job process,
the CLI's progress line). Without a listener an event costs two global lookups. After
:func:`request_stop` (Ctrl-C) every event raises KeyboardInterrupt.

The events and their fields:

``evaluation`` (``feval``, ``best``)
    The optimiser starts its ``feval``-th evaluation; ``best`` is the lowest criterion so far.
``pirls`` (``npass``, ``deviance``)
    A GLMM's PIRLS pass over the partitions ended (the ``npass``-th of this evaluation), at
    penalised deviance ``deviance``.
``pass_start`` (``label``, ``total``), ``pass`` (``label``, ``done``, ``total``)
    A round of ``total`` tasks starts, ends (:func:`daskmm.distributed.progress.track`).
``replicates_start`` (``label``, ``total``), ``replicate`` (``label``, ``done``, ``total``)
    ``total`` replicates start (``label``: ``bootstrap``, ``PBmodcomp``); ``done`` of them
    are finished: one event a replicate in this process, one a finished batch of tasks on a
    cluster. Their refits' evaluations are not reported (:func:`muted`).
``profile_start`` (``total``), ``profile_point`` (``parameter``, ``points``), ``profile``
    (``parameter``, ``done``, ``total``, ``points``)
    Likelihood profiles of ``total`` parameters start; a profile in this process reached its
    ``points``-th point; the profile of ``parameter`` is finished, the ``done``-th.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

_listener: Callable[[str, dict], None] | None = None
_stop_requested = False


def request_stop() -> None:
    """Make every later event raise :class:`KeyboardInterrupt` (the CLI's Ctrl-C handler: a
    KeyboardInterrupt raised where Python cannot pass it on, in a finaliser, say, is lost, and
    the fit must still stop at its next evaluation)."""
    global _stop_requested
    _stop_requested = True


def set_listener(fn: Callable[[str, dict], None] | None) -> None:
    """Send every event to ``fn(kind, fields)`` (None: stop)."""
    global _listener
    _listener = fn


def emit(kind: str, **fields) -> None:
    """Report an event to the listener, if any (a listener's failure never stops a fit);
    raise :class:`KeyboardInterrupt` once a stop was requested."""
    if _stop_requested:
        raise KeyboardInterrupt
    fn = _listener
    if fn is not None:
        try:
            fn(kind, fields)
        except Exception:  # noqa: BLE001 - progress is best effort
            pass


@contextlib.contextmanager
def muted(*kinds: str) -> Iterator[None]:
    """Leave events of ``kinds`` out while the block runs.

    A step that reports its own units (a bootstrap's replicates) mutes its refits'
    ``evaluation`` events, which would otherwise read as one long optimisation. A requested
    stop still raises at every event.

    Parameters
    ----------
    *kinds : str
        The events left out.
    """
    global _listener
    inner = _listener
    if inner is None:
        yield
        return

    def filtered(kind: str, fields: dict) -> None:
        if kind not in kinds:
            inner(kind, fields)

    _listener = filtered
    try:
        yield
    finally:
        if _listener is filtered:  # not replaced meanwhile (the command ended)
            _listener = inner
