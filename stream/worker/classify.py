"""The classify phase of a batch: what each record is, before anything changes.

Read-only over the partition states: skip offsets a state already covers (redelivered), note
offsets skipped (gaps), decode and validate once, pseudonymise the user id, spot duplicates
(the same user and event id in the dedupe window or earlier in the batch: keyed by the
pseudonymised id when pseudonymisation is on), split off forgets and the events they erase,
and apply the per-user rate cap.  The pipeline then dead-letters the rejects and
applies the rest in one synchronous step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from stream.core.dedupe import key_rows, pair_key
from stream.core.events import Event, Limits, Reject, decode_events, with_user
from stream.core.eventtypes import ERASING_TYPES
from stream.worker.deadletter import DeadLetter, untrusted
from stream.worker.privacy import Pseudonymizer, tombstone_key
from stream.worker.records import Record
from stream.worker.state import PartitionState

__all__ = ["Accepted", "Classified", "RateUpdates", "classify", "forget_cuts", "rate_cap",
           "split_forgets"]

# A rate cap's pending windows per partition: user -> (window, events counted)
RateUpdates = dict[int, dict[str, tuple[int, int]]]


@dataclass(slots=True)
class Accepted:
    """A valid, new event and where it came from."""

    st: PartitionState
    ev: Event
    offset: int
    msg_ts: int
    raw: bytes
    rate_window: int | None = None  # the rate-cap window it is charged to (None: not charged)
    key: bytes = b""  # its dedupe window key (pair_key of user and event id)


@dataclass
class Classified:
    accepted: list[Accepted] = field(default_factory=list)
    duplicates: list[tuple[PartitionState, Event]] = field(default_factory=list)
    rejects: list[DeadLetter] = field(default_factory=list)
    high: dict[int, int] = field(default_factory=dict)  # partition -> last offset in the batch
    redelivered: int = 0  # records below a state's next_offset (skipped)
    gaps: list[tuple[int, int, int]] = field(default_factory=list)  # (partition, from, to)


def classify(records: Sequence[Record], states: Mapping[int, PartitionState], limits: Limits,
             pseudo: Pseudonymizer, now_ms: int | None = None) -> Classified:
    """Sort one batch's records into accepted, duplicate and rejected (read-only).

    Event time is bounded (``ts_in_future``) by the earlier of the record's Kafka timestamp
    and ``now_ms``, the worker's clock, plus ``limits.max_future_ms``: a producer sets the
    Kafka CreateTime, so it is not trusted alone.  A record without a Kafka timestamp (0 or
    negative: the broker gave none) is bounded by the clock alone; ``now_ms`` None (tools
    without a clock) by the Kafka timestamp alone."""
    out = Classified()
    high = out.high
    # first the records to decode (an untrusted one is its dead letter already), then one
    # columnar decode of them all, then each in order
    todo: list[tuple[Record, PartitionState, bytes, bool, int | None] | DeadLetter] = []
    for rec in records:
        p, off = rec.partition, rec.offset
        st = states.get(p)
        if st is None:  # revoked while buffered: its new owner applies it
            continue
        if off < st.next_offset:
            out.redelivered += 1
            continue
        if off > high.get(p, st.next_offset - 1) + 1 and off != st.next_offset:
            out.gaps.append((p, high.get(p, st.next_offset - 1), off))
        high[p] = off
        raw = rec.value or b""
        # a claim that the id is already pseudonymised counts only with a valid tag
        hashed = False
        if pseudo.enabled and (tag := rec.id_tag) is not None:
            if not pseudo.verify(p, raw, tag):
                todo.append(untrusted(st, raw, off, pseudo))
                continue
            hashed = True
        kafka_ts = rec.timestamp_ms if rec.timestamp_ms > 0 else None
        todo.append((rec, st, raw, hashed, kafka_ts))
    decoding = [t for t in todo if not isinstance(t, DeadLetter)]
    decoded = iter(decode_events([t[2] for t in decoding],
                                 [_time_bound(t[4], now_ms) for t in decoding], limits))
    for t in todo:
        if isinstance(t, DeadLetter):
            out.rejects.append(t)
            continue
        rec, st, raw, hashed, kafka_ts = t
        off = rec.offset
        ev = next(decoded)
        if isinstance(ev, Reject):
            if ev.reason == "ts_in_future":
                ev = Reject(ev.reason, _future_detail(raw, kafka_ts, now_ms, limits))
            out.rejects.append(DeadLetter(st, rec.key, raw, ev.reason, ev.detail, off,
                                          "unknown", None, scrubbed=hashed))
            continue
        if pseudo.enabled and not hashed:
            ev = with_user(ev, pseudo(ev.user_id))
        msg_ts = kafka_ts if kafka_ts is not None else (now_ms or 0)
        out.accepted.append(Accepted(st, ev, off, msg_ts, raw,
                                     key=pair_key(ev.user_id, ev.event_id)))
    if out.accepted:
        _split_duplicates(out)
    return out


def _split_duplicates(out: Classified) -> None:
    """Move the duplicates out of ``out.accepted`` (in order): a pair in its partition's
    dedupe window (one vectorised look-up per partition) or earlier in the batch."""
    by_p: dict[int, list[int]] = defaultdict(list)
    for i, a in enumerate(out.accepted):
        by_p[a.st.partition].append(i)
    in_window = np.zeros(len(out.accepted), dtype=bool)
    for rows in by_p.values():
        group = [out.accepted[i] for i in rows]
        in_window[rows] = group[0].st.dedupe.seen_many(key_rows([a.key for a in group]),
                                                       [a.ev.event_id for a in group])
    seen: set[tuple[int, bytes]] = set()  # (partition, key) earlier in the batch
    kept: list[Accepted] = []
    for a, dup in zip(out.accepted, in_window.tolist()):
        pair = (a.st.partition, a.key)
        if dup or pair in seen:
            out.duplicates.append((a.st, a.ev))
            continue
        seen.add(pair)
        kept.append(a)
    out.accepted = kept


def _time_bound(kafka_ts: int | None, now_ms: int | None) -> int | None:
    """The time an event may be at most ``max_future_ms`` after (None: no bound)."""
    if kafka_ts is None:
        return now_ms
    return kafka_ts if now_ms is None else min(kafka_ts, now_ms)


def _future_detail(raw: bytes, kafka_ts: int | None, now_ms: int | None, limits: Limits) -> str:
    """One line for a ``ts_in_future`` dead letter, naming both clocks."""
    ts = orjson.loads(raw).get("ts")  # decode_event accepted it as JSON with an integral ts
    return (f"ts {ts} is more than {limits.max_future_ms} ms (PROFILES_MAX_FUTURE_MS) after "
            f"min(Kafka time {kafka_ts if kafka_ts is not None else 'none'}, worker clock "
            f"{now_ms if now_ms is not None else 'none'})")


def split_forgets(accepted: list[Accepted]
                  ) -> tuple[list[Accepted], list[Accepted], list[Accepted]]:
    """(forgets, events they erase, the rest).  A forget wins over every event of the same
    user at or before its time, whatever the arrival order: in this batch, or later (the
    partition's tombstones)."""
    forgets = [a for a in accepted if a.ev.type in ERASING_TYPES]
    tomb: dict[tuple[int, str], int] = {}
    for a in forgets:
        k = (a.st.partition, a.ev.user_id)
        tomb[k] = max(a.ev.ts, tomb.get(k, a.ev.ts))
    forgotten: list[Accepted] = []
    live: list[Accepted] = []
    for a in accepted:
        if a.ev.type in ERASING_TYPES:
            continue
        t = a.st.tombstones.get(tombstone_key(a.ev.user_id)) if a.st.tombstones else None
        t2 = tomb.get((a.st.partition, a.ev.user_id)) if tomb else None
        if (t is not None and a.ev.ts <= t) or (t2 is not None and a.ev.ts <= t2):
            forgotten.append(a)
        else:
            live.append(a)
    return forgets, forgotten, live


def forget_cuts(records: Sequence[Record], accepted: list[Accepted]) -> list[int]:
    """Where to cut a batch so that no forget shares its part with another accepted event of
    its user (positions in ``records``, ascending; empty for almost every batch).

    A forget erases what came before it in the partition's log and nothing after it, so a
    batch is applied as if it were cut at its forgets: the result never depends on how the
    records were batched."""
    if not any(a.ev.type in ERASING_TYPES for a in accepted):
        return []
    pos: dict[tuple[int, int], int] = {}
    for i, rec in enumerate(records):
        pos.setdefault((rec.partition, rec.offset), i)
    cuts: list[int] = []
    seen: set[tuple[int, str]] = set()  # users with an accepted event in the current part
    erased: set[tuple[int, str]] = set()  # users with a forget in the current part
    for a in accepted:
        k = (a.st.partition, a.ev.user_id)
        forget = a.ev.type in ERASING_TYPES
        if k in erased or (forget and k in seen):
            i = pos[(a.st.partition, a.offset)]
            if not cuts or i > cuts[-1]:
                cuts.append(i)
            seen.clear()
            erased.clear()
        seen.add(k)
        if forget:
            erased.add(k)
    return cuts


def rate_cap(live: list[Accepted], states: Mapping[int, PartitionState], limit: int,
             window_ms: int, rejects: list[DeadLetter]) -> tuple[list[Accepted], RateUpdates]:
    """Split off events over a user's rate cap (appended to ``rejects`` as ``rate_limited``);
    returns the kept events (each with the window it is charged to) and the windows to commit
    when the batch is applied."""
    if not limit or not live:
        return live, {}
    by_p: dict[int, list[Accepted]] = defaultdict(list)
    for a in live:
        by_p[a.st.partition].append(a)
    kept: list[Accepted] = []
    updates: RateUpdates = {}
    for p, group in by_p.items():
        allowed, charged, updates[p] = states[p].rate.decide([a.ev.user_id for a in group],
                                                             [a.ev.ts for a in group])
        for a, ok, window in zip(group, allowed, charged):
            if ok:
                a.rate_window = window
                kept.append(a)
            else:
                rejects.append(DeadLetter(a.st, a.ev.user_id.encode(), a.raw, "rate_limited",
                                          f"over {limit} events per {window_ms} ms", a.offset,
                                          a.ev.type, a.ev.user_id))
    return kept, updates
