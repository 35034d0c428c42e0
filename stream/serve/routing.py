"""Any worker answers for any user: forward to the owner of a user's partition, or ask every
peer.

Who owns what comes from a :class:`Membership` (the Kafka layer's
``stream.kafka.membership.FaustMembership``: faust's partition -> worker URL map).  Requests
for a user owned elsewhere are forwarded once (a header stops loops).  Look-alike search is
scatter-gather: the owner takes the user's vector, every worker searches its own users index,
and the owner merges the top k — each worker indexes only the users of its partitions, so
together the view is complete and exact.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import aiohttp
from aiohttp import web

__all__ = ["FORWARDED", "Membership", "Router", "route_name"]

log = logging.getLogger(__name__)

FORWARDED = "X-Profiles-Forwarded"


def route_name(request: web.Request) -> str:
    """The request's route pattern (``/users/{id}/profile``) for logs: its path holds the raw
    user id, which must never be logged."""
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    return resource.canonical if resource is not None else "(no route)"


class Membership(Protocol):
    """Which worker owns a key's partition, and who the other workers are."""

    def owner(self, key: str) -> str | None:
        """The owner's URL, None when unknown or this worker."""
        ...

    def peers(self) -> list[str]: ...


class Router:
    """Forwards requests to owners and gathers partial answers from peers over HTTP."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership
        self._session: aiohttp.ClientSession | None = None

    def owner(self, raw_user: str) -> str | None:
        """URL of the worker owning ``raw_user``'s partition (None when unknown or local)."""
        return self.membership.owner(raw_user)

    def peers(self) -> list[str]:
        return self.membership.peers()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self._session

    async def forward(self, request: web.Request, url: str) -> web.Response:
        headers = {FORWARDED: "1"}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        try:
            async with self.session().request(request.method, url + request.path_qs,
                                              headers=headers) as r:
                body = await r.read()
                return web.Response(body=body, status=r.status,
                                    content_type=r.content_type or "application/json")
        except (aiohttp.ClientError, TimeoutError) as exc:
            # the exception's type only: a client error's message can quote the URL (raw id)
            log.warning("forwarding %s to %s failed: %s", route_name(request), url,
                        type(exc).__name__)
            return web.json_response({"error": f"owner {url} unreachable"}, status=503)

    async def _gather(self, path: str, payload: dict[str, Any], auth: str | None,
                      what: str) -> list[Any]:
        """The JSON answers of every peer that answers ``POST path`` with 200 (a peer that
        fails is logged and left out)."""
        headers = {FORWARDED: "1"}
        if auth:
            headers["Authorization"] = auth
        out: list[Any] = []
        for url in self.peers():
            try:
                async with self.session().post(url + path, headers=headers, json=payload) as r:
                    if r.status == 200:
                        out.append(await r.json())
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("%s on %s failed: %s", what, url, exc)
        return out

    async def gather_search(self, vector: list[float], k: int, exclude: list[str],
                            auth: str | None) -> list[tuple[str, float]]:
        """Top-k of every peer's users index for ``vector``."""
        answers = await self._gather("/internal/users/search",
                                     {"vector": vector, "k": k, "exclude": exclude}, auth,
                                     "look-alike search")
        return [(h["user_id"], h["score"]) for a in answers for h in a["hits"]]

    async def gather_arms(self, arms: list[str], auth: str | None) -> list[dict[str, Any]]:
        """Every peer's partial counts (ArmStats state) for ``arms``."""
        return await self._gather("/internal/arms", {"arms": arms}, auth, "arm counts")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
