"""OpenMP threads of the FAISS calls the worker makes on its event loop thread.

FAISS parallelises a call over its rows (queries to search, vectors to add) with OpenMP, and
every thread of the call waits at a barrier for the others.  On busy cores (the worker's own
executor threads, other workers, the broker) a thread the OS has parked stalls the whole call.
Measured on a 2-core machine under load: a 125-row update
of a 10^5-user IVF (``IVF1264_HNSW32,SQ8``) took a median 73 ms with 2 threads and 17 ms with
1; a 4-query item search 29 ms and 12 ms.  Like ``PROFILES_ENCODER_THREADS`` for torch, the
worker therefore runs FAISS single-threaded on its loop (``PROFILES_FAISS_THREADS``, default
1).  OpenMP's thread count is a per-thread setting: executor threads (a background IVF
training, which uses one thread anyway) keep their own.
"""

from __future__ import annotations

from typing import Any

import faiss as _faiss_typed

__all__ = ["set_faiss_threads"]

faiss: Any = _faiss_typed


def set_faiss_threads(n: int) -> None:
    """OpenMP threads of the FAISS calls made by the calling thread from now on (``n`` 0:
    leave FAISS's default, one per core)."""
    if n > 0:
        faiss.omp_set_num_threads(int(n))
