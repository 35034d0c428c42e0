"""Multi-interest profiles in the worker and the API (in memory): live == the per-event
oracle, restart + replay == no restart (exact), forget and the TTL erase interests, the content
source queries each interest with quotas by importance, and the profile lists the interests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from stream.data.generate import generate
from stream.serve.queries import Queries
from stream.settings import Settings
from stream.worker.testing import InProcessWorker
from tests.inprocess.test_pipeline import T, ev
from tests.oracle import oracle_interests
from tests.vectors import catalogue_vectors

pytestmark = pytest.mark.inprocess

DIM = 32


def raw_interests(w: InProcessWorker) -> dict[str, Any]:
    out = {}
    for st in w.pipeline.profiles.partitions():
        assert st.interests is not None
        for u in st.interests.users():
            out[u] = st.interests.raw(u)
    return out


def test_interests_equal_the_oracle_and_a_restart_replays_them_exactly(tmp_path: Path) -> None:
    ds = generate(users=40, items=40, events=1200, seed=5)
    enc = HashingEncoder(DIM)
    item_vecs, query_vecs = catalogue_vectors(ds, enc)
    s = Settings.from_env({}, state_dir=str(tmp_path / "a"), interests_k=3,
                          interests_threshold=0.4)
    half = len(ds.events) // 2

    async def main() -> None:
        async with InProcessWorker(s, enc) as w:  # batches of 200, a restart half-way
            await w.items(ds.items)
            for i in range(0, half, 200):
                await w.events(ds.events[i:min(i + 200, half)])
            w2 = await w.restart()
            try:
                for i in range(half, len(ds.events), 200):
                    await w2.events(ds.events[i:i + 200])
                restarted = raw_interests(w2)
            finally:
                await w2.__aexit__(None, None, None)
        async with InProcessWorker(s.replace(state_dir=str(tmp_path / "b")), enc) as w:
            await w.items(ds.items)
            for i in range(0, len(ds.events), 77):  # other batches, no restart
                await w.events(ds.events[i:i + 77])
            straight = raw_interests(w)
            profiles = {u: w.pipeline.profiles.vector(u) for u in straight}
            tables = {u: st.interests.get(u) for st in w.pipeline.profiles.partitions()
                      if st.interests is not None for u in st.interests.users()}
        assert restarted.keys() == straight.keys()
        for u, (anchor, ws, means) in straight.items():
            a2, w2s, m2 = restarted[u]
            assert a2 == anchor and np.array_equal(w2s, ws) and np.array_equal(m2, means), u
        want = oracle_interests(ds.events, item_vecs, query_vecs, s.event_weight_map(),
                                s.half_life_ms, 3, 0.4)
        assert want.keys() == straight.keys()
        for u, (anchor, ws, means) in want.items():
            got = straight[u]
            assert got[0] == anchor
            np.testing.assert_allclose(got[1], ws, rtol=1e-12, atol=0)
            assert np.array_equal(got[2], means), u
            # the single profile is the importance-weighted sum of the interests (up to the
            # int8 rounding of the means: measured worst 0.99918 here)
            assert float(tables[u].profile() @ profiles[u]) >= 1 - 2e-3
        assert max(len(ws) for _, ws, _ in want.values()) == 3  # some users have several

    asyncio.run(main())


SHOP = [{"item_id": f"s{i}", "title": t, "category": "shoes"} for i, t in
        enumerate(["red running shoe", "trail running shoe", "leather walking shoe"])] + [
    {"item_id": f"c{i}", "title": t, "category": "coffee"} for i, t in
        enumerate(["dark roast coffee beans", "espresso coffee beans", "decaf coffee beans"])] + [
    {"item_id": f"t{i}", "title": t, "category": "tents"} for i, t in
        enumerate(["dome tent for camping", "tunnel tent for camping"])]


def shop(tmp_path: Path, body: Any, **settings: Any) -> None:
    s = Settings.from_env({}, state_dir=str(tmp_path / "state"), interests_threshold=0.3,
                          **settings)

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items(SHOP)
            # three shoe events (purchase weight), one coffee view: two interests, 8 : 1 + ...
            await w.events([ev("e1", "u1", "purchase", item_id="s0", ts=T),
                            ev("e2", "u1", "click", item_id="s1", ts=T + 1),
                            ev("e3", "u1", "view", item_id="c0", ts=T + 2),
                            ev("e4", "u2", "view", item_id="t0", ts=T)])
            await body(w)

    asyncio.run(main())


def brute_force(w: InProcessWorker, user: str, total: int, exclude: set[str]
                ) -> list[str]:
    """Expected content items, computed from the catalogue's vectors directly: the quotas by
    largest remainder (by hand), interests by importance, each its best untaken items."""
    st = w.pipeline.profiles.owner(user)
    assert st is not None and st.interests is not None
    it = st.interests.get(user)
    assert it is not None
    ids = [x["item_id"] for x in SHOP if x["item_id"] not in exclude]
    vecs, _ = w.pipeline.catalog.vectors(ids)
    share = it.importance / it.importance.sum() * total
    quota = np.floor(share).astype(int)
    for i in sorted(range(len(it)), key=lambda i: (-(share[i] - quota[i]), i))[
            :total - quota.sum()]:
        quota[i] += 1
    taken: list[str] = []
    for i in sorted(range(len(it)), key=lambda i: (-it.importance[i], i)):
        sims = vecs @ it.vectors[i]
        best = [ids[j] for j in sorted(range(len(ids)), key=lambda j: (-sims[j], ids[j]))
                if ids[j] not in taken][: quota[i]]
        taken += best
    return taken


def test_content_queries_each_interest_with_quotas_by_importance(tmp_path: Path) -> None:
    async def body(w: InProcessWorker) -> None:
        st = w.pipeline.profiles.owner("u1")
        assert st is not None and st.interests is not None and st.interests.count("u1") == 2
        q = Queries(w.pipeline)
        q.hybrid = q.hybrid.__class__(**{**q.hybrid.__dict__, "content_k": 4,
                                         "sources": ("content",), "exclude_purchased": True})
        cands = q.generate("u1")
        want = brute_force(w, "u1", 4, {"s0"})  # s0 was bought: excluded
        assert sorted(cands.items) == sorted(want)
        assert any(i.startswith("c") for i in want) and any(i.startswith("s") for i in want)
        # content_sim stays the single profile's similarity
        prof = w.pipeline.profiles.vector("u1")
        vecs, _ = w.pipeline.catalog.vectors(cands.items)
        from stream.core.hybrid import FEATURES

        np.testing.assert_allclose(cands.features[:, FEATURES.index("content_sim")],
                                   vecs @ prof, atol=1e-6)
        # one interest (u2): the single-vector path, nearest the profile
        single = q.generate("u2")
        assert st is not None
        vecs, _ = w.pipeline.catalog.vectors([x["item_id"] for x in SHOP])
        sims = vecs @ w.pipeline.profiles.vector("u2")
        near = [SHOP[j]["item_id"] for j in np.argsort(-sims, kind="stable")[:4]]
        assert sorted(single.items) == sorted(near)
        body_ = await q.candidates("u1", 3)
        assert len(body_["candidates"]) == 3

    shop(tmp_path, body)


def test_k_zero_serves_the_single_vector_and_keeps_no_interests(tmp_path: Path) -> None:
    async def body(w: InProcessWorker) -> None:
        st = w.pipeline.profiles.owner("u1")
        assert st is not None and st.interests is None
        assert "interests" not in st.to_dict() or st.to_dict()["interests"] is None
        q = Queries(w.pipeline)
        q.hybrid = q.hybrid.__class__(**{**q.hybrid.__dict__, "content_k": 4,
                                         "sources": ("content",), "exclude_purchased": False})
        vecs, _ = w.pipeline.catalog.vectors([x["item_id"] for x in SHOP])
        sims = vecs @ w.pipeline.profiles.vector("u1")
        near = [SHOP[j]["item_id"] for j in np.argsort(-sims, kind="stable")[:4]]
        assert sorted(q.generate("u1").items) == sorted(near)
        assert "interests" not in q.profile("u1")

    shop(tmp_path, body, interests_k=0)


def test_the_profile_lists_interests_with_categories_and_recent_items(tmp_path: Path) -> None:
    async def body(w: InProcessWorker) -> None:
        got = Queries(w.pipeline).profile("u1")["interests"]
        assert [g["top_categories"][0][0] for g in got] == ["shoes", "coffee"]
        assert got[0]["importance"] > got[1]["importance"] > 0
        assert sum(g["share"] for g in got) == pytest.approx(1.0)
        assert {r["item_id"] for r in got[0]["recent_items"]} == {"s0", "s1"}
        assert [r["item_id"] for r in got[1]["recent_items"]] == ["c0"]
        text = w.pipeline.metrics.registry.get_sample_value
        assert text("profiles_interest_users", {"interests": "2"}) == 1
        assert text("profiles_interest_users", {"interests": "1"}) == 1

    shop(tmp_path, body)


def test_forget_and_the_ttl_erase_interests(tmp_path: Path) -> None:
    async def body(w: InProcessWorker) -> None:
        st = w.pipeline.profiles.owner("u1")
        assert st is not None and st.interests is not None and "u1" in st.interests
        await w.events([ev("f1", "u1", "forget", ts=T + 10)])
        assert "u1" not in st.interests
        assert "u1" not in st.to_dict()["interests"]["users"]
        await w.pipeline.snapshot(everything=True)
        d = w.pipeline.store.read(st.partition)
        assert d is not None and "u1" not in d["interests"]["users"]
        # the TTL (1 h, rank 1): u2 idle once a newer event arrives in its partition
        st2 = w.pipeline.profiles.owner("u2")
        assert st2 is not None and st2.interests is not None and "u2" in st2.interests
        await w.events([ev("e9", "x", item_id="t1", ts=T + 3_600_001)], partition=st2.partition)
        assert await w.pipeline.expire() >= 1
        assert "u2" not in st2.interests and st2.interests.get("u2") is None

    shop(tmp_path, body, profile_ttl_ms=3_600_000, ttl_watermark_rank=1)


def test_served_candidates_equal_the_offline_lists_with_interests(tmp_path: Path) -> None:
    """Serving == evaluation with multi-interest content (more items than content_k, so the
    per-interest quotas pick a different set than the single vector would)."""
    from tests.offline_candidates import Offline

    ds = generate(users=30, items=120, events=900, seed=4)
    enc = HashingEncoder(DIM)
    s = Settings.from_env({}, state_dir=str(tmp_path / "s"), explore_weight=0.0,
                          interests_threshold=0.2)

    async def main() -> None:
        async with InProcessWorker(s, enc) as w:
            await w.items(ds.items)
            for i in range(0, len(ds.events), 97):
                await w.events(ds.events[i:i + 97])
            q = Queries(w.pipeline)
            q.hybrid = q.hybrid.__class__(**{**q.hybrid.__dict__, "content_k": 30})
            offline = Offline(ds.events, ds.items, s, enc, q.ranker)
            offline.hp = q.hybrid
            differ = 0
            for user in sorted({e["user_id"] for e in ds.events})[::2]:
                want = offline.candidates(user, 20)
                got = await q.candidates(user, 20)
                assert [c["item_id"] for c in got["candidates"]] == [i for i, _ in want], user
                np.testing.assert_allclose([c["score"] for c in got["candidates"]],
                                           [v for _, v in want], rtol=1e-6, atol=0)
                st = w.pipeline.profiles.owner(user)
                vec = w.pipeline.profiles.vector(user)
                assert st is not None and vec is not None
                bought = [set(st.users.purchased(user))] if q.hybrid.exclude_purchased else None
                single = {i for i, _ in w.pipeline.catalog.index.search(vec[None, :], 30,
                                                                        exclude=bought)[0]}
                content = {it for it, b in zip(q.generate(user).items,
                                               q.generate(user).sources.tolist(), strict=True)
                           if b & 1}
                differ += content != single
            assert differ >= 3  # the interests changed the content source for several users

    asyncio.run(main())
