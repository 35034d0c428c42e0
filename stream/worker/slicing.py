"""Serving while ingesting: a micro-batch is applied in slices, with the event loop free between
them (issue 12: ``/candidates``, ``/similar`` and item-search p99 while events stream in).

Requests share the worker's event loop with the batch step, whose apply phase is synchronous
(no ``await``: a search never sees a half-applied change).  A whole batch of
``PROFILES_BATCH_SIZE`` events held the loop for its whole apply (measured at 10^4 users, 500
events: a median 72 ms, p99 129 ms, on 2 busy cores), and a request that arrived meanwhile
waited for all of it.  While requests come in (:class:`Serving`),
:meth:`stream.worker.pipeline.Pipeline.process` therefore applies the batch as slices of at
most ``PROFILES_APPLY_SLICE`` records (each one a complete batch step: classify, dead letters,
apply, ``next_offset``) and lets requests in before each slice (:func:`let_requests_in`).
Before the first one too: a worker behind its log runs batches back to back with one loop pass
between them, and a request needs about three passes (read, start its handler, answer), so it
used to wait several whole batches.

Consistency: a slice holds, of each partition, a contiguous run of its records in offset order,
so between two slices every partition's state is its log applied up to some offset: the state a
smaller batch would leave, never part of one event's effect (partitions share no state that
depends on their order: the merged signal view is a sum of partials).  An event is searchable
when its slice is applied, so still within one batch of its arrival.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
M = TypeVar("M")

__all__ = ["LOOP_SLICE_S", "SERVING_WINDOW_S", "YIELD_PASSES", "Serving", "in_loop_slices",
           "let_requests_in", "slices"]


class _OfPartition(Protocol):
    @property
    def partition(self) -> int: ...


R = TypeVar("R", bound=_OfPartition)

#: loop iterations given to requests between two slices: one to read a request that arrived
#: (the socket callback), one to start its handler task, one for the handler to run; asyncio
#: runs ready callbacks first in, first out, so fewer passes would run the next slice first
YIELD_PASSES = 3
#: seconds after the last request during which batches are applied in slices
SERVING_WINDOW_S = 5.0
#: most seconds :func:`in_loop_slices` runs on the loop before it lets requests in
LOOP_SLICE_S = 0.005
#: weight of the newest batch step in :class:`Serving`'s moving average of CPU per record
PER_RECORD_WEIGHT = 0.2
#: items :func:`in_loop_slices` hands its function at a time (the clock is read between them)
LOOP_STEP = 16


class Serving:
    """Whether the worker is answering requests now: the HTTP layer calls :meth:`note` for
    each request, and :meth:`slice_size` gives the pipeline a slice size only while a request
    came within the last ``window_s`` seconds, else 0 (the whole batch at once).

    The slice size: as many records as the loop's thread applies in ``target_s`` of CPU time
    (``PROFILES_APPLY_SLICE_MS``; :meth:`observe` keeps a moving average of the CPU per record
    of the batch steps), and never fewer than ``PROFILES_APPLY_SLICE`` records: each slice
    repeats the batch step's per-call work, so cheap records need fewer, larger slices for
    the same hold of the loop.  ``target_s`` 0: always ``PROFILES_APPLY_SLICE`` records, as
    before stop 22.  Measured at 20,000 users, 3,000 events/s and ``/candidates`` at 20/s
    (README, "Latency budget"): the requests' p99 was 56-79 ms either way; the ingest tail
    varied more between runs of one configuration than between the two.

    Slicing repeats the apply's per-call work (measured at 10^4 users on busy cores:
    about +15-25 % CPU per event with slices of 128-250, +30 % with 100), so a worker that serves nothing (a backlog drained
    alone, ``profiles bench pipeline``'s P) does not pay for it."""

    def __init__(self, clock: Callable[[], float], window_s: float = SERVING_WINDOW_S,
                 target_s: float = 0.0) -> None:
        self.clock = clock
        self.window_s = window_s
        self.target_s = target_s
        self.last: float | None = None
        self.requests = 0
        self.per_record: float | None = None  # CPU seconds per record, moving average

    def observe(self, records: int, cpu_s: float) -> None:
        """A batch step applied ``records`` records in ``cpu_s`` seconds of the loop thread's
        CPU time."""
        if records <= 0 or cpu_s < 0:
            return
        x = cpu_s / records
        self.per_record = x if self.per_record is None else (
            (1 - PER_RECORD_WEIGHT) * self.per_record + PER_RECORD_WEIGHT * x)

    def note(self) -> None:
        """A request arrived now."""
        self.last = self.clock()
        self.requests += 1

    def active(self) -> bool:
        return self.last is not None and self.clock() - self.last <= self.window_s

    def slice_size(self, setting: int) -> int:
        """Records per slice for the next batch while serving (at least ``setting``, more when
        ``target_s`` of CPU holds more), else 0."""
        if setting <= 0 or not self.active():
            return 0
        if self.target_s <= 0 or not self.per_record:
            return setting
        return max(setting, int(self.target_s / self.per_record))


def slices(records: Sequence[R], size: int) -> list[list[R]]:
    """``records`` (of several partitions, each in offset order) as slices of at most ``size``
    records (``size`` 0: one slice).  The records are grouped by partition first (each
    partition's in its order), then cut every ``size``: a slice holds contiguous runs of few
    partitions, so the apply's per-partition work (one vectorised update per partition and
    table) is repeated for at most one partition more per extra slice."""
    items = list(records)
    if size <= 0 or len(items) <= size:
        return [items]
    groups: dict[int, list[R]] = {}
    for r in items:
        groups.setdefault(r.partition, []).append(r)
    ordered = [r for group in groups.values() for r in group]
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


async def let_requests_in(passes: int = YIELD_PASSES) -> None:
    """Give the event loop ``passes`` iterations: requests waiting on a socket are read and
    answered before the caller goes on."""
    for _ in range(passes):
        await asyncio.sleep(0)


async def in_loop_slices(fn: Callable[..., list[M]], items: Sequence[T], *args: Any,
                         slice_s: float | None = None, step: int = LOOP_STEP,
                         clock: Callable[[], float] = time.perf_counter) -> list[M]:
    """``fn(part, *args)`` over ``items`` (the results concatenated, in order), ``step`` items
    per call, letting requests in (:func:`let_requests_in`) whenever the calls since the last
    time took ``slice_s``: synchronous loop work whose cost per item varies (a signal partial
    is a top-m of its co-visitation row: ~0.1 ms each at 10^4 items and 20 events per user, so
    a publish chunk of 500 held the loop 40-95 ms) stays within about ``slice_s`` per turn
    (default :data:`LOOP_SLICE_S`)."""
    budget = LOOP_SLICE_S if slice_s is None else slice_s
    out: list[M] = []
    t0 = clock()
    for i in range(0, len(items), step):
        if clock() - t0 >= budget:
            await let_requests_in()
            t0 = clock()
        out.extend(fn(items[i:i + step], *args))
    return out
