"""The latency budget of one event: where the time between its Kafka timestamp and its profile
being searchable goes (issue 14, point 2).

An event's path, each point a time on one monotonic clock (the Kafka timestamp is moved onto it
through the wall clock read when the batch closed):

    Kafka timestamp -> fetched -> delivered -> closed -> locked -> applying -> searchable

* *fetched*: the Fetch response that carried the record reached aiokafka's fetcher (in
  faust's consumer thread; ``stream.kafka.fetch_stamps`` notes one time per partition and
  response, with the response's first offset, in a :class:`FetchLog`); where no response was
  noted, when faust's consumer got the record from aiokafka (``Consumer._getmany`` returned
  it: one time per partition and poll).  So *broker* is the broker's share (the producer, the
  append, a Fetch waiting up to ``fetch_max_wait_ms``, and a Fetch not sent yet: aiokafka
  fetches a partition again only once faust took its last response) and *buffer* everything
  in this process before the agent: aiokafka's buffer, the hand-off from faust's consumer
  thread, faust's per-message delivery and the stream's channel;
* *delivered*: the events agent's stream took it off its channel (faust's default ``Monitor``
  sensor stamps ``message.time_in`` there; no extra per-event call);
* *closed*: ``take_events`` handed the micro-batch to the agent;
* *locked*: the pipeline's lock was taken for the batch's (last) try (a snapshot's
  serialisation, parked events or the TTL held it until then);
* *applying*: decoded, validated, vectors found, queries encoded, dead letters acknowledged:
  the synchronous apply begins;
* *searchable*: the state and the users index have changed.

Each interval is a stage of ``profiles_stage_seconds{stage}`` (broker, buffer, batch, lock,
prepare, apply), observed a whole batch at a time with numpy (:class:`StageHistograms`); the
stages of one event add up to its ingest->index latency.  Parked events (their item had no
vector yet) are left out of the stages and observed in ``profiles_parked_seconds`` when they are
finally applied.  :class:`GcTimer` times the garbage collector's pauses.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_float_to_go_string

from stream.core.rows import unique_ints

__all__ = ["STAGES", "BatchTiming", "FetchLog", "GcTimer", "StageHistograms", "freeze_heap",
           "observe_applied", "observe_parked", "set_torch_threads", "stage_times"]

floatToGoString = cast(Callable[[float], str], _untyped_float_to_go_string)

#: the stages, in path order (label values of ``profiles_stage_seconds``)
STAGES = ("broker", "buffer", "batch", "lock", "prepare", "apply")

#: polls remembered per partition by a FetchLog (a poll is one entry however many records it
#: returned; a batch needs only the polls since the one before it)
FETCH_POLLS = 256

_SHIFT = 1 << 40  # partition * _SHIFT + offset: one sortable key (offsets < 2**40)


def _runs(ring: Sequence[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """A ring's offsets and times from its newest run on: a partition re-read from an earlier
    offset (a seek) starts a new run."""
    offs = np.fromiter((o for o, _ in ring), dtype=np.int64, count=len(ring))
    at = np.fromiter((t for _, t in ring), dtype=np.float64, count=len(ring))
    back = np.flatnonzero(np.diff(offs) < 0)
    start = int(back[-1] + 1) if len(back) else 0
    return offs[start:], at[start:]


class FetchLog:
    """When which offsets were fetched, per partition, in two bounded rings (``FETCH_POLLS``
    entries each):

    * the Fetch responses that reached aiokafka's fetcher: the response's first offset and its
      arrival time (:meth:`arrived`, called from faust's consumer thread by
      ``stream.kafka.fetch_stamps``);
    * the polls of faust's consumer (``_getmany``): the last offset each returned and when
      (:meth:`polled`), the fallback where no response was noted."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, polls: int = FETCH_POLLS
                 ) -> None:
        self.clock = clock
        self._polls: dict[int, deque[tuple[int, float]]] = {}
        self._arrivals: dict[int, deque[tuple[int, float]]] = {}
        self._maxlen = polls
        self._lock = threading.Lock()  # arrivals come from faust's consumer thread

    def polled(self, last_offsets: dict[int, int]) -> None:
        """One poll returned records up to ``last_offsets[partition]`` (inclusive)."""
        now = self.clock()
        for p, off in last_offsets.items():
            ring = self._polls.get(p)
            if ring is None:
                ring = self._polls[p] = deque(maxlen=self._maxlen)
            ring.append((off, now))

    def arrived(self, partition: int, first_offset: int) -> None:
        """A Fetch response with records of ``partition`` from ``first_offset`` on reached
        aiokafka now (any thread)."""
        now = self.clock()
        with self._lock:
            ring = self._arrivals.get(partition)
            if ring is None:
                ring = self._arrivals[partition] = deque(maxlen=self._maxlen)
            ring.append((first_offset, now))

    def times(self, partitions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The fetch time of each (partition, offset): the arrival of the newest noted Fetch
        response that starts at or before it, if that is no later than the first poll that
        returned it; else that poll's time (the first poll whose last offset is at or past
        it); NaN when neither covers it."""
        out = np.full(len(offsets), np.nan)
        for p in unique_ints(partitions).tolist():
            rows = np.flatnonzero(partitions == p)
            want = offsets[rows]
            polled = np.full(len(rows), np.nan)
            ring = self._polls.get(int(p))
            if ring:
                ends, at = _runs(ring)
                i = np.searchsorted(ends, want, side="left")
                ok = i < len(ends)
                polled[ok] = at[i[ok]]
            with self._lock:
                arr = list(self._arrivals.get(int(p), ()))
            if arr:
                starts, at = _runs(arr)
                j = np.searchsorted(starts, want, side="right") - 1
                ok = (j >= 0) & ~(polled < at[np.maximum(j, 0)])  # not after a poll returned it
                polled[ok] = at[j[ok]]
            out[rows] = polled
        return out

    def wrap(self, consumer: Any, topic: str) -> bool:
        """Note every poll of faust's ``consumer`` (its ``_getmany``: records by partition, as
        aiokafka's fetcher returns them) for ``topic``: one time per partition and poll, no
        per-record call.  False (nothing wrapped: the fetch times stay unknown and the broker
        stage runs to delivery) when the consumer has no ``_getmany``."""
        original = getattr(consumer, "_getmany", None)
        if original is None:
            return False

        async def getmany(active_partitions: Any, timeout: float) -> Any:
            records = await original(active_partitions, timeout)
            if records:
                self.polled({tp.partition: recs[-1].offset for tp, recs in records.items()
                             if recs and tp.topic == topic})
            return records

        consumer._getmany = getmany
        return True


@dataclass
class BatchTiming:
    """The times of one micro-batch on the way to the pipeline: parallel to its records
    (partition, offset, fetched, delivered; NaN when unknown) plus when it closed.
    ``clock`` is the monotonic clock they were read on; the pipeline reads its own points
    (locked, applying, searchable) on it too.  ``wall_offset``: wall minus monotonic at close."""

    partitions: np.ndarray
    offsets: np.ndarray
    fetched: np.ndarray
    delivered: np.ndarray
    closed: float
    wall_offset: float
    clock: Callable[[], float] = time.monotonic
    locked: float = float("nan")
    _order: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(cls, partitions: Sequence[int], offsets: Sequence[int],
           delivered: Sequence[float | None], fetch: FetchLog | None,
           clock: Callable[[], float] = time.monotonic,
           wall: Callable[[], float] = time.time) -> BatchTiming:
        """A batch that closed now."""
        closed = clock()
        wall_offset = wall() - closed
        parts = np.asarray(partitions, dtype=np.int64)
        offs = np.asarray(offsets, dtype=np.int64)
        deliv = np.array([np.nan if t is None else t for t in delivered], dtype=np.float64)
        fetched = fetch.times(parts, offs) if fetch is not None else np.full(len(offs), np.nan)
        return cls(parts, offs, fetched, deliv, closed, wall_offset, clock)

    def rows(self, partitions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Row of each (partition, offset) in this batch (-1 when it is not one of its
        records)."""
        keys = self.partitions * _SHIFT + self.offsets
        if self._order is None:
            self._order = np.argsort(keys, kind="stable")
        sk = keys[self._order]
        want = np.asarray(partitions, dtype=np.int64) * _SHIFT + np.asarray(offsets, np.int64)
        i = np.minimum(np.searchsorted(sk, want), max(len(sk) - 1, 0))
        if not len(sk):
            return np.full(len(want), -1, dtype=np.int64)
        return np.where(sk[i] == want, self._order[i], -1)


