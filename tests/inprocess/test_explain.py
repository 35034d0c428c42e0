"""``/candidates?explain=1`` over the in-process worker: the content explanation is the real
decomposition of the similarity over the user's logged events (checked against a brute-force
recomputation from the log), co-visitation lists the real seeds, forget erases the buffer."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from stream.core.events import Item
from stream.core.hybrid import FEATURES
from stream.data.generate import generate
from stream.serve import queries as queries_module
from stream.serve.queries import Queries
from stream.settings import Settings
from stream.worker.testing import InProcessWorker
from tests.inprocess.test_pipeline import DIM, ITEMS, T, ev, run
from tests.vectors import catalogue_vectors

pytestmark = pytest.mark.inprocess

_COVIS = FEATURES.index("covis_score")
_CONTENT = FEATURES.index("content_sim")


def _shares(events: list[dict[str, Any]], item_vecs: dict[str, np.ndarray],
            query_vecs: dict[str, np.ndarray], weights: dict[str, float], half_life: float
            ) -> dict[str, tuple[np.ndarray, list[tuple[dict[str, Any], np.ndarray]]]]:
    """Per user, straight from the log: the profile sum and each event's weighted, decayed
    vector (the profile's definition; no code under test)."""
    per_user: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = defaultdict(list)
    for e in events:
        v = query_vecs.get(e.get("query", "")) if e["type"] == "search" else \
            item_vecs.get(e.get("item_id") or "")
        if v is not None:
            per_user[e["user_id"]].append((e, np.asarray(v, dtype=np.float64)))
    out = {}
    for user, evs in per_user.items():
        anchor = max(e["ts"] for e, _ in evs)
        parts = [(e, weights.get(e["type"], 0.0) * 2.0 ** ((e["ts"] - anchor) / half_life) * v)
                 for e, v in evs]
        out[user] = (np.sum([p for _, p in parts], axis=0), parts)
    return out


def test_the_content_explanation_is_the_real_decomposition_over_logged_events(tmp_path) -> None:
    ds = generate(users=40, items=60, events=400, seed=11)
    enc = HashingEncoder(DIM)
    item_vecs, query_vecs = catalogue_vectors(ds, enc)
    s = Settings.from_env({}, state_dir=str(tmp_path / "state"), explain_events=3)
    weights = s.event_weight_map()
    oracle = _shares(ds.events, item_vecs, query_vecs, weights, s.half_life_ms)
    recent_n = s.signal_params().recent_n
    checked_zero = checked_queries = 0

    async def main() -> None:
        nonlocal checked_zero, checked_queries
        async with InProcessWorker(s, enc) as w:
            await w.items(ds.items)
            for i in range(0, len(ds.events), 100):
                await w.events(ds.events[i:i + 100])
            q = Queries(w.pipeline)
            for user, (total, parts) in sorted(oracle.items()):
                norm = float(np.linalg.norm(total))
                body = await q.candidates(user, 8, explain=True)
                inside = [e["type"] != "search" and weights.get(e["type"], 0.0) > 0
                          for e, _ in parts]
                buffered = [ep for ep, keep in zip(parts, inside) if keep]
                outside = [p for (_, p), keep in zip(parts, inside) if not keep]
                assert body["candidates"]
                for c in body["candidates"]:
                    x = item_vecs[c["item_id"]].astype(np.float64)
                    want_sim = float(total @ x) / norm
                    ex = c["explain"]["content"]
                    listed = sum(e["contribution"] for e in ex["events"])
                    # the split is exact, and the similarity is the served profile's
                    assert math.isclose(listed + ex["omitted"]["contribution"] + ex["remainder"],
                                        ex["similarity"], abs_tol=1e-5)
                    assert math.isclose(ex["similarity"], want_sim, abs_tol=1e-5)
                    assert len(ex["events"]) <= 3
                    # the same similarity split over the user's interests (their means sum to
                    # the profile's sum, up to their int8 storage: 0.0075 seen here, under
                    # 2e-3 with fp16)
                    si = c["explain"]["interests"]
                    parts_i = [i["contribution"] for i in si["interests"]]
                    assert math.isclose(sum(parts_i) + si["remainder"], ex["similarity"],
                                        abs_tol=1e-9)
                    assert abs(si["remainder"]) < 2e-2 and len(parts_i) <= s.interests_k
                    # every listed event is a logged event of this user, with its real share
                    logged = defaultdict(list)
                    for e, p in buffered:
                        logged[(e["ts"], e["item_id"])].append(float(p @ x) / norm)
                    for e in ex["events"]:
                        assert any(math.isclose(e["contribution"], v, abs_tol=1e-6)
                                   for v in logged[(e["ts"], e["item_id"])]), e
                    if len(buffered) <= recent_n:  # the buffer holds every item event
                        # the remainder is exactly the events the buffer cannot hold: queries
                        want_rest = sum(float(p @ x) for p in outside) / norm
                        assert ex["remainder_events"] == len(outside)
                        assert math.isclose(ex["remainder"], want_rest, abs_tol=1e-5), user
                        if outside:
                            checked_queries += abs(want_rest) > 1e-3
                        else:
                            checked_zero += 1
                            assert abs(ex["remainder"]) < 1e-5

    asyncio.run(main())
    # the log exercised both cases: users all in the buffer, and users with query events
    assert checked_zero >= 20 and checked_queries >= 5, (checked_zero, checked_queries)


def test_covis_explanation_lists_the_seeds_whose_neighbour_lists_held_it(tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        # u2..u5 view i0 then i2 (and i4): i2 and i4 are i0's co-visited neighbours
        await w.events([ev(f"a{u}", f"u{u}", ts=T, item_id="i0") for u in range(2, 6)]
                       + [ev(f"b{u}", f"u{u}", ts=T + 1, item_id="i2") for u in range(2, 6)]
                       + [ev(f"c{u}", f"u{u}", ts=T + 2, item_id="i4") for u in range(2, 4)])
        await w.events([ev("x1", "u1", "click", ts=T + 10, item_id="i0"),
                        ev("x2", "u1", ts=T + 20, item_id="i5")])
        q = Queries(w.pipeline)
        got = await q.candidates("u1", 6, explain=True)
        feats = q.generate("u1")
        covis = dict(zip(feats.items, feats.features[:, _COVIS].tolist()))
        seen = 0
        for c in got["candidates"]:
            ex = c["explain"]
            if covis[c["item_id"]] == 0:
                assert "covis" not in ex
                continue
            seen += 1
            cv = ex["covis"]
            total = sum(t["contribution"] for t in cv["items"]) + cv["omitted"]["contribution"]
            assert math.isclose(total, cv["score"], rel_tol=1e-12)
            assert math.isclose(math.log1p(cv["score"]), covis[c["item_id"]], rel_tol=1e-12)
            assert {t["item_id"] for t in cv["items"]} <= {"i0", "i5"}
            for t in cv["items"]:
                assert t["contribution"] == t["seed_weight"] * t["covis_weight"]
        assert seen >= 1
        by_id = {c["item_id"]: c for c in got["candidates"]}
        assert by_id["i2"]["explain"]["covis"]["items"][0]["item_id"] == "i0"
        assert "covis" in by_id["i2"]["explain"]["sources"]

    run(tmp_path, body)


def test_after_forget_the_explanation_of_a_recreated_user_lists_none_of_the_old_events(
        tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        await w.events([ev(f"o{i}", "u1", "click", ts=T + i, item_id=f"i{i}") for i in range(4)]
                       + [ev("s1", "u2", ts=T, item_id="i0"), ev("s2", "u2", ts=T + 1,
                                                                 item_id="i4")])
        q = Queries(w.pipeline)
        before = await q.candidates("u1", 6, explain=True)
        olds = {e["item_id"] for c in before["candidates"]
                for e in c["explain"]["content"]["events"]}
        assert olds <= {"i0", "i1", "i2", "i3"} and len(olds) >= 2
        await w.events([ev("f1", "u1", "forget", ts=T + 100)])
        await w.events([ev("n1", "u1", ts=T + 200, item_id="i4")])
        after = await q.candidates("u1", 6, explain=True)
        for c in after["candidates"]:
            ex = c["explain"]
            events = ex["content"]["events"]
            assert [(e["item_id"], e["ts"]) for e in events] == [("i4", T + 200)]
            assert ex["content"]["omitted"]["events"] == 0
            assert ex["content"]["remainder_events"] == 0
            # the interests were erased with the rest: one, from the new event only
            assert [i["share"] for i in ex["interests"]["interests"]] == [1.0]
            assert abs(ex["content"]["remainder"]) < 1e-5  # the profile was recreated too
            for t in ex.get("covis", {}).get("items", []):
                assert t["item_id"] == "i4"
        # the restart (snapshot, replay) keeps the same buffer: the same explanation
        w2 = await w.restart()
        try:
            again = await Queries(w2.pipeline).candidates("u1", 6, explain=True)
            was = {c["item_id"]: c["explain"]["content"] for c in after["candidates"]}
            now = {c["item_id"]: c["explain"]["content"] for c in again["candidates"]}
            assert now == was
        finally:
            await w2.__aexit__(None, None, None)

    run(tmp_path, body)


def test_explanations_are_off_by_default_and_cost_nothing_then(tmp_path, monkeypatch) -> None:
    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "u1", ts=T, item_id="i0"), ev("e2", "u1", ts=T + 1,
                                                                item_id="i2")])
        q = Queries(w.pipeline)
        on = await q.candidates("u1", 4, explain=True)
        ex = on["candidates"][0]["explain"]
        assert set(ex) >= {"sources", "features", "bandit", "ranker", "content"}
        assert ex["sources"] == on["candidates"][0]["sources"]
        assert ex["bandit"]["served_rank"] == 1
        lin = ex["ranker"]
        assert lin["kind"] == "linear" and {t["feature"] for t in lin["terms"]} <= set(
            q.ranker.features) and all(t["term"] != 0 for t in lin["terms"])

        def boom(*a: Any, **kw: Any) -> None:
            raise AssertionError("explained without explain")

        # a profile made of a query only: nothing in the buffer, all of it is the remainder
        await w.events([ev("q1", "u9", "search", ts=T, query="red shoe")])
        only = await q.candidates("u9", 2, explain=True)
        for c in only["candidates"]:
            got = c["explain"]["content"]
            assert got["events"] == [] and got["omitted"] == {"events": 0, "contribution": 0.0}
            assert got["remainder"] == got["similarity"] and got["remainder_events"] == 1
            assert abs(got["similarity"]) > 0

        monkeypatch.setattr(queries_module, "Explainer", boom)
        off = await q.candidates("u1", 4)
        assert all("explain" not in c for c in off["candidates"])
        # a user without history: trending only, nothing to decompose
        cold = await Queries(w.pipeline).candidates("nobody", 3)
        assert all("explain" not in c for c in cold["candidates"])

    run(tmp_path, body)


