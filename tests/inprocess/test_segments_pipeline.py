"""Customer segments in the worker (stream.worker.segments, no broker): a new version equals a
plain-numpy mini-batch k-means step over the oracle profiles; two workers exchanging their
statistics through the signals topic compute the same version, bit for bit, as one worker
owning every partition; the version survives a restart; forget erases membership; and
``PROFILES_BANDIT_CONTEXT=segment`` counts each event under its user's segment, as a groupby
over the oracle profiles says, merged over workers for ``/candidates``."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from encoder.fake import HashingEncoder
from stream.core.bandit import context_arm
from stream.core.errors import BadRequest, ConfigError, NotFound
from stream.core.segments import Centroids, seed_centroids
from stream.data.generate import generate
from stream.serve.queries import Queries
from stream.settings import Settings
from stream.worker.records import Record
from stream.worker.segments import encode_version, stats_key
from stream.worker.testing import InProcessWorker, ManualClock, Source
from tests.inprocess.test_signals_pipeline import WorkerPeers
from tests.oracle import oracle_profiles
from tests.vectors import catalogue_vectors

pytestmark = pytest.mark.inprocess

DIM = 16
K = 4
EVERY = 10.0
BATCH = 150


def settings(tmp_path: Path, name: str, **kw: Any) -> Settings:
    return Settings.from_env({}, state_dir=str(tmp_path / name), segments_k=K,
                             segments_every_s=EVERY, **kw)


def dataset(seed: int = 3) -> tuple[Any, HashingEncoder, dict[str, np.ndarray],
                                    dict[str, np.ndarray]]:
    ds = generate(users=60, items=40, events=1500, seed=seed)
    enc = HashingEncoder(DIM)
    item_vecs, query_vecs = catalogue_vectors(ds, enc)
    return ds, enc, item_vecs, query_vecs


def oracle_step(prev_c: np.ndarray, prev_n: np.ndarray, profiles: dict[str, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """One mini-batch k-means step written out per user (Sculley 2010, spherical): each user
    joins the centroid of largest cosine (the lower id on a tie); per centroid the count and
    the normalised move c + n / (N + n) * (mean - c)."""
    members: dict[int, list[np.ndarray]] = defaultdict(list)
    for user in sorted(profiles):
        v = profiles[user]
        if not np.any(v):
            continue
        sims = [float(np.dot(v, c)) for c in prev_c.astype(np.float64)]
        members[sims.index(max(sims))].append(v)
    new_c = prev_c.astype(np.float64).copy()
    new_n = prev_n.astype(np.float64).copy()
    for j, vs in members.items():
        n = len(vs)
        mean = np.sum(vs, axis=0) / n
        new_n[j] += n
        c = new_c[j] + n / new_n[j] * (mean - new_c[j])
        new_c[j] = c / np.linalg.norm(c)
    return new_c, new_n, {j: len(vs) for j, vs in members.items()}


async def feed(workers: list[tuple[InProcessWorker, list[int]]], records: list[Any]) -> None:
    for i in range(0, len(records), BATCH):
        batch = records[i:i + BATCH]
        for w, parts in workers:
            await w.pipeline.process([r for r in batch if r.partition in parts])


async def three_workers(tmp_path: Path, s: Settings, enc: HashingEncoder, clock: ManualClock,
                        items: list[dict[str, Any]]
                        ) -> tuple[InProcessWorker, InProcessWorker, InProcessWorker]:
    """Started workers with the catalogue loaded: ``one`` owns all four partitions, ``left``
    [0, 1] and ``right`` [2, 3] (the caller closes them)."""
    one = InProcessWorker(s.replace(state_dir=str(tmp_path / "one")), enc, clock=clock)
    left = InProcessWorker(s.replace(state_dir=str(tmp_path / "left")), enc, clock=clock,
                           partitions=[0, 1])
    right = InProcessWorker(s.replace(state_dir=str(tmp_path / "right")), enc, clock=clock,
                            partitions=[2, 3])
    for w in (one, left, right):
        await w.__aenter__()
        await w.items(items)
    return one, left, right


def exchange(*workers: InProcessWorker) -> None:
    """Every worker reads every other's signals topic (the shared compacted topic)."""
    for w in workers:
        for other in workers:
            if other is not w:
                w.pipeline.sharing.receive(other.signals.records())


