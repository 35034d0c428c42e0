"""Beta-Bernoulli bandit statistics as mergeable partials (pure: stdlib + numpy).

Each worker keeps one :class:`ArmStats` per Kafka partition it owns.  Impressions and
rewards are plain sums, so the posterior over the whole stream is the element-wise sum of
the partials: several workers (any partition assignment) answer exactly as one would.

Discounting (``BanditParams.half_life_ms``): an event at time ``ts`` counts
``2^((ts - T)/H)`` at time ``T``.  A partial stores its counts *as of its anchor* (the newest
event time it has seen), like a profile: a newer event rescales the table by
``2^((old - new)/H)`` and moves the anchor, so epoch-ms times never overflow.  Two partials
merge by bringing both to the later anchor and adding, which is exact in real arithmetic, so
discounted partials stay mergeable and order-independent (to float rounding).

Per-context arms (``BanditParams.context = "position"``): each event is also counted under
the key ``context_arm(arm, ctx)`` in a second table, so ``counts(arm)`` keeps the global
totals and ``counts(arm, context=ctx)`` the contextual ones.

Bounded tables (``BanditParams.max_arms``): any string can be an arm, so a table counts at most
``max_arms`` arms; an event whose arm is new while the table is full is not counted and adds
one to ``dropped`` (the first ``max_arms`` distinct arms are kept, in stream order, so the
result does not depend on batch boundaries and replays equal the original).  Only the
streaming :meth:`ArmStats.update` is bounded: merged partials and peers' answers are views.
Tables only ever append arms, which :class:`MergedArms` (the ``/metrics`` view) relies on.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Any, cast

import numpy as np

from stream.core.eventtypes import DEFAULT_REWARD_WEIGHTS, IMPRESSION_TYPES
from stream.core.rows import row_ints

__all__ = [
    "CONTEXTS",
    "CONTEXT_SEP",
    "DEFAULT_REWARD_WEIGHTS",  # re-exported from stream.core.eventtypes
    "ArmStats",
    "BanditParams",
    "MergedArms",
    "context_arm",
    "rerank",
    "seeded_rng",
    "thompson_scores",
]

CONTEXTS: tuple[str, ...] = ("", "position", "segment")
CONTEXT_SEP = "@"


def context_arm(arm: str, context: object) -> str:
    """Key of ``arm`` within a context, e.g. ``context_arm("i7", 2) == "i7@2"``."""
    return f"{arm}{CONTEXT_SEP}{context}"


def _finite_nonneg(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x >= 0


@dataclass(frozen=True)
class BanditParams:
    """Beta prior, reward weight per event type, and which types count as impressions."""

    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    reward_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_REWARD_WEIGHTS)
    )
    impression_types: tuple[str, ...] = IMPRESSION_TYPES
    #: half-life of counts in event time (ms); None = no discounting (plain counts)
    half_life_ms: float | None = None
    #: "" = one table of arms; "position" / "segment" = also count per (arm, position or the
    #: user's segment: the caller passes the contexts)
    context: str = ""
    #: most arms one table counts (None: unbounded); events of new arms beyond it are dropped
    max_arms: int | None = None

    def __post_init__(self) -> None:
        if self.half_life_ms is not None and not (
            isinstance(self.half_life_ms, (int, float)) and math.isfinite(self.half_life_ms)
            and self.half_life_ms > 0
        ):
            raise ValueError(
                f"half_life_ms must be None (no discounting) or a finite number > 0, "
                f"got {self.half_life_ms!r}")
        if self.context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {self.context!r}")
        if self.max_arms is not None and (type(self.max_arms) is not int or self.max_arms < 1):
            raise ValueError(f"max_arms must be None (unbounded) or an integer >= 1, "
                             f"got {self.max_arms!r}")
        for name in ("prior_alpha", "prior_beta"):
            v = getattr(self, name)
            if not _finite_nonneg(v) or v == 0:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        for k, w in self.reward_weights.items():
            if not _finite_nonneg(w):
                raise ValueError(f"reward weight for {k!r} must be finite and >= 0, got {w!r}")
        if isinstance(self.impression_types, str):
            # ValueError like every other bad param, so callers catch one type.
            raise ValueError("impression_types must be a sequence of type names, not a str")  # noqa: TRY004
        # Private copies: frozen params must not change under a caller's feet.
        object.__setattr__(
            self, "reward_weights", {str(k): float(v) for k, v in self.reward_weights.items()}
        )
        object.__setattr__(self, "impression_types", tuple(str(t) for t in self.impression_types))
        if self.half_life_ms is not None:
            object.__setattr__(self, "half_life_ms", float(self.half_life_ms))


class ArmStats:
    """impressions and rewards per arm (float64 arrays + dict arm -> row)."""

    def __init__(self, params: BanditParams, capacity: int = 256) -> None:
        self.params = params
        cap = max(1, int(capacity))
        self._imp = np.zeros(cap, dtype=np.float64)
        self._rew = np.zeros(cap, dtype=np.float64)
        self._index: dict[str, int] = {}
        self._names: list[str] = []
        #: event time (ms) the counts are expressed at; only used with discounting
        self.anchor: float | None = None
        #: per-context counts (keys ``context_arm(arm, ctx)``), when params.context is set
        self.contextual: ArmStats | None = None
        #: events not counted here because their arm was new and the table full (max_arms)
        self.dropped = 0

    @property
    def discounted(self) -> bool:
        return self.params.half_life_ms is not None

    def _align(self, anchor: float | None) -> None:
        """Move this table's anchor forward to ``anchor`` (rescaling its counts)."""
        h = self.params.half_life_ms
        if anchor is None or h is None:  # h None: not discounted
            return
        if self.anchor is None:
            self.anchor = float(anchor)
        elif anchor > self.anchor:
            n = len(self._names)
            f = 2.0 ** ((self.anchor - anchor) / h)
            self._imp[:n] *= f
            self._rew[:n] *= f
            self.anchor = float(anchor)

    def _decay_to(self, anchor: float | None) -> np.float64:
        """Per-event factor 2^((ts - anchor)/H) that brings counts made at ``anchor`` to ours."""
        h = self.params.half_life_ms
        if h is None or anchor is None or self.anchor is None:  # h None: not discounted
            return np.float64(1.0)
        return np.float64(2.0 ** ((float(anchor) - self.anchor) / h))

    def _grow(self, need: int) -> None:
        cap = len(self._imp)
        if need <= cap:
            return
        new_cap = cap
        while new_cap < need:
            new_cap *= 2
        for attr in ("_imp", "_rew"):
            old = getattr(self, attr)
            arr = np.zeros(new_cap, dtype=np.float64)
            arr[:cap] = old
            setattr(self, attr, arr)

    def _rows(self, arms: Sequence[str], limit: int | None = None) -> np.ndarray:
        """Row of each arm, new arms appended in order; with ``limit``, arms that would make
        the table longer than it get row -1."""
        index = self._index
        rows = np.fromiter(map(index.get, arms, repeat(-1)), dtype=np.int64, count=len(arms))
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            for i in missing.tolist():  # only arms not seen before
                a = arms[i]
                r = index.get(a)
                if r is None:
                    if limit is not None and len(self._names) >= limit:
                        continue  # table full: not counted (rows[i] stays -1)
                    r = len(self._names)
                    index[a] = row_ints(r + 1)[r]  # one int object per row number
                    self._names.append(a)
                rows[i] = r
            self._grow(len(self._names))
        return rows

    def _scatter(self, rows: np.ndarray, imp: np.ndarray, rew: np.ndarray) -> None:
        # bincount is a vectorised segment-sum, much faster than np.add.at.
        n = len(self._names)
        self._imp[:n] += np.bincount(rows, weights=imp, minlength=n)
        self._rew[:n] += np.bincount(rows, weights=rew, minlength=n)

    def update(self, arms: Sequence[str], types: Sequence[str],
               ts: Sequence[float] | np.ndarray | None = None,
               contexts: Sequence[object] | None = None) -> ArmStats:
        """Count a batch of events: +1 impression for impression types, +reward_weights[type].

        With discounting each event counts ``2^((ts - anchor)/H)`` (``ts`` required, epoch ms);
        with a context each event is also counted under ``context_arm(arm, ctx)`` (events whose
        context is None only count globally).
        """
        if len(arms) != len(types):
            raise ValueError(f"{len(arms)} arms but {len(types)} types")
        if not len(arms):
            return self
        decay = None
        h = self.params.half_life_ms
        if h is not None:  # discounted
            if ts is None or len(ts) != len(arms):
                raise ValueError("discounted counts need one event time (ts, ms) per event")
            t = np.asarray(ts, dtype=np.float64).reshape(-1)
            if not np.isfinite(t).all():
                raise ValueError("event times must be finite")
            self._align(float(t.max()))
            assert self.anchor is not None  # _align just set it (discounted, anchor given)
            decay = np.exp2((t - self.anchor) / h)
        if self.params.context and contexts is not None:
            if len(contexts) != len(arms):
                raise ValueError(f"{len(arms)} arms but {len(contexts)} contexts")
            keep = [i for i, c in enumerate(contexts) if c is not None]
            if keep:
                if self.contextual is None:
                    self.contextual = ArmStats(replace(self.params, context=""))
                self.contextual.update([context_arm(arms[i], contexts[i]) for i in keep],
                                       [types[i] for i in keep],
                                       None if ts is None else [ts[i] for i in keep])
        # Map the few distinct type names once, then index: one C-level lookup per event
        # (issue 14: a third of the np.unique over a string array it replaces)
        utypes = list(set(types))
        code = {t: i for i, t in enumerate(utypes)}
        tinv = np.fromiter(map(code.__getitem__, types), dtype=np.intp, count=len(types))
        imp_of = np.array([t in self.params.impression_types for t in utypes], dtype=np.float64)
        rw = self.params.reward_weights
        rew_of = np.array([rw.get(t, 0.0) for t in utypes], dtype=np.float64)
        imp, rew = imp_of[tinv], rew_of[tinv]
        if decay is not None:
            imp, rew = imp * decay, rew * decay
        rows = self._rows(arms, self.params.max_arms)
        kept = rows >= 0
        if not kept.all():
            self.dropped += int(kept.size - np.count_nonzero(kept))
            rows, imp, rew = rows[kept], imp[kept], rew[kept]
        self._scatter(rows, imp, rew)
        return self

    def dropped_total(self) -> int:
        """Events not counted for want of room, here and in the per-position table."""
        return self.dropped + (self.contextual.dropped if self.contextual is not None else 0)

    def add(self, arms: Sequence[str], impressions: np.ndarray, rewards: np.ndarray,
            anchor: float | None = None) -> ArmStats:
        """Add raw counts per arm (arms may repeat); with discounting, counts are as of
        ``anchor`` (event time, ms) and are brought to this table's anchor."""
        imp = np.asarray(impressions, dtype=np.float64).reshape(-1)
        rew = np.asarray(rewards, dtype=np.float64).reshape(-1)
        if imp.shape[0] != len(arms) or rew.shape[0] != len(arms):
            raise ValueError(
                f"{len(arms)} arms but {imp.shape[0]} impressions, {rew.shape[0]} rewards"
            )
        if not (np.isfinite(imp).all() and np.isfinite(rew).all()):
            raise ValueError("impressions and rewards must be finite")
        if len(arms):
            if self.discounted and anchor is not None:
                self._align(anchor)
                f = self._decay_to(anchor)
                imp, rew = imp * f, rew * f
            self._scatter(self._rows(arms), imp, rew)
        return self

    def _add_table(self, other: ArmStats, arms: Sequence[str] | None = None) -> None:
        n = len(other)
        if arms is None:
            self.add(other._names, other._imp[:n], other._rew[:n], anchor=other.anchor)
        else:
            rows = [other._index[a] for a in arms if a in other._index]
            self.add([other._names[r] for r in rows], other._imp[rows], other._rew[rows],
                     anchor=other.anchor)
            self._align(other.anchor)  # an empty subset still moves the time forward
        if other.contextual is not None and arms is None:
            if self.contextual is None:
                self.contextual = ArmStats(other.contextual.params)
            self.contextual._add_table(other.contextual)

    def merge(self, other: ArmStats) -> ArmStats:
        """A NEW ArmStats equal to self + other (partials are mergeable)."""
        if other.params != self.params:
            raise ValueError("cannot merge ArmStats with different BanditParams")
        out = ArmStats(self.params, capacity=len(self) + len(other))
        out._add_table(self)
        out._add_table(other)
        return out

    @classmethod
    def merged(cls, parts: Iterable[ArmStats], params: BanditParams,
               arms: Sequence[str] | None = None) -> ArmStats:
        """Sum of any number of partials (empty -> empty table); ``arms``: only these arms
        (and no contextual table), which is what a request needs."""
        out = cls(params)
        for p in parts:
            if p.params != params:
                raise ValueError("cannot merge ArmStats with different BanditParams")
            out._add_table(p, arms)
        return out

    def counts(self, arm: str, context: object = None, at: float | None = None
               ) -> tuple[float, float]:
        """(impressions, rewards); (0, 0) for an unknown arm.  ``context``: the counts of
        ``arm`` in that context (needs ``params.context``); ``at``: discounted counts as of
        event time ``at`` (ms, default the anchor; earlier times are not extrapolated)."""
        if context is not None:
            if self.contextual is None:
                return 0.0, 0.0
            return self.contextual.counts(context_arm(arm, context), at=at)
        r = self._index.get(arm)
        if r is None:
            return 0.0, 0.0
        imp, rew = float(self._imp[r]), float(self._rew[r])
        h = self.params.half_life_ms  # None: not discounted
        if at is not None and h is not None and self.anchor is not None and at > self.anchor:
            f = 2.0 ** ((self.anchor - at) / h)
            imp, rew = imp * f, rew * f
        return imp, rew

    def posterior(self, arm: str, context: object = None) -> tuple[float, float]:
        """Beta(alpha, beta) = (prior_alpha + rewards, prior_beta + max(impressions - rewards, 0))."""
        imp, rew = self.counts(arm, context)
        return self.params.prior_alpha + rew, self.params.prior_beta + max(imp - rew, 0.0)

    def posteriors(self, arms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised :meth:`posterior` for many arms (unknown arms get the prior)."""
        index = self._index
        rows = np.fromiter((index.get(a, -1) for a in arms), dtype=np.int64, count=len(arms))
        known = rows >= 0
        imp = np.where(known, self._imp[np.where(known, rows, 0)], 0.0)
        rew = np.where(known, self._rew[np.where(known, rows, 0)], 0.0)
        return (
            self.params.prior_alpha + rew,
            self.params.prior_beta + np.maximum(imp - rew, 0.0),
        )

    def arms(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, arm: object) -> bool:
        return arm in self._index

    def totals(self) -> tuple[float, float]:
        """(total impressions, total rewards) over all arms."""
        n = len(self)
        return float(self._imp[:n].sum()), float(self._rew[:n].sum())

    def as_dict(self) -> dict[str, tuple[float, float]]:
        """{arm: (impressions, rewards)}; handy for comparisons and debugging."""
        n = len(self)
        return dict(zip(self._names, zip(self._imp[:n].tolist(), self._rew[:n].tolist())))

    def state(self) -> dict[str, Any]:
        n = len(self)
        out: dict[str, Any] = {
            "arms": list(self._names),
            "impressions": self._imp[:n].copy(),
            "rewards": self._rew[:n].copy(),
        }
        # optional keys only when used, so plain snapshots keep their old shape
        if self.anchor is not None:
            out["anchor"] = self.anchor
        if self.contextual is not None:
            out["contextual"] = self.contextual.state()
        if self.dropped:
            out["dropped"] = self.dropped
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Any], params: BanditParams) -> ArmStats:
        arms = [sys.intern(str(a)) for a in state["arms"]]  # shared with the decoder's ids
        if len(set(arms)) != len(arms):
            raise ValueError("state has duplicate arms")
        out = cls(params, capacity=max(len(arms), 1))
        anchor = state.get("anchor")
        out.add(arms, state["impressions"], state["rewards"],
                anchor=None if anchor is None else float(anchor))
        if out.discounted and anchor is not None:
            out.anchor = float(anchor)
        out.dropped = int(state.get("dropped", 0))
        ctx = state.get("contextual")
        if ctx is not None:
            out.contextual = cls.from_state(ctx, replace(params, context=""))
        return out


class MergedArms:
    """The sum of several partials, kept between calls: what ``/metrics`` reads.

    :meth:`ArmStats.merged` walks every arm of every partial in Python (0.2 s at 200,000
    arms, on the event loop, at every scrape).  This view indexes each partial's arm names
    once, as they are appended, and maps each partial's rows onto its own; a call then costs
    the arms new since the last call plus numpy work over the arrays.  A partial that is gone
    (a revoked partition) is subtracted from the reference counts; one that is new or was
    replaced by another object (a restored snapshot) is indexed afresh.  Relies on tables only
    appending arms (:class:`ArmStats` never removes or reorders one); a table that shrank is
    re-indexed.  Names no partial holds any more are forgotten once they outnumber the live
    ones (the index is rebuilt).
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._index: dict[str, int] = {}
        self._names: list[str] = []
        #: id(table) -> (the table, its rows' positions in this view)
        self._tables: dict[int, tuple[ArmStats, np.ndarray]] = {}
        self._refs = np.zeros(0, dtype=np.int64)  # how many partials hold each name

    def _release(self, key: int) -> None:
        _, rowmap = self._tables.pop(key)
        self._refs[rowmap] -= 1

    def _extend(self, names: Sequence[str]) -> np.ndarray:
        index = self._index
        rows = np.empty(len(names), dtype=np.int64)
        for j, a in enumerate(names):
            r = index.get(a)
            if r is None:
                r = index[a] = row_ints(len(self._names) + 1)[len(self._names)]
                self._names.append(a)
            rows[j] = r
        if len(self._names) > len(self._refs):
            grown = np.zeros(max(len(self._names), 2 * len(self._refs)), dtype=np.int64)
            grown[: len(self._refs)] = self._refs
            self._refs = grown
        self._refs[rows] += 1  # a table's names are distinct
        return rows

    def update(self, parts: Sequence[ArmStats]
               ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """``(names, alive, impressions, rewards)`` of the sum of ``parts``: arrays over
        ``names`` (``alive``: held by at least one partial); discounted partials are brought
        to the latest anchor, as :meth:`ArmStats.merged` does."""
        n_names = len(self._names)
        dead = n_names - int(np.count_nonzero(self._refs[:n_names]))
        if dead > max(1024, n_names - dead):
            self._reset()
        seen: set[int] = set()
        for t in parts:
            key = id(t)
            seen.add(key)
            entry = self._tables.get(key)
            if entry is not None and (entry[0] is not t or len(entry[1]) > len(t)):
                self._release(key)
                entry = None
            rowmap = entry[1] if entry is not None else np.zeros(0, dtype=np.int64)
            if len(t) > len(rowmap):
                rowmap = np.concatenate([rowmap, self._extend(t._names[len(rowmap):len(t)])])
            self._tables[key] = (t, rowmap)
        for key in [k for k in self._tables if k not in seen]:
            self._release(key)
        g = len(self._names)
        imps = np.zeros(g, dtype=np.float64)
        rews = np.zeros(g, dtype=np.float64)
        anchors = [t.anchor for t in parts if t.discounted and t.anchor is not None]
        latest = max(anchors) if anchors else None
        for t in parts:
            rowmap = self._tables[id(t)][1]
            n = len(rowmap)
            f = 1.0
            h = t.params.half_life_ms
            if h is not None and t.anchor is not None and latest is not None:
                f = 2.0 ** ((t.anchor - latest) / h)
            imps[rowmap] += t._imp[:n] * f  # rows of one table are distinct: no lost adds
            rews[rowmap] += t._rew[:n] * f
        return self._names, self._refs[:g] > 0, imps, rews


def thompson_scores(
    stats_or_posteriors: ArmStats | Mapping[str, tuple[float, float]],
    arms: Sequence[str],
    rng: np.random.Generator,
    prior: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """One Beta(alpha, beta) draw per arm, in order.  Accepts an ArmStats or a mapping
    arm -> (alpha, beta); unknown arms use the prior (ArmStats' own prior, else ``prior``).
    """
    if isinstance(stats_or_posteriors, ArmStats):
        a, b = stats_or_posteriors.posteriors(arms)
    else:
        post = stats_or_posteriors
        pairs = [post.get(x, prior) for x in arms]
        a = np.fromiter((p[0] for p in pairs), dtype=np.float64, count=len(arms))
        b = np.fromiter((p[1] for p in pairs), dtype=np.float64, count=len(arms))
    if len(arms) == 0:
        return np.zeros(0, dtype=np.float64)
    return rng.beta(a, b)


def rerank(
    arms: Sequence[str],
    similarity: np.ndarray,
    stats: ArmStats,
    rng: np.random.Generator,
    explore_weight: float = 0.2,
) -> list[int]:
    """Indices of ``arms`` best first, by the blend

        score_i = (1 - explore_weight) * similarity_i + explore_weight * theta_i,
        theta_i ~ Beta(posterior of arm i)   (one Thompson draw, in [0, 1])

    ``explore_weight = 0`` is pure similarity order, ``1`` pure Thompson sampling.  Similarity
    is taken as given (cosine in [-1, 1] for normalised vectors); ties keep input order.
    """
    if not (0.0 <= explore_weight <= 1.0):
        raise ValueError(f"explore_weight must be in [0, 1], got {explore_weight!r}")
    sim = np.asarray(similarity, dtype=np.float64).reshape(-1)
    if sim.shape[0] != len(arms):
        raise ValueError(f"{len(arms)} arms but {sim.shape[0]} similarities")
    draws = thompson_scores(stats, arms, rng)
    score = (1.0 - explore_weight) * sim + explore_weight * draws
    return cast(list[int], np.argsort(-score, kind="stable").tolist())


def seeded_rng(seed: int, *keys: str) -> np.random.Generator:
    """Generator seeded from (seed, keys) with blake2b: identical across processes and runs
    (Python's hash() is salted per process).  Keys are length-prefixed so ("ab",) != ("a", "b").
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(int(seed).to_bytes(16, "little", signed=True))
    for k in keys:
        kb = str(k).encode("utf-8")
        h.update(len(kb).to_bytes(8, "little"))
        h.update(kb)
    return np.random.Generator(np.random.PCG64(int.from_bytes(h.digest(), "little")))
