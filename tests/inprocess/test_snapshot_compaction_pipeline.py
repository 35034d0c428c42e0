"""Issue 12 (recovery time), through the worker's snapshot timer: after a load the snapshots
are deltas on the loaded base, they stay deltas once they outgrow it (the pipeline compacts
the committed blobs off the lock instead of serialising a base under it), and a crash at any
point then replays to the state of a worker that never snapshotted (the oracle)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from encoder.fake import HashingEncoder
from stream.worker.records import Record
from stream.worker.snapshots import SnapshotStore, finish_compaction
from stream.worker.testing import InProcessWorker, ManualClock
from tests.inprocess.test_incremental_snapshots import ITEMS, T, _settings
from tests.inprocess.test_issue10_snapshot import _same

pytestmark = pytest.mark.inprocess

USERS = 60


def _batch(b: int) -> list[dict[str, Any]]:
    """A third of the users, one event each (no forgets: a forget makes a base by design)."""
    return [{"event_id": f"e{b}-{u}", "user_id": f"u{u}", "type": "view", "ts": T + 100 * b + u,
             "item_id": f"i{(u + b) % 6}"} for u in range(b % 3, USERS, 3)]


async def _timer_snapshot(w: InProcessWorker) -> str:
    """One snapshot of the timer (past its interval and budget pause): the kind written."""
    w.clock.advance(3600.0)
    before = {k: w.pipeline.metrics.snapshot_bytes.labels(k)._value.get()
              for k in ("base", "delta")}
    assert await w.pipeline.snapshot() == 1
    await finish_compaction(w.pipeline.compaction)  # started, not awaited, by the timer
    after = {k: w.pipeline.metrics.snapshot_bytes.labels(k)._value.get()
             for k in ("base", "delta")}
    (kind,) = [k for k in after if after[k] != before[k]]
    return kind


def test_timer_snapshots_after_a_load_stay_deltas_and_replay_is_exact(tmp_path) -> None:
    state = tmp_path / "state"
    s = _settings(state, rate_limit_events=0, profile_ttl_ms=10**12, snapshot_max_deltas=3)
    n_batches = 16

    async def reference() -> dict[str, Any]:
        async with InProcessWorker(_settings(tmp_path / "ref", rate_limit_events=0,
                                             profile_ttl_ms=10**12),
                                   HashingEncoder(16), partitions=[0]) as w:
            await w.items(ITEMS)
            for b in range(n_batches):
                await w.events(_batch(b), partition=0)
            return w.pipeline.states[0].to_dict()

    want = asyncio.run(reference())

    async def main() -> None:
        clock = ManualClock(wall=T / 1000 + 60)
        async with InProcessWorker(s, HashingEncoder(16), partitions=[0], clock=clock) as w:
            await w.items(ITEMS)
            records: list[Record] = []
            for b in range(4):
                records += await w.events(_batch(b), partition=0)
            assert await _timer_snapshot(w) == "base"  # the first: nothing to continue
            w2 = await w.restart()  # a load: what follows continues the loaded base
        kinds, chained = [], False
        try:
            for b in range(4, 12):
                records += await w2.events(_batch(b), partition=0)
                kinds.append(await _timer_snapshot(w2))
                m = w2.pipeline.store.manifest(0)
                assert m is not None
                chained |= bool(m.entries[0].chain)
                # the deltas never grow past the compaction rule's bound
                assert len(m.entries) <= s.snapshot_max_deltas + 1
                _same(w2.pipeline.store.read(0), w2.pipeline.states[0].to_dict())
            for b in range(12, n_batches):  # no snapshot covers these: the tail
                records += await w2.events(_batch(b), partition=0)
        finally:
            await w2.pipeline.encoder_service.stop()
        assert kinds == ["delta"] * 8, kinds  # the old rule wrote bases once they outgrew it
        assert chained  # compacted at least once
        # SIGKILL: a new worker loads base + deltas and replays the log from their offset
        async with InProcessWorker(s, HashingEncoder(16), partitions=[0], clock=clock,
                                   source=w2.source) as w3:
            await w3.items(ITEMS)
            assert w3.pipeline.states[0].next_offset < len(records)
            at = 0
            for b in range(n_batches):  # the log again, as it was batched: covered offsets
                n = len(_batch(b))      # are skipped
                await w3.pipeline.process(records[at:at + n])
                at += n
            _same(w3.pipeline.states[0].to_dict(), want)
            fresh = SnapshotStore(state, s.events_topic)
            assert fresh.read(0) is not None

    asyncio.run(main())


def test_the_timer_does_not_wait_for_a_compaction(tmp_path) -> None:
    """A compaction runs on a thread while the timer goes on snapshotting other partitions
    (one at a time: none starts while one runs); shutdown's snapshot waits for it."""
    s = _settings(tmp_path / "state", rate_limit_events=0, profile_ttl_ms=10**12,
                  snapshot_max_deltas=0)
    release = threading.Event()

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(16), partitions=[0, 1]) as w:
            await w.items(ITEMS)
            store = w.pipeline.store
            compact = store.compact
            calls: list[int | str] = []

            def slow(partition: int | str) -> bool:
                calls.append(partition)
                assert release.wait(30)
                return compact(partition)

            store.compact = slow  # type: ignore[method-assign]
            store.compact_blobs, store.max_deltas = True, 1  # a compaction after 2 deltas
            for p in (0, 1):
                await w.events(_batch(p), partition=p)
                await _timer_snapshot_no_wait(w)  # the bases
            for b in range(2, 8):
                for p in (0, 1):
                    await w.events(_batch(b), partition=p)
                    await _timer_snapshot_no_wait(w)
            assert calls == [calls[0]]  # one started, never awaited, none more meanwhile
            running = w.pipeline.compaction
            assert running is not None and not running.done()
            release.set()
            await w.pipeline.snapshot(everything=True)
            assert running.done() and running.result() is True

    try:
        asyncio.run(main())
    finally:
        release.set()  # a failed assertion must not leave the thread waiting


async def _timer_snapshot_no_wait(w: InProcessWorker) -> None:
    w.clock.advance(3600.0)
    assert await asyncio.wait_for(w.pipeline.snapshot(), 30) == 1
