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
from stream.core.errors import BadRequest, NotFound, StateError, Unavailable
from stream.core.exploration import with_exploration_prior
from stream.core.hybrid import (
    FEATURES,
    SOURCES,
    Candidates,
    HybridParams,
    generate,
    rank,
    serve_scores,
)
from stream.core.policies import Policy, parse_policy
from stream.core.ranker import Ranker, default_ranker
from stream.serve import interests
from stream.serve.decisions import DecisionLogger, decision_record
from stream.serve.explain import Explainer
from stream.serve.search import search as personal_search
from stream.worker.pipeline import Pipeline
from stream.worker.ports import EventPublisher

__all__ = ["MAX_K", "Peers", "Queries", "load_ranker", "parse_k"]

MAX_K = 1000
_BANDIT_MEAN = FEATURES.index("bandit_mean")


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


def load_ranker(folder: str) -> Ranker:
    """The CTR ranker of ``PROFILES_RANKER_DIR`` (empty: the default linear ranker);
    StateError (one line) when the folder cannot be used."""
    return Ranker.load(folder) if folder else default_ranker()


class Queries:
    """The answers of one worker, over its pipeline's state (and its peers')."""

    def __init__(self, pipeline: Pipeline, *, peers: Peers | None = None,
                 decisions: DecisionLogger | None = None, publish: EventPublisher | None = None,
                 ready: Callable[[], bool] | None = None, ranker: Ranker | None = None,
                 sequence: Any = None, rng: np.random.Generator | None = None) -> None:
        self.p = pipeline
        self.s = pipeline.s
        # The bandit re-rank draws fresh randomness for every request from this generator
        # (seeded from PROFILES_SEED and this worker's URL; tests inject their own), so a
        # served ranking is a genuine draw of the distribution whose propensities are logged.
        self.rng = rng if rng is not None else seeded_rng(self.s.seed, "serve",
                                                          self.s.public_url())
        self.peers = peers
        self.decisions = decisions
        self.publish = publish
        self.ready: Callable[[], bool] = ready if ready is not None else pipeline.ready
        self.ranker = ranker if ranker is not None else load_ranker(self.s.ranker_dir)
        # the sequence source's model (encoder.sequence.SequenceModel, from the ranker's
        # directory; None: no sequence source): built by the composition root
        self.sequence = sequence
        # pool sizes and sources chosen with the ranker (its directory's "hybrid" entry)
        try:
            self.hybrid: HybridParams = self.s.hybrid_params(
                **dict(self.ranker.meta.get("hybrid") or {}))
        except (TypeError, ValueError) as exc:
            raise StateError(f"ranker directory {self.s.ranker_dir or '(default)'}: its "
                             f"'hybrid' entry cannot be used ({exc})") from exc

    def user_id(self, raw_id: str) -> str:
        """The id the state uses for a raw id from a URL (pseudonymised when configured)."""
        return self.p.pseudonymize(raw_id)

    # ------------------------------------------------------------------ users
    def profile(self, raw_id: str, with_vector: bool = False) -> dict[str, Any]:
        user = self.user_id(raw_id)
        st = self.p.profiles.owner(user)
        stats = st.users.get(user) if st is not None else None
        if st is None or stats is None:
            raise NotFound("unknown user")  # no id: echoing the pseudonym is a hashing oracle
        body = dict(stats)
        body["user_id"] = user
        body["partition"] = st.partition
        if self.p.segments.enabled:  # the nearest centroid of the adopted version
            seg = self.p.segments.segment_of(user)
            body["segment"] = None if seg is None else {
                "segment": seg, "version": self.p.segments.model.version
                if self.p.segments.model is not None else 0}
        found = interests.describe(self.p, st, user)  # None: PROFILES_INTERESTS_K=0
        if found is not None:
            body["interests"] = found
        if with_vector:
            vec = st.profiles.vector(user)
            body["vector"] = [] if vec is None else [float(x) for x in vec]
        return body

    def generate(self, user: str) -> Candidates:
        """Candidate generation for ``user`` from this worker's state
        (:func:`stream.core.hybrid.generate`, the code the evaluator scores): the profile's
        nearest items (content), co-visitation neighbours of the user's recent items, trending
        items and (``PROFILES_PURCHASED_ITEMS=buy_again``) the user's bought items, as of the
        newest event time in the merged signal view.  A user without history (unknown, or
        forgotten) gets trending items.  The ``bandit_mean`` column is filled by the caller
        (the posterior sums every worker's partials: an await)."""
        hp = self.hybrid
        st = self.p.profiles.owner(user)
        vec = self.p.profiles.vector(user) if st is not None else None
        bought = st.users.purchased(user) if st is not None else frozenset()
        content: list[tuple[str, float]] = []
        items = self.p.catalog.index
        n = min(hp.content_k, len(items))
        if vec is not None and n > 0 and "content" in hp.sources:
            exclude = [set(bought)] if hp.exclude_purchased else None
            # per interest with quotas by importance (PROFILES_INTERESTS_K), else nearest vec
            content = interests.content_hits(self.p, st, user, vec, n, exclude)

        def similarity(ids: list[str]) -> np.ndarray:
            vecs, missing = self.p.catalog.vectors(ids)
            sims = (vecs @ vec).astype(np.float64) if vec is not None else np.zeros(len(ids))
            sims[missing] = 0.0
            return sims

        seq_hits: list[tuple[str, float]] = []
        lifts = None
        if self.sequence is not None:  # as profiles eval: the kept recent events, canonical order
            lifts = self.sequence.lifts(
                st.signals.recent.get(user, self.sequence.max_len) if st is not None else [])
            if "sequence" in hp.sources and hp.sequence_k:
                seq_hits = lifts.top(hp.sequence_k, set(bought) if hp.exclude_purchased else ())
        return generate(
            st.signals.recent.get(user) if st is not None else [], content,
            self.p.sharing.view, self.p.sharing.newest_ts, hp, bought=bought,
            user_categories=st.users.categories(user) if st is not None else None,
            item_category=self.p.catalog.category,
            similarity=similarity if vec is not None else None,
            sequence=seq_hits, sequence_lift=lifts)

    async def candidates(self, raw_id: str, k: int, auth: str | None = None,
                         explain: bool = False) -> dict[str, Any]:
        """Items for the user: hybrid candidates scored by the CTR ranker, the best
        ``max(4k, 50)`` re-ranked by the bandit policy, decisions logged; ``explain``: each
        with why (``stream.serve.explain``)."""
        user = self.user_id(raw_id)
        cands = self.generate(user)
        # read before any await: a batch applied meanwhile cannot make it disagree with cands
        why = Explainer(self.p, self.hybrid, self.ranker, user, cands) if explain else None
        policy = _policy(self.s.bandit_policy)
        # a user without state here gets trending items; the body never echoes its
        # pseudonym (a hashing oracle for any caller), as a 404 does not
        shown = user if self.p.profiles.owner(user) is not None else None
        if not len(cands):
            return {"user_id": shown, "cold_start": shown is None, "candidates": [],
                    "policy": policy.describe()}
        stats = await self.global_arms(cands.items, auth)
        alpha, beta = stats.posteriors(cands.items)
        cands.features[:, _BANDIT_MEAN] = alpha / (alpha + beta)
        segment = (self.p.segments.segment_of(user) if self.p.bp.context == "segment"
                   else None)
        if segment is not None:  # the bandit re-ranks with the user's segment's posteriors
            keys = [context_arm(it, segment) for it in cands.items]
            alpha, beta = (await self.context_arms(keys, auth)).posteriors(keys)
        scores = serve_scores(cands, self.ranker.score(cands.features), self.hybrid)
        pool = rank(cands, scores, max(4 * k, 50))  # the ranker's order: score, then item id
        at = {it: i for i, it in enumerate(cands.items)}
        rows = [at[it] for it, _ in pool]
        arms = [it for it, _ in pool]
        sims = np.array([s for _, s in pool], dtype=np.float64)
        w = self.s.explore_weight
        if self.s.explore_new_arms:  # young arms: optimism that fades (stream.core.exploration)
            alpha, beta = with_exploration_prior(
                alpha, beta, np.array([stats.counts(a)[0] for a in cands.items]),
                self.s.explore_new_arms, self.s.explore_new_arm_bonus)
        order = policy.rank(alpha[rows], beta[rows], self.rng, similarity=sims,
                            explore_weight=w)
        decision = None
        if self.decisions is not None:  # decision logging with per-shown-arm propensities
            decision = decision_record(policy, user, arms, alpha[rows], beta[rows], sims, w,
                                       order, k, self.s.seed)
            self.decisions.submit(decision)
        out = []
        served: dict[str, int] = dict.fromkeys(SOURCES, 0)
        for j, i in enumerate(order[:k]):
            item = self.p.catalog.items.get(arms[i])
            imp, rew = stats.counts(arms[i])
            bits = int(cands.sources[rows[i]])
            sources = [s for b, s in enumerate(SOURCES) if bits >> b & 1]
            for s in sources:
                served[s] += 1
            c: dict[str, Any] = {"item_id": arms[i], "score": float(sims[i]),
                                 "sources": sources,
                                 "title": item.title if item else None,
                                 "category": item.category if item else None,
                                 "impressions": imp, "rewards": rew}
            if decision is not None:
                c["propensity"] = decision["shown"][j]["propensity"]
            if why is not None:
                a, b = float(alpha[rows[i]]), float(beta[rows[i]])
                c["explain"] = why.explain(arms[i], ranker_rank=i + 1, served_rank=j + 1,
                                           bandit_mean=a / (a + b))
            out.append(c)
        for s, n in served.items():
            if n:
                self.p.metrics.candidates.labels(s).inc(n)
        body: dict[str, Any] = {"user_id": shown, "cold_start": shown is None,
                                "candidates": out, "policy": policy.describe()}
        if decision is not None:
            body["decision_id"] = decision["decision_id"]
        if segment is not None:
            body["segment"] = segment
        return body

    async def similar(self, raw_id: str, k: int, include_self: bool = False,
                      auth: str | None = None) -> dict[str, Any]:
        """Look-alike users over every worker (scatter-gather)."""
        user = self.user_id(raw_id)
        vec = self.p.profiles.vector(user)
        if vec is None:
            raise NotFound("unknown user")  # no id: echoing the pseudonym is a hashing oracle
        # include_self lets tests check that a profile is its own nearest neighbour
        exclude = None if include_self else {user}
        hits = self.p.profiles.search(vec, k, exclude)
        if self.peers is not None:
            hits += await self.peers.gather_search([float(x) for x in vec], k,
                                                   [] if exclude is None else [user], auth)
            hits = sorted(hits, key=lambda h: -h[1])[:k]
        return {"user_id": user, "similar": [{"user_id": u, "score": s} for u, s in hits]}

    async def search(self, raw_id: str, q: str | None, k: int) -> dict[str, Any]:
        """Personalised search (``stream.serve.search``): the pool nearest the query, ranked by
        query relevance blended with the user's interests; a cold-start user by relevance."""
        return await personal_search(self.p, self.s.search_params(), self.user_id(raw_id), q, k)

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

    async def context_arms(self, keys: list[str], auth: str | None = None) -> ArmStats:
        """The per-context counts of these keys (``context_arm(arm, ctx)``) over every
        worker: this worker's per-context tables plus each peer's (``local_arm_state``)."""
        cbp = replace(self.p.bp, context="")
        parts = [st.arms.contextual for st in self.p.profiles.partitions()
                 if st.arms.contextual is not None]
        if self.peers is not None:
            parts += [ArmStats.from_state(peer["contextual"], cbp)
                      for peer in await self.peers.gather_arms(keys, auth)
                      if peer.get("contextual") is not None]
        return ArmStats.merged(parts, cbp, arms=keys)

    def segments(self) -> dict[str, Any]:
        """``GET /segments``: the centroid version, each segment's size and top categories
        (``stream.worker.segments``); 400 when segments are off."""
        if not self.p.segments.enabled:
            raise BadRequest("segments are off (PROFILES_SEGMENTS_K=0)")
        return self.p.segments.summary()

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
        else:  # this worker's per-context tables plus every peer's (local_arm_state)
            key = context_arm(arm, context)
            stats = await self.context_arms([key], auth)
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
        """This worker's partial counts for some arms, as JSON (a peer sums them); with
        per-context arms, ``contextual`` holds the names found in the per-position tables
        (``/arms/{arm}?context=N`` asks for ``context_arm(arm, N)``)."""
        names = [str(a) for a in arms]
        state = self.local_arms(names).state()
        state.pop("contextual", None)
        tables = [st.arms.contextual for st in self.p.profiles.partitions()
                  if st.arms.contextual is not None]
        ctx = ArmStats.merged(tables, replace(self.p.bp, context=""), arms=names)
        if len(ctx):
            state["contextual"] = ctx.state()

        def plain(d: dict[str, Any]) -> dict[str, Any]:
            return {k: plain(v) if isinstance(v, dict) else
                    v.tolist() if isinstance(v, np.ndarray) else v for k, v in d.items()}

        return plain(state)

    # ------------------------------------------------------------------ the worker
    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self.p.summary())
        s.update(users_index=self.p.profiles.indexed(), items_index=len(self.p.catalog.index),
                 partitions={p: st.next_offset for p, st in self.p.profiles.states.items()},
                 ready=self.ready(), ranker=self.ranker.describe(),
                 sequence=None if self.sequence is None else self.sequence.describe(),
                 signals={"published": self.p.sharing.published,
                          "received": self.p.sharing.received,
                          "pending": self.p.sharing.pending_count(),
                          "newest_ts": self.p.sharing.newest_ts})
        return s
