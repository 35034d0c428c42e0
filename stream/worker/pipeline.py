"""The worker's processing of one micro-batch of records, between the Kafka layer and the core.

A batch goes through three phases:

1. *classify* (read-only, ``stream.worker.classify``): skip offsets the state already covers,
   decode and validate, spot duplicate event ids, split off forgets and what they erase, apply
   the rate cap; then (async) look up item vectors (unknown items are parked) and encode
   queries;
2. *dead-letter* (async): send rejected records to the DLQ and wait for the broker's ack, so a
   crash can only re-send them, never lose them;
3. *apply* (synchronous, no ``await``): bandit partials, profiles, user stats, collaborative
   signals (and this worker's merged signal view), the users index, outcome counters and
   ``next_offset`` change together.  A snapshot can only ever see state between batches, and a
   cancelled batch has changed nothing.

The signal partials a batch changed are published later (:meth:`Pipeline.publish_signals`, on a
timer and on revocation) to the compacted signals topic every worker reads
(``stream.worker.sharing``).

The pipeline is given everything it talks to when it is built (settings, encoder, dead-letter
sink, clock); the Kafka layer feeds it :class:`~stream.worker.records.Record` lists and calls
:meth:`Pipeline.assign` / :meth:`Pipeline.revoke` on rebalances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from encoder.base import Encoder
from index import adopt_trained, ivf_installs, trained_state, training_deferred
from stream.core.bandit import context_arm
from stream.core.errors import StateError
from stream.core.events import Event
from stream.core.eventtypes import EVENT_TYPES, QUERY_TYPES
from stream.core.signals import Signals
from stream.settings import Settings
from stream.worker.batchsteps import add_to_windows, check_applicable, mark_journals
from stream.worker.blobs import BlobStore, LocalBlobStore
from stream.worker.capture import catalogue_state
from stream.worker.catalog import ItemCatalog
from stream.worker.classify import Accepted, classify, forget_cuts, rate_cap, split_forgets
from stream.worker.deadletter import DeadLetter, dead_letter
from stream.worker.deltas import UNPUBLISHED, continues
from stream.worker.encoding import EncoderService
from stream.worker.indexes import index_spec, publish_index_info, users_index_spec
from stream.worker.latency import BatchTiming, observe_applied, observe_parked
from stream.worker.metrics import Metrics
from stream.worker.ports import (
    Clock,
    DeadLetterError,
    DeadLetterSink,
    Header,
    SignalSink,
    SystemClock,
    TransientError,
)
from stream.worker.privacy import Pseudonymizer, tombstone_key
from stream.worker.profiles import ProfileStore
from stream.worker.records import Record
from stream.worker.segments import Segments
from stream.worker.sharing import SharedSignals
from stream.worker.slicing import Serving, in_loop_slices, let_requests_in, slices
from stream.worker.snapshots import (
    Scheduler,
    SnapshotStore,
    finish_compaction,
    snapshot_kind,
    start_compaction,
)
from stream.worker.state import Parked, PartitionState

__all__ = ["PUBLISH_CHUNK", "Pipeline"]

#: signal partials sent per chunk (the event loop runs batches and requests between chunks)
PUBLISH_CHUNK = 500

log = logging.getLogger(__name__)

#: partitions read (restored, merged, built) at the same time when an assignment loads.  1:
#: at 10^5 users two at a time made each read ~3x slower (GIL-bound merge and build; 4
#: partitions 22 s vs 14 s one after another, `profiles bench scale`, stop 21)
LOAD_CONCURRENCY = 1

#: the users index's kept centroids in ``Pipeline.index_store``
USERS_IVF = "users"

def _guarded(sink: DeadLetterSink) -> DeadLetterSink:
    """``sink`` whose failures are :class:`DeadLetterError` (an outage the batch waits out)."""
    async def send(key: bytes | None, value: bytes | None, headers: list[Header]) -> None:
        try:
            await sink(key, value, headers)
        except Exception as exc:
            raise DeadLetterError(f"DLQ write failed: {type(exc).__name__}: {exc}") from exc
    return send


def _event_type(raw: bytes) -> str:
    """The event type a record names, when it is a known one (a label: bounded), else
    ``unknown``."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "unknown"
    t = obj.get("type") if isinstance(obj, dict) else None
    return t if isinstance(t, str) and t in EVENT_TYPES else "unknown"


