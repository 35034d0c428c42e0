"""``RecentItems.from_state`` packs the records of a loaded table in array steps; the oracle is
the one-user-at-a-time load it replaced (sort each user's events, reference each item, pack one
record).  Same events, same reference counts, same ``state()``; for a table written by
``state()`` (each user's events in order) the same bytes too."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as hst

from stream.core.signal_params import SignalParams
from stream.core.signals import _NARROW, RecentItems

P = SignalParams()
T0 = 1_700_000_000_000


def _one_by_one(state: dict[str, Any]) -> RecentItems:
    """The load before: per user, sorted (ts, item, weight), referenced, packed."""
    out = RecentItems(P)
    ts, items, ws = list(state["ts"]), list(state["items"]), list(state["weights"])
    pos = 0
    for u, n in zip(state["users"], state["lengths"]):
        kept = sorted(zip(ts[pos:pos + n], items[pos:pos + n], ws[pos:pos + n]))
        for e in kept:
            out._ref(e[1])
        out._ev[u] = out._encode(kept)
        pos += n
    return out


def _refs(r: RecentItems) -> dict[str, int]:
    return {it: r._refs[c] for it, c in r._codes.items()}


def _check(state: dict[str, Any], same_bytes: bool) -> None:
    got, want = RecentItems.from_state(state, P), _one_by_one(state)
    assert list(got._ev) == list(want._ev)
    for u in want._ev:
        assert got._decode(got._ev[u]) == want._decode(want._ev[u]), u
    assert _refs(got) == _refs(want) and got.interned() == want.interned()
    a, b = got.state(), want.state()
    assert a["users"] == b["users"] and a["items"] == b["items"]
    for k in ("lengths", "ts", "weights"):
        assert np.array_equal(a[k], b[k]), k
    if same_bytes:
        assert got._ev == want._ev


user_events = hst.lists(hst.tuples(hst.integers(0, 50) | hst.integers(0, 2**40),
                                   hst.sampled_from(["a", "b", "c", "dé", "e"]),
                                   hst.sampled_from([0.5, 1.0, 2.0, 3.25])), max_size=6)


def _state(users: list[list[tuple[int, str, float]]], ordered: bool) -> dict[str, Any]:
    lengths, ts, items, ws = [], [], [], []
    for evs in users:
        evs = sorted(evs) if ordered else evs
        lengths.append(len(evs))
        for t, it, w in evs:
            ts.append(T0 + t)
            items.append(it)
            ws.append(w)
    return {"users": [f"u{i}" for i in range(len(users))],
            "lengths": np.array(lengths, dtype=np.int64), "ts": np.array(ts, dtype=np.int64),
            "items": items, "weights": np.array(ws, dtype=np.float64)}


@settings(derandomize=True, max_examples=200, deadline=None)
@given(hst.lists(user_events, max_size=8), hst.booleans())
def test_the_load_equals_the_one_by_one_load(users: list[Any], ordered: bool) -> None:
    _check(_state(users, ordered), same_bytes=ordered)


def test_a_table_written_by_state_loads_to_the_same_bytes() -> None:
    rng = np.random.default_rng(3)
    r = RecentItems(P)
    n = 3000
    r.apply([f"u{i}" for i in rng.integers(0, 400, n)], [f"i{i}" for i in rng.integers(0, 90, n)],
            T0 + np.sort(rng.integers(0, 10**6, n)), rng.choice([1.0, 2.0, 4.0], n))
    state = r.state()
    _check(state, same_bytes=True)
    got = RecentItems.from_state(state, P)
    assert {u: got._decode(v) for u, v in got._ev.items()} == {
        u: r._decode(v) for u, v in r._ev.items()}


def test_wide_spans_ties_and_empty_users() -> None:
    users = [[], [(0, "b", 1.0), (0, "a", 2.0), (0, "a", 1.0)], [(0, "a", 1.0), (_NARROW + 5, "b", 1.0)],
             [(7, "c", 1.0)], []]
    for ordered in (False, True):
        _check(_state(users, ordered), same_bytes=ordered)
    _check(_state([], True), same_bytes=True)