def test_a_version_equals_the_oracle_and_two_workers_compute_it_bit_for_bit(tmp_path) -> None:
    ds, enc, item_vecs, query_vecs = dataset()

    async def main() -> None:
        clock = ManualClock()
        source = Source(4, clock)
        records = source.records(ds.events)
        s = settings(tmp_path, "x")
        one, left, right = await three_workers(tmp_path, s, enc, clock, ds.items)
        await feed([(one, [0, 1, 2, 3]), (left, [0, 1]), (right, [2, 3])], records)

        # version 1: k-means++ over the catalogue, by the leader (owner of partition 0) only
        await one.pipeline.publish_signals()
        await right.pipeline.publish_signals()
        assert right.pipeline.segments.model is None  # not the leader: waits for the topic
        await left.pipeline.publish_signals()
        v1 = one.pipeline.segments.model
        assert v1 is not None and v1.version == 1
        ids = sorted(item_vecs)
        assert v1.digest() == seed_centroids(np.stack([item_vecs[i] for i in ids]), K,
                                             s.seed).digest()
        exchange(left, right)  # right adopts version 1 and publishes its statistics under it
        assert right.pipeline.segments.model.digest() == v1.digest()
        await right.pipeline.publish_signals()
        exchange(left, right)

        # not yet due: a version lives at least segments_every_s
        await one.pipeline.publish_signals()
        assert one.pipeline.segments.model.version == 1
        clock.advance(EVERY)
        for w in (one, left, right):
            await w.pipeline.publish_signals()
        v2 = one.pipeline.segments.model
        assert v2.version == 2

        want = oracle_profiles(ds.events, item_vecs, query_vecs, s.event_weight_map(),
                               s.half_life_ms)
        c, n, sizes = oracle_step(v1.centroids, v1.counts, want)
        np.testing.assert_allclose(v2.centroids, c, atol=1e-5)
        np.testing.assert_allclose(v2.counts, n, atol=0)
        assert sum(sizes.values()) == len(want)

        # the leader of two workers: the same statistics summed in partition order, bit for bit
        assert left.pipeline.segments.model.digest() == v2.digest()
        exchange(left, right)
        assert right.pipeline.segments.model.digest() == v2.digest()
        for w in (one, left, right):  # a new version: statistics under it at the next publish
            await w.pipeline.publish_signals()
        exchange(left, right)
        want_summary = Queries(one.pipeline).segments()
        assert want_summary["version"] == 2 and want_summary["partitions"] == 4
        assert sum(sg["size"] for sg in want_summary["segments"]) == len(want)
        for w in (left, right):
            assert Queries(w.pipeline).segments() == want_summary
        # every user's segment agrees, whichever worker owns them
        for user in want:
            owner = left if left.pipeline.profiles.owner(user) is not None else right
            seg = owner.pipeline.segments.segment_of(user)
            assert seg == one.pipeline.segments.segment_of(user) is not None
            body = Queries(owner.pipeline).profile(user)
            assert body["segment"] == {"segment": seg, "version": 2}
        got_sizes = [one.pipeline.metrics.registry.get_sample_value(
            "profiles_segment_users", {"segment": str(j)}) for j in range(K)]
        assert got_sizes == [float(sg["size"]) for sg in want_summary["segments"]]
        for w in (one, left, right):
            await w.__aexit__(None, None, None)

    asyncio.run(main())


