"""Pinned data and pure helpers of ``profiles bench scale`` (numpy only; no worker code).

Everything here is a function of ``(seed, dim, users, items)``, so the parent process (which
computes the offline oracle) and each measuring child (which feeds the worker's batch step)
build the same catalogue and the same event log without passing it around:

- *items*: ``TOPICS`` unit topic centres; item ``j`` = its topic's centre + noise, unit norm
  (the generator of ``python -m index.bench``);
- *users*: user ``u`` likes ``1 + u % 3`` topics (a fixed arithmetic rule); each of its events
  is an item of one of them, a type drawn from ``TYPE_MIX`` and a time in the 30 days before
  ``T0``; the bulk log holds ``events_per_user`` events of every user, grouped by user;
- *tails*: later events (after ``T0``) of users drawn at random, for the rate, steady-ingest,
  churn and recovery phases;
- *queries*: profile-like, a decayed mixture of 2-8 items of 1-3 topics, never a stored vector.

The oracle (:func:`oracle_sums`) is the profile's definition in plain numpy,
``Σ w[type] · 2^((ts − T0)/H) · e(item)`` per user, normalised by the caller.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np

__all__ = ["T0", "TOPICS", "TYPE_MIX", "EventBlock", "ScaleData", "oracle_sums", "percentile",
           "recall_at_k", "slope", "top_k_exact"]

TOPICS = 1000
T0 = 1_700_000_000_000  # ms: the bulk log ends here, tails start here
DAY_MS = 86_400_000
#: event types of the generated log and their shares (no searches: no query encoding)
TYPE_MIX: tuple[tuple[str, float], ...] = (("view", 0.6), ("click", 0.25),
                                           ("add_to_cart", 0.1), ("purchase", 0.05))
BLOCK = 1000  # users per generator block (each block has its own pinned rng)


@dataclass
class EventBlock:
    """Events as arrays: user index, item index, type index (into ``TYPE_MIX``), time (ms)."""

    user: np.ndarray
    item: np.ndarray
    type: np.ndarray
    ts: np.ndarray

    def __len__(self) -> int:
        return int(self.user.size)


class ScaleData:
    """The pinned catalogue and event log of one bench run."""

    def __init__(self, seed: int, dim: int, n_items: int, n_users: int,
                 events_per_user: int) -> None:
        if n_items < 1 or n_users < 1 or events_per_user < 1 or dim < 2:
            raise ValueError("users, items, events per user >= 1 and dim >= 2")
        self.seed, self.dim = seed, dim
        self.n_items, self.n_users, self.epu = n_items, n_users, events_per_user
        rng = np.random.default_rng([seed, 0])
        c = rng.standard_normal((TOPICS, dim)).astype(np.float32)
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.item_topic = rng.integers(0, TOPICS, n_items)
        self._by_topic = np.argsort(self.item_topic, kind="stable")
        self._starts = np.searchsorted(self.item_topic[self._by_topic], np.arange(TOPICS + 1))
        self._vectors: np.ndarray | None = None
        self._cum = np.cumsum([p for _, p in TYPE_MIX])

    # -- catalogue ------------------------------------------------------------------------
    def item_ids(self, rows: Sequence[int] | np.ndarray | None = None) -> list[str]:
        idx = range(self.n_items) if rows is None else rows
        return [f"i{int(j)}" for j in idx]

    def item_vectors(self) -> np.ndarray:
        """All item vectors (float32, unit norm), made in chunks with pinned rngs."""
        if self._vectors is None:
            out = np.empty((self.n_items, self.dim), dtype=np.float32)
            for s in range(0, self.n_items, 65536):
                e = min(self.n_items, s + 65536)
                rng = np.random.default_rng([self.seed, 1, s])
                noise = rng.standard_normal((e - s, self.dim)).astype(np.float32)
                v = self.centres[self.item_topic[s:e]] + noise / np.sqrt(self.dim)
                out[s:e] = v / np.linalg.norm(v, axis=1, keepdims=True)
            self._vectors = out
        return self._vectors

    def item_record(self, j: int) -> dict[str, str]:
        t = int(self.item_topic[j])
        return {"item_id": f"i{j}", "title": f"item {j} of topic {t}", "category": f"c{t % 50}"}

    # -- events ---------------------------------------------------------------------------
    def _user_items(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """An item of one of each user's topics (``1 + u % 3`` topics, a fixed rule)."""
        n_topics = 1 + users % 3
        k = (rng.random(users.size) * n_topics).astype(np.int64)
        topic = (users * 7919 + k * 104_729) % TOPICS
        lo, hi = self._starts[topic], self._starts[topic + 1]
        size = hi - lo
        pick = lo + (rng.random(users.size) * np.maximum(size, 1)).astype(np.int64)
        fallback = (rng.random(users.size) * self.n_items).astype(np.int64)
        return np.where(size > 0, self._by_topic[np.minimum(pick, self._by_topic.size - 1)],
                        fallback)

    def _types(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self._cum, rng.random(n) * self._cum[-1], side="right"),
                          len(TYPE_MIX) - 1)

    def bulk(self, start: int, stop: int) -> Iterator[EventBlock]:
        """The bulk log of users ``start..stop`` in blocks of ``BLOCK`` users, grouped by user
        (``events_per_user`` each, times in the 30 days before ``T0``)."""
        for b0 in range(start - start % BLOCK, stop, BLOCK):
            rng = np.random.default_rng([self.seed, 2, b0])
            users = np.repeat(np.arange(b0, b0 + BLOCK, dtype=np.int64), self.epu)
            items = self._user_items(users, rng)
            types = self._types(rng, users.size)
            ts = T0 - 1 - (rng.random(users.size) * 30 * DAY_MS).astype(np.int64)
            keep = (users >= max(start, b0)) & (users < stop)
            yield EventBlock(users[keep], items[keep], types[keep], ts[keep])

    def tail(self, tag: int, n: int, users: np.ndarray | None = None) -> EventBlock:
        """``n`` later events (after ``T0``, increasing) of users drawn at random (from
        ``users`` when given); ``tag`` pins the draw."""
        rng = np.random.default_rng([self.seed, 3, tag])
        pool = np.arange(self.n_users, dtype=np.int64) if users is None else users
        who = pool[rng.integers(0, pool.size, n)]
        return EventBlock(who, self._user_items(who, rng), self._types(rng, n),
                          T0 + (tag % 1000) * DAY_MS // 1000 + np.arange(n, dtype=np.int64))

    def queries(self, n: int, tag: int = 0) -> np.ndarray:
        """Profile-like queries: decayed mixtures of 2-8 items of 1-3 topics, normalised."""
        rng = np.random.default_rng([self.seed, 4, tag])
        vecs = self.item_vectors()
        out = np.empty((n, self.dim), dtype=np.float32)
        for i in range(n):
            topics = rng.integers(0, TOPICS, int(rng.integers(1, 4)))
            pool = np.concatenate([self._by_topic[self._starts[t]:self._starts[t + 1]]
                                   for t in topics])
            if pool.size == 0:
                pool = np.arange(self.n_items)
            k = int(rng.integers(2, 9))
            w = 0.8 ** np.arange(k)[::-1]
            out[i] = w @ vecs[pool[rng.integers(0, pool.size, k)]]
        return out / np.linalg.norm(out, axis=1, keepdims=True)


# ---------------------------------------------------------------------------- oracle, figures
def oracle_sums(blocks: Sequence[EventBlock], item_vectors: np.ndarray, users: np.ndarray,
                weights: Sequence[float], half_life_ms: float) -> np.ndarray:
    """Unnormalised profile sums (float64) of ``users`` over every event of ``blocks``:
    ``Σ w[type] · 2^((ts − T0)/H) · e(item)``.  The anchor of the service cancels out when
    normalising, so any fixed reference time gives the same profile."""
    row = {int(u): i for i, u in enumerate(users.tolist())}
    out = np.zeros((users.size, item_vectors.shape[1]), dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    for b in blocks:
        mask = np.isin(b.user, users)
        if not mask.any():
            continue
        at = np.fromiter((row[int(u)] for u in b.user[mask]), dtype=np.int64)
        order = np.argsort(at, kind="stable")
        at = at[order]
        scale = (w[b.type[mask]] * np.exp2((b.ts[mask] - T0) / half_life_ms))[order]
        terms = scale[:, None] * item_vectors[b.item[mask][order]].astype(np.float64)
        starts = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])
        out[at[starts]] += np.add.reduceat(terms, starts, axis=0)
    return out


