"""Customer segments: streaming mini-batch k-means over unit profile vectors (pure: numpy).

A user's segment is the nearest centroid (cosine; ties go to the lower id) of the adopted
:class:`Centroids` version.  Versions are built from *sufficient statistics*: for one version,
a partition's :class:`SegmentStats` holds, per segment, how many of its users are nearest that
centroid, the sum of their unit profile vectors and the weights of their categories.  Statistics
of several partitions are merged by adding them in partition order (:func:`merge_stats`), and a
new version is a deterministic function of the previous one and the merged statistics
(:func:`next_version`):

- **mini-batch k-means** (Sculley 2010, spherical): each centroid keeps a cumulative count
  ``N_j``; with ``n_j`` members of mean ``m_j`` in the merged statistics,
  ``N_j' = N_j + n_j`` and ``c_j' = normalise(c_j + (n_j / N_j') (m_j - c_j))``: the
  learning rate of a segment falls as it has seen more users;
- **stable ids**: the updated centroids are then matched to the previous version's by an
  optimal assignment on cosine (:func:`match`, a small Hungarian algorithm), so segment ``j``
  of version ``v + 1`` is the one closest, as a whole, to segment ``j`` of version ``v``, and
  per-segment bandit counts stay meaningful.  The update above keeps ids by construction; the
  matching makes the id a property of the centroids rather than of their order (any
  permutation of the candidate centroids gives the same version), which a future update rule
  (re-seeding an empty segment, a fresh clustering) relies on.

Version 1 is seeded by k-means++ (:func:`seed_centroids`) over points every worker holds alike
(the item catalogue's vectors, sorted by id), from a seeded generator.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "TOP_CATEGORIES",
    "Centroids",
    "SegmentStats",
    "assign",
    "hungarian",
    "match",
    "merge_stats",
    "next_version",
    "seed_centroids",
]

#: categories kept per segment in a partition's statistics (bounded: a partial stays small)
TOP_CATEGORIES = 10


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), 0.0)


@dataclass(frozen=True)
class Centroids:
    """One version of the segment centroids.

    ``centroids``: float32 ``[k, dim]`` unit rows (a zero row is a segment not seeded yet: it
    never gets a member); ``counts``: float64 ``[k]``, users each centroid has absorbed so far
    (the mini-batch learning rate).  Version 0 is "no segments yet"."""

    version: int
    centroids: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls, k: int, dim: int) -> Centroids:
        return cls(0, np.zeros((k, dim), dtype=np.float32), np.zeros(k, dtype=np.float64))

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def seeded(self) -> np.ndarray:
        """Which segments have a centroid (bool ``[k]``)."""
        return np.asarray(np.any(self.centroids != 0, axis=1))

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Segment of each row of ``vectors`` (see :func:`assign`)."""
        return assign(vectors, self)

    def digest(self) -> str:
        """blake2b of the version, centroids and counts: equal digests, equal versions."""
        h = hashlib.blake2b(digest_size=16)
        h.update(int(self.version).to_bytes(8, "little", signed=True))
        h.update(np.ascontiguousarray(self.centroids, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(self.counts, dtype=np.float64).tobytes())
        return h.hexdigest()

    def state(self) -> dict[str, Any]:
        return {"version": int(self.version), "centroids": self.centroids.copy(),
                "counts": self.counts.copy()}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> Centroids:
        c = np.asarray(d["centroids"], dtype=np.float32)
        n = np.asarray(d["counts"], dtype=np.float64).reshape(-1)
        if c.ndim != 2 or n.shape[0] != c.shape[0]:
            raise ValueError(f"centroids {c.shape} and counts {n.shape} do not agree")
        if not (np.isfinite(c).all() and np.isfinite(n).all()):
            raise ValueError("centroids and counts must be finite")
        return cls(int(d["version"]), c, n)


def assign(vectors: np.ndarray, model: Centroids) -> np.ndarray:
    """int64 segment id per row: the centroid of largest cosine (rows are unit profiles, so the
    inner product); ties go to the lower id; -1 for a zero row or when no centroid is seeded."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != model.dim:
        raise ValueError(f"vectors must be [n, {model.dim}], got {v.shape}")
    seeded = model.seeded()
    out = np.full(v.shape[0], -1, dtype=np.int64)
    if not v.shape[0] or not seeded.any():
        return out
    sims = v @ model.centroids.T
    sims[:, ~seeded] = -np.inf
    best = np.argmax(sims, axis=1)  # the first maximum: the lower id
    nonzero = np.any(v != 0, axis=1)
    out[nonzero] = best[nonzero]
    return out


@dataclass
class SegmentStats:
    """Sufficient statistics of some users for one version: per segment, members (``counts``),
    the float64 sum of their unit profiles (``sums``) and of their category weights
    (``categories``, the top :data:`TOP_CATEGORIES` per segment)."""

    version: int
    counts: np.ndarray  # float64 [k]
    sums: np.ndarray  # float64 [k, dim]
    categories: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def of(cls, vectors: np.ndarray, model: Centroids,
           categories: Sequence[Mapping[str, float]] | None = None) -> SegmentStats:
        """The statistics of these users' unit profiles (rows, in a fixed order: float sums
        depend on it) under ``model``; ``categories``: each user's category weights."""
        seg = assign(vectors, model)
        k, dim = model.k, model.dim
        keep = seg >= 0
        counts = np.bincount(seg[keep], minlength=k).astype(np.float64)
        sums = np.zeros((k, dim), dtype=np.float64)
        # rows grouped by segment (stable: in their given order), each group summed in float64
        order = np.argsort(np.where(keep, seg, k), kind="stable")[: int(keep.sum())]
        present = np.flatnonzero(counts)
        if present.size:
            grouped = np.asarray(vectors, dtype=np.float32)[order].astype(np.float64)
            starts = np.searchsorted(seg[order], present).tolist()
            for j, a, b in zip(present.tolist(), starts, [*starts[1:], len(order)]):
                sums[j] = grouped[a:b].sum(axis=0)
        cats: list[dict[str, float]] = [{} for _ in range(k)]
        if categories is not None:
            for j, user_cats in zip(seg.tolist(), categories):
                if j >= 0:
                    acc = cats[j]
                    for c, w in user_cats.items():
                        acc[c] = acc.get(c, 0.0) + float(w)
        return cls(model.version, counts, sums, [_top(c) for c in cats])

    @property
    def k(self) -> int:
        return int(self.counts.shape[0])

    def state(self) -> dict[str, Any]:
        """Plain data (lists of floats: orjson writes float64 exactly)."""
        return {"version": self.version, "counts": self.counts.tolist(),
                "sums": self.sums.tolist(), "categories": self.categories}

    @classmethod
    def from_state(cls, d: Mapping[str, Any], k: int, dim: int) -> SegmentStats:
        counts = np.asarray(d["counts"], dtype=np.float64).reshape(-1)
        sums = np.asarray(d["sums"], dtype=np.float64)
        if counts.shape != (k,) or sums.shape != (k, dim):
            raise ValueError(f"statistics of shape {counts.shape}, {sums.shape}; want ({k},), "
                             f"({k}, {dim})")
        if not (np.isfinite(counts).all() and np.isfinite(sums).all()) or (counts < 0).any():
            raise ValueError("statistics must be finite, counts >= 0")
        cats = d.get("categories") or [{} for _ in range(k)]
        if len(cats) != k:
            raise ValueError(f"{len(cats)} category tables for {k} segments")
        return cls(int(d["version"]), counts, sums,
                   [_top({str(c): float(w) for c, w in dict(t).items()}) for t in cats])


