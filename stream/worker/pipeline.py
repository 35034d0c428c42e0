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
import logging
import pickle
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from encoder.base import Encoder
from stream.core.errors import StateError
from stream.core.events import Event
from stream.core.eventtypes import QUERY_TYPES
from stream.core.signals import Signals
from stream.settings import Settings
from stream.worker.catalog import ItemCatalog
from stream.worker.classify import Accepted, classify, rate_cap, split_forgets
from stream.worker.deadletter import DeadLetter, dead_letter
from stream.worker.encoding import EncoderService
from stream.worker.metrics import Metrics
from stream.worker.ports import Clock, DeadLetterSink, SignalSink, SystemClock
from stream.worker.privacy import Pseudonymizer, tombstone_key
from stream.worker.profiles import ProfileStore
from stream.worker.records import Record
from stream.worker.sharing import SharedSignals
from stream.worker.snapshots import Scheduler, SnapshotStore
from stream.worker.state import Parked, PartitionState

__all__ = ["PUBLISH_CHUNK", "Pipeline"]

#: signal partials sent per chunk (the event loop runs batches and requests between chunks)
PUBLISH_CHUNK = 500

log = logging.getLogger(__name__)

class Pipeline:
    """One worker's state and the batch step that changes it."""

    def __init__(self, settings: Settings, encoder: Encoder, *, dead_letters: DeadLetterSink,
                 clock: Clock | None = None, signals: SignalSink | None = None) -> None:
        self.s = settings
        self.limits = settings.limits()
        self.pp = settings.profile_params()
        self.bp = settings.bandit_params()
        self.sp = settings.signal_params()
        self.encoder = encoder
        self.dim: int = encoder.dim
        self.model: str = encoder.fingerprint
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.send_dlq = dead_letters
        self.profiles = ProfileStore(self.dim)
        self.metrics = Metrics(self.profiles.partitions, top_arms=settings.bandit_top_arms)
        # signals=None (rebuild, tools): the view is kept, nothing is published
        self.send_signals = signals
        self.sharing = SharedSignals(self.sp, self.profiles.states.keys, self.metrics)
        self._publish_lock = asyncio.Lock()  # one publisher at a time: partials stay in order
        self.encoder_service = EncoderService(encoder, settings.encoder_batch,
                                              settings.encoder_max_wait_s, self.metrics)
        self.catalog = ItemCatalog(self.dim, self.limits, self.model)
        self.store = SnapshotStore(settings.state_dir, settings.events_topic)
        self.items_store = SnapshotStore(settings.state_dir, settings.items_topic)
        self.schedule = Scheduler(settings.snapshot_interval_s, settings.snapshot_budget,
                                  self.clock.monotonic)
        self.pseudonymize = Pseudonymizer(settings.id_secret.reveal())
        self.lock = asyncio.Lock()
        self.assigned_once = asyncio.Event()
        self._catalog_saved = 0
        self._catalog_version_seen = 0

    @property
    def states(self) -> dict[int, PartitionState]:
        """Owned partitions (a copy: change ownership through assign/revoke)."""
        return dict(self.profiles.states)

    def ready(self) -> bool:
        """The catalogue and the signals topic are caught up and the first assignment is
        loaded."""
        return (self.catalog.caught_up.is_set() and self.sharing.caught_up.is_set()
                and self.assigned_once.is_set())

    # ------------------------------------------------------------------ assignment
    def load_partition(self, partition: int) -> PartitionState:
        """Load a partition's snapshot (or start empty) and index its users."""
        d = self.store.read(partition)
        s = self.s
        if d is None:
            st = PartitionState.empty(partition, self.dim, self.pp, self.bp, s.dedupe_window,
                                      self.model, s.rate_limit_events, s.rate_limit_window_ms,
                                      self.sp)
        else:
            if d.get("model") != self.model:
                raise StateError(
                    f"snapshot {self.store.path(partition)} holds vectors of model "
                    f"{d.get('model')}, this worker's encoder is {self.model}: run "
                    "`profiles rebuild`, or point PROFILES_ENCODER_PATH at the model that made it")
            st = PartitionState.from_dict(d, self.dim, self.pp, self.bp, s.dedupe_window,
                                          s.rate_limit_events, s.rate_limit_window_ms, self.sp)
        self.profiles.add(st)
        self.sharing.loaded(partition, st.signals, publish=self.send_signals is not None)
        log.info("partition %d: resumed at offset %d from %s (%d users, %d parked)", partition,
                 st.next_offset, "snapshot" if d is not None else "empty state",
                 len(st.profiles), len(st.parked))
        self._refresh_sizes()
        return st

    async def assign(self, partitions: Iterable[int]) -> None:
        async with self.lock:
            for p in partitions:
                if p not in self.profiles:
                    self.load_partition(p)
        self.assigned_once.set()

    async def revoke(self, partitions: Iterable[int]) -> None:
        """Publish the pending signal partials of, snapshot and drop partitions this worker no
        longer owns."""
        parts = list(partitions)
        async with self._publish_lock, self.lock:
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
        partials, with the event loop free in between (batches and requests go on: a chunk's
        partials are read when it is sent, so a newer state is never overwritten by an older
        one).  What a failed or timed-out send did not publish stays queued."""
        if self.send_signals is None:
            return 0
        async with self._publish_lock:
            todo = self.sharing.take_pending(None)
            sent = 0
            for i in range(0, len(todo), PUBLISH_CHUNK):
                chunk = todo[i:i + PUBLISH_CHUNK]
                msgs = self.sharing.encode(chunk, self._signal_states())
                try:
                    # bounded: a revocation waits for this
                    await asyncio.wait_for(self._send_signals(msgs),
                                           max(5.0, self.s.session_timeout_s))
                except BaseException:
                    self.sharing.requeue(todo[i:])
                    raise
                sent += len(msgs)
                await asyncio.sleep(0)
            return sent

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
        msgs = self.sharing.encode(todo, self._signal_states())
        if not msgs:
            return
        try:
            await asyncio.wait_for(self._send_signals(msgs), timeout_s)
        except Exception as exc:
            log.warning("publishing %d signal partials of revoked partitions %s failed (%s: "
                        "%s): their next owner publishes them", len(msgs), partitions,
                        type(exc).__name__, exc)

    # ------------------------------------------------------------------ snapshots
    def _serialise(self, st: PartitionState) -> tuple[bytes, float]:
        """On the event loop, under the lock: the state must not change while this runs.
        Returns the blob and when serialising began (perf_counter)."""
        t0 = time.perf_counter()
        self.store.mark_model(self.model)
        return self.store.dumps(st), t0

    async def _store(self, partition: int, blob: bytes, t0: float) -> None:
        """The durable write, on an executor thread; ``t0``: when serialising began."""
        await asyncio.get_running_loop().run_in_executor(None, self.store.write, partition, blob)
        self.metrics.snapshots.inc()
        self.metrics.snapshot_seconds.observe(time.perf_counter() - t0)

    async def _write_snapshot(self, st: PartitionState) -> None:
        blob, t0 = self._serialise(st)
        self.schedule.written_now(st.partition)
        await self._store(st.partition, blob, t0)

    async def snapshot(self, everything: bool = False) -> int:
        """Snapshot changed partitions; returns how many.

        ``everything`` (shutdown, rebuild): every owned partition, now.  Otherwise (the timer)
        at most one partition per call, as the :class:`~stream.worker.snapshots.Scheduler`
        decides: serialising runs on the event loop while no batch can change the state.
        """
        if everything:
            async with self.lock:
                parts = self.profiles.partitions()
                for st in parts:
                    await self._write_snapshot(st)
                self.schedule.dirty.clear()
                await self._snapshot_catalog()
                return len(parts)
        if self.schedule.paused():
            return 0
        async with self.lock:
            await self._snapshot_catalog()
            p = self.schedule.due(self.profiles.states)
            if p is None:
                return 0
            blob, t0 = self._serialise(self.profiles.states[p])
            self.schedule.serialised(p, time.perf_counter() - t0)
        # The disk write (fsync) runs outside the lock: batches go on meanwhile.
        try:
            await self._store(p, blob, t0)
        except BaseException:
            self.schedule.dirty.add(p)
            raise
        return 1

    async def _snapshot_catalog(self) -> None:
        if self.catalog.version != self._catalog_saved:
            self._catalog_saved = self.catalog.version
            blob = self.items_store.frame(
                pickle.dumps(self.catalog.state(), protocol=pickle.HIGHEST_PROTOCOL))
            await asyncio.get_running_loop().run_in_executor(
                None, self.items_store.write, "catalogue", blob)

    def load_catalog(self) -> None:
        """Adopt the item catalogue's snapshot, if there is one made by this model."""
        d = self.items_store.read("catalogue")
        if d is not None and self.catalog.load_state(d):
            self._catalog_saved = self.catalog.version
            log.info("item catalogue: %d items from snapshot, resuming at offsets %s",
                     len(self.catalog.index), self.catalog.offsets)

    # ------------------------------------------------------------------ batches
    async def process(self, records: Sequence[Record]) -> None:
        """Apply one micro-batch (records of any owned partitions, in offset order each)."""
        async with self.lock:
            await self._process(records)
            if (self.catalog.version != self._catalog_version_seen
                    or sum(len(st.parked) for st in self.profiles.states.values())
                    > self.s.max_parked):
                await self._resolve_parked()

    async def _process(self, records: Sequence[Record]) -> None:
        # ---- classify: read-only ------------------------------------------------
        c = classify(records, self.profiles.states, self.limits, self.pseudonymize)
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
            vectors[query_rows] = await self.encoder_service.encode(
                [str(live[i].ev.query) for i in query_rows])

        # Dead letters (and the erasure of a forgotten user's dead letters) are acknowledged by
        # the broker before the state changes: a crash can repeat them, never lose them.
        if rejects:
            await self._dead_letter(rejects)
        if forgets:
            await self._erase_dead_letters(forgets)

        # ---- apply: synchronous from here on -------------------------------------
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
        for a in forgotten:
            a.st.dedupe.add(a.ev.event_id)
            a.st.outcomes[(a.ev.type, "forgotten")] += 1
        by_state: dict[int, list[int]] = defaultdict(list)
        for i, a in enumerate(live):
            a.st.dedupe.add(a.ev.event_id)
            if a.ev.ts > a.st.newest_ts:
                a.st.newest_ts = a.ev.ts
            if i in parked:
                raw = (self.pseudonymize.scrub(a.raw) or b"") if self.pseudonymize.enabled \
                    else a.raw
                a.st.parked.append(Parked(a.ev, a.offset, a.msg_ts, now, raw))
            else:
                by_state[a.st.partition].append(i)
        for p, updates in rate_updates.items():
            self.profiles.states[p].rate.commit(updates)
        self._apply_bandit(live)
        self._apply_profiles({p: ([live[i].ev for i in rows], vectors[rows],
                                  [live[i].msg_ts for i in rows])
                              for p, rows in by_state.items()})
        for p, off in high.items():
            self.profiles.states[p].next_offset = off + 1
            self.schedule.dirty.add(p)
            self.metrics.applied_offset.labels(self.s.events_topic, str(p)).set(off + 1)
        self.metrics.batch_size.observe(len(records))
        self._refresh_sizes()

    def _forget(self, a: Accepted) -> None:
        """Erase a user from this partition's state and the users index; keep a tombstone."""
        st, user = a.st, a.ev.user_id
        self.profiles.erase(st, user)
        tkey = tombstone_key(user)
        st.tombstones[tkey] = max(a.ev.ts, st.tombstones.get(tkey, a.ev.ts))
        st.dedupe.add(a.ev.event_id)
        st.outcomes[(a.ev.type, "applied")] += 1
        log.info("audit: forget user-hash=%s partition=%d offset=%d ts=%d", tkey, st.partition,
                 a.offset, a.ev.ts)

    def _apply_bandit(self, accepted: list[Accepted]) -> None:
        """Bandit partials count every accepted event with an arm, parked or not."""
        groups: dict[int, tuple[list[str], list[str], list[int], list[int | None]]] = {}
        for a in accepted:
            arm = a.ev.arm or a.ev.item_id
            if arm is None:
                continue
            arms, types, ts, ctx = groups.setdefault(a.st.partition, ([], [], [], []))
            arms.append(arm)
            types.append(a.ev.type)
            ts.append(a.ev.ts)  # event time: discounted counts (bandit_half_life_ms)
            ctx.append(a.ev.position)  # per-context arms (bandit_context=position)
        for p, (arms, types, ts, ctx) in groups.items():
            self.profiles.states[p].arms.update(
                arms, types, ts=ts, contexts=ctx if self.bp.context == "position" else None)

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
        msg_ts: list[int] = []
        for p, (events, _vectors, ts) in work.items():
            self.profiles.states[p].outcomes.update((e.type, "applied") for e in events)
            msg_ts += ts
        if msg_ts:
            latency = self.clock.wall() - np.asarray(msg_ts, dtype=np.float64) / 1000.0
            self.metrics.ingest_to_index.observe_many(np.maximum(latency, 0.0))

    # ------------------------------------------------------------------ expiry
    async def expire(self) -> int:
        """Drop profiles idle longer than the TTL, in event time against each partition's newest
        event (so a historic log replays with the same outcome as a live stream)."""
        ttl = self.s.profile_ttl_ms
        if not ttl:
            return 0
        removed = 0
        async with self.lock:
            for st in self.profiles.partitions():
                if not st.newest_ts:
                    continue
                idle = self.profiles.expire(st, st.newest_ts - ttl)
                if idle:
                    self.schedule.dirty.add(st.partition)
                    removed += len(idle)
            if removed:
                self._refresh_sizes()
        return removed

    # ------------------------------------------------------------------ parked events
    async def resolve_parked(self) -> None:
        async with self.lock:
            await self._resolve_parked()

    async def _resolve_parked(self) -> None:
        """Apply parked events whose item arrived; dead-letter those that waited too long
        (``unknown_item``) or that overflow ``max_parked`` (``park_overflow``, oldest first)."""
        self._catalog_version_seen = self.catalog.version
        now = self.clock.wall()
        expired: list[tuple[PartitionState, Parked, str]] = []
        waiting: list[tuple[PartitionState, Parked]] = []
        ready: dict[int, list[Parked]] = defaultdict(list)
        for st in self.profiles.partitions():
            for pk in st.parked:
                if pk.event.item_id in self.catalog.items:
                    ready[st.partition].append(pk)
                elif now - pk.parked_at > self.s.park_timeout_s:
                    expired.append((st, pk, "unknown_item"))
                else:
                    waiting.append((st, pk))
        if len(waiting) > self.s.max_parked:
            waiting.sort(key=lambda sp: sp[1].parked_at)
            expired += [(st, pk, "park_overflow")
                        for st, pk in waiting[:len(waiting) - self.s.max_parked]]
        if not ready and not expired:
            return
        dead = [DeadLetter(st, pk.event.user_id.encode(), pk.raw, reason,
                           f"item {pk.event.item_id!r} unknown after {now - pk.parked_at:.1f}s",
                           pk.offset, pk.event.type, pk.event.user_id, scrubbed=True)
                for st, pk, reason in expired]
        if dead:
            await self._dead_letter(dead)
        # ---- apply: synchronous
        gone = {id(pk) for _, pk, _ in expired} | {id(pk) for pks in ready.values() for pk in pks}
        for r, (st, pk, reason) in zip(dead, expired):
            st.dedupe.discard(pk.event.event_id)
            st.dlq[reason] += 1
            st.outcomes[(pk.event.type, "rejected")] += 1
            st.dlq_keys.setdefault(pk.event.user_id, []).append(r.dlq_key)
        work = {}
        for p, pks in ready.items():
            vecs, _missing = self.catalog.vectors([str(pk.event.item_id) for pk in pks])
            work[p] = ([pk.event for pk in pks], vecs, [pk.msg_ts for pk in pks])
        self._apply_profiles(work)
        for st in self.profiles.partitions():
            if any(id(pk) in gone for pk in st.parked):
                st.parked = [pk for pk in st.parked if id(pk) not in gone]
                self.schedule.dirty.add(st.partition)
        self._refresh_sizes()

    # ------------------------------------------------------------------ housekeeping
    async def housekeeping(self, highwater: Callable[[int], int | None]) -> None:
        """The once-a-second chores: lag gauges, parked events, the TTL."""
        self.update_lag(highwater)
        await self.resolve_parked()
        await self.expire()

    # ------------------------------------------------------------------ helpers
    async def _dead_letter(self, rejects: list[DeadLetter]) -> None:
        await dead_letter(rejects, self.send_dlq, self.pseudonymize, self.s.events_topic)

    async def _erase_dead_letters(self, forgets: list[Accepted]) -> None:
        """Tombstones for every DLQ record of the users being forgotten (compaction erases them)."""
        keys = [k for a in forgets for k in a.st.dlq_keys.get(a.ev.user_id, ())]
        if keys:
            await asyncio.gather(*(self.send_dlq(k, None, [("reason", b"erased")]) for k in keys))

    def _refresh_sizes(self) -> None:
        self.metrics.index_vectors.labels("users").set(self.profiles.indexed())
        self.metrics.index_vectors.labels("items").set(len(self.catalog.index))

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
