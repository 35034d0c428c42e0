"""The collaborative signals in the worker's batch step (stream.worker.testing, no broker):
they equal a plain-Python oracle after a replay with duplicates, forgets and parked events;
a restart from snapshots changes nothing; two workers owning half the partitions each, merged
through their published partials, serve what one worker owning all of them serves."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from stream.core.signal_view import SignalView
from stream.data.generate import generate
from stream.settings import Settings
from stream.worker.sharing import decode_partial, encode_partial
from stream.worker.state import PartitionState
from stream.worker.testing import InProcessWorker, Source

pytestmark = pytest.mark.inprocess

DIM = 16
# recent_n small so the "fewer than recent_n between" rule matters; no eviction (capacity and
# top_m above the number of items), so co-visitation is exact and the oracle can be too.
SIGNALS = {"signals_recent_n": 4, "signals_covis_top_m": 100, "signals_covis_capacity": 100,
           "signals_covis_window_ms": 3_600_000.0}
BATCH = 150


def settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings.from_env({}, state_dir=str(tmp_path / "state"), **{**SIGNALS, **kw})


# ---------------------------------------------------------------------------- the log
def scripted_log() -> tuple[list[dict], list[dict], list[dict], dict]:
    """(items, the log before the parked events, the parked events, facts) — a generated log
    with re-sent events (duplicates), forgets (and older events of the forgotten users sent
    after them: forgotten) mixed in."""
    ds = generate(users=40, items=30, events=1200, seed=5)
    events = [e for e in ds.events]
    end = max(e["ts"] for e in events)
    log: list[dict] = []
    forgotten_users = ["u00003", "u00011"]
    for i, e in enumerate(events):
        log.append(e)
        if i % 97 == 5:  # a re-sent event (same id): a duplicate
            log.append(dict(log[i // 2]))
        if i == 700:  # forgets, then an older event of theirs arriving later: forgotten
            for u in forgotten_users:
                log.append({"event_id": f"f-{u}", "user_id": u, "type": "forget",
                            "ts": e["ts"]})
            for u in forgotten_users:
                log.append({"event_id": f"old-{u}", "user_id": u, "type": "click",
                            "ts": e["ts"] - 1000, "item_id": "i00001"})
    # unknown items: parked, applied when the item arrives (each user's newest events)
    parked = [{"event_id": f"p{j}", "user_id": f"u{j + 20:05d}", "type": t, "ts": end + 60_000 * j,
               "item_id": f"late{j % 2}"} for j, t in enumerate(["view", "click", "purchase",
                                                                 "view"])]
    late_items = [{"item_id": "late0", "title": "late tent", "category": "tents"},
                  {"item_id": "late1", "title": "late stove", "category": "stoves"}]
    return ds.items, log, parked, {"late_items": late_items, "forgotten": forgotten_users}


def applied_events(log: list[dict]) -> list[dict]:
    """What the worker applies, in the order it applies it, by the documented rules: the
    first delivery of an event id; a forget erases what came before it in the log, and its
    tombstone (the newer of its ts and the newest ts it erased) makes every later event of its
    user at or before that time ``forgotten``, however the log is batched (README, "Privacy")."""
    seen: set[str] = set()
    tomb: dict[str, int] = {}
    newest: dict[str, int] = {}  # per user, the newest ts applied since their last forget
    out = []
    for e in log:
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        u = e["user_id"]
        if e["type"] == "forget":
            t = max(e["ts"], newest.pop(u, e["ts"]))
            tomb[u] = max(t, tomb.get(u, t))
        elif u in tomb and e["ts"] <= tomb[u]:
            continue
        else:
            newest[u] = max(e["ts"], newest.get(u, e["ts"]))
        out.append(e)
    return out


# ---------------------------------------------------------------------------- the oracle
def oracle(events: list[dict], s: Settings, now: int) -> dict[str, Any]:
    """Popularity, recent items and exact co-visitation from the definitions."""
    p = s.signal_params()
    w = p.weights
    short: dict[str, float] = defaultdict(float)
    long: dict[str, float] = defaultdict(float)
    segments: dict[str, list[list[tuple[int, str, float]]]] = defaultdict(lambda: [[]])
    for e in events:
        if e["type"] == "forget":
            segments[e["user_id"]].append([])
            continue
        if not e.get("item_id") or w.get(e["type"], 0.0) <= 0:
            continue
        wt = w[e["type"]]
        short[e["item_id"]] += wt * 2.0 ** ((e["ts"] - now) / p.pop_short_half_life_ms)
        long[e["item_id"]] += wt * 2.0 ** ((e["ts"] - now) / p.pop_long_half_life_ms)
        segments[e["user_id"]][-1].append((e["ts"], e["item_id"], wt))
    covis: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    recent: dict[str, list[tuple[int, str, float]]] = {}
    for user, segs in segments.items():
        for seg in segs:
            ts = sorted(t for t, _, _ in seg)
            for i, (ta, a, wa) in enumerate(seg):  # every unordered pair of events once
                for tb, b, wb in seg[i + 1:]:
                    if a == b:
                        continue
                    lo, hi = min(ta, tb), max(ta, tb)
                    between = sum(1 for t in ts if lo < t < hi)
                    if hi - lo > p.covis_window_ms or between >= p.recent_n:
                        continue
                    v = math.sqrt(wa * wb) * 2.0 ** ((hi - now) / p.covis_half_life_ms)
                    covis[a][b] += v
                    covis[b][a] += v
        last = sorted(segs[-1])
        if last:
            recent[user] = last[-p.recent_n:]
    return {"short": dict(short), "long": dict(long), "covis": covis, "recent": recent}


async def replay(w: InProcessWorker, log: list[dict], parked: list[dict],
                 late_items: list[dict]) -> None:
    for i in range(0, len(log), BATCH):
        await w.events(log[i:i + BATCH])
    await w.events(parked)
    assert w.pipeline.summary()["parked"] == len(parked)
    await w.items(late_items)
    await w.pipeline.resolve_parked()
    assert w.pipeline.summary()["parked"] == 0


def assert_view_equals_oracle(view: SignalView, want: dict[str, Any], now: int) -> None:
    items = sorted(want["short"])
    short, long = view.popularity(items, now)
    np.testing.assert_allclose(short, [want["short"][i] for i in items], rtol=1e-9)
    np.testing.assert_allclose(long, [want["long"][i] for i in items], rtol=1e-9)
    assert [i for i, _ in view.trending(now, 5)] == \
        sorted(want["short"], key=lambda i: (-want["short"][i], i))[:5]
    for item in items:
        got = dict(view.neighbours(item, now, 1000))
        exp = want["covis"].get(item, {})
        assert set(got) == set(exp), item
        for nb, v in exp.items():
            assert math.isclose(got[nb], v, rel_tol=1e-9), (item, nb, got[nb], v)


def test_signals_equal_the_oracle_after_duplicates_forgets_and_parked_events(tmp_path) -> None:
    items, log, parked, facts = scripted_log()
    s = settings(tmp_path)

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items(items)
            await replay(w, log, parked, facts["late_items"])
            got = w.pipeline.summary()
            events = applied_events(log) + parked
            assert got["events_duplicate"] > 0 and got["events_forgotten"] >= 2
            assert got["events_applied"] == len(events)
            now = max(e["ts"] for e in events if e.get("item_id"))
            assert w.pipeline.sharing.newest_ts == now
            want = oracle(events, s, now)
            assert sum(len(v) for v in want["covis"].values()) > 200  # not vacuous
            assert_view_equals_oracle(w.pipeline.sharing.view, want, now)
            # recent items per user, from each partition's state; forgotten users start over
            recent = {u: st.signals.recent.get(u) for st in w.pipeline.profiles.partitions()
                      for u in st.signals.recent.users()}
            assert recent == want["recent"]
            forget_ts = {e["user_id"]: e["ts"] for e in log if e["type"] == "forget"}
            for u in facts["forgotten"]:
                assert all(t > forget_ts[u] for t, _, _ in recent.get(u, []))
            # everything the view holds was published, and the topic's compacted view equals it
            await w.pipeline.publish_signals()
            topic = SignalView(s.signal_params())
            for key, value in w.signals.compacted().items():
                d = decode_partial(key, value)
                assert d is not None
                topic.put_pop(d[0], d[1], d[2])
                topic.put_covis(d[0], d[1], d[3])
            assert_view_equals_oracle(topic, want, now)

    asyncio.run(main())


def test_forget_erases_the_users_recent_items(tmp_path) -> None:
    s = settings(tmp_path)
    t0 = 1_700_000_000_000

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items([{"item_id": f"i{i}", "title": f"item {i}"} for i in range(3)])
            await w.events([{"event_id": f"e{i}", "user_id": "u", "type": "view",
                             "ts": t0 + i, "item_id": f"i{i}"} for i in range(2)])
            st = w.pipeline.profiles.owner("u")
            assert st is not None and "u" in st.signals.recent
            await w.events([{"event_id": "f", "user_id": "u", "type": "forget", "ts": t0 + 5}])
            assert "u" not in st.signals.recent
            assert "recent" in st.to_dict()["signals"] and "u" not in \
                st.to_dict()["signals"]["recent"]["users"]
            # the item-level aggregates (no user id) stay; a new event pairs with nothing old
            await w.events([{"event_id": "e9", "user_id": "u", "type": "view", "ts": t0 + 9,
                             "item_id": "i2"}])
            view = w.pipeline.sharing.view
            assert [n for n, _ in view.neighbours("i0", t0 + 9)] == ["i1"]
            assert view.neighbours("i2", t0 + 9) == []

    asyncio.run(main())


def test_snapshot_round_trip_and_restart_equal_no_restart(tmp_path) -> None:
    items, log, parked, facts = scripted_log()
    half = (len(log) // 2 // BATCH) * BATCH

    async def run_once(folder: Path, restart: bool) -> tuple[dict, dict, SignalView]:
        s = settings(folder)
        w = InProcessWorker(s, HashingEncoder(DIM))
        await w.__aenter__()
        await w.items(items)
        for i in range(0, half, BATCH):
            await w.events(log[i:i + BATCH])
        if restart:
            w2 = await w.restart()
            await w.pipeline.publish_signals()  # nothing left: restart() snapshotted it all
            w = w2
        for i in range(half, len(log), BATCH):
            await w.events(log[i:i + BATCH])
        await w.events(parked)
        await w.items(facts["late_items"])
        await w.pipeline.resolve_parked()
        await w.pipeline.publish_signals()
        states = {p: st.signals.state() for p, st in w.pipeline.states.items()}
        await w.__aexit__(None, None, None)
        return states, w.signals.compacted(), w.pipeline.sharing.view

    async def main() -> None:
        plain, topic_plain, view_plain = await run_once(tmp_path / "a", restart=False)
        again, topic_again, view_again = await run_once(tmp_path / "b", restart=True)
        assert plain.keys() == again.keys()
        for p in plain:
            for part in ("popularity", "recent", "covis"):
                for key, value in plain[p][part].items():
                    np.testing.assert_array_equal(np.asarray(again[p][part][key]),
                                                  np.asarray(value), err_msg=f"{p} {part} {key}")
        assert topic_again == topic_plain  # the compacted topic ends the same
        now = max(e["ts"] for e in log + parked if e.get("item_id"))
        # the view sums partials in partition order: the same whatever order they arrived in
        assert view_again.trending(now, 10) == view_plain.trending(now, 10)
        for item in view_plain.items():
            assert view_again.neighbours(item, now) == view_plain.neighbours(item, now)

    asyncio.run(main())


def test_a_snapshot_without_signals_loads_with_empty_signals(tmp_path) -> None:
    s = settings(tmp_path)
    st = PartitionState.empty(0, 4, s.profile_params(), s.bandit_params(), 10, "m",
                              sp=s.signal_params())
    st.signals.apply(["u"], ["i"], [1], ["view"])
    d = st.to_dict()
    assert PartitionState.from_dict(d, 4, s.profile_params(), s.bandit_params(), 10,
                                    sp=s.signal_params()).signals.popularity.items() == ["i"]
    del d["signals"]
    back = PartitionState.from_dict(d, 4, s.profile_params(), s.bandit_params(), 10,
                                    sp=s.signal_params())
    assert back.signals.popularity.items() == [] and len(back.signals.recent) == 0


def test_two_workers_merged_through_the_topic_equal_one(tmp_path) -> None:
    items, log, parked, facts = scripted_log()
    s = settings(tmp_path)

    async def main() -> None:
        source = Source(s.partitions)
        records = source.records(log)
        enc = HashingEncoder(DIM)
        one = InProcessWorker(s.replace(state_dir=str(tmp_path / "one")), enc)
        left = InProcessWorker(s.replace(state_dir=str(tmp_path / "left")), enc,
                               partitions=[0, 1])
        right = InProcessWorker(s.replace(state_dir=str(tmp_path / "right")), enc,
                                partitions=[2, 3])
        workers = (one, left, right)
        for w in workers:
            await w.__aenter__()
            await w.items(items + facts["late_items"])
        for i in range(0, len(records), BATCH):
            batch = records[i:i + BATCH]
            await one.pipeline.process(batch)
            await left.pipeline.process([r for r in batch if r.partition in (0, 1)])
            await right.pipeline.process([r for r in batch if r.partition in (2, 3)])
        for w in workers:
            await w.pipeline.publish_signals()
        assert left.signals.messages and right.signals.messages
        left.pipeline.sharing.receive(right.signals.records())
        right.pipeline.sharing.receive(left.signals.records())
        # its own partitions' records come back through the topic too: skipped, not applied
        assert left.pipeline.sharing.receive(left.signals.records()) == 0
        now = one.pipeline.sharing.newest_ts
        assert left.pipeline.sharing.newest_ts == right.pipeline.sharing.newest_ts == now
        names = one.pipeline.sharing.view.items()
        want_pop = one.pipeline.sharing.view.popularity(names, now)
        for w in (left, right):
            view = w.pipeline.sharing.view
            assert sorted(view.items()) == sorted(names)
            # bit for bit: each partition's partials are the same, summed in partition order
            for got, exp in zip(view.popularity(names, now), want_pop):
                np.testing.assert_array_equal(got, exp)
            assert view.trending(now, 10) == one.pipeline.sharing.view.trending(now, 10)
            for item in names:
                assert view.neighbours(item, now, 1000) == \
                    one.pipeline.sharing.view.neighbours(item, now, 1000), item
        for w in workers:
            await w.__aexit__(None, None, None)

    asyncio.run(main())


def test_partials_survive_the_wire_exactly() -> None:
    pop = (1_700_000_000_123, 0.1 + 0.2, 1 / 3, 7)
    covis = (1_700_000_000_000, ["a", "b:c"], [math.pi, 1e-300])
    key, value = encode_partial(3, "it:em", pop, covis)
    assert key == b"3:it:em"
    assert decode_partial(key, value) == (3, "it:em", pop, (covis[0], covis[1], covis[2]))
    assert decode_partial(b"3:x", None) == (3, "x", None, None)
    for bad_key, bad_value in ((None, value), (b"x:y", value), (b"3", value), (b"3:x", b"{")):
        assert decode_partial(bad_key, bad_value) is None


class WorkerPeers:
    """The other in-process workers as :class:`stream.serve.queries.Peers` (bandit partials)."""

    def __init__(self, others: list[Any]) -> None:
        self.others = others

    async def gather_search(self, vector: list[float], k: int, exclude: list[str],
                            auth: str | None) -> list[tuple[str, float]]:
        return []

    async def gather_arms(self, arms: list[str], auth: str | None) -> list[dict[str, Any]]:
        return [q.local_arm_state(arms) for q in self.others]


def test_served_candidates_equal_the_offline_lists_on_one_and_two_workers(tmp_path) -> None:
    """Serving == evaluation in memory: /candidates (exploration off) of one worker, and of two
    workers merged through their published partials, equal the offline generate + ranker."""
    from stream.serve.queries import Queries
    from tests.offline_candidates import Offline

    ds = generate(users=40, items=30, events=1200, seed=9)
    s = settings(tmp_path, explore_weight=0.0)
    enc = HashingEncoder(DIM)

    async def main() -> None:
        source = Source(s.partitions)
        records = source.records(ds.events)
        one = InProcessWorker(s.replace(state_dir=str(tmp_path / "one")), enc)
        left = InProcessWorker(s.replace(state_dir=str(tmp_path / "left")), enc,
                               partitions=[0, 1])
        right = InProcessWorker(s.replace(state_dir=str(tmp_path / "right")), enc,
                                partitions=[2, 3])
        for w in (one, left, right):
            await w.__aenter__()
            await w.items(ds.items)
        for i in range(0, len(records), 97):
            batch = records[i:i + 97]
            await one.pipeline.process(batch)
            await left.pipeline.process([r for r in batch if r.partition in (0, 1)])
            await right.pipeline.process([r for r in batch if r.partition in (2, 3)])
        for w in (left, right):
            await w.pipeline.publish_signals()
        left.pipeline.sharing.receive(right.signals.records())
        right.pipeline.sharing.receive(left.signals.records())
        q_one = Queries(one.pipeline)
        q_left, q_right = Queries(left.pipeline), Queries(right.pipeline)
        q_left.peers, q_right.peers = WorkerPeers([q_right]), WorkerPeers([q_left])
        offline = Offline(ds.events, ds.items, s, enc, q_one.ranker)
        assert offline.now == one.pipeline.sharing.newest_ts == left.pipeline.sharing.newest_ts
        users = sorted({e["user_id"] for e in ds.events})[::3] + ["never-seen"]
        sources: set[str] = set()
        for user in users:
            want = offline.candidates(user, 20)
            got = await q_one.candidates(user, 20)
            owner = q_left if offline.partition.get(user, 0) in (0, 1) else q_right
            two = await owner.candidates(user, 20)
            for served in (got, two):
                # the same items in the same order; scores equal up to float64 rounding (the
                # worker's state is summed batch by batch, the offline state in one step)
                assert [c["item_id"] for c in served["candidates"]] == [i for i, _ in want], user
                np.testing.assert_allclose([c["score"] for c in served["candidates"]],
                                           [v for _, v in want], rtol=1e-6, atol=0)
            sources.update(src for c in got["candidates"] for src in c["sources"])
        assert sources == {"content", "covis", "trending"}
        served = one.pipeline.metrics.registry.get_sample_value(
            "profiles_candidates_total", {"source": "trending"})
        assert served is not None and served > 0
        for w in (one, left, right):
            await w.__aexit__(None, None, None)

    asyncio.run(main())


@pytest.mark.parametrize("purchased", ["exclude", "buy_again"])
def test_bought_items_are_excluded_or_served_as_buy_again(tmp_path, purchased: str) -> None:
    from stream.serve.queries import Queries

    s = settings(tmp_path, purchased_items=purchased, explore_weight=0.0)
    t0 = 1_700_000_000_000

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items([{"item_id": f"i{i}", "title": f"coffee beans {i}",
                            "category": "coffee"} for i in range(4)])
            await w.events([
                {"event_id": "e1", "user_id": "u", "type": "purchase", "ts": t0, "item_id": "i1"},
                {"event_id": "e2", "user_id": "u", "type": "view", "ts": t0 + 1, "item_id": "i2"},
                {"event_id": "e3", "user_id": "v", "type": "view", "ts": t0 + 2, "item_id": "i1"},
                {"event_id": "e4", "user_id": "v", "type": "view", "ts": t0 + 3, "item_id": "i3"}])
            got = {c["item_id"]: c["sources"] for c in
                   (await Queries(w.pipeline).candidates("u", 10))["candidates"]}
            if purchased == "exclude":
                assert "i1" not in got and got  # today's behaviour: never serve a bought item
            else:
                assert "buy_again" in got["i1"]

    asyncio.run(main())


def test_a_failed_publish_is_sent_again_and_revocation_publishes_what_is_pending(tmp_path) -> None:
    s = settings(tmp_path)
    t0 = 1_700_000_000_000

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items([{"item_id": f"i{i}", "title": f"item {i}"} for i in range(3)])
            recs = await w.events([{"event_id": f"e{i}", "user_id": "u", "type": "view",
                                    "ts": t0 + i, "item_id": f"i{i}"} for i in range(3)])
            p = recs[0].partition
            w.signals.fail = ConnectionError("broker down")
            with pytest.raises(ConnectionError):
                await w.pipeline.publish_signals()
            assert w.pipeline.sharing.pending_count() == 3 and not w.signals.messages
            w.signals.fail = None
            assert await w.pipeline.publish_signals() == 3
            assert sorted(w.signals.compacted()) == [f"{p}:i{i}".encode() for i in range(3)]
            await w.events([{"event_id": "e9", "user_id": "u", "type": "click", "ts": t0 + 9,
                             "item_id": "i0"}])
            await w.pipeline.revoke([p])  # published on the way out, then dropped
            assert w.pipeline.sharing.pending_count() == 0 and len(w.signals.messages) > 3
            assert decode_partial(*w.signals.messages[-1])[0] == p

    asyncio.run(main())


def test_the_worker_serves_with_a_ranker_directory_and_its_tuned_pools(tmp_path) -> None:
    """PROFILES_RANKER_DIR: the saved ranker scores, its "hybrid" entry sets the pools; a bad
    directory is one StateError."""
    from stream.core.errors import StateError
    from stream.core.hybrid import FEATURES
    from stream.core.ranker import linear_ranker
    from stream.serve.queries import Queries

    folder = tmp_path / "ranker"
    linear_ranker({f: (1.0 if f == "pop_short" else 0.0) for f in FEATURES}).save(
        folder, trained_on="test", hybrid={"trending_k": 2, "sources": ["trending"]})
    s = settings(tmp_path, ranker_dir=str(folder), explore_weight=0.0)

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items([{"item_id": f"i{i}", "title": f"item {i}"} for i in range(4)])
            await w.events([{"event_id": f"e{i}", "user_id": f"u{i}", "type": "view",
                             "ts": 1_700_000_000_000, "item_id": f"i{i % 3}"}
                            for i in range(5)])
            q = Queries(w.pipeline)
            assert q.hybrid.trending_k == 2 and q.hybrid.sources == ("trending",)
            got = await q.candidates("u0", 10)
            assert [c["item_id"] for c in got["candidates"]] == ["i0", "i1"]
            assert q.stats()["ranker"]["trained_on"] == "test"
        with pytest.raises(StateError, match="ranker directory"):
            Queries(InProcessWorker(s.replace(ranker_dir=str(tmp_path / "nope")),
                                    HashingEncoder(DIM)).pipeline)

    asyncio.run(main())
