"""Issue 13, cold start and personalised search, over the in-process worker: ``cold_start`` on
/candidates, a forgotten user answered exactly like a never-seen one, a new item retrievable
as soon as its text is encoded, the exploration prior of a new arm (its measured show rate
against an independent Monte-Carlo oracle), and ``/users/{id}/search`` (the blend against a
numpy oracle, cold start, validation, the bounded query cache)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
import pytest

from encoder.fake import HashingEncoder
from stream.core.errors import BadRequest
from stream.core.exploration import new_arm_bonus, with_exploration_prior
from stream.core.search import SearchParams, affinity, check_query, rank
from stream.serve.queries import Queries
from stream.worker.testing import InProcessWorker
from tests.inprocess.test_pipeline import ITEMS, T, ev
from tests.inprocess.test_pipeline import run as pipeline_run

pytestmark = pytest.mark.inprocess

DIM = 64
SHOP = [
    {"item_id": "k1", "title": "black espresso machine", "category": "coffee"},
    {"item_id": "k2", "title": "black coffee grinder", "category": "coffee"},
    {"item_id": "k3", "title": "black trail running shoes", "category": "shoes"},
    {"item_id": "k4", "title": "black road running shoes", "category": "shoes"},
    {"item_id": "k5", "title": "red espresso cups", "category": "coffee"},
    {"item_id": "k6", "title": "white running socks", "category": "shoes"},
]


#: test_pipeline's in-process run() with this file's encoder dimension
run = functools.partial(pipeline_run, dim=DIM)


# ---------------------------------------------------------------------------- cold start
def test_a_forgotten_user_is_answered_exactly_like_one_never_seen(tmp_path) -> None:
    """Same status, same body (field for field, same trending items in the same order for the
    same random draws), no id or pseudonym echoed, ``cold_start`` true; a user with history
    gets ``cold_start`` false."""
    from aiohttp.test_utils import TestClient, TestServer

    from stream.serve.http import Api

    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "u1", item_id="i0"), ev("e2", "u1", "click", item_id="i2"),
                        ev("e3", "u2", item_id="i4"), ev("e4", "u2", item_id="i5", ts=T + 1)])
        known = await Queries(w.pipeline).candidates("u1", 5)
        assert known["cold_start"] is False and known["user_id"] == w.pipeline.pseudonymize("u1")
        await w.events([{"event_id": "f1", "user_id": "u1", "type": "forget", "ts": T + 2}])
        assert w.pipeline.profiles.owner(w.pipeline.pseudonymize("u1")) is None

        async def both(call: Callable[[Queries, str], Awaitable[dict[str, Any]]]
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
            # one generator state for both: the bandit's draws are then the same
            forgotten = await call(Queries(w.pipeline, rng=np.random.default_rng(5)), "u1")
            never = await call(Queries(w.pipeline, rng=np.random.default_rng(5)), "never-seen")
            return forgotten, never

        forgotten, never = await both(lambda q, u: q.candidates(u, 5))
        assert forgotten == never
        assert forgotten["cold_start"] is True and forgotten["user_id"] is None
        assert forgotten["candidates"] and all(c["sources"] == ["trending"]
                                               for c in forgotten["candidates"])
        forgotten, never = await both(lambda q, u: q.search(u, "coffee item", 3))
        assert forgotten == never and forgotten["cold_start"] is True
        async with TestClient(TestServer(Api(Queries(w.pipeline)).app())) as c:
            for path in ("/users/u1/candidates?k=5", "/users/u1/search?q=coffee&k=3"):
                r = await c.get(path)
                text = await r.text()
                for secret in (w.pipeline.pseudonymize("u1"), "u1"):
                    assert secret not in text, (path, text)
                r2 = await c.get(path.replace("u1", "never-seen"))
                assert r.status == r2.status == 200
                assert sorted(orjson.loads(text)) == sorted(await r2.json())  # same fields

    run(tmp_path, body, id_secret="s3cret")


def test_a_new_item_is_retrievable_as_soon_as_its_text_is_encoded(tmp_path) -> None:
    """No event names the new item, no snapshot, no timer: once the catalogue feed has encoded
    it, the content source of /candidates and the search find it."""

    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "u1", item_id="i0")])
        q = Queries(w.pipeline)
        assert "new" not in q.generate("u1").items
        await w.items([{"item_id": "new", "title": "shoes item 0 deluxe", "category": "shoes"}])
        cands = q.generate("u1")
        assert "new" in cands.items
        got = await q.candidates("u1", 20)
        hit = [c for c in got["candidates"] if c["item_id"] == "new"]
        assert hit and "content" in hit[0]["sources"], got
        found = await q.search("u1", "shoes item 0 deluxe", 1)
        assert [r["item_id"] for r in found["results"]] == ["new"]
        assert found["results"][0]["relevance"] > 0.9  # the item's text is title + category

    run(tmp_path, body)


# ---------------------------------------------------------------------------- new arms
def test_the_new_arm_bonus_fades_linearly_to_nothing() -> None:
    n = np.array([0.0, 25.0, 50.0, 49.0, 1000.0])
    assert new_arm_bonus(n, 50, 4.0).tolist() == pytest.approx([4.0, 2.0, 0.0, 0.08, 0.0])
    assert new_arm_bonus(n, 0, 4.0).tolist() == [0.0] * 5  # off
    a, b = with_exploration_prior(np.array([1.0, 3.0]), np.array([9.0, 27.0]),
                                  np.array([0.0, 20.0]), 10, 3.0)
    assert a.tolist() == [4.0, 3.0] and b.tolist() == [9.0, 27.0]


@pytest.mark.parametrize("young", [0, 100])
def test_a_new_arm_is_shown_at_the_rate_its_exploration_prior_implies(tmp_path, young) -> None:
    """With the policy alone (explore weight 1), how often the never-shown item is served first
    over 400 requests matches P(its draw beats every other arm's), computed here by Monte Carlo
    from the counts of the events fed (a groupby of this test's own log), within 4 sigma.  The
    prior is a realistic Beta(1, 9); the bonus (3 pseudo-clicks, fading over 100 impressions)
    must raise the rate well above the plain prior's."""
    items = ITEMS + [{"item_id": "fresh", "title": "shoes item fresh", "category": "shoes"}]
    events = []
    for j, it in enumerate(f"i{i}" for i in range(6)):  # 20 impressions, 2 clicks each
        for n in range(20):
            events.append(ev(f"v{j}-{n}", f"crowd{n}", item_id=it, ts=T + n))
        events += [ev(f"c{j}-{n}", f"crowd{n}", "click", item_id=it, ts=T + 30 + n)
                   for n in range(2)]
    events.append(ev("me", "shopper", "add_to_cart", item_id="i0", ts=T + 40))
    requests = 400

    async def body(w: InProcessWorker) -> None:
        await w.events(events)
        q = Queries(w.pipeline, rng=np.random.default_rng(11))
        first = 0
        pool: list[str] = []
        for _ in range(requests):
            got = await q.candidates("shopper", 1)
            first += got["candidates"][0]["item_id"] == "fresh"
        pool = q.generate("shopper").items
        assert "fresh" in pool and len(pool) == 7
        # the oracle: counts from the log above, the prior, the bonus, then Monte Carlo
        imp = {f"i{i}": 20.0 for i in range(6)}
        rew = {f"i{i}": 2.0 for i in range(6)}
        alpha = np.array([1.0 + rew.get(a, 0.0) for a in pool])
        beta = np.array([9.0 + imp.get(a, 0.0) - rew.get(a, 0.0) for a in pool])
        fresh = pool.index("fresh")
        if young:  # every arm younger than 100 impressions: 3 pseudo-clicks, fading linearly
            alpha += [3.0 * max(0.0, 1.0 - imp.get(a, 0.0) / young) for a in pool]
        draws = np.random.default_rng(123).beta(alpha, beta, size=(200_000, len(pool)))
        p = float((draws.argmax(axis=1) == fresh).mean())
        rate = first / requests
        assert abs(rate - p) <= 4 * np.sqrt(p * (1 - p) / requests) + 1e-9, (rate, p)
        if young:
            assert rate > 0.6
        else:
            assert rate < 0.35

    run(tmp_path, body, items=items, explore_weight=1.0, prior_alpha=1.0, prior_beta=9.0,
        explore_new_arms=young, explore_new_arm_bonus=3.0)


# ---------------------------------------------------------------------------- search
def _oracle(query: str, user_items: list[str], weight: float, k: int) -> list[str]:
    """Numpy ranking from the encoder's vectors: relevance = cosine with the query, affinity =
    cosine with the profile of one event (its item's vector), ties by relevance then id."""
    enc = HashingEncoder(DIM)
    titles = {it["item_id"]: f"{it['title']} | {it['category']}" for it in SHOP}  # Item.text
    ids = sorted(titles)
    e = enc.encode([titles[i] for i in ids])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    qv = enc.encode([query])[0]
    qv /= np.linalg.norm(qv)
    rel = e @ qv
    if user_items:
        prof = sum(e[ids.index(i)] for i in user_items)
        prof /= np.linalg.norm(prof)
        score = (1 - weight) * rel + weight * (e @ prof)
    else:
        score = rel
    return sorted(ids, key=lambda i: (-round(score[ids.index(i)], 6),
                                      -round(rel[ids.index(i)], 6), i))[:k]


def test_search_blends_query_relevance_with_the_users_interests(tmp_path) -> None:
    """"black" matches shoes and coffee alike: a coffee shopper gets the coffee items first, a
    shoe shopper the shoes, a cold-start user plain relevance; each equals the numpy oracle."""

    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "coffee-fan", item_id="k5"),
                        ev("e2", "runner", item_id="k6")])
        q = Queries(w.pipeline)
        for user, seen in (("coffee-fan", ["k5"]), ("runner", ["k6"]), ("nobody", [])):
            got = await q.search(user, "  black  ", 4)
            ids = [r["item_id"] for r in got["results"]]
            assert ids == _oracle("black", seen, 0.5, 4), (user, got)
            assert got["cold_start"] is (not seen)
            assert got["blend"] == (0.5 if seen else 0.0)
        coffee = [r["category"] for r in (await q.search("coffee-fan", "black", 2))["results"]]
        shoes = [r["category"] for r in (await q.search("runner", "black", 2))["results"]]
        assert coffee == ["coffee", "coffee"] and shoes == ["shoes", "shoes"]
        plain = [r["category"] for r in (await q.search("nobody", "black", 4))["results"]]
        assert sorted(plain) == ["coffee", "coffee", "shoes", "shoes"]

    run(tmp_path, body, items=SHOP, search_blend=0.5)


