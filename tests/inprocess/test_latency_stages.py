"""The latency budget observed by the pipeline (issue 14, point 2): one batch's applied events
in every stage of ``profiles_stage_seconds`` with the times of their path, parked events in
``profiles_parked_seconds`` once applied, nothing for rejected or duplicate records."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from stream.settings import Settings
from stream.worker.latency import STAGES, BatchTiming
from stream.worker.testing import InProcessWorker

pytestmark = pytest.mark.inprocess

DIM = 16
ITEMS = [{"item_id": f"i{i}", "title": f"item {i}", "category": "c"} for i in range(3)]


class Steps:
    """A monotonic clock that moves ``step`` seconds each time it is read, from ``start``."""

    def __init__(self, start: float, step: float) -> None:
        self.t, self.step, self.reads = start, step, 0

    def __call__(self) -> float:
        t = self.t + self.step * self.reads
        self.reads += 1
        return t


def test_a_batch_is_observed_in_every_stage_with_its_times(tmp_path: Path) -> None:
    s = Settings.from_env({}, state_dir=str(tmp_path / "state"), partitions=2)

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items(ITEMS)
            base = int(w.clock.wall() * 1000)
            events = [{"event_id": f"e{j}", "user_id": f"u{j % 4}", "type": "view",
                       "ts": base, "item_id": f"i{j % 3}"} for j in range(8)]
            events.append({"event_id": "p0", "user_id": "u1", "type": "view", "ts": base,
                           "item_id": "late"})           # parked: no vector yet
            events.append(dict(events[0]))               # a duplicate
            events.append({"event_id": "bad", "user_id": "u2", "type": "nope", "ts": base})
            # Kafka timestamps 3.0 s .. 2.8 s before the wall clock, one per 20 ms
            recs = [w.source.record(e, timestamp_ms=base - 3000 + 20 * j)
                    for j, e in enumerate(events)]
            n = len(recs)
            # on the batch's monotonic clock: Kafka ts of record j = 97.0 + 0.02 j;
            # fetched 99.0 + 0.01 j, delivered 99.5 + 0.01 j, closed 100.0;
            # then locked 100.25, applying 100.5, searchable 100.75 (the clock's reads)
            clock = Steps(100.25, 0.25)
            timing = BatchTiming(np.array([r.partition for r in recs]),
                                 np.array([r.offset for r in recs]),
                                 99.0 + 0.01 * np.arange(n), 99.5 + 0.01 * np.arange(n),
                                 closed=100.0, wall_offset=w.clock.wall() - 100.0, clock=clock)
            hist = w.pipeline.metrics.stages
            await w.pipeline.process(recs, timing)
            assert clock.reads == 3
            applied = list(range(8))                     # the 8 events with known items
            counts = hist.counts.sum(axis=1)
            assert counts.tolist() == [len(applied)] * len(STAGES)
            j = np.array(applied, dtype=np.float64)
            expected = {  # each stage's seconds, from the times above
                "broker": (99.0 + 0.01 * j) - (97.0 + 0.02 * j),
                "buffer": np.full(len(j), 0.5),
                "batch": 100.0 - (99.5 + 0.01 * j),
                "lock": np.full(len(j), 0.25),
                "prepare": np.full(len(j), 0.25),
                "apply": np.full(len(j), 0.25),
            }
            for k, stage in enumerate(STAGES):
                assert hist.sums[k] == pytest.approx(expected[stage].sum(), abs=1e-6), stage
                assert (expected[stage] >= 0).all()
            # the stages add up to the ingest -> index latency of the same events
            assert hist.sums.sum() == pytest.approx((100.75 - (97.0 + 0.02 * j)).sum(), abs=1e-6)
            parked = w.pipeline.metrics.parked_latency
            assert int(parked.counts.sum()) == 0
            assert w.pipeline.summary()["parked"] == 1

            # the item arrives 4 s later: the parked event is applied, in its own histogram
            w.clock.advance(4.0)
            await w.items([{"item_id": "late", "title": "late item", "category": "c"}])
            await w.pipeline.resolve_parked()
            assert w.pipeline.summary()["parked"] == 0
            assert int(parked.counts.sum()) == 1
            assert parked.sum == pytest.approx(3.0 - 20 * 8 / 1000 + 4.0)
            assert hist.counts.sum(axis=1).tolist() == [len(applied)] * len(STAGES)

            # a batch without timing (tools, rebuild) observes no stage
            more = w.source.records([{"event_id": "x", "user_id": "u9", "type": "view",
                                      "ts": base, "item_id": "i1"}])
            await w.pipeline.process(more)
            assert hist.counts.sum(axis=1).tolist() == [len(applied)] * len(STAGES)

    asyncio.run(main())


def _held(w: InProcessWorker) -> dict[str, tuple[float, float]]:
    """holder -> (count, sum of seconds) of profiles_lock_held_seconds."""
    out: dict[str, tuple[float, float]] = {}
    for metric in w.pipeline.metrics.lock_held.collect():
        for smp in metric.samples:
            holder = smp.labels["holder"]
            n, total = out.get(holder, (0.0, 0.0))
            if smp.name.endswith("_count"):
                n = smp.value
            elif smp.name.endswith("_sum"):
                total = smp.value
            out[holder] = (n, total)
    return out


def test_lock_holders_are_observed_and_a_batch_waits_behind_a_snapshot(tmp_path: Path) -> None:
    """profiles_lock_held_seconds{holder}: what a batch's `lock` stage waited behind."""
    s = Settings.from_env({}, state_dir=str(tmp_path / "state"), partitions=2)

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items(ITEMS)
            base = int(w.clock.wall() * 1000)
            await w.events([{"event_id": f"e{j}", "user_id": f"u{j}", "type": "view",
                             "ts": base, "item_id": "i1"} for j in range(4)])
            held = _held(w)
            assert held["batch"][0] >= 1
            before = held.get("snapshot", (0.0, 0.0))[0]
            assert await w.pipeline.snapshot(everything=True) >= 1
            assert _held(w)["snapshot"][0] == before + 1

            # a holder that sleeps 0.2 s: the batch started meanwhile waits for it
            async def hold() -> None:
                async with w.pipeline._holding("expire"):
                    await asyncio.sleep(0.2)

            holder = asyncio.create_task(hold())
            await asyncio.sleep(0)
            more = w.source.records([{"event_id": "x", "user_id": "u9", "type": "view",
                                      "ts": base, "item_id": "i2"}])
            t0 = time.perf_counter()
            await w.pipeline.process(more)
            assert time.perf_counter() - t0 >= 0.15  # it waited for the lock
            await holder
            n, total = _held(w)["expire"]
            assert n == 1 and total >= 0.2

    asyncio.run(main())


def test_the_pipeline_does_not_wait_for_other_callers_before_encoding_its_queries(
        tmp_path: Path) -> None:
    s = Settings.from_env({}, state_dir=str(tmp_path), partitions=1, encoder_max_wait_s=30.0)

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items([{"item_id": "i1", "title": "item", "category": "c"}])
            ts = int(w.clock.wall() * 1000)
            await asyncio.wait_for(w.events([
                {"event_id": "e1", "user_id": "u1", "type": "search", "ts": ts,
                 "query": "red shoes"},
                {"event_id": "e2", "user_id": "u1", "type": "view", "ts": ts, "item_id": "i1"},
            ]), 10)
            assert w.pipeline.summary()["users"] == 1

    asyncio.run(main())
