"""Personalised search, the pure part: query text checks and the relevance / interest blend.

``GET /users/{id}/search?q=...`` (``stream.serve.search``) and ``profiles eval-search``
(``stream.eval.search_eval``) both rank with :func:`rank`, so the evaluation scores the code
that serves.  For a query vector ``q`` (unit), a pool of the ``pool`` items nearest ``q`` in the
item index (over-fetched: the blend may lift an item from deep in the pool), and the user's
interest vectors ``u_1..u_m`` (unit; one vector, the profile, when the user has no separate
interests)::

    relevance(i) = q · e_i                      (cosine: every vector is unit length)
    affinity(i)  = max_j  u_j · e_i             (the interest the item is closest to)
    score(i)     = (1 − λ) · relevance(i) + λ · affinity(i)

``λ`` is ``PROFILES_SEARCH_BLEND``.  A user without a profile (unknown, forgotten, or no events
applied yet: cold start) has no affinity and is ranked by relevance alone, which is the same
ranking as ``λ = 0``.  The max over interests (not the importance-weighted mean) lets a user who
likes both running shoes and baby food find either: the mean points at neither.  Ties are broken
by relevance, then by item id, so a ranking never depends on the index's internal order.
With multi-interest profiles (``stream.core.interests``) the ``u_j`` are the interests holding
at least :data:`MIN_INTEREST_SHARE` of the user's importance (:func:`interest_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stream.core.errors import BadRequest

__all__ = ["MIN_INTEREST_SHARE", "SearchHit", "SearchParams", "affinity", "blend",
           "check_query", "interest_rows", "rank"]

#: an interest below this share of the user's importance is left out of the affinity
MIN_INTEREST_SHARE = 0.1


@dataclass(frozen=True)
class SearchParams:
    """The blend weight, the over-fetched pool and the longest query text."""

    #: weight of the user's interests in the score (0: plain query relevance); 0.1 keeps the
    #: mean query relevance of the top 10 within 0.01 of plain's (``profiles eval-search``)
    blend: float = 0.1
    #: items fetched from the index per query (at least ``k``)
    pool: int = 200
    #: most characters of a query (after stripping)
    max_chars: int = 256

    def __post_init__(self) -> None:
        if not (isinstance(self.blend, (int, float)) and 0.0 <= self.blend <= 1.0):
            raise ValueError(f"search blend must be in [0, 1], got {self.blend!r}")
        if type(self.pool) is not int or self.pool < 1:
            raise ValueError(f"search pool must be an integer >= 1, got {self.pool!r}")
        if type(self.max_chars) is not int or self.max_chars < 1:
            raise ValueError(f"search max_chars must be an integer >= 1, got {self.max_chars!r}")


@dataclass(frozen=True)
class SearchHit:
    """One ranked item: its blended score and the two terms it was made of."""

    item_id: str
    score: float
    relevance: float
    affinity: float | None


def check_query(text: str | None, max_chars: int) -> str:
    """The query of a request, stripped; BadRequest (one line) when it is missing, blank, too
    long or holds control characters (which no typed query has)."""
    if text is None:
        raise BadRequest("q is required")
    q = text.strip()
    if not q:
        raise BadRequest("q must not be empty")
    if len(q) > max_chars:
        raise BadRequest(f"q must be at most {max_chars} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in q):
        raise BadRequest("q must not contain control characters")
    return q


def interest_rows(vectors: np.ndarray, shares: np.ndarray,
                  min_share: float = MIN_INTEREST_SHARE) -> np.ndarray:
    """The interests that take part in the affinity: those holding at least ``min_share`` of
    the user's importance (the largest always does), so a single stray event, which opens an
    interest of its own, does not pull a query's results towards it."""
    v = np.asarray(vectors, dtype=np.float32)
    sh = np.asarray(shares, dtype=np.float64).reshape(-1)
    if sh.size == 0:
        return v[:0]
    keep = sh >= min_share
    keep[int(np.argmax(sh))] = True
    out: np.ndarray = v[keep]
    return out


def affinity(item_vectors: np.ndarray, interests: np.ndarray) -> np.ndarray:
    """Per item, its cosine with the nearest of the user's interest vectors (rows, unit)."""
    items = np.asarray(item_vectors, dtype=np.float32)
    ints = np.asarray(interests, dtype=np.float32).reshape(-1, items.shape[1])
    if ints.shape[0] == 0 or items.shape[0] == 0:
        return np.zeros(items.shape[0], dtype=np.float64)
    out: np.ndarray = (items @ ints.T).astype(np.float64).max(axis=1)
    return out


def blend(relevance: np.ndarray, aff: np.ndarray | None, weight: float) -> np.ndarray:
    """``(1 − weight) · relevance + weight · affinity``; relevance alone without affinity."""
    rel = np.asarray(relevance, dtype=np.float64)
    if aff is None:
        return rel.copy()
    return (1.0 - weight) * rel + weight * np.asarray(aff, dtype=np.float64)


def rank(item_ids: Sequence[str], relevance: np.ndarray, aff: np.ndarray | None,
         weight: float, k: int) -> list[SearchHit]:
    """The ``k`` best of the pool by blended score (ties: higher relevance, then item id)."""
    rel = np.asarray(relevance, dtype=np.float64)
    if len(item_ids) != rel.shape[0] or (aff is not None and len(aff) != rel.shape[0]):
        raise ValueError(f"{len(item_ids)} items, {rel.shape[0]} relevances, "
                         f"{None if aff is None else len(aff)} affinities")
    score = blend(rel, aff, weight)
    sc, rl = score.tolist(), rel.tolist()
    order = sorted(range(len(sc)), key=lambda i: (-sc[i], -rl[i], item_ids[i]))
    return [SearchHit(str(item_ids[i]), sc[i], rl[i], None if aff is None else float(aff[i]))
            for i in order[:max(0, int(k))]]