def test_search_validates_q_and_k_with_one_line_400s(tmp_path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from stream.serve.http import Api

    async def body(w: InProcessWorker) -> None:
        async with TestClient(TestServer(Api(Queries(w.pipeline)).app())) as c:
            for query in ("", "?q=", "?q=%20%20", "?q=" + "a" * 41, "?q=a%00b", "?q=shoe&k=0",
                          "?q=shoe&k=x", "?q=shoe&k=1001"):
                r = await c.get("/users/u1/search" + query)
                text = await r.text()
                assert r.status == 400 and "\n" not in text, (query, text)
                assert set(await r.json()) == {"error"}
            r = await c.get("/users/u1/search?q=shoes%20item&k=2")
            assert r.status == 200 and len((await r.json())["results"]) == 2

    run(tmp_path, body, search_max_chars=40)


def test_check_query_and_rank_edges() -> None:
    assert check_query(" shoes ", 10) == "shoes"
    for bad in (None, "", " \t ", "x" * 11, "a\nb"):
        with pytest.raises(BadRequest):
            check_query(bad, 10)
    # ties: relevance first, then id; k beyond the pool is the pool
    hits = rank(["b", "a", "c"], np.array([0.5, 0.5, 0.4]), np.array([0.5, 0.5, 0.6]), 0.5, 9)
    assert [h.item_id for h in hits] == ["a", "b", "c"]
    assert [h.score for h in hits] == pytest.approx([0.5, 0.5, 0.5])
    assert affinity(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[[0, 2]]).tolist() \
        == [1.0, 0.0, 1.0]  # the nearest interest counts
    with pytest.raises(ValueError):
        SearchParams(blend=1.5)


def test_search_queries_are_encoded_once_and_the_cache_stays_bounded(tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        svc = w.pipeline.encoder_service
        q = Queries(w.pipeline)
        before = w.pipeline.metrics.encoder_texts.labels("query")._value.get()
        for _ in range(3):
            await q.search("u1", "repeated query", 2)
        after = w.pipeline.metrics.encoder_texts.labels("query")._value.get()
        assert after - before == 1  # the cache served the repeats
        for i in range(60):  # ~530 bytes each: about 15 fit in 8 KiB
            await q.search("u1", f"distinct query number {i}", 2)
        assert 0 < svc.cache_bytes <= svc.cache_limit == 8192 and svc.evicted > 0

    run(tmp_path, body, encoder_cache_bytes=8192)


@pytest.mark.parametrize("interests_k", [4, 0])
def test_search_uses_the_nearest_interest_when_the_worker_keeps_interests(tmp_path,
                                                                         interests_k) -> None:
    """A user who viewed espresso cups and running socks (two interests far apart): with
    multi-interest profiles the affinity is the item's cosine with the *nearer* interest, without
    them with the single profile vector (their normalised sum); each ranking equals its numpy
    oracle, and the two differ for "black"."""
    enc = HashingEncoder(DIM)
    ids = [it["item_id"] for it in SHOP]
    e = enc.encode([f"{it['title']} | {it['category']}" for it in SHOP])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    qv = enc.encode(["black"])[0]
    rel = e @ (qv / np.linalg.norm(qv))
    cups, socks = e[ids.index("k5")], e[ids.index("k6")]
    prof = (cups + socks) / np.linalg.norm(cups + socks)
    aff = np.maximum(e @ cups, e @ socks) if interests_k else e @ prof
    score = 0.5 * rel + 0.5 * aff
    want = [ids[i] for i in np.argsort(-score, kind="stable")[:4]]
    assert want == (["k5", "k1", "k4", "k6"] if interests_k else ["k1", "k5", "k4", "k2"])

    async def body(w: InProcessWorker) -> None:
        await w.events([ev("e1", "both", item_id="k5"), ev("e2", "both", item_id="k6")])
        got = await Queries(w.pipeline).search("both", "black", 4)
        assert [r["item_id"] for r in got["results"]] == want
        for r in got["results"]:
            assert r["affinity"] == pytest.approx(float(aff[ids.index(r["item_id"])]), abs=2e-3)

    run(tmp_path, body, items=SHOP, search_blend=0.5, interests_k=interests_k)
