"""HTTP API (aiohttp) served by each worker: routes only, over :class:`Queries`.

User ids in URLs are raw ids; with ``PROFILES_ID_SECRET`` set the queries pseudonymise them,
exactly as at ingest.  With ``PROFILES_API_TOKEN`` set every route except ``/metrics``,
``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <token>``.  A request for a user
owned by another worker is forwarded to it once (``stream.serve.routing``).

Exposure: :func:`check_exposure` refuses a non-loopback ``PROFILES_HTTP_HOST`` without a token
unless ``PROFILES_ALLOW_OPEN_API`` says so.  Logs name a request by its route pattern
(``/users/{id}/profile``), never by its path, which holds the raw user id.  The peers' routes
``/internal/*`` check their JSON bodies (types, the vector's dimension, ``k`` in 1..MAX_K,
list lengths): 400 with one line otherwise.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.core.errors import BadRequest, ConfigError, QueryError
from stream.serve.explain import parse_explain
from stream.serve.queries import MAX_K, Queries, parse_k
from stream.serve.routing import FORWARDED, Router, route_name
from stream.settings import Settings

__all__ = ["MAX_INTERNAL_ARMS", "OPEN_PATHS", "Api", "check_exposure", "is_loopback"]

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset(("/metrics", "/healthz", "/readyz"))
#: requests that do not make the worker "serving" (stream.worker.slicing): monitoring polls
#: /stats too (a bench draining a backlog polled it, and paid for slices it did not need)
NOT_SERVING = OPEN_PATHS | {"/stats"}
#: most arms one /internal/arms request may ask for (a candidate pool is far smaller)
MAX_INTERNAL_ARMS = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def is_loopback(host: str) -> bool:
    """True when binding ``host`` serves this machine only: ``localhost`` or a loopback IP
    (``127.0.0.0/8``, ``::1``).  Any other name may resolve to a public address."""
    h = host.strip().strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_exposure(s: Settings) -> None:
    """Refuse to serve the API beyond loopback with no token (ConfigError, one line), unless
    ``allow_open_api`` opts in."""
    if is_loopback(s.http_host) or s.api_token.reveal() or s.allow_open_api:
        return
    raise ConfigError(
        f"refusing to serve the HTTP API on {s.http_host or '(all interfaces)'!r} without a "
        f"token: set PROFILES_API_TOKEN, bind a loopback PROFILES_HTTP_HOST, or set "
        f"PROFILES_ALLOW_OPEN_API=true to serve it open")


def _int_in(body: dict[str, Any], name: str, lo: int, hi: int) -> int:
    v = body.get(name)
    if type(v) is not int or not lo <= v <= hi:
        raise BadRequest(f"{name} must be an integer in {lo}..{hi}")
    return v


def _strings(body: dict[str, Any], name: str, most: int, default: list[str] | None = None
             ) -> list[str]:
    v = body.get(name, default)
    if not isinstance(v, list) or len(v) > most or not all(isinstance(x, str) for x in v):
        raise BadRequest(f"{name} must be a list of at most {most} strings")
    return v


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, an integer of > 4300 digits
        raise BadRequest("body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


class Api:
    """The routes of one worker."""

    def __init__(self, queries: Queries, *, token: str = "", router: Router | None = None
                 ) -> None:
        self.q = queries
        self.token = token
        self.router = router

    def runner(self) -> web.AppRunner:
        """The runner the worker serves :meth:`app` with: no access log (it prints paths, which
        hold raw user ids)."""
        return web.AppRunner(self.app(), access_log=None)

    def app(self) -> web.Application:
        # the body bound (aiohttp's default is 1 MiB, below the front's): a larger body is
        # refused while it is read, never held whole (413 with the setting's name, counted)
        app = web.Application(client_max_size=self.q.p.s.http_max_body_bytes,
                              middlewares=[self._errors, self._auth, self._route])
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/stats", self.stats)
        r.add_get("/users/{id}/profile", self.profile)
        r.add_delete("/users/{id}", self.forget)
        r.add_get("/users/{id}/candidates", self.candidates)
        r.add_get("/users/{id}/similar", self.similar)
        r.add_get("/users/{id}/search", self.search)
        r.add_get("/arms/{arm}", self.arm)
        r.add_get("/arms", self.top_arms)
        r.add_get("/segments", self.segments)
        r.add_post("/internal/users/search", self.internal_search)
        r.add_post("/internal/arms", self.internal_arms)
        return app

    # ------------------------------------------------------------------ middlewares
    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in NOT_SERVING:  # serving: batches applied in slices meanwhile
            self.q.p.serving.note()  # (stream.worker.slicing; scrapes, probes, /stats do not)
        try:
            return await handler(request)
        except QueryError as exc:
            return _error(exc.status, str(exc))
        except web.HTTPRequestEntityTooLarge:
            self.q.p.metrics.http_bodies_rejected.inc()
            return _error(413, f"request body over {self.q.p.s.http_max_body_bytes} bytes "
                               "(PROFILES_HTTP_MAX_BODY_BYTES)")
        except web.HTTPException:
            raise  # aiohttp's own 404 / 405: their bodies echo nothing
        except Exception as exc:
            # Named by route pattern and exception type only: the path and the message can
            # hold the raw user id.
            log.error("%s %s failed: %s\n%s", request.method, route_name(request),
                      type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)))
            return _error(500, "internal error")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token and request.path not in OPEN_PATHS:
            # Header bytes that are not UTF-8 arrive as surrogates: surrogateescape gives the
            # bytes back, so any value compares (and fails) instead of raising.
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, f"Bearer {self.token}".encode()):
                return _error(401, "missing or wrong bearer token")
        return await handler(request)

    @web.middleware
    async def _route(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Forward a user's GET to the worker that owns the user's partition."""
        if (self.router is not None and request.method == "GET" and "id" in request.match_info
                and FORWARDED not in request.headers):
            owner = self.router.owner(request.match_info["id"])
            if owner is not None:
                return await self.router.forward(request, owner)
        return await handler(request)

    # ------------------------------------------------------------------ routes
    @staticmethod
    def _flag(request: web.Request, name: str) -> bool:
        return request.query.get(name) in ("1", "true")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ok = self.q.ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.q.p.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.q.stats())

    async def profile(self, request: web.Request) -> web.Response:
        return web.json_response(self.q.profile(request.match_info["id"],
                                                with_vector=self._flag(request, "vector")))

    async def forget(self, request: web.Request) -> web.Response:
        return web.json_response(await self.q.forget(request.match_info["id"]), status=202)

    async def candidates(self, request: web.Request) -> web.Response:
        k = parse_k(request.query.get("k"), 20)
        explain = parse_explain(request.query.get("explain"))
        return web.json_response(await self.q.candidates(
            request.match_info["id"], k, request.headers.get("Authorization"), explain=explain))

    async def search(self, request: web.Request) -> web.Response:
        k = parse_k(request.query.get("k"), 10)
        return web.json_response(await self.q.search(request.match_info["id"],
                                                     request.query.get("q"), k))

    async def similar(self, request: web.Request) -> web.Response:
        k = parse_k(request.query.get("k"), 10)
        return web.json_response(await self.q.similar(
            request.match_info["id"], k, include_self=self._flag(request, "include_self"),
            auth=request.headers.get("Authorization")))

    async def arm(self, request: web.Request) -> web.Response:
        return web.json_response(await self.q.arm(
            request.match_info["arm"], request.query.get("context"),
            request.headers.get("Authorization")))

    async def top_arms(self, request: web.Request) -> web.Response:
        return web.json_response(self.q.top_arms(parse_k(request.query.get("k"), 20)))

    async def segments(self, request: web.Request) -> web.Response:
        return web.json_response(self.q.segments())

    async def internal_search(self, request: web.Request) -> web.Response:
        """This worker's share of a scatter-gather look-alike search:
        ``{"vector": [dim floats], "k": 1..MAX_K, "exclude": [at most MAX_K ids]}``."""
        body = await _json_object(request)
        vector = body.get("vector")
        dim = self.q.p.dim
        vec = None
        if (isinstance(vector, list) and len(vector) == dim
                and all(type(x) in (int, float) for x in vector)):
            try:
                with np.errstate(over="ignore"):  # beyond float32: inf, refused below
                    vec = np.asarray(vector, dtype=np.float64).astype(np.float32)
            except OverflowError:  # an integer beyond float64
                vec = None
        if vec is None or not np.isfinite(vec).all():
            raise BadRequest(f"vector must be a list of {dim} finite (float32) numbers")
        k = _int_in(body, "k", 1, MAX_K)
        exclude = _strings(body, "exclude", MAX_K, default=[])
        return web.json_response(self.q.local_search(vec.tolist(), k, exclude))

    async def internal_arms(self, request: web.Request) -> web.Response:
        """This worker's partial counts for some arms (the posterior is the sum of partials):
        ``{"arms": [at most MAX_INTERNAL_ARMS names]}``."""
        arms = _strings(await _json_object(request), "arms", MAX_INTERNAL_ARMS)
        return web.json_response(self.q.local_arm_state(arms))
