"""What the API answers, as plain functions of the worker's state: no aiohttp here.

Each method takes plain values (raw user ids from the URL, ``k``, an opaque credential to pass
on to peers) and returns a JSON-ready dict, or raises a :class:`~stream.core.errors.QueryError`
(``BadRequest`` 400, ``NotFound`` 404, ``Unavailable`` 503).  ``stream.serve.http`` maps routes
onto these methods; tests call them directly, in memory.

Several workers: user ids are pseudonymised here (as at ingest); peers (a :class:`Peers`, the
HTTP router) contribute their users to look-alike searches and their bandit partials to
posteriors, which are sums of partials.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
import orjson

from stream.core.bandit import ArmStats, context_arm, seeded_rng
from stream.core.errors import BadRequest, NotFound, Unavailable
from stream.core.policies import Policy, parse_policy
from stream.serve.decisions import DecisionLogger, decision_record
from stream.worker.pipeline import Pipeline
from stream.worker.ports import EventPublisher

__all__ = ["MAX_K", "Peers", "Queries", "parse_k"]

MAX_K = 1000


class Peers(Protocol):
    """The other workers (``stream.serve.routing.Router``)."""

    async def gather_search(self, vector: list[float], k: int, exclude: list[str],
                            auth: str | None) -> list[tuple[str, float]]: ...

    async def gather_arms(self, arms: list[str], auth: str | None) -> list[dict[str, Any]]: ...


def parse_k(text: str | None, default: int) -> int:
    """``k`` of a request: an integer in 1..MAX_K (``default`` when absent)."""
    if text is None:
        return default
    try:
        k = int(text)
    except ValueError:
        raise BadRequest("k must be an integer") from None
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"k must be in 1..{MAX_K}")
    return k


@functools.lru_cache(maxsize=8)
def _policy(spec: str) -> Policy:
    return parse_policy(spec)


class Queries:
    """The answers of one worker, over its pipeline's state (and its peers')."""

    def __init__(self, pipeline: Pipeline, *, peers: Peers | None = None,
                 decisions: DecisionLogger | None = None, publish: EventPublisher | None = None,
                 ready: Callable[[], bool] | None = None) -> None:
        self.p = pipeline
        self.s = pipeline.s
        self.peers = peers
        self.decisions = decisions
        self.publish = publish
        self.ready: Callable[[], bool] = ready if ready is not None else pipeline.ready

    def user_id(self, raw_id: str) -> str:
        """The id the state uses for a raw id from a URL (pseudonymised when configured)."""
        return self.p.pseudonymize(raw_id)

    # ------------------------------------------------------------------ users
    def profile(self, raw_id: str, with_vector: bool = False) -> dict[str, Any]:
        user = self.user_id(raw_id)
        st = self.p.profiles.owner(user)
        stats = st.users.get(user) if st is not None else None
        if st is None or stats is None:
            raise NotFound(f"unknown user {user!r}")
        body = dict(stats)
        body["user_id"] = user
        body["partition"] = st.partition
        if with_vector:
            vec = st.profiles.vector(user)
            body["vector"] = [] if vec is None else [float(x) for x in vec]
        return body

    def _pool(self, user: str, k: int) -> tuple[list[str], np.ndarray]:
        """The candidate pool: the ``max(4k, 50)`` items nearest the user's profile, items the
        user bought excluded; (item ids, similarities)."""
        st = self.p.profiles.owner(user)
        if st is None:
            raise NotFound(f"unknown user {user!r}")
        vec = self.p.profiles.vector(user)
        items = self.p.catalog.index
        pool = min(max(4 * k, 50), len(items))
        if vec is None or pool == 0:
            return [], np.zeros(0)
        hits = items.search(vec[None, :], pool, exclude=[set(st.users.purchased(user))])[0]
        return [h[0] for h in hits], np.array([h[1] for h in hits], dtype=np.float64)

    async def candidates(self, raw_id: str, k: int, auth: str | None = None) -> dict[str, Any]:
        """Items for the user: the pool re-ranked by the bandit policy, decisions logged."""
        user = self.user_id(raw_id)
        arms, sims = self._pool(user, k)
        if not arms:
            return {"user_id": user, "candidates": []}
        stats = await self.global_arms(arms, auth)
        policy = _policy(self.s.bandit_policy)
        alpha, beta = stats.posteriors(arms)
        w = self.s.explore_weight
        order = policy.rank(alpha, beta, seeded_rng(self.s.seed, user), similarity=sims,
                            explore_weight=w)
        decision = None
        if self.decisions is not None:  # decision logging with per-shown-arm propensities
            decision = decision_record(policy, user, arms, alpha, beta, sims, w, order, k,
                                       self.s.seed)
            self.decisions.submit(decision)
        out = []
        for j, i in enumerate(order[:k]):
            item = self.p.catalog.items.get(arms[i])
            imp, rew = stats.counts(arms[i])
            c: dict[str, Any] = {"item_id": arms[i], "score": float(sims[i]),
                                 "title": item.title if item else None,
                                 "category": item.category if item else None,
                                 "impressions": imp, "rewards": rew}
            if decision is not None:
                c["propensity"] = decision["shown"][j]["propensity"]
            out.append(c)
        body: dict[str, Any] = {"user_id": user, "candidates": out, "policy": policy.describe()}
        if decision is not None:
            body["decision_id"] = decision["decision_id"]
        return body

    async def similar(self, raw_id: str, k: int, include_self: bool = False,
                      auth: str | None = None) -> dict[str, Any]:
        """Look-alike users over every worker (scatter-gather)."""
        user = self.user_id(raw_id)
        vec = self.p.profiles.vector(user)
        if vec is None:
            raise NotFound(f"unknown user {user!r}")
        # include_self lets tests check that a profile is its own nearest neighbour
        exclude = None if include_self else {user}
        hits = self.p.profiles.search(vec, k, exclude)
        if self.peers is not None:
            hits += await self.peers.gather_search([float(x) for x in vec], k,
                                                   [] if exclude is None else [user], auth)
            hits = sorted(hits, key=lambda h: -h[1])[:k]
        return {"user_id": user, "similar": [{"user_id": u, "score": s} for u, s in hits]}

    async def forget(self, raw_id: str) -> dict[str, Any]:
        """Publish a ``forget`` event for the user; the worker owning them erases everything."""
        if self.publish is None:
            raise Unavailable("not ready")
        event_id = f"forget-{uuid.uuid4().hex}"
        ts = int(self.p.clock.wall() * 1000)
        await self.publish(raw_id.encode(), orjson.dumps(
            {"event_id": event_id, "user_id": raw_id, "type": "forget", "ts": ts}))
        return {"user_id": self.user_id(raw_id), "event_id": event_id, "ts": ts}

    # ------------------------------------------------------------------ arms
    def local_arms(self, arms: Sequence[str]) -> ArmStats:
        """This worker's partials summed for just these arms (discounted partials are brought
        to the latest anchor first)."""
        return ArmStats.merged([st.arms for st in self.p.profiles.partitions()], self.p.bp,
                               arms=list(arms))

    async def global_arms(self, arms: list[str], auth: str | None = None) -> ArmStats:
        """The counts of these arms over *every* worker: local partials plus each peer's."""
        local = self.local_arms(arms)
        if self.peers is None:
            return local
        parts = [local] + [ArmStats.from_state(st, self.p.bp)
                           for st in await self.peers.gather_arms(arms, auth)]
        return ArmStats.merged(parts, self.p.bp, arms=arms) if len(parts) > 1 else local

    async def arm(self, arm: str, context: str | None = None,
                  auth: str | None = None) -> dict[str, Any]:
        """Counts and Beta posterior of one arm; ``context``: its per-position counts
        (PROFILES_BANDIT_CONTEXT=position).  With discounting, counts are as of ``anchor``."""
        bp = self.p.bp
        if context is not None and not bp.context:
            raise BadRequest("per-context arms are off (PROFILES_BANDIT_CONTEXT)")
        if context is None:
            stats = await self.global_arms([arm], auth)
            key = arm
        else:
            key = context_arm(arm, context)
            stats = ArmStats.merged([st.arms.contextual for st in self.p.profiles.partitions()
                                     if st.arms.contextual is not None],
                                    replace(bp, context=""), arms=[key])
        imp, rew = stats.counts(key)
        if key not in stats or (imp == 0 and rew == 0 and not stats.discounted):
            raise NotFound(f"unknown arm {arm!r}" + (f" in context {context!r}" if context else ""))
        a, b = stats.posterior(key)
        body: dict[str, Any] = {"arm": arm, "impressions": imp, "rewards": rew, "alpha": a,
                                "beta": b, "mean": a / (a + b)}
        if context is not None:
            body["context"] = context
        if stats.discounted:
            body.update(half_life_ms=bp.half_life_ms, anchor=stats.anchor)
        return body

    def top_arms(self, k: int) -> dict[str, Any]:
        """The ``k`` arms of this worker's partitions with the most impressions."""
        stats = ArmStats.merged([st.arms for st in self.p.profiles.partitions()], self.p.bp)
        names = stats.arms()
        imps = np.array([stats.counts(a)[0] for a in names])
        top = np.argsort(-imps, kind="stable")[:k]
        out = []
        for i in top:
            imp, rew = stats.counts(names[i])
            a, b = stats.posterior(names[i])
            out.append({"arm": names[i], "impressions": imp, "rewards": rew, "alpha": a,
                        "beta": b, "mean": a / (a + b)})
        return {"arms": out, "total_arms": len(names), "policy": self.s.bandit_policy}

    # ------------------------------------------------------------------ peers' share
    def local_search(self, vector: Sequence[float], k: int,
                     exclude: Sequence[str] = ()) -> dict[str, Any]:
        """This worker's share of a scatter-gather look-alike search."""
        vec = np.asarray(vector, dtype=np.float32)
        hits = self.p.profiles.search(vec, int(k), set(exclude))
        return {"hits": [{"user_id": u, "score": sc} for u, sc in hits]}

    def local_arm_state(self, arms: Sequence[str]) -> dict[str, Any]:
        """This worker's partial counts for some arms, as JSON (a peer sums them)."""
        state = self.local_arms([str(a) for a in arms]).state()
        state.pop("contextual", None)
        return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in state.items()}

    # ------------------------------------------------------------------ the worker
    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self.p.summary())
        s.update(users_index=self.p.profiles.indexed(), items_index=len(self.p.catalog.index),
                 partitions={p: st.next_offset for p, st in self.p.profiles.states.items()},
                 ready=self.ready())
        return s
