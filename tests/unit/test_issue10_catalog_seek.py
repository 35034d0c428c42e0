"""Issue 10 point 8 and issue 12: no partition is read before the seek to its snapshot's
offset, and the seek does not wait for the load.

faust's recovery calls ``consumer.perform_seek()`` concurrently with the
``on_partitions_assigned`` signal; the signal's ``pipeline.assign`` waits for the pipeline's
lock, which the snapshot timer holds during a catalogue write, or loads for tens of seconds.
The partition must not be read from the committed offset (the records between the snapshot and
the commit would be skipped), and faust's recovery must not wait for the load: it waits at most
``broker_request_timeout`` (30 s) and then ends silently, and the worker never becomes ready.
So a partition not loaded yet is paused, and seeked and resumed once loaded.  Driven through
:func:`stream.kafka.app.wire` with a fake app and consumer, in one event loop, without sleeps.
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
        self.paused: set[TP] = set()

    def pause_partitions(self, tps: Any) -> None:
        self.paused |= set(tps)

    def resume_partitions(self, tps: Any) -> None:
        self.paused -= set(tps)

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
        self.crashed: list[BaseException] = []

    async def crash(self, exc: BaseException) -> None:
        self.crashed.append(exc)

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


async def _until(cond: Any, what: str) -> None:
    """Let the loop run until ``cond()`` (the deferred load and seek), within a deadline."""
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0)
    try:
        await asyncio.wait_for(poll(), timeout=10)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def test_the_seek_pauses_a_partition_still_loading_and_seeks_it_when_loaded(tmp_path) -> None:
    _snapshot_partition0(tmp_path)
    pipe, app, tp = _wired(tmp_path)

    async def run() -> None:
        await pipe.lock.acquire()  # the snapshot timer writing the catalogue, or a long load
        assigned = asyncio.create_task(app.on_partitions_assigned.send({tp}))
        # faust's recovery, meanwhile: it must not wait for the load (it gives up after 30 s)
        await asyncio.wait_for(app.consumer.perform_seek(), timeout=5)
        assert tp in app.consumer.paused, "read from the committed offset before the load"
        pipe.lock.release()
        await asyncio.wait_for(assigned, timeout=10)
        await _until(lambda: tp not in app.consumer.paused, "the partition to be resumed")
        assert pipe.states[0].next_offset == SNAPSHOT
        assert app.consumer.position[tp] == SNAPSHOT, (
            f"consumer reads partition 0 from {app.consumer.position[tp]}, its state covers "
            f"up to {SNAPSHOT}")
        assert not app.crashed

    asyncio.run(run())


def test_a_load_that_finishes_after_a_new_rebalance_resumes_nothing(tmp_path) -> None:
    _snapshot_partition0(tmp_path)
    pipe, app, tp = _wired(tmp_path)

    async def run() -> None:
        await pipe.lock.acquire()
        await asyncio.wait_for(app.consumer.perform_seek(), timeout=5)
        assert tp in app.consumer.paused
        app.consumer_generation_id = 2  # another rebalance: its own seek takes over
        pipe.lock.release()
        await _until(lambda: 0 in pipe.states, "the load")
        for _ in range(20):
            await asyncio.sleep(0)
        assert tp in app.consumer.paused and app.consumer.position[tp] == COMMITTED

    asyncio.run(run())


def test_a_failed_deferred_load_crashes_the_worker(tmp_path, monkeypatch) -> None:
    pipe, app, tp = _wired(tmp_path)

    def broken(partition: int) -> Any:
        raise OSError("changelog unreadable")

    monkeypatch.setattr(pipe, "read_partition", broken)

    async def run() -> None:
        await app.consumer.perform_seek()
        await _until(lambda: app.crashed, "the crash")
        assert isinstance(app.crashed[0], OSError) and tp in app.consumer.paused

    asyncio.run(run())


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
        await _until(lambda: tp not in app.consumer.paused, "the partition to be resumed")
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
        await _until(lambda: tp not in app.consumer.paused, "the partition to be resumed")
        assert 0 in pipe.states and app.consumer.position[tp] == SNAPSHOT

    asyncio.run(run())
