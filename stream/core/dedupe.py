"""The dedupe window: the last ``capacity`` (user, event id) pairs a partition has seen (pure:
stdlib only).

Re-sent events (new offsets, same user and ``event_id``) are ``duplicate`` while their pair is
in the window; the same ``event_id`` of another user is a different event.  Each pair is held
as a 16-byte blake2b digest of the length-prefixed user and event id, so an entry costs the
same whatever the ids' length (``PROFILES_DEDUPE_WINDOW`` entries per partition).  The window
lives in the partition state and is snapshotted with it.

A snapshot written before the pairs holds a plain list of event ids, without users: those are
kept as *bare* ids, a duplicate for any user (what the code that wrote them did), until they
leave the window like any entry.  Dropping them instead could apply an event twice.
"""

from __future__ import annotations

from collections import deque
from hashlib import blake2b
from typing import Any

__all__ = ["DedupeWindow", "bare_key", "pair_key"]

_SIZE = 16


def pair_key(user: str, event_id: str) -> bytes:
    """The window's key of (user, event id): 16 bytes, unambiguous (the user is
    length-prefixed, so ("ab", "c") and ("a", "bc") differ)."""
    u = user.encode("utf-8", "surrogatepass")
    return blake2b(len(u).to_bytes(4, "big") + u + event_id.encode("utf-8", "surrogatepass"),
                   digest_size=_SIZE, person=b"profiles-pair").digest()


def bare_key(event_id: str) -> bytes:
    """The key of a bare event id from an old snapshot (another digest domain than pairs)."""
    return blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=_SIZE,
                   person=b"profiles-bare").digest()


class DedupeWindow:
    """The pairs of the last ``capacity`` adds, less those discarded since, with O(1)
    membership.

    Memory is bounded by ``capacity`` entries: a discarded pair keeps its slot (as *stale*)
    until it leaves, and a pair added again is counted from its newest add (its older entry
    turns stale and no longer evicts it).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: deque[bytes] = deque()  # every entry, oldest first
        self._live: set[bytes] = set()  # keys whose newest entry counts
        self._stale: dict[bytes, int] = {}  # key -> entries of it that no longer count
        self._bare: set[bytes] = set()  # live keys of bare ids (old snapshots; empties)

    def seen(self, user: str, event_id: str) -> bool:
        """Whether (user, event id) is in the window."""
        if pair_key(user, event_id) in self._live:
            return True
        return bool(self._bare) and bare_key(event_id) in self._bare

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def add(self, user: str, event_id: str) -> None:
        self._add(pair_key(user, event_id))

    def _add(self, key: bytes) -> None:
        if key in self._live:  # its older entry no longer counts
            self._stale[key] = self._stale.get(key, 0) + 1
        else:
            self._live.add(key)
        self._order.append(key)
        while len(self._order) > self.capacity:
            self._evict(self._order.popleft())

    def _evict(self, key: bytes) -> None:
        n = self._stale.get(key)
        if n:  # the oldest entry of a key with stale entries is one of them
            if n == 1:
                del self._stale[key]
            else:
                self._stale[key] = n - 1
            return
        self._live.discard(key)
        if self._bare:
            self._bare.discard(key)

    def discard(self, user: str, event_id: str) -> None:
        """Forget a pair (a dead-lettered event may come back through ``profiles dlq replay``),
        and its bare id if an old snapshot holds it."""
        keys = [pair_key(user, event_id)]
        if self._bare:
            keys.append(bare_key(event_id))
        for key in keys:
            if key in self._live:
                self._live.remove(key)
                self._bare.discard(key)
                self._stale[key] = self._stale.get(key, 0) + 1

    def __len__(self) -> int:
        return len(self._order)

    def state(self) -> dict[str, Any]:
        """Plain data: the entries' keys concatenated (16 bytes each, oldest first), the stale
        counts and the bare keys still live."""
        out: dict[str, Any] = {"keys": b"".join(self._order)}
        if self._stale:
            out["stale"] = dict(self._stale)
        if self._bare:
            out["bare"] = b"".join(sorted(self._bare))
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any] | list[str], capacity: int) -> DedupeWindow:
        """The window of :meth:`state`; a list is an old snapshot's event ids (kept bare)."""
        w = cls(capacity)
        if isinstance(state, list):
            for event_id in state[-capacity:] if capacity else ():
                key = bare_key(str(event_id))
                w._add(key)
                w._bare.add(key)
            return w
        blob = bytes(state["keys"])
        if len(blob) % _SIZE:
            raise ValueError(f"dedupe keys are {len(blob)} bytes, not a multiple of {_SIZE}")
        keys = [blob[i:i + _SIZE] for i in range(0, len(blob), _SIZE)]
        stale = {bytes(k): int(n) for k, n in dict(state.get("stale") or {}).items() if n > 0}
        w._order = deque(keys)
        w._live = set(keys)
        if stale:  # a key is live unless all its entries are stale
            count: dict[bytes, int] = dict.fromkeys(stale, 0)
            for k in keys:
                if k in count:
                    count[k] += 1
            for k, n in count.items():
                stale[k] = min(stale[k], n)
                if n <= stale[k]:
                    w._live.discard(k)
            stale = {k: n for k, n in stale.items() if n > 0}
        w._stale = stale
        bare = bytes(state.get("bare") or b"")
        w._bare = {bare[i:i + _SIZE] for i in range(0, len(bare), _SIZE)} & w._live
        while len(w._order) > capacity:  # the window was made smaller
            w._evict(w._order.popleft())
        return w
