"""profiles eval: the tie-aware split, canonical order, queries and the cold hold-outs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from encoder.training.logdata import load_log
from stream.eval.data import (
    TEST,
    TRAIN,
    VAL,
    ColdParams,
    SplitParams,
    Visibility,
    build_log,
    cold_visibility,
    make_queries,
    read_categories,
    split_user,
)

pytestmark = pytest.mark.unit

MIN = 60_000
TYPES = ("view", "click", "add_to_cart", "purchase")


def synthetic(n_users: int = 40, n_items: int = 30, per_user: int = 24, seed: int = 0,
              repeats: float = 0.1) -> tuple[list[dict], list[dict]]:
    """Items in 3 categories, users with a favourite category, sessions of equal-ts groups
    (several items rated in the same second, as in MovieLens), a few repeat events."""
    rng = np.random.default_rng(seed)
    items = [{"item_id": f"i{k:02d}", "title": f"item {k} {['red', 'blue', 'green'][k % 3]}",
              "category": f"cat{k % 3}"} for k in range(n_items)]
    events = []
    for u in range(n_users):
        fav = u % 3
        t = 10_000_000 + int(rng.integers(0, 5 * 86_400_000))
        seen: list[int] = []
        j = 0
        while j < per_user:
            group = int(rng.integers(1, 4))
            for _ in range(min(group, per_user - j)):
                if seen and rng.random() < repeats:
                    k = int(rng.choice(seen))
                elif rng.random() < 0.7:
                    k = int(rng.choice(np.arange(fav, n_items, 3)))
                else:
                    k = int(min(rng.zipf(1.6), n_items) - 1)
                seen.append(k)
                events.append({"event_id": f"e{u}-{j}", "user_id": f"u{u:02d}",
                               "type": TYPES[int(rng.integers(0, 4))], "ts": t,
                               "item_id": f"i{k:02d}"})
                j += 1
            t += int(rng.choice([MIN, 30 * MIN, 3 * 3_600_000, 86_400_000]))
    return items, events


def write(tmp: Path, items: list[dict], events: list[dict]) -> tuple[Path, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    ip, ep = tmp / "items.jsonl", tmp / "events.jsonl"
    ip.write_text("".join(json.dumps(x) + "\n" for x in items))
    ep.write_text("".join(json.dumps(x) + "\n" for x in events))
    return ep, ip


def load(tmp: Path, items: list[dict], events: list[dict], split: SplitParams | None = None):
    ep, ip = write(tmp, items, events)
    log = load_log(ep, ip)
    return build_log(log, read_categories(str(ip), log.item_ids), split or SplitParams())


def test_split_never_cuts_an_equal_ts_group() -> None:
    # 10 events; test_frac 0.1 -> boundary at 9, inside the group 8..9 (ts 5): nearest edges
    # 8 (distance 1) and 10 (empties test) -> 8
    ts = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 8])
    assert split_user(ts, SplitParams(0.1, 0.1)) == (7, 8)
    # boundary 9 inside group 7..10 ([7, 10) = ts 9): edges 7 (dist 2), 10 = n (not allowed)
    ts = np.array([0, 1, 2, 3, 4, 5, 6, 9, 9, 9])
    vs, tst = split_user(ts, SplitParams(0.1, 0.1))
    assert tst == 7 and vs == 6
    # two groups of 6 and 12 after 2: test boundary 18 -> edge 8 (edges 2, 8 in range; 20 would
    # empty the test part); validation boundary 6 -> 8 too (validation empty)
    ts = np.array([0] * 2 + [1] * 6 + [2] * 12)
    assert split_user(ts, SplitParams(0.1, 0.1)) == (8, 8)
    # a boundary nearer the group's end moves forward: test shrinks, stays non-empty
    ts = np.array(list(range(15)) + [15] * 4 + [16])
    assert split_user(ts, SplitParams(0.1, 0.1))[1] == 19
    # a single timestamp: no split, no case
    assert split_user(np.zeros(5, dtype=np.int64), SplitParams()) == (5, 5)
    # random: every boundary on a group edge, test and train non-empty
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(3, 40))
        ts = np.sort(rng.integers(0, max(2, n // 2), n))
        if len(np.unique(ts)) < 2:
            continue
        vs, tst = split_user(ts, SplitParams(0.1, 0.2))
        assert 1 <= vs <= tst <= n - 1
        for b in (vs, tst):
            assert b in (0, n) or ts[b] != ts[b - 1]


def test_build_log_parts_queries_and_new_sessions(tmp_path: Path) -> None:
    items, events = synthetic()
    ev = load(tmp_path, items, events)
    assert ev.n_events == len(events)
    assert (np.diff(ev.ts) >= 0).all()
    for u, pos in enumerate(ev.by_user):
        part, ts = ev.part[pos], ev.ts[pos]
        assert (np.diff(part) >= 0).all()  # train, then validation, then test
        for a, b in zip(pos[:-1], pos[1:]):
            if ev.ts[a] == ev.ts[b]:
                assert ev.part[a] == ev.part[b]  # a tie group is one part
        assert (part == TEST).any() and (part == TRAIN).any()
        assert (ev.user[pos] == u).all() and (np.diff(ts) >= 0).all()
    vis = Visibility.full(ev)
    q = make_queries(ev, vis, {"test": ev.part == TEST})
    assert (np.diff(q.ts) >= 0).all()
    n_cases = 0
    for i in range(len(q)):
        u, t = int(q.user[i]), int(q.ts[i])
        pos = ev.by_user[u]
        at = pos[ev.ts[pos] == t]
        assert set(q.targets[i].tolist()) == set(ev.row[at].tolist())
        before = set(ev.row[pos[ev.ts[pos] < t]].tolist())
        assert set(q.new[i].tolist()) == set(q.targets[i].tolist()) - before
        prev = ev.ts[pos[ev.ts[pos] < t]]
        assert q.new_session[i] == (len(prev) == 0 or t - prev.max() > 3_600_000)
        n_cases += len(q.targets[i])
    assert n_cases == len({(int(ev.user[p]), int(ev.ts[p]), int(ev.row[p]))
                           for p in np.flatnonzero(ev.part == TEST)})
    assert q.new_session.any() and not q.new_session.all()
    assert any(len(q.new[i]) < len(q.targets[i]) for i in range(len(q)))  # repeats exist
    val = make_queries(ev, vis, {"val": ev.part == VAL})
    assert len(val) > 0 and set(val.label) == {"val"}


def test_canonical_order_ignores_event_ids_and_catalogue_rows(tmp_path: Path) -> None:
    items, events = synthetic(seed=3)
    ev = load(tmp_path / "a", items, events)
    rng = np.random.default_rng(0)
    ids = [e["event_id"] for e in events]
    shuffled = [dict(e, event_id=i) for e, i in zip(events, rng.permutation(ids).tolist())]
    ev2 = load(tmp_path / "b", list(reversed(items)), shuffled)
    key = [(ev.users[u], int(t), ev.item_ids[r], ty) for u, t, r, ty in
           zip(ev.user.tolist(), ev.ts.tolist(), ev.row.tolist(), ev.types)]
    key2 = [(ev2.users[u], int(t), ev2.item_ids[r], ty) for u, t, r, ty in
            zip(ev2.user.tolist(), ev2.ts.tolist(), ev2.row.tolist(), ev2.types)]
    assert key == key2
    assert ev.part.tolist() == ev2.part.tolist()


def test_cold_visibility(tmp_path: Path) -> None:
    items, events = synthetic(n_users=60, n_items=40, seed=5)
    ev = load(tmp_path, items, events)
    p = ColdParams(item_frac=0.1, user_frac=0.2, val_item_frac=0.1, val_user_frac=0.1, seed=2)
    vis, wanted, info = cold_visibility(ev, p)
    hidden = {int(r) for r in ev.row[~vis.visible].tolist()}
    assert info["items_held_out"] >= 0.1 * ev.n_items
    assert len(hidden) <= info["items_held_out"] + info["validation_items_held_out"]
    assert not (vis.trainable & ~vis.visible).any()
    # hidden items: no visible event at all; the test ones are the item-cold cases ...
    assert all(r not in hidden for r in ev.row[vis.visible].tolist())
    test_items = set(ev.row[wanted["items"]].tolist())
    assert test_items and test_items <= hidden
    # ... and the validation ones are validation cases, on other items
    val_cold = set(ev.row[vis.tunable & ~vis.visible].tolist())
    assert val_cold and val_cold <= hidden and not val_cold & test_items
    q = make_queries(ev, vis, wanted)
    assert {"items", "users_1", "users_3", "users_5"} <= set(q.label)
    # user cold start: history = the first k distinct timestamps of a held-out user
    test_users = {int(u) for k in p.ks for u in ev.user[wanted[f"users_{k}"]].tolist()}
    assert 0 < len(test_users) <= info["users_held_out"]
    assert not (vis.trainable & np.isin(ev.user, list(test_users))).any()
    assert not (vis.tunable & np.isin(ev.user, list(test_users))).any()
    assert not (wanted["items"] & np.isin(ev.user, list(test_users))).any()
    val_users = {int(u) for u in ev.user[vis.tunable & (ev.part == TRAIN)].tolist()}
    assert val_users and not val_users & test_users  # validation short histories: other users
    assert not (vis.trainable & np.isin(ev.user, list(val_users))).any()
    for i in range(len(q)):
        if not q.label[i].startswith("users_"):
            continue
        k = int(q.label[i].split("_")[1])
        u, t = int(q.user[i]), int(q.ts[i])
        pos = ev.by_user[u]
        pos = pos[vis.visible[pos]]
        assert len(np.unique(ev.ts[pos][ev.ts[pos] < t])) == k