def test_the_route_takes_the_explain_flag_and_refuses_a_bad_one(tmp_path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from stream.serve.http import Api

    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "u1", ts=T, item_id="i0"), ev("e2", "u1", ts=T + 1,
                                                                item_id="i2")])
        async with TestClient(TestServer(Api(Queries(w.pipeline)).app())) as c:
            r = await c.get("/users/u1/candidates?k=2&explain=maybe")
            assert r.status == 400
            assert (await r.json())["error"] == "explain must be 0, 1, true or false"
            r = await c.get("/users/u1/candidates?k=2&explain=1")
            got = (await r.json())["candidates"]
            assert r.status == 200 and len(got) == 2 and all("content" in c["explain"]
                                                              for c in got)
            r = await c.get("/users/u1/candidates?k=2")
            assert all("explain" not in c for c in (await r.json())["candidates"])

    run(tmp_path, body)


def test_the_buffer_is_bounded_by_the_setting_and_the_remainder_is_the_older_events(
        tmp_path) -> None:
    enc = HashingEncoder(DIM)
    item_vecs = dict(zip([i["item_id"] for i in ITEMS],
                         enc.encode([Item(i["item_id"], i["title"], i["category"]).text()
                                     for i in ITEMS])))
    log = [ev(f"e{j}", "u1", "click" if j % 3 else "view", ts=T + 1000 * j,
              item_id=f"i{j % 6}") for j in range(12)]

    async def body(w: InProcessWorker) -> None:
        await w.events(log)
        s = w.pipeline.s
        shares = _shares(log, item_vecs, {}, s.event_weight_map(), s.half_life_ms)
        total, parts = shares["u1"]
        norm = float(np.linalg.norm(total))
        got = await Queries(w.pipeline).candidates("u1", 4, explain=True)
        for c in got["candidates"]:
            ex = c["explain"]["content"]
            kept = len(ex["events"]) + ex["omitted"]["events"]
            # the pair rule keeps events with fewer than recent_n events between them and the
            # newest: with distinct times, the newest recent_n + 1
            assert kept == s.signals_recent_n + 1
            assert ex["remainder_events"] == len(log) - kept
            x = item_vecs[c["item_id"]].astype(np.float64)
            older = sum(float(p @ x) for _, p in parts[:len(log) - kept]) / norm
            assert abs(older) > 1e-4  # the dropped events matter here, and are the remainder
            assert math.isclose(ex["remainder"], older, abs_tol=1e-5)
            assert min(e["ts"] for e in ex["events"]) >= T + 1000 * (len(log) - kept)
            assert "interests" not in c["explain"]  # PROFILES_INTERESTS_K=0: none

    run(tmp_path, body, signals_recent_n=5, explain_events=2, interests_k=0)


def test_the_ttl_drops_the_buffer_with_the_profile(tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "idle", ts=T, item_id="i1"), ev("e2", "idle", ts=T + 1,
                                                                 item_id="i3"),
                        ev("e3", "busy", ts=T, item_id="i0")], partition=0)
        await w.events([ev("e4", "busy", ts=T + 3_600_002, item_id="i2")], partition=0)
        assert await w.pipeline.expire() == 1
        # the idle user comes back: the explanation knows only the new event
        await w.events([ev("e5", "idle", ts=T + 3_600_003, item_id="i4")], partition=0)
        got = await Queries(w.pipeline).candidates("idle", 4, explain=True)
        for c in got["candidates"]:
            content = c["explain"]["content"]
            assert [e["item_id"] for e in content["events"]] == ["i4"]
            assert content["remainder_events"] == 0 and abs(content["remainder"]) < 1e-5
            assert all(t["item_id"] == "i4" for t in c["explain"].get("covis", {}).get("items",
                                                                                        []))

    run(tmp_path, body, profile_ttl_ms=3_600_000, ttl_watermark_rank=1)
