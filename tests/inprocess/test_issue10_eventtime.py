"""Issue 10, point 3: event time cannot be hijacked (in-process, stream.worker.testing).

An event is refused ``ts_in_future`` when its time is more than ``PROFILES_MAX_FUTURE_MS``
after the earlier of its Kafka timestamp and the worker's clock (a producer sets the Kafka
CreateTime, so it is not trusted alone; a record without one is judged by the clock alone).
The TTL cuts at a per-partition watermark, the ``PROFILES_TTL_WATERMARK_RANK``-th largest event
time applied, which no single event (nor fewer than that many) can move."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from stream.worker.testing import InProcessWorker
from tests.inprocess.test_pipeline import run
from tests.oracle import oracle_profiles

pytestmark = pytest.mark.inprocess

T = 1_700_000_000_000  # the ManualClock's default wall time, in ms
DAY = 86_400_000
Y2100 = 4_102_444_800_000
DIM = 32
ITEMS = [{"item_id": f"i{i}", "title": f"{c} item {i}", "category": c}
         for i, c in enumerate(["shoes", "shoes", "tents", "tents", "coffee", "coffee"])]


def ev(eid: str, user: str, etype: str = "view", ts: int = T, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"event_id": eid, "user_id": user, "type": etype, "ts": ts}
    if "item_id" not in kw:
        out["item_id"] = "i0"
    out.update(kw)
    return out


def item_vectors(w: InProcessWorker) -> dict[str, np.ndarray]:
    ids = [it["item_id"] for it in ITEMS]
    vecs, missing = w.pipeline.catalog.vectors(ids)
    assert not missing
    return dict(zip(ids, vecs))


# ---------------------------------------------------------------- bounds at ingest
@pytest.mark.parametrize("kafka_ts", [0, -1])
def test_a_record_without_kafka_timestamp_is_judged_by_the_clock(tmp_path, kafka_ts) -> None:
    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "u1", ts=T - DAY)], timestamp_ms=kafka_ts)
        assert w.dead_letters.reasons() == {}
        assert w.pipeline.profiles.owner("u1") is not None
        await w.events([ev("e2", "u1", ts=Y2100)], timestamp_ms=kafka_ts)
        assert w.dead_letters.reasons() == {"ts_in_future": 1}

    run(tmp_path, body)


def test_a_forged_kafka_time_does_not_let_a_future_event_freeze_a_profile(tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        # a producer stamps its record with a year-2100 CreateTime
        await w.events([ev("v1", "u1", ts=T - 1, item_id="i4")])
        await w.events([ev("f1", "u1", ts=Y2100)], timestamp_ms=Y2100)
        await w.events([ev("p1", "u1", "purchase", ts=T, item_id="i2")])
        got = w.pipeline.profiles.vector("u1")
        assert got is not None
        want = oracle_profiles([ev("v1", "u1", ts=T - 1, item_id="i4"),
                                ev("p1", "u1", "purchase", ts=T, item_id="i2")],
                               item_vectors(w), {}, w.pipeline.pp.weights,
                               w.pipeline.pp.half_life_ms)["u1"]
        np.testing.assert_allclose(got, want, atol=1e-5)  # the purchase counts
        assert w.dead_letters.reasons() == {"ts_in_future": 1}

    run(tmp_path, body)


def test_a_future_event_does_not_move_the_bandit_discount_anchor(tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        await w.events([ev("a1", "u1", ts=T, arm="A")])
        p = w.pipeline.profiles.owner("u1")
        assert p is not None
        await w.events([ev("f1", "u1", ts=Y2100, arm="A")], timestamp_ms=Y2100)
        await w.events([ev("a2", "u1", ts=T + 1, arm="A")])
        arms = w.pipeline.states[p.partition].arms
        assert arms.anchor is not None and arms.anchor <= T + DAY
        imp, _rew = arms.counts("A")
        assert imp > 1.9  # both views at T count (about 1 each), not 2^(-(2100 - T)/H)

    run(tmp_path, body, bandit_half_life_ms=DAY)


# ---------------------------------------------------------------- the TTL watermark
def test_one_future_event_does_not_expire_a_partition(tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        await w.events([ev(f"e{i}", f"u{i}", ts=T) for i in range(5)], partition=0)
        # within the allowed skew (a day), an hour and more past every other event
        await w.events([ev("x1", "skewed", ts=T + DAY // 2)], partition=0)
        assert await w.pipeline.expire() == 0
        # nor does a parked one (its item is not in the catalogue yet)
        await w.events([ev("x2", "parker", ts=T + DAY // 2, item_id="later")], partition=0)
        assert await w.pipeline.expire() == 0
        assert all(w.pipeline.profiles.owner(f"u{i}") for i in range(5))

    run(tmp_path, body, profile_ttl_ms=3_600_000, ttl_watermark_rank=3)


def test_the_watermark_moves_with_enough_events_and_survives_a_restart(tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "idle", ts=T), ev("e2", "busy", ts=T)], partition=0)
        await w.events([ev(f"l{i}", f"late{i}", ts=T + 3_600_001) for i in range(2)],
                       partition=0)
        assert await w.pipeline.expire() == 0  # two events: below the rank of 3
        w2 = await w.restart()
        await w2.events([ev("l2", "busy", ts=T + 3_600_001)], partition=0)
        assert await w2.pipeline.expire() == 1  # the third: idle goes
        assert w2.pipeline.profiles.owner("idle") is None
        assert w2.pipeline.profiles.owner("busy") is not None
        await w2.pipeline.encoder_service.stop()

    run(tmp_path, body, profile_ttl_ms=3_600_000, ttl_watermark_rank=3)


# ---------------------------------------------------------------- historic replay
RANK = 5
TTL = 30 * DAY
T1997 = 852_076_800_000  # 1997-01-01, MovieLens 100K's era


def oracle_with_ttl(w: InProcessWorker, batches: list[list[dict[str, Any]]], rank: int,
                    ttl: int) -> tuple[dict[str, np.ndarray], set[str]]:
    """Offline: per partition, after each batch the watermark is the rank-th largest event
    time seen; users whose newest event is older than watermark - ttl are dropped with all
    their events so far.  Returns the profiles of the survivors and who was ever dropped."""
    from stream.worker.testing import partition_of

    kept: dict[str, list[dict[str, Any]]] = defaultdict(list)
    times: dict[int, list[int]] = defaultdict(list)
    dropped: set[str] = set()
    for batch in batches:
        for e in batch:
            kept[e["user_id"]].append(e)
            times[partition_of(e["user_id"].encode(), 4)].append(e["ts"])
        for p, ts in times.items():
            if len(ts) < rank:
                continue
            wm = sorted(ts, reverse=True)[rank - 1]
            for u in [u for u, evs in kept.items()
                      if partition_of(u.encode(), 4) == p and evs
                      and max(x["ts"] for x in evs) < wm - ttl]:
                del kept[u]
                dropped.add(u)
    events = [e for evs in kept.values() for e in evs]
    return oracle_profiles(events, item_vectors(w), {}, w.pipeline.pp.weights,
                           w.pipeline.pp.half_life_ms), dropped


def test_a_historic_log_replays_with_a_ttl_like_the_oracle(tmp_path) -> None:
    rng = np.random.default_rng(7)
    log: list[dict[str, Any]] = []
    for i in range(400):  # a year of 1997, users coming and going
        user = f"m{int(rng.integers(0, 40))}"
        t = T1997 + i * DAY // 1  # one event a day, in order
        log.append(ev(f"h{i}", user, str(rng.choice(["view", "click", "purchase"])), ts=t,
                      item_id=f"i{int(rng.integers(0, 6))}"))
    # one rogue event dated 2020 (before the replay's Kafka time, so valid) in the middle
    log.insert(200, ev("rogue", "m3", ts=1_580_000_000_000, item_id="i1"))
    batches = [log[i:i + 25] for i in range(0, len(log), 25)]

    async def body(w: InProcessWorker) -> None:
        want, dropped = oracle_with_ttl(w, batches, RANK, TTL)
        assert dropped and len(want) > 5  # the TTL does something, and not everything
        for b in batches:
            await w.events(b)  # Kafka time: the replay's, i.e. now
            await w.pipeline.expire()
        assert w.dead_letters.reasons() == {}
        got = {u for st in w.pipeline.profiles.partitions() for u in st.profiles.users()}
        assert got == set(want)
        for u, v in want.items():
            np.testing.assert_allclose(w.pipeline.profiles.vector(u), v, atol=1e-5)

    run(tmp_path, body, profile_ttl_ms=TTL, ttl_watermark_rank=RANK)
