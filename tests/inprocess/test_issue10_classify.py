"""Issue 10 through the in-process worker: dedupe by (user, event_id), parked events that count
once and wait only while a worker is up with its catalogue caught up, parked events bounded in
bytes, ids bounded in bytes, per-context arm counts summed over every worker."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from encoder.fake import HashingEncoder
from stream.serve.queries import Queries
from stream.settings import Settings
from stream.worker.testing import InProcessWorker
from tests.inprocess.test_pipeline import DIM, ITEMS, T, ev, outcomes
from tests.inprocess.test_state_compat import FIXTURE
from tests.inprocess.test_state_compat import _settings as compat_settings

pytestmark = pytest.mark.inprocess


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings.from_env({}, state_dir=str(tmp_path / "state"), **kw)


def run(tmp_path: Path, body: Callable[[InProcessWorker], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with InProcessWorker(_settings(tmp_path, **kw), HashingEncoder(DIM)) as w:
            await w.items(ITEMS)
            await body(w)

    asyncio.run(main())


def impressions(w: InProcessWorker, arm: str) -> float:
    return sum(st.arms.counts(arm)[0] for st in w.pipeline.profiles.partitions())


async def replay(w: InProcessWorker, user: str) -> None:
    """What `profiles dlq replay` does with the last dead letter: its value, back to its source
    partition."""
    dl = w.dead_letters.records[-1]
    assert dl.value is not None
    await w.events([dl.value], key=user.encode(),
                   partition=int(dl.headers["source_partition"]))


# ------------------------------------------------------------------ point 4

@pytest.mark.parametrize("secret", ["", "s3cret"])
def test_the_same_event_id_of_two_users_in_one_partition_applies_for_both(tmp_path,
                                                                           secret) -> None:
    async def body(w: InProcessWorker) -> None:
        pseudo = w.pipeline.pseudonymize
        await w.events([ev("e2", "carol"), ev("e2", "bob")], partition=0)  # one batch
        await w.events([ev("e3", "carol")], partition=0)
        await w.events([ev("e3", "bob")], partition=0)  # a later batch
        assert w.pipeline.profiles.owner(pseudo("bob")) is w.pipeline.states[0]
        # re-sent (new offsets, same user and id): still duplicates
        await w.events([ev("e2", "bob"), ev("e3", "carol"), ev("e2", "bob")], partition=0)
        assert outcomes(w) == {("view", "applied"): 4, ("view", "duplicate"): 3}

    run(tmp_path, body, id_secret=secret)


# ------------------------------------------------------------------ point 15

def test_a_re_added_event_id_stays_a_whole_window(tmp_path) -> None:
    """A parked event dead-lettered (its id discarded) and replayed (re-added) is a duplicate
    for a whole window after the replay, not only until its first entry would have left."""
    async def body(w: InProcessWorker) -> None:
        await w.events([ev("x", "u1", item_id="late")], partition=0)
        w.clock.advance(61.0)
        await w.pipeline.resolve_parked()
        assert w.dead_letters.reasons() == {"unknown_item": 1}
        await w.items([{"item_id": "late", "title": "late"}])
        await replay(w, "u1")  # applied: x is back in the window
        await w.events([ev("y", "u1"), ev("z", "u1")], partition=0)  # window 3: x, y, z
        await replay(w, "u1")  # x once more: a duplicate
        assert outcomes(w)[("view", "duplicate")] == 1
        assert outcomes(w)[("view", "applied")] == 3

    run(tmp_path, body, dedupe_window=3)


class _Peers:
    """The other workers, answering as their /internal/arms route would (JSON round trip)."""

    def __init__(self, *others: Queries) -> None:
        self.others = others

    async def gather_search(self, vector: list[float], k: int, exclude: list[str],
                            auth: str | None) -> list[tuple[str, float]]:
        return []

    async def gather_arms(self, arms: list[str], auth: str | None) -> list[dict[str, Any]]:
        return [orjson.loads(orjson.dumps(q.local_arm_state(arms))) for q in self.others]


def test_context_arm_counts_sum_every_worker(tmp_path) -> None:
    s = _settings(tmp_path, bandit_context="position")

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM), partitions=[0, 1]) as w1, \
                InProcessWorker(s, HashingEncoder(DIM), partitions=[2, 3]) as w2:
            for w in (w1, w2):
                await w.items(ITEMS)
            await w1.events([ev("a", "u1", "view", item_id="i0", position=2),
                             ev("b", "u1", "click", item_id="i0", position=2)], partition=0)
            await w2.events([ev("c", "u2", "view", item_id="i0", position=2),
                             ev("d", "u2", "view", item_id="i0", position=5)], partition=2)
            q1 = Queries(w1.pipeline, peers=_Peers(Queries(w2.pipeline)))
            got = await q1.arm("i0", context="2")
            assert (got["impressions"], got["rewards"]) == (2.0, 1.0)
            assert (await q1.arm("i0", context="5"))["impressions"] == 1.0  # only the peer's
            assert (await q1.arm("i0"))["impressions"] == 3.0

    asyncio.run(main())


# ------------------------------------------------------------------ point 5

def test_a_parked_event_dead_lettered_then_replayed_counts_once_in_the_bandit(tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "u1", "view", item_id="new", arm="A")], partition=0)
        w.clock.advance(61.0)
        await w.pipeline.resolve_parked()
        assert w.dead_letters.reasons() == {"unknown_item": 1}
        await w.items([{"item_id": "new", "title": "a new tent"}])
        await replay(w, "u1")
        assert w.pipeline.profiles.owner("u1") is not None
        assert impressions(w, "A") == 1.0
        # parked, then applied when its item arrives: counted once, when applied
        await w.events([ev("e2", "u1", "view", item_id="newer", arm="B")], partition=0)
        assert impressions(w, "B") == 0.0
        await w.items([{"item_id": "newer", "title": "a newer tent"}])
        await w.pipeline.resolve_parked()
        assert impressions(w, "B") == 1.0 and w.pipeline.summary()["parked"] == 0

    run(tmp_path, body)


def test_a_parked_event_dead_lettered_then_replayed_is_charged_once_by_the_rate_cap(
        tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "u1", item_id="new", ts=T)], partition=0)
        w.clock.advance(61.0)
        await w.pipeline.resolve_parked()
        await w.items([{"item_id": "new", "title": "a new tent"}])
        await replay(w, "u1")
        assert w.dead_letters.reasons() == {"unknown_item": 1}  # not rate_limited
        assert w.pipeline.profiles.owner("u1") is not None
        await w.events([ev("e2", "u1", ts=T + 1)], partition=0)  # the cap (1) is used
        assert w.dead_letters.reasons() == {"unknown_item": 1, "rate_limited": 1}

    run(tmp_path, body, rate_limit_events=1, rate_limit_window_ms=3_600_000)


def test_a_parked_event_of_a_snapshot_from_before_counts_once(tmp_path) -> None:
    """The fixture's snapshot (code before the restructuring) holds bob's view of unknown item
    i9, counted in the bandit when it parked.  Dead-lettered, it gives the count back; replayed,
    it counts once.  Its bare event id is in the old dedupe list: the replay is not a
    duplicate."""
    state = tmp_path / "state"
    shutil.copytree(FIXTURE, state)

    async def main() -> None:
        async with InProcessWorker(compat_settings(state), HashingEncoder(16)) as w:
            pipe, st = w.pipeline, w.pipeline.states[0]
            before = st.arms.counts("i9")[0]
            assert before > 0.99 and len(st.parked) == 1
            pipe.catalog.caught_up.set()
            await pipe.resolve_parked()
            assert len(st.parked) == 1  # its old wall-clock wait is not trusted: a full one
            w.clock.advance(61.0)
            await pipe.resolve_parked()
            assert w.dead_letters.reasons() == {"unknown_item": 1}
            assert abs(st.arms.counts("i9")[0]) < 1e-9
            w.source.next_offset.update({0: 5, 1: 4})
            await w.items([{"item_id": "i9", "title": "item 9"}])
            await replay(w, "bob")
            assert pipe.profiles.owner("bob") is st
            assert st.arms.counts("i9")[0] == pytest.approx(before, rel=1e-12)

    asyncio.run(main())


async def _down_and_up(w: InProcessWorker, downtime_s: float) -> InProcessWorker:
    """A clean shutdown, ``downtime_s`` with no worker, then a new worker on the same state and
    clock whose catalogue has not caught up yet."""
    await w.pipeline.snapshot(everything=True)
    await w.pipeline.encoder_service.stop()
    w.clock.advance(downtime_s)
    up = InProcessWorker(w.settings, w.pipeline.encoder, clock=w.clock,
                         dead_letters=w.dead_letters, source=w.source)
    await up.__aenter__()
    return up


def test_park_timeouts_do_not_count_the_workers_downtime(tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "u1", item_id="late")], partition=0)
        w.clock.advance(30.0)
        await w.pipeline.resolve_parked()
        up = await _down_and_up(w, 3600.0)
        try:
            up.pipeline.catalog.caught_up.set()
            await up.pipeline.resolve_parked()
            assert up.pipeline.summary()["parked"] == 1 and w.dead_letters.reasons() == {}
            up.clock.advance(29.0)  # 59 s waited with a worker up
            await up.pipeline.housekeeping(lambda p: None)
            assert up.pipeline.summary()["parked"] == 1
            up.clock.advance(2.0)
            await up.pipeline.housekeeping(lambda p: None)
            assert w.dead_letters.reasons() == {"unknown_item": 1}
        finally:
            await up.__aexit__(None, None, None)

    run(tmp_path, body)


def test_parked_events_wait_for_the_catalogue_to_catch_up_after_a_restart(tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "u1", item_id="late")], partition=0)
        up = await _down_and_up(w, 10.0)
        try:
            up.clock.advance(300.0)  # the catalogue feed is still reading the items topic
            await up.pipeline.housekeeping(lambda p: None)
            assert up.pipeline.summary()["parked"] == 1 and w.dead_letters.reasons() == {}
            # it reaches the item published while the worker was down
            await up.items([{"item_id": "late", "title": "late"}])
            await up.pipeline.housekeeping(lambda p: None)
            assert up.pipeline.profiles.owner("u1") is not None
            assert up.pipeline.summary()["parked"] == 0 and w.dead_letters.reasons() == {}
        finally:
            await up.__aexit__(None, None, None)

    run(tmp_path, body)


# ------------------------------------------------------------------ point 11

def test_parked_events_are_bounded_in_bytes(tmp_path) -> None:
    big = "q" * 1000  # ~1.09 KB messages: each parked event costs 2 x its bytes + 320

    async def body(w: InProcessWorker) -> None:
        for i in range(4):
            await w.events([ev(f"e{i}", f"u{i}", item_id=f"x{i}", pad=big)], partition=0)
            w.clock.advance(1.0)
        # the oldest overflow as soon as the batch that went over is applied
        assert w.dead_letters.reasons() == {"park_overflow": 2}
        assert [orjson.loads(d.value or b"")["event_id"] for d in w.dead_letters.records] == \
            ["e0", "e1"]
        assert b"bytes" in w.dead_letters.records[0].headers["detail"]
        parked = w.pipeline.metrics.registry.get_sample_value("profiles_parked_bytes",
                                                              {"partition": "0"})
        assert parked is not None and 2 * (2 * 1000 + 320) <= parked <= 6000
        assert w.pipeline.summary()["parked"] == 2

    run(tmp_path, body, parked_max_bytes=6000)


def test_an_id_longer_than_max_id_bytes_is_dead_lettered(tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "\U0001F600" * 100), ev("e2", "u2", item_id="i" * 300),
                        ev("e" * 300, "u3")], partition=0)
        assert w.dead_letters.reasons() == {"oversized": 3}
        assert len(w.pipeline.states[0].profiles) == 0
        details = [d.headers["detail"] for d in w.dead_letters.records]
        assert details[0] == b"field 'user_id' is 400 bytes, more than 256 (PROFILES_MAX_ID_BYTES)"

    run(tmp_path, body)


@pytest.mark.parametrize("secret", ["", "s3cret"])
def test_an_over_long_user_id_never_becomes_a_state_key(tmp_path, secret) -> None:
    """A 60 KB user id (rejected oversized) names no user: not a dlq_keys key, not in the
    dead letter's key."""
    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "u" * 60_000)], key=b"k", partition=0)
        assert w.dead_letters.reasons() == {"oversized": 1}
        st = w.pipeline.states[0]
        assert st.dlq_keys == {} and w.dead_letters.records[0].key == b"?/0/0"

    run(tmp_path, body, id_secret=secret)


