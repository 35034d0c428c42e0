"""FlatIndex (the `flat` VectorIndex): property tests against a numpy oracle, in-place updates, errors."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from index import FlatIndex, IndexShapeError, VectorIndex

pytestmark = pytest.mark.unit

DIM = 8
IDS = [f"u{i}" for i in range(12)]  # small pool => frequent overwrites and slot reuse


def _unit(seed: int, n: int = 1) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


upsert_op = st.tuples(
    st.just("upsert"), st.lists(st.sampled_from(IDS), min_size=1, max_size=6), st.integers(0, 2**31)
)
remove_op = st.tuples(st.just("remove"), st.lists(st.sampled_from(IDS), max_size=4), st.just(0))


def _check_against_oracle(
    idx: VectorIndex, live: dict[str, np.ndarray], q: np.ndarray, k: int, exclude: set[str]
) -> None:
    (hits,) = idx.search(q, k, exclude=[exclude])
    cand = {i: float(v @ q) for i, v in live.items() if i not in exclude}
    expected = sorted(cand.values(), reverse=True)[:k]
    got_ids = [i for i, _ in hits]
    assert len(got_ids) == len(set(got_ids)) == len(expected)
    for (id_, score), exp in zip(hits, expected):
        assert id_ in cand, f"{id_} is removed or excluded"
        assert score == pytest.approx(cand[id_], abs=1e-5)  # reported score is the true one
        assert score == pytest.approx(exp, abs=1e-5)  # and ranks match the oracle (ties ok)


@settings(derandomize=True, deadline=None, max_examples=150)
@given(
    ops=st.lists(st.one_of(upsert_op, remove_op), max_size=25),
    k=st.integers(1, 15),
    qseed=st.integers(0, 1000),
    n_excl=st.integers(0, 4),
)
def test_matches_bruteforce_oracle(ops, k, qseed, n_excl) -> None:
    idx = FlatIndex(DIM, name="prop")
    live: dict[str, np.ndarray] = {}
    for kind, ids, seed in ops:
        if kind == "upsert":
            vecs = _unit(seed, len(ids))
            idx.upsert(ids, vecs)
            for i, v in zip(ids, vecs):  # last duplicate wins
                live[i] = v
        else:
            assert idx.remove(ids) == len({i for i in ids if i in live})
            for i in ids:
                live.pop(i, None)
        assert len(idx) == len(live) and sorted(idx.ids()) == sorted(live)

    for i, v in live.items():
        assert i in idx
        np.testing.assert_array_equal(idx.get(i), v)
        (hits,) = idx.search(v, 1)
        best_id, best = hits[0]
        # Own vector is the nearest neighbour (another id may tie within 1e-6).
        assert best_id == i or best - float(v @ v) <= 1e-6
    for gone in set(IDS) - set(live):
        assert gone not in idx and idx.get(gone) is None

    q = _unit(qseed)[0]
    _check_against_oracle(idx, live, q, k, set())
    _check_against_oracle(idx, live, q, k, set(sorted(live)[:n_excl]))
    # State round trip preserves content and search results.
    clone = FlatIndex.from_state(idx.state())
    assert sorted(clone.ids()) == sorted(live)
    _check_against_oracle(clone, live, q, k, set())


def test_in_place_overwrite_visible_to_search() -> None:
    idx = FlatIndex(DIM)
    base = np.eye(DIM, dtype=np.float32)
    idx.upsert([f"e{i}" for i in range(DIM)], base)
    ntotal = idx._index.ntotal
    idx.upsert(["e0"], base[[3]] * 2)  # e0 now points where e3 does, with twice the norm
    assert idx._index.ntotal == ntotal  # overwrite, not append
    (hits,) = idx.search(base[3], 2)
    assert hits == [("e0", 2.0), ("e3", 1.0)]
    # Storage is the FAISS index itself, not a shadow copy.
    stored = faiss.rev_swig_ptr(idx._index.get_xb(), ntotal * DIM).reshape(ntotal, DIM)
    np.testing.assert_array_equal(stored[idx._slot_of["e0"]], base[3] * 2)


def test_remove_then_reuse_slot_and_growth() -> None:
    idx = FlatIndex(DIM)
    idx.upsert(["a", "b"], _unit(1, 2))
    assert idx.remove(["a", "missing"]) == 1
    expected = float(_unit(1, 2)[1] @ _unit(1)[0])
    assert idx.search(_unit(1)[0], 5) == [[("b", pytest.approx(expected))]]
    idx.upsert(["c"], _unit(2))
    assert idx._index.ntotal == 2  # c reused a's slot
    # Grow well past any initial capacity; earlier views must not be used after realloc.
    many = _unit(3, 2000)
    idx.upsert([f"m{i}" for i in range(2000)], many)
    idx.upsert(["b"], many[[1500]])
    (hits,) = idx.search(many[1500], 2)
    assert {h[0] for h in hits} == {"b", "m1500"}


def test_duplicate_ids_last_wins() -> None:
    idx = FlatIndex(DIM)
    v = _unit(5, 3)
    idx.upsert(["x", "y", "x"], v)
    assert len(idx) == 2
    np.testing.assert_array_equal(idx.get("x"), v[2])


def test_search_shapes_and_edge_cases() -> None:
    idx = FlatIndex(DIM)
    assert idx.search(_unit(0)[0], 3) == [[]]
    idx.upsert(["a"], _unit(0))
    assert idx.search(_unit(0, 2), 0) == [[], []]
    assert [len(r) for r in idx.search(_unit(0, 2), 10)] == [1, 1]
    assert idx.search(_unit(0)[0], 1, exclude=[{"a"}]) == [[]]
    with pytest.raises(ValueError, match="exclude"):
        idx.search(_unit(0, 2), 1, exclude=[set()])


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (np.zeros((2, DIM + 1), np.float32), f"[n, {DIM}], got [2, {DIM + 1}]"),
        (np.zeros(DIM, np.float32), f"got [{DIM}]"),
        (np.zeros((1, 2, DIM), np.float32), f"got [1, 2, {DIM}]"),
        (np.full((1, DIM), np.nan, np.float32), "NaN or inf"),
    ],
)
def test_upsert_shape_errors(bad: np.ndarray, fragment: str) -> None:
    idx = FlatIndex(DIM, name="users")
    with pytest.raises(IndexShapeError) as info:
        idx.upsert(["a"] * max(1, bad.shape[0] if bad.ndim > 1 else 1), bad)
    assert fragment in str(info.value) and "users" in str(info.value)
    assert len(idx) == 0


def test_other_validation_errors() -> None:
    idx = FlatIndex(DIM)
    with pytest.raises(IndexShapeError, match="2 ids"):
        idx.upsert(["a", "b"], _unit(0, 3))
    with pytest.raises(IndexShapeError, match=rf"\[{DIM}\], got \[3\]"):
        idx.search(np.zeros(3, np.float32), 1)
    with pytest.raises(TypeError):
        idx.upsert("ab", _unit(0, 2))
    assert issubclass(IndexShapeError, ValueError)


def test_state_round_trip_is_compact() -> None:
    idx = FlatIndex(DIM, name="items")
    idx.upsert(["a", "b", "c"], _unit(9, 3))
    idx.remove(["b"])
    s = idx.state()
    assert s["ids"] == ["a", "c"] and s["vectors"].shape == (2, DIM) and s["name"] == "items"
    clone = FlatIndex.from_state(s)
    assert clone._index.ntotal == 2 and clone.name == "items"
    np.testing.assert_array_equal(clone.get("c"), idx.get("c"))
    empty = FlatIndex.from_state(FlatIndex(DIM).state())
    assert len(empty) == 0