def stage_times(timing: BatchTiming, partitions: np.ndarray, offsets: np.ndarray,
                msg_ts_ms: np.ndarray, applying: float, searchable: float) -> np.ndarray:
    """Seconds each applied event spent in each stage, ``[len(STAGES), n]``.

    A missing point (no fetch poll remembered, no sensor stamp, a record not from this batch)
    takes the next known one, so its time goes to the later stage; the broker stage is clamped
    at 0 (the producer's clock may run ahead).  Each event's stages add up to
    ``searchable - its Kafka timestamp``, except for that clamp."""
    n = len(offsets)
    rows = timing.rows(partitions, offsets)
    known = rows >= 0
    fetched = np.full(n, np.nan)
    delivered = np.full(n, np.nan)
    fetched[known] = timing.fetched[rows[known]]
    delivered[known] = timing.delivered[rows[known]]
    closed = timing.closed
    locked = timing.locked if np.isfinite(timing.locked) else applying
    delivered = np.where(np.isfinite(delivered), np.minimum(delivered, closed), closed)
    fetched = np.where(np.isfinite(fetched), np.minimum(fetched, delivered), delivered)
    ts = np.asarray(msg_ts_ms, dtype=np.float64) / 1000.0 - timing.wall_offset
    points = [ts, fetched, delivered, np.full(n, closed), np.full(n, locked),
              np.full(n, applying), np.full(n, searchable)]
    out = np.diff(np.vstack(points), axis=0)
    out[0] = np.maximum(out[0], 0.0)
    return out


