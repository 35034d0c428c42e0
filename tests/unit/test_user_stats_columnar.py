"""Columnar UserStats (issue 12's bytes per user) against a plain-dict oracle: counts, last
times, every category weight bit for bit, purchases; across batch splits, removes, row reuse,
category overflow beyond the fixed slots, and snapshot round trips (restart + replay)."""

from __future__ import annotations

import heapq
import pickle
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.eventtypes import CONVERSION_TYPES
from stream.core.profile import ProfileParams, UserStats

pytestmark = pytest.mark.unit

# weights whose float64 sums depend on the order of addition (0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1)
PARAMS = ProfileParams(weights={"view": 0.1, "click": 0.3, "add_to_cart": 0.7,
                                "purchase": 1.9, "search": 0.0})
TYPES = ["view", "click", "add_to_cart", "purchase", "search", "unknown"]


class DictOracle:
    """The definition, one event at a time in event order (what the dict-based class did)."""

    def __init__(self, params: ProfileParams, max_purchased: int) -> None:
        self.w = params.weights
        self.max_purchased = max_purchased
        self.users: dict[str, dict[str, Any]] = {}

    def event(self, user: str, typ: str, ts: int, cat: str | None, item: str | None) -> None:
        u = self.users.setdefault(user, {"events": 0, "last": None, "cats": {}, "bought": []})
        u["events"] += 1
        u["last"] = ts if u["last"] is None else max(u["last"], ts)
        w = self.w.get(typ, 0.0)
        if cat is not None and w > 0:
            u["cats"][cat] = u["cats"].get(cat, 0.0) + w
        if typ in CONVERSION_TYPES and item is not None and item not in u["bought"]:
            u["bought"].append(item)
            del u["bought"][:-self.max_purchased]

    def get(self, user: str) -> dict[str, Any] | None:
        u = self.users.get(user)
        if u is None:
            return None
        top = heapq.nsmallest(5, u["cats"].items(), key=lambda kv: (-kv[1], kv[0]))
        return {"events": u["events"], "last_ts": u["last"], "top_categories": [list(t) for t in top]}


def _check(s: UserStats, o: DictOracle) -> None:
    assert sorted(s.users()) == sorted(o.users) and len(s) == len(o.users)
    for u, want in o.users.items():
        assert s.get(u) == o.get(u)
        # every category, bit for bit, in first-seen order
        assert list(s.categories(u).items()) == list(want["cats"].items())
        assert s.purchased(u) == frozenset(want["bought"])
    assert s.get("nobody") is None and s.categories("nobody") == {}
    assert s.purchased("nobody") == frozenset()


op = st.tuples(st.integers(0, 7), st.sampled_from(TYPES), st.integers(-50, 50),
               st.one_of(st.none(), st.integers(0, 9)), st.one_of(st.none(), st.integers(0, 6)))


def feed(s: UserStats, o: DictOracle, batch: list[Any]) -> None:
    """One batch of (user, type, ts, category, item) tuples to the columnar table and to the
    dict oracle alike (ids as strings, None kept)."""
    users = [f"u{e[0]}" for e in batch]
    cats = [None if e[3] is None else f"c{e[3]}" for e in batch]
    items = [None if e[4] is None else f"i{e[4]}" for e in batch]
    s.update(users, [e[1] for e in batch], np.array([e[2] for e in batch], np.int64),
             cats, items)
    for u, e, c, i in zip(users, batch, cats, items, strict=True):
        o.event(u, e[1], e[2], c, i)


@settings(derandomize=True, deadline=None, max_examples=80)
@given(batches=st.lists(st.lists(op, max_size=25), max_size=8),
       removes=st.lists(st.integers(0, 7), max_size=8),
       restart_at=st.integers(0, 8))
def test_columnar_stats_equal_the_dict_oracle(batches, removes, restart_at):
    UserStats.MAX_PURCHASED, saved = 3, UserStats.MAX_PURCHASED  # the bound is hit too
    try:
        s = UserStats(PARAMS, capacity=1)  # grows (capacity doubling) as users come
        o = DictOracle(PARAMS, 3)
        for b, batch in enumerate(batches):
            if b == restart_at:  # restart: a snapshot round trip, then the replay goes on
                s = UserStats.from_state(pickle.loads(pickle.dumps(s.state())), PARAMS)
            feed(s, o, batch)
            if b < len(removes):  # forget / expiry: the row is freed and reused
                u = f"u{removes[b]}"
                assert s.remove(u) == (o.users.pop(u, None) is not None)
            _check(s, o)
        _check(UserStats.from_state(s.state(), PARAMS), o)
    finally:
        UserStats.MAX_PURCHASED = saved


def test_many_categories_overflow_the_slots_and_keep_every_weight():
    s, o = UserStats(PARAMS), DictOracle(PARAMS, UserStats.MAX_PURCHASED)
    cats = [f"genre{k % 18}" for k in range(60)]  # a MovieLens-like user: 18 genres
    types = [TYPES[k % 4] for k in range(60)]
    for lo in range(0, 60, 7):  # uneven batches
        s.update(["a"] * len(cats[lo:lo + 7]), types[lo:lo + 7], list(range(lo, lo + 7))[:len(
            cats[lo:lo + 7])], cats[lo:lo + 7], [None] * len(cats[lo:lo + 7]))
    for k in range(60):
        o.event("a", types[k], k, cats[k], None)
    assert len(s.categories("a")) == 18 > UserStats.CAT_SLOTS
    _check(s, o)
    _check(UserStats.from_state(s.state(), PARAMS), o)