def test_the_version_survives_a_restart_and_forget_erases_membership(tmp_path) -> None:
    ds, enc, _item_vecs, _query_vecs = dataset(seed=4)

    async def main() -> None:
        s = settings(tmp_path, "state")
        w = InProcessWorker(s, enc)
        await w.__aenter__()
        await w.items(ds.items)
        await feed([(w, [0, 1, 2, 3])], w.source.records(ds.events))
        await w.pipeline.publish_signals()
        w.clock.advance(EVERY)
        await w.pipeline.publish_signals()
        model = w.pipeline.segments.model
        assert model is not None and model.version == 2
        users = sorted({e["user_id"] for e in ds.events})
        before = {u: w.pipeline.segments.segment_of(u) for u in users}

        w2 = await w.restart()  # from the partition snapshots alone (no topic read)
        assert w2.pipeline.segments.model is not None
        assert w2.pipeline.segments.model.digest() == model.digest()
        assert {u: w2.pipeline.segments.segment_of(u) for u in users} == before
        for st in w2.pipeline.profiles.partitions():
            assert st.segments is w2.pipeline.segments.model

        # forget: the user's membership goes with their profile, and from the statistics
        user = users[0]
        seg = before[user]
        assert seg is not None
        st = w2.pipeline.profiles.owner(user)
        assert st is not None
        vec = st.profiles.vector(user).astype(np.float64)
        stats_before = w2.pipeline.segments.partition_stats(st)
        await w2.events([{"event_id": "f1", "user_id": user, "type": "forget",
                          "ts": max(e["ts"] for e in ds.events) + 1}])
        assert w2.pipeline.segments.segment_of(user) is None
        with pytest.raises(NotFound):
            Queries(w2.pipeline).profile(user)
        stats_after = w2.pipeline.segments.partition_stats(st)
        want = stats_before.counts.copy()
        want[seg] -= 1
        np.testing.assert_array_equal(stats_after.counts, want)
        np.testing.assert_allclose(stats_after.sums[seg], stats_before.sums[seg] - vec,
                                   atol=1e-9)
        await w2.__aexit__(None, None, None)

    asyncio.run(main())


