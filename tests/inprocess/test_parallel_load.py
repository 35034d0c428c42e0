"""An assignment reads its partitions ``LOAD_CONCURRENCY`` at a time (stop 21; the default is
1: two at a time measured slower at 10^5 users, the tests here set 2 to check the mechanism).

Each read (restore, merge, build) runs on an executor thread and touches nothing the
worker serves; each state is adopted on the loop as soon as it is read.  A read that fails
stops the assignment with its error once the reads in flight have finished."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from stream.core.errors import StateError
from stream.settings import Settings
from stream.worker import pipeline as pipeline_mod
from stream.worker.testing import InProcessWorker

pytestmark = pytest.mark.inprocess

T = 1_700_000_000_000
ITEMS = [{"item_id": f"i{i}", "title": f"item {i}", "category": "c"} for i in range(4)]


def _events(n_users: int) -> list[dict[str, Any]]:
    return [{"event_id": f"e{u}-{k}", "user_id": f"u{u}", "type": "view", "ts": T + k,
             "item_id": f"i{(u + k) % 4}"} for u in range(n_users) for k in range(3)]


def _settings(tmp_path: Path) -> Settings:
    return Settings.from_env({}, state_dir=str(tmp_path / "state"), partitions=4)


class SlowReads:
    """``read_partition`` wrapped: each read sleeps ``delay`` s (off the loop) and the most
    reads in flight at once are counted; ``fail`` makes that partition's read raise."""

    def __init__(self, p: Any, delay: float, fail: int | None = None) -> None:
        self.inner, self.delay, self.fail = p.read_partition, delay, fail
        self.lock, self.now, self.most, self.done = threading.Lock(), 0, 0, []

    def __call__(self, partition: int) -> Any:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self.delay)
            if partition == self.fail:
                raise StateError(f"partition {partition}: damaged")
            out = self.inner(partition)
            self.done.append(partition)
            return out
        finally:
            with self.lock:
                self.now -= 1


def test_partitions_load_two_at_a_time_and_equal_a_worker_that_never_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_mod, "LOAD_CONCURRENCY", 2)
    s = _settings(tmp_path)

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(16)) as w:
            await w.items(ITEMS)
            await w.events(_events(40))
            before = {st.partition: st.to_dict() for st in w.pipeline.profiles.partitions()}
            await w.pipeline.snapshot(everything=True)
            await w.pipeline.encoder_service.stop()
        fresh = InProcessWorker(s, HashingEncoder(16), partitions=[])
        p = fresh.pipeline
        reads = SlowReads(p, 0.2)
        p.read_partition = reads  # type: ignore[method-assign]
        async with fresh:
            await p.assign([0, 1, 2, 3])
            assert reads.most == pipeline_mod.LOAD_CONCURRENCY == 2
            assert sorted(reads.done) == [0, 1, 2, 3] and p.loading == 0
            after = {st.partition: st.to_dict() for st in p.profiles.partitions()}
        assert after.keys() == before.keys()
        for k in before:
            assert after[k]["next_offset"] == before[k]["next_offset"]
            assert sorted(after[k]["profiles"]["users"]) == sorted(before[k]["profiles"]["users"])

    asyncio.run(main())


def test_a_failed_read_raises_after_the_reads_in_flight_and_loading_returns_to_zero(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_mod, "LOAD_CONCURRENCY", 2)
    s = _settings(tmp_path)

    async def main() -> None:
        fresh = InProcessWorker(s, HashingEncoder(16), partitions=[])
        p = fresh.pipeline
        reads = SlowReads(p, 0.05, fail=1)
        p.read_partition = reads  # type: ignore[method-assign]
        async with fresh:
            with pytest.raises(StateError, match="partition 1: damaged"):
                await p.assign([0, 1, 2, 3])
            assert p.loading == 0 and reads.now == 0
            assert 1 not in p.profiles and not p.lock.locked()

    asyncio.run(main())


def _restart_setup(tmp_path: Path) -> Settings:
    return Settings.from_env({}, state_dir=str(tmp_path / "state"), index_exact_below=78)


async def _worker_with_400_users(s: Settings, items: int = 20) -> InProcessWorker:
    w = InProcessWorker(s, HashingEncoder(16))
    await w.__aenter__()
    await w.items([{"item_id": f"i{i}", "title": f"item {i}"} for i in range(items)])
    await w.events([{"event_id": f"e{k}", "user_id": f"u{k % 400}", "type": "view",
                     "ts": 1_700_000_000_000 + k, "item_id": f"i{k % items}"}
                    for k in range(1200)])
    return w


