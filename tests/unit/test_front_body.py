"""The front of ``profiles worker --processes N`` bounds request bodies
(``PROFILES_FRONT_MAX_BODY_BYTES``): a larger body gets 413 with a one-line message, is not
forwarded, and counts in ``profiles_front_bodies_rejected_total``.  The child is an in-process
aiohttp echo app (no subprocess), so this runs in well under a second."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from stream.core.errors import ConfigError
from stream.serve.front import Front
from stream.settings import Settings
from stream.worker.supervisor import Child, Supervisor

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

LIMIT = 1000


def test_the_bound_is_validated_in_one_line(capsys):
    from stream.cli import main

    assert Settings.from_env({}).front_max_body_bytes == 4 << 20  # aiohttp's bound before
    assert Settings.from_env({"PROFILES_FRONT_MAX_BODY_BYTES": "1"}).front_max_body_bytes == 1
    for raw in ("0", "-5", str((1 << 30) + 1)):
        with pytest.raises(ConfigError) as exc:
            Settings.from_env({"PROFILES_FRONT_MAX_BODY_BYTES": raw})
        assert str(exc.value) == \
            f"front_max_body_bytes must be in 1..1073741824 (1 GiB), got {int(raw)}"
    with pytest.raises(ConfigError, match="PROFILES_FRONT_MAX_BODY_BYTES='4M' is not a valid int"):
        Settings.from_env({"PROFILES_FRONT_MAX_BODY_BYTES": "4M"})
    with pytest.raises(SystemExit) as stop:
        main(["worker", "--front-max-body-bytes", "0"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "profiles: error: front_max_body_bytes must be in 1..1073741824 (1 GiB), got 0"


async def _listen(runner: web.AppRunner) -> int:
    """Serve ``runner`` on a free loopback port; the port."""
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return int(site._server.sockets[0].getsockname()[1])  # the port the OS chose


async def _front_over_echo(check) -> None:
    """A Front over one 'child': an in-process app echoing the size of each body it gets."""
    seen: list[int] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(len(body))
        return web.json_response({"bytes": len(body)})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="")

    child_app = web.Application(client_max_size=1 << 20)
    child_app.router.add_get("/metrics", metrics)
    child_app.router.add_route("*", "/{tail:.*}", echo)
    child_runner = web.AppRunner(child_app)
    sup = Supervisor(Settings.from_env({}, front_max_body_bytes=LIMIT), 1)
    sup.children = [Child(0, await _listen(child_runner))]
    sup.running = lambda: sup.children  # no process to start
    front = Front(sup)
    runner = front.runner()
    port = await _listen(runner)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            await check(f"http://127.0.0.1:{port}", http, sup, seen)
    finally:
        await runner.cleanup()
        await front.close()
        await child_runner.cleanup()


def _rejected(exposition: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for f in text_string_to_metric_families(exposition)
            if f.name == "profiles_front_bodies_rejected" for s in f.samples
            if s.name.endswith("_total")]


def test_a_body_over_the_bound_gets_413_is_not_forwarded_and_is_counted():
    message = {"error": f"request body over {LIMIT} bytes (PROFILES_FRONT_MAX_BODY_BYTES)"}

    async def chunks(n: int, size: int) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield b"x" * size

    async def check(url: str, http: aiohttp.ClientSession, sup: Supervisor,
                    seen: list[int]) -> None:
        async with http.get(url + "/metrics") as r:
            assert _rejected(await r.text()) == [({}, 0.0)]  # exported from the start
        # at the bound: forwarded whole
        async with http.post(url + "/users/u1/events", data=b"x" * LIMIT) as r:
            assert r.status == 200 and (await r.json()) == {"bytes": LIMIT}
        # one byte over, declared in Content-Length: refused before it is read
        async with http.post(url + "/users/u1/events", data=b"x" * (LIMIT + 1)) as r:
            assert r.status == 413
            assert json.loads(await r.text()) == message
        # chunked (no length declared): refused once it outgrows the bound
        async with http.post(url + "/users/u1/events", data=chunks(3, 500)) as r:
            assert r.status == 413
            assert json.loads(await r.text()) == message
        # the connection still serves (the rest of a refused body was drained)
        async with http.post(url + "/users/u1/events", data=chunks(2, 300)) as r:
            assert r.status == 200 and (await r.json()) == {"bytes": 600}
        assert seen == [LIMIT, 600]  # neither refused body reached the child
        assert sup.metrics.front_bodies_rejected._value.get() == 2
        async with http.get(url + "/metrics") as r:
            assert _rejected(await r.text()) == [({}, 2.0)]  # the parent's own: no process label

    asyncio.run(_front_over_echo(check))