@pytest.mark.parametrize("secret", ["", "s3cret"])
def test_dead_letter_references_per_user_are_bounded(tmp_path, secret) -> None:
    """Issue 10 point 11: the state remembers each user's DLQ keys for erasure, so one user
    sending bad records without end would grow it without bound.  Beyond
    PROFILES_DLQ_REFS_PER_USER per partition, that user's dead letters are stored anonymous (no
    value, no user: nothing to erase), counted; other users are untouched."""
    async def body(w: InProcessWorker) -> None:
        bad = [{"event_id": f"b{i}", "user_id": "flood", "type": "teleport", "ts": T}
               for i in range(5)]
        await w.events([*bad, {"event_id": "c1", "user_id": "calm", "type": "teleport",
                               "ts": T}], partition=0)
        st = w.pipeline.states[0]
        flood = w.pipeline.pseudonymize("flood")
        assert len(st.dlq_keys[flood]) == 2  # the bound
        assert len(st.dlq_keys[w.pipeline.pseudonymize("calm")]) == 1
        recs = w.dead_letters.records
        assert len(recs) == 6 and all(dict(r.headers)["reason"] == b"unknown_type" for r in recs)
        anon = [r for r in recs if r.key.startswith(b"?/")]
        assert len(anon) == 3 and all(r.value is None for r in anon)
        assert all(flood.encode() not in (r.value or b"") and b"flood" not in (r.value or b"")
                   for r in anon)
        dropped = w.pipeline.metrics.registry.get_sample_value(
            "profiles_dlq_values_dropped_total")
        assert dropped == 3
        # a forget tombstones exactly the remembered ones
        await w.events([{"event_id": "f", "user_id": "flood", "type": "forget", "ts": T + 1}],
                       partition=0)
        assert flood not in st.dlq_keys

    run(tmp_path, body, dlq_refs_per_user=2, id_secret=secret)
