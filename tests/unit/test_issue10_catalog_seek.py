"""Issue 10 point 8: the seek to the snapshot offset waits for the partition's load.

faust's recovery calls ``consumer.perform_seek()`` concurrently with the
``on_partitions_assigned`` signal; the signal's ``pipeline.assign`` waits for the pipeline's
lock, which the snapshot timer holds during a catalogue write.  The seek must not run first
and leave the partition at the committed offset (the records between the snapshot and the
commit would be skipped).  Driven through :func:`stream.kafka.app.wire` with a fake app and
consumer, in one event loop, without sleeps.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from encoder.fake import HashingEncoder
from stream.kafka.app import wire
from stream.settings import Settings
from stream.worker.pipeline import Pipeline
from stream.worker.testing import DeadLetters, ManualClock

COMMITTED = 20  # the consumer group's commit, ahead of the snapshot
SNAPSHOT = 10  # where partition 0's snapshot ends


class FakeSignal:
    def __init__(self) -> None:
        self.receivers: list[Any] = []

    def connect(self, fn: Any) -> None:
        self.receivers.append(fn)

    async def send(self, *args: Any) -> None:
        for fn in self.receivers:
            await fn(None, *args)


class FakeConsumer:
    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = set(assigned)
        self.position: dict[TP, int] = {}

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    async def perform_seek(self) -> None:  # faust's: every partition to its committed offset
        for tp in self.assigned:
            self.position[tp] = COMMITTED

    async def seek(self, tp: TP, offset: int) -> None:
        self.position[tp] = offset


class FakeApp:
    """What :func:`wire` uses of a faust app; decorators register and run nothing."""

    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer
        self.consumer_generation_id = 1
        self.rebalancing = False
        self.on_partitions_revoked = FakeSignal()
        self.on_partitions_assigned = FakeSignal()
        self.on_before_shutdown = FakeSignal()

    def agent(self, *a: Any, **kw: Any) -> Any:
        return lambda fn: fn

    def task(self, fn: Any) -> Any:
        return fn

    def timer(self, *a: Any, **kw: Any) -> Any:
        return lambda fn: fn


def _settings(tmp_path) -> Settings:
    return Settings.from_env({}, state_dir=str(tmp_path / "state"))


def _snapshot_partition0(tmp_path) -> None:
    """A former owner's snapshot of partition 0, ending at ``SNAPSHOT``."""
    pipe = Pipeline(_settings(tmp_path), HashingEncoder(8), dead_letters=DeadLetters(),
                    clock=ManualClock())

    async def run() -> None:
        await pipe.assign([0])
        pipe.states[0].next_offset = SNAPSHOT
        await pipe.snapshot(everything=True)

    asyncio.run(run())


def _wired(tmp_path) -> tuple[Pipeline, FakeApp, TP]:
    s = _settings(tmp_path)
    pipe = Pipeline(s, HashingEncoder(8), dead_letters=DeadLetters(), clock=ManualClock())
    tp = TP(s.events_topic, 0)
    app = FakeApp(FakeConsumer({tp}))

    async def noop() -> None:
        return None

    wire(app, SimpleNamespace(events_topic=None), s, pipe,  # type: ignore[arg-type]
         on_start=noop, on_stop=noop, ready=lambda: True)
    return pipe, app, tp


def test_seek_waits_for_the_load_while_the_snapshot_timer_holds_the_lock(tmp_path) -> None:
    _snapshot_partition0(tmp_path)
    pipe, app, tp = _wired(tmp_path)

    async def run() -> None:
        await pipe.lock.acquire()  # the snapshot timer, writing the catalogue
        assigned = asyncio.create_task(app.on_partitions_assigned.send({tp}))
        seek = asyncio.create_task(app.consumer.perform_seek())  # faust's recovery, meanwhile
        for _ in range(20):  # let both run as far as they can
            await asyncio.sleep(0)
        pipe.lock.release()
        await asyncio.wait_for(asyncio.gather(assigned, seek), timeout=10)
        assert pipe.states[0].next_offset == SNAPSHOT
        assert app.consumer.position[tp] == SNAPSHOT, (
            f"consumer reads partition 0 from {app.consumer.position[tp]}, its state covers "
            f"up to {SNAPSHOT}")

    asyncio.run(run())


def test_seek_after_the_load_goes_to_the_snapshot(tmp_path) -> None:
    _snapshot_partition0(tmp_path)
    pipe, app, tp = _wired(tmp_path)

    async def run() -> None:
        await app.on_partitions_assigned.send({tp})
        await app.consumer.perform_seek()
        assert app.consumer.position[tp] == SNAPSHOT

    asyncio.run(run())


def test_a_seek_between_revocation_and_the_new_assignment_loads_nothing(tmp_path) -> None:
    _snapshot_partition0(tmp_path)
    pipe, app, tp = _wired(tmp_path)

    async def run() -> None:
        await app.on_partitions_assigned.send({tp})
        await app.on_partitions_revoked.send({tp})  # eager rebalance: everything revoked
        assert 0 not in pipe.states
        await app.consumer.perform_seek()  # faust's getmany, flow stopped, old assignment
        assert 0 not in pipe.states  # not reloaded: the partition may be another worker's now
        app.consumer_generation_id = 2  # the new assignment arrives
        await app.consumer.perform_seek()
        assert 0 in pipe.states and app.consumer.position[tp] == SNAPSHOT

    asyncio.run(run())
