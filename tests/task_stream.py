"""What a Dask task stream says ran where (``distributed.get_task_stream``'s records)."""

from __future__ import annotations


def workers_by_step(records: list[dict]) -> dict[str, set]:
    """``STEP -> the workers that ran it`` for daskmm's named tasks
    (``daskmm-MODEL-STEP-TOKEN-I``)."""
    ran: dict[str, set] = {}
    for t in records:
        key = str(t["key"])
        if key.startswith("daskmm-"):
            ran.setdefault(key.split("-")[2], set()).add(t["worker"])
    return ran