def test_a_restart_trains_the_users_index_once_at_the_assignment_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partitions load one after another; the users index trains when the assignment is
    loaded, on all its users (before: on the first partition's, then again at 4x that).
    Here without the centroids the last run kept (a new host): the next test has them."""
    from index import IvfIndex

    monkeypatch.setattr(pipeline_mod.Pipeline, "_adopt_users_ivf", lambda self: None)
    s = _restart_setup(tmp_path)

    async def main() -> None:
        w = await _worker_with_400_users(s)
        again = await w.restart()
        idx = again.pipeline.profiles.index
        assert isinstance(idx, IvfIndex) and len(idx) == 400
        assert idx.wait_built(60)
        assert idx.trainings == 1 and idx._trained_n == 400  # before: ~100 (one partition)
        await again.__aexit__(None, None, None)

    asyncio.run(main())


def test_a_restart_reuses_both_indexes_centroids_instead_of_training(tmp_path: Path) -> None:
    """The catalogue snapshot keeps its IVF (also when the IVF was installed after the
    catalogue was last written) and the worker keeps the users index's centroids: a restart
    installs the item IVF as it loads and assigns the users to the kept centroids, with no
    k-means, and both answer as an index trained afresh would (every user finds itself)."""
    from index import IvfIndex

    s = _restart_setup(tmp_path)

    async def main() -> None:
        w = await _worker_with_400_users(s, items=200)
        items, users = w.pipeline.catalog.index, w.pipeline.profiles.index
        assert isinstance(items, IvfIndex) and isinstance(users, IvfIndex)
        await w.pipeline.snapshot()  # the catalogue written, perhaps before its IVF installs
        assert items.wait_built(60) and users.wait_built(60)
        assert items.factory.startswith("IVF") and users.factory.startswith("IVF")
        kept_items, kept_users = items._coarse, users._coarse
        assert kept_items is not None and kept_users is not None
        again = await w.restart()
        items2, users2 = again.pipeline.catalog.index, again.pipeline.profiles.index
        assert isinstance(items2, IvfIndex) and isinstance(users2, IvfIndex)
        # the items: installed while the catalogue loaded, before anything else ran
        assert (items2.trainings, items2.adoptions, items2.factory) == (0, 1, items.factory)
        assert np.array_equal(items2._coarse.centroids, kept_items.centroids)
        assert users2.wait_built(60)
        assert (users2.trainings, users2.adoptions, users2.factory) == (0, 1, users.factory)
        assert np.array_equal(users2._coarse.centroids, kept_users.centroids)
        for uid in ("u0", "u17", "u399"):  # u17 and u217 saw the same items: a tie
            vec = users2.get(uid)
            assert vec is not None and uid in {h for h, _ in users2.search(vec, 2)[0]}
        await again.__aexit__(None, None, None)

    asyncio.run(main())


def test_a_damaged_users_centroid_cache_costs_a_training_and_nothing_else(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The users index's kept centroids are a cache on the worker's disk: garbage there is
    one warning, the restart trains as on a new host, and every user is still found."""
    from index import IvfIndex

    s = _restart_setup(tmp_path)

    async def main() -> None:
        w = await _worker_with_400_users(s, items=200)
        users = w.pipeline.profiles.index
        assert isinstance(users, IvfIndex) and users.wait_built(60)
        await w.pipeline.snapshot()
        cache = [f for f in (tmp_path / "state").rglob("*") if f.is_file()
                 and "indexes" in f.relative_to(tmp_path / "state").parts[0]]
        assert cache, "the users index's centroids were not kept"
        for f in cache:
            f.write_bytes(b"\x00not a snapshot\xff" * 7)
        again = await w.restart()
        users2 = again.pipeline.profiles.index
        assert isinstance(users2, IvfIndex) and users2.wait_built(60)
        assert (users2.trainings, users2.adoptions, len(users2)) == (1, 0, 400)
        for uid in ("u0", "u399"):
            vec = users2.get(uid)
            assert vec is not None and uid in {h for h, _ in users2.search(vec, 2)[0]}
        await again.__aexit__(None, None, None)

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    assert "users index: kept centroids unreadable" in caplog.text
