"""Per-user event-rate cap in event time (bots, runaway clients).

Fixed windows of ``window_ms`` of *event* time, so replaying the same log limits the same
events whatever the replay speed.  A user may have at most ``limit`` events per window; the
rest are dead-lettered ``rate_limited``.  Only each user's newest window is tracked: an event
for an older window (late) is charged to that newest window, so back-dated events cannot
bypass the cap.  An event charged and later dead-lettered without effect (a parked event whose
item never came) is :meth:`RateCap.refund`-ed, so its replay is charged once.
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
        allowed, _charged, pending = self.decide(users, ts)
        return allowed, pending

    def decide(self, users: Sequence[str], ts: Sequence[int]
               ) -> tuple[list[bool], list[int | None], dict[str, tuple[int, int]]]:
        """:meth:`check`, with the window each allowed event is charged to (None: refused, or
        no cap): what :meth:`refund` needs."""
        if not self.enabled:
            return [True] * len(users), [None] * len(users), {}
        pending: dict[str, tuple[int, int]] = {}
        allowed: list[bool] = []
        charged: list[int | None] = []
        win_ms, limit, windows = self.window_ms, self.limit, self.windows
        for user, t in zip(users, ts):
            w = t // win_ms
            cur_w, n = pending.get(user) or windows.get(user) or (w, 0)
            if w > cur_w:
                cur_w, n = w, 0
            # w < cur_w (a late event): charged to the newest window, not let through free
            ok = n < limit
            allowed.append(ok)
            charged.append(cur_w if ok else None)
            pending[user] = (cur_w, n + 1 if ok else n)
        return allowed, charged, pending

    def commit(self, updates: dict[str, tuple[int, int]]) -> None:
        self.windows.update(updates)

    def refund(self, user: str, window: int | None) -> None:
        """Give back one event charged to ``window`` (see :meth:`decide`); nothing when that
        window has closed since (it limits nothing any more) or ``window`` is None."""
        cur = self.windows.get(user)
        if window is not None and cur is not None and cur[0] == window and cur[1] > 0:
            self.windows[user] = (window, cur[1] - 1)

    def forget(self, user: str) -> None:
        self.windows.pop(user, None)

    def state(self) -> dict[str, tuple[int, int]]:
        return dict(self.windows)

    @classmethod
    def from_state(cls, windows: dict[str, tuple[int, int]], limit: int, window_ms: int) -> RateCap:
        cap = cls(limit, window_ms)
        cap.windows = dict(windows)
        return cap
