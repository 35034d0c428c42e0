"""The offline side of "what the worker serves equals what was evaluated": candidate lists
computed from a list of events with the pure core only — no pipeline, no Kafka, no HTTP.

The state is built the way the evaluator builds it (all events up to the cut-off, the users'
partitions as Kafka's default partitioner assigns them, one ``Signals`` per partition published
into one ``SignalView``), then scored by the same code the worker serves with:
``stream.core.hybrid.generate`` -> ``Ranker.score`` -> ``stream.core.hybrid.rank``, with the
bandit's exploration off (``PROFILES_EXPLORE_WEIGHT=0``: the policy keeps the ranker's order).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from encoder.base import Encoder
from index import make_index
from stream.core.bandit import ArmStats
from stream.core.events import Item
from stream.core.hybrid import FEATURES, generate, rank, serve_scores
from stream.core.interests import InterestTable, multi_interest_hits
from stream.core.profile import ProfileTable, UserStats
from stream.core.ranker import Ranker
from stream.core.signals import Signals, SignalView
from stream.settings import Settings
from stream.worker.testing import partition_of


def _text(it: Mapping[str, Any]) -> str:
    return Item(**{k: it.get(k) for k in ("item_id", "title", "category", "brand", "price")}).text()


class Offline:
    """Every piece of state the candidates need, from ``events`` (applied, in log order)."""

    def __init__(self, events: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]],
                 s: Settings, encoder: Encoder, ranker: Ranker, sequence: Any = None) -> None:
        self.s = s
        self.ranker = ranker
        self.sequence = sequence  # encoder.sequence.SequenceModel (None: no sequence source)
        self.hp = s.hybrid_params(**dict(ranker.meta.get("hybrid") or {}))
        sp, pp, bp = s.signal_params(), s.profile_params(), s.bandit_params()
        ids = [str(it["item_id"]) for it in items]
        self.category = {str(it["item_id"]): it.get("category") for it in items}
        item_vecs = encoder.encode([_text(it) for it in items])
        self.items = make_index(encoder.dim, name="items")
        self.items.upsert(ids, item_vecs)
        vec_of = dict(zip(ids, item_vecs))
        queries = sorted({str(e["query"]) for e in events if e["type"] == "search"})
        vec_of.update({("q", q): v for q, v in zip(queries, encoder.encode(queries))
                       } if queries else {})

        by_part: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
        for e in events:
            by_part[partition_of(str(e["user_id"]).encode(), s.partitions)].append(e)
        self.signals: dict[int, Signals] = {}
        self.view = SignalView(sp)
        self.profiles = ProfileTable(encoder.dim, pp)
        self.users = UserStats(pp)
        self.arms = ArmStats(bp)
        ip = s.interest_params()  # multi-interest profiles, per partition in log order
        self.interests: dict[int, InterestTable] = {}
        for p in sorted(by_part):
            evs = by_part[p]
            sig = self.signals[p] = Signals(sp)
            sig.apply([str(e["user_id"]) for e in evs], [e.get("item_id") for e in evs],
                      [int(e["ts"]) for e in evs], [e["type"] for e in evs])
            sig.publish(self.view, p)
            with_vec = [e for e in evs if (e.get("item_id") if e["type"] != "search"
                                           else ("q", e["query"])) is not None]
            batch = ([str(e["user_id"]) for e in with_vec],
                     np.array([int(e["ts"]) for e in with_vec], dtype=np.int64),
                     pp.weight_array([e["type"] for e in with_vec]),
                     np.stack([vec_of[e["item_id"] if e["type"] != "search" else ("q", e["query"])]
                               for e in with_vec]))
            self.profiles.apply(*batch)
            if ip is not None:
                self.interests[p] = InterestTable(encoder.dim, ip)
                self.interests[p].apply(*batch)
            item_evs = [e for e in evs if e.get("item_id")]
            self.users.update([str(e["user_id"]) for e in evs], [e["type"] for e in evs],
                              [int(e["ts"]) for e in evs],
                              [self.category.get(e["item_id"]) if e.get("item_id") else None
                               for e in evs], [e.get("item_id") for e in evs])
            self.arms.update([str(e.get("arm") or e["item_id"]) for e in item_evs],
                             [e["type"] for e in item_evs], ts=[int(e["ts"]) for e in item_evs])
        self.now = max((int(e["ts"]) for e in events if e.get("item_id")
                        and sp.weights.get(e["type"], 0.0) > 0), default=0)
        self.partition = {str(e["user_id"]): partition_of(str(e["user_id"]).encode(),
                                                          s.partitions) for e in events}

    def candidates(self, user: str, k: int) -> list[tuple[str, float]]:
        """The top ``k`` (item, ranker score) for ``user``, best first."""
        hp = self.hp
        known = user in self.profiles
        vec = self.profiles.vector(user) if known else None
        bought = self.users.purchased(user)
        content: list[tuple[str, float]] = []
        n = min(hp.content_k, len(self.items))

        def similarity(ids: list[str]) -> np.ndarray:
            vecs, missing = self.items.get_many(ids)
            sims = (vecs @ vec).astype(np.float64)
            sims[missing] = 0.0
            return sims

        if vec is not None and n and "content" in hp.sources:
            exclude = [set(bought)] if hp.exclude_purchased else None
            table = self.interests.get(self.partition.get(user, -1))
            it = table.get(user) if table is not None else None
            if it is not None and len(it) > 1:  # per interest; content_sim: profile . item
                ids = [i for i, _ in multi_interest_hits(it, n, lambda q, k: self.items.search(
                    q, k, exclude=None if exclude is None else exclude * len(q)))]
                content = list(zip(ids, similarity(ids).tolist(), strict=True))
            else:
                content = self.items.search(vec[None, :], n, exclude=exclude)[0]

        sig = self.signals.get(self.partition.get(user, -1))
        lifts, hits = None, []
        if self.sequence is not None:
            lifts = self.sequence.lifts(sig.recent.get(user, self.sequence.max_len)
                                        if sig is not None else [])
            hits = lifts.top(hp.sequence_k, set(bought) if hp.exclude_purchased else ())
        cands = generate(sig.recent.get(user) if sig is not None else [], content, self.view,
                         self.now, hp, bought=bought,
                         user_categories=self.users.categories(user) if known else None,
                         item_category=lambda i: self.category.get(i),
                         similarity=similarity if vec is not None else None,
                         sequence=hits, sequence_lift=lifts)
        if not len(cands):
            return []
        alpha, beta = self.arms.posteriors(cands.items)
        cands.features[:, FEATURES.index("bandit_mean")] = alpha / (alpha + beta)
        return rank(cands, serve_scores(cands, self.ranker.score(cands.features), self.hp), k)
