"""Per-user event-rate cap in event time (bots, runaway clients).

Fixed windows of ``window_ms`` of *event* time, so replaying the same log limits the same
events whatever the replay speed.  A user may have at most ``limit`` events per window; the
rest are dead-lettered ``rate_limited``.  Only each user's newest window is tracked: an event
for an older window (late) is let through rather than held against a window long closed.
Pure: no Kafka, no clocks.
"""

from __future__ import annotations

from collections.abc import Sequence


class RateCap:
    def __init__(self, limit: int, window_ms: int) -> None:
        if limit < 0 or window_ms < 1:
            raise ValueError(f"need limit >= 0 and window_ms >= 1, got {limit}, {window_ms}")
        self.limit = limit
        self.window_ms = window_ms
        self.windows: dict[str, tuple[int, int]] = {}  # user -> (window, events counted)

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def check(self, users: Sequence[str], ts: Sequence[int]) -> tuple[list[bool], dict[str, tuple[int, int]]]:
        """Decide a batch without changing state: (allowed per event, updates to ``commit``)."""
        if not self.enabled:
            return [True] * len(users), {}
        pending: dict[str, tuple[int, int]] = {}
        allowed = []
        win_ms, limit, windows = self.window_ms, self.limit, self.windows
        for user, t in zip(users, ts):
            w = t // win_ms
            cur_w, n = pending.get(user) or windows.get(user) or (w, 0)
            if w > cur_w:
                cur_w, n = w, 0
            elif w < cur_w:
                allowed.append(True)  # late event for a closed window
                continue
            ok = n < limit
            allowed.append(ok)
            pending[user] = (cur_w, n + 1 if ok else n)
        return allowed, pending

    def commit(self, updates: dict[str, tuple[int, int]]) -> None:
        self.windows.update(updates)

    def forget(self, user: str) -> None:
        self.windows.pop(user, None)

    def state(self) -> dict[str, tuple[int, int]]:
        return dict(self.windows)

    @classmethod
    def from_state(cls, windows: dict[str, tuple[int, int]], limit: int, window_ms: int) -> RateCap:
        cap = cls(limit, window_ms)
        cap.windows = dict(windows)
        return cap
