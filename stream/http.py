"""HTTP API (aiohttp) served by each worker: profiles, candidates, look-alikes, arms, metrics."""

from __future__ import annotations

import logging

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.core.bandit import rerank, seeded_rng
from stream.pipeline import Pipeline

log = logging.getLogger(__name__)


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
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/users/{id}/profile", self.profile)
        app.router.add_get("/users/{id}/candidates", self.candidates)
        app.router.add_get("/users/{id}/similar", self.similar)
        app.router.add_get("/arms/{arm}", self.arm)
        app.router.add_get("/stats", self.stats)
        return app

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
        user = request.match_info["id"]
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
        user = request.match_info["id"]
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
        stats = _merged_view(self.p, arms)
        rng = seeded_rng(self.p.s.seed, user)
        order = rerank(arms, sims, stats, rng, explore_weight=self.p.s.explore_weight)[:k]
        out = []
        for i in order:
            item = self.p.catalog.items.get(arms[i])
            imp, rew = stats.counts(arms[i])
            out.append({"item_id": arms[i], "score": float(sims[i]),
                        "title": item.title if item else None,
                        "category": item.category if item else None,
                        "impressions": imp, "rewards": rew})
        return web.json_response({"user_id": user, "candidates": out})

    async def similar(self, request: web.Request) -> web.Response:
        user = request.match_info["id"]
        k = _k(request, 10)
        vec = self.p.users_index.get(user)
        if vec is None:
            return _error(404, f"unknown user {user!r}")
        # include_self=1 lets tests check that a profile is its own nearest neighbour
        exclude = None if request.query.get("include_self") in ("1", "true") else [{user}]
        hits = self.p.users_index.search(vec[None, :], k, exclude=exclude)[0]
        return web.json_response({"user_id": user,
                                  "similar": [{"user_id": u, "score": s} for u, s in hits]})

    async def arm(self, request: web.Request) -> web.Response:
        arm = request.match_info["arm"]
        stats = _merged_view(self.p, [arm])
        imp, rew = stats.counts(arm)
        if imp == 0 and rew == 0:
            return _error(404, f"unknown arm {arm!r}")
        a, b = stats.posterior(arm)
        return web.json_response({"arm": arm, "impressions": imp, "rewards": rew,
                                  "alpha": a, "beta": b, "mean": a / (a + b)})


def _merged_view(p: Pipeline, arms: list[str]):
    """Sum the per-partition partials for just these arms (the posterior is their sum)."""
    from stream.core.bandit import ArmStats

    imps = np.zeros(len(arms))
    rews = np.zeros(len(arms))
    for st in p.states.values():
        for j, arm in enumerate(arms):
            i, r = st.arms.counts(arm)
            imps[j] += i
            rews[j] += r
    return ArmStats(p.bp).add(arms, imps, rews)
