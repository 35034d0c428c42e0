"""Issue 12, incremental durable state, driven through the in-process worker: a partition's
durable state is a base blob plus deltas plus a manifest (stream.worker.snapshots,
stream.worker.deltas).  Loading base + deltas gives the state that wrote them bit for bit, for
any batching; a crash between any two blob writes leaves the previous snapshot, and replaying
the tail then gives the state of a worker that never crashed."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from encoder.fake import HashingEncoder
from stream.settings import Settings
from stream.worker.blobs import LocalBlobStore
from stream.worker.records import Record
from stream.worker.snapshots import SnapshotStore
from stream.worker.state import PartitionState
from stream.worker.testing import InProcessWorker, ManualClock
from tests.inprocess.test_issue10_snapshot import _same

pytestmark = pytest.mark.inprocess

T = 1_700_000_000_000
ITEMS = [{"item_id": f"i{i}", "title": f"item {i}", "category": f"c{i % 3}"} for i in range(6)]


def _settings(state: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(state_dir=str(state), rate_limit_events=6,
                                rate_limit_window_ms=1000, dedupe_window=40,
                                profile_ttl_ms=2_000, ttl_watermark_rank=1, interests_k=2,
                                bandit_context="position")
    return Settings.from_env({}, **(base | kw))


def _script(seed: int, n_batches: int) -> list[list[dict[str, Any]]]:
    """Batches that use every part of the state: new and returning users, re-sent event ids
    (duplicates), unknown items (parked) and the item arriving later, bad records (DLQ), rate
    cap excess, forgets, and event time moving on (TTL expiry, dedupe eviction)."""
    rng = random.Random(seed)
    out = []
    n = 0
    for b in range(n_batches):
        batch: list[dict[str, Any]] = []
        for _ in range(rng.randint(1, 25)):
            n += 1
            u = f"u{rng.randint(0, 14)}"
            kind = rng.random()
            ts = T + 400 * b + rng.randint(0, 300)
            if kind < 0.025:
                batch.append({"event_id": f"f{n}", "user_id": u, "type": "forget", "ts": ts})
            elif kind < 0.1:
                batch.append({"event_id": f"e{rng.randint(1, n)}", "user_id": u,
                              "type": "view", "ts": ts, "item_id": "i1"})  # maybe a duplicate
            elif kind < 0.14:
                batch.append({"event_id": f"e{n}", "user_id": u, "type": "teleport", "ts": ts})
            elif kind < 0.18:
                batch.append({"event_id": f"e{n}", "user_id": u, "type": "view", "ts": ts,
                              "item_id": f"late{b % 3}"})  # parked until its item comes
            else:
                batch.append({"event_id": f"e{n}", "user_id": u,
                              "type": rng.choice(["view", "click", "purchase"]), "ts": ts,
                              "item_id": f"i{rng.randint(0, 5)}", "arm": f"a{rng.randint(0, 2)}",
                              "position": rng.randint(0, 2)})
        out.append(batch)
    return out


async def _step(w: InProcessWorker, b: int, batch: list[dict[str, Any]]) -> list[Record]:
    recs = await w.events(batch, partition=0)
    if b % 4 == 3:  # a late item: its parked events apply
        await w.items([{"item_id": f"late{(b // 4) % 3}", "title": "late", "category": "c0"}])
        await w.pipeline.resolve_parked()
    await w.pipeline.expire()
    return recs


def _loaded(w: InProcessWorker, store: SnapshotStore) -> PartitionState:
    p, s = w.pipeline, w.settings
    d = store.read(0)
    assert d is not None
    return PartitionState.from_dict(d, p.dim, p.pp, p.bp, s.dedupe_window, s.rate_limit_events,
                                    s.rate_limit_window_ms, p.sp, ttl_rank=s.ttl_watermark_rank,
                                    ip=p.ip)


@settings(derandomize=True, max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=hst.integers(0, 10_000), every=hst.lists(hst.booleans(), min_size=12, max_size=12))
def test_base_plus_deltas_load_the_state_that_wrote_them(tmp_path_factory, seed, every) -> None:
    """For random batchings and snapshot points: the document read back (base + deltas) equals
    ``to_dict()`` exactly (order, dtypes, values), and so does the state loaded from it."""
    state = tmp_path_factory.mktemp("state")

    async def main() -> None:
        async with InProcessWorker(_settings(state), HashingEncoder(16), partitions=[0],
                                   clock=ManualClock(wall=T / 1000 + 60)) as w:
            await w.items(ITEMS)
            kinds = []
            for b, batch in enumerate(_script(seed, 12)):
                await _step(w, b, batch)
                if every[b]:
                    await w.pipeline.snapshot(everything=True)
                    m = w.pipeline.store.manifest(0)
                    assert m is not None
                    kinds.append(m.entries[-1].kind)
                    want = w.pipeline.states[0].to_dict()
                    _same(w.pipeline.store.read(0), want)
                    # a fresh store (another process): nothing cached
                    fresh = SnapshotStore(state, w.settings.events_topic)
                    _same(_loaded(w, fresh).to_dict(), want)
            assert len(kinds) == sum(every)

    asyncio.run(main())


def test_deltas_are_written_and_a_forget_makes_a_base(tmp_path) -> None:
    async def main() -> None:
        async with InProcessWorker(_settings(tmp_path / "s", rate_limit_events=0),
                                   HashingEncoder(16), partitions=[0]) as w:
            await w.items(ITEMS)
            pipe = w.pipeline
            await w.events([{"event_id": f"e{i}", "user_id": f"u{i}", "type": "view",
                             "ts": T + i, "item_id": "i1"} for i in range(60)], partition=0)
            await pipe.snapshot(everything=True)
            await w.events([{"event_id": "x1", "user_id": "u3", "type": "view", "ts": T + 40,
                             "item_id": "i2"}], partition=0)
            await pipe.snapshot(everything=True)
            m = pipe.store.manifest(0)
            assert m is not None and [e.kind for e in m.entries] == ["base", "delta"]
            # 60 users: a delta's fixed part (one .npy header a table field, ~230 B each) is
            # well below half a base (at 30 it was 6,862 of 13,950 B before int8 interests)
            assert m.entries[1].size < m.entries[0].size / 2
            written = {k: pipe.metrics.snapshot_bytes.labels(k)._value.get()
                       for k in ("base", "delta")}
            assert written == {"base": m.entries[0].size, "delta": m.entries[1].size}
            await w.events([{"event_id": "f1", "user_id": "u7", "type": "forget",
                             "ts": T + 50}], partition=0)
            await pipe.snapshot(everything=True)
            m = pipe.store.manifest(0)
            assert m is not None and [e.kind for e in m.entries] == ["base"]
            files = [p for p in (tmp_path / "s").rglob("*") if p.is_file()]
            assert not any(b"u7" in p.read_bytes() for p in files)  # erased from every blob
            _same(pipe.store.read(0), pipe.states[0].to_dict())

    asyncio.run(main())


class _Crashing(LocalBlobStore):
    """A local blob store that raises on its ``crash_at``-th write (put or delete)."""

    def __init__(self, directory: Path, crash_at: int) -> None:
        super().__init__(directory)
        self.crash_at = crash_at
        self.ops = 0
        self.crashed_on = ""

    def _tick(self, op: str) -> None:
        self.ops += 1
        if self.ops == self.crash_at:
            self.crashed_on = op
            raise OSError("crash (test)")

    def put(self, name: str, data: bytes) -> None:
        self._tick("manifest" if name.endswith("/manifest") else "blob")
        super().put(name, data)

    def delete(self, name: str) -> None:
        self._tick("delete")
        super().delete(name)


def test_a_crash_between_blob_writes_keeps_the_last_snapshot_and_replay_is_exact(
        tmp_path) -> None:
    """For every k: the k-th blob write of a run of snapshots fails (the process dies there).
    Loading then gives the newest committed snapshot (its ``to_dict`` as it was written), and a
    new worker replaying the log from its offset reaches the state of a worker that never
    crashed (the oracle: the same log, no snapshots)."""
    script = _script(7, 10)

    async def reference() -> dict[str, Any]:
        async with InProcessWorker(_settings(tmp_path / "ref"), HashingEncoder(16),
                                   partitions=[0]) as w:
            await w.items(ITEMS)
            for b, batch in enumerate(script):
                await _step(w, b, batch)
            return w.pipeline.states[0].to_dict()

    want = asyncio.run(reference())
    seen: set[tuple[str, str]] = set()  # (write that crashed, kind of snapshot it was in)

    async def crashing(k: int) -> bool:
        state = tmp_path / f"k{k}"
        s = _settings(state)
        async with InProcessWorker(s, HashingEncoder(16), partitions=[0]) as w:
            await w.items(ITEMS)
            blobs = _Crashing(state, k)
            w.pipeline.store = SnapshotStore(state, s.events_topic, blobs)
            committed: dict[str, Any] | None = None
            records: list[Record] = []
            crashed = False
            for b, batch in enumerate(script):
                records += await _step(w, b, batch)
                if b % 2 == 1 and not crashed:
                    doc = w.pipeline.states[0].to_dict()
                    try:
                        await w.pipeline.snapshot(everything=True)
                        committed = doc
                    except OSError:
                        crashed = True
                        m = w.pipeline.store.manifest(0)
                        seen.add((blobs.crashed_on, "none" if m is None else m.entries[-1].kind))
                        if blobs.crashed_on == "delete":  # after the manifest: committed
                            committed = doc
            # after the crash: what a new process loads
            d = SnapshotStore(state, s.events_topic).read(0)
            if committed is None:
                assert d is None
            else:
                assert d is not None
                _same(d, committed)
            if not crashed:
                return False
            async with InProcessWorker(s, HashingEncoder(16), partitions=[0],
                                       source=w.source) as w2:
                await w2.items(ITEMS)
                for b in range(len(script)):  # the log again: covered offsets are skipped
                    n = len(script[b])
                    recs = records[sum(len(x) for x in script[:b]):][:n]
                    await w2.pipeline.process(recs)
                    if b % 4 == 3:
                        await w2.items([{"item_id": f"late{(b // 4) % 3}", "title": "late",
                                         "category": "c0"}])
                        await w2.pipeline.resolve_parked()
                    await w2.pipeline.expire()
                _same(w2.pipeline.states[0].to_dict(), want)
            return True

    k = 1
    while asyncio.run(crashing(k)):
        k += 1
    # every write of several bases and deltas was crashed once
    assert {("blob", "delta"), ("manifest", "delta"), ("blob", "base"),
            ("manifest", "base"), ("delete", "base")} <= seen, seen


def test_a_restart_that_reshapes_rows_writes_a_base(tmp_path) -> None:
    """Loading refits the multi-interest rows to a new PROFILES_INTERESTS_K: every row
    changed, so the next snapshot must be a base (a delta of the touched users only would mix
    both shapes)."""
    evs = [{"event_id": f"e{i}", "user_id": f"u{i % 5}", "type": "view", "ts": T + i,
            "item_id": f"i{i % 6}"} for i in range(40)]

    async def main() -> None:
        async with InProcessWorker(_settings(tmp_path, interests_k=3), HashingEncoder(16),
                                   partitions=[0]) as w:
            await w.items(ITEMS)
            await w.events(evs, partition=0)
            await w.pipeline.snapshot(everything=True)
        async with InProcessWorker(_settings(tmp_path, interests_k=2), HashingEncoder(16),
                                   partitions=[0]) as w:
            await w.events([{"event_id": "x", "user_id": "u1", "type": "view", "ts": T + 99,
                             "item_id": "i1"}], partition=0)
            await w.pipeline.snapshot(everything=True)
            m = w.pipeline.store.manifest(0)
            assert m is not None and [e.kind for e in m.entries] == ["base"]
            _same(w.pipeline.store.read(0), w.pipeline.states[0].to_dict())

    asyncio.run(main())