def test_a_snapshot_of_the_dict_based_version_loads():
    # what UserStats.state() wrote before it was columnar (purchases sorted, categories dicts)
    old = {"users": ["b", "a"], "events": [1, 5], "last_ts": [5, 30],
           "categories": [{}, {"shoes": 9.0, "hats": 2.0, "bags": 8.0, "x": 1.0, "y": 1.5,
                               "z": 0.5}],
           "purchased": [[], ["i2", "i5"]]}
    s = UserStats.from_state(old, ProfileParams())
    assert s.users() == ["b", "a"]
    assert s.get("a") == {"events": 5, "last_ts": 30, "top_categories": [
        ["shoes", 9.0], ["bags", 8.0], ["hats", 2.0], ["y", 1.5], ["x", 1.0]]}
    assert s.categories("a") == old["categories"][1]
    assert s.purchased("a") == frozenset({"i2", "i5"}) and s.purchased("b") == frozenset()
    assert s.get("b") == {"events": 1, "last_ts": 5, "top_categories": []}
    assert s.state() == old  # the same data-only format is written back
    with pytest.raises(ValueError, match="disagree"):
        UserStats.from_state({**old, "events": [1]}, ProfileParams())


def test_update_rejects_batches_of_unequal_length():
    s = UserStats()
    with pytest.raises(ValueError, match="batch lengths disagree"):
        s.update(["a", "b"], ["view"], [1, 2], [None, None], [None, None])


def _stats_bytes_per_user(n_users: int = 2048, epu: int = 20) -> float:
    """tracemalloc bytes per user of a UserStats holding ``n_users`` users of ``epu`` events
    (1-3 categories of 50 each, like ``profiles bench scale``; 1 event in 20 a purchase),
    loaded in batches of 500 events (deterministic: seeded)."""
    rng = np.random.default_rng(7)
    names = [f"user-{k:08d}" for k in range(n_users)]  # made before: not counted
    users = np.repeat(np.arange(n_users), epu)
    cats = [f"c{(u * 7 + int(k)) % 50}" for u, k in zip(users.tolist(),
                                                        rng.integers(0, 3, users.size).tolist())]
    types = np.where(rng.random(users.size) < 0.05, "purchase", "view").tolist()
    items = [f"i{k}" for k in rng.integers(0, 100_000, users.size).tolist()]
    user_ids = [names[u] for u in users.tolist()]
    ts = 1_700_000_000_000 + rng.integers(0, 10**9, users.size)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        s = UserStats(ProfileParams())  # grows to exactly n_users rows (2048)
        for lo in range(0, users.size, 500):
            s.update(user_ids[lo:lo + 500], types[lo:lo + 500], ts[lo:lo + 500],
                     cats[lo:lo + 500], items[lo:lo + 500])
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(s) == n_users
    return held / n_users


def test_user_stats_cost_about_160_bytes_per_user_at_20_events():
    # the dict-based version held ~510 B per user here (4 dict entries, a dict of categories
    # and a set of purchases per user); columnar ~160: 2 int64 + 4 x (int32 + float64) slots,
    # the row map's entry and the buyers' item references
    per_user = _stats_bytes_per_user()
    assert per_user < 250, per_user


def test_a_loaded_partition_holds_one_string_per_user_id_and_answers_the_same():
    """Restart: a partition state through the data-only snapshot format.  Its user stats (and
    interests) hold the profile table's string of each id, not a decoded copy each, and every
    stats answer equals the state before the restart and the dict oracle after a replay."""
    from stream.core.bandit import BanditParams
    from stream.core.interests import InterestParams
    from stream.worker.snapshots import pack, unpack
    from stream.worker.state import PartitionState

    pp, dim = PARAMS, 8
    st = PartitionState.empty(0, dim, pp, BanditParams(), 1000, "m", ip=InterestParams(k=2))
    o = DictOracle(pp, UserStats.MAX_PURCHASED)
    rng = np.random.default_rng(3)

    def feed(state: PartitionState, n: int, t0: int) -> None:
        users = [f"user-{k}" for k in rng.integers(0, 40, n).tolist()]
        types = [TYPES[k] for k in rng.integers(0, 4, n).tolist()]
        cats = [f"c{k}" for k in rng.integers(0, 7, n).tolist()]
        items = [f"i{k}" for k in rng.integers(0, 9, n).tolist()]
        ts = t0 + np.arange(n, dtype=np.int64)
        state.profiles.apply(users, ts, pp.weight_array(types), rng.standard_normal((n, dim)))
        assert state.interests is not None
        state.interests.apply(users, ts, pp.weight_array(types), rng.standard_normal((n, dim)))
        state.users.update(users, types, ts, cats, items)
        for u, t, w, c, i in zip(users, types, ts.tolist(), cats, items, strict=True):
            o.event(u, t, w, c, i)

    feed(st, 300, 1_000)
    loaded = PartitionState.from_dict(unpack(pack(st.to_dict())), dim, pp, BanditParams(), 1000)
    assert loaded.to_dict()["users"] == st.to_dict()["users"]
    names = {u: u for u in loaded.profiles.users()}
    assert loaded.interests is not None and len(loaded.users) == len(names) == 40
    for u in loaded.users.users():
        assert u is names[u]  # the profile table's own object
    for u in loaded.interests.users():
        assert u is names[u]
    for u in names:
        assert loaded.users.get(u) == st.users.get(u) == o.get(u)
    feed(loaded, 200, 5_000)  # the replay after the restart
    _check(loaded.users, o)
