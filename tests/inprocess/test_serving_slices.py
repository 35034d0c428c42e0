"""Serving while ingesting (issue 12, stream.worker.slicing): while requests come in, a batch is
applied in slices with the event loop free in between, every state a request can see is each
partition's log applied up to an offset, and the outcome equals the whole-batch path's and the
offline oracle's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from stream.data.generate import generate
from stream.serve.queries import Queries
from stream.settings import Settings
from stream.worker.slicing import SERVING_WINDOW_S
from stream.worker.testing import InProcessWorker
from tests.oracle import oracle_bandit, oracle_profiles
from tests.vectors import catalogue_vectors

pytestmark = pytest.mark.inprocess

DIM = 32


def _settings(tmp_path: Path, tag: str, **kw: Any) -> Settings:
    """Fixed slices of ``apply_slice`` records unless ``apply_slice_ms`` is given."""
    return Settings.from_env({}, state_dir=str(tmp_path / tag), **{"apply_slice_ms": 0, **kw})


def _invariants(w: InProcessWorker) -> None:
    """What a request may rely on between two slices: per partition, every record below
    ``next_offset`` has its outcome counted (all of this log's events are applied, none
    rejected), and the users index holds exactly the users with a profile, with their vectors."""
    p = w.pipeline
    users = []
    for st in p.profiles.partitions():
        assert sum(st.outcomes.values()) == st.next_offset
        users += st.profiles.users()
    assert p.profiles.indexed() == len(users)
    for u in users:
        hit = p.profiles.search(np.asarray(p.profiles.vector(u), dtype=np.float32), 1)
        assert hit and hit[0][1] == pytest.approx(1.0, abs=1e-5)


async def _during(w: InProcessWorker, records: list[Any],
                  check: Callable[[InProcessWorker], None] | None = None) -> int:
    """Process ``records`` as one batch while a concurrent coroutine counts the times it is
    scheduled before the batch step returns (running ``check`` on the state each time)."""
    ticks = 0
    running = True

    async def other() -> None:
        nonlocal ticks
        while running:
            ticks += 1
            if check is not None:
                check(w)
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)  # it starts (and ticks once) before the batch
    start = ticks
    try:
        await w.pipeline.process(records)
    finally:
        running = False
        await task
    return ticks - start


def test_requests_run_between_slices_of_a_large_batch(tmp_path) -> None:
    """The old batch step held the loop for the whole batch (0 ticks of another coroutine);
    while serving, the loop is free between slices, and each time the state is consistent."""
    ds = generate(users=80, items=30, events=1200, seed=5)

    async def main() -> None:
        s = _settings(tmp_path, "a", apply_slice=100, batch_size=2000)
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items(ds.items)
            events = [e for e in ds.events if e["type"] not in ("search", "forget")]
            head, tail = events[:600], events[600:1200]
            # nobody asked: the whole batch at once, as before (no throughput is spent)
            assert await _during(w, w.source.records(head)) == 0
            w.pipeline.serving.note()  # a request came in (the HTTP layer does this)
            ticks = await _during(w, w.source.records(tail), _invariants)
            # 600 records in slices of 100: requests get the loop between each two of them
            assert ticks >= 5
            _invariants(w)

    asyncio.run(main())


def test_slicing_stops_when_requests_stop(tmp_path) -> None:
    ds = generate(users=40, items=20, events=400, seed=6)

    async def main() -> None:
        s = _settings(tmp_path, "b", apply_slice=50)
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items(ds.items)
            events = [e for e in ds.events if e["type"] not in ("search", "forget")]
            w.pipeline.serving.note()
            assert await _during(w, w.source.records(events[:200])) >= 3
            w.clock.advance(SERVING_WINDOW_S + 0.1)
            assert await _during(w, w.source.records(events[200:400])) == 0

    asyncio.run(main())


def test_sliced_apply_equals_whole_batches_and_the_oracle(tmp_path) -> None:
    """The same log through the sliced path (odd slice size, forgets, searches, unknown items)
    and the whole-batch path: the same state and answers; both equal the offline oracle."""
    ds = generate(users=60, items=40, events=1500, seed=3)
    enc = HashingEncoder(DIM)
    item_vecs, query_vecs = catalogue_vectors(ds, enc)

    async def feed(tag: str, sliced: bool) -> dict[str, Any]:
        s = _settings(tmp_path, tag, apply_slice=37, batch_size=500)
        async with InProcessWorker(s, enc) as w:
            await w.items(ds.items)
            for i in range(0, len(ds.events), 300):
                if sliced:
                    w.pipeline.serving.note()
                await w.events(ds.events[i:i + 300])
            q = Queries(w.pipeline, rng=np.random.default_rng(0))
            p = w.pipeline
            users = sorted(u for st in p.profiles.partitions() for u in st.profiles.users())
            return {
                "users": users,
                "vectors": {u: np.asarray(p.profiles.vector(u)) for u in users},
                "offsets": {k: st.next_offset for k, st in p.profiles.states.items()},
                "outcomes": {k: dict(st.outcomes) for k, st in p.profiles.states.items()},
                "stats": {u: p.profiles.owner(u).users.get(u) for u in users},
                "similar": [[h["user_id"] for h in (await q.similar(u, 5))["similar"]]
                            for u in users],
                "candidates": [[c["item_id"] for c in (await q.candidates(u, 10))["candidates"]]
                               for u in users[:20]],
                "arms": {a: (await q.arm(a))["impressions"]
                         for a, (imp, _r) in oracle_bandit(ds.events,
                                                           s.reward_weight_map()).items()
                         if imp},
                "settings": s,
            }

    async def main() -> None:
        whole = await feed("whole", False)
        sliced = await feed("sliced", True)
        assert sliced["users"] == whole["users"]
        assert sliced["offsets"] == whole["offsets"]
        assert sliced["outcomes"] == whole["outcomes"]
        assert sliced["stats"] == whole["stats"]
        assert sliced["arms"] == whole["arms"]
        assert sliced["similar"] == whole["similar"]
        assert sliced["candidates"] == whole["candidates"]
        s = whole["settings"]
        want = oracle_profiles(ds.events, item_vecs, query_vecs, s.event_weight_map(),
                               s.half_life_ms)
        assert set(want) == set(sliced["users"])
        for u, vec in want.items():
            np.testing.assert_allclose(sliced["vectors"][u], vec, atol=1e-5)
            np.testing.assert_allclose(sliced["vectors"][u], whole["vectors"][u], atol=1e-6)

    asyncio.run(main())


def test_http_requests_mark_the_worker_serving(tmp_path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from stream.serve.http import Api

    async def main() -> None:
        async with InProcessWorker(_settings(tmp_path, "h"), HashingEncoder(DIM)) as w:
            serving = w.pipeline.serving
            async with TestClient(TestServer(Api(Queries(w.pipeline)).app())) as c:
                for path in ("/metrics", "/healthz", "/readyz", "/stats"):  # monitoring
                    await (await c.get(path)).read()
                assert not serving.active() and serving.requests == 0
                r = await c.get("/users/nobody/similar")
                assert r.status == 404
                assert serving.active() and serving.requests == 1

    asyncio.run(main())


def test_slices_hold_the_cpu_target_when_records_are_cheap(tmp_path) -> None:
    """PROFILES_APPLY_SLICE_MS: a slice holds as many records as the loop applies in that much
    CPU time (never fewer than PROFILES_APPLY_SLICE): cheap records, fewer slices."""
    ds = generate(users=80, items=30, events=1800, seed=7)

    async def ticks(tag: str, target_ms: float) -> int:
        s = _settings(tmp_path, tag, apply_slice=100, batch_size=2000, apply_slice_ms=target_ms)
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items(ds.items)
            events = [e for e in ds.events if e["type"] not in ("search", "forget")]
            await w.events(events[:600])  # measured: CPU per record
            assert w.pipeline.serving.per_record is not None
            w.pipeline.serving.note()
            size = w.pipeline.serving.slice_size(s.apply_slice)
            n = await _during(w, w.source.records(events[600:1200]), _invariants)
            _invariants(w)
            if target_ms == 0:
                assert size == 100
            else:  # 16-dim vectors, 80 users: far under a second for 600 records
                assert size > 600
            return n

    async def main() -> None:
        fixed = await ticks("fixed", 0)
        cheap = await ticks("target", 1000.0)
        assert fixed >= 5 and cheap < fixed

    asyncio.run(main())
