"""Issue 10, points 11, 12 and 14 in process: the HTTP routes over an in-memory worker (bearer
values, ``/internal/*`` bodies, logs, 404 bodies), the bandit arm bound as the worker sees it,
the query-encoder cache, and decision logs whose propensities match what was served."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from stream.kafka.broker import free_port
from stream.serve.queries import Queries
from stream.settings import Settings
from stream.worker.testing import InProcessWorker
from tests.inprocess.test_pipeline import ITEMS, ev

pytestmark = pytest.mark.inprocess

DIM = 32
TOKEN = "t0k"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def run(tmp_path, body: Callable[[InProcessWorker], Awaitable[None]], **settings: Any) -> None:
    s = Settings.from_env({}, state_dir=str(tmp_path / "state"), **settings)

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items(ITEMS)
            await w.events([ev("e1", "u1", item_id="i0"), ev("e2", "u2", item_id="i4"),
                            ev("e3", "u2", "click", item_id="i3")])
            await body(w)

    asyncio.run(main())


async def _raw_get(host: str, port: int, path: str, headers: bytes) -> int:
    """Status of a GET sent as raw bytes (a client library would refuse these headers)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + headers
                 + b"Connection: close\r\n\r\n")
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


# ---------------------------------------------------------------------------- point 12
def test_a_bearer_value_that_is_not_utf8_or_ascii_gets_401(tmp_path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from stream.serve.http import Api

    async def body(w: InProcessWorker) -> None:
        async with TestClient(TestServer(Api(Queries(w.pipeline), token=TOKEN).app())) as c:
            host, port = c.host, c.port
            for value in (b"Bearer t\xffk", b"Bearer \xc3\xa9t0k", b"Bearer t0k\xe2\x82\xac",
                          b"\xff"):
                status = await _raw_get(host, port, "/users/u1/profile",
                                        b"Authorization: " + value + b"\r\n")
                assert status == 401, (value, status)
            assert await _raw_get(host, port, "/users/u1/profile",
                                  f"Authorization: Bearer {TOKEN}\r\n".encode()) == 200

    run(tmp_path, body)


def test_internal_routes_validate_bodies_and_bound_k(tmp_path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from stream.serve.http import Api

    async def body(w: InProcessWorker) -> None:
        vec = [float(x) for x in w.pipeline.profiles.vector("u1")]
        async with TestClient(TestServer(Api(Queries(w.pipeline), token=TOKEN).app())) as c:
            async def post(path: str, data: Any, raw: bytes | None = None) -> tuple[int, Any]:
                if raw is not None:
                    r = await c.post(path, data=raw, headers={**AUTH,
                                                              "Content-Type": "application/json"})
                else:
                    r = await c.post(path, json=data, headers=AUTH)
                return r.status, await r.json()

            search = "/internal/users/search"
            good = {"vector": vec, "k": 2, "exclude": []}
            status, got = await post(search, good)
            assert status == 200 and got["hits"][0]["user_id"] == "u1"
            bad_search: list[tuple[Any, bytes | None]] = [
                (None, b"not json"), ([1, 2], None), ({"k": 2}, None),
                ({**good, "vector": vec[:-1]}, None), ({**good, "vector": "abc"}, None),
                ({**good, "vector": [*vec[:-1], "x"]}, None),
                (None, b'{"vector": [' + b", ".join([b"NaN"] * DIM) + b'], "k": 2}'),
                ({**good, "k": 1001}, None), ({**good, "k": 0}, None), ({**good, "k": "2"}, None),
                ({**good, "k": True}, None), ({**good, "k": 2.5}, None),
                ({**good, "exclude": "u1"}, None), ({**good, "exclude": [1]}, None),
                ({**good, "exclude": ["u"] * 1001}, None),
                ({**good, "vector": [1e300] * DIM}, None), ({**good, "vector": [True] * DIM}, None),
                ({**good, "vector": [10 ** 400] * DIM}, None),
                (None, b'{"vector": [' + b"1" * 5000 + b'], "k": 2}')]
            for data, raw in bad_search:
                status, got = await post(search, data, raw)
                assert status == 400, (data, raw, status, got)
                assert "\n" not in got["error"] and got["error"], got

            status, got = await post("/internal/arms", {"arms": ["i3", "i0"]})
            assert status == 200 and set(got["arms"]) == {"i3", "i0"}
            for data, raw in [(None, b"[]"), ({}, None), ({"arms": "i3"}, None),
                              ({"arms": [3]}, None), ({"arms": [None]}, None),
                              ({"arms": ["i"] * 10_001}, None)]:
                status, got = await post("/internal/arms", data, raw)
                assert status == 400, (data, raw, status, got)

    run(tmp_path, body)


class _ElsewhereMembership:
    """Every user is owned by a worker at ``url`` (which does not answer)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def owner(self, key: str) -> str | None:
        return self.url

    def peers(self) -> list[str]:
        return []


def test_logs_name_the_route_not_the_raw_user_id(tmp_path, caplog) -> None:
    """Served as the worker serves it (Api.runner()): a failed forward and an unexpected error
    are logged by route pattern; the raw id in the path appears in no log record."""
    import aiohttp
    from aiohttp import web

    from stream.serve.http import Api
    from stream.serve.routing import Router

    raw = "alice-raw-id-7"

    async def get(api: Api, path: str) -> tuple[int, str]:
        runner = api.runner()
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://127.0.0.1:{port}{path}") as r:
                return r.status, await r.text()
        finally:
            await runner.cleanup()

    async def body(w: InProcessWorker) -> None:
        router = Router(_ElsewhereMembership(f"http://127.0.0.1:{free_port()}"))
        q = Queries(w.pipeline)
        status, _ = await get(Api(q, router=router), f"/users/{raw}/profile")
        assert status == 503  # forwarding to the owner failed
        await router.close()

        def broken(user: str, with_vector: bool = False) -> dict[str, Any]:
            raise KeyError(user)  # an unexpected error whose message holds the id

        q.profile = broken  # type: ignore[method-assign]
        status, text = await get(Api(q), f"/users/{raw}/profile")
        assert status == 500 and raw not in text

    with caplog.at_level(logging.DEBUG):
        run(tmp_path, body)
    formatter = logging.Formatter()
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert raw not in text, text
    assert "/users/{id}/profile" in text  # the route pattern says which endpoint failed


def test_a_404_does_not_echo_the_pseudonym(tmp_path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from stream.serve.http import Api

    async def body(w: InProcessWorker) -> None:
        pseudonym = w.pipeline.pseudonymize("nobody")
        assert pseudonym != "nobody"
        async with TestClient(TestServer(Api(Queries(w.pipeline)).app())) as c:
            for path in ("/users/nobody/profile", "/users/nobody/similar"):
                r = await c.get(path)
                text = await r.text()
                assert r.status == 404 and pseudonym not in text and "nobody" not in text, text
                assert await r.json() == {"error": "unknown user"}

    run(tmp_path, body, id_secret="s3cret")


def test_candidates_for_an_unknown_user_do_not_echo_the_pseudonym(tmp_path) -> None:
    """/candidates answers a user without history with trending items (200): its body must
    not echo H(id) either, or any caller could hash guesses with the worker's secret."""
    from aiohttp.test_utils import TestClient, TestServer

    from stream.serve.http import Api

    async def body(w: InProcessWorker) -> None:
        await w.items(ITEMS)
        await w.events([ev("e1", "u1", item_id="i0")])
        pseudonym = w.pipeline.pseudonymize("nobody")
        async with TestClient(TestServer(Api(Queries(w.pipeline)).app())) as c:
            r = await c.get("/users/nobody/candidates?k=5")
            text = await r.text()
            assert r.status == 200 and pseudonym not in text and "nobody" not in text, text
            got = await r.json()
            assert got["user_id"] is None and got["candidates"]  # trending, no id echoed
            known = await (await c.get("/users/u1/candidates?k=5")).json()
            assert known["user_id"] == w.pipeline.pseudonymize("u1")

    run(tmp_path, body, id_secret="s3cret")


# ---------------------------------------------------------------------------- point 11
def test_arms_beyond_the_bound_are_counted_and_ignored(tmp_path) -> None:
    """PROFILES_BANDIT_MAX_ARMS bounds each partition's arm table: events of arms beyond it
    are not counted (the table never grows past it) and profiles_bandit_arms_dropped_total
    says how many were dropped; everything else about those events is applied."""
    s = Settings.from_env({}, state_dir=str(tmp_path / "state"), bandit_max_arms=2,
                          partitions=1)

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items(ITEMS)
            await w.events([ev("e1", "u1", item_id="i0"), ev("e2", "u1", item_id="i1"),
                            ev("e3", "u2", item_id="i2"), ev("e4", "u2", "click", item_id="i3"),
                            ev("e5", "u1", "click", item_id="i0")])
            st = w.pipeline.profiles.states[0]
            assert st.arms.arms() == ["i0", "i1"] and st.arms.counts("i0") == (1.0, 1.0)
            reg = w.pipeline.metrics.registry
            assert reg.get_sample_value("profiles_bandit_arms_dropped_total",
                                        {"partition": "0"}) == 2
            assert st.users.get("u2")["events"] == 2  # the events themselves are applied
            w2 = await w.restart()  # the count survives a restart (it lives in the state)
            assert w2.pipeline.metrics.registry.get_sample_value(
                "profiles_bandit_arms_dropped_total", {"partition": "0"}) == 2
            await w2.__aexit__(None, None, None)

    asyncio.run(main())


class _CountingEncoder(HashingEncoder):
    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.texts: list[str] = []

    def encode(self, texts):  # type: ignore[no-untyped-def]
        self.texts.extend(texts)
        return super().encode(texts)


def test_the_query_cache_is_lru_and_bounded_in_bytes() -> None:
    from stream.worker.encoding import EncoderService, cache_entry_bytes

    async def main() -> None:
        enc = _CountingEncoder(DIM)
        one = cache_entry_bytes("q-a", DIM)
        svc = EncoderService(enc, 8, 0.001, cache_bytes=2 * one)  # room for two short queries
        svc.start()
        try:
            for t in ("q-a", "q-b", "q-a", "q-c", "q-a"):  # q-a is used again: q-b goes, not q-a
                await svc.encode([t])
            assert enc.texts == ["q-a", "q-b", "q-c"], enc.texts
            assert svc.cache_bytes <= 2 * one

            long_texts = [f"{i} " + "x" * 1000 for i in range(50)]
            budget = 10 * cache_entry_bytes(long_texts[0], DIM)
            big = EncoderService(enc, 8, 0.001, cache_bytes=budget)
            big.start()
            try:
                await big.encode(long_texts)
                assert big.cache_bytes <= budget and 0 < len(big._cache) <= 10
                assert big.evicted == 50 - len(big._cache)
                # a cached vector owns its memory (a row view would keep the whole batch alive)
                assert all(v.base is None for v in big._cache.values())
            finally:
                await big.stop()
            off = EncoderService(enc, 8, 0.001, cache_bytes=0)  # 0: no cache
            off.start()
            try:
                await off.encode(["q-z", "q-z"])
                await off.encode(["q-z"])
                assert enc.texts.count("q-z") == 2 and not off._cache
            finally:
                await off.stop()
        finally:
            await svc.stop()

    asyncio.run(main())


def test_the_cache_setting_reaches_the_worker_and_evictions_are_counted(tmp_path) -> None:
    s = Settings.from_env({"PROFILES_ENCODER_CACHE_BYTES": "5000"},
                          state_dir=str(tmp_path / "state"))
    assert s.encoder_cache_bytes == 5000

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            svc = w.pipeline.encoder_service
            assert svc.cache_limit == 5000
            await svc.encode([f"query {i}" for i in range(40)])
            assert svc.cache_bytes <= 5000
            assert w.pipeline.metrics.registry.get_sample_value(
                "profiles_encoder_cache_evictions_total") == svc.evicted > 0

    asyncio.run(main())


# ---------------------------------------------------------------------------- point 14
class _MemorySink:
    def __init__(self) -> None:
        self.records: list[bytes] = []

    async def send(self, key: bytes, value: bytes) -> None:
        self.records.append(value)

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("policy", ["thompson", "egreedy:epsilon=0.3"])
def test_logged_propensities_match_what_was_served(tmp_path, policy) -> None:
    """Serve one context (one user, unchanged state) many times: how often each arm is shown
    at a position must match the propensity the decision log recorded for it there.  Served
    rankings come from the worker's seeded generator (fixed here: the frequencies are the same
    on every run); the tolerance is 5 binomial standard errors plus the estimator's bias."""
    import orjson

    from stream.serve.decisions import DecisionLogger

    n = 600
    s = Settings.from_env({}, state_dir=str(tmp_path / "state"), explore_weight=1.0,
                          bandit_policy=policy)

    async def main() -> None:
        async with InProcessWorker(s, HashingEncoder(DIM)) as w:
            await w.items(ITEMS)
            # different posteriors: i2 often clicked, i3 sometimes, i0 / i4 never
            events = [ev("e0", "u1", item_id="i0")]
            for j in range(6):
                events += [ev(f"a{j}", f"v{j}", item_id="i2"),
                           ev(f"b{j}", f"v{j}", "click", item_id="i2"),
                           ev(f"c{j}", f"v{j}", item_id="i0"), ev(f"d{j}", f"v{j}", item_id="i4")]
            events += [ev("f0", "v9", item_id="i3"), ev("f1", "v9", "click", item_id="i3"),
                       ev("f2", "v8", item_id="i3")]
            await w.events(events)
            sink = _MemorySink()
            logger = DecisionLogger(sink)
            q = Queries(w.pipeline, decisions=logger)
            shown: dict[int, Counter[str]] = defaultdict(Counter)
            logged: dict[tuple[int, str], list[float]] = defaultdict(list)
            for _ in range(n):
                got = await q.candidates("u1", 2)
                for pos, c in enumerate(got["candidates"]):
                    shown[pos][c["item_id"]] += 1
                    logged[(pos, c["item_id"])].append(c["propensity"])
            await logger.close()
            assert len(sink.records) == n
            record = orjson.loads(sink.records[-1])
            assert [x["propensity"] for x in record["shown"]] == [
                c["propensity"] for c in got["candidates"]]
            bias = 1.0 / 1001  # the served draw counted in a Thompson estimate
            for pos in (0, 1):
                total = 0.0
                for arm, count in shown[pos].items():
                    p = float(np.mean(logged[(pos, arm)]))
                    total += p
                    tol = 5 * np.sqrt(max(p * (1 - p), 1e-4) / n) + bias
                    assert abs(count / n - p) <= tol, (policy, pos, arm, count / n, p, tol)
                # the arms never shown carry (almost) no probability
                assert total >= 0.97, (policy, pos, total, dict(shown[pos]))

    asyncio.run(main())


def test_an_injected_generator_makes_served_rankings_reproducible(tmp_path) -> None:
    async def body(w: InProcessWorker) -> None:
        runs = []
        for _ in range(2):
            q = Queries(w.pipeline, rng=np.random.default_rng(7))
            runs.append([[c["item_id"] for c in (await q.candidates("u1", 3))["candidates"]]
                         for _ in range(20)])
        assert runs[0] == runs[1]
        assert len({tuple(r) for r in runs[0]}) > 1  # yet fresh randomness per request

    run(tmp_path, body, explore_weight=1.0)
