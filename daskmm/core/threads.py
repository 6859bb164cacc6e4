"""One BLAS thread for small work in this process.

OpenBLAS wakes its threads for calls whose work is microseconds, and the wake-up costs more
than the call: scipy 1.17's L-BFGS-B on a 3-parameter problem takes 4.8 ms with one thread and
128 ms with the default two while the other core is busy (25 iterations; this machine). A small
fit's BLAS calls are all of that kind, so it runs with one (:func:`one_blas_thread`).
The setting is the process's (BLAS has one): the service runs each job in a process of its
own, so two fits never share it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

SMALL_K = 512
"""A mixed model whose dense global block is at most this size is small: its evaluations are
many small factorisations, faster with one BLAS thread."""

_CONTROLLER = None


def one_blas_thread(small: bool = True) -> AbstractContextManager:
    """A context limiting BLAS to one thread when ``small``, a no-op otherwise (the
    controller is made once: a fresh ``threadpool_limits`` costs about 0.4 ms)."""
    global _CONTROLLER
    if not small:
        return nullcontext()
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")