class StageHistograms(Collector):
    """``profiles_stage_seconds{stage}``: one histogram per stage (``STAGES``), each observed a
    batch at a time like :class:`~stream.worker.metrics.BatchHistogram`."""

    name = "profiles_stage_seconds"
    documentation = ("Seconds an applied event spent in each stage between its Kafka timestamp "
                     "and its profile being searchable (broker: to fetched by the consumer; "
                     "buffer: to delivered to the agent; batch: to its batch closing; lock: to "
                     "the pipeline lock; prepare: decode, vectors, encoder, DLQ; apply: state "
                     "and index change); parked events are not counted")

    def __init__(self, buckets: tuple[float, ...], registry: CollectorRegistry | None) -> None:
        self.bounds = np.array([*buckets, float("inf")], dtype=np.float64)
        self.counts = np.zeros((len(STAGES), len(self.bounds)), dtype=np.int64)
        self.sums = np.zeros(len(STAGES), dtype=np.float64)
        if registry is not None:
            registry.register(self)

    def observe(self, stages: np.ndarray) -> None:
        """``stages``: ``[len(STAGES), n]`` seconds (``stage_times``)."""
        if not stages.size:
            return
        idx = np.searchsorted(self.bounds, stages, side="left")
        k = len(self.bounds)
        flat = idx + np.arange(len(STAGES))[:, None] * k
        self.counts += np.bincount(flat.ravel(), minlength=len(STAGES) * k).reshape(-1, k)
        self.sums += stages.sum(axis=1)

    def collect(self) -> Iterator[Metric]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=["stage"])
        for s, stage in enumerate(STAGES):
            cumulative = np.cumsum(self.counts[s])
            fam.add_metric([stage], [(floatToGoString(b), int(c))
                                     for b, c in zip(self.bounds, cumulative)],
                           float(self.sums[s]))
        yield fam

    def quantile(self, stage: str, q: float) -> float | None:
        """The ``q`` quantile of a stage, interpolated within its bucket (tools, tests)."""
        c = self.counts[STAGES.index(stage)]
        total = int(c.sum())
        if not total:
            return None
        cum = np.cumsum(c)
        i = int(np.searchsorted(cum, q * total, side="left"))
        lo = 0.0 if i == 0 else float(self.bounds[i - 1])
        hi = float(self.bounds[i])
        if not np.isfinite(hi):
            return lo
        below = 0 if i == 0 else int(cum[i - 1])
        return lo + (hi - lo) * (q * total - below) / max(int(c[i]), 1)


def observe_applied(hist: StageHistograms, timing: BatchTiming, applying: float,
                    applied: Sequence[tuple[int, int, int]]) -> None:
    """The pipeline's hook, right after a batch's events became searchable: ``applied`` holds
    (partition, offset, Kafka timestamp ms) of each event applied now (parked ones are not)."""
    if not applied:
        return
    searchable = timing.clock()
    a = np.array(applied, dtype=np.int64).reshape(-1, 3)
    hist.observe(stage_times(timing, a[:, 0], a[:, 1], a[:, 2], applying, searchable))


def observe_parked(hist: Any, wall_now: float, msg_ts_ms: Sequence[int]) -> None:
    """Parked events applied now: Kafka timestamp to searchable, in their own histogram."""
    if msg_ts_ms:
        lat = wall_now - np.asarray(msg_ts_ms, dtype=np.float64) / 1000.0
        hist.observe_many(np.maximum(lat, 0.0))


def set_torch_threads(n: int) -> None:
    """Give torch ``n`` intra-op threads (0: leave its default, one per core).  With more than
    one, each op of a short query batch waits at a barrier for every thread, and a thread the
    OS has parked (the event loop, another worker, anything on the host) stalls the whole call:
    measured on 2 busy cores, query batches took a median 45-135 ms and up to 0.9 s with 2
    threads, 12-15 ms and at most 48 ms with 1."""
    if n > 0:
        import torch

        torch.set_num_threads(n)


def freeze_heap() -> int:
    """Move every object alive now into the collector's permanent generation (``gc.freeze``):
    the modules, the catalogue and the loaded partition states are then never walked again by a
    full (generation 2) collection, which otherwise pauses the loop for their whole size.
    Returns how many objects are frozen in all."""
    gc.collect()  # what is garbage now is not frozen
    gc.freeze()
    return gc.get_freeze_count()


class GcTimer:
    """Times the garbage collector's pauses through ``gc.callbacks``: ``observe(generation,
    seconds)`` after each collection (``profiles_gc_seconds{generation}``)."""

    def __init__(self, observe: Callable[[int, float], None],
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._observe = observe
        self._clock = clock
        self._t0 = 0.0
        self.installed = False

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = self._clock()
        else:
            self._observe(int(info.get("generation", 0)), self._clock() - self._t0)

    def install(self) -> None:
        if not self.installed:
            gc.callbacks.append(self)
            self.installed = True

    def uninstall(self) -> None:
        if self.installed:
            gc.callbacks.remove(self)
            self.installed = False
