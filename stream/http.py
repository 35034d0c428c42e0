"""HTTP API (aiohttp) served by each worker: profiles, candidates, look-alikes, arms, metrics.

User ids in URLs are raw ids; with ``PROFILES_ID_SECRET`` set they are pseudonymised here,
exactly as at ingest.  With ``PROFILES_API_TOKEN`` set every route except ``/metrics``,
``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
import uuid
from dataclasses import replace

import numpy as np
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.core.bandit import ArmStats, context_arm, seeded_rng
from stream.core.policies import parse_policy
from stream.decisions import DecisionLogger, decision_record
from stream.pipeline import Pipeline
from stream.routing import FORWARDED

log = logging.getLogger(__name__)


OPEN_PATHS = frozenset(("/metrics", "/healthz", "/readyz"))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _k(request: web.Request, default: int) -> int:
    raw = request.query.get("k", str(default))
    try:
        k = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "k must be an integer"}',
                                 content_type="application/json") from None
    if not 1 <= k <= 1000:
        raise web.HTTPBadRequest(text='{"error": "k must be in 1..1000"}', content_type="application/json")
    return k


class Api:
    def __init__(self, pipeline: Pipeline, ready) -> None:
        self.p = pipeline
        self.ready = ready  # () -> bool

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth, self._route])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/users/{id}/profile", self.profile)
        app.router.add_delete("/users/{id}", self.forget)
        app.router.add_get("/users/{id}/candidates", self.candidates)
        app.router.add_get("/users/{id}/similar", self.similar)
        app.router.add_get("/arms/{arm}", self.arm)
        app.router.add_get("/arms", self.top_arms)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/internal/users/search", self.internal_search)
        app.router.add_post("/internal/arms", self.internal_arms)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        token = self.p.s.api_token.reveal()
        if token and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _error(401, "missing or wrong bearer token")
        return await handler(request)

    @web.middleware
    async def _route(self, request: web.Request, handler):
        """Forward a user's GET to the worker that owns the user's partition."""
        router = self.p.router
        if (router is not None and request.method == "GET" and "id" in request.match_info
                and FORWARDED not in request.headers):
            owner = router.owner(request.match_info["id"])
            if owner is not None:
                return await router.forward(request, owner)
        return await handler(request)

    async def internal_search(self, request: web.Request) -> web.Response:
        """This worker's share of a scatter-gather look-alike search."""
        body = await request.json()
        vec = np.asarray(body["vector"], dtype=np.float32)
        k = int(body["k"])
        hits = self.p.users_index.search(vec[None, :], k, exclude=[set(body.get("exclude", []))])[0]
        return web.json_response({"hits": [{"user_id": u, "score": sc} for u, sc in hits]})

    async def internal_arms(self, request: web.Request) -> web.Response:
        """This worker's partial counts for some arms (the posterior is the sum of partials)."""
        arms = [str(a) for a in (await request.json())["arms"]]
        state = _merged_view(self.p, arms).state()
        state.pop("contextual", None)
        return web.json_response({k: v.tolist() if isinstance(v, np.ndarray) else v
                                  for k, v in state.items()})

    def _user(self, request: web.Request) -> str:
        return self.p.pseudonymize(request.match_info["id"])

    async def forget(self, request: web.Request) -> web.Response:
        """Publish a ``forget`` event for the user; the worker owning them erases everything."""
        raw_id = request.match_info["id"]
        if self.p.publish_event is None:
            return _error(503, "not ready")
        event_id = f"forget-{uuid.uuid4().hex}"
        ts = int(time.time() * 1000)
        await self.p.publish_event(raw_id.encode(), orjson.dumps(
            {"event_id": event_id, "user_id": raw_id, "type": "forget", "ts": ts}))
        return web.json_response({"user_id": self._user(request), "event_id": event_id, "ts": ts},
                                 status=202)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ok = self.ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.p.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stats(self, request: web.Request) -> web.Response:
        s = self.p.summary()
        s.update(users_index=len(self.p.users_index), items_index=len(self.p.catalog.index),
                 partitions={p: st.next_offset for p, st in self.p.states.items()},
                 ready=self.ready())
        return web.json_response(s)

    async def profile(self, request: web.Request) -> web.Response:
        user = self._user(request)
        st = self.p.state_of(user)
        if st is None:
            return _error(404, f"unknown user {user!r}")
        body = dict(st.users.get(user))
        body["user_id"] = user
        body["partition"] = st.partition
        if request.query.get("vector") in ("1", "true"):
            vec = st.profiles.vector(user)
            body["vector"] = [float(x) for x in vec]
        return web.json_response(body)

    async def candidates(self, request: web.Request) -> web.Response:
        user = self._user(request)
        k = _k(request, 20)
        st = self.p.state_of(user)
        if st is None:
            return _error(404, f"unknown user {user!r}")
        vec = self.p.users_index.get(user)
        purchased = st.users.purchased(user)
        pool = min(max(4 * k, 50), len(self.p.catalog.index))
        if vec is None or pool == 0:
            return web.json_response({"user_id": user, "candidates": []})
        hits = self.p.catalog.index.search(vec[None, :], pool, exclude=[set(purchased)])[0]
        if not hits:
            return web.json_response({"user_id": user, "candidates": []})
        arms = [h[0] for h in hits]
        sims = np.array([h[1] for h in hits], dtype=np.float64)
        stats = await _global_view(self.p, arms, request.headers.get("Authorization"))
        # bandit re-rank (PROFILES_BANDIT_POLICY; Thompson by default: the same draws as before)
        policy = _policy(self.p.s.bandit_policy)
        alpha, beta = stats.posteriors(arms)
        w = self.p.s.explore_weight
        order = policy.rank(alpha, beta, seeded_rng(self.p.s.seed, user), similarity=sims,
                            explore_weight=w)
        decision = None
        if self.p.s.decisions_topic:  # decision logging with per-shown-arm propensities
            decision = decision_record(policy, user, arms, alpha, beta, sims, w, order, k,
                                       self.p.s.seed)
            _decision_logger(self.p).submit(decision)
        out = []
        for j, i in enumerate(order[:k]):
            item = self.p.catalog.items.get(arms[i])
            imp, rew = stats.counts(arms[i])
            c = {"item_id": arms[i], "score": float(sims[i]),
                 "title": item.title if item else None,
                 "category": item.category if item else None,
                 "impressions": imp, "rewards": rew}
            if decision is not None:
                c["propensity"] = decision["shown"][j]["propensity"]
            out.append(c)
        body = {"user_id": user, "candidates": out, "policy": policy.describe()}
        if decision is not None:
            body["decision_id"] = decision["decision_id"]
        return web.json_response(body)

    async def similar(self, request: web.Request) -> web.Response:
        user = self._user(request)
        k = _k(request, 10)
        vec = self.p.users_index.get(user)
        if vec is None:
            return _error(404, f"unknown user {user!r}")
        # include_self=1 lets tests check that a profile is its own nearest neighbour
        exclude = None if request.query.get("include_self") in ("1", "true") else [{user}]
        hits = self.p.users_index.search(vec[None, :], k, exclude=exclude)[0]
        if self.p.router is not None:  # scatter-gather over the other workers' users
            hits += await self.p.router.gather_search(
                [float(x) for x in vec], k, [] if exclude is None else [user],
                request.headers.get("Authorization"))
            hits = sorted(hits, key=lambda h: -h[1])[:k]
        return web.json_response({"user_id": user,
                                  "similar": [{"user_id": u, "score": s} for u, s in hits]})

    async def arm(self, request: web.Request) -> web.Response:
        """Counts and Beta posterior of one arm; ``?context=2`` for its per-position counts
        (PROFILES_BANDIT_CONTEXT=position).  With discounting, counts are as of ``anchor``."""
        arm = request.match_info["arm"]
        context = request.query.get("context")
        if context is not None and not self.p.bp.context:
            return _error(400, "per-context arms are off (PROFILES_BANDIT_CONTEXT)")
        if context is None:
            stats = await _global_view(self.p, [arm], request.headers.get("Authorization"))
            key = arm
        else:
            key = context_arm(arm, context)
            stats = ArmStats.merged([st.arms.contextual for st in self.p.states.values()
                                     if st.arms.contextual is not None],
                                    replace(self.p.bp, context=""), arms=[key])
        imp, rew = stats.counts(key)
        if key not in stats or (imp == 0 and rew == 0 and not stats.discounted):
            return _error(404, f"unknown arm {arm!r}" + (f" in context {context!r}" if context else ""))
        a, b = stats.posterior(key)
        body = {"arm": arm, "impressions": imp, "rewards": rew, "alpha": a, "beta": b,
                "mean": a / (a + b)}
        if context is not None:
            body["context"] = context
        if stats.discounted:
            body.update(half_life_ms=self.p.bp.half_life_ms, anchor=stats.anchor)
        return web.json_response(body)

    async def top_arms(self, request: web.Request) -> web.Response:
        """The ``k`` arms with the most impressions, with posteriors (``GET /arms?k=20``)."""
        k = _k(request, 20)
        stats = ArmStats.merged([st.arms for st in self.p.states.values()], self.p.bp)
        names = stats.arms()
        imps = np.array([stats.counts(a)[0] for a in names])
        top = np.argsort(-imps, kind="stable")[:k]
        out = []
        for i in top:
            imp, rew = stats.counts(names[i])
            a, b = stats.posterior(names[i])
            out.append({"arm": names[i], "impressions": imp, "rewards": rew, "alpha": a,
                        "beta": b, "mean": a / (a + b)})
        return web.json_response({"arms": out, "total_arms": len(names),
                                  "policy": self.p.s.bandit_policy})


@functools.lru_cache(maxsize=8)
def _policy(spec: str):
    return parse_policy(spec)


def _decision_logger(p: Pipeline) -> DecisionLogger:
    logger = getattr(p, "_decision_logger", None)
    if logger is None:
        logger = DecisionLogger(p.s.bootstrap_servers, p.s.decisions_topic)
        p._decision_logger = logger
    return logger


async def _global_view(p: Pipeline, arms: list[str], auth: str | None) -> ArmStats:
    """The posterior of these arms over *every* worker: local partials plus each peer's."""
    local = _merged_view(p, arms)
    if p.router is None:
        return local
    parts = [local] + [ArmStats.from_state(st, p.bp)
                       for st in await p.router.gather_arms(arms, auth)]
    return ArmStats.merged(parts, p.bp, arms=arms) if len(parts) > 1 else local


def _merged_view(p: Pipeline, arms: list[str]) -> ArmStats:
    """Sum the per-partition partials for just these arms (the posterior is their sum;
    discounted partials are brought to the latest anchor first)."""
    return ArmStats.merged([st.arms for st in p.states.values()], p.bp, arms=arms)
