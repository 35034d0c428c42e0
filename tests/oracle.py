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


def oracle_interests(
    events: Iterable[dict],
    item_vectors: Mapping[str, np.ndarray],
    query_vectors: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    half_life_ms: float,
    k: int,
    threshold: float,
) -> dict[str, tuple[int, list[float], np.ndarray]]:
    """Per user, events one at a time in the given (offset) order, the multi-interest rule of
    README "Multi-interest profiles": {user: (anchor, importances, stored means [n, dim])}.

    anchor = newest ts so far (importances rescaled when it moves); c = w * 2**((ts-anchor)/H);
    c == 0: nothing else.  The nearest interest by cosine (first on ties) takes the event when
    the cosine >= threshold (W += c; mean += c/W * (v - mean)); otherwise it is a new interest,
    and with k already the closest pair of the k+1 (first pair on ties) becomes their W-weighted
    mean in the first one's place.  Means are stored as int8 codes times a float32 scale per
    interest (scale = float32(max|x| / 127), code = round-half-even(x / scale) in [-127, 127])
    after every event; the stored means are returned as float64 (codes times scales).
    """
    f32max = float(np.finfo(np.float32).max)

    def q8(x: np.ndarray) -> np.ndarray:
        s = float(np.float32(min(float(np.max(np.abs(x))) / 127.0, f32max)))
        if s == 0.0:
            return np.zeros(len(x), dtype=np.float64)
        codes = np.clip(np.rint(x / s), -127, 127).astype(np.int8)
        return codes.astype(np.float64) * s

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        na, nb = float(np.sqrt(np.dot(a, a))), float(np.sqrt(np.dot(b, b)))
        return float(np.dot(a, b)) / (na * nb) if na > 0 and nb > 0 else 0.0

    users: dict[str, list] = {}  # user -> [anchor, [W...], [stored mean ...]]
    for e in events:
        v = _event_vector(e, item_vectors, query_vectors)
        if v is None:
            continue
        v = np.asarray(v, dtype=np.float64)
        t = int(e["ts"])
        st = users.setdefault(e["user_id"], [t, [], []])
        if t > st[0]:
            st[1] = [w * 2.0 ** ((st[0] - t) / half_life_ms) for w in st[1]]
            st[0] = t
        c = float(weights.get(e["type"], 0.0)) * 2.0 ** ((t - st[0]) / half_life_ms)
        if c == 0.0:
            continue
        ws, ms = st[1], st[2]
        sims = [cos(m, v) for m in ms]
        best = max(range(len(ms)), key=lambda i: (sims[i], -i)) if ms else -1
        if best >= 0 and sims[best] >= threshold:
            ws[best] += c
            m = ms[best]
            ms[best] = q8(m + (c / ws[best]) * (v - m))
            continue
        ws.append(c)
        ms.append(q8(v))
        if len(ms) > k:
            cand = [*ms[:-1], v]
            pair, top = (0, 1), -np.inf
            for i in range(len(cand)):
                for j in range(i + 1, len(cand)):
                    s = cos(cand[i], cand[j])
                    if s > top:
                        pair, top = (i, j), s
            i, j = pair
            tot = ws[i] + ws[j]
            merged = ((ws[i] * cand[i] + ws[j] * cand[j]) / tot if tot > 0
                      else 0.5 * (cand[i] + cand[j]))
            ws[i] = tot
            ms[i] = q8(merged)
            del ws[j], ms[j]
    dim = next((len(v) for v in item_vectors.values()), 0)
    return {u: (st[0], list(st[1]), np.array(st[2], dtype=np.float64).reshape(len(st[2]), dim))
            for u, st in users.items()}
