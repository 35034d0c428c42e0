"""Every per-user table's id -> row dict holds the shared int object of each row number
(issue 12: a fresh int per user per table was 32 B a user a table), after events and after a
load from a snapshot; the rows and every answer stay the same."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.profile import ProfileParams, ProfileTable, UserStats

pytestmark = pytest.mark.unit

DIM = 8


def _tables(parts: int, users: int) -> tuple[list[ProfileTable], list[UserStats]]:
    pp = ProfileParams()
    profiles = [ProfileTable(DIM, pp) for _ in range(parts)]
    stats = [UserStats(pp) for _ in range(parts)]
    rng = np.random.default_rng(0)
    t0 = 1_700_000_000_000
    for lo in range(0, users, 1000):
        ids = [f"u{k}" for k in range(lo, min(users, lo + 1000))]  # fresh strings
        for p in range(parts):
            mine = [u for u in ids if int(u[1:]) % parts == p]
            ts = np.full(len(mine), t0 + lo, dtype=np.int64)
            profiles[p].apply(mine, ts, np.ones(len(mine)),
                              rng.standard_normal((len(mine), DIM)).astype(np.float32))
            stats[p].update(mine, ["view"] * len(mine), ts, ["c1"] * len(mine), ["i1"] * len(mine))
    return profiles, stats


def _row_objects(tables) -> tuple[int, int]:
    """(distinct int objects, row values) among the tables' id -> row dicts."""
    objs = {id(r) for t in tables for r in t._index.values()}
    vals = {r for t in tables for r in t._index.values()}
    return len(objs), len(vals)


def test_tables_of_all_partitions_share_one_int_per_row_number() -> None:
    profiles, stats = _tables(parts=4, users=8000)
    objs, vals = _row_objects(profiles + stats)
    assert vals == 2000  # rows 0..1999 in each partition
    assert objs == vals  # before: one object per user per table (~16,000 beyond 256)
    # the answers are unchanged: every user's row holds its own data
    for p, t in enumerate(profiles):
        assert len(t) == 2000 and all(int(u[1:]) % 4 == p for u in t.users())
        assert t._names[t._index["u" + str(p + 4 * 7)]] == "u" + str(p + 4 * 7)


def test_tables_loaded_from_state_share_the_row_ints_and_equal_the_originals() -> None:
    profiles, stats = _tables(parts=2, users=3000)
    pp = ProfileParams()
    back_p = [ProfileTable.from_state(t.state(), DIM, pp) for t in profiles]
    back_s = [UserStats.from_state(s.state(), pp) for s in stats]
    objs, vals = _row_objects(back_p + back_s + profiles + stats)
    assert objs == vals == 1500
    for a, b in zip(profiles, back_p):
        users = a.users()
        assert b.users() == users
        np.testing.assert_array_equal(a.vectors(users), b.vectors(users))
    # a freed row is reused: its int is the shared one too
    assert profiles[0].remove("u0")
    profiles[0].apply(["new"], np.array([1_800_000_000_000]), np.ones(1),
                      np.ones((1, DIM), np.float32))
    objs, vals = _row_objects(profiles + back_p)
    assert objs == vals


def test_item_tables_share_row_ints_and_interned_ids_after_a_load() -> None:
    """Popularity, co-visitation and bandit arms are item-keyed tables of every partition (a
    10^6-item catalogue: millions of rows): their id -> row dicts hold the shared row ints, and
    a load interns the ids, so partitions restored from snapshots (each decodes its own copy of
    every id) share one string per item with each other and with the decoder's interned ids."""
    import sys

    from stream.core.bandit import ArmStats, BanditParams
    from stream.core.signals import SignalParams, Signals

    rng = np.random.default_rng(1)
    sigs, arms = [Signals(SignalParams(recent_n=3)) for _ in range(2)], []
    for sig in sigs:
        a = ArmStats(BanditParams())
        for b in range(6):
            items = ["".join(["item-", str(k)]) for k in rng.integers(0, 900, 400).tolist()]
            users = [f"u{k}" for k in rng.integers(0, 50, 400).tolist()]
            sig.apply(users, items, np.arange(400, dtype=np.int64) + b * 1000, ["view"] * 400)
            a.update(items, ["view"] * 400)
        arms.append(a)
    tables = [t for s in sigs for t in (s.popularity, s.covis)] + arms
    objs, vals = _row_objects(tables)
    assert vals > 600 and objs == vals  # before: one int object per row beyond 256, per table
    fresh = [Signals.from_state(s.state(), s.params) for s in sigs]
    back_arms = [ArmStats.from_state(a.state(), a.params) for a in arms]
    loaded = [t for s in fresh for t in (s.popularity, s.covis)] + back_arms
    objs, vals = _row_objects(loaded + tables)
    assert objs == vals
    names = [n for t in loaded for n in t._names]
    assert len({id(n) for n in names}) == len(set(names))  # one object per id, all partitions
    assert all(sys.intern(n) is n for n in names[:200])
    for a, b in zip(sigs, fresh):
        assert a.popularity.state()["items"] == b.popularity.state()["items"]
        assert [a.covis.row(i) for i in a.covis.items()] == [b.covis.row(i) for i in b.covis.items()]
    for a, b in zip(arms, back_arms):
        sa, sb = a.state(), b.state()
        assert sa["arms"] == sb["arms"]
        assert np.array_equal(sa["impressions"], sb["impressions"])
