"""glibc's mmap threshold in the worker (``PROFILES_MALLOC_MMAP_THRESHOLD``, issue 12).

glibc serves an allocation at or above its *mmap threshold* with its own mapping (given back
to the OS on free) and a smaller one from the heap.  By default the threshold is dynamic: it
starts at 128 KiB and rises to the size of every mapped block freed, up to 32 MiB.  The
worker's per-user tables grow by doubling (profile rows of 1.5 KB: 25 MB a partition at 16,384
users), so once one has been freed the threshold sits at tens of MiB and every later table,
index list and snapshot buffer below it comes from the heap, where the holes the old copies
leave are re-used piecemeal by small objects and cannot be given back.  Measured with
``python -m stream.bench.scale_child`` at 10^4 and 5x10^4 users (base config, side by side,
README "Sizing", stop 21): the RSS slope fell by about 600-700 B per user with a fixed 4 MiB
threshold, the "unattributed" part (what dropping every per-user structure did not free) by
about the same.  Batch-sized temporaries (500 x 384 float64 = 1.5 MB) stay below 4 MiB, so
the hot path does not pay a fresh mapping per batch; the trim threshold is raised with it (see
:func:`set_mmap_threshold`).  CPU, same tree, 3 alternating runs each
(``/work/draft/s21/B/cpu_ab2.sh``, 2 busy cores): bulk load 13.70 vs 13.80 CPU s (medians),
``Pipeline.process`` 56.2 vs 53.3 us/event, minor page faults ~0.9 vs ~0.3 per event.  Applied
once at process start, like ``PROFILES_FAISS_THREADS``; 0 leaves glibc's dynamic default (the
behaviour before).  No effect off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["MAX_THRESHOLD", "set_mmap_threshold"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
#: glibc refuses a larger threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX: 4 MiB * sizeof(long))
MAX_THRESHOLD = 32 << 20


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        lib = ctypes.CDLL(name)
        lib.mallopt  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return lib


def set_mmap_threshold(n_bytes: int) -> bool:
    """Fix glibc's mmap threshold at ``n_bytes`` (0: leave the dynamic default), and its trim
    threshold at 8x that (at most 64 MiB, the dynamic default's ceiling): a fixed mmap
    threshold also fixes the trim threshold at 128 KiB, and the heap's top was then given back
    and faulted in again on every batch (10x the minor page faults in ``Pipeline.process``).
    True when set; False off glibc or when glibc refused the value."""
    if n_bytes <= 0:
        return False
    lib = _libc()
    if lib is None:
        return False
    trim = min(8 * int(n_bytes), 64 << 20)
    return bool(lib.mallopt(ctypes.c_int(_M_MMAP_THRESHOLD), ctypes.c_int(int(n_bytes)))
                and lib.mallopt(ctypes.c_int(_M_TRIM_THRESHOLD), ctypes.c_int(trim)))
