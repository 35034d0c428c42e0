"""The rows a snapshot capture copies under the pipeline's lock (stop 21, C3: vectorised): a
delta's row split (``deltas._split``), user stats' ``state()`` / ``state(only=...)`` and
co-visitation's ``state()``, each against an oracle written out here, one key at a time."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.profile import UserStats
from stream.core.signals import CoVisitation, SignalParams
from stream.worker.deltas import _split
from tests.unit.test_user_stats_columnar import PARAMS, TYPES, DictOracle, feed

pytestmark = pytest.mark.unit


def _split_oracle(order: list[str], changed: set[str]) -> tuple[list[str], list[str], int]:
    """The definition: the longest run of changed keys at the table's newest end (in table
    order) goes to the end; the other changed keys still there are replaced in place (sorted);
    changed keys no longer there are removed (sorted)."""
    n = 0
    while n < len(order) and order[len(order) - 1 - n] in changed:
        n += 1
    tail = order[len(order) - n:]
    present = sorted(k for k in changed if k in order and k not in tail)
    removed = sorted(k for k in changed if k not in order)
    return present + tail, removed, n


@settings(derandomize=True, deadline=None, max_examples=200)
@given(keys=st.lists(st.integers(0, 30), unique=True, max_size=20),
       changed=st.sets(st.integers(0, 40), max_size=25), tail_changed=st.integers(0, 20))
def test_the_row_split_is_the_definition(keys, changed, tail_changed):
    table = {f"k{k}": k for k in keys}
    order = list(table)
    ch = {f"k{k}" for k in changed} | set(order[len(order) - tail_changed:])
    assert _split(reversed(table), table.__contains__, ch) == _split_oracle(order, ch)


def _stats_state_oracle(o: DictOracle, users: list[str]) -> dict[str, list]:
    rows = [o.users[u] for u in users if u in o.users]
    return {"users": [u for u in users if u in o.users],
            "events": [r["events"] for r in rows], "last_ts": [r["last"] for r in rows],
            "categories": [dict(r["cats"]) for r in rows],
            "purchased": [list(r["bought"]) for r in rows]}


op = st.tuples(st.integers(0, 7), st.sampled_from(TYPES), st.integers(-50, 50),
               st.one_of(st.none(), st.integers(0, 9)), st.one_of(st.none(), st.integers(0, 6)))


@settings(derandomize=True, deadline=None, max_examples=80)
@given(batches=st.lists(st.lists(op, max_size=25), max_size=8),
       removes=st.lists(st.integers(0, 7), max_size=8),
       only=st.lists(st.integers(0, 9), unique=True, max_size=10))
def test_user_stats_state_is_every_row_of_the_oracle(batches, removes, only):
    """Categories beyond the slots (10 of them, 4 slots), purchases at their bound, rows
    freed and reused, users added again after a remove (to the end of the order)."""
    UserStats.MAX_PURCHASED, saved = 3, UserStats.MAX_PURCHASED
    try:
        s, o = UserStats(PARAMS, capacity=1), DictOracle(PARAMS, 3)
        for b, batch in enumerate(batches):
            feed(s, o, batch)
            if b < len(removes):
                u = f"u{removes[b]}"
                s.remove(u)
                o.users.pop(u, None)
            got = s.state()
            want = _stats_state_oracle(o, list(o.users))
            assert got == want
            # category order too (dict equality ignores it)
            assert [list(c.items()) for c in got["categories"]] == [
                list(c.items()) for c in want["categories"]]
            pick = [f"u{k}" for k in only]  # some unknown (u8, u9): skipped
            got = s.state(only=pick)
            want = _stats_state_oracle(o, pick)
            assert got == want
            assert [list(c.items()) for c in got["categories"]] == [
                list(c.items()) for c in want["categories"]]
    finally:
        UserStats.MAX_PURCHASED = saved


def test_user_stats_state_with_many_categories_per_user():
    """Seeded: most users have more categories (12) than slots (4), some rows reused."""
    rng = np.random.default_rng(7)
    s, o = UserStats(PARAMS, capacity=1), DictOracle(PARAMS, UserStats.MAX_PURCHASED)
    for b in range(12):
        n = 60
        users = [f"u{k}" for k in rng.integers(0, 9, n).tolist()]
        types = [TYPES[k] for k in rng.integers(0, len(TYPES), n).tolist()]
        ts = rng.integers(0, 1000, n).astype(np.int64)
        cats = [f"c{k}" for k in rng.integers(0, 12, n).tolist()]
        items = [f"i{k}" for k in rng.integers(0, 30, n).tolist()]
        s.update(users, types, ts, cats, items)
        for u, t, x, c, i in zip(users, types, ts.tolist(), cats, items, strict=True):
            o.event(u, t, x, c, i)
        if b % 3 == 2:
            u = f"u{b % 9}"
            s.remove(u)
            o.users.pop(u, None)
    assert sum(len(c) > UserStats.CAT_SLOTS for c in s.state()["categories"]) >= 5
    for pick in (list(o.users), ["u3", "nobody", "u1", "u0"]):
        got = s.state(only=pick) if pick[0] == "u3" else s.state()
        want = _stats_state_oracle(o, pick)
        assert got == want
        assert [list(c.items()) for c in got["categories"]] == [
            list(c.items()) for c in want["categories"]]


def test_covisitation_state_lists_every_row_in_order():
    want_rows = {"a": {"x": 1.5, "y": 0.25}, "b": {}, "c": {"a": 2.0}}
    anchors = {"a": 10, "b": 20, "c": 30}
    cv = CoVisitation.from_state(
        {"items": list(want_rows), "anchors": list(anchors.values()),
         "lengths": [len(r) for r in want_rows.values()],
         "neighbours": [k for r in want_rows.values() for k in r],
         "values": [v for r in want_rows.values() for v in r.values()]}, SignalParams())
    for only, items in ((None, ["a", "b", "c"]), (["c", "zz", "a"], ["c", "a"]), ([], [])):
        got = cv.state(only)
        rows = [want_rows[i] for i in items]
        assert got["items"] == items
        assert got["anchors"].dtype == np.int64 and got["anchors"].tolist() == [
            anchors[i] for i in items]
        assert got["lengths"].dtype == np.int64 and got["lengths"].tolist() == [
            len(r) for r in rows]
        assert got["neighbours"] == [k for r in rows for k in r]
        assert got["values"].dtype == np.float64 and got["values"].tolist() == [
            v for r in rows for v in r.values()]
