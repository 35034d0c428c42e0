"""The dedupe window: the last ``capacity`` event ids a partition has seen (pure: stdlib only).

Re-sent events (new offsets, same ``event_id``) are ``duplicate`` while their id is in the
window.  The window lives in the partition state and is snapshotted with it.
"""

from __future__ import annotations

from collections import deque

__all__ = ["DedupeWindow"]


class DedupeWindow:
    """The last ``capacity`` event ids seen, with O(1) membership."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: deque[str] = deque()
        self._set: set[str] = set()

    def __contains__(self, event_id: object) -> bool:
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
