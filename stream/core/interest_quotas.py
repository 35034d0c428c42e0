"""Serving multi-interest profiles (pure: stdlib + numpy): quotas by importance and the
per-interest content source.  Re-exported by :mod:`stream.core.interests`."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

__all__ = ["InterestsLike", "allocate_quotas", "merge_hits", "multi_interest_hits"]


class InterestsLike(Protocol):
    """What the content source reads of a user's interests (``stream.core.interests.Interests``:
    unit ``vectors`` [n, dim] and ``importance`` [n])."""

    @property
    def vectors(self) -> np.ndarray: ...

    @property
    def importance(self) -> np.ndarray: ...

    def __len__(self) -> int: ...


def allocate_quotas(importance: Sequence[float] | np.ndarray, total: int) -> list[int]:
    """Split ``total`` results over interests in proportion to ``importance`` (largest
    remainder; ties to the lower index).  All-zero importances split evenly."""
    imp = np.asarray(importance, dtype=np.float64).reshape(-1)
    n = imp.shape[0]
    if n == 0 or total <= 0:
        return [0] * n
    s = float(imp.sum())
    share = imp / s if s > 0 else np.full(n, 1.0 / n)
    exact = share * total
    quota = np.floor(exact).astype(np.int64)
    left = int(total - quota.sum())
    frac = exact - quota
    if left > 0:
        order = np.lexsort((np.arange(n), -frac))
        quota[order[:left]] += 1
    while left < 0:  # float rounding pushed a floor over: take back from the smallest part
        i = int(np.lexsort((-np.arange(n), frac + (quota == 0) * 2.0))[0])
        quota[i] -= 1
        left += 1
    return [int(q) for q in quota]


def multi_interest_hits(
    it: InterestsLike, total: int,
    search: Callable[[np.ndarray, int], Sequence[Sequence[tuple[str, float]]]],
) -> list[tuple[str, float]]:
    """The content source of a user with several interests: ``total`` split into quotas by
    importance (:func:`allocate_quotas`); interests in descending importance (slot order on
    ties) each take their ``q`` most similar items that a more important interest did not
    take.  ``search(unit_vectors [m, dim], k)`` answers every interest at once, best first
    (one index call; ``k = total`` is always enough).  Returns (item, similarity to the
    interest that took it), in taking order: ``total`` distinct items unless the index runs
    out."""
    quotas = allocate_quotas(it.importance, total)
    order = [i for i in np.lexsort((np.arange(len(it)), -it.importance)).tolist()
             if quotas[i] > 0]
    if not order:
        return []
    lists = search(it.vectors[order], total)
    taken: dict[str, float] = {}
    for i, hits in zip(order, lists, strict=True):
        got = 0
        for item, sim in hits:
            if got == quotas[i]:
                break
            if item not in taken:
                taken[item] = float(sim)
                got += 1
    return list(taken.items())


def merge_hits(lists: Sequence[Sequence[tuple[str, float]]], total: int
               ) -> list[tuple[str, float]]:
    """Merge per-interest (item, similarity) lists: best similarity per item, the ``total``
    best by (-similarity, item)."""
    best: dict[str, float] = {}
    for hits in lists:
        for item, sim in hits:
            prev = best.get(item)
            if prev is None or sim > prev:
                best[item] = float(sim)
    return heapq.nsmallest(max(total, 0), best.items(), key=lambda kv: (-kv[1], kv[0]))
