"""Pure pieces of ``profiles bench scale``: the memory slope, recall, percentiles, the pinned
generator and the profile oracle (against a per-event loop written here)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.bench.scale import GOALS, goals_table
from stream.bench.scale_data import (
    T0,
    TYPE_MIX,
    EventBlock,
    ScaleData,
    oracle_sums,
    percentile,
    recall_at_k,
    slope,
    top_k_exact,
)


def test_slope_of_two_sizes_is_the_difference_quotient() -> None:
    assert slope([10_000, 100_000], [1_000_000, 181_000_000]) == pytest.approx(2000.0)


def test_slope_fits_a_line_through_noisy_points() -> None:
    x = np.array([1e4, 3e4, 1e5, 3e5])
    y = 5e7 + 1500.0 * x + np.array([3e5, -2e5, 1e5, -2e5])
    assert slope(x.tolist(), y.tolist()) == pytest.approx(1500.0, rel=0.01)


@pytest.mark.parametrize("xs,ys", [([1.0], [2.0]), ([5.0, 5.0], [1.0, 2.0]), ([1.0, 2.0], [1.0])])
def test_slope_needs_two_distinct_sizes(xs: list[float], ys: list[float]) -> None:
    with pytest.raises(ValueError):
        slope(xs, ys)


def test_recall_is_the_mean_share_of_each_exact_top_k_found() -> None:
    got = [["a", "b", "x"], ["c"], []]
    want = [{"a", "b", "c"}, {"c", "d"}, set()]
    assert recall_at_k(got, want) == pytest.approx((2 / 3 + 1 / 2 + 1.0) / 3)
    with pytest.raises(ValueError):
        recall_at_k([["a"]], [])


def test_percentile_is_the_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 99) == 99.0
    assert percentile(values, 50) == 50.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 99) is None


def test_top_k_exact_equals_a_full_sort_and_skips_the_excluded_row() -> None:
    rng = np.random.default_rng(3)
    m = rng.standard_normal((300, 8))
    q = m[[4, 9]]
    got = top_k_exact(m, q, 5, exclude=[4, 9])
    for row, (query, own) in enumerate(zip(q, [4, 9])):
        scores = m @ query
        scores[own] = -math.inf
        assert got[row] == set(np.argsort(-scores)[:5].tolist())
        assert own not in got[row]


def test_the_generator_is_pinned_and_ranges_compose() -> None:
    a = ScaleData(5, 16, 400, 2500, 3)
    b = ScaleData(5, 16, 400, 2500, 3)
    assert np.array_equal(a.item_vectors(), b.item_vectors())
    np.testing.assert_allclose(np.linalg.norm(a.item_vectors(), axis=1), 1.0, rtol=1e-5)
    whole = list(a.bulk(0, 2500))
    parts = list(b.bulk(0, 1200)) + list(b.bulk(1200, 2500))
    cat = [np.concatenate([getattr(x, f) for x in blocks])
           for blocks in (whole, parts) for f in ("user", "item", "type", "ts")]
    for left, right in zip(cat[:4], cat[4:]):
        assert np.array_equal(left, right)
    users, items, types, ts = cat[:4]
    assert np.array_equal(np.bincount(users), np.full(2500, 3))  # events_per_user each
    assert items.min() >= 0 and items.max() < 400 and types.max() < len(TYPE_MIX)
    assert ts.max() < T0
    tail = a.tail(1, 50)
    assert (tail.ts >= T0).all() and tail.user.max() < 2500
    q = a.queries(20)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    stored = {v.tobytes() for v in a.item_vectors()}
    assert not any(v.tobytes() in stored for v in q)  # mixtures, never a stored vector


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        ScaleData(0, 16, 0, 10, 1)


def test_oracle_sums_equal_a_per_event_loop() -> None:
    d = ScaleData(2, 8, 50, 30, 4)
    vecs = d.item_vectors()
    blocks = [*d.bulk(0, 30), d.tail(3, 40)]
    weights, half = [1.0, 2.0, 4.0, 8.0], 7 * 86_400_000.0
    users = np.array([3, 7, 29])
    got = oracle_sums(blocks, vecs, users, weights, half)
    want = np.zeros((3, 8))
    for b in blocks:
        for u, it, ty, ts in zip(b.user, b.item, b.type, b.ts):
            if u in users:
                row = int(np.flatnonzero(users == u)[0])
                want[row] += weights[ty] * 2.0 ** ((ts - T0) / half) * vecs[it]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert len(EventBlock(np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2))) == 2


def test_goals_table_puts_each_figure_next_to_its_goal() -> None:
    r = {k: None for k in GOALS} | {"item_index_kind": "IVF4000_HNSW32,Flat",
                                    "user_index_kind": "Flat", "item_index_probes": 16,
                                    "bytes_per_user": 2500.0, "item_recall_at_20": 0.99}
    text = goals_table(r)
    lines = {line.split()[0]: line.split() for line in text.splitlines()}
    assert lines["bytes_per_user"][1:] == ["2,500", "<=", "2048", "MISSED"]
    assert lines["item_recall_at_20"][1:] == ["0.99", ">=", "0.98", "ok"]
    assert lines["recovery_s"][1:] == ["-", "<=", "60", "-"]
    assert lines["item_index_probes"][1:] == ["16"] and lines["user_index_probes"][1:] == ["-"]
