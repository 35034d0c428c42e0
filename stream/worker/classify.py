"""The classify phase of a batch: what each record is, before anything changes.

Read-only over the partition states: skip offsets a state already covers (redelivered), note
offsets skipped (gaps), decode and validate once, pseudonymise the user id, spot duplicate
event ids (in the dedupe window or earlier in the batch), split off forgets and the events
they erase, and apply the per-user rate cap.  The pipeline then dead-letters the rejects and
applies the rest in one synchronous step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from stream.core.events import Event, Limits, Reject, decode_event
from stream.core.eventtypes import ERASING_TYPES
from stream.worker.deadletter import DeadLetter
from stream.worker.privacy import Pseudonymizer, tombstone_key
from stream.worker.records import Record
from stream.worker.state import PartitionState

__all__ = ["Accepted", "Classified", "RateUpdates", "classify", "rate_cap", "split_forgets"]

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


@dataclass
class Classified:
    accepted: list[Accepted] = field(default_factory=list)
    duplicates: list[tuple[PartitionState, Event]] = field(default_factory=list)
    rejects: list[DeadLetter] = field(default_factory=list)
    high: dict[int, int] = field(default_factory=dict)  # partition -> last offset in the batch
    redelivered: int = 0  # records below a state's next_offset (skipped)
    gaps: list[tuple[int, int, int]] = field(default_factory=list)  # (partition, from, to)


def classify(records: Sequence[Record], states: Mapping[int, PartitionState], limits: Limits,
             pseudo: Pseudonymizer) -> Classified:
    """Sort one batch's records into accepted, duplicate and rejected (read-only)."""
    out = Classified()
    high = out.high
    seen: set[tuple[int, str]] = set()
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
        ev = decode_event(raw, rec.timestamp_ms, limits)
        if isinstance(ev, Reject):
            out.rejects.append(DeadLetter(st, rec.key, raw, ev.reason, ev.detail, off,
                                          "unknown", None))
            continue
        if pseudo.enabled and not rec.id_hashed:
            ev = Event(ev.event_id, pseudo(ev.user_id), ev.type, ev.ts, ev.item_id, ev.query,
                       ev.arm, ev.position, ev.propensity)
        if ev.event_id in st.dedupe or (p, ev.event_id) in seen:
            out.duplicates.append((st, ev))
            continue
        seen.add((p, ev.event_id))
        out.accepted.append(Accepted(st, ev, off, rec.timestamp_ms, raw))
    return out


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


def rate_cap(live: list[Accepted], states: Mapping[int, PartitionState], limit: int,
             window_ms: int, rejects: list[DeadLetter]) -> tuple[list[Accepted], RateUpdates]:
    """Split off events over a user's rate cap (appended to ``rejects`` as ``rate_limited``);
    returns the kept events and the windows to commit when the batch is applied."""
    if not limit or not live:
        return live, {}
    by_p: dict[int, list[Accepted]] = defaultdict(list)
    for a in live:
        by_p[a.st.partition].append(a)
    kept: list[Accepted] = []
    updates: RateUpdates = {}
    for p, group in by_p.items():
        allowed, updates[p] = states[p].rate.check([a.ev.user_id for a in group],
                                                   [a.ev.ts for a in group])
        for a, ok in zip(group, allowed):
            if ok:
                kept.append(a)
            else:
                rejects.append(DeadLetter(a.st, a.ev.user_id.encode(), a.raw, "rate_limited",
                                          f"over {limit} events per {window_ms} ms", a.offset,
                                          a.ev.type, a.ev.user_id))
    return kept, updates
