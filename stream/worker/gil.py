"""The interpreter's thread switch interval in the worker (``PROFILES_GIL_SWITCH_MS``).

The worker's event loop shares the GIL with its executor threads: a snapshot serialising a
partition (Python-busy for a second at 10^5 users), the catalogue's snapshot, segment
statistics.  Each time the loop lets the GIL go (a FAISS search or update, which releases it;
waiting for I/O) it waits to take it back until the busy thread is asked to drop it, which
CPython does only after the switch interval (5 ms by default), and then again at every
interval while both want it.  A request or an item search on the loop thus pays one interval
per FAISS call.  Measured side by side (``/work/draft/s21/C/gil_switch.py``, single-query item
searches beside a thread packing a snapshot document, 2 busy cores): p99 about 40 ms at 5 ms,
about 19 at 1 ms, with no measurable cost to the busy thread's or ``Pipeline.process``'s rate
(README "Latency budget").  Applied once at worker start, like ``PROFILES_FAISS_THREADS``.
"""

from __future__ import annotations

import sys

__all__ = ["set_gil_switch"]


def set_gil_switch(ms: float) -> float:
    """Set the switch interval to ``ms`` milliseconds; returns the previous one (ms)."""
    before = sys.getswitchinterval() * 1000.0
    sys.setswitchinterval(ms / 1000.0)
    return before
