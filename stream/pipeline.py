"""The worker's processing of one micro-batch, between the faust shell and the pure core.

A batch goes through three phases:

1. *classify* (async, read-only): skip offsets the state already covers, decode and validate,
   spot duplicate event ids, look up item vectors (unknown items are parked), encode queries;
2. *dead-letter* (async): send rejected records to the DLQ and wait for the broker's ack, so a
   crash can only re-send them, never lose them;
3. *apply* (synchronous, no ``await``): bandit partials, profiles, user stats, the users
   index, outcome counters and ``next_offset`` change together.  A snapshot can only ever see
   state between batches, and a cancelled batch has changed nothing.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from index import VectorIndex
from stream.catalog import ItemCatalog
from stream.core.bandit import BanditParams
from stream.core.events import Event, Limits, Reject, decode_event
from stream.core.profile import ProfileParams
from stream.deadletter import DeadLetter, dead_letter, is_hashed
from stream.encoding import EncoderService
from stream.errors import StateError
from stream.metrics import Metrics
from stream.privacy import Pseudonymizer, tombstone_key
from stream.settings import Settings
from stream.state import Parked, PartitionState, SnapshotStore

log = logging.getLogger(__name__)

# (partition, offset, kafka timestamp ms, key, value[, headers])
Record = tuple
DlqSender = Callable[[bytes | None, bytes | None, list[tuple[str, bytes]]], Awaitable[None]]


@dataclass(slots=True)
class _Accepted:
    st: PartitionState
    ev: Event
    offset: int
    msg_ts: int
    raw: bytes


class Pipeline:
    """State of one worker: partition states, catalogue, indexes, encoder, metrics."""

    def __init__(self, settings: Settings, encoder) -> None:
        self.s = settings
        self.limits = Limits(min_ts=settings.min_ts, max_future_ms=settings.max_future_ms,
                             max_text_len=settings.max_text_len,
                             max_bytes=settings.max_message_bytes)
        self.pp = ProfileParams(half_life_ms=settings.half_life_ms, weights=settings.event_weight_map())
        self.bp = BanditParams(prior_alpha=settings.prior_alpha, prior_beta=settings.prior_beta,
                               reward_weights=settings.reward_weight_map(),
                               half_life_ms=settings.bandit_half_life_ms or None,
                               context=settings.bandit_context)
        self.encoder = encoder
        self.dim: int = encoder.dim
        self.model: str = encoder.fingerprint
        self.states: dict[int, PartitionState] = {}
        self.metrics = Metrics(lambda: list(self.states.values()))
        self.encoder_service = EncoderService(encoder, settings.encoder_batch,
                                              settings.encoder_max_wait_s, self.metrics)
        self.catalog = ItemCatalog(self.dim, self.limits, self.model)
        self._catalog_saved = 0
        self.users_index = VectorIndex(self.dim, name="users")
        self.store = SnapshotStore(settings.state_dir, settings.events_topic)
        self.items_store = SnapshotStore(settings.state_dir, settings.items_topic)
        self.send_dlq: DlqSender | None = None
        self.publish_event: Callable[[bytes, bytes], Awaitable[None]] | None = None
        self.router = None  # stream.routing.Router, set by the faust shell
        self.pseudonymize = Pseudonymizer(settings.id_secret.reveal())
        self.lock = asyncio.Lock()
        self._dirty: set[int] = set()
        self._snap_at: dict[int, float] = {}  # partition -> monotonic time of its last snapshot
        self._snap_not_before = 0.0  # the snapshot budget's pause
        self.clock = time.monotonic  # snapshot scheduling's clock (tests replace it)
        self._catalog_version_seen = 0
        self.assigned_once = asyncio.Event()

    # ------------------------------------------------------------------ assignment
    def load_partition(self, partition: int) -> PartitionState:
        """Load a partition's snapshot (or start empty) and index its users."""
        d = self.store.read(partition)
        if d is None:
            st = PartitionState.empty(partition, self.dim, self.pp, self.bp, self.s.dedupe_window,
                                      self.model, self.s.rate_limit_events, self.s.rate_limit_window_ms)
        else:
            if d.get("model") != self.model:
                raise StateError(
                    f"snapshot {self.store.path(partition)} holds vectors of model {d.get('model')}, "
                    f"this worker's encoder is {self.model}: run `profiles rebuild`, or point "
                    "PROFILES_ENCODER_PATH at the model that made it")
            st = PartitionState.from_dict(d, self.dim, self.pp, self.bp, self.s.dedupe_window,
                                          self.s.rate_limit_events, self.s.rate_limit_window_ms)
        users = st.profiles.users()
        if users:
            self.users_index.upsert(users, st.profiles.vectors(users))
        self.states[partition] = st
        log.info("partition %d: resumed at offset %d from %s (%d users, %d parked)", partition,
                 st.next_offset, "snapshot" if d is not None else "empty state", len(users),
                 len(st.parked))
        self._refresh_sizes()
        return st

    async def assign(self, partitions: Iterable[int]) -> None:
        async with self.lock:
            for p in partitions:
                if p not in self.states:
                    self.load_partition(p)
        self.assigned_once.set()

    async def revoke(self, partitions: Iterable[int]) -> None:
        """Snapshot and drop partitions this worker no longer owns."""
        async with self.lock:
            for p in partitions:
                st = self.states.get(p)
                if st is None:
                    continue
                await self._write_snapshot(st)
                self.users_index.remove(st.profiles.users())
                del self.states[p]
                self._dirty.discard(p)
                self.metrics.forget_partition(self.s.events_topic, p)
            self._refresh_sizes()

    # ------------------------------------------------------------------ snapshots
    def _serialise(self, st: PartitionState) -> bytes:
        """On the event loop, under the lock: the state must not change while this runs."""
        self.store.mark_model(self.model)
        self._snap_at[st.partition] = self.clock()
        return self.store.dumps(st)

    async def _store(self, partition: int, blob: bytes, t0: float) -> None:
        """The durable write, on an executor thread; ``t0``: when serialising began."""
        await asyncio.get_running_loop().run_in_executor(None, self.store.write, partition, blob)
        self.metrics.snapshots.inc()
        self.metrics.snapshot_seconds.observe(time.perf_counter() - t0)

    async def _write_snapshot(self, st: PartitionState) -> None:
        t0 = time.perf_counter()
        await self._store(st.partition, self._serialise(st), t0)

    async def snapshot(self, everything: bool = False) -> int:
        """Snapshot changed partitions; returns how many.

        ``everything`` (shutdown, rebuild): every owned partition, now.  Otherwise (the timer)
        at most *one* partition per call: the changed one whose snapshot is oldest, once that is
        ``snapshot_interval_s`` old.  Serialising runs on the event loop while no batch can
        change the state, so one partition per call bounds the pause, and after a snapshot that
        took ``c`` seconds to serialise the next waits ``c / snapshot_budget`` (the share of
        the loop's time snapshots may take: the interval stretches as the state grows).
        """
        if everything:
            async with self.lock:
                parts = list(self.states)
                for p in parts:
                    await self._write_snapshot(self.states[p])
                self._dirty.clear()
                await self._snapshot_catalog()
                return len(parts)
        now = self.clock()
        if now < self._snap_not_before:
            return 0
        async with self.lock:
            await self._snapshot_catalog()
            due = [p for p in self._dirty if p in self.states
                   and now - self._snap_at.get(p, float("-inf")) >= self.s.snapshot_interval_s]
            if not due:
                return 0
            p = min(due, key=lambda q: self._snap_at.get(q, float("-inf")))
            t0 = time.perf_counter()
            blob = self._serialise(self.states[p])
            self._dirty.discard(p)
            self._snap_not_before = self.clock() + (time.perf_counter() - t0) / self.s.snapshot_budget
        # The disk write (fsync) runs outside the lock: batches go on meanwhile.
        try:
            await self._store(p, blob, t0)
        except BaseException:
            self._dirty.add(p)
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
        async with self.lock:
            await self._process(records)
            if (self.catalog.version != self._catalog_version_seen
                    or sum(len(st.parked) for st in self.states.values()) > self.s.max_parked):
                await self._resolve_parked()

    async def _process(self, records: Sequence[Record]) -> None:
        accepted: list[_Accepted] = []
        rejects: list[DeadLetter] = []
        high: dict[int, int] = {}
        seen: set[tuple[int, str]] = set()
        duplicates: list[tuple[PartitionState, Event]] = []
        redelivered = 0
        pseudo = self.pseudonymize
        for rec in records:
            p, off, msg_ts, key, raw = rec[:5]
            st = self.states.get(p)
            if st is None:  # revoked while buffered: its new owner applies it
                continue
            if off < st.next_offset:
                redelivered += 1
                continue
            if off > high.get(p, st.next_offset - 1) + 1 and off != st.next_offset:
                self.metrics.offset_gaps.labels(self.s.events_topic, str(p)).inc()
                log.warning("partition %d: offset gap %d -> %d", p, high.get(p, st.next_offset - 1), off)
            high[p] = off
            raw = raw or b""
            ev = decode_event(raw, msg_ts, self.limits)
            if isinstance(ev, Reject):
                rejects.append(DeadLetter(st, key, raw, ev.reason, ev.detail, off, "unknown", None))
                continue
            if pseudo.enabled and not (len(rec) > 5 and is_hashed(rec[5])):
                ev = Event(ev.event_id, pseudo(ev.user_id), ev.type, ev.ts, ev.item_id, ev.query,
                           ev.arm, ev.position, ev.propensity)
            if ev.event_id in st.dedupe or (p, ev.event_id) in seen:
                duplicates.append((st, ev))
                continue
            seen.add((p, ev.event_id))
            accepted.append(_Accepted(st, ev, off, msg_ts, raw))
        if redelivered:
            self.metrics.redelivered.inc(redelivered)

        # Forgets win over anything older of the same user, whatever the arrival order.
        forgets = [a for a in accepted if a.ev.type == "forget"]
        tomb: dict[tuple[int, str], int] = {}
        for a in forgets:
            k = (a.st.partition, a.ev.user_id)
            tomb[k] = max(a.ev.ts, tomb.get(k, a.ev.ts))
        forgotten: list[_Accepted] = []
        live: list[_Accepted] = []
        for a in accepted:
            if a.ev.type == "forget":
                continue
            t = a.st.tombstones.get(tombstone_key(a.ev.user_id)) if a.st.tombstones else None
            t2 = tomb.get((a.st.partition, a.ev.user_id)) if tomb else None
            if (t is not None and a.ev.ts <= t) or (t2 is not None and a.ev.ts <= t2):
                forgotten.append(a)
            else:
                live.append(a)
        live, rate_updates = self._rate_cap(live, rejects)

        # Vectors: known items now, unknown items park, queries go through the encoder.
        item_rows = [i for i, a in enumerate(live) if a.ev.type != "search"]
        query_rows = [i for i, a in enumerate(live) if a.ev.type == "search"]
        vectors = np.zeros((len(live), self.dim), dtype=np.float32)
        parked: set[int] = set()
        if item_rows:
            vecs, missing = self.catalog.vectors([live[i].ev.item_id for i in item_rows])
            vectors[item_rows] = vecs
            parked = {item_rows[j] for j in missing}
        if query_rows:
            vectors[query_rows] = await self.encoder_service.encode([live[i].ev.query for i in query_rows])

        # Dead letters (and the erasure of a forgotten user's dead letters) are acknowledged by
        # the broker before the state changes: a crash can repeat them, never lose them.
        if rejects:
            await self._dead_letter(rejects)
        if forgets:
            await self._erase_dead_letters(forgets)

        # ---- apply: synchronous from here on -------------------------------------
        now = time.time()
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
                raw = self.pseudonymize.scrub(a.raw) or b"" if pseudo.enabled else a.raw
                a.st.parked.append(Parked(a.ev, a.offset, a.msg_ts, now, raw))
            else:
                by_state[a.st.partition].append(i)
        for p, updates in rate_updates.items():
            self.states[p].rate.commit(updates)
        self._apply_bandit(live)
        self._apply_profiles({p: ([live[i].ev for i in rows], vectors[rows],
                                  [live[i].msg_ts for i in rows])
                              for p, rows in by_state.items()})
        for p, off in high.items():
            self.states[p].next_offset = off + 1
            self._dirty.add(p)
            self.metrics.applied_offset.labels(self.s.events_topic, str(p)).set(off + 1)
        self.metrics.batch_size.observe(len(records))
        self._refresh_sizes()

    def _rate_cap(self, live: list[_Accepted], rejects: list[DeadLetter]):
        """Split off events over a user's rate cap (they become ``rate_limited`` rejects)."""
        if not self.s.rate_limit_events or not live:
            return live, {}
        by_p: dict[int, list[_Accepted]] = defaultdict(list)
        for a in live:
            by_p[a.st.partition].append(a)
        kept: list[_Accepted] = []
        updates = {}
        for p, group in by_p.items():
            allowed, updates[p] = self.states[p].rate.check([a.ev.user_id for a in group],
                                                           [a.ev.ts for a in group])
            for a, ok in zip(group, allowed):
                if ok:
                    kept.append(a)
                else:
                    rejects.append(DeadLetter(a.st, a.ev.user_id.encode(), a.raw, "rate_limited",
                                           f"over {self.s.rate_limit_events} events per "
                                           f"{self.s.rate_limit_window_ms} ms", a.offset, a.ev.type,
                                           a.ev.user_id))
        return kept, updates

    def _forget(self, a: _Accepted) -> None:
        """Erase a user from this partition's state and the users index; keep a tombstone."""
        st, user = a.st, a.ev.user_id
        st.erase(user)
        self.users_index.remove([user])
        tkey = tombstone_key(user)
        st.tombstones[tkey] = max(a.ev.ts, st.tombstones.get(tkey, a.ev.ts))
        st.dedupe.add(a.ev.event_id)
        st.outcomes[("forget", "applied")] += 1
        log.info("audit: forget user-hash=%s partition=%d offset=%d ts=%d", tkey, st.partition,
                 a.offset, a.ev.ts)

    def _apply_bandit(self, accepted: list[_Accepted]) -> None:
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
            self.states[p].arms.update(arms, types, ts=ts,
                                       contexts=ctx if self.bp.context == "position" else None)

    def _apply_profiles(self, work: dict[int, tuple[list[Event], np.ndarray, list[int]]]) -> None:
        """Apply events to their partitions' profiles, then update the users index once."""
        touched_all: list[str] = []
        vectors_all: list[np.ndarray] = []
        msg_ts_all: list[int] = []
        weight_of = self.pp.weights
        category = self.catalog.category
        for p, (events, vectors, msg_ts) in work.items():
            if not events:
                continue
            st = self.states[p]
            users = [e.user_id for e in events]
            types = [e.type for e in events]
            ts = np.fromiter((e.ts for e in events), dtype=np.int64, count=len(events))
            weights = np.fromiter((weight_of.get(t, 0.0) for t in types), dtype=np.float64,
                                  count=len(types))
            touched = st.profiles.apply(users, ts, weights, vectors)
            item_ids = [e.item_id for e in events]
            st.users.update(users, types, ts, [category(i) if i else None for i in item_ids], item_ids)
            touched_all += touched
            vectors_all.append(st.profiles.vectors(touched))
            st.outcomes.update((t, "applied") for t in types)
            msg_ts_all += msg_ts
        if not touched_all:
            return
        self.users_index.upsert(touched_all, np.concatenate(vectors_all))
        latency = time.time() - np.asarray(msg_ts_all, dtype=np.float64) / 1000.0
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
            for st in self.states.values():
                if not st.newest_ts:
                    continue
                idle = st.profiles.idle(st.newest_ts - ttl)
                for user in idle:
                    st.profiles.remove(user)
                    st.users.remove(user)
                    st.rate.forget(user)
                if idle:
                    self.users_index.remove(idle)
                    st.expired += len(idle)
                    self._dirty.add(st.partition)
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
        now = time.time()
        expired: list[tuple[PartitionState, Parked, str]] = []
        waiting: list[tuple[PartitionState, Parked]] = []
        ready: dict[int, list[Parked]] = defaultdict(list)
        for st in self.states.values():
            for pk in st.parked:
                if pk.event.item_id in self.catalog.items:
                    ready[st.partition].append(pk)
                elif now - pk.parked_at > self.s.park_timeout_s:
                    expired.append((st, pk, "unknown_item"))
                else:
                    waiting.append((st, pk))
        if len(waiting) > self.s.max_parked:
            waiting.sort(key=lambda sp: sp[1].parked_at)
            expired += [(st, pk, "park_overflow") for st, pk in waiting[:len(waiting) - self.s.max_parked]]
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
            st.dlq_keys.setdefault(r.user, []).append(r.dlq_key)
        work = {}
        for p, pks in ready.items():
            vecs, _missing = self.catalog.vectors([pk.event.item_id for pk in pks])
            work[p] = ([pk.event for pk in pks], vecs, [pk.msg_ts for pk in pks])
        self._apply_profiles(work)
        for st in self.states.values():
            if any(id(pk) in gone for pk in st.parked):
                st.parked = [pk for pk in st.parked if id(pk) not in gone]
                self._dirty.add(st.partition)
        self._refresh_sizes()

    # ------------------------------------------------------------------ helpers
    async def _dead_letter(self, rejects: list[DeadLetter]) -> None:
        if self.send_dlq is None:
            raise RuntimeError("no dead-letter sender configured")
        await dead_letter(rejects, self.send_dlq, self.pseudonymize, self.s.events_topic)

    async def _erase_dead_letters(self, forgets: list[_Accepted]) -> None:
        """Tombstones for every DLQ record of the users being forgotten (compaction erases them)."""
        keys = [k for a in forgets for k in a.st.dlq_keys.get(a.ev.user_id, ())]
        if keys and self.send_dlq is not None:
            await asyncio.gather(*(self.send_dlq(k, None, [("reason", b"erased")]) for k in keys))

    def _refresh_sizes(self) -> None:
        self.metrics.index_vectors.labels("users").set(len(self.users_index))
        self.metrics.index_vectors.labels("items").set(len(self.catalog.index))

    def update_lag(self, highwater: Callable[[int], int | None]) -> None:
        topic = self.s.events_topic
        for p, st in self.states.items():
            self.metrics.applied_offset.labels(topic, str(p)).set(st.next_offset)
            hw = highwater(p)
            if hw is not None:
                self.metrics.lag.labels(topic, str(p)).set(max(0, hw - st.next_offset))

    def state_of(self, user: str) -> PartitionState | None:
        for st in self.states.values():
            if user in st.profiles:
                return st
        return None

    def summary(self) -> dict:
        """Totals across owned partitions (the demo's and tests' view)."""
        out: dict[str, float] = defaultdict(float)
        for st in self.states.values():
            for (_t, outcome), n in st.outcomes.items():
                out[f"events_{outcome}"] += n
            out["parked"] += len(st.parked)
            out["users"] += len(st.profiles)
        return dict(out)
