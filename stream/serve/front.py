"""The HTTP front of ``profiles worker --processes N``: one public port for N worker processes.

The parent serves ``http_port``; each child serves the API on its own private port (the URL it
advertises to the group, ``stream.worker.supervisor``).  The front

- forwards every API request, body and ``Authorization`` included, to a running child in
  turn; that child answers it or forwards it once to the owner of the user's partition, as any
  worker does (``stream.serve.routing``), so a request costs at most one more loopback hop;
  a body over ``PROFILES_FRONT_MAX_BODY_BYTES`` gets 413 there, neither read whole nor
  forwarded (``profiles_front_bodies_rejected_total``);
- answers ``/metrics`` with every child's exposition merged, each child's series labelled
  ``process="<slot>"`` (and the parent's own: restarts, which children answered, its process
  collector with ``process="supervisor"``).  prometheus-client's multiprocess mode is not
  used: the exactly-once counters are collectors reading the partition states, which that mode
  cannot share; merging keeps every series, and the label keeps two children's series apart
  (a partition's series moves between them at a rebalance, as between hosts);
- answers ``/stats`` with the children's totals summed (``partitions`` joined, ``ready`` when
  every child is) and ``/readyz`` with 200 once every child runs and is ready; ``/healthz``
  is the parent's own liveness.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from stream.serve.http import check_exposure
from stream.settings import Settings
from stream.worker.supervisor import Child, Supervisor

__all__ = ["Front", "aggregate_stats", "label_sample", "merge_expositions", "run_supervised"]

log = logging.getLogger("stream.front")

LABEL = "process"
#: headers passed to a child and back (hop-by-hop ones and Host are the proxy's own)
_REQUEST_HEADERS = ("Authorization", "Content-Type", "Accept", "X-Profiles-Forwarded")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_sample(line: str, value: str, label: str = LABEL) -> str:
    """A sample line of the text exposition with ``label="value"`` added first."""
    cut = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=len(line))
    name, rest = line[:cut], line[cut:]
    pair = f'{label}="{_escape(value)}"'
    if rest.startswith("{"):
        return f"{name}{{{pair}{'' if rest.startswith('{}') else ','}{rest[1:]}"
    return f"{name}{{{pair}}}{rest}"


def merge_expositions(sources: Iterable[tuple[str | None, str]], label: str = LABEL) -> str:
    """Merge Prometheus text expositions into one: each family once (its HELP and TYPE from
    the first source that has it), its samples from every source, those of a source with a
    label value given labelled ``label="value"``."""
    headers: dict[str, dict[str, str]] = {}
    samples: dict[str, list[str]] = {}
    for value, text in sources:
        family: str | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    headers.setdefault(family, {}).setdefault(parts[1], line)
                    samples.setdefault(family, [])
                continue
            if family is None:  # a sample without a header: its own untyped family
                family = line.split("{", 1)[0].split(" ", 1)[0]
                headers.setdefault(family, {})
                samples.setdefault(family, [])
            samples[family].append(line if value is None else label_sample(line, value, label))
    out: list[str] = []
    for family, lines in samples.items():
        h = headers[family]
        out.extend(h[k] for k in ("HELP", "TYPE") if k in h)
        out.extend(lines)
    return "\n".join(out) + "\n"


def aggregate_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The children's ``/stats`` as one worker's: counts summed, ``partitions`` joined,
    ``ready`` when every child is, ``items_index`` the largest (each child holds the whole
    catalogue), ``signals`` summed (``newest_ts`` the newest); anything else from the first."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if k == "partitions" and isinstance(v, dict):
                out.setdefault(k, {}).update(v)
            elif k == "ready":
                out[k] = bool(out.get(k, True)) and bool(v)
            elif k == "items_index" and isinstance(v, (int, float)):
                out[k] = max(out.get(k, 0), v)
            elif k == "signals" and isinstance(v, dict):
                acc = out.setdefault(k, {})
                for sk, sv in v.items():
                    if sk == "newest_ts":
                        acc[sk] = sv if acc.get(sk) is None else max(acc[sk], sv or 0)
                    elif isinstance(sv, (int, float)):
                        acc[sk] = acc.get(sk, 0) + sv
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
            else:
                out.setdefault(k, v)
    if "ready" not in out:
        out["ready"] = False
    return out


class Front:
    """The parent's aiohttp app over a :class:`Supervisor`."""

    def __init__(self, supervisor: Supervisor, *, scrape_timeout_s: float = 3.0,
                 proxy_timeout_s: float = 30.0) -> None:
        self.sup = supervisor
        self.max_body_bytes = supervisor.settings.front_max_body_bytes
        self.scrape_timeout_s = scrape_timeout_s
        self.proxy_timeout_s = proxy_timeout_s
        self._next = 0
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # no cookie jar, no pooling limit per host: requests pass through as they come
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/stats", self.stats)
        r.add_route("*", "/{tail:.*}", self.proxy)
        return app

    def runner(self) -> web.AppRunner:
        return web.AppRunner(self.app(), access_log=None)  # paths hold raw user ids

    # ------------------------------------------------------------------ fan-out
    async def _get(self, c: Child, path: str, headers: dict[str, str] | None = None
                   ) -> tuple[int, bytes] | None:
        try:
            async with self.session().get(
                    self.sup.url(c) + path, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.scrape_timeout_s)) as r:
                return r.status, await r.read()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _all(self, path: str, headers: dict[str, str] | None = None
                   ) -> list[tuple[Child, tuple[int, bytes] | None]]:
        children = self.sup.running()
        answers = await asyncio.gather(*(self._get(c, path, headers) for c in children))
        return list(zip(children, answers))

    # ------------------------------------------------------------------ routes
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "processes": len(self.sup.children),
                                  "running": len(self.sup.running())})

    async def readyz(self, request: web.Request) -> web.Response:
        answers = await self._all("/readyz")
        ready = {c.slot: a is not None and a[0] == 200 for c, a in answers}
        ok = len(ready) == len(self.sup.children) and all(ready.values())
        return web.json_response({"ready": ok, "processes": ready}, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        answers = await self._all("/metrics")
        m = self.sup.metrics
        for c in self.sup.children:
            m.process_up.labels(str(c.slot)).set(0)
        sources: list[tuple[str | None, str]] = []
        for c, a in answers:
            if a is not None and a[0] == 200:
                m.process_up.labels(str(c.slot)).set(1)
                sources.append((str(c.slot), a[1].decode("utf-8", "replace")))
        sources.append((None, generate_latest(m.registry).decode()))
        sources.append(("supervisor", generate_latest(m.own).decode()))
        return web.Response(body=merge_expositions(sources).encode(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stats(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        answers = await self._all("/stats", {"Authorization": auth} if auth else None)
        parts = []
        for _c, a in answers:
            if a is not None and a[0] != 200:  # 401: the token is checked by the children
                return web.Response(body=a[1], status=a[0], content_type="application/json")
            if a is not None:
                parts.append(_json(a[1]))
        out = aggregate_stats(parts)
        out["ready"] = out["ready"] and len(parts) == len(self.sup.children)
        out["processes"] = self.sup.describe()
        return web.json_response(out)

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        """Forward to the running children in turn; on a connection error, to the next."""
        children = self.sup.running()
        if not children:
            return web.json_response({"error": "no worker process running"}, status=503)
        # a declared length is refused before reading; a chunked body once it outgrows the bound
        if (request.content_length or 0) > self.max_body_bytes:
            return self._too_large()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        headers = {k: request.headers[k] for k in _REQUEST_HEADERS if k in request.headers}
        start = self._next
        self._next += 1
        for i in range(len(children)):
            c = children[(start + i) % len(children)]
            url = URL(self.sup.url(c) + request.raw_path, encoded=True)
            try:
                async with self.session().request(
                        request.method, url, data=body or None, headers=headers,
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=self.proxy_timeout_s)) as r:
                    payload = await r.read()
                    out = web.Response(body=payload, status=r.status)
                    if "Content-Type" in r.headers:
                        out.headers["Content-Type"] = r.headers["Content-Type"]
                    return out
            except aiohttp.ClientConnectionError:
                continue  # restarting: the next child answers (it routes to the owner)
            except TimeoutError:
                break
        return web.json_response({"error": "worker processes unreachable"}, status=503)

    def _too_large(self) -> web.Response:
        self.sup.metrics.front_bodies_rejected.inc()
        return web.json_response(
            {"error": f"request body over {self.max_body_bytes} bytes "
                      "(PROFILES_FRONT_MAX_BODY_BYTES)"}, status=413)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _serve(settings: Settings, n: int) -> int:
    sup = Supervisor(settings, n)
    front = Front(sup)
    runner = front.runner()
    await runner.setup()
    # the public port first: taken, the parent stops before starting any child
    await web.TCPSite(runner, settings.http_host, settings.http_port).start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(sup.stop()))
    log.info("HTTP on http://%s:%d for %d worker processes", settings.http_host,
             settings.http_port, n)
    try:
        await sup.start()
        await sup.wait_stopped()  # SIGTERM/SIGINT, or a child's configuration error
    finally:
        await runner.cleanup()
        await front.close()
    return sup.exit_code


def run_supervised(settings: Settings, n: int) -> int:
    """Serve ``http_port`` and run ``n`` supervised worker processes until SIGTERM/SIGINT;
    the exit status (0: every child stopped cleanly)."""
    check_exposure(settings)  # one line, before any child starts
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if n > settings.partitions:
        log.warning("%d processes for %d partitions (PROFILES_PARTITIONS): %d stay idle", n,
                    settings.partitions, n - settings.partitions)
    return asyncio.run(_serve(settings, n))
