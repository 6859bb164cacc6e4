"""Progress events of a running fit, for whoever listens (the fitting service's job process):
``emit("evaluation", feval=...)`` from the optimiser, ``emit("pass", label=..., done=...,
total=...)`` from a round of tasks. Without a listener an event costs one global lookup."""

from __future__ import annotations

from collections.abc import Callable

_listener: Callable[[str, dict], None] | None = None


def set_listener(fn: Callable[[str, dict], None] | None) -> None:
    """Send every event to ``fn(kind, fields)`` (None: stop)."""
    global _listener
    _listener = fn


def emit(kind: str, **fields) -> None:
    """Report an event to the listener, if any (a listener's failure never stops a fit)."""
    fn = _listener
    if fn is not None:
        try:
            fn(kind, fields)
        except Exception:  # noqa: BLE001 - progress is best effort
            pass
