"""The timer's snapshots: one due partition per call, each at most every interval, and the
serialising cost kept under the budget (the interval stretches instead); offset gaps counted."""

from __future__ import annotations

import asyncio
import threading
import time

import orjson

from encoder.fake import HashingEncoder
from stream.settings import Settings
from stream.worker.pipeline import Pipeline
from stream.worker.records import Record
from stream.worker.testing import DeadLetters, ManualClock


def _pipeline(tmp_path, **settings) -> tuple[Pipeline, ManualClock]:
    s = Settings.from_env({}, state_dir=str(tmp_path / "state"), **settings)
    clock = ManualClock()
    pipe = Pipeline(s, HashingEncoder(8), dead_letters=DeadLetters(), clock=clock)
    for p in range(3):
        pipe.load_partition(p).next_offset = 10 + p
    return pipe, clock


def test_one_due_partition_per_call_and_each_at_most_every_interval(tmp_path) -> None:
    pipe, clock = _pipeline(tmp_path, snapshot_interval_s=10.0, snapshot_budget=1.0)

    async def run() -> None:
        pipe.schedule.dirty = {0, 1, 2}
        written = []
        for _ in range(3):
            assert await pipe.snapshot() == 1
            written.append({p for p in range(3) if pipe.store.covered(p) is not None})
            clock.advance(1.0)
        assert written == [{0}, {0, 1}, {0, 1, 2}]  # one per call, never-written first
        assert await pipe.snapshot() == 0  # nothing changed
        pipe.states[0].next_offset = 50
        pipe.schedule.dirty.add(0)
        assert await pipe.snapshot() == 0  # changed, but its snapshot is only 3 s old
        clock.advance(7.0)
        assert await pipe.snapshot() == 1 and pipe.store.covered(0) == 50
        pipe.states[1].next_offset = 60
        pipe.schedule.dirty.add(1)
        assert await pipe.snapshot(everything=True) == 3  # shutdown: all of them, now
        assert pipe.store.covered(1) == 60 and not pipe.schedule.dirty

    asyncio.run(run())


def test_serialising_cost_stretches_the_interval_to_the_budget(tmp_path) -> None:
    pipe, clock = _pipeline(tmp_path, snapshot_interval_s=0.5, snapshot_budget=0.01)
    dumps = pipe.store.capture

    def slow_dumps(st, extra=None):  # >= 20 ms of serialising: the next may start >= 2 s later
        time.sleep(0.02)
        return dumps(st, extra)

    pipe.store.capture = slow_dumps  # the part under the lock

    async def run() -> None:
        pipe.schedule.dirty = {0, 1, 2}
        assert await pipe.snapshot() == 1
        clock.advance(1.0)  # past the interval, not past the budget's pause
        assert await pipe.snapshot() == 0
        clock.advance(100.0)
        assert await pipe.snapshot() == 1

    asyncio.run(run())


def test_requests_are_answered_while_a_partition_serialises(tmp_path) -> None:
    """Serialising runs on a thread, under the lock: the event loop stays free for requests,
    and a batch waits until the snapshot is taken (the state cannot change under it)."""
    pipe, _clock = _pipeline(tmp_path, snapshot_budget=1.0)
    started, finished = threading.Event(), threading.Event()
    dumps = pipe.store.capture

    def slow_dumps(st, extra=None):
        started.set()
        time.sleep(0.3)
        finished.set()
        return dumps(st, extra)

    pipe.store.capture = slow_dumps  # the part under the lock
    before = pipe.states[0].next_offset
    ev = {"event_id": "e1", "user_id": "u1", "type": "view", "item_id": "unknown",
          "ts": 1_700_000_000_000}

    async def run() -> None:
        pipe.schedule.dirty = {0}
        snap = asyncio.ensure_future(pipe.snapshot())
        while not started.is_set():
            await asyncio.sleep(0.001)
        assert not finished.is_set()  # the loop has a turn while the partition serialises
        batch = asyncio.ensure_future(pipe.process([Record(0, before, 0, b"u1",
                                                           orjson.dumps(ev))]))
        assert await snap == 1
        await batch
        assert pipe.store.covered(0) == before  # serialised before the batch changed it
        assert pipe.states[0].next_offset == before + 1

    asyncio.run(run())


def test_a_record_past_the_next_offset_counts_as_an_offset_gap(tmp_path) -> None:
    """Offsets skipped between the state and a delivered record are counted (and alerted on)."""
    import orjson

    pipe, _clock = _pipeline(tmp_path)
    st = pipe.states[0]
    start = st.next_offset
    topic = pipe.s.events_topic

    def record(offset: int) -> Record:
        ev = {"event_id": f"e{offset}", "user_id": "u1", "type": "search", "query": "tent",
              "ts": 1_700_000_000_000 + offset}
        return Record(0, offset, 1_700_000_000_000, b"u1", orjson.dumps(ev))

    def gaps() -> float:
        return pipe.metrics.registry.get_sample_value(
            "profiles_offset_gaps_total", {"topic": topic, "partition": "0"}) or 0.0

    async def run() -> None:
        pipe.encoder_service.start()  # search events: their queries go through the encoder
        try:
            await pipe.process([record(start), record(start + 1)])
            assert gaps() == 0 and st.next_offset == start + 2
            await pipe.process([record(start + 5)])  # start+2 .. start+4 never arrived
            assert gaps() == 1 and st.next_offset == start + 6
        finally:
            await pipe.encoder_service.stop()

    asyncio.run(run())
