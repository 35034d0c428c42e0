"""Row bookkeeping shared by the per-user tables (pure: stdlib + numpy).

:class:`UserRows` maps user ids to rows of contiguous arrays: names, the id -> row index, a
min-heap of released rows (reused first, so live data stays dense), capacity doubling, and the
per-row ``anchor`` (newest event time, ``NO_ANCHOR`` for a row without events) that the idle
scan reads.  A subclass owns its other per-row arrays through three hooks: :meth:`_resize`
(copy them into ``new_cap`` rows), :meth:`_clear` (zero a released row) and nothing else;
:class:`stream.core.profile.ProfileTable` and :class:`stream.core.interests.InterestTable`
are built on it.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["NO_ANCHOR", "UserRows", "checked_batch", "grown", "row_ints", "unique_ints"]

def unique_ints(a: Any) -> np.ndarray:
    """The sorted distinct values of an integer array (``np.unique(a)``), by one sort.

    numpy 2.3+ answers a plain ``np.unique`` from a hash table.  On this project's machine
    (numpy 2.4.6, one core, int64) that was 2x slower than sorting at 50 values, 12x at
    50,000 and 35x at 642,000 (0.61 s, a co-visitation table's load check): it sat on the
    batch path (co-visitation rows, the dedupe window's check) and the snapshot load."""
    s = np.sort(np.asarray(a).reshape(-1))
    if s.size < 2:
        return s
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


# Anchor of a row that has never received an event; never used in arithmetic.
NO_ANCHOR = np.iinfo(np.int64).min

# One int object per row number, shared by every table of every partition (profiles, user
# stats, interests): each table's id -> row dict held its own int object per user otherwise,
# 32 bytes a user a table (issue 12).  Grows in steps of _INT_STEP; ints are immutable.
_ROW_INTS: list[int] = []
_INT_STEP = 4096
_INT_LOCK = threading.Lock()


def row_ints(n: int) -> list[int]:
    """The shared int objects of rows ``[0, n)`` and at least those (a list to index)."""
    if n > len(_ROW_INTS):
        with _INT_LOCK:  # tables load on snapshot threads too: position i must hold i
            if n > len(_ROW_INTS):
                _ROW_INTS.extend(range(len(_ROW_INTS), n + _INT_STEP))
    return _ROW_INTS


def grown(old: np.ndarray, new_cap: int, fill: float | int = 0) -> np.ndarray:
    """``old`` with its first axis extended to ``new_cap`` rows of ``fill`` (same dtype).
    Zero fill comes from calloc: spare rows cost no resident memory until first written."""
    shape = (new_cap, *old.shape[1:])
    out = np.zeros(shape, dtype=old.dtype) if fill == 0 else np.full(shape, fill, dtype=old.dtype)
    out[: old.shape[0]] = old
    return out


def checked_batch(n: int, ts: np.ndarray, weights: np.ndarray, vectors: np.ndarray, dim: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of ``n`` events as ``(int64 ts [n], float64 weights [n], vectors [n, dim])``; a
    one-line ValueError when the shapes disagree or a weight or vector is not finite (a single
    NaN/inf would poison a user's state forever, so the whole batch is rejected up front)."""
    ts = np.asarray(ts).astype(np.int64, copy=False).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    vec = np.asarray(vectors)
    if ts.shape[0] != n or w.shape[0] != n or vec.shape != (n, dim):
        raise ValueError(
            f"batch shapes disagree: {n} users, ts {ts.shape}, weights {w.shape}, "
            f"vectors {vec.shape} (dim {dim})"
        )
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError("event weights must be finite and >= 0")
    if not np.isfinite(vec).all():
        raise ValueError("event vectors must be finite")
    return ts, w, vec


class UserRows:
    """Users -> rows: index, names, free-row heap, capacity doubling, anchors, idle scan."""

    def __init__(self, capacity: int) -> None:
        cap = max(1, int(capacity))
        self._anchor = np.full(cap, NO_ANCHOR, dtype=np.int64)
        self._index: dict[str, int] = {}
        self._names: list[str | None] = [None] * cap
        self._next = 0  # rows [0, _next) have been handed out at least once
        self._free: list[int] = []  # min-heap of released rows, reused first (keeps data dense)

    # -- hooks for the subclass's own per-row arrays ----------------------------------------
    def _resize(self, new_cap: int) -> None:
        """Extend the subclass's arrays to ``new_cap`` rows (zero-filled)."""

    def _clear(self, row: int) -> None:
        """Reset the subclass's arrays at a released ``row``."""

    # -- row management -------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = len(self._anchor)
        if need <= cap:
            return
        new_cap = cap
        while new_cap < need:
            new_cap *= 2
        self._anchor = grown(self._anchor, new_cap, NO_ANCHOR)
        self._resize(new_cap)
        self._names.extend([None] * (new_cap - cap))

    def _alloc(self, user: str) -> int:
        if self._free:
            row = heapq.heappop(self._free)
        else:
            row = row_ints(self._next + 1)[self._next]
            self._next += 1
            self._grow(self._next)
        self._index[user] = row
        self._names[row] = user
        return row

    def _rows(self, users: Sequence[str]) -> np.ndarray:
        """Row per event, allocating rows for new users (the only per-event Python work)."""
        index = self._index
        rows = np.fromiter((index.get(u, -1) for u in users), dtype=np.int64, count=len(users))
        for i in np.flatnonzero(rows < 0).tolist():  # new users; repeats resolve via the dict
            u = users[i]
            r = index.get(u)
            rows[i] = self._alloc(u) if r is None else r
        return rows

    def _live_rows(self) -> tuple[list[str], np.ndarray]:
        """Live users (in the order they were last added) and their rows, for ``state()``;
        only those of :meth:`state_of` while it runs."""
        only: list[str] | None = getattr(self, "_only", None)
        users = list(self._index) if only is None else [u for u in only if u in self._index]
        rows = np.fromiter((self._index[u] for u in users), dtype=np.int64, count=len(users))
        return users, rows

    def _load_rows(self, users: list[str], anchors: np.ndarray) -> None:
        """Fill rows ``[0, n)`` of a fresh table (capacity >= n) with ``users`` and anchors."""
        n = len(users)
        self._anchor[:n] = anchors
        self._names[:n] = users
        self._index = dict(zip(users, row_ints(n)))  # the shared row ints
        self._next = n

    def share_ids(self, other: UserRows) -> int:
        """Hold ``other``'s string object of each user id both tables know, instead of an equal
        copy: tables loaded from one snapshot each decode their own copy of every id (~50-60
        bytes per user per table).  The rows, their order and every answer stay the same.
        Returns how many ids are now shared."""
        theirs, names = other._index, other._names
        shared = 0
        index: dict[str, int] = {}
        for u, row in self._index.items():
            r = theirs.get(u)
            name = None if r is None else names[r]
            if name is not None:
                u = name
                shared += 1
            index[u] = row
            self._names[row] = u
        self._index = index
        return shared

    def state_of(self, users: Sequence[str]) -> dict[str, Any]:
        """``state()`` (the subclass's format) of only those of ``users`` that are live, in
        that order: an incremental snapshot's rows (``stream.worker.deltas``)."""
        self._only: list[str] | None = list(users)
        try:
            out: dict[str, Any] = getattr(self, "state")()  # noqa: B009 (the subclass's)
        finally:
            self._only = None
        return out

    def keys_newest_first(self) -> Iterator[str]:
        """Live users, the most recently added first (reversed ``users()``, lazily)."""
        return reversed(self._index)

    # -- public row API -------------------------------------------------------------------
    def remove(self, user: str) -> bool:
        """Forget a user and free its row for reuse; False when unknown."""
        row = self._index.pop(user, None)
        if row is None:
            return False
        self._names[row] = None
        self._anchor[row] = NO_ANCHOR
        self._clear(row)
        heapq.heappush(self._free, row)
        return True

    def idle(self, cutoff_ts: int) -> list[str]:
        """Users whose newest event (their anchor) is older than ``cutoff_ts`` (vectorised scan)."""
        live = self._anchor[: self._next]
        rows = np.flatnonzero((live != NO_ANCHOR) & (live < cutoff_ts))
        names = self._names
        return [name for r in rows.tolist() if (name := names[r]) is not None]

    def __contains__(self, user: object) -> bool:
        return user in self._index

    def __len__(self) -> int:
        return len(self._index)

    def users(self) -> list[str]:
        """Live users, in the order they were (last) added."""
        return list(self._index)
