"""A restarted worker re-publishes only the signal partials its snapshot recorded as not yet
published (stream.worker.sharing, ``unpublished``), and the topic then holds every partial as
the state does: the others were published before the snapshot was taken."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from encoder.fake import HashingEncoder
from stream.settings import Settings
from stream.worker.sharing import SharedSignals
from stream.worker.testing import InProcessWorker, SignalsTopic
from tests.inprocess.test_signals_pipeline import DIM, settings

pytestmark = pytest.mark.inprocess

T0 = 1_700_000_000_000


def _events(tag: str, items: range, n: int) -> list[dict[str, Any]]:
    return [{"event_id": f"{tag}{k}", "user_id": f"u{k % 7}", "type": "view", "ts": T0 + k,
             "item_id": f"i{items[k % len(items)]}"} for k in range(n)]


def _queued(w: InProcessWorker) -> set[bytes]:
    """The signals-topic keys ("partition:item") the worker has not published yet."""
    return {f"{p}:{item}".encode() for p, items in w.pipeline.sharing.pending.items()
            for item in items}


def _state_messages(w: InProcessWorker) -> dict[bytes, bytes]:
    p = w.pipeline
    todo = [(part, item) for part, st in p.profiles.states.items()
            for item in set(st.signals.popularity.items()) | set(st.signals.covis.items())]
    return dict(SharedSignals.encode(todo, {q: st.signals for q, st in p.profiles.states.items()}))


async def _first(s: Settings, topic: SignalsTopic, items: int) -> InProcessWorker:
    """A worker on ``topic`` with ``items`` catalogue items."""
    w = InProcessWorker(s, HashingEncoder(DIM), signals=topic)
    await w.__aenter__()
    await w.items([{"item_id": f"i{i}", "title": f"item {i}"} for i in range(items)])
    return w


async def _restarted(first: InProcessWorker, topic: SignalsTopic) -> InProcessWorker:
    """``first`` dies (no shutdown publish); a new worker on its state folder loads its
    snapshots and publishes once."""
    await first.pipeline.encoder_service.stop()
    second = InProcessWorker(first.settings, HashingEncoder(DIM), clock=first.clock,
                             signals=topic, source=first.source)
    await second.__aenter__()
    await second.pipeline.publish_signals()
    return second


def test_a_restart_republishes_only_what_was_not_published(tmp_path: Path) -> None:
    s = settings(tmp_path)

    async def main() -> None:
        topic = SignalsTopic()
        first = await _first(s, topic, 30)
        await first.events(_events("a", range(0, 20), 200))
        assert await first.pipeline.publish_signals() > 0  # a..: on the topic
        await first.pipeline.snapshot(everything=True)  # bases recording nothing unpublished
        await first.events(_events("b", range(20, 30), 40))  # b..: not published
        queued = _queued(first)
        assert queued
        # deltas on those bases, then the worker dies without publishing again: a restart
        # merges base and delta, and the newest document's list is the one that counts
        await first.pipeline.snapshot(everything=True)
        assert {m.entries[-1].kind for m in first.pipeline.store._manifests.values()} \
            >= {"delta"}
        before = len(topic.messages)
        second = await _restarted(first, topic)
        republished = {k for k, _ in topic.messages[before:]}
        # old code: every partial the state holds (i0..i29 in their partitions)
        assert republished == queued and len(republished) < len(_state_messages(second))
        # and the topic holds every partial exactly as the restarted state does
        assert topic.compacted() == _state_messages(second)
        await second.__aexit__(None, None, None)

    asyncio.run(main())


def test_a_failed_publish_is_recorded_and_republished_after_a_restart(tmp_path: Path) -> None:
    s = settings(tmp_path)

    async def main() -> None:
        topic = SignalsTopic()
        first = await _first(s, topic, 10)
        await first.events(_events("a", range(0, 10), 60))
        topic.fail = ConnectionError("broker down")
        try:
            await first.pipeline.publish_signals()
        except ConnectionError:
            pass
        topic.fail = None
        await first.pipeline.snapshot(everything=True)
        assert not topic.messages
        second = await _restarted(first, topic)
        assert set(topic.compacted()) == set(_state_messages(second))  # all of them
        assert topic.compacted() == _state_messages(second)
        await second.__aexit__(None, None, None)

    asyncio.run(main())


def test_a_partial_taken_by_a_publish_in_flight_counts_as_unpublished() -> None:
    from stream.core.signal_params import SignalParams

    sh = SharedSignals(SignalParams(), owned=lambda: [0, 1])
    sh.pending = {0: {"a", "b"}, 1: {"c"}}
    todo = sh.take_pending(None)
    assert sh.unpublished(0) == ["a", "b"] and sh.unpublished(1) == ["c"]
    sh.done([t for t in todo if t[0] == 0])
    assert sh.unpublished(0) == [] and sh.unpublished(1) == ["c"]
    sh.requeue([(1, "c")])
    assert sh.pending == {1: {"c"}} and sh.sending == {}
