"""Hybrid candidate generation (stream.core.hybrid): sources, exclusion, features, ties."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from stream.core.hybrid import FEATURES, SOURCES, Candidates, HybridParams, generate, rank
from stream.core.ranker import default_ranker
from stream.core.signals import SignalParams, Signals, SignalView

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000
HOUR = 3_600_000


def col(c: Candidates, name: str) -> dict[str, float]:
    k = FEATURES.index(name)
    return {it: float(c.features[i, k]) for i, it in enumerate(c.items)}


def view_with(events: list[tuple[str, str, int, str]], params: SignalParams | None = None,
              ) -> SignalView:
    s = Signals(params)
    s.apply([e[0] for e in events], [e[1] for e in events], [e[2] for e in events],
            [e[3] for e in events])
    v = SignalView(s.params)
    s.publish(v, 0)
    return v


EVENTS = [
    # u1..u3 view a then b, or a then c: a's neighbours are b (3x) and c (1x)
    ("u1", "a", T0, "view"), ("u1", "b", T0 + 1, "view"),
    ("u2", "a", T0, "view"), ("u2", "b", T0 + 1, "click"),
    ("u3", "a", T0, "view"), ("u3", "b", T0 + 2, "view"),
    ("u4", "a", T0, "view"), ("u4", "c", T0 + 2, "view"),
    # popular but unrelated items
    *((f"p{k}", "t1", T0 + 10 + k, "view") for k in range(8)),
    *((f"q{k}", "t2", T0 + 10 + k, "view") for k in range(5)),
]


def test_no_history_gets_trending_only() -> None:
    v = view_with(EVENTS)
    c = generate([], [], v, T0 + HOUR, HybridParams(trending_k=2))
    assert c.items == ["t1", "t2"]  # the two most popular of the last day
    assert c.by_source() == {"content": 0, "covis": 0, "trending": 2, "buy_again": 0, "sequence": 0}
    assert c.features.shape == (2, len(FEATURES)) and c.features.dtype == np.float64
    assert col(c, "src_trending") == {"t1": 1.0, "t2": 1.0}
    # Excluded items are skipped and the pool is refilled from further down.
    c = generate([], [], v, T0 + HOUR, HybridParams(trending_k=2), exclude={"t1"})
    assert c.items[0] == "t2" and "t1" not in c.items and len(c) == 2


def test_covis_source_sums_neighbours_of_recent_items_by_recency() -> None:
    v = view_with(EVENTS)
    now = T0 + HOUR
    p = HybridParams(trending_k=0, recent_half_life_ms=HOUR)
    recent = [(T0, "a", 1.0)]
    c = generate(recent, [], v, now, p, exclude={"a"})
    assert set(c.items) == {"b", "c"}
    assert all(c.from_source("covis"))
    seed = 2.0 ** (-(now - T0) / HOUR) * 1.0  # recency x sqrt(weight 1)
    nb = dict(v.neighbours("a", now))
    cs = col(c, "covis_score")
    for it in ("b", "c"):
        assert cs[it] == pytest.approx(math.log1p(seed * nb[it]), rel=1e-12)
    assert cs["b"] > cs["c"]
    assert col(c, "covis_recency")["b"] == pytest.approx(0.5)
    # Without exclusion the user's own item can come back (all-items protocol) with its recency.
    c = generate(recent + [(T0 + HOUR, "b", 1.0)], [], v, now, p)
    assert "a" in c.items and col(c, "own_recency")["a"] == pytest.approx(0.5)
    assert col(c, "own_recency")["b"] == pytest.approx(1.0)


def test_equal_ts_order_of_recent_does_not_matter() -> None:
    v = view_with(EVENTS)
    recent = [(T0, "a", 1.0), (T0, "b", 2.0), (T0, "c", 1.0), (T0 - HOUR, "t1", 1.0)]
    p = HybridParams(recent_k=3)
    ref = generate(recent, [("x", 0.1)], v, T0 + HOUR, p)
    for seed in range(5):
        r = recent[:3]
        random.Random(seed).shuffle(r)
        got = generate([recent[3], *r], [("x", 0.1)], v, T0 + HOUR, p)
        assert got.items == ref.items
        assert got.features.tolist() == ref.features.tolist()


def test_purchases_excluded_or_bought_again() -> None:
    v = view_with(EVENTS)
    recent = [(T0, "a", 8.0)]
    c = generate(recent, [], v, T0 + HOUR, HybridParams(), bought={"a", "b"})
    assert "a" not in c.items and "b" not in c.items and c.by_source()["buy_again"] == 0
    c = generate(recent, [], v, T0 + HOUR, HybridParams(exclude_purchased=False),
                 bought={"a", "b"}, exclude={"b"})
    assert "b" not in c.items  # the exclusion set always wins
    assert c.from_source("buy_again").tolist() == [it == "a" for it in c.items]
    assert col(c, "src_buy_again")["a"] == 1.0


def test_features_content_category_bandit_and_flags() -> None:
    v = view_with(EVENTS)
    cats = {"a": "x", "b": "x", "c": "y", "t1": "y", "t2": "z", "n": "x"}
    c = generate(
        [(T0, "a", 1.0)], [("n", 0.9), ("b", 0.5), ("a", 0.99)], v, T0 + HOUR,
        HybridParams(content_k=2), exclude={"a"},
        user_categories={"x": 3.0, "y": 1.0}, item_category=cats,
        bandit=lambda items: np.array([0.25] * len(items)),
        similarity=lambda items: np.array([0.1] * len(items)))
    sims, cm = col(c, "content_sim"), col(c, "category_match")
    assert sims["n"] == 0.9 and sims["b"] == 0.5 and sims["t1"] == 0.1
    assert cm["n"] == 0.75 and cm["c"] == 0.25 and cm["t2"] == 0.0
    assert set(col(c, "bandit_mean").values()) == {0.25}
    for s in SOURCES:
        assert (c.columns([f"src_{s}"])[:, 0] == c.from_source(s)).all()
    assert c.from_source("content").tolist() == [it in ("n", "b") for it in c.items]
    assert c.from_source("covis")[c.items.index("b")]  # both content and covis
    # popularity columns: log1p(events per day) and the trend
    ps, pl, tr = col(c, "pop_short"), col(c, "pop_long"), col(c, "trend")
    assert ps["t1"] > ps["t2"] > 0 and tr["t1"] == pytest.approx(ps["t1"] - pl["t1"])
    with pytest.raises(ValueError):
        c.columns(["nope"])


def test_sources_can_be_switched_off() -> None:
    v = view_with(EVENTS)
    c = generate([(T0, "a", 1.0)], [("n", 0.9)], v, T0 + HOUR,
                 HybridParams(sources=("content", "trending")), exclude={"a"})
    assert c.by_source()["covis"] == 0 and "n" in c.items
    assert col(c, "covis_score")["t1"] == 0.0 and col(c, "covis_score").get("b", 0.0) > 0
    with pytest.raises(ValueError):
        HybridParams(sources=("nope",))
    with pytest.raises(ValueError):
        HybridParams(covis_k=-1)


def test_rank_breaks_ties_by_item_id_and_default_ranker_orders_evidence() -> None:
    c = Candidates(["b", "a", "c"], np.zeros((3, len(FEATURES))))
    assert rank(c, np.array([1.0, 1.0, 2.0]), 2) == [("c", 2.0), ("a", 1.0)]
    with pytest.raises(ValueError):
        rank(c, np.zeros(2), 1)
    v = view_with(EVENTS)
    cands = generate([(T0, "a", 1.0)], [], v, T0 + HOUR, HybridParams(), exclude={"a"})
    ranked = rank(cands, default_ranker().score(cands.features), 3)
    assert [it for it, _ in ranked][:2] == ["b", "c"]  # co-visited before merely popular


def test_seed_whose_recency_underflows_still_generates() -> None:
    # A seed months old with a 1 h recency half-life: 2**(-big) == 0.0.  generate() used to
    # raise KeyError (the seed never reached the own-recency dict); now it scores it 0.
    v = view_with(EVENTS)
    months = 200 * 24 * HOUR
    c = generate([(T0, "a", 1.0)], [], v, T0 + months,
                 HybridParams(recent_half_life_ms=float(HOUR), trending_k=0))
    assert set(c.items) == {"b", "c"}
    assert set(col(c, "covis_recency").values()) == {0.0}


def test_user_context_features_since_last_and_history_len() -> None:
    v = view_with(EVENTS)
    recent = [(T0, "a", 1.0), (T0 + HOUR, "c", 1.0)]
    c = generate(recent, [], v, T0 + 3 * HOUR, HybridParams(trending_k=2))
    assert set(col(c, "since_last").values()) == {math.log1p(2.0)}
    assert set(col(c, "history_len").values()) == {math.log1p(2.0)}
    # No history: both 0; a clock behind the newest event clips the gap to 0.
    c = generate([], [], v, T0 + HOUR, HybridParams(trending_k=2))
    assert set(col(c, "since_last").values()) == {0.0} == set(col(c, "history_len").values())
    c = generate(recent, [], v, T0, HybridParams(trending_k=2))
    assert set(col(c, "since_last").values()) == {0.0}


def _fresh_cands(scores_fresh: list[tuple[str, float, bool]]) -> tuple[Candidates, np.ndarray]:
    items = [it for it, _, _ in scores_fresh]
    x = np.zeros((len(items), len(FEATURES)))
    x[:, FEATURES.index("fresh")] = [1.0 if f else 0.0 for _, _, f in scores_fresh]
    return Candidates(items, x, np.zeros(len(items), np.uint8)), \
        np.array([s for _, s, _ in scores_fresh])


def test_fresh_items_get_every_eth_slot_and_never_lose_their_own_rank() -> None:
    from stream.core.hybrid import serve_scores

    warm = [(f"w{k:02d}", 1.0 - k / 100, False) for k in range(30)]
    fresh = [("f1", 0.001, True), ("f2", 0.002, True), ("f3", 0.5, True)]
    c, s = _fresh_cands(warm + fresh)
    off = serve_scores(c, s, HybridParams(fresh_every=0))
    assert off.tolist() == s.tolist()  # fresh_every 0: the ranker's order
    got = [it for it, _ in rank(c, serve_scores(c, s, HybridParams(fresh_every=10)), 33)]
    # f3 naturally at position 51 -> lifted to 10; then f2 (0.002 > 0.001) at 20, f1 at 30
    assert got.index("f3") == 9 and got.index("f2") == 19 and got.index("f1") == 29
    assert [it for it in got if it.startswith("w")] == [it for it, _, _ in warm]  # kept order
    # a fresh item already ranked high keeps its place (never demoted)
    c2, s2 = _fresh_cands([("f0", 2.0, True), *warm])
    assert rank(c2, serve_scores(c2, s2, HybridParams(fresh_every=10)), 1)[0][0] == "f0"
    # ties: the fresh item goes before the whole tie group it must precede
    tied = [(f"t{k}", 0.5, False) for k in range(12)]
    c3, s3 = _fresh_cands([*tied, ("f", 0.1, True)])
    assert rank(c3, serve_scores(c3, s3, HybridParams(fresh_every=10)), 13)[0][0] == "f"


def test_fresh_feature_marks_items_nobody_touched() -> None:
    v = view_with(EVENTS)
    c = generate([(T0, "a", 1.0)], [("new1", 0.9), ("b", 0.8)], v, T0 + HOUR,
                 HybridParams(trending_k=0))
    assert col(c, "fresh") == {"new1": 1.0, "b": 0.0, "c": 0.0}  # c: a covis neighbour of a
