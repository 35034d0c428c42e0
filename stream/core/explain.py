"""Explanations of served candidates as exact decompositions of their scores (pure: stdlib +
numpy).

Content similarity.  A profile is ``s = sum_e w_e * 2**((t_e - anchor) / H) * v_e``
(:mod:`stream.core.profile`) and is served normalised, ``p = s / ||s||``, so the content
similarity of an item ``x`` splits over the user's events::

    p . x = sum_e c_e,    c_e = w_e * 2**((t_e - anchor) / H) * (v_e . x) / ||s||

The worker keeps only a user's recent item events (``RecentItems``: at most ``recent_cap``,
erased by forget and by the TTL), so :func:`content_terms` computes ``c_e`` for those, with the
item's current vector, and :func:`split_content` adds one explicit remainder,
``similarity - sum of the kept events' c_e``: the events no longer kept (older than the
buffer), query events (``search``: their vector is the query's), events whose item vector
changed since they were applied, and float32 rounding of the served profile.  For a user whose
events all sit in the buffer the remainder is rounding only (``tests`` check it against a
brute-force recomputation from the log).

Co-visitation.  :func:`stream.core.hybrid.generate` scores a candidate ``x`` by
``sum_a seed(a) * n_a(x)`` over the seed items ``a`` (:func:`stream.core.hybrid.covis_seeds`)
whose neighbour lists hold ``x`` (``n_a(x)``: the decayed co-visitation value).
:func:`covis_terms` lists exactly those products, in the order ``generate`` sums them, so they
add up to the ``covis_score`` feature (``log1p`` of that sum).

Interests.  The importance-weighted interest means sum to the profile's sum (up to their fp16
storage), so :func:`interest_terms` splits the same similarity over the user's interests.

Ranker.  A linear ranker's log-odds is ``bias + sum_f w_f * (x_f - mean_f) / scale_f``
(:func:`linear_terms`); a tree ranker is explained by its input features only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple

import numpy as np

from stream.core.hybrid import HybridParams, covis_seeds
from stream.core.ranker import Ranker

__all__ = [
    "ContentSplit",
    "CovisTerm",
    "EventTerm",
    "content_terms",
    "covis_terms",
    "interest_terms",
    "linear_terms",
    "profile_norm",
    "split_content",
    "split_covis",
]

Recent = tuple[int, str, float]  # (ts, item, weight), as RecentItems keeps them
Neighbours = Callable[[str, int, int], list[tuple[str, float]]]


class EventTerm(NamedTuple):
    """One kept event's share of a candidate's content similarity."""

    ts: int
    item: str
    weight: float
    decay: float  # 2**((ts - anchor) / H): the event's age factor in the profile
    contribution: float


class ContentSplit(NamedTuple):
    """``similarity == sum(top contributions) + omitted + remainder``."""

    similarity: float
    top: list[EventTerm]  # the largest contributions, largest first
    omitted_events: int  # kept events not listed in ``top``
    omitted: float  # their contributions summed
    remainder: float  # everything not in the buffer (see the module docstring)


class CovisTerm(NamedTuple):
    """One seed item's share of a candidate's co-visitation score."""

    item: str
    seed_weight: float
    covis_weight: float
    contribution: float  # seed_weight * covis_weight, as generate adds it


def profile_norm(profile_sum: np.ndarray) -> float:
    """``||s||`` of a profile's float64 sum, scaled by its largest component first (as
    ``ProfileTable`` normalises: sums of tiny decayed contributions stay accurate)."""
    s = np.asarray(profile_sum, dtype=np.float64).reshape(-1)
    m = float(np.abs(s).max()) if s.size else 0.0
    return m * float(np.linalg.norm(s / m)) if m > 0 else 0.0


def content_terms(events: Sequence[Recent], event_vectors: np.ndarray, anchor: int,
                  half_life_ms: float, norm: float, item_vectors: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(decay [E], contributions [E, n]): each kept event's share of the content similarity of
    each of ``n`` items.  ``event_vectors`` [E, d] are the events' item vectors (a zero row: no
    vector, no share), ``item_vectors`` [n, d] the candidates'; ``anchor``, ``half_life_ms``
    and ``norm`` (:func:`profile_norm`) are the profile's."""
    e = len(events)
    x = np.asarray(item_vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"item vectors must be [n, dim], got shape {x.shape}")
    if e == 0 or norm <= 0:
        return np.zeros(e), np.zeros((e, x.shape[0]))
    ev = np.asarray(event_vectors, dtype=np.float64)
    if ev.shape != (e, x.shape[1]):
        raise ValueError(f"event vectors have shape {ev.shape}, want ({e}, {x.shape[1]})")
    t = np.fromiter((ts for ts, _, _ in events), dtype=np.int64, count=e)
    w = np.fromiter((wt for _, _, wt in events), dtype=np.float64, count=e)
    decay = np.exp2((t - np.int64(anchor)).astype(np.float64) / float(half_life_ms))
    coef = w * decay / norm
    return decay, coef[:, None] * (ev @ x.T)


