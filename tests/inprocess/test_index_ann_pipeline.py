"""The worker on the IVF index kind (PROFILES_INDEX_KIND=ivf): users and items indexes are IVF
once trained in the background, searches agree with brute force over the state's own vectors,
a forgotten user is never returned, and a restart rebuilds both indexes from the snapshot."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from index import IvfIndex, VectorIndex, factory_of
from stream.data.generate import generate
from stream.settings import Settings
from stream.worker.pipeline import Pipeline
from stream.worker.testing import InProcessWorker

pytestmark = pytest.mark.inprocess

DIM = 32


def _built(index: VectorIndex) -> None:
    """Wait (with a deadline) for a background IVF training to be installed."""
    assert isinstance(index, IvfIndex)
    deadline = time.monotonic() + 60
    while not index.wait_built(timeout=1.0):
        assert time.monotonic() < deadline, "IVF training did not finish in 60 s"
    assert factory_of(index).startswith("IVF"), factory_of(index)


def _brute_force(p: Pipeline, q: np.ndarray, k: int) -> list[str]:
    users = [u for st in p.profiles.partitions() for u in st.profiles.users()]
    vecs = np.concatenate([st.profiles.vectors(st.profiles.users())
                           for st in p.profiles.partitions()])
    scores = vecs.astype(np.float32) @ q
    return [users[j] for j in np.argsort(-scores, kind="stable")[:k]]


def test_ivf_indexes_in_the_worker_search_forget_and_restart(tmp_path: Path) -> None:
    ds = generate(users=250, items=120, events=1500, seed=5)
    s = Settings.from_env({}, state_dir=str(tmp_path / "state"), index_kind="ivf")

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items(ds.items)
            for i in range(0, len(ds.events), 300):
                await w.events(ds.events[i:i + 300])
            p = w.pipeline
            _built(p.profiles.index)
            _built(p.catalog.index)
            users = sorted(u for st in p.profiles.partitions() for u in st.profiles.users())
            assert len(p.profiles.index) == len(users) > 200
            for u in users[:20]:  # look-alikes of a user: brute force over the state
                v = p.profiles.vector(u)
                assert v is not None
                got = [x for x, _ in p.profiles.search(v, 10)]
                assert set(got) == set(_brute_force(p, v, 10)), u
            victim = users[0]
            gone_vec = p.profiles.vector(victim)
            assert gone_vec is not None
            await w.events([{"event_id": "forget-1", "user_id": victim, "type": "forget",
                             "ts": max(e["ts"] for e in ds.events) + 1}])
            assert p.profiles.vector(victim) is None
            hits = p.profiles.search(gone_vec, len(users))
            assert victim not in {x for x, _ in hits} and len(hits) == len(users) - 1
            # a new user's first event: searchable after that one batch, on the IVF path
            await w.events([{"event_id": "new-1", "user_id": "newcomer", "type": "click",
                             "item_id": ds.items[0]["item_id"],
                             "ts": max(e["ts"] for e in ds.events) + 2}])
            new_vec = p.profiles.vector("newcomer")
            assert new_vec is not None and factory_of(p.profiles.index).startswith("IVF")
            assert "newcomer" in {x for x, _ in p.profiles.search(new_vec, 5)}
            before = {u: p.profiles.search(p.profiles.vector(u), 5) for u in users[1:6]}
            item_q = p.catalog.index.get(ds.items[3]["item_id"])
            assert item_q is not None
            items_before = p.catalog.index.search(item_q, 10)
            w2 = await w.restart()
            try:
                _built(w2.pipeline.profiles.index)
                _built(w2.pipeline.catalog.index)
                for u, hits in before.items():
                    assert w2.pipeline.profiles.search(w2.pipeline.profiles.vector(u), 5) == hits
                assert w2.pipeline.catalog.index.search(item_q, 10) == items_before
                assert w2.pipeline.profiles.vector(victim) is None
            finally:
                await w2.__aexit__(None, None, None)

    asyncio.run(main())
