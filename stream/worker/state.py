"""Per-partition state: everything derived from one partition of the events topic.

Everything the worker derives from one partition of the events topic lives in one
``PartitionState``: profiles, user stats, bandit partials, collaborative signals (item
popularity, users' recent items, co-visitation), the dedupe window, parked events,
exactly-once outcome counters and ``next_offset`` — the first offset the state does *not*
cover.  A snapshot (``stream.worker.snapshots``) writes all of it atomically, so state and
offset can never disagree: on assignment the worker loads the snapshot and seeks to
``next_offset``; records below it that arrive anyway are skipped as redelivered.  That gives the
exactly-once effect without Kafka transactions (which Tansu lacks) and without trusting
``end_offsets``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from stream.core.bandit import ArmStats, BanditParams
from stream.core.dedupe import DedupeWindow
from stream.core.errors import StateError
from stream.core.events import Event
from stream.core.interests import InterestParams, InterestTable, load_interests
from stream.core.profile import (
    DEFAULT_TTL_RANK,
    EventTimeWatermark,
    ProfileParams,
    ProfileTable,
    UserStats,
)
from stream.core.ratelimit import RateCap
from stream.core.segments import Centroids
from stream.core.signals import SignalParams, Signals

__all__ = ["PARKED_OVERHEAD", "SNAPSHOT_VERSION", "DedupeWindow", "Journal", "Parked",
           "PartitionState"]

# Additions that old snapshots lack load with an empty default (``signals``: a snapshot written
# before the collaborative signals loads with none; they grow from the next events), so the
# version changes only when a field changes meaning or the format changes.  Version 2 (issue 10)
# is the data-only format of stream.worker.snapshots: version 1 files were pickles and are
# refused (never unpickled), so the read-both-shapes paths below (bare dedupe ids, 5-tuple
# parked events) are kept only for data a future migration tool may hand in.
SNAPSHOT_VERSION = 2


#: bytes a parked event is counted for besides twice its message (the message and the decoded
#: event, whose strings are at most as large): the objects around them
PARKED_OVERHEAD = 320


@dataclass
class Parked:
    """An event waiting for its item's vector (kept in state, so never lost).

    It has no effect until it is applied (bandit counts included), but it is charged to the
    rate cap when it arrives; ``rate_window`` is given back if it is dead-lettered instead.
    Its wait is measured on the partition's *park clock* (``since``), which runs only while a
    worker owns the partition with its catalogue caught up: downtime does not count.
    """

    event: Event
    offset: int
    msg_ts: int
    parked_at: float  # wall clock (time.time) when parked: which overflow first
    raw: bytes
    since: float = 0.0  # the partition's park clock when parked
    rate_window: int | None = None  # the rate-cap window it was charged to (None: not charged)
    counted: bool = False  # in the bandit counts already (parked by code before issue 10)

    def size(self) -> int:
        """Bytes it is counted for against ``PROFILES_PARKED_MAX_BYTES``."""
        return 2 * len(self.raw) + PARKED_OVERHEAD

    def to_tuple(self) -> tuple[Any, ...]:
        return (self.event, self.offset, self.msg_ts, self.parked_at, self.raw, self.since,
                self.rate_window, self.counted)

    @classmethod
    def from_tuple(cls, t: tuple[Any, ...] | list[Any]) -> Parked:
        """A snapshot's parked event.  One of 5 fields was written before issue 10: then it was
        counted in the bandit when parked (``counted``), its rate-cap window is unknown (no
        refund), and its wait starts again (the old wall-clock wait counted downtime)."""
        if len(t) == 5:
            event, offset, msg_ts, parked_at, raw = t
            return cls(event, offset, msg_ts, parked_at, raw, counted=True)
        return cls(*t)


@dataclass
class Journal:
    """What changed since this state's last serialised snapshot (in memory only, never in a
    snapshot): what an incremental snapshot (``stream.worker.deltas``) writes.  The batch
    paths mark the users they touch; item signals mark their own items (``dirty``)."""

    users: set[str] = field(default_factory=set)
    # sha256 (hex) of the last blob serialised from this state; None: the next one is a base
    parent: str | None = None
    dedupe_mark: int = 0  # ``dedupe.appended`` when it was serialised
    # a user was erased (forget): the next snapshot is a base, so their bytes leave the
    # durable state then (a delta would leave them in the older blobs)
    erased: bool = False

    def touch(self, users: Iterable[str]) -> None:
        self.users.update(users)


@dataclass
class PartitionState:
    """One partition's state and ``next_offset``, the first offset it does not cover."""

    partition: int
    profiles: ProfileTable
    users: UserStats
    arms: ArmStats
    dedupe: DedupeWindow
    next_offset: int = 0
    parked: list[Parked] = field(default_factory=list)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, outcome) -> n
    dlq: Counter[str] = field(default_factory=Counter)  # reason -> n
    model: str = ""  # encoder fingerprint the vectors were made with
    rate: RateCap = field(default_factory=lambda: RateCap(0, 1))
    tombstones: dict[str, int] = field(default_factory=dict)  # tombstone_key(user) -> forget ts
    dlq_keys: dict[str, list[bytes]] = field(default_factory=dict)  # user -> their DLQ keys
    newest_ts: int = 0  # newest event time applied (information only: not the TTL's)
    # the TTL's "now": the k-th largest event time applied, which no single event moves
    watermark: EventTimeWatermark = field(default_factory=EventTimeWatermark)
    park_clock: float = 0.0  # seconds parked events of this partition have waited (Parked)
    expired: int = 0  # profiles removed by the TTL
    signals: Signals = field(default_factory=Signals)  # popularity, recent items, co-visitation
    # the segment centroids this partition counts under (stream.worker.segments; None: off)
    segments: Centroids | None = None
    # multi-interest profiles (stream.core.interests; None: PROFILES_INTERESTS_K=0)
    interests: InterestTable | None = None
    journal: Journal = field(default_factory=Journal, compare=False, repr=False)
    # the signal partials its snapshot recorded as not yet published (None: not recorded, a
    # snapshot before stop 22 or without a signals topic: all are); set by the pipeline's
    # read, never written by to_dict (the pipeline adds it to the snapshot document)
    unpublished: list[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def empty(cls, partition: int, dim: int, pp: ProfileParams, bp: BanditParams,
              dedupe: int, model: str, rate_limit: int = 0,
              rate_window_ms: int = 1, sp: SignalParams | None = None,
              ttl_rank: int = DEFAULT_TTL_RANK,
              ip: InterestParams | None = None) -> PartitionState:
        return cls(partition, ProfileTable(dim, pp), UserStats(pp), ArmStats(bp),
                   DedupeWindow(dedupe), model=model, rate=RateCap(rate_limit, rate_window_ms),
                   signals=Signals(sp), watermark=EventTimeWatermark(ttl_rank),
                   interests=load_interests(None, dim, ip))

    def erase(self, user: str) -> None:
        """Remove every trace of ``user`` from this partition's state (not the tombstone)."""
        self.journal.users.add(user)
        self.journal.erased = True
        self.profiles.remove(user)
        self.users.remove(user)
        self.rate.forget(user)
        self.signals.erase(user)
        self.dlq_keys.pop(user, None)
        if self.interests is not None:
            self.interests.remove(user)
        if any(pk.event.user_id == user for pk in self.parked):
            self.parked = [pk for pk in self.parked if pk.event.user_id != user]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "partition": self.partition,
            "next_offset": self.next_offset,
            "model": self.model,
            "profiles": self.profiles.state(),
            "users": self.users.state(),
            "arms": self.arms.state(),
            "dedupe": self.dedupe.state(),
            "parked": [p.to_tuple() for p in self.parked],
            "park_clock": self.park_clock,
            "outcomes": dict(self.outcomes),
            "dlq": dict(self.dlq),
            "rate": self.rate.state(),
            "tombstones": dict(self.tombstones),
            "dlq_keys": dict(self.dlq_keys),
            "newest_ts": self.newest_ts,
            "watermark": self.watermark.state(),
            "expired": self.expired,
            "signals": self.signals.state(),
            "segments": None if self.segments is None else self.segments.state(),
            "interests": None if self.interests is None else self.interests.state(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], dim: int, pp: ProfileParams, bp: BanditParams,
                  dedupe: int, rate_limit: int = 0, rate_window_ms: int = 1,
                  sp: SignalParams | None = None,
                  ttl_rank: int = DEFAULT_TTL_RANK,
                  ip: InterestParams | Literal["snapshot"] | None = "snapshot"
                  ) -> PartitionState:
        """The state of :meth:`to_dict`; a snapshot this version cannot read is a StateError.
        ``ip``: the multi-interest parameters (None: off; "snapshot": as written).
        A snapshot without ``signals`` (written before them) loads with empty signals; one
        without ``watermark`` (before issue 10) with an empty one: its ``newest_ts`` may have
        been moved by one future-dated event, so the TTL waits for ``ttl_rank`` new events."""
        if d.get("version") != SNAPSHOT_VERSION:
            raise StateError(f"snapshot version {d.get('version')} is not {SNAPSHOT_VERSION}: "
                             "run `profiles rebuild` to recompute the state with this version")
        try:
            st = cls(
                partition=int(d["partition"]),
                profiles=ProfileTable.from_state(d["profiles"], dim, pp),
                users=UserStats.from_state(d["users"], pp),
                arms=ArmStats.from_state(d["arms"], bp),
                dedupe=DedupeWindow.from_state(d["dedupe"], dedupe),
                next_offset=int(d["next_offset"]),
                parked=[Parked.from_tuple(p) for p in d["parked"]],
                park_clock=float(d.get("park_clock", 0.0)),
                outcomes=Counter(d["outcomes"]),
                dlq=Counter(d["dlq"]),
                model=str(d["model"]),
                rate=RateCap.from_state(d.get("rate", {}), rate_limit, rate_window_ms),
                tombstones=dict(d.get("tombstones", {})),
                dlq_keys=dict(d.get("dlq_keys", {})),
                newest_ts=int(d.get("newest_ts", 0)),
                watermark=EventTimeWatermark.from_state(d.get("watermark"), ttl_rank),
                expired=int(d.get("expired", 0)),
                signals=(Signals.from_state(d["signals"], sp) if "signals" in d
                         else Signals(sp)),
                segments=(Centroids.from_state(d["segments"])
                          if d.get("segments") is not None else None),
                interests=load_interests(d.get("interests"), dim, ip),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"snapshot of partition {d.get('partition')} cannot be read by this "
                             f"version ({type(exc).__name__}: {exc}): run `profiles rebuild`"
                             ) from exc
        st.users.share_ids(st.profiles)  # one string per user id, not one per table
        if st.interests is not None:
            st.interests.share_ids(st.profiles)
        return st
