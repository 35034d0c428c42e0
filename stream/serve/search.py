"""``GET /users/{id}/search?q=...&k=``: personalised search over the item index (no aiohttp).

The query text is checked (:func:`stream.core.search.check_query`: 400 with one line), encoded
by the worker's :class:`~stream.worker.encoding.EncoderService` (micro-batched with every other
query, cached in its LRU bounded by ``PROFILES_ENCODER_CACHE_BYTES``), and the ``search_pool``
items nearest it are fetched from the item index, then ranked by the blend of query relevance
and the user's interests (:func:`stream.core.search.rank`): the multi-interest profile's
interests when the partition keeps them (``PartitionState.interests``), else the profile
vector.  A user without a profile here (never seen, forgotten, or nothing applied yet) is a
cold start: plain query relevance, and the body is the same as for any other such user
(``"user_id": null``; neither the id nor its pseudonym is echoed, as for ``/candidates``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stream.core.errors import Unavailable
from stream.core.search import SearchParams, affinity, check_query, interest_rows, rank
from stream.worker.pipeline import Pipeline

__all__ = ["interest_vectors", "search"]


def interest_vectors(pipeline: Pipeline, user: str) -> np.ndarray | None:
    """The user's interest vectors (rows, unit): with multi-interest profiles the interests
    holding at least ``MIN_INTEREST_SHARE`` of the importance, else the profile vector as one
    row; None when the user has no profile on this worker (cold start)."""
    st = pipeline.profiles.owner(user)
    if st is None:
        return None
    if st.interests is not None:  # multi-interest profiles (PROFILES_INTERESTS_K > 0)
        found = st.interests.get(user)
        if found is not None and len(found):
            return interest_rows(found.vectors, found.shares)
    vec = pipeline.profiles.vector(user)
    return None if vec is None else np.asarray(vec, dtype=np.float32)[None, :]


async def search(pipeline: Pipeline, params: SearchParams, user: str, text: str | None,
                 k: int) -> dict[str, Any]:
    """Items for query ``text`` ranked for ``user`` (already pseudonymised); see the module."""
    q = check_query(text, params.max_chars)
    try:
        qvec = (await pipeline.encoder_service.encode([q]))[0].astype(np.float32)
    except Exception as exc:  # the encoder is down: the request can be retried
        raise Unavailable("encoder unavailable") from exc
    norm = float(np.linalg.norm(qvec))
    if not np.isfinite(norm) or norm == 0.0:
        qvec = np.zeros_like(qvec)
    else:
        qvec /= norm
    interests = interest_vectors(pipeline, user)
    cold = interests is None
    items = pipeline.catalog.index
    n = min(max(params.pool, k), len(items))
    hits = items.search(qvec[None, :], n)[0] if n > 0 else []
    ids = [it for it, _ in hits]
    rel = np.array([s for _, s in hits], dtype=np.float64)
    aff = None
    if interests is not None and ids:
        vecs, _ = pipeline.catalog.vectors(ids)  # every id came from the index: none missing
        aff = affinity(vecs, interests)
    weight = 0.0 if cold else params.blend
    out = []
    for h in rank(ids, rel, aff, weight, k):
        item = pipeline.catalog.items.get(h.item_id)
        out.append({"item_id": h.item_id, "score": h.score, "relevance": h.relevance,
                    "affinity": h.affinity, "title": item.title if item else None,
                    "category": item.category if item else None})
    return {"user_id": None if cold else user, "cold_start": cold, "blend": weight,
            "results": out}
