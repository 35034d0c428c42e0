"""Per-partition state and its snapshots.

Everything the worker derives from one partition of the events topic lives in one
``PartitionState``: profiles, user stats, bandit partials, the dedupe window, parked events,
exactly-once outcome counters and ``next_offset`` — the first offset the state does *not*
cover.  A snapshot writes all of it atomically (temp file + rename), so state and offset can
never disagree: on assignment the worker loads the snapshot and seeks to ``next_offset``;
records below it that arrive anyway are skipped as redelivered.  That gives the exactly-once
effect without Kafka transactions (which Tansu lacks) and without trusting ``end_offsets``.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from stream.core.bandit import ArmStats, BanditParams
from stream.core.events import Event
from stream.core.profile import ProfileParams, ProfileTable, UserStats
from stream.core.ratelimit import RateCap
from stream.errors import StateError

SNAPSHOT_VERSION = 1

log = logging.getLogger(__name__)


class DedupeWindow:
    """The last ``capacity`` event ids seen, with O(1) membership."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: deque[str] = deque()
        self._set: set[str] = set()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._set

    def add(self, event_id: str) -> None:
        self._order.append(event_id)
        self._set.add(event_id)
        while len(self._order) > self.capacity:
            self._set.discard(self._order.popleft())

    def discard(self, event_id: str) -> None:
        """Forget an id (a dead-lettered event may come back through ``profiles dlq replay``)."""
        self._set.discard(event_id)

    def __len__(self) -> int:
        return len(self._order)

    def state(self) -> list[str]:
        if len(self._order) == len(self._set):  # nothing discarded: every id is live
            return list(self._order)
        return [i for i in self._order if i in self._set]

    @classmethod
    def from_state(cls, ids: list[str], capacity: int) -> DedupeWindow:
        w = cls(capacity)
        for i in ids[-capacity:]:
            w.add(i)
        return w


@dataclass
class Parked:
    """An event waiting for its item's vector (kept in state, so never lost)."""

    event: Event
    offset: int
    msg_ts: int
    parked_at: float  # wall clock (time.time) when parked
    raw: bytes


@dataclass
class PartitionState:
    partition: int
    profiles: ProfileTable
    users: UserStats
    arms: ArmStats
    dedupe: DedupeWindow
    next_offset: int = 0
    parked: list[Parked] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)  # (type, outcome) -> n
    dlq: Counter = field(default_factory=Counter)  # reason -> n
    model: str = ""  # encoder fingerprint the vectors were made with
    rate: RateCap = field(default_factory=lambda: RateCap(0, 1))
    tombstones: dict[str, int] = field(default_factory=dict)  # tombstone_key(user) -> forget ts
    dlq_keys: dict[str, list[bytes]] = field(default_factory=dict)  # user -> keys of their DLQ records
    newest_ts: int = 0  # newest event time applied (TTL is measured against it)
    expired: int = 0  # profiles removed by the TTL

    @classmethod
    def empty(cls, partition: int, dim: int, pp: ProfileParams, bp: BanditParams,
              dedupe: int, model: str, rate_limit: int = 0, rate_window_ms: int = 1) -> PartitionState:
        return cls(partition, ProfileTable(dim, pp), UserStats(pp), ArmStats(bp), DedupeWindow(dedupe),
                   model=model, rate=RateCap(rate_limit, rate_window_ms))

    def erase(self, user: str) -> None:
        """Remove every trace of ``user`` from this partition's state (not the tombstone)."""
        self.profiles.remove(user)
        self.users.remove(user)
        self.rate.forget(user)
        self.dlq_keys.pop(user, None)
        if any(pk.event.user_id == user for pk in self.parked):
            self.parked = [pk for pk in self.parked if pk.event.user_id != user]

    def to_dict(self) -> dict:
        return {
            "version": SNAPSHOT_VERSION,
            "partition": self.partition,
            "next_offset": self.next_offset,
            "model": self.model,
            "profiles": self.profiles.state(),
            "users": self.users.state(),
            "arms": self.arms.state(),
            "dedupe": self.dedupe.state(),
            "parked": [(p.event, p.offset, p.msg_ts, p.parked_at, p.raw) for p in self.parked],
            "outcomes": dict(self.outcomes),
            "dlq": dict(self.dlq),
            "rate": self.rate.state(),
            "tombstones": dict(self.tombstones),
            "dlq_keys": dict(self.dlq_keys),
            "newest_ts": self.newest_ts,
            "expired": self.expired,
        }

    @classmethod
    def from_dict(cls, d: dict, dim: int, pp: ProfileParams, bp: BanditParams, dedupe: int,
                  rate_limit: int = 0, rate_window_ms: int = 1) -> PartitionState:
        if d.get("version") != SNAPSHOT_VERSION:
            raise StateError(f"snapshot version {d.get('version')} is not {SNAPSHOT_VERSION}")
        return cls(
            partition=d["partition"],
            profiles=ProfileTable.from_state(d["profiles"], dim, pp),
            users=UserStats.from_state(d["users"], pp),
            arms=ArmStats.from_state(d["arms"], bp),
            dedupe=DedupeWindow.from_state(d["dedupe"], dedupe),
            next_offset=d["next_offset"],
            parked=[Parked(*p) for p in d["parked"]],
            outcomes=Counter(d["outcomes"]),
            dlq=Counter(d["dlq"]),
            model=d["model"],
            rate=RateCap.from_state(d.get("rate", {}), rate_limit, rate_window_ms),
            tombstones=dict(d.get("tombstones", {})),
            dlq_keys=dict(d.get("dlq_keys", {})),
            newest_ts=d.get("newest_ts", 0),
            expired=d.get("expired", 0),
        )


