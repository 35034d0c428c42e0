"""Recent items per user, compact (issue 12, per-user memory): one packed record per user
(int32 ts offsets, int32 codes into an interned item table, float64 weights) instead of a list
of (ts, item, weight) tuples; the interned table holds exactly the items of the kept events."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.signals import RecentItems, SignalParams

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000
DAY = 86_400_000


def _feed(r: RecentItems, events: list[tuple[str, str, int, float]], batch: int) -> None:
    for i in range(0, len(events), batch):
        part = events[i:i + batch]
        r.apply([e[0] for e in part], [e[1] for e in part], [e[2] for e in part],
                [e[3] for e in part])


def test_a_user_of_20_events_takes_a_329_byte_record() -> None:
    p = SignalParams(recent_n=20)
    r = RecentItems(p)
    evs = [("u", f"item-{i:04d}", T0 + i * 60_000, 1.0 + (i % 3)) for i in range(20)]
    _feed(r, evs, 7)
    assert r.get("u", 100) == [(t, it, w) for _, it, t, w in evs]  # exact, newest last
    assert r.record_bytes("u") == 9 + 20 * (4 + 4 + 8) == 329
    # events more than 24.8 days apart: int64 offsets, still exact
    far = [("v", "x", T0 - 40 * DAY, 0.5), ("v", "y", T0 + 3, 2.0), ("v", "z", T0 + 2**40, 1.0)]
    _feed(r, far, 1)
    assert r.get("v") == [(t, it, w) for _, it, t, w in far]
    assert r.record_bytes("v") == 9 + 3 * (8 + 4 + 8)
    assert r.record_bytes("nobody") == 0


def test_the_interned_items_are_exactly_those_of_the_kept_events() -> None:
    """Churn (events falling out of the window, forgets, users coming back): the table never
    keeps an item no kept event names, and a state round trip rebuilds the same records."""
    p = SignalParams(recent_n=3)
    rng = np.random.default_rng(4)
    r = RecentItems(p)
    for step in range(30):
        n = 60
        evs = [(f"u{int(rng.integers(25))}", f"i{int(rng.integers(400))}",
                T0 + step * 1_000 + int(rng.integers(0, 50)), float(rng.integers(1, 4)))
               for _ in range(n)]
        _feed(r, evs, 17)
        for u in [f"u{int(x)}" for x in rng.integers(0, 25, 3)]:
            r.remove(u)
        kept = {u: r.get(u, 10**6) for u in r.users()}
        names = {it for evs_u in kept.values() for _, it, _ in evs_u}
        assert r.interned() == len(names)
        assert len(r._items) - len(r._free) == len(names)  # no leaked codes
    again = RecentItems.from_state(r.state(), p)
    assert again.users() == r.users()
    assert all(again.get(u, 10**6) == r.get(u, 10**6) for u in r.users())
    assert again.interned() == r.interned()
