"""HTTP API (aiohttp) served by each worker: routes only, over :class:`Queries`.

User ids in URLs are raw ids; with ``PROFILES_ID_SECRET`` set the queries pseudonymise them,
exactly as at ingest.  With ``PROFILES_API_TOKEN`` set every route except ``/metrics``,
``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <token>``.  A request for a user
owned by another worker is forwarded to it once (``stream.serve.routing``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.core.errors import QueryError
from stream.serve.queries import Queries, parse_k
from stream.serve.routing import FORWARDED, Router

__all__ = ["OPEN_PATHS", "Api"]

OPEN_PATHS = frozenset(("/metrics", "/healthz", "/readyz"))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Api:
    """The routes of one worker."""

    def __init__(self, queries: Queries, *, token: str = "", router: Router | None = None
                 ) -> None:
        self.q = queries
        self.token = token
        self.router = router

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth, self._route])
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/stats", self.stats)
        r.add_get("/users/{id}/profile", self.profile)
        r.add_delete("/users/{id}", self.forget)
        r.add_get("/users/{id}/candidates", self.candidates)
        r.add_get("/users/{id}/similar", self.similar)
        r.add_get("/arms/{arm}", self.arm)
        r.add_get("/arms", self.top_arms)
        r.add_post("/internal/users/search", self.internal_search)
        r.add_post("/internal/arms", self.internal_arms)
        return app

    # ------------------------------------------------------------------ middlewares
    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except QueryError as exc:
            return _error(exc.status, str(exc))

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
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
        return web.json_response(await self.q.candidates(
            request.match_info["id"], k, request.headers.get("Authorization")))

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

    async def internal_search(self, request: web.Request) -> web.Response:
        """This worker's share of a scatter-gather look-alike search."""
        body = await request.json()
        return web.json_response(self.q.local_search(body["vector"], int(body["k"]),
                                                     body.get("exclude", [])))

    async def internal_arms(self, request: web.Request) -> web.Response:
        """This worker's partial counts for some arms (the posterior is the sum of partials)."""
        return web.json_response(self.q.local_arm_state((await request.json())["arms"]))