_MAGIC = b"PSNAP1"
_HEADER = len(_MAGIC) + 8


class SnapshotStore:
    """Snapshot files ``<dir>/<topic>-<partition>.snap``, written atomically.

    A file is ``PSNAP1`` + the 8-byte ``next_offset`` it covers + a pickle.  The header is a
    fence: with a shared state directory, a stalled former owner of a partition must not
    replace a newer snapshot written by the partition's new owner.
    """

    def __init__(self, directory: str | os.PathLike, topic: str) -> None:
        self.dir = Path(directory)
        self.topic = topic
        self._write_lock = threading.Lock()

    def path(self, partition: int | str) -> Path:
        return self.dir / f"{self.topic}-{partition}.snap"

    def model_path(self) -> Path:
        return self.dir / f"{self.topic}.model"

    def check_model(self, fingerprint: str) -> None:
        """Refuse a state directory whose snapshots were made by another encoder."""
        try:
            theirs = self.model_path().read_text().strip()
        except FileNotFoundError:
            return
        if theirs != fingerprint:
            raise StateError(
                f"state in {self.dir} holds vectors of model {theirs}, this worker's encoder is "
                f"{fingerprint}: run `profiles rebuild` for the new model, or point "
                "PROFILES_ENCODER_PATH at the model that made it")

    def mark_model(self, fingerprint: str) -> None:
        path = self.model_path()
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            path.write_text(fingerprint + "\n")

    def dumps(self, state: PartitionState) -> bytes:
        """Serialise on the event loop (the state must not change while this runs)."""
        return self.frame(pickle.dumps(state.to_dict(), protocol=pickle.HIGHEST_PROTOCOL),
                          state.next_offset)

    @staticmethod
    def frame(payload: bytes, next_offset: int = -1) -> bytes:
        return _MAGIC + next_offset.to_bytes(8, "big", signed=True) + payload

    def covered(self, partition: int | str) -> int | None:
        """The ``next_offset`` of the snapshot on disk (None when there is none)."""
        try:
            with open(self.path(partition), "rb") as f:
                head = f.read(_HEADER)
        except FileNotFoundError:
            return None
        if len(head) < _HEADER or not head.startswith(_MAGIC):
            return None
        return int.from_bytes(head[len(_MAGIC):], "big", signed=True)

    def write(self, partition: int | str, blob: bytes) -> bool:
        """Durable atomic replace (temp, fsync, rename, fsync the directory), unless the file
        on disk already covers more offsets; returns whether it was written.  Thread-safe: the
        check and the replace are one step (writes run on executor threads)."""
        with self._write_lock:
            return self._write(partition, blob)

    def _write(self, partition: int | str, blob: bytes) -> bool:
        mine = int.from_bytes(blob[len(_MAGIC):_HEADER], "big", signed=True)
        on_disk = self.covered(partition)
        if mine >= 0 and on_disk is not None and on_disk > mine:
            log.warning("snapshot %s covers offsets up to %d, beyond this worker's %d: not "
                        "overwritten (another worker owns the partition now)",
                        self.path(partition), on_disk, mine)
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{self.topic}-{partition}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(partition))
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return True

    def read(self, partition: int | str) -> dict | None:
        path = self.path(partition)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        if not blob.startswith(_MAGIC):
            raise StateError(f"snapshot {path} is not a profiles snapshot (bad header)")
        try:
            return pickle.loads(blob[_HEADER:])
        except Exception as exc:
            raise StateError(f"snapshot {path} is corrupt: {exc}") from exc
