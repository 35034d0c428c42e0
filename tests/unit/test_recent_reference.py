"""RecentItems (stream.core.signals) against a plain-Python reference of its rules, pair for
pair and in order: the per-event fast path on the packed record (one event of a user in a
batch, newer than all kept) and the general path must both make exactly the reference's pairs,
keep exactly its events and write the same ``state()``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.signals import RecentItems, SignalParams

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000
DAY = 86_400_000
Ev = tuple[int, str, float]
Pair = tuple[str, str, int, float, float]


def _between(kept: list[Ev], lo: int, hi: int) -> int:
    return sum(1 for e in kept if lo < e[0] < hi)


class Reference:
    """The rules, literally: per tie group (one user, one ts; a user's batch events in stable
    ts order), pair with the kept events (newest first when the group is not older than every
    kept event, else oldest first on either side), then within the group, keep it, and drop
    the events with >= recent_n events strictly between them and the newest, then the oldest
    beyond recent_cap."""

    def __init__(self, p: SignalParams) -> None:
        self.p = p
        self.kept: dict[str, list[Ev]] = {}

    def apply(self, batch: list[tuple[str, str, int, float]]) -> list[Pair]:
        p = self.p
        out: list[Pair] = []
        by_user: dict[str, list[Ev]] = {}
        for u, it, t, w in batch:
            by_user.setdefault(u, []).append((t, it, w))
        for u, evs in by_user.items():
            evs = sorted(evs, key=lambda e: e[0])
            kept = self.kept.setdefault(u, [])
            groups: list[list[Ev]] = []
            for e in evs:
                if groups and groups[-1][0][0] == e[0]:
                    groups[-1].append(e)
                else:
                    groups.append([e])
            for g in groups:
                t = g[0][0]

                normal = not kept or t >= kept[-1][0]
                for s, a, wa in (reversed(kept) if normal else kept):
                    lo, hi = min(s, t), max(s, t)
                    if hi - lo > p.covis_window_ms or _between(kept, lo, hi) >= p.recent_n:
                        continue
                    f = 1.0 if s == t else p.covis_backward
                    for _, b, wb in g:
                        if a != b:
                            x = math.sqrt(wa * wb)
                            out.append((a, b, hi, x, x * f) if s <= t else (b, a, hi, x, x * f))
                for i in range(len(g)):
                    for j in range(i + 1, len(g)):
                        if g[i][1] != g[j][1]:
                            x = math.sqrt(g[i][2] * g[j][2])
                            out.append((g[i][1], g[j][1], t, x, x))
                kept.extend(g)
                kept.sort()
                top = kept[-1][0]
                kept[:] = [e for e in kept if _between(kept, e[0], top) < p.recent_n]
                del kept[:max(0, len(kept) - p.recent_cap)]
        return out


# per user: steps after the previous event (0: a tie; big ones: past the window, past an int32
# offset), a few late ones (negative), items from a small pool (repeats), a few weights
step = st.sampled_from([0, 0, 1, 7, 3_600_000, DAY, DAY + 1, 30 * DAY, -5, -3_600_000])
batches_st = st.lists(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), step,
                       st.sampled_from([1.0, 0.5, 2.0, 3.0])), min_size=1, max_size=6),
    min_size=1, max_size=12)


@pytest.mark.parametrize("n,cap,back", [(3, 0, 0.5), (2, 3, 1.0), (20, 0, 0.0), (1, 1, 0.25)])
@settings(derandomize=True, deadline=None, max_examples=120)
@given(batches=batches_st)
def test_recent_items_equal_the_reference(n: int, cap: int, back: float,
                                          batches: list[list[tuple[int, int, int, float]]]
                                          ) -> None:
    p = SignalParams(recent_n=n, recent_cap=cap, covis_backward=back, covis_window_ms=DAY)
    got, ref = RecentItems(p), Reference(p)
    clock = {u: T0 for u in range(4)}
    for raw in batches:
        batch = []
        for u, i, d, w in raw:
            clock[u] = max(T0, clock[u] + d)
            batch.append((f"u{u}", f"i{i}", clock[u], w))
        pairs = got.apply([b[0] for b in batch], [b[1] for b in batch],
                          np.array([b[2] for b in batch], dtype=np.int64),
                          np.array([b[3] for b in batch]))
        assert list(zip(*pairs)) == ref.apply(batch)
        for u, kept in ref.kept.items():
            assert got.get(u, len(kept) + 1) == kept
        assert got.interned() == len({e[1] for kept in ref.kept.values() for e in kept})
    state = got.state()
    users = list(ref.kept)
    assert state["users"] == users
    flat = [e for u in users for e in ref.kept[u]]
    assert state["lengths"].dtype == np.int64 and state["ts"].dtype == np.int64
    assert state["weights"].dtype == np.float64
    assert state["lengths"].tolist() == [len(ref.kept[u]) for u in users]
    assert state["ts"].tolist() == [e[0] for e in flat]
    assert state["items"] == [e[1] for e in flat]
    assert state["weights"].tolist() == [e[2] for e in flat]
    again = RecentItems.from_state(state, p)
    assert {u: again.get(u, 1000) for u in users} == {u: got.get(u, 1000) for u in users}


def test_state_of_no_user_and_of_some() -> None:
    r = RecentItems(SignalParams())
    empty = r.state()
    assert empty["users"] == [] and empty["ts"].dtype == np.int64 and len(empty["ts"]) == 0
    r.apply(["a", "b", "a"], ["x", "y", "z"], np.array([T0, T0, T0 + 1]), np.array([1.0] * 3))
    s = r.state(only=["b", "nobody", "a"])
    assert s["users"] == ["b", "a"] and s["lengths"].tolist() == [1, 2]
    assert s["ts"].tolist() == [T0, T0, T0 + 1] and s["items"] == ["y", "x", "z"]
