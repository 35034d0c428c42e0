"""Multi-interest serving (issue 13): the content source per interest, and the interests of
``/users/{id}/profile``.

Content: a user with two or more interests gets ``content_k`` items split by importance
(largest remainder), each interest taking its most similar items that a more important one did
not take (:func:`stream.core.interests.multi_interest_hits`, one index call for all of them).
The similarity handed to the hybrid, which becomes the ``content_sim`` feature, stays the
single profile's (profile . item), so the feature means the same for every candidate.  With
``PROFILES_INTERESTS_K=0``, or a user with at most one interest, the single profile vector is
queried as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stream.core.interests import Interests, multi_interest_hits
from stream.worker.pipeline import Pipeline
from stream.worker.state import PartitionState

__all__ = ["REPRESENTATIVE_ITEMS", "TOP_CATEGORIES", "content_hits", "describe"]

#: recent items listed per interest, and categories (of the interest's nearest catalogue items)
REPRESENTATIVE_ITEMS = 3
TOP_CATEGORIES = 3
_CATEGORY_ITEMS = 20  # catalogue items nearest an interest whose categories describe it


def _interests(st: PartitionState | None, user: str) -> Interests | None:
    return st.interests.get(user) if st is not None and st.interests is not None else None


def content_hits(p: Pipeline, st: PartitionState | None, user: str, vec: np.ndarray, n: int,
                 exclude: Sequence[set[str]] | None) -> list[tuple[str, float]]:
    """The content source's ``n`` items (item, profile . item) for ``user``, whose profile
    vector is ``vec``: per interest with quotas by importance, else nearest ``vec``."""
    items = p.catalog.index
    it = _interests(st, user)
    if it is None or len(it) <= 1:
        return [(i, float(s)) for i, s in items.search(vec[None, :], n, exclude=exclude)[0]]
    hits = multi_interest_hits(
        it, n, lambda q, k: items.search(q, k, exclude=None if exclude is None
                                         else [exclude[0]] * len(q)))
    ids = [i for i, _ in hits]
    vecs, missing = p.catalog.vectors(ids)
    sims = (vecs @ vec).astype(np.float64)
    sims[missing] = 0.0
    return [(i, float(s)) for i, s in zip(ids, sims.tolist(), strict=True)]


def describe(p: Pipeline, st: PartitionState, user: str) -> list[dict[str, Any]] | None:
    """The user's interests for ``/users/{id}/profile``, most important first: ``importance``
    (decayed weight at the user's newest event), ``share`` of the total, ``top_categories``
    ([category, weight]: the categories of the catalogue items nearest the interest, weighted
    by similarity) and ``recent_items`` (the user's kept recent events whose item is nearest
    this interest, most similar first, at most 3).  None when interests are off."""
    if st.interests is None:
        return None
    it = st.interests.get(user)
    if it is None or not len(it):
        return []
    order = np.lexsort((np.arange(len(it)), -it.importance)).tolist()
    # each kept recent item goes to its nearest interest
    recent = list(dict.fromkeys(item for _, item, _ in st.signals.recent.get(user)))
    assigned: dict[int, list[tuple[float, str]]] = {i: [] for i in order}
    if recent:
        vecs, missing = p.catalog.vectors(recent)
        gone = set(missing)
        sims = vecs @ it.vectors.T  # [items, interests]
        for r, item in enumerate(recent):
            if r not in gone:
                best = int(np.argmax(sims[r]))
                assigned[best].append((float(sims[r, best]), item))
    index = p.catalog.index
    n = min(_CATEGORY_ITEMS, len(index))
    near = index.search(it.vectors[order], n) if n else [[] for _ in order]
    shares = it.shares
    out = []
    for i, hits in zip(order, near, strict=True):
        cats: dict[str, float] = {}
        for item, sim in hits:
            cat = p.catalog.category(item)
            if cat is not None and sim > 0:
                cats[cat] = cats.get(cat, 0.0) + float(sim)
        top = sorted(cats.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CATEGORIES]
        reps = sorted(assigned[i], key=lambda si: (-si[0], si[1]))[:REPRESENTATIVE_ITEMS]
        out.append({"importance": float(it.importance[i]), "share": float(shares[i]),
                    "top_categories": [[c, round(w, 6)] for c, w in top],
                    "recent_items": [{"item_id": item, "similarity": round(s, 6)}
                                     for s, item in reps]})
    return out
