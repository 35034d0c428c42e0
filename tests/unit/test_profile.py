"""ProfileTable / UserStats against the plain-numpy oracle."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.profile import (
    DEFAULT_HALF_LIFE_MS,
    DEFAULT_WEIGHTS,
    ProfileParams,
    ProfileTable,
    UserStats,
    upgraded_state,
)
from tests.oracle import oracle_profiles

pytestmark = pytest.mark.unit

DIM = 16
YEAR_MS = 365 * 24 * 3600 * 1000
TYPES = list(DEFAULT_WEIGHTS)


def make_world(seed: int, n_items: int = 40, n_queries: int = 10):
    rng = np.random.default_rng(seed)
    items = {f"i{k}": rng.standard_normal(DIM).astype(np.float32) for k in range(n_items)}
    queries = {f"q{k}": rng.standard_normal(DIM).astype(np.float32) for k in range(n_queries)}
    return items, queries


def make_log(
    seed: int, n: int, n_users: int, base_ts: float, span_ms: float, n_items: int = 40
) -> list[dict]:
    """Random events; timestamps uniform in [base, base + span] plus bursts of ties."""
    rng = np.random.default_rng(seed + 1)
    log = []
    for _ in range(n):
        t = TYPES[rng.integers(len(TYPES))]
        ts = int(base_ts + rng.uniform(0, span_ms))
        if rng.random() < 0.2:  # cluster some events close together so decay is not all-or-nothing
            ts = int(base_ts + span_ms - rng.uniform(0, 3 * DEFAULT_HALF_LIFE_MS))
        e = {
            "user_id": f"u{rng.integers(n_users)}",
            "type": t,
            "ts": ts,
            "item_id": None,
            "query": None,
        }
        if t == "search":
            e["query"] = f"q{rng.integers(10)}"
        else:
            e["item_id"] = f"i{rng.integers(n_items)}"
        log.append(e)
    return log


def to_batch(events, items, queries, params: ProfileParams):
    users = [e["user_id"] for e in events]
    ts = np.array([e["ts"] for e in events], dtype=np.int64)
    w = params.weight_array([e["type"] for e in events])
    vec = np.array(
        [queries[e["query"]] if e["type"] == "search" else items[e["item_id"]] for e in events],
        dtype=np.float32,
    ).reshape(len(events), DIM)
    return users, ts, w, vec


def apply_in_batches(table, events, items, queries, splits) -> None:
    bounds = [0, *sorted(splits), len(events)]
    for a, b in itertools.pairwise(bounds):
        table.apply(*to_batch(events[a:b], items, queries, table.params))


def assert_matches_oracle(table: ProfileTable, expected: dict[str, np.ndarray]) -> None:
    assert set(table.users()) == set(expected)
    users = sorted(expected)
    got = table.vectors(users)
    want = np.stack([expected[u] for u in users])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    for u in users[:5]:
        np.testing.assert_allclose(table.vector(u), expected[u], atol=1e-5, rtol=0)


def test_naive_exponent_would_overflow():
    # The reason for anchoring: an absolute 2**(ts/H) is inf for modern epoch-ms times.
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp2(1.7e12 / DEFAULT_HALF_LIFE_MS))


@pytest.mark.parametrize("base_ts", [1.7e12, 8.7e11])
@pytest.mark.parametrize("half_life_ms", [3_600_000.0, DEFAULT_HALF_LIFE_MS, YEAR_MS / 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_oracle_over_years(base_ts, half_life_ms, seed):
    items, queries = make_world(seed)
    events = make_log(seed, n=1200, n_users=60, base_ts=base_ts, span_ms=3 * YEAR_MS)
    params = ProfileParams(half_life_ms=half_life_ms)
    table = ProfileTable(DIM, params, capacity=4)  # tiny capacity exercises doubling
    rng = np.random.default_rng(seed)
    apply_in_batches(table, events, items, queries, rng.choice(len(events), 7, replace=False))
    want = oracle_profiles(events, items, queries, params.weights, half_life_ms)
    assert_matches_oracle(table, want)
    for u in table.users():
        anchor, s = table.raw(u)
        assert anchor == max(e["ts"] for e in events if e["user_id"] == u)
        assert np.isfinite(s).all()


def test_mixed_eras_single_user():
    # One user with a 1997 event and a 2024 event: the old one decays to nothing, no overflow.
    items, queries = make_world(3)
    params = ProfileParams()
    events = [
        {"user_id": "u", "type": "purchase", "ts": 870_000_000_000, "item_id": "i1", "query": None},
        {"user_id": "u", "type": "view", "ts": 1_700_000_000_000, "item_id": "i2", "query": None},
    ]
    for order in (events, events[::-1]):
        table = ProfileTable(DIM, params)
        for e in order:
            table.apply(*to_batch([e], items, queries, params))
        want = items["i2"] / np.linalg.norm(items["i2"].astype(np.float64))
        np.testing.assert_allclose(table.vector("u"), want, atol=1e-6)


@settings(derandomize=True, deadline=None, max_examples=40)
@given(seed=st.integers(0, 2**31 - 1), data=st.data())
def test_order_and_batching_independent(seed, data):
    items, queries = make_world(seed % 5)
    base = data.draw(st.sampled_from([1.7e12, 8.7e11]))
    events = make_log(seed, n=150, n_users=12, base_ts=base, span_ms=2 * YEAR_MS)
    params = ProfileParams()
    perm = data.draw(st.permutations(range(len(events))))
    splits = data.draw(st.lists(st.integers(0, len(events)), max_size=8))
    ref = ProfileTable(DIM, params)
    ref.apply(*to_batch(events, items, queries, params))
    shuffled = ProfileTable(DIM, params, capacity=2)
    apply_in_batches(shuffled, [events[i] for i in perm], items, queries, splits)
    users = sorted(ref.users())
    assert sorted(shuffled.users()) == users
    np.testing.assert_allclose(shuffled.vectors(users), ref.vectors(users), atol=1e-5, rtol=0)


def test_incremental_equals_one_batch():
    items, queries = make_world(7)
    events = make_log(7, n=500, n_users=30, base_ts=1.7e12, span_ms=60 * 24 * 3600 * 1000)
    params = ProfileParams()
    one = ProfileTable(DIM, params)
    touched = one.apply(*to_batch(events, items, queries, params))
    first_seen = list(dict.fromkeys(e["user_id"] for e in events))
    assert touched == first_seen
    inc = ProfileTable(DIM, params)
    for e in events:
        inc.apply(*to_batch([e], items, queries, params))
    users = sorted(one.users())
    np.testing.assert_allclose(inc.vectors(users), one.vectors(users), atol=1e-5, rtol=0)
    for u in users:
        (a1, n1, v1), (a2, n2, v2) = one.parts(u), inc.parts(u)
        assert a1 == a2
        # the float64 norm is rebuilt from a float32 direction at every batch
        assert n1 == pytest.approx(n2, rel=1e-6)
        np.testing.assert_allclose(v1, v2, rtol=0, atol=1e-6)


def test_remove_then_readd_reuses_row():
    items, queries = make_world(8)
    params = ProfileParams()
    events = make_log(8, n=200, n_users=10, base_ts=1.7e12, span_ms=YEAR_MS)
    table = ProfileTable(DIM, params)
    table.apply(*to_batch(events, items, queries, params))
    n = len(table)
    victim = events[0]["user_id"]
    assert victim in table
    assert table.remove(victim)
    assert not table.remove(victim)
    assert victim not in table and len(table) == n - 1
    assert table.vector(victim) is None and table.raw(victim) is None
    np.testing.assert_array_equal(table.vectors([victim]), np.zeros((1, DIM), np.float32))
    # Re-adding starts from scratch: only the new event counts.
    e = {"user_id": victim, "type": "view", "ts": 1_000, "item_id": "i3", "query": None}
    table.apply(*to_batch([e], items, queries, params))
    assert len(table) == n and table.raw(victim)[0] == 1_000
    want = items["i3"] / np.linalg.norm(items["i3"].astype(np.float64))
    np.testing.assert_allclose(table.vector(victim), want, atol=1e-6)
    # The freed row was reused rather than a new one appended.
    assert table._next == n


def test_zero_weight_profile_is_zero_row():
    params = ProfileParams(weights={"view": 0.0})
    table = ProfileTable(4, params)
    table.apply(["u"], np.array([5]), np.array([0.0]), np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(table.vector("u"), np.zeros(4, np.float32))


def test_state_round_trip(tmp_path):
    items, queries = make_world(9)
    params = ProfileParams()
    events = make_log(9, n=400, n_users=25, base_ts=1.7e12, span_ms=YEAR_MS)
    table = ProfileTable(DIM, params)
    table.apply(*to_batch(events, items, queries, params))
    table.remove(events[0]["user_id"])  # state must hold live rows only
    st_ = table.state()
    assert len(st_["users"]) == len(table) == st_["units"].shape[0] == st_["norms"].shape[0]
    assert st_["units"].dtype == np.float32 and st_["norms"].dtype == np.float64
    users = table.users()
    for restored in (
        ProfileTable.from_state(st_, DIM, params),
        ProfileTable.from_state(pickle.loads(pickle.dumps(st_)), DIM, params),
        ProfileTable.from_state(_savez_round_trip(tmp_path, st_), DIM, params),
    ):
        assert restored.users() == users
        np.testing.assert_array_equal(restored.vectors(users), table.vectors(users))
        for u in users[:5]:  # bit-identical: a restart continues from the same numbers
            assert restored.parts(u)[:2] == table.parts(u)[:2]
        # and it keeps working after restore
        more = make_log(10, n=50, n_users=25, base_ts=1.7e12, span_ms=YEAR_MS)
        restored.apply(*to_batch(more, items, queries, params))
    with pytest.raises(ValueError):
        ProfileTable.from_state(st_, DIM + 1, params)


def _savez_round_trip(tmp_path, state):
    path = tmp_path / "profiles.npz"
    np.savez(path, **state)
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"half_life_ms": 0},
        {"half_life_ms": -5},
        {"half_life_ms": float("nan")},
        {"half_life_ms": float("inf")},
        {"weights": {"view": -1.0}},
        {"weights": {"view": float("nan")}},
        {"weights": {"view": float("inf")}},
    ],
)
def test_invalid_params_rejected(kwargs):
    with pytest.raises(ValueError):
        ProfileParams(**kwargs)


def test_params_copy_weights():
    w = {"view": 1.0}
    p = ProfileParams(weights=w)
    w["view"] = 99.0
    assert p.weights["view"] == 1.0
    np.testing.assert_array_equal(p.weight_array(["view", "nope"]), [1.0, 0.0])


def test_apply_rejects_bad_batches():
    table = ProfileTable(4, ProfileParams())
    with pytest.raises(ValueError):
        table.apply(["u"], np.array([1, 2]), np.array([1.0]), np.ones((1, 4), np.float32))
    with pytest.raises(ValueError):
        table.apply(["u"], np.array([1]), np.array([1.0]), np.ones((1, 3), np.float32))
    with pytest.raises(ValueError):
        table.apply(["u"], np.array([1]), np.array([np.nan]), np.ones((1, 4), np.float32))
    with pytest.raises(ValueError):
        table.apply(["u"], np.array([1]), np.array([1.0]), np.full((1, 4), np.inf, np.float32))
    assert len(table) == 0  # rejected batches leave no half-registered users
    assert table.apply([], np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4), np.float32)) == []


def test_user_stats_basics():
    params = ProfileParams()
    s = UserStats(params)
    s.update(
        ["a", "a", "a", "b", "a", "a"],
        ["view", "purchase", "click", "view", "purchase", "search"],
        np.array([10, 30, 20, 5, 25, 1]),
        ["shoes", "shoes", "hats", None, "bags", None],
        ["i1", "i2", "i3", "i4", "i5", None],
    )
    a = s.get("a")
    assert a["events"] == 5 and a["last_ts"] == 30
    assert a["top_categories"] == [["shoes", 9.0], ["bags", 8.0], ["hats", 2.0]]
    assert s.purchased("a") == frozenset({"i2", "i5"})
    assert s.purchased("b") == frozenset() and s.get("b")["top_categories"] == []
    assert s.get("zzz") is None
    # top 5 only, ties by name
    s.update(["c"] * 7, ["view"] * 7, [1] * 7, list("gfedcba"), [None] * 7)
    assert [c for c, _ in s.get("c")["top_categories"]] == list("abcde")
    restored = UserStats.from_state(pickle.loads(pickle.dumps(s.state())), params)
    for u in ("a", "b", "c"):
        assert restored.get(u) == s.get(u)
        assert restored.purchased(u) == s.purchased(u)
    assert s.remove("a") and not s.remove("a") and s.get("a") is None and len(s) == 2


def test_old_float64_sums_state_loads_and_matches_the_new_representation() -> None:
    # a snapshot written before issue 12 holds float64 sums: split on load
    items, queries = make_world(11)
    params = ProfileParams()
    events = make_log(11, n=300, n_users=15, base_ts=1.7e12, span_ms=YEAR_MS)
    table = ProfileTable(DIM, params)
    table.apply(*to_batch(events, items, queries, params))
    users = table.users()
    sums = np.stack([table.raw(u)[1] for u in users]) * 3.0  # a sum of the same direction
    old = {"users": users, "anchors": table.state()["anchors"], "sums": sums}
    restored = ProfileTable.from_state(old, DIM, params)
    up = upgraded_state(old, DIM)  # what code merging states field by field gets
    assert set(up) == {"users", "anchors", "norms", "units"} and up["units"].dtype == np.float32
    assert upgraded_state(table.state(), DIM).keys() == table.state().keys()
    np.testing.assert_allclose(restored.vectors(users), table.vectors(users), atol=1e-7)
    for u in users:
        assert restored.parts(u)[1] == pytest.approx(3.0 * table.parts(u)[1], rel=1e-6)
    want = oracle_profiles(events, items, queries, params.weights, params.half_life_ms)
    assert_matches_oracle(restored, want)
    with pytest.raises(ValueError, match="does not match dim"):
        ProfileTable.from_state({**old, "sums": sums[:, :-1]}, DIM, params)
    with pytest.raises(ValueError, match="non-finite"):
        bad = table.state()
        bad["norms"] = bad["norms"].copy()
        bad["norms"][0] = np.nan
        ProfileTable.from_state(bad, DIM, params)
