"""``/users/{id}/candidates?explain=1``: why each served candidate is there.

Per candidate: the sources that found it (content, co-visitation, trending, buy-again,
sequence), the feature values the ranker scored (with a linear ranker's per-feature terms of
the log-odds: ``bias + sum(terms)``), the bandit's re-rank (the ranker's position, the served
position, the posterior mean), and exact decompositions (:mod:`stream.core.explain`):

- ``content``: the content similarity split over the user's kept recent events (the top
  ``PROFILES_EXPLAIN_EVENTS``, the other kept events summed, and one remainder for everything
  not in the buffer, with ``remainder_events`` the count of the user's applied events it does
  not hold): ``sum(events) + omitted + remainder == similarity``;
- ``interests`` (multi-interest profiles on): the same similarity split over the user's
  interests, most important first, each with its own cosine; the remainder is their fp16
  storage;
- ``covis``: the recent items whose co-visitation neighbour lists held the candidate, with their
  seed weight, the neighbour value and the product, the same numbers the ``covis_score``
  feature summed: ``sum(items) + omitted == score == expm1(covis_score)``.

:class:`Explainer` reads the state once, synchronously, right after candidate generation (no
``await`` in between, so a batch applied while the request waits on peers cannot make the
explanation disagree with the candidates); without ``explain`` nothing here runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stream.core.errors import BadRequest
from stream.core.explain import (
    ContentSplit,
    CovisTerm,
    content_terms,
    covis_terms,
    interest_terms,
    linear_terms,
    profile_norm,
    split_content,
    split_covis,
)
from stream.core.hybrid import FEATURES, SOURCES, Candidates, HybridParams
from stream.core.ranker import Ranker
from stream.worker.pipeline import Pipeline

__all__ = ["Explainer", "parse_explain"]

_CONTENT = FEATURES.index("content_sim")
_COVIS = FEATURES.index("covis_score")


def parse_explain(text: str | None) -> bool:
    """The ``explain`` query parameter: absent, ``0``/``false`` (off) or ``1``/``true``."""
    if text is None or text in ("0", "false"):
        return False
    if text in ("1", "true"):
        return True
    raise BadRequest("explain must be 0, 1, true or false")


class Explainer:
    """What explains the candidates of one ``generate`` call, read from the state at once."""

    def __init__(self, p: Pipeline, hybrid: HybridParams, ranker: Ranker, user: str,
                 cands: Candidates) -> None:
        """``p``, ``hybrid``, ``ranker``: what ``Queries.generate`` and the ranking used;
        ``user``: the state's id; ``cands``: what ``generate`` returned for them."""
        self.cands = cands
        self.n = p.s.explain_events
        self.ranker = ranker
        pos = {name: i for i, name in enumerate(FEATURES)}
        self._ranker_cols = [pos[f] for f in ranker.features]
        self._row = {it: i for i, it in enumerate(cands.items)}
        st = p.profiles.owner(user)
        # Copied now, decomposed per served candidate (a few of the pool) later: the kept
        # events, their vectors, the candidates' vectors, the profile's anchor, half-life and
        # ||sum||, and the interests (importance ranked, means, shares)
        self._kept: list[tuple[int, str, float]] = []
        self._ev_vecs = np.zeros((0, 0))
        self._x = np.zeros((0, 0), dtype=np.float32)
        self._profile: tuple[int, float, float] | None = None
        self._interests: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._covis: dict[str, list[CovisTerm]] = {}
        self._outside = 0  # the user's applied events the buffer does not hold
        if st is None or not len(cands):
            return
        raw = st.profiles.raw(user)
        if raw is not None:
            anchor, total = raw
            norm = profile_norm(total)
            self._profile = (anchor, st.profiles.params.half_life_ms, norm)
            # every kept event (tie groups can keep more than recent_n; at most recent_cap)
            self._kept = st.signals.recent.get(user, st.signals.params.recent_cap)
            ev_vecs, missing = p.catalog.vectors([it for _, it, _ in self._kept])
            self._ev_vecs = np.array(ev_vecs, dtype=np.float64).reshape(len(self._kept), p.dim)
            self._ev_vecs[missing] = 0.0  # no vector now: its share goes to the remainder
            x, gone = p.catalog.vectors(cands.items)
            self._x = np.array(x, dtype=np.float32)
            self._x[gone] = 0.0
            stats = st.users.get(user)
            self._outside = max(0, int(stats["events"]) - len(self._kept)) if stats else 0
            it = st.interests.get(user) if st.interests is not None else None
            if it is not None and len(it):
                # in the profile's frame (the same anchor, unless the two ever disagree)
                imp = it.importance_at(anchor, st.profiles.params.half_life_ms)
                order = np.argsort(-imp, kind="stable")
                self._interests = (imp[order], np.asarray(it.means[order]), it.shares[order])
        if cands.features[:, _COVIS].any():
            self._covis = covis_terms(st.signals.recent.get(user), p.sharing.view.neighbours,
                                      p.sharing.newest_ts, hybrid,
                                      {it for it, v in zip(cands.items,
                                                           cands.features[:, _COVIS].tolist())
                                       if v > 0})

    def content(self, item: str) -> ContentSplit | None:
        """The content similarity of a candidate split over the user's kept events (None: the
        user has no profile here)."""
        if self._profile is None:
            return None
        row = self._row[item]
        anchor, half_life, norm = self._profile
        decay, contrib = content_terms(self._kept, self._ev_vecs, anchor, half_life, norm,
                                       self._x[row:row + 1])
        return split_content(float(self.cands.features[row, _CONTENT]), self._kept, decay,
                             contrib[:, 0], self.n)

    def interests(self, item: str, similarity: float) -> dict[str, Any] | None:
        """The content similarity split over the user's interests (most important first):
        ``sum(contribution) + remainder == similarity``, the remainder being the interests'
        fp16 storage (``stream.core.interests``); with each interest's own cosine."""
        if self._interests is None or self._profile is None:
            return None
        importance, means, shares = self._interests
        x = self._x[self._row[item]]
        cos, contrib = interest_terms(importance, means, self._profile[2], x)
        return {"interests": [{"interest": i, "share": float(shares[i]),
                               "similarity": float(cos[i]), "contribution": float(contrib[i])}
                              for i in range(len(importance))],
                "nearest": int(np.argmax(cos)),
                "remainder": similarity - float(contrib.sum())}

    def explain(self, item: str, *, ranker_rank: int, served_rank: int,
                bandit_mean: float) -> dict[str, Any]:
        """The explanation of one served candidate (JSON-ready)."""
        row = self._row[item]
        x = self.cands.features[row]
        bits = int(self.cands.sources[row])
        out: dict[str, Any] = {
            "sources": [s for b, s in enumerate(SOURCES) if bits >> b & 1],
            "features": dict(zip(self.ranker.features, x[self._ranker_cols].tolist())),
            "bandit": {"ranker_rank": ranker_rank, "served_rank": served_rank,
                       "mean": float(bandit_mean), "reranked": ranker_rank != served_rank},
        }
        lin = linear_terms(self.ranker, x[self._ranker_cols])
        if lin is not None:
            bias, terms = lin
            out["ranker"] = {"kind": "linear", "bias": bias,
                             "terms": [{"feature": f, "term": v} for f, v in terms]}
        else:
            out["ranker"] = {"kind": self.ranker.kind}
        c = self.content(item)
        if c is not None:
            out["content"] = {
                "similarity": c.similarity,
                "events": [{"item_id": e.item, "ts": e.ts, "weight": e.weight, "decay": e.decay,
                            "contribution": e.contribution} for e in c.top],
                "omitted": {"events": c.omitted_events, "contribution": c.omitted},
                "remainder": c.remainder, "remainder_events": self._outside}
            split = self.interests(item, c.similarity)
            if split is not None:
                out["interests"] = split
        seeds = self._covis.get(item)
        if seeds:
            score, top, more, rest = split_covis(seeds, self.n)
            out["covis"] = {
                "score": score,
                "items": [{"item_id": t.item, "seed_weight": t.seed_weight,
                           "covis_weight": t.covis_weight, "contribution": t.contribution}
                          for t in top],
                "omitted": {"items": more, "contribution": rest}}
        return out
