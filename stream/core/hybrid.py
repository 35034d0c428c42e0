"""Hybrid candidate generation: the union of sources, each candidate with a fixed feature row
(pure: stdlib + numpy).

Sources (``SOURCES``; each candidate carries a bit per source that produced it):

- ``content``: the profile ANN hits the caller passes (item, similarity);
- ``covis``: co-visitation neighbours of the user's recent items, summed with each seed item
  weighted by its recency ``2**(-(now - t)/recent_half_life_ms)`` times ``sqrt(event weight)``;
- ``trending``: the view's top items by short-half-life popularity (a user with no history gets
  these only);
- ``buy_again``: the user's own converted items, when ``exclude_purchased`` is off;
- ``sequence``: the top items of a next-item sequence model (SASRec, ``encoder.sequence``)
  over the user's recent events, when the caller passes them (a model directory is set).

``FEATURES`` names the columns of :attr:`Candidates.features` (float64), the ranker's input:

=================  =========================================================================
content_sim        profile . item similarity (``similarity`` callback for non-ANN hits, else 0)
covis_score        log1p(summed co-visitation score)
covis_recency      recency weight of the newest recent item that links to the candidate (0: none)
pop_short          log1p(short-half-life popularity as events per day)
pop_long           log1p(long-half-life popularity as events per day)
trend              pop_short - pop_long (0: steady rate, > 0: rising)
own_recency        recency weight of the user's own newest event on the item (0: none)
category_match     share of the user's category weight that is the candidate's category
bandit_mean        bandit posterior mean (0 when no bandit is given)
since_last         log1p(hours from the user's newest recent event to ``now``) (0: no history);
                   the same for every candidate of a call: lets a ranker tell a returning
                   user (popularity matters) from one mid-session (co-visitation matters)
history_len        log1p(number of the user's recent events) (the same for every candidate)
seq_lift           log1p(n_items * P(item | recent events)) of the sequence model: 0 = no
                   model, log 2 = as likely as a uniform draw, larger = more likely
fresh              1.0 when nobody has interacted with the item yet (no popularity count in
                   the view): only the content source can find it
src_<source>       1.0 when the source produced the candidate
=================  =========================================================================

Everything is order-independent for events with equal ts (seeds are weighted by time, never by
position) and deterministic (ties broken by item id), so the worker and the evaluator, which
both call :func:`generate` then ``Ranker.predict`` then :func:`rank`, serve the same lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from stream.core.signals import SignalView

__all__ = [
    "FEATURES",
    "SOURCES",
    "Candidates",
    "HybridParams",
    "covis_seeds",
    "generate",
    "rank",
    "serve_scores",
]

SOURCES: tuple[str, ...] = ("content", "covis", "trending", "buy_again", "sequence")
FEATURES: tuple[str, ...] = (
    "content_sim", "covis_score", "covis_recency", "pop_short", "pop_long", "trend",
    "own_recency", "category_match", "bandit_mean", "since_last", "history_len", "seq_lift",
    "fresh", *(f"src_{s}" for s in SOURCES),
)
_COL = {name: i for i, name in enumerate(FEATURES)}
_DAY_MS = 86_400_000.0


@dataclass(frozen=True)
class HybridParams:
    """Pool sizes per source, seeds and exclusion."""

    content_k: int = 100
    covis_k: int = 100
    trending_k: int = 50
    buy_again_k: int = 50
    sequence_k: int = 100
    #: neighbours read per seed item (at most the view's covis_top_m are published)
    covis_per_item: int = 50
    #: newest recent items used as co-visitation seeds
    recent_k: int = 20
    recent_half_life_ms: float = _DAY_MS
    #: seed weight factor per newer step: a seed whose ts has g distinct newer ts among the
    #: user's recent events is weighted ``seed_step_decay**g`` (ties share a step; 1 = off)
    seed_step_decay: float = 1.0
    #: freshness: the j-th best fresh candidate (``fresh`` feature, j = 0, 1, ...) ranks no
    #: lower than position ``(j + 1) * fresh_every`` (0: off; see ``serve_scores``)
    fresh_every: int = 20
    #: purchased items are excluded (a sofa); off: they come back through ``buy_again``
    exclude_purchased: bool = True
    #: enabled sources (ablation: drop one)
    sources: tuple[str, ...] = SOURCES

    def __post_init__(self) -> None:
        for name in ("content_k", "covis_k", "trending_k", "buy_again_k", "sequence_k",
                     "covis_per_item", "recent_k", "fresh_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        h = self.recent_half_life_ms
        if not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0:
            raise ValueError(f"recent_half_life_ms must be a finite number > 0, got {h!r}")
        bad = set(self.sources) - set(SOURCES)
        if bad or isinstance(self.sources, str):
            raise ValueError(f"sources must be a subset of {SOURCES}, got {self.sources!r}")
        object.__setattr__(self, "sources", tuple(s for s in SOURCES if s in self.sources))


@dataclass
class Candidates:
    """Candidate items with their feature rows (``FEATURES`` order) and source bits."""

    items: list[str]
    features: np.ndarray  # float64 [n, len(FEATURES)]
    sources: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))

    def __len__(self) -> int:
        return len(self.items)

    def columns(self, names: Sequence[str]) -> np.ndarray:
        """The feature columns ``names`` (a ranker's features), float64 [n, len(names)]."""
        try:
            idx = [_COL[n] for n in names]
        except KeyError as exc:
            raise ValueError(f"unknown feature {exc.args[0]!r}; known: {FEATURES}") from None
        return self.features[:, idx]

    def from_source(self, source: str) -> np.ndarray:
        """bool [n]: which candidates ``source`` produced."""
        out: np.ndarray = (self.sources & (1 << SOURCES.index(source))) != 0
        return out

    def by_source(self) -> dict[str, int]:
        """Number of candidates each source produced (a candidate may count for several)."""
        return {s: int(self.from_source(s).sum()) for s in SOURCES}


def _recency(now: float, ts: float, half_life: float) -> float:
    return float(2.0 ** (-max(0.0, now - ts) / half_life))


def covis_seeds(recent: Sequence[tuple[int, str, float]], now: int, p: HybridParams
                ) -> tuple[dict[str, float], dict[str, float]]:
    """(own, seeds) of :func:`generate`: the user's own recency per item over ``recent``, and
    the co-visitation seed weight per item, recency x sqrt(weight) x step decay summed over the
    newest ``recent_k`` events (``stream.core.explain`` reads the same seeds)."""
    hr = p.recent_half_life_ms
    own: dict[str, float] = {}
    seeds: dict[str, float] = {}
    newest = sorted(recent)[-p.recent_k:] if p.recent_k else []
    for t, it, _w in recent:
        r = _recency(now, t, hr)
        if r > own.get(it, 0.0):
            own[it] = r
    step_w: dict[int, float] = {}
    if newest:
        distinct = sorted({t for t, _, _ in newest}, reverse=True)
        step_w = {t: p.seed_step_decay ** g for g, t in enumerate(distinct)}
    for t, it, w in newest:
        seeds[it] = seeds.get(it, 0.0) + _recency(now, t, hr) * math.sqrt(w) * step_w[t]
    return own, seeds


def generate(
    recent: Sequence[tuple[int, str, float]],
    content: Sequence[tuple[str, float]],
    view: SignalView,
    now: int,
    params: HybridParams | None = None,
    exclude: Collection[str] = frozenset(),
    user_categories: Mapping[str, float] | None = None,
    item_category: Callable[[str], str | None] | Mapping[str, str] | None = None,
    bandit: Callable[[list[str]], np.ndarray] | None = None,
    bought: Collection[str] = (),
    similarity: Callable[[list[str]], np.ndarray] | None = None,
    sequence: Sequence[tuple[str, float]] = (),
    sequence_lift: Callable[[list[str]], np.ndarray] | None = None,
) -> Candidates:
    """Union of the enabled sources minus ``exclude`` (and ``bought`` when exclude_purchased).

    ``recent``: the user's events (ts, item, weight) (``RecentItems.get``); ``content``: profile
    ANN hits (item, similarity); ``bandit(items)``: posterior means; ``similarity(items)``:
    profile . item for candidates that are not ANN hits; ``sequence``: the sequence model's
    best items (item, seq_lift), ``sequence_lift(items)``: seq_lift for the other candidates.
    """
    p = params or HybridParams()
    excl = set(exclude)
    if p.exclude_purchased:
        excl.update(bought)
    order: dict[str, int] = {}
    bits: list[int] = []

    def add(item: str, bit: int) -> None:
        k = order.get(item)
        if k is None:
            order[item] = len(bits)
            bits.append(bit)
        else:
            bits[k] |= bit

    sims: dict[str, float] = {}
    if "content" in p.sources and p.content_k:
        hits = sorted(((it, float(s)) for it, s in content if it not in excl),
                      key=lambda kv: (-kv[1], kv[0]))[: p.content_k]
        for it, s in hits:
            sims[it] = s
            add(it, 1)

    own, seeds = covis_seeds(recent, now, p)
    cov: dict[str, float] = {}
    cov_rec: dict[str, float] = {}
    if seeds and p.covis_per_item:  # scores feed the feature even when the source is off
        for a in sorted(seeds):
            # own.get: a seed whose recency underflowed to 0.0 was never stored in own
            sw, ra = seeds[a], own.get(a, 0.0)
            for nb, v in view.neighbours(a, now, p.covis_per_item):
                if nb in excl:
                    continue
                cov[nb] = cov.get(nb, 0.0) + sw * v
                if ra > cov_rec.get(nb, 0.0):
                    cov_rec[nb] = ra
        if "covis" in p.sources and p.covis_k:
            top = sorted(cov.items(), key=lambda kv: (-kv[1], kv[0]))[: p.covis_k]
            for it, _ in top:
                add(it, 2)

    if "trending" in p.sources and p.trending_k:
        got = 0
        for it, _ in view.trending(now, p.trending_k + len(excl)):
            if it not in excl:
                add(it, 4)
                got += 1
                if got == p.trending_k:
                    break

    if "buy_again" in p.sources and p.buy_again_k and not p.exclude_purchased:
        again = sorted((it for it in bought if it not in excl),
                       key=lambda it: (-own.get(it, 0.0), it))[: p.buy_again_k]
        for it in again:
            add(it, 8)

    lifts: dict[str, float] = {}
    if "sequence" in p.sources and p.sequence_k and sequence:
        best = sorted(((it, float(v)) for it, v in sequence if it not in excl),
                      key=lambda kv: (-kv[1], kv[0]))[: p.sequence_k]
        for it, v in best:
            lifts[it] = v
            add(it, 16)

    items = list(order)
    n = len(items)
    x = np.zeros((n, len(FEATURES)), dtype=np.float64)
    src = np.asarray(bits, dtype=np.uint8)
    if n == 0:
        return Candidates(items, x, src)
    _fill(x[:, _COL["content_sim"]], items, sims, similarity)
    _fill(x[:, _COL["seq_lift"]], items, lifts, sequence_lift)
    x[:, _COL["covis_score"]] = np.log1p([cov.get(it, 0.0) for it in items])
    x[:, _COL["covis_recency"]] = [cov_rec.get(it, 0.0) for it in items]
    short, long = view.popularity(items, now)
    ps = view.params
    rate_s = np.log1p(short * (math.log(2) * _DAY_MS / ps.pop_short_half_life_ms))
    rate_l = np.log1p(long * (math.log(2) * _DAY_MS / ps.pop_long_half_life_ms))
    x[:, _COL["pop_short"]] = rate_s
    x[:, _COL["pop_long"]] = rate_l
    x[:, _COL["trend"]] = rate_s - rate_l
    x[:, _COL["fresh"]] = view.counts(items) == 0
    x[:, _COL["own_recency"]] = [own.get(it, 0.0) for it in items]
    if user_categories and item_category is not None:
        total = sum(v for v in user_categories.values() if v > 0)
        if total > 0:
            get_cat = item_category.get if isinstance(item_category, Mapping) else item_category
            cats = [get_cat(it) for it in items]
            x[:, _COL["category_match"]] = [
                max(0.0, user_categories.get(c, 0.0)) / total if c is not None else 0.0
                for c in cats]
    if recent:
        gap_h = max(0.0, now - max(t for t, _, _ in recent)) / 3_600_000.0
        x[:, _COL["since_last"]] = math.log1p(gap_h)
        x[:, _COL["history_len"]] = math.log1p(len(recent))
    if bandit is not None:
        x[:, _COL["bandit_mean"]] = np.asarray(bandit(items), dtype=np.float64).reshape(-1)
    for b, name in enumerate(SOURCES):
        x[:, _COL[f"src_{name}"]] = (src >> b) & 1
    return Candidates(items, x, src)


def _fill(col: np.ndarray, items: list[str], known: Mapping[str, float],
          rest: Callable[[list[str]], np.ndarray] | None) -> None:
    """A feature column: ``known`` values (a source's own scores), ``rest(items)`` for the
    other candidates when given, else 0."""
    col[:] = [known.get(it, 0.0) for it in items]
    if rest is not None:
        missing = [k for k, it in enumerate(items) if it not in known]
        if missing:
            col[missing] = np.asarray(rest([items[k] for k in missing]),
                                      dtype=np.float64).reshape(-1)


def rank(cands: Candidates, scores: np.ndarray, k: int) -> list[tuple[str, float]]:
    """Top ``k`` (item, score): score descending, ties by item id (deterministic)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] != len(cands):
        raise ValueError(f"{len(cands)} candidates but {s.shape[0]} scores")
    pairs = sorted(zip(cands.items, s.tolist()), key=lambda kv: (-kv[1], kv[0]))
    return pairs[:k]


def serve_scores(cands: Candidates, scores: np.ndarray, params: HybridParams) -> np.ndarray:
    """The ranker's ``scores`` with the freshness rule (``params.fresh_every``) applied: the
    order :func:`rank` serves and the evaluator scores.

    A fresh item (nobody interacted with it yet) rarely out-scores the proven ones, so a ranker
    alone never shows it and nobody ever will interact with it.  With ``fresh_every = E`` the
    fresh candidates, best score first (equal scores: candidate order, i.e. content
    similarity), are lifted so that the j-th ranks no lower than position ``(j + 1) * E``
    (1-based): its score becomes the next float above that of the non-fresh candidate it must
    precede (it ranks before that candidate's whole tie group), never lower than its own.  A
    list of K items then holds at least ``min(K // E, fresh candidates)`` fresh ones."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    every = params.fresh_every
    if every <= 0 or len(s) == 0:
        return s
    fresh = cands.features[:, _COL["fresh"]] > 0
    if not fresh.any():
        return s
    out = s.copy()
    others = np.sort(s[~fresh])[::-1]
    fidx = np.flatnonzero(fresh)
    fidx = fidx[np.argsort(-s[fidx], kind="stable")]
    prev = math.inf
    for j, i in enumerate(fidx.tolist()):
        slot = (j + 1) * every - 1 - j  # non-fresh candidates allowed above it
        if slot < len(others):
            out[i] = max(out[i], float(np.nextafter(others[slot], math.inf)))
        out[i] = min(out[i], prev)  # never above the better fresh candidate before it
        prev = out[i]
    return out