def test_bandit_counts_by_segment_equal_a_groupby_and_merge_over_workers(tmp_path) -> None:
    ds, enc, item_vecs, query_vecs = dataset(seed=6)

    async def main() -> None:
        clock = ManualClock()
        source = Source(4, clock)
        records = source.records(ds.events)
        s = settings(tmp_path, "x", bandit_context="segment", explore_weight=0.0)
        one, left, right = await three_workers(tmp_path, s, enc, clock, ds.items)
        half = (len(records) // (2 * BATCH)) * BATCH
        await feed([(one, [0, 1, 2, 3]), (left, [0, 1]), (right, [2, 3])], records[:half])
        for w in (one, left):  # version 1, adopted by all before the second half
            await w.pipeline.publish_signals()
        exchange(left, right)
        model = one.pipeline.segments.model
        assert model is not None and right.pipeline.segments.model.digest() == model.digest()
        await feed([(one, [0, 1, 2, 3]), (left, [0, 1]), (right, [2, 3])], records[half:])

        # the oracle: an event counts under its user's segment as of the end of the batch
        # before its own (the profile of every earlier event), none for a user's first batch
        rw = s.reward_weight_map()
        want: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for i in range(half, len(ds.events), BATCH):
            profiles = oracle_profiles(ds.events[:i], item_vecs, query_vecs,
                                       s.event_weight_map(), s.half_life_ms)
            for e in ds.events[i:i + BATCH]:
                arm = e.get("arm") or e.get("item_id")
                v = profiles.get(e["user_id"])
                if arm is None or v is None or not np.any(v):
                    continue
                sims = [float(np.dot(v, c)) for c in model.centroids.astype(np.float64)]
                c = want[(arm, sims.index(max(sims)))]
                c[0] += 1.0 if e["type"] == "view" else 0.0
                c[1] += rw.get(e["type"], 0.0)
        assert want
        q_one = Queries(one.pipeline)
        got = await q_one.context_arms([context_arm(a, g) for a, g in want])
        for (arm, seg), (imp, rew) in want.items():
            assert got.counts(context_arm(arm, seg)) == pytest.approx((imp, rew)), (arm, seg)
        # nothing else was counted in any segment
        assert len(got) == len(want)

        # served: the user's segment's posteriors, summed over both workers
        q_left, q_right = Queries(left.pipeline), Queries(right.pipeline)
        q_left.peers, q_right.peers = WorkerPeers([q_right]), WorkerPeers([q_left])
        keys = [context_arm(a, g) for a, g in want]
        for q in (q_left, q_right):
            two = await q.context_arms(keys)
            for key in keys:
                assert two.counts(key) == pytest.approx(got.counts(key)), key
        user = ds.events[-1]["user_id"]
        body = await q_one.candidates(user, 10)
        seg = body["segment"]
        assert seg == one.pipeline.segments.segment_of(user) is not None
        q_owner = q_left if left.pipeline.profiles.owner(user) is not None else q_right
        assert (await q_owner.candidates(user, 10))["segment"] == seg
        for c in body["candidates"]:
            if (c["item_id"], seg) in want:  # /arms/{arm}?context=<segment>, over both workers
                ctx = await q_owner.arm(c["item_id"], str(seg))
                assert (ctx["impressions"], ctx["rewards"]) == pytest.approx(
                    tuple(want[(c["item_id"], seg)]))
        for w in (one, left, right):
            await w.__aexit__(None, None, None)

    asyncio.run(main())


def test_settings_and_the_endpoint_when_segments_are_off(tmp_path) -> None:
    with pytest.raises(ConfigError, match="segment"):
        Settings.from_env({}, bandit_context="segment")
    with pytest.raises(ConfigError, match="segments_k"):
        Settings.from_env({}, segments_k=-1)
    with pytest.raises(ConfigError, match="segments_every_s"):
        Settings.from_env({}, segments_k=2, segments_every_s=0.0)

    async def main() -> None:
        s = Settings.from_env({}, state_dir=str(tmp_path / "off"))
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            with pytest.raises(BadRequest, match="PROFILES_SEGMENTS_K"):
                Queries(w.pipeline).segments()
            assert w.pipeline.segments.tick() == []
            for st in w.pipeline.profiles.partitions():
                assert st.to_dict()["segments"] is None

    asyncio.run(main())


def test_a_crash_and_replay_from_the_snapshot_counts_by_segment_as_without_it(tmp_path) -> None:
    """Killed after a snapshot, a worker re-reads what it had applied since: its per-segment
    counts (and centroids) equal those of a worker that never stopped."""
    ds, enc, _item_vecs, _query_vecs = dataset(seed=8)

    async def main() -> None:
        s = settings(tmp_path, "x", bandit_context="segment")
        ref = InProcessWorker(s.replace(state_dir=str(tmp_path / "ref")), enc)
        w = InProcessWorker(s.replace(state_dir=str(tmp_path / "crash")), enc)
        for x in (ref, w):
            await x.__aenter__()
            await x.items(ds.items)
        records = ref.source.records(ds.events)
        half = (len(records) // (2 * BATCH)) * BATCH
        cut = half + 2 * BATCH
        for x in (ref, w):
            await feed([(x, [0, 1, 2, 3])], records[:half])
            await x.pipeline.publish_signals()  # version 1
            await feed([(x, [0, 1, 2, 3])], records[half:cut])
        await w.pipeline.snapshot(everything=True)
        await feed([(w, [0, 1, 2, 3])], records[cut:])  # applied, never snapshotted: lost
        await w.pipeline.encoder_service.stop()
        # a new worker on the snapshots: re-reads everything after them, as Kafka redelivers
        back = InProcessWorker(s.replace(state_dir=str(tmp_path / "crash")), enc)
        await back.__aenter__()
        await back.items(ds.items)
        assert back.pipeline.segments.model.digest() == ref.pipeline.segments.model.digest()
        await feed([(ref, [0, 1, 2, 3])], records[cut:])
        await feed([(back, [0, 1, 2, 3])], records[cut:])

        def contextual(x: InProcessWorker) -> dict[str, tuple[float, float]]:
            out: dict[str, tuple[float, float]] = {}
            for st in x.pipeline.profiles.partitions():
                if st.arms.contextual is not None:
                    out.update({f"{st.partition}/{k}": v
                                for k, v in st.arms.contextual.as_dict().items()})
            return out

        assert contextual(back) == contextual(ref) != {}
        for x in (ref, back):
            await x.__aexit__(None, None, None)

    asyncio.run(main())


def test_the_ttl_drops_membership_with_the_profile(tmp_path) -> None:
    ds, enc, _item_vecs, _query_vecs = dataset(seed=9)
    span = max(e["ts"] for e in ds.events) - min(e["ts"] for e in ds.events)

    async def main() -> None:
        s = settings(tmp_path, "ttl", profile_ttl_ms=span // 3, ttl_watermark_rank=1)
        async with InProcessWorker(s, enc) as w:
            await w.items(ds.items)
            await feed([(w, [0, 1, 2, 3])], w.source.records(ds.events))
            await w.pipeline.publish_signals()
            users = sorted({e["user_id"] for e in ds.events})
            assert all(w.pipeline.segments.segment_of(u) is not None for u in users)
            assert await w.pipeline.expire() > 0
            kept = [u for u in users if w.pipeline.profiles.owner(u) is not None]
            assert 0 < len(kept) < len(users)
            for u in users:
                assert (w.pipeline.segments.segment_of(u) is None) == (u not in kept)
            summary = Queries(w.pipeline).segments()
            assert sum(sg["size"] for sg in summary["segments"]) == len(kept)

    asyncio.run(main())


def test_bad_and_older_records_on_the_topic_change_nothing(tmp_path) -> None:
    async def main() -> None:
        s = settings(tmp_path, "bad")
        async with InProcessWorker(s, HashingEncoder(DIM), partitions=[1]) as w:
            seg = w.pipeline.segments
            rng = np.random.default_rng(0)
            c = rng.normal(size=(K, DIM))
            v3 = Centroids(3, (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32),
                           np.ones(K))
            older = Centroids(2, v3.centroids, np.zeros(K))
            bad = [(b"seg:v", b"not json"), (b"seg:v", b'{"version": 4}'),
                   (b"seg:p:x", b"{}"), (b"seg:zzz", b"{}"),
                   (stats_key(2), b'{"version": 3, "counts": [1], "sums": [[0]]}')]
            recs = [Record(0, i, 0, k, v) for i, (k, v) in enumerate(
                [encode_version(v3), *bad, encode_version(older)])]
            assert w.pipeline.sharing.receive(recs) == 0  # none is an item partial
            assert seg.model is not None and seg.model.digest() == v3.digest()
            assert seg.rejected == len(bad)
            assert seg.received == {}
            # a partition this worker owns: its own statistics are newer than the topic's
            good = {"version": 3, "counts": [0.0] * K, "sums": [[0.0] * DIM] * K}
            seg.receive(Record(0, 9, 0, stats_key(1), orjson.dumps(good)))
            assert 1 not in seg.received
            seg.receive(Record(0, 10, 0, stats_key(2), orjson.dumps(good)))
            assert seg.received[2].version == 3

    asyncio.run(main())


def test_the_segments_route_and_the_profile_over_http(tmp_path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from stream.serve.http import Api

    ds, enc, _item_vecs, _query_vecs = dataset(seed=10)

    async def main() -> None:
        for k, status in ((K, 200), (0, 400)):
            s = Settings.from_env({}, state_dir=str(tmp_path / f"http{k}"), segments_k=k)
            async with InProcessWorker(s, enc) as w:
                await w.items(ds.items)
                await feed([(w, [0, 1, 2, 3])], w.source.records(ds.events[:300]))
                await w.pipeline.publish_signals()
                user = ds.events[0]["user_id"]
                async with TestClient(TestServer(Api(Queries(w.pipeline)).app())) as c:
                    r = await c.get("/segments")
                    body = await r.json()
                    assert r.status == status, body
                    prof = await (await c.get(f"/users/{user}/profile")).json()
                    if k:
                        assert body["version"] == 1 and len(body["segments"]) == K
                        assert prof["segment"] == {
                            "segment": w.pipeline.segments.segment_of(user), "version": 1}
                    else:
                        assert "PROFILES_SEGMENTS_K" in body["error"]
                        assert "segment" not in prof

    asyncio.run(main())