class Pipeline:
    """One worker's state and the batch step that changes it."""

    def __init__(self, settings: Settings, encoder: Encoder, *, dead_letters: DeadLetterSink,
                 clock: Clock | None = None, signals: SignalSink | None = None,
                 blob_store: Callable[[Path], BlobStore] | None = None) -> None:
        self.s = settings
        self.limits = settings.limits()
        self.pp = settings.profile_params()
        self.bp = settings.bandit_params()
        self.sp = settings.signal_params()
        self.ip = settings.interest_params()  # multi-interest profiles (None: off)
        self.encoder = encoder
        self.dim: int = encoder.dim
        self.model: str = encoder.fingerprint
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.send_dlq = _guarded(dead_letters)
        self.profiles = ProfileStore(self.dim, users_index_spec(settings))
        self.metrics = Metrics(self.profiles.partitions, top_arms=settings.bandit_top_arms)
        # signals=None (rebuild, tools): the view is kept, nothing is published
        self.send_signals = signals
        self.sharing = SharedSignals(self.sp, self.profiles.states.keys, self.metrics)
        self._publish_lock = asyncio.Lock()  # one publisher at a time: partials stay in order
        self.encoder_service = EncoderService(encoder, settings.encoder_batch,
                                              settings.encoder_max_wait_s, self.metrics,
                                              cache_bytes=settings.encoder_cache_bytes)
        self.catalog = ItemCatalog(self.dim, self.limits, self.model, index_spec(settings))
        # customer segments (PROFILES_SEGMENTS_K; their records share the signals topic)
        self.segments = Segments(settings, self.dim, self.profiles, self.catalog, self.metrics,
                                 self.clock.monotonic)
        if self.segments.enabled:
            self.sharing.routes[b"seg:"] = self.segments.receive
        # The state path is resolved once, here: `profiles rebuild --swap` re-points a symlink at
        # another model's directory, and a worker still on the old model must keep writing into
        # the directory it started with (issue 10, point 9)
        state_dir = Path(settings.state_dir).resolve()
        # where the snapshots' blobs go: the folder, or (the worker) the Kafka changelog with
        # the folder as its cache (``blob_store``, stream.kafka.changelog)
        self.blobs: BlobStore = (blob_store or LocalBlobStore)(state_dir)
        self.store = SnapshotStore(state_dir, settings.events_topic, self.blobs,
                                   max_deltas=settings.snapshot_max_deltas, compact=True)
        self.items_store = SnapshotStore(state_dir, settings.items_topic)
        # the users index's trained centroids (a cache on this disk: a restart here assigns
        # the loaded profiles to them instead of running k-means again)
        self.index_store = SnapshotStore(state_dir, "indexes")
        self.schedule = Scheduler(settings.snapshot_interval_s, settings.snapshot_budget,
                                  self.clock.monotonic)
        self.pseudonymize = Pseudonymizer(settings.id_secret.reveal(), settings.id_cache_bytes,
                                          on_evict=self.metrics.id_cache_evictions.inc)
        self.lock = asyncio.Lock()
        # requests being answered: batches are then applied in slices (stream.worker.slicing)
        self.serving = Serving(self.clock.monotonic, target_s=settings.apply_slice_ms / 1000)
        # an exception while applying leaves the state changed part-way: no more batches
        self.broken: str | None = None
        self._applying = False
        self.assigned_once = asyncio.Event()
        self.loading = 0  # partitions being read (restored) right now: not ready meanwhile
        # what the last catalogue snapshot held: (catalogue version, its index's IVF installs)
        self._catalog_saved = (0, 0)
        self._catalog_version_seen = 0
        # the users index's IVF installs as of its last kept centroids, and the centroids read
        # at start, adopted by the first assignment (then dropped)
        self._users_ivf_saved = 0
        self._users_ivf_kept: dict[str, Any] | None = None
        # parked events: the last tick of each partition's park clock (the state it was for,
        # monotonic time), and their bytes as of the last resolve plus those parked since
        self._park_ticks: dict[int, tuple[PartitionState, float]] = {}
        self._parked_bytes = 0
        # the snapshot compaction running on a thread, off the lock (stream.worker.snapshots)
        self.compaction: asyncio.Future[bool] | None = None

    @property
    def states(self) -> dict[int, PartitionState]:
        """Owned partitions (a copy: change ownership through assign/revoke)."""
        return dict(self.profiles.states)

    def ready(self) -> bool:
        """The catalogue and the signals topic are caught up and the first assignment is
        loaded (and no partition is being loaded now)."""
        return (self.catalog.caught_up.is_set() and self.sharing.caught_up.is_set()
                and self.assigned_once.is_set() and not self.loading)

    # ------------------------------------------------------------------ assignment
    def load_partition(self, partition: int) -> PartitionState:
        """Load a partition's snapshot (or start empty) and index its users."""
        return self.adopt(*self.read_partition(partition))

    def read_partition(self, partition: int) -> tuple[PartitionState, bool]:
        """A partition's state from its snapshot (or empty) and whether there was one; blocks
        (the store may restore it from Kafka) and touches nothing the worker serves, so it
        runs on an executor thread (:meth:`assign`)."""
        t0 = time.perf_counter()
        d, beside = self.store.read_beside(partition)
        t_read = time.perf_counter() - t0
        s = self.s
        if d is None:
            st = PartitionState.empty(partition, self.dim, self.pp, self.bp, s.dedupe_window,
                                      self.model, s.rate_limit_events, s.rate_limit_window_ms,
                                      self.sp, ttl_rank=s.ttl_watermark_rank, ip=self.ip)
        else:
            if d.get("model") != self.model:
                raise StateError(
                    f"snapshot {self.store.path(partition)} holds vectors of model "
                    f"{d.get('model')}, this worker's encoder is {self.model}: run "
                    "`profiles rebuild`, or point PROFILES_ENCODER_PATH at the model that made it")
            st = PartitionState.from_dict(d, self.dim, self.pp, self.bp, s.dedupe_window,
                                          s.rate_limit_events, s.rate_limit_window_ms, self.sp,
                                          ttl_rank=s.ttl_watermark_rank, ip=self.ip)
            got = beside.get(UNPUBLISHED)
            st.unpublished = [str(i) for i in got] if isinstance(got, list) else None
            if continues(d, st):  # the next snapshot: a delta on what was loaded
                st.journal.parent = self.store.tip(partition)
            # the phases of a recovery (README, "Sizing"): read (and restore), then build
            log.info("partition %d: snapshot read in %.2fs, state built in %.2fs", partition,
                     t_read, time.perf_counter() - t0 - t_read)
        return st, d is not None

    def adopt(self, st: PartitionState, from_snapshot: bool) -> PartitionState:
        """Own ``st`` (of :meth:`read_partition`): index its users, serve it (on the loop)."""
        partition = st.partition
        t0 = time.perf_counter()
        self.profiles.add(st)
        self.segments.loaded(st)
        self.sharing.loaded(partition, st.signals, publish=self.send_signals is not None,
                            unpublished=st.unpublished)
        st.unpublished = None
        log.info("partition %d: resumed at offset %d from %s (%d users, %d parked; indexed "
                 "in %.2fs)", partition, st.next_offset,
                 "snapshot" if from_snapshot else "empty state", len(st.profiles),
                 len(st.parked), time.perf_counter() - t0)
        self._refresh_sizes()
        return st

    @contextlib.asynccontextmanager
    async def _holding(self, holder: str) -> AsyncIterator[None]:
        """The pipeline lock, its hold time observed by holder (``profiles_lock_held_seconds``:
        what a batch's ``lock`` stage waited behind)."""
        async with self.lock:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.metrics.lock_held.labels(holder).observe(time.perf_counter() - t0)

    async def assign(self, partitions: Iterable[int]) -> None:
        """Load the partitions not loaded yet.  Reading one (the changelog restore, merging
        its blobs, building its state: seconds at 10^5 users) runs off the loop, which answers
        requests meanwhile (/readyz: 503 until the assignment is loaded), ``LOAD_CONCURRENCY``
        partitions at a time; each is adopted (indexed, on the loop) as soon as it is read."""
        async with self._holding("assign"):
            todo = [p for p in dict.fromkeys(partitions) if p not in self.profiles]
            order = {p: i for i, p in enumerate(todo)}
            self.loading += len(todo)
            failed: dict[int, BaseException] = {}
            # the users index trains once, at the assignment's size (index.training_deferred)
            with training_deferred(self.profiles.index):
                await self._load(todo, failed)
                self._adopt_users_ivf()
            if failed:  # the reads in flight have finished: the first partition's error
                raise failed[min(failed, key=order.__getitem__)]
        self.assigned_once.set()

    async def _load(self, todo: list[int], failed: dict[int, BaseException]) -> None:
        """:meth:`assign`'s reads and adoptions (under the lock), ``todo`` in order; a
        partition's error goes to ``failed`` (no further read starts, those in flight end)."""
        loop = asyncio.get_running_loop()
        reads: dict[asyncio.Future[tuple[PartitionState, bool]], int] = {}
        try:
            while reads or (todo and not failed):
                while todo and not failed and len(reads) < LOAD_CONCURRENCY:
                    p = todo.pop(0)
                    reads[loop.run_in_executor(None, self.read_partition, p)] = p
                done, _ = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    p = reads.pop(fut)
                    self.loading -= 1
                    exc = fut.exception()
                    if exc is not None:
                        failed[p] = exc
                    elif not failed:
                        self.adopt(*fut.result())
        finally:
            if reads:  # cancelled: the reads finish before the lock is let go
                await asyncio.wait(reads)
            self.loading -= len(todo) + len(reads)

    async def revoke(self, partitions: Iterable[int]) -> None:
        """Publish the pending signal partials of, snapshot and drop partitions this worker no
        longer owns."""
        parts = list(partitions)
        async with self._publish_lock, self._holding("revoke"):
            await self._publish(parts, timeout_s=max(1.0, self.s.session_timeout_s / 2))
            for p in parts:
                st = self.profiles.get(p)
                if st is None:
                    continue
                await self._write_snapshot(st)
                self.profiles.drop(p)
                self.sharing.drop(p)
                self.schedule.dirty.discard(p)
                self.metrics.forget_partition(self.s.events_topic, p)
            self._refresh_sizes()

    # ------------------------------------------------------------------ signals
    async def publish_signals(self) -> int:
        """Publish the signal partials changed since the last call (the timer,
        ``PROFILES_SIGNALS_PUBLISH_MS``); returns how many.  Chunks of ``PUBLISH_CHUNK``
        partials, with the event loop free in between and while a chunk's partials are read
        (slices of ~5 ms): batches and requests go on, and an item a batch changed after its
        partial was read is pending again, so a newer state is never overwritten by an older
        one.  What a failed or timed-out send did not publish stays queued."""
        if self.send_signals is None:
            return 0
        async with self._publish_lock:
            todo = self.sharing.take_pending(None)
            sent = 0
            seg = await self._segment_messages()  # statistics / a new version, when due
            if seg:
                try:
                    await asyncio.wait_for(self._send_signals(seg),
                                           max(5.0, self.s.session_timeout_s))
                except BaseException:
                    self.segments.requeue(seg)
                    self.sharing.requeue(todo)
                    raise
                sent += len(seg)
            for i in range(0, len(todo), PUBLISH_CHUNK):
                chunk = todo[i:i + PUBLISH_CHUNK]
                # read in slices of ~5 ms with requests let in between (stream.worker.slicing);
                # an item a batch changes meanwhile is pending again: its newer partial follows
                msgs = await in_loop_slices(self.sharing.encode, chunk, self._signal_states())
                try:
                    # bounded: a revocation waits for this
                    await asyncio.wait_for(self._send_signals(msgs),
                                           max(5.0, self.s.session_timeout_s))
                except BaseException:
                    self.sharing.requeue(todo[i:])
                    raise
                self.sharing.done(chunk)
                sent += len(msgs)
                await asyncio.sleep(0)
            return sent

    async def _segment_messages(self) -> list[tuple[bytes, bytes]]:
        """The segments' statistics and versions due now (``stream.worker.segments``): the
        statistics are computed on an executor thread under the lock, like a snapshot's
        serialisation (batches wait, requests are answered)."""
        if self.broken is not None or not self.segments.start_tick():  # broken: half-applied
            return self.segments.finish_tick(None)
        async with self._holding("segments"):
            own = await asyncio.get_running_loop().run_in_executor(None, self.segments.compute)
        return self.segments.finish_tick(own)

    def _signal_states(self) -> dict[int, Signals]:
        return {p: st.signals for p, st in self.profiles.states.items()}

    async def _send_signals(self, msgs: list[tuple[bytes, bytes]]) -> None:
        if msgs and self.send_signals is not None:
            await self.send_signals(msgs)
            self.sharing.sent(msgs)

    async def _publish(self, partitions: list[int], timeout_s: float) -> None:
        """On revocation (under both locks): best effort within ``timeout_s``; the next owner
        re-publishes every partial it loads anyway."""
        if self.send_signals is None:
            return
        todo = self.sharing.take_pending(partitions)
        # requests answered between slices (~0.1 ms a partial: seconds for a large partition)
        msgs = await in_loop_slices(self.sharing.encode, todo, self._signal_states())
        if not msgs:
            return
        try:
            await asyncio.wait_for(self._send_signals(msgs), timeout_s)
            self.sharing.done(todo)
        except Exception as exc:
            log.warning("publishing %d signal partials of revoked partitions %s failed (%s: "
                        "%s): their next owner publishes them", len(msgs), partitions,
                        type(exc).__name__, exc)

    # ------------------------------------------------------------------ snapshots
    async def _serialise(self, st: PartitionState) -> tuple[bytes, float]:
        """Under the lock, on an executor thread.  The state must not change while this runs:
        every change to it (batches, parked events, expiry, rebalances) holds the lock, and the
        loop meanwhile only answers requests, which read the state.  Serialising on the loop
        itself blocked every request for its whole length (~50 ms per partition of 25,000
        events: the longest wait of ``/candidates``).  Returns the blob and when serialising
        began (perf_counter): the scheduler's budget paces the time the lock is held, which is
        what batches wait for."""
        t0 = time.perf_counter()
        self.store.mark_model(self.model)
        blob = await asyncio.get_running_loop().run_in_executor(
            None, self.store.dumps, st, self._beside(st.partition))
        return blob, t0

    def _beside(self, partition: int) -> dict[str, Any] | None:
        """What a snapshot of ``partition`` records beside its state, read on the loop under
        the lock (no batch changes a partial meanwhile; a publish may still finish, which
        only makes the list longer than needed): the items whose partials the signals topic
        may not hold as this state does, so a restart re-publishes only those
        (:meth:`SharedSignals.loaded`) instead of every partial (at 10^5 items: ~20 s of the
        loop beside the replay)."""
        if self.send_signals is None:
            return None
        return {UNPUBLISHED: self.sharing.unpublished(partition)}

    async def _store(self, partition: int, blob: bytes, t0: float) -> None:
        """The durable write, on an executor thread; ``t0``: when serialising began."""
        written = await asyncio.get_running_loop().run_in_executor(None, self.store.write,
                                                                   partition, blob)
        self.metrics.snapshots.inc()
        self.metrics.snapshot_seconds.observe(time.perf_counter() - t0)
        if written:
            self.metrics.snapshot_bytes.labels(snapshot_kind(blob)).inc(len(blob))

    async def _write_snapshot(self, st: PartitionState) -> None:
        if self.broken is not None:
            return
        blob, t0 = await self._serialise(st)
        self.schedule.written_now(st.partition)
        await self._store(st.partition, blob, t0)

    async def snapshot(self, everything: bool = False) -> int:
        """Snapshot changed partitions; returns how many.

        ``everything`` (shutdown, rebuild): every owned partition, now.  Otherwise (the timer)
        at most one partition per call, as the :class:`~stream.worker.snapshots.Scheduler`
        decides: its capture holds the lock, so no batch can change the state meanwhile
        (requests are answered); packing and writing the capture do not.
        """
        if self.broken is not None:  # the state may be half-applied: never persisted
            return 0
        if everything:
            await finish_compaction(self.compaction)  # not left half-way at shutdown
            async with self._holding("snapshot"):
                parts = self.profiles.partitions()
                for st in parts:
                    await self._write_snapshot(st)
                self.schedule.dirty.clear()
                await self._snapshot_catalog()
                return len(parts)
        if self.schedule.paused():
            return 0
        loop = asyncio.get_running_loop()
        async with self._holding("snapshot"):
            await self._snapshot_catalog()
            p = self.schedule.due(self.profiles.states)
            if p is None:
                return 0
            # only the capture (owned copies, a delta's changed rows) holds the lock, on a
            # thread: requests are answered meanwhile (stream.worker.snapshots.Capture)
            t0 = time.perf_counter()
            self.store.mark_model(self.model)
            cap = await loop.run_in_executor(None, self.store.capture, self.profiles.states[p],
                                             self._beside(p))
            self.schedule.serialised(p, time.perf_counter() - t0)
        # The pack (serialisation, hashes) and the disk write (fsync) run outside the lock:
        # batches go on meanwhile.
        try:
            blob = await loop.run_in_executor(None, self.store.pack, cap)
            self.schedule.paced(time.perf_counter() - t0)
            await self._store(p, blob, t0)
        except BaseException:
            self.schedule.dirty.add(p)
            raise
        self.compaction = start_compaction(self.store, p, self.compaction)
        return 1

    async def _snapshot_catalog(self) -> None:
        # also when its index installed an IVF: the snapshot then keeps the centroids
        mark = (self.catalog.version, ivf_installs(self.catalog.index))
        if mark != self._catalog_saved:
            self._catalog_saved = mark
            # captured on the loop (a copy: the feed adds items on the loop, without the lock),
            # built, packed and written on a thread (stream.worker.capture)
            await asyncio.get_running_loop().run_in_executor(
                None, self.items_store.write_data, "catalogue", catalogue_state(self.catalog))
        await self._snapshot_users_ivf()

    async def _snapshot_users_ivf(self) -> None:
        """Keep the users index's trained centroids when it has installed a new IVF."""
        installs = ivf_installs(self.profiles.index)
        if installs == self._users_ivf_saved:
            return
        self._users_ivf_saved = installs
        trained = trained_state(self.profiles.index)
        if trained is None:
            return
        data = {"model": self.model, "dim": self.dim, "ivf": trained}
        await asyncio.get_running_loop().run_in_executor(
            None, self.index_store.write_data, USERS_IVF, lambda: data)

    def _adopt_users_ivf(self) -> None:
        """The first assignment: the users index takes the centroids kept at the last run
        (assigning the loaded profiles to them in the background) instead of training."""
        kept, self._users_ivf_kept = self._users_ivf_kept, None
        if kept is None:
            return
        if kept.get("model") != self.model or kept.get("dim") != self.dim \
                or not isinstance(kept.get("ivf"), dict):
            log.info("users index: kept centroids are for another model; training instead")
            return
        if adopt_trained(self.profiles.index, kept["ivf"]):
            log.info("users index: adopting the kept centroids (%d users)",
                     len(self.profiles.index))

    def load_catalog(self) -> None:
        """Adopt the item catalogue's snapshot, if there is one made by this model (with its
        IVF's centroids), and read the users index's kept centroids."""
        d = self.items_store.read("catalogue")
        if d is not None and self.catalog.load_state(d):
            self._catalog_saved = (self.catalog.version, ivf_installs(self.catalog.index))
            log.info("item catalogue: %d items from snapshot, resuming at offsets %s",
                     len(self.catalog.index), self.catalog.offsets)
        try:
            self._users_ivf_kept = self.index_store.read(USERS_IVF)
        except Exception as exc:  # a cache: a damaged one costs a training, nothing else
            log.warning("users index: kept centroids unreadable (%s); training instead", exc)

    # ------------------------------------------------------------------ batches
    async def process(self, records: Sequence[Record], timing: BatchTiming | None = None
                      ) -> None:
        """Apply one micro-batch (records of any owned partitions, in offset order each).

        Never skips a record and never half-applies one (README, "Privacy and failure"): a
        failing batch changes nothing and is retried with backoff (``PROFILES_RETRY_BACKOFF_S``,
        the lock free in between); an outage (:class:`TransientError`: encoder, DLQ) is waited
        out (``profiles_stalled``); a batch failing ``PROFILES_BATCH_ATTEMPTS`` times is
        bisected, and a record failing alone that often goes to the DLQ (``processing_error``).
        An exception while applying (a bug: the state may have changed part-way) marks the
        pipeline broken: it raises :class:`StateError` for every later batch and writes no
        snapshot, so the worker stops and restarts from its last snapshot."""
        if self.broken is not None:
            raise StateError(f"pipeline broken ({self.broken}): restart the worker")
        # while serving, in slices with requests answered before each (stream.worker.slicing)
        size = self.serving.slice_size(self.s.apply_slice)
        for part in slices(records, size):
            if size:
                await let_requests_in()
            cpu0 = time.thread_time()
            await self._attempt(part, timing)  # timing: the stage histograms
            self.serving.observe(len(part), time.thread_time() - cpu0)
        try:
            async with self._holding("parked"):
                if (self.catalog.version != self._catalog_version_seen
                        or sum(len(st.parked) for st in self.profiles.states.values())
                        > self.s.max_parked
                        or self._parked_bytes > self.s.parked_max_bytes):
                    await self._resolve_parked()
        except TransientError as exc:  # sent before applied: the next housekeeping retries
            log.warning("resolving parked events failed (%s); retried", exc)

    async def _attempt(self, records: list[Record], timing: BatchTiming | None = None) -> None:
        """Process ``records`` until it succeeds: retries with backoff, waits out outages,
        bisects a batch that keeps failing, dead-letters a record that fails alone."""
        attempts, failures = max(1, self.s.batch_attempts), 0
        delay = self.s.retry_backoff_s
        exc: BaseException | None = None
        while True:
            async with self._holding("batch"):
                if self.broken is not None:
                    raise StateError(f"pipeline broken ({self.broken}): restart the worker")
                self._applying = False
                if timing is not None:
                    timing.locked = timing.clock()
                try:
                    await self._process(records, timing)
                    self.metrics.stalled.set(0)
                    return
                except Exception as e:
                    exc = e
                    if self._applying:
                        self.broken = f"{type(e).__name__}: {e}"
                        self.metrics.batch_retries.labels("apply").inc()
                        log.critical("exception while applying a batch (%s); the state may "
                                     "have changed part-way: restart the worker from its last "
                                     "snapshot", self.broken, exc_info=True)
                        raise StateError(f"pipeline broken ({self.broken}): restart the "
                                         "worker") from e
            failures += 1
            outage = isinstance(exc, DeadLetterError)
            kind = ("dlq" if outage else "transient" if isinstance(exc, TransientError)
                    else "error")
            self.metrics.batch_retries.labels(kind).inc()
            if not outage and failures >= attempts and isinstance(exc, TransientError):
                outage = not await self._encoder_healthy()
            if outage:
                self.metrics.stalled.set(1)
            if failures < attempts or outage:
                log.warning("batch of %d records failed (%s: %s): retry %d in %.2fs%s",
                            len(records), type(exc).__name__, exc, failures, delay,
                            " (stalled: nothing is skipped)" if outage else "")
                await asyncio.sleep(delay)
                delay = min(self.s.retry_max_backoff_s, delay * 2)
                continue
            break
        if len(records) > 1:
            mid = len(records) // 2
            await self._attempt(records[:mid], timing)
            await self._attempt(records[mid:], timing)
            return
        await self._processing_error(records[0], exc)

    async def _encoder_healthy(self) -> bool:
        """Whether the encoder encodes a probe (a record failing alone with the encoder up is
        the record's fault; with the encoder down, nobody's)."""
        try:
            vec = await self.encoder_service.encode(["profiles health probe"])
        except Exception:
            return False
        return bool(np.isfinite(vec).all())

    async def _processing_error(self, rec: Record, exc: BaseException | None) -> None:
        """Dead-letter a record that failed alone ``PROFILES_BATCH_ATTEMPTS`` times
        (``processing_error``) and move its partition past it; the DLQ write is waited for."""
        delay = self.s.retry_backoff_s
        detail = f"{type(exc).__name__}: {exc}"
        log.error("partition %d offset %d fails alone (%s): dead-lettered", rec.partition,
                  rec.offset, detail)
        while True:
            async with self._holding("error"):
                st = self.profiles.get(rec.partition)
                if st is None or rec.offset < st.next_offset:
                    return  # revoked, or applied meanwhile
                raw = rec.value or b""
                tag = rec.id_tag
                scrubbed = bool(self.pseudonymize.enabled and tag is not None
                                and self.pseudonymize.verify(rec.partition, raw, tag))
                r = DeadLetter(st, rec.key, raw, "processing_error", detail, rec.offset,
                               _event_type(raw), None, scrubbed=scrubbed)
                try:
                    await self._dead_letter([r])
                except DeadLetterError as e:
                    self.metrics.batch_retries.labels("dlq").inc()
                    self.metrics.stalled.set(1)
                    log.warning("DLQ write failed (%s): retry in %.2fs (stalled)", e, delay)
                else:
                    st.dlq[r.reason] += 1
                    st.outcomes[(r.etype, "rejected")] += 1
                    if r.user is not None:
                        st.dlq_keys.setdefault(r.user, []).append(r.dlq_key)
                        st.journal.users.add(r.user)
                    st.next_offset = rec.offset + 1
                    self.schedule.dirty.add(st.partition)
                    self.metrics.applied_offset.labels(self.s.events_topic,
                                                       str(st.partition)).set(st.next_offset)
                    self.metrics.stalled.set(0)
                    return
            await asyncio.sleep(delay)
            delay = min(self.s.retry_max_backoff_s, delay * 2)

    def _check(self, live: Sequence[Accepted], vectors: np.ndarray, parked: set[int]) -> None:
        """What applying needs, checked before anything changes: finite vectors, times and
        positions that fit int64 (``batchsteps.check_applicable``: the whole batch at once)."""
        check_applicable(live, vectors, parked)

    async def _process(self, records: Sequence[Record], timing: BatchTiming | None = None
                       ) -> None:
        self._applying = False
        # ---- classify: read-only ------------------------------------------------
        c = classify(records, self.profiles.states, self.limits, self.pseudonymize,
                     now_ms=int(self.clock.wall() * 1000))
        cuts = forget_cuts(records, c.accepted)
        if cuts:  # a forget erases what came before it in the log, nothing after it
            for i, j in zip([0, *cuts], [*cuts, len(records)]):
                await self._process(records[i:j], timing)
            return
        for p, before, after in c.gaps:
            self.metrics.offset_gaps.labels(self.s.events_topic, str(p)).inc()
            log.warning("partition %d: offset gap %d -> %d", p, before, after)
        if c.redelivered:
            self.metrics.redelivered.inc(c.redelivered)
        rejects, duplicates, high = c.rejects, c.duplicates, c.high
        forgets, forgotten, live = split_forgets(c.accepted)
        live, rate_updates = rate_cap(live, self.profiles.states, self.s.rate_limit_events,
                                      self.s.rate_limit_window_ms, rejects)

        # Vectors: known items now, unknown items park, queries go through the encoder.
        item_rows = [i for i, a in enumerate(live) if a.ev.type not in QUERY_TYPES]
        query_rows = [i for i, a in enumerate(live) if a.ev.type in QUERY_TYPES]
        vectors = np.zeros((len(live), self.dim), dtype=np.float32)
        parked: set[int] = set()
        if item_rows:
            vecs, missing = self.catalog.vectors([str(live[i].ev.item_id) for i in item_rows])
            vectors[item_rows] = vecs
            parked = {item_rows[j] for j in missing}
        if query_rows:
            try:
                vectors[query_rows] = await self.encoder_service.encode(
                    [str(live[i].ev.query) for i in query_rows], whole=True)
            except Exception as exc:
                raise TransientError(f"encoder: {type(exc).__name__}: {exc}") from exc
        self._check(live, vectors, parked)

        # Dead letters (and the erasure of a forgotten user's dead letters) are acknowledged by
        # the broker before the state changes: a crash can repeat them, never lose them.
        if rejects:
            await self._dead_letter(rejects)
        if forgets:
            await self._erase_dead_letters(forgets, rejects)

        # ---- apply: synchronous from here on -------------------------------------
        self._applying = True
        mark_journals(rejects, forgets)  # the rows the next (incremental) snapshot writes
        applying = timing.clock() if timing is not None else 0.0
        now = self.clock.wall()
        for r in rejects:
            r.st.dlq[r.reason] += 1
            r.st.outcomes[(r.etype, "rejected")] += 1
            if r.user is not None:
                r.st.dlq_keys.setdefault(r.user, []).append(r.dlq_key)
        for st, ev in duplicates:
            st.outcomes[(ev.type, "duplicate")] += 1
        for a in forgets:
            self._forget(a)
        if forgets and rejects:
            self._keep_later_dead_letters(forgets, rejects)
        # per partition, once: the users into the journal, the keys into the dedupe window
        add_to_windows(forgotten, live)
        for a in forgotten:
            a.st.outcomes[(a.ev.type, "forgotten")] += 1
        by_state: dict[int, list[int]] = defaultdict(list)
        if parked:
            self._tick_park_clocks()
        for i, a in enumerate(live):
            if i in parked:
                raw = (self.pseudonymize.scrub(a.raw, a.ev.user_id) or b"") \
                    if self.pseudonymize.enabled else a.raw
                pk = Parked(a.ev, a.offset, a.msg_ts, now, raw, a.st.park_clock, a.rate_window)
                a.st.parked.append(pk)
                self._parked_bytes += pk.size()
            else:
                by_state[a.st.partition].append(i)
        for p, updates in rate_updates.items():
            self.profiles.states[p].rate.commit(updates)
        # a parked event counts when it is applied (_resolve_parked), never twice
        self._apply_bandit([(a.st.partition, a.ev) for i, a in enumerate(live)
                            if i not in parked])
        self._apply_profiles({p: ([live[i].ev for i in rows], vectors[rows],
                                  [live[i].msg_ts for i in rows])
                              for p, rows in by_state.items()})
        for p, off in high.items():
            self.profiles.states[p].next_offset = off + 1
            self.schedule.dirty.add(p)
            self.metrics.applied_offset.labels(self.s.events_topic, str(p)).set(off + 1)
        if timing is not None:
            observe_applied(self.metrics.stages, timing, applying,
                            [(p, live[i].offset, live[i].msg_ts)
                             for p, rows in by_state.items() for i in rows])
        self.metrics.batch_size.observe(len(records))
        self._refresh_sizes()

    def _forget(self, a: Accepted) -> None:
        """Erase a user from this partition's state and the users index; keep a tombstone.

        Everything of the user before the forget in the log goes, whatever its event time
        (the batch is cut at forgets, see ``forget_cuts``); their parked events get the outcome
        ``forgotten``.  The tombstone keeps the newer of the forget's time and the newest event
        time it erased, so a replay of the erased history never brings it back."""
        st, user = a.st, a.ev.user_id
        newest = a.ev.ts
        stats = st.users.get(user)
        if stats is not None:
            newest = max(newest, int(stats["last_ts"]))
        for pk in st.parked:
            if pk.event.user_id == user:
                newest = max(newest, pk.event.ts)
                st.outcomes[(pk.event.type, "forgotten")] += 1
        self.profiles.erase(st, user)
        tkey = tombstone_key(user)
        st.tombstones[tkey] = max(newest, st.tombstones.get(tkey, newest))
        st.dedupe.add(user, a.ev.event_id)
        st.outcomes[(a.ev.type, "applied")] += 1
        log.info("audit: forget user-hash=%s partition=%d offset=%d ts=%d", tkey, st.partition,
                 a.offset, a.ev.ts)

    def _apply_bandit(self, applied: Iterable[tuple[int, Event]]) -> None:
        """Bandit partials count every applied event (partition, event) with an arm; a parked
        event counts when it is applied, not when it parks, so one dead-lettered and replayed
        counts once."""
        groups: dict[int, tuple[list[str], list[str], list[int], list[object]]] = {}
        by_segment = self.bp.context == "segment"
        for partition, ev in applied:
            arm = ev.arm or ev.item_id
            if arm is None:
                continue
            arms, types, ts, ctx = groups.setdefault(partition, ([], [], [], []))
            arms.append(arm)
            types.append(ev.type)
            ts.append(ev.ts)  # event time: discounted counts (bandit_half_life_ms)
            # per-context arms: the position (bandit_context=position), or the user whose
            # segment before this batch is the context (bandit_context=segment)
            ctx.append(ev.user_id if by_segment else ev.position)
        for p, (arms, types, ts, ctx) in groups.items():
            st = self.profiles.states[p]
            contexts: Sequence[object] | None = ctx if self.bp.context == "position" else None
            if by_segment:
                contexts = self.segments.contexts(st, [str(u) for u in ctx])
            st.arms.update(arms, types, ts=ts, contexts=contexts)

    def _apply_profiles(self, work: dict[int, tuple[list[Event], np.ndarray, list[int]]]
                        ) -> None:
        """Apply events to their partitions' profiles, the users index and the collaborative
        signals (item events; the merged view at once), count them applied, and observe
        ingest -> index latency."""
        self.profiles.apply({p: (events, vectors) for p, (events, vectors, _) in work.items()},
                            self.catalog.category)
        publish = self.send_signals is not None
        weight = self.sp.weights
        for p, (events, _vectors, _ts) in work.items():
            if not events:
                continue
            sig = self.profiles.states[p].signals
            sig.apply([e.user_id for e in events], [e.item_id for e in events],
                      [e.ts for e in events], [e.type for e in events])
            newest = max((e.ts for e in events if e.item_id and weight.get(e.type, 0.0) > 0),
                         default=0)
            self.sharing.local(p, sig, newest, publish=publish)
        self.sharing.merge()
        msg_ts: list[int] = []
        for p, (events, _vectors, ts) in work.items():
            st = self.profiles.states[p]
            st.outcomes.update((e.type, "applied") for e in events)
            if events:  # event time moves with applied events only, never parked ones
                times = [e.ts for e in events]
                st.watermark.observe(times)
                st.newest_ts = max(st.newest_ts, max(times))
            msg_ts += ts
        if msg_ts:
            latency = self.clock.wall() - np.asarray(msg_ts, dtype=np.float64) / 1000.0
            self.metrics.ingest_to_index.observe_many(np.maximum(latency, 0.0))

    # ------------------------------------------------------------------ expiry
    async def expire(self) -> int:
        """Drop profiles idle longer than the TTL, in event time against each partition's
        watermark, its ``ttl_watermark_rank``-th largest event time applied (so a historic log
        replays with the same outcome as a live stream, and no single future-dated event can
        expire the partition)."""
        ttl = self.s.profile_ttl_ms
        if not ttl:
            return 0
        removed = 0
        async with self._holding("expire"):
            for st in self.profiles.partitions():
                now = st.watermark.value()
                if now is None:
                    continue
                idle = self.profiles.expire(st, now - ttl)
                if idle:
                    self.schedule.dirty.add(st.partition)
                    removed += len(idle)
            if removed:
                self._refresh_sizes()
        return removed

    # ------------------------------------------------------------------ parked events
    async def resolve_parked(self) -> None:
        if self.broken is not None:
            return
        async with self._holding("parked"):
            await self._resolve_parked()

    async def _resolve_parked(self) -> None:
        """Apply parked events whose item arrived (counted in the bandit now); dead-letter
        those that waited longer than ``park_timeout_s`` on their partition's park clock
        (``unknown_item``: only once the catalogue has caught up) or that overflow
        ``max_parked`` or ``parked_max_bytes`` (``park_overflow``, oldest first).  A
        dead-lettered event leaves no effect: its dedupe entry is dropped and its rate-cap
        charge given back, so its replay counts once."""
        self._catalog_version_seen = self.catalog.version
        self._tick_park_clocks()
        # after a restart the catalogue feed may not have read the items published meanwhile
        can_expire = self.catalog.caught_up.is_set()
        timeout = self.s.park_timeout_s
        expired: list[tuple[PartitionState, Parked, str]] = []
        waiting: list[tuple[PartitionState, Parked]] = []
        ready: dict[int, list[Parked]] = defaultdict(list)
        for st in self.profiles.partitions():
            for pk in st.parked:
                if pk.event.item_id in self.catalog.items:
                    ready[st.partition].append(pk)
                elif can_expire and st.park_clock - pk.since > timeout:
                    expired.append((st, pk, "unknown_item"))
                else:
                    waiting.append((st, pk))
        # the newest within both bounds wait on; the older overflow
        max_n, max_bytes = self.s.max_parked, self.s.parked_max_bytes
        size = sum(pk.size() for _st, pk in waiting)
        if len(waiting) > max_n or size > max_bytes:
            waiting.sort(key=lambda sp: sp[1].parked_at, reverse=True)
            n = size = 0
            for i, (_st, pk) in enumerate(waiting):
                if n + 1 > max_n or size + pk.size() > max_bytes:
                    expired += [(st, pk, "park_overflow") for st, pk in waiting[i:]]
                    break
                n += 1
                size += pk.size()
        self._parked_bytes = size
        if not ready and not expired:
            return
        dead = [DeadLetter(st, pk.event.user_id.encode(), pk.raw, reason,
                           self._park_detail(st, pk, reason), pk.offset, pk.event.type,
                           pk.event.user_id, scrubbed=True)
                for st, pk, reason in expired]
        if dead:
            await self._dead_letter(dead)
        # ---- apply: synchronous; an exception here may leave the state half-applied, so,
        # as for a batch, the pipeline is marked broken (no snapshot, nothing applied more)
        try:
            self._apply_resolved(expired, dead, ready)
        except Exception as e:
            self.broken = f"{type(e).__name__}: {e}"
            self.metrics.batch_retries.labels("apply").inc()
            log.critical("exception while applying parked events (%s); the state may have "
                         "changed part-way: restart the worker from its last snapshot",
                         self.broken, exc_info=True)
            raise StateError(f"pipeline broken ({self.broken}): restart the worker") from e

    def _apply_resolved(self, expired: list[tuple[PartitionState, Parked, str]],
                        dead: list[DeadLetter], ready: dict[int, list[Parked]]) -> None:
        gone = {id(pk) for _, pk, _ in expired} | {id(pk) for pks in ready.values() for pk in pks}
        for r, (st, pk, reason) in zip(dead, expired):
            st.journal.users.add(pk.event.user_id)
            st.dedupe.discard(pk.event.user_id, pk.event.event_id)
            st.rate.refund(pk.event.user_id, pk.rate_window)
            if pk.counted:
                self._uncount_bandit(st, pk.event)
            st.dlq[reason] += 1
            st.outcomes[(pk.event.type, "rejected")] += 1
            if r.user is not None:  # None: stored anonymous (PROFILES_DLQ_REFS_PER_USER)
                st.dlq_keys.setdefault(pk.event.user_id, []).append(r.dlq_key)
        work = {}
        for p, pks in ready.items():
            vecs, _missing = self.catalog.vectors([str(pk.event.item_id) for pk in pks])
            work[p] = ([pk.event for pk in pks], vecs, [pk.msg_ts for pk in pks])
        self._apply_bandit((p, pk.event) for p, pks in ready.items() for pk in pks
                           if not pk.counted)
        self._apply_profiles(work)
        observe_parked(self.metrics.parked_latency, self.clock.wall(),
                       [pk.msg_ts for pks in ready.values() for pk in pks])
        for st in self.profiles.partitions():
            if any(id(pk) in gone for pk in st.parked):
                st.parked = [pk for pk in st.parked if id(pk) not in gone]
                self.schedule.dirty.add(st.partition)
        self._refresh_sizes()

    def _park_detail(self, st: PartitionState, pk: Parked, reason: str) -> str:
        waited = f"item {pk.event.item_id!r} unknown after {st.park_clock - pk.since:.1f}s"
        if reason == "park_overflow":
            return (f"{waited}: over {self.s.max_parked} parked events or "
                    f"{self.s.parked_max_bytes} bytes (PROFILES_MAX_PARKED, "
                    "PROFILES_PARKED_MAX_BYTES)")
        return waited

    def _tick_park_clocks(self) -> None:
        """Move each owned partition's park clock on by the time since the last tick, while
        the catalogue is caught up.  The clocks are in the snapshots and start from where they
        were when a partition is loaded, so a worker's downtime (and its catch-up after a
        restart) never counts as waiting."""
        mono = self.clock.monotonic()
        live = self.catalog.caught_up.is_set()
        ticks: dict[int, tuple[PartitionState, float]] = {}
        for p, st in self.profiles.states.items():
            prev = self._park_ticks.get(p)
            if live and prev is not None and prev[0] is st:  # the same load of the partition
                st.park_clock += max(0.0, mono - prev[1])
            ticks[p] = (st, mono)
        self._park_ticks = ticks

    def _uncount_bandit(self, st: PartitionState, ev: Event) -> None:
        """Take back the bandit counts of a parked event that code before issue 10 counted
        when it parked (its snapshot's Parked.counted), now that it is dead-lettered."""
        arm = ev.arm or ev.item_id
        if arm is None:
            return
        bp = st.arms.params
        imp = 1.0 if ev.type in bp.impression_types else 0.0
        rew = float(bp.reward_weights.get(ev.type, 0.0))
        if not (imp or rew) or arm not in st.arms:
            return
        minus_imp, minus_rew = np.array([-imp]), np.array([-rew])
        st.arms.add([arm], minus_imp, minus_rew, anchor=float(ev.ts))
        ctx = st.arms.contextual
        if bp.context == "position" and ev.position is not None and ctx is not None:
            key = context_arm(arm, ev.position)
            if key in ctx:
                ctx.add([key], minus_imp, minus_rew, anchor=float(ev.ts))

    # ------------------------------------------------------------------ housekeeping
    async def housekeeping(self, highwater: Callable[[int], int | None]) -> None:
        """The once-a-second chores: lag gauges, parked events, the TTL."""
        self.update_lag(highwater)
        await self.resolve_parked()
        await self.expire()

    # ------------------------------------------------------------------ helpers
    async def _dead_letter(self, rejects: list[DeadLetter]) -> None:
        dropped = await dead_letter(rejects, self.send_dlq, self.pseudonymize,
                                    self.s.events_topic, self.s.max_id_bytes,
                                    self.s.max_request_bytes, self.s.dlq_refs_per_user)
        if dropped:
            self.metrics.dlq_values_dropped.inc(dropped)

    async def _erase_dead_letters(self, forgets: list[Accepted],
                                  rejects: list[DeadLetter]) -> None:
        """Tombstones for every DLQ record of the users being forgotten (compaction erases
        them): those of earlier batches, and this batch's from before the forget in the log."""
        keys = [k for a in forgets for k in a.st.dlq_keys.get(a.ev.user_id, ())]
        before = {(a.st.partition, a.ev.user_id): a.offset for a in forgets}
        keys += [r.dlq_key for r in rejects if r.user is not None
                 and r.offset < before.get((r.st.partition, r.user), -1)]
        if keys:
            await asyncio.gather(*(self.send_dlq(k, None, [("reason", b"erased")]) for k in keys))

    @staticmethod
    def _keep_later_dead_letters(forgets: list[Accepted], rejects: list[DeadLetter]) -> None:
        """A forget dropped its user's DLQ keys: those of this batch's rejects after it in the
        log are not erased (they belong to what comes next) and are remembered again."""
        at = {(a.st.partition, a.ev.user_id): a.offset for a in forgets}
        for r in rejects:
            if r.user is not None and r.offset > at.get((r.st.partition, r.user), r.offset):
                keys = r.st.dlq_keys.setdefault(r.user, [])
                if r.dlq_key not in keys:
                    keys.append(r.dlq_key)

    def _refresh_sizes(self) -> None:
        self.metrics.index_vectors.labels("users").set(self.profiles.indexed())
        self.metrics.index_vectors.labels("items").set(len(self.catalog.index))
        publish_index_info(self.metrics.index_info, users=self.profiles.index,
                           items=self.catalog.index)

    def update_lag(self, highwater: Callable[[int], int | None]) -> None:
        topic = self.s.events_topic
        for p, st in self.profiles.states.items():
            self.metrics.applied_offset.labels(topic, str(p)).set(st.next_offset)
            hw = highwater(p)
            if hw is not None:
                self.metrics.lag.labels(topic, str(p)).set(max(0, hw - st.next_offset))

    def summary(self) -> dict[str, float]:
        """Totals across owned partitions (the demo's and tests' view)."""
        out: dict[str, float] = defaultdict(float)
        for st in self.profiles.partitions():
            for (_t, outcome), n in st.outcomes.items():
                out[f"events_{outcome}"] += n
            out["parked"] += len(st.parked)
            out["users"] += len(st.profiles)
        return dict(out)
