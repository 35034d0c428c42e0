"""Threads of numpy's BLAS (OpenBLAS) in the worker process.

Requests multiply small matrices on the event loop: ``/candidates`` scores the catalogue
against a user's interests (``[items, 384] @ [384, interests]``), and batches update profiles and
interests the same way.  OpenBLAS splits such a call over one thread per core, and every thread
waits for the others; with the loop, the consumer thread, snapshot threads and the broker on the
same cores, that wait is most of the call.  Measured on 2 cores (2,000 items, 20,000 users,
`/candidates?k=20` back to back, no ingest, one run each side by side): mean 6.63 ms with
OpenBLAS's default of 2 threads, 4.11 ms with 1 (p99 27.4 vs 17.5 ms).  Like
``PROFILES_FAISS_THREADS`` and ``PROFILES_ENCODER_THREADS``, the worker therefore runs numpy's BLAS
single-threaded (``PROFILES_BLAS_THREADS``, default 1).  The limit is process-wide (OpenBLAS
keeps one thread pool); FAISS's own BLAS follows ``PROFILES_FAISS_THREADS`` (OpenMP) and torch
its own threads.
"""

from __future__ import annotations

__all__ = ["blas_threads", "set_blas_threads"]


def set_blas_threads(n: int) -> None:
    """Threads of every BLAS library loaded in this process that threadpoolctl can limit
    (numpy's OpenBLAS), from now on; ``n`` 0: leave the default, one per core."""
    if n > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=int(n), user_api="blas")


def blas_threads() -> dict[str, int]:
    """{library file name: threads} of the BLAS libraries loaded in this process."""
    from threadpoolctl import threadpool_info

    return {i["filepath"].rsplit("/", 1)[-1]: int(i["num_threads"]) for i in threadpool_info()
            if i["user_api"] == "blas"}
