"""A partition snapshot holds the pipeline's lock only while it captures (issue 14): the
capture (``SnapshotStore.capture``, under the lock) takes owned copies of what the blob holds,
the pack (``SnapshotStore.pack``: serialisation, hashes) runs without the lock while batches
go on, and the blob is the state at the capture's offset, bit for bit."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest

from encoder.fake import HashingEncoder
from stream.worker import snapshots
from stream.worker.testing import InProcessWorker, ManualClock
from tests.inprocess.test_incremental_snapshots import ITEMS, T, _script, _settings, _step
from tests.inprocess.test_issue10_snapshot import _same

pytestmark = [pytest.mark.inprocess, pytest.mark.timeout(120)]


@pytest.mark.parametrize(("seed", "split", "delta"),
                         [(7, 5, True), (11, 6, True), (7, 6, False), (19, 8, True)])
def test_a_capture_packed_after_more_batches_is_the_state_at_its_offset(
        tmp_path: Path, seed: int, split: int, delta: bool) -> None:
    """Capture, then apply batches to the live state (updates, forgets, new users, TTL expiry,
    parked events and the late items that apply them, dead letters of users who have DLQ keys
    already, duplicates, dedupe eviction), then pack: the blob loads to exactly the reference
    ``to_dict`` taken at the capture (a deep copy), and the journal continues from that blob
    (the next snapshot is a delta giving the final state)."""
    script = _script(seed, 12)

    async def main() -> None:
        async with InProcessWorker(_settings(tmp_path / "s"), HashingEncoder(16),
                                   partitions=[0],
                                   clock=ManualClock(wall=T / 1000 + 60)) as w:
            p = w.pipeline
            await w.items(ITEMS)
            for b in range(split):
                await _step(w, b, script[b])
            if delta:
                await p.snapshot(everything=True)
                await _step(w, split, script[split])
            st = p.states[0]
            want = copy.deepcopy(st.to_dict())
            cap = p.store.capture(st)
            dlq_before = {u: len(k) for u, k in st.dlq_keys.items()}
            assert dlq_before
            # dead letters of the users with DLQ keys (their live lists grow), then the rest
            await w.events([{"event_id": f"t{u}", "user_id": u, "type": "teleport",
                             "ts": T + 400 * split + 350} for u in dlq_before], partition=0)
            for b in range(split + 1, len(script)):
                await _step(w, b, script[b])
            assert st.next_offset > want["next_offset"]
            # the batches after the capture changed what it holds (else this shows nothing)
            assert any(len(st.dlq_keys.get(u, ())) > n for u, n in dlq_before.items())
            blob = p.store.pack(cap)
            assert snapshots.snapshot_kind(blob) == ("delta" if delta else "base")
            assert p.store.write(0, blob)
            _same(p.store.read(0), want)
            erased = st.journal.erased  # a forget after the capture: the next is a base
            assert st.journal.parent == hashlib.sha256(blob).hexdigest()
            await p.snapshot(everything=True)
            m = p.store.manifest(0)
            assert m is not None and m.entries[-1].kind == ("base" if erased else "delta")
            _same(p.store.read(0), st.to_dict())

    asyncio.run(main())


def test_batches_are_applied_while_a_snapshot_packs(tmp_path: Path, monkeypatch) -> None:
    """The timer's snapshot: its pack is held (a slow serialiser) until a batch has been
    applied, so the batch completes only if the lock is free while it packs.  The blob written
    is the state at the capture's offset, and the next snapshot is a delta on it."""
    packing = threading.Event()
    release = threading.Event()
    real_pack = snapshots.pack

    def slow_pack(data: Any) -> bytes:
        packing.set()
        release.wait(30)
        return real_pack(data)

    async def main() -> None:
        clock = ManualClock(wall=T / 1000 + 60)
        async with InProcessWorker(_settings(tmp_path / "s", rate_limit_events=0),
                                   HashingEncoder(16), partitions=[0], clock=clock) as w:
            p = w.pipeline
            loop = asyncio.get_running_loop()
            await w.items(ITEMS)
            await w.events([{"event_id": f"e{i}", "user_id": f"u{i % 7}", "type": "view",
                             "ts": T + i, "item_id": f"i{i % 6}"} for i in range(40)],
                           partition=0)
            await p.snapshot(everything=True)  # the catalogue and a base: not the slow pack
            await w.events([{"event_id": f"x{i}", "user_id": f"u{i % 9}", "type": "click",
                             "ts": T + 100 + i, "item_id": f"i{i % 6}"} for i in range(30)],
                           partition=0)
            st = p.states[0]
            want = copy.deepcopy(st.to_dict())
            clock.advance(w.settings.snapshot_interval_s + 1)
            monkeypatch.setattr(snapshots, "pack", slow_pack)
            snap = asyncio.create_task(p.snapshot())
            try:
                assert await loop.run_in_executor(None, packing.wait, 30)
                # the old code held the lock while packing: this batch waited for the pack
                await asyncio.wait_for(
                    w.events([{"event_id": f"y{i}", "user_id": f"v{i}", "type": "view",
                               "ts": T + 200 + i, "item_id": "i2"} for i in range(5)],
                             partition=0), 10)
                assert not snap.done()  # the batch went in while the pack was held
            finally:
                release.set()
            assert await snap == 1
            monkeypatch.setattr(snapshots, "pack", real_pack)
            m = p.store.manifest(0)
            assert m is not None and [e.kind for e in m.entries] == ["base", "delta"]
            _same(p.store.read(0), want)  # the capture's offset, not the batch's after it
            assert "v0" in st.profiles and "v0" not in want["profiles"]["users"]
            await p.snapshot(everything=True)
            m = p.store.manifest(0)  # (compaction may have folded the first two meanwhile)
            assert m is not None and m.entries[-1].kind == "delta" and len(m.entries) > 1
            _same(p.store.read(0), st.to_dict())

    asyncio.run(main())
