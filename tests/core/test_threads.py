"""One BLAS thread for small in-process work (daskmm/core/threads.py)."""

from __future__ import annotations

import numpy as np  # noqa: F401 - loads the BLAS whose threads are counted
from threadpoolctl import threadpool_info, threadpool_limits

from daskmm.core.threads import one_blas_thread


def blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_a_small_fit_runs_with_one_blas_thread_and_gives_the_others_back():
    with threadpool_limits(2):   # two, whatever this machine's default
        with one_blas_thread(True):
            assert blas_threads() == {1}
        assert blas_threads() == {2}
        with one_blas_thread(False):
            assert blas_threads() == {2}