def _top(cats: Mapping[str, float], n: int = TOP_CATEGORIES) -> dict[str, float]:
    """The ``n`` heaviest categories (ties by name), heaviest first."""
    return dict(heapq.nsmallest(n, cats.items(), key=lambda kv: (-kv[1], kv[0])))


def merge_stats(parts: Iterable[SegmentStats], k: int, dim: int,
                version: int | None = None) -> SegmentStats:
    """The sum of ``parts`` in the order given (callers pass them by partition, so every worker
    adds the same floats in the same order); ``version``: only parts of that version."""
    counts = np.zeros(k, dtype=np.float64)
    sums = np.zeros((k, dim), dtype=np.float64)
    cats: list[dict[str, float]] = [{} for _ in range(k)]
    v = -1 if version is None else version
    for p in parts:
        if version is not None and p.version != version:
            continue
        counts += p.counts
        sums += p.sums
        for acc, c in zip(cats, p.categories):
            for name, w in c.items():
                acc[name] = acc.get(name, 0.0) + w
        v = max(v, p.version)
    return SegmentStats(v, counts, sums, [_top(c) for c in cats])


def hungarian(cost: np.ndarray) -> list[int]:
    """Optimal assignment of a square cost matrix (minimum total cost): ``col[i]`` for each row
    ``i``.  The O(n^3) Kuhn-Munkres algorithm with potentials (k is small)."""
    c = np.asarray(cost, dtype=np.float64)
    n = c.shape[0]
    if c.shape != (n, n) or not np.isfinite(c).all():
        raise ValueError(f"cost must be a finite square matrix, got {c.shape}")
    rows = c.tolist()
    u = [0.0] * (n + 1)
    v = [0.0] * (n + 1)
    p = [0] * (n + 1)  # p[j]: the row (1-based) assigned to column j
    way = [0] * (n + 1)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = [math.inf] * (n + 1)
        used = [False] * (n + 1)
        while True:
            used[j0] = True
            i0 = p[j0]
            delta = math.inf
            j1 = 0
            ri = rows[i0 - 1]
            for j in range(1, n + 1):
                if not used[j]:
                    cur = ri[j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j] = cur
                        way[j] = j0
                    if minv[j] < delta:
                        delta = minv[j]
                        j1 = j
            for j in range(n + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    col = [0] * n
    for j in range(1, n + 1):
        col[p[j] - 1] = j - 1
    return col


def match(previous: np.ndarray, candidates: np.ndarray) -> list[int]:
    """For each previous segment ``i``, the candidate centroid that takes its id: the
    assignment maximising the total cosine between previous and candidate centroids."""
    prev = _unit_rows(np.asarray(previous, dtype=np.float64))
    cand = _unit_rows(np.asarray(candidates, dtype=np.float64))
    if prev.shape != cand.shape:
        raise ValueError(f"previous {prev.shape} and candidate {cand.shape} centroids differ")
    return hungarian(-(prev @ cand.T))


def _minibatch(prev: Centroids, merged: SegmentStats) -> tuple[np.ndarray, np.ndarray]:
    """The candidate centroids and counts of one mini-batch step (ids as in ``prev``)."""
    n = merged.counts
    total = prev.counts + n
    eta = np.divide(n, total, out=np.zeros_like(n), where=total > 0)[:, None]
    mean = np.divide(merged.sums, n[:, None], out=np.zeros_like(merged.sums),
                     where=n[:, None] > 0)
    c = prev.centroids.astype(np.float64)
    moved = _unit_rows(c + eta * (mean - c))
    # a segment without members keeps its centroid; one that is not seeded stays empty
    keep = (n == 0)[:, None]
    return np.where(keep, c, moved), total


def next_version(prev: Centroids, merged: SegmentStats) -> Centroids:
    """Version ``prev.version + 1``: the mini-batch step over ``merged`` (statistics of
    ``prev``'s version), then the candidates matched to ``prev``'s ids (:func:`match`)."""
    if merged.version != prev.version:
        raise ValueError(f"statistics of version {merged.version} cannot update version "
                         f"{prev.version}")
    cand, counts = _minibatch(prev, merged)
    return ordered(prev, cand, counts)


def ordered(prev: Centroids, candidates: np.ndarray, counts: np.ndarray) -> Centroids:
    """The next version from candidate centroids (and their counts) in any order: candidate
    ``match(prev, candidates)[i]`` gets id ``i``."""
    col = match(prev.centroids, candidates)
    cand = np.asarray(candidates, dtype=np.float64)[col]
    return Centroids(prev.version + 1, cand.astype(np.float32),
                     np.asarray(counts, dtype=np.float64)[col].copy())


def seed_centroids(points: np.ndarray, k: int, seed: int) -> Centroids:
    """Version 1: k-means++ (Arthur & Vassilvitskii 2007, on cosine distance ``1 - cos``) over
    ``points`` (unit rows, in an order every worker shares) from a generator seeded by
    ``seed``; with fewer distinct points than ``k`` the rest stay unseeded (zero rows)."""
    pts = _unit_rows(np.asarray(points, dtype=np.float64))
    pts = pts[np.any(pts != 0, axis=1)]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dim = int(np.asarray(points).shape[1]) if np.asarray(points).ndim == 2 else 0
    out = np.zeros((k, dim), dtype=np.float64)
    if not len(pts):
        return Centroids(1, out.astype(np.float32), np.zeros(k, dtype=np.float64))
    rng = np.random.Generator(np.random.PCG64(seed))
    chosen = [int(rng.integers(len(pts)))]
    dist = np.maximum(1.0 - pts @ pts[chosen[0]], 0.0)
    while len(chosen) < k:
        total = float(dist.sum())
        if total <= 1e-12:
            break  # every point is a centroid already
        nxt = int(np.searchsorted(np.cumsum(dist), rng.random() * total, side="right"))
        nxt = min(nxt, len(pts) - 1)
        chosen.append(nxt)
        dist = np.minimum(dist, np.maximum(1.0 - pts @ pts[nxt], 0.0))
    out[: len(chosen)] = pts[chosen]
    return Centroids(1, out.astype(np.float32), np.zeros(k, dtype=np.float64))
