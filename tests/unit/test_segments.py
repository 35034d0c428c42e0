"""Customer segments, the pure core (stream.core.segments): the mini-batch update against a hand
computation, the optimal matching against brute force and scipy, ids stable under any
permutation of the candidate centroids (hypothesis), assignment, merging and exact round trips."""

from __future__ import annotations

import itertools
import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from stream.core.segments import (
    Centroids,
    SegmentStats,
    assign,
    hungarian,
    match,
    merge_stats,
    next_version,
    ordered,
    seed_centroids,
)

pytestmark = pytest.mark.unit


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def test_the_update_equals_a_hand_computation() -> None:
    # version 1: c0 = (1, 0), c1 = (0, 1); segment 0 has absorbed 2 users before, segment 1 none
    prev = Centroids(1, np.array([[1, 0], [0, 1]], dtype=np.float32), np.array([2.0, 0.0]))
    s = 1 / math.sqrt(2)
    users = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [s, s]], dtype=np.float32)
    stats = SegmentStats.of(users, prev)
    # (0.6, 0.8) is nearer c1; (s, s) is a tie: the lower id, 0
    np.testing.assert_array_equal(stats.counts, [3, 1])
    new = next_version(prev, stats)
    assert new.version == 2
    np.testing.assert_array_equal(new.counts, [5.0, 1.0])
    # segment 0 by hand: mean m = ((1 + .8 + s) / 3, (0 + .6 + s) / 3), rate 3 / 5,
    # c = (1, 0) + 3/5 (m - (1, 0)), normalised
    m = ((1 + 0.8 + s) / 3, (0.6 + s) / 3)
    c0 = (1 + 0.6 * (m[0] - 1), 0.6 * m[1])
    n0 = math.hypot(*c0)
    # segment 1: its only member with rate 1/1: the member itself
    np.testing.assert_allclose(new.centroids[0], [c0[0] / n0, c0[1] / n0], atol=1e-7)
    np.testing.assert_allclose(new.centroids[1], [0.6, 0.8], atol=1e-7)
    # a segment without members keeps its centroid and count
    empty = SegmentStats(2, np.zeros(2), np.zeros((2, 2)))
    empty.sums[1] = users[2] * 2
    empty.counts[1] = 2
    after = next_version(new, empty)
    np.testing.assert_array_equal(after.centroids[0], new.centroids[0])
    assert after.counts.tolist() == [5.0, 3.0]
    with pytest.raises(ValueError, match="version"):
        next_version(prev, empty)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_hungarian_is_optimal_against_brute_force(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(20):
        cost = rng.normal(size=(n, n))
        col = hungarian(cost)
        assert sorted(col) == list(range(n))
        best = min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
        assert sum(cost[i, col[i]] for i in range(n)) == pytest.approx(best, abs=1e-12)


def test_hungarian_equals_scipy_on_larger_matrices() -> None:
    rng = np.random.default_rng(7)
    for n in (10, 32, 64):
        cost = rng.normal(size=(n, n))
        rows, cols = linear_sum_assignment(cost)
        col = hungarian(cost)
        assert sum(cost[i, col[i]] for i in range(n)) == pytest.approx(
            float(cost[rows, cols].sum()), abs=1e-9)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(k=st.integers(1, 12), dim=st.integers(2, 16), seed=st.integers(0, 2**31),
       noise=st.floats(0.0, 0.2))
def test_ids_are_stable_under_any_permutation_of_the_candidates(k: int, dim: int, seed: int,
                                                                noise: float) -> None:
    rng = np.random.default_rng(seed)
    prev_c = np.stack([_unit(rng.normal(size=dim).tolist()) for _ in range(k)])
    prev = Centroids(3, prev_c.astype(np.float32), rng.uniform(0, 10, size=k))
    moved = prev_c + noise * rng.normal(size=(k, dim))
    counts = rng.uniform(0, 10, size=k)
    base = ordered(prev, moved, counts)
    perm = rng.permutation(k)
    shuffled = ordered(prev, moved[perm], counts[perm])
    # the same version whatever order the candidates came in
    np.testing.assert_array_equal(shuffled.centroids, base.centroids)
    np.testing.assert_array_equal(shuffled.counts, base.counts)
    assert shuffled.digest() == base.digest()
    # and it is the optimal matching: no other permutation has a larger total cosine
    col = match(prev_c, moved)
    cos = prev_c @ (moved / np.linalg.norm(moved, axis=1, keepdims=True)).T
    total = sum(cos[i, col[i]] for i in range(k))
    rows, cols = linear_sum_assignment(-cos)
    assert total == pytest.approx(float(cos[rows, cols].sum()), abs=1e-9)
    if noise <= 0.01:  # small moves: every segment keeps its own id
        assert col == list(range(k))


def test_assignment_is_the_nearest_seeded_centroid_ties_to_the_lower_id() -> None:
    rng = np.random.default_rng(3)
    k, dim = 5, 8
    c = np.stack([_unit(rng.normal(size=dim).tolist()) for _ in range(k)]).astype(np.float32)
    c[2] = 0.0  # not seeded: never chosen
    model = Centroids(1, c, np.zeros(k))
    vecs = np.stack([_unit(rng.normal(size=dim).tolist()) for _ in range(200)]).astype(np.float32)
    vecs[7] = 0.0  # a zero profile: no segment
    got = assign(vecs, model)
    for i, v in enumerate(vecs):  # brute force, in plain Python
        if not v.any():
            assert got[i] == -1
            continue
        sims = [float(np.dot(v, c[j])) if j != 2 else -math.inf for j in range(k)]
        assert got[i] == sims.index(max(sims))
    assert 2 not in set(got.tolist())
    tie = Centroids(1, np.array([[1, 0], [1, 0]], dtype=np.float32), np.zeros(2))
    assert assign(np.array([[1, 0]], dtype=np.float32), tie).tolist() == [0]
    assert assign(vecs, Centroids.empty(k, dim)).tolist() == [-1] * len(vecs)
    with pytest.raises(ValueError, match=r"\[n, 8\]"):
        assign(np.zeros((2, 3)), model)


def test_merged_statistics_equal_the_statistics_of_all_users() -> None:
    rng = np.random.default_rng(11)
    k, dim = 4, 6
    model = seed_centroids(rng.normal(size=(50, dim)), k, seed=1)
    vecs = rng.normal(size=(90, dim))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    cats = [{f"c{i % 3}": 1.0, f"d{i % 5}": 0.5} for i in range(90)]
    whole = SegmentStats.of(vecs, model, cats)
    parts = [SegmentStats.of(vecs[i:i + 30], model, cats[i:i + 30]) for i in (0, 30, 60)]
    merged = merge_stats(parts, k, dim, model.version)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_allclose(merged.sums, whole.sums, atol=1e-12)
    for a, b in zip(merged.categories, whole.categories):
        assert a.keys() == b.keys()
        for name in a:
            assert a[name] == pytest.approx(b[name])
    # parts of another version are left out
    old = SegmentStats(model.version - 1, np.ones(k), np.ones((k, dim)))
    again = merge_stats([*parts, old], k, dim, model.version)
    np.testing.assert_array_equal(again.counts, merged.counts)


def test_states_survive_the_wire_exactly() -> None:
    rng = np.random.default_rng(5)
    model = seed_centroids(rng.normal(size=(40, 7)), 3, seed=9)
    back = Centroids.from_state(orjson.loads(orjson.dumps(
        {"version": model.version, "centroids": model.centroids.tolist(),
         "counts": model.counts.tolist()})))
    assert back.digest() == model.digest()
    vecs = rng.normal(size=(20, 7)).astype(np.float32)
    stats = SegmentStats.of(vecs / np.linalg.norm(vecs, axis=1, keepdims=True), model,
                            [{"a": 0.1 + 0.2}] * 20)
    again = SegmentStats.from_state(orjson.loads(orjson.dumps(stats.state())), 3, 7)
    np.testing.assert_array_equal(again.sums, stats.sums)
    np.testing.assert_array_equal(again.counts, stats.counts)
    assert again.categories == stats.categories
    with pytest.raises(ValueError, match="shape"):
        SegmentStats.from_state(stats.state(), 4, 7)
    with pytest.raises(ValueError, match="finite"):
        Centroids.from_state({"version": 1, "centroids": [[float("nan")]], "counts": [0]})


def test_seeding_is_deterministic_and_picks_distinct_points() -> None:
    rng = np.random.default_rng(2)
    pts = rng.normal(size=(100, 5))
    a, b = seed_centroids(pts, 6, seed=4), seed_centroids(pts, 6, seed=4)
    assert a.digest() == b.digest() and a.version == 1
    assert len({tuple(r) for r in a.centroids.tolist()}) == 6
    units = (pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32)
    for row in a.centroids:  # every centroid is one of the points
        assert np.abs(units - row).max(axis=1).min() < 1e-6
    # fewer distinct points than k: the rest stay unseeded
    few = seed_centroids(np.array([[1.0, 0.0], [0.0, 2.0]]), 4, seed=0)
    assert few.seeded().tolist().count(True) == 2
    assert not seed_centroids(np.zeros((0, 3)), 2, seed=0).seeded().any()
