"""Progress events of a running fit, for whoever listens (the fitting service's job process):
``emit("evaluation", feval=...)`` from the optimiser, ``emit("pass", label=..., done=...,
total=...)`` from a round of tasks. Without a listener an event costs two global lookups.
After :func:`request_stop` (Ctrl-C) every event raises KeyboardInterrupt."""

from __future__ import annotations

from collections.abc import Callable

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