def split_content(similarity: float, events: Sequence[Recent], decay: np.ndarray,
                  contributions: np.ndarray, n: int) -> ContentSplit:
    """A candidate's similarity split into its ``n`` largest event contributions (ties: newer
    first, then item id), the rest of the kept events, and the remainder."""
    c = np.asarray(contributions, dtype=np.float64).reshape(-1)
    order = sorted(range(len(events)), key=lambda i: (-c[i], -events[i][0], events[i][1]))
    top = [EventTerm(events[i][0], events[i][1], events[i][2], float(decay[i]), float(c[i]))
           for i in order[:n]]
    rest = order[n:]
    omitted = float(c[rest].sum()) if rest else 0.0
    kept = float(c.sum()) if len(c) else 0.0
    return ContentSplit(float(similarity), top, len(rest), omitted, float(similarity) - kept)


def interest_terms(importance: np.ndarray, means: np.ndarray, norm: float, x: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(cosine [n], contribution [n]) of each interest for item vector ``x``.  The interests'
    importance-weighted means sum to the profile's sum (``stream.core.interests``, up to their
    fp16 storage), so ``contribution_i = importance_i * (mean_i . x) / ||s||`` (``norm``: the
    profile's) splits the content similarity over the interests."""
    m = np.asarray(means, dtype=np.float64)
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    dots = m @ v
    lens = np.linalg.norm(m, axis=1)
    cos = np.divide(dots, lens, out=np.zeros_like(dots), where=lens > 0)
    imp = np.asarray(importance, dtype=np.float64)
    contrib = imp * dots / norm if norm > 0 else np.zeros_like(dots)
    return cos, contrib


def covis_terms(recent: Sequence[Recent], neighbours: Neighbours, now: int,
                params: HybridParams, wanted: Collection[str]) -> dict[str, list[CovisTerm]]:
    """Per wanted candidate, the seed items whose neighbour lists held it, in the order
    :func:`stream.core.hybrid.generate` adds them (``neighbours(item, now, m)``: the signal
    view's ``neighbours``; ``recent``: the events ``generate`` was given)."""
    out: dict[str, list[CovisTerm]] = {}
    if not params.covis_per_item:
        return out
    _own, seeds = covis_seeds(recent, now, params)
    for a in sorted(seeds):
        sw = seeds[a]
        for nb, v in neighbours(a, now, params.covis_per_item):
            if nb in wanted:
                out.setdefault(nb, []).append(CovisTerm(a, sw, v, sw * v))
    return out


def split_covis(terms: Sequence[CovisTerm], n: int) -> tuple[float, list[CovisTerm], int, float]:
    """(score, the ``n`` largest terms largest first (ties by item), how many more, their sum);
    ``score`` is summed in ``generate``'s order, so it equals its un-logged ``covis_score``."""
    score = 0.0
    for t in terms:
        score = score + t.contribution
    ranked = sorted(terms, key=lambda t: (-t.contribution, t.item))
    rest = ranked[n:]
    return score, ranked[:n], len(rest), float(sum(t.contribution for t in rest))


def linear_terms(ranker: Ranker, row: np.ndarray) -> tuple[float, list[tuple[str, float]]] | None:
    """(bias, [(feature, w * (x - mean) / scale), ...] largest magnitude first, zero terms
    left out) of a linear ranker for one row of its own features (NaN counts as the mean, as
    ``decision_function`` does); None for a tree ranker.  bias + the terms == the log-odds."""
    if ranker.kind != "linear":
        return None
    a = ranker.arrays
    x = np.asarray(row, dtype=np.float64).reshape(-1)
    z = (x - a["mean"]) / a["scale"]
    z[np.isnan(z)] = 0.0
    z *= a["weights"]
    terms = sorted(((f, v) for f, v in zip(ranker.features, z.tolist()) if v != 0.0),
                   key=lambda kv: (-abs(kv[1]), kv[0]))
    return float(a["bias"][0]), terms