def top_k_exact(matrix: np.ndarray, queries: np.ndarray, k: int,
                exclude: Sequence[int] | None = None) -> list[set[int]]:
    """Rows of the ``k`` largest inner products with each query (brute force), never the
    query's ``exclude`` row."""
    scores = queries @ matrix.T
    if exclude is not None:
        scores[np.arange(len(exclude)), np.asarray(exclude)] = -np.inf
    k = min(k, matrix.shape[0])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return [set(r.tolist()) for r in top]


def recall_at_k(got: Sequence[Iterable[Hashable]], want: Sequence[AbstractSet[Hashable]]
                ) -> float:
    """Mean share of each exact top-k found (an empty exact set counts as found)."""
    if len(got) != len(want):
        raise ValueError(f"{len(got)} results for {len(want)} queries")
    if not want:
        raise ValueError("no queries")
    return float(np.mean([len(set(g) & w) / len(w) if w else 1.0 for g, w in zip(got, want)]))


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (two points: the difference quotient); the
    per-user bytes of memory measured at several sizes."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.size < 2 or x.size != y.size or np.ptp(x) == 0:
        raise ValueError("need two or more distinct sizes")
    xm = x - x.mean()
    return float((xm * (y - y.mean())).sum() / (xm * xm).sum())


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, nearest rank); None without values."""
    if not len(values):
        return None
    v = np.sort(np.asarray(values, dtype=np.float64))
    return float(v[min(v.size - 1, max(0, int(np.ceil(q / 100 * v.size)) - 1))])
