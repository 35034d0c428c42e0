"""Offline oracle in plain numpy: the obvious per-user computation, written independently of
stream/, encoder/ and index/ (imports none of them) so tests compare two implementations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np


def _event_vector(
    e: Mapping, item_vectors: Mapping[str, np.ndarray], query_vectors: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    if e["type"] == "search":
        q = e.get("query")
        return None if q is None else query_vectors.get(q)
    item = e.get("item_id")
    return None if item is None else item_vectors.get(item)


def oracle_profiles(
    events: Iterable[dict],
    item_vectors: Mapping[str, np.ndarray],
    query_vectors: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    half_life_ms: float,
) -> dict[str, np.ndarray]:
    """Per user: anchor = max ts of the user's events; v = sum w * 2**((ts - anchor)/H) * e,
    L2-normalised (zero stays zero).  Search events use query_vectors[query]; events without
    a known vector are skipped; unknown types weigh 0.
    """
    per_user: dict[str, list[tuple[int, float, np.ndarray]]] = defaultdict(list)
    for e in events:
        v = _event_vector(e, item_vectors, query_vectors)
        if v is None:
            continue
        per_user[e["user_id"]].append((int(e["ts"]), float(weights.get(e["type"], 0.0)), v))
    out: dict[str, np.ndarray] = {}
    for user, evs in per_user.items():
        anchor = max(t for t, _, _ in evs)
        acc = np.zeros(len(evs[0][2]), dtype=np.float64)
        for t, w, v in evs:
            acc += w * 2.0 ** ((t - anchor) / half_life_ms) * np.asarray(v, dtype=np.float64)
        norm = np.linalg.norm(acc)
        out[user] = acc / norm if norm > 0 else acc
    return out


def oracle_bandit(
    events: Iterable[dict],
    reward_weights: Mapping[str, float],
    impression_types: tuple[str, ...] = ("view",),
) -> dict[str, tuple[float, float]]:
    """{arm: (impressions, rewards)}; arm = event["arm"] if present else item_id; events with
    neither are skipped.  Every arm that appears is listed, even with (0, 0).
    """
    out: dict[str, list[float]] = {}
    for e in events:
        arm = e.get("arm") or e.get("item_id")
        if arm is None:
            continue
        c = out.setdefault(arm, [0.0, 0.0])
        if e["type"] in impression_types:
            c[0] += 1.0
        c[1] += float(reward_weights.get(e["type"], 0.0))
    return {a: (c[0], c[1]) for a, c in out.items()}
