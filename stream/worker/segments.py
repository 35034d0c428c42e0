"""Customer segments across workers: the shell around :mod:`stream.core.segments`.

Every worker agrees on the centroids of a version; how (README, "Segments"):

- **statistics, replaced never added**: each worker computes, for every partition it owns, the
  :class:`~stream.core.segments.SegmentStats` of that partition's users under the adopted
  version (member counts, sums of unit profiles, category weights) and publishes them on the
  signals topic keyed ``seg:p:<partition>``.  Compaction keeps the last; a re-published
  partial (a retry, a restart's replay, a new owner) *replaces* the old one, so nothing is ever
  counted twice.  Statistics are recomputed from the partition state, never accumulated.
- **versions, computed by the leader, adopted by all**: the worker owning partition 0 computes
  version ``v + 1 = next_version(v, merge(statistics of v of every partition, in partition
  order))`` once every partition's statistics of version ``v`` are in (or, when one stays
  missing, ``3 x PROFILES_SEGMENTS_EVERY_S`` after ``v`` was adopted, from those that are) and
  no earlier than ``PROFILES_SEGMENTS_EVERY_S`` after ``v``.  It publishes the version under
  ``seg:v``.  Every worker adopts a version with a higher number than its own (equal numbers:
  the smaller digest), from the topic or a partition snapshot.  The function is deterministic,
  so two leaders during a rebalance that see the same statistics publish the same version.
  Version 1 is seeded by k-means++ over the item catalogue's vectors (every worker holds the
  same catalogue), in item-id order, from ``PROFILES_SEED``.
- **snapshotted**: each partition state carries the version it was counted under
  (``PartitionState.segments``), so a restarted worker has centroids before it has read the
  topic.
- **per user**: a segment is not stored per user; it is the nearest centroid of the user's
  profile, so forget and the TTL erase membership with the profile.

With ``PROFILES_BANDIT_CONTEXT=segment`` each event's arm is also counted under
``context_arm(arm, segment)``, the segment of its user as of before its batch (a user's first
batch counts only globally); ``/candidates`` re-ranks with the posteriors of the user's segment,
summed over every worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from stream.core.segments import (
    Centroids,
    SegmentStats,
    merge_stats,
    next_version,
    seed_centroids,
)
from stream.settings import Settings
from stream.worker.catalog import ItemCatalog
from stream.worker.metrics import Metrics
from stream.worker.profiles import ProfileStore
from stream.worker.records import Record
from stream.worker.state import PartitionState

__all__ = ["PREFIX", "SEED_POINTS", "VERSION_KEY", "Segments", "stats_key"]

log = logging.getLogger(__name__)

PREFIX = b"seg:"
VERSION_KEY = b"seg:v"
#: items (the first, in id order) k-means++ seeds version 1 from
SEED_POINTS = 20_000
#: users whose statistics are computed at a time (bounds the float copies of their profiles)
STATS_CHUNK = 8192


def stats_key(partition: int) -> bytes:
    return b"seg:p:%d" % partition


def encode_version(model: Centroids) -> tuple[bytes, bytes]:
    """float32 centroids written as floats read back exactly."""
    return VERSION_KEY, orjson.dumps({"version": model.version,
                                      "centroids": model.centroids.tolist(),
                                      "counts": model.counts.tolist()})


class Segments:
    """This worker's adopted version, the other partitions' statistics, and the leader's step."""

    def __init__(self, settings: Settings, dim: int, profiles: ProfileStore,
                 catalog: ItemCatalog, metrics: Metrics, monotonic: Callable[[], float]) -> None:
        self.k = settings.segments_k
        self.every_s = settings.segments_every_s
        self.seed = settings.seed
        self.partitions = settings.partitions
        self.dim = dim
        self.profiles = profiles
        self.catalog = catalog
        self.metrics = metrics
        self.monotonic = monotonic
        self.model: Centroids | None = None
        self.adopted_at = 0.0  # monotonic time the current version was adopted
        self.received: dict[int, SegmentStats] = {}  # other workers' partitions (replaced)
        self.rejected = 0
        self.computed = 0  # versions this worker computed
        self._stats_due = False  # a new version: publish our statistics under it at once
        self._last_stats: float | None = None
        self._unsent: dict[bytes, bytes] = {}  # a failed send: sent again (latest per key)
        self._own: dict[int, SegmentStats] = {}  # owned partitions' statistics, last published

    @property
    def enabled(self) -> bool:
        return self.k > 0

    def leader(self) -> bool:
        """Whether this worker computes new versions: it owns partition 0."""
        return 0 in self.profiles.states

    # -- versions ------------------------------------------------------------------------
    def adopt(self, model: Centroids) -> bool:
        """Take ``model`` if it is newer than ours (equal version: the smaller digest)."""
        if not self.enabled or model.k != self.k or model.dim != self.dim:
            return False
        cur = self.model
        if cur is not None and (model.version < cur.version or (
                model.version == cur.version and model.digest() >= cur.digest())):
            return False
        self.model = model
        self.adopted_at = self.monotonic()
        self._stats_due = True
        for st in self.profiles.partitions():
            st.segments = model
        return True

    def loaded(self, st: PartitionState) -> None:
        """A partition was loaded: its snapshot's version if newer, then ours."""
        if not self.enabled:
            st.segments = None
            return
        if st.segments is not None:
            self.adopt(st.segments)
        st.segments = self.model
        self.received.pop(st.partition, None)

    # -- per user ------------------------------------------------------------------------
    def segment_of(self, user: str) -> int | None:
        """The user's segment (None: off, no version yet, or no profile here)."""
        if self.model is None:
            return None
        st = self.profiles.owner(user)
        if st is None:
            return None
        seg = int(self.model.assign(st.profiles.vectors([user]))[0])
        return seg if seg >= 0 else None

    def contexts(self, st: PartitionState, users: Sequence[str]) -> list[int | None]:
        """The bandit context of events of ``users``: each one's segment now (before their
        batch is applied); None for a user without a profile yet."""
        if self.model is None or not users:
            return [None] * len(users)
        seg = self.model.assign(st.profiles.vectors(users)).tolist()
        return [s if s >= 0 and u in st.profiles else None for s, u in zip(seg, users)]

    # -- statistics ----------------------------------------------------------------------
    def partition_stats(self, st: PartitionState, model: Centroids | None = None
                        ) -> SegmentStats:
        """The partition's statistics under ``model`` (default: the adopted version), users in
        id order, ``STATS_CHUNK`` at a time (summed in that order: deterministic)."""
        model = model if model is not None else self.model
        assert model is not None
        users = sorted(st.profiles.users())
        parts = [SegmentStats.of(st.profiles.vectors(chunk), model,
                                 [st.users.categories(u) for u in chunk])
                 for chunk in (users[i:i + STATS_CHUNK] for i in range(0, len(users), STATS_CHUNK))]
        if len(parts) == 1:
            return parts[0]
        return merge_stats(parts, self.k, self.dim, model.version)

    def merged(self, version: int | None, own: dict[int, SegmentStats] | None = None
               ) -> tuple[SegmentStats, int]:
        """The owned partitions' statistics (``own``; default: computed now) and the others'
        latest, in partition order; ``version``: only those of it.  Returns the sum and how
        many partitions it covers."""
        parts = dict(self.received)
        if own is None:
            own = self.compute()
        parts.update((p, sv) for p, sv in own.items() if p in self.profiles.states)
        chosen = [parts[p] for p in sorted(parts) if version is None or parts[p].version == version]
        return merge_stats(chosen, self.k, self.dim, version), len(chosen)

    # -- the timer -----------------------------------------------------------------------
    def tick(self) -> list[tuple[bytes, bytes]]:
        """:meth:`start_tick`, :meth:`compute` and :meth:`finish_tick` in one call (the
        pipeline computes off the event loop instead)."""
        return self.finish_tick(self.compute() if self.start_tick() else None)

    def start_tick(self) -> bool:
        """With each signals publish, on the event loop: seed version 1 when this worker leads
        and there is none; whether this worker's statistics are due (a new version, or
        ``every_s`` since the last)."""
        if not self.enabled:
            return False
        if self.model is None and self.leader():
            seeded = self.seed_version()
            if seeded is not None and self.adopt(seeded):
                self.computed += 1
                self._unsent[VERSION_KEY] = encode_version(seeded)[1]
        if self.model is None:
            return False
        return (self._stats_due or self._last_stats is None
                or self.monotonic() - self._last_stats >= self.every_s)

    def compute(self) -> dict[int, SegmentStats]:
        """Every owned partition's statistics under the adopted version (reads the state only:
        the pipeline runs it on an executor thread while it holds its lock)."""
        model = self.model
        if model is None:
            return {}
        return {st.partition: self.partition_stats(st, model) for st in self.profiles.partitions()}

    def finish_tick(self, own: dict[int, SegmentStats] | None) -> list[tuple[bytes, bytes]]:
        """The messages to send: what a failed send left, version 1, the statistics ``own``
        (when computed), and a new version when this worker leads and one is due."""
        if not self.enabled:
            return []
        msgs: list[tuple[bytes, bytes]] = list(self._unsent.items())
        self._unsent.clear()
        if own is not None:
            self._own = own
            self._last_stats = self.monotonic()
            if self.model is None or all(sv.version == self.model.version for sv in own.values()):
                self._stats_due = False  # else adopted meanwhile: due again
            sizes = np.zeros(self.k)
            for p in sorted(own):
                sizes += own[p].counts
                msgs.append((stats_key(p), orjson.dumps(own[p].state())))
            for j in range(self.k):
                self.metrics.segment_users.labels(str(j)).set(float(sizes[j]))
        if self.leader() and self.model is not None:
            new = self.due_version(self.monotonic())
            if new is not None and self.adopt(new):
                self.computed += 1
                msgs.append(encode_version(new))
        return msgs

    def requeue(self, msgs: list[tuple[bytes, bytes]]) -> None:
        """Sending these failed: send them with the next tick (unless replaced by then)."""
        for key, value in msgs:
            self._unsent.setdefault(key, value)

    def seed_version(self) -> Centroids | None:
        """Version 1 from the catalogue (None while it is empty or not caught up)."""
        if not self.catalog.caught_up.is_set() or not self.catalog.items:
            return None
        ids = sorted(self.catalog.items)[:SEED_POINTS]
        vecs, missing = self.catalog.vectors(ids)
        keep = np.ones(len(ids), dtype=bool)
        keep[missing] = False
        return seed_centroids(vecs[keep], self.k, self.seed)

    def due_version(self, now: float) -> Centroids | None:
        """The next version, when it is due: ``every_s`` after the current one, with the
        statistics of every partition (or ``3 x every_s`` after, with those there are)."""
        assert self.model is not None
        waited = now - self.adopted_at
        if waited < self.every_s:
            return None
        merged, n = self.merged(self.model.version, self._own)  # as last published
        if n < self.partitions and waited < 3 * self.every_s:
            return None
        if n == 0 or not merged.counts.sum():
            return None
        return next_version(self.model, merged)

    # -- the topic -----------------------------------------------------------------------
    def receive(self, record: Record) -> None:
        """One ``seg:`` record of the signals topic."""
        try:
            if record.value is None:
                return
            d = orjson.loads(record.value)
            if record.key == VERSION_KEY:
                self.adopt(Centroids.from_state(d))
                return
            key = record.key or b""
            if not key.startswith(b"seg:p:"):
                raise ValueError(f"unknown key {key!r}")
            partition = int(key[6:])
            if partition in self.profiles.states:
                return  # ours: the local state is newer
            self.received[partition] = SegmentStats.from_state(d, self.k, self.dim)
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
            self.rejected += 1
            log.debug("segments: record %r rejected (%s)", record.key, exc)

    # -- answers -------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """``GET /segments``: the version, and per segment its size and top categories over
        every partition whose statistics this worker holds (its own fresh, the others' as
        last published)."""
        if self.model is None:
            return {"version": 0, "k": self.k, "partitions": 0, "segments": []}
        merged, n = self.merged(None)
        return {"version": self.model.version, "k": self.k, "partitions": n,
                "segments": [{"segment": j, "size": int(merged.counts[j]),
                              "top_categories": [[c, w] for c, w in
                                                 list(merged.categories[j].items())[:5]]}
                             for j in range(self.k)]}
