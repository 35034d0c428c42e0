"""MicroBatcher: never drops, never reorders, respects size and wait; length_sorted inverts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.batcher import MicroBatcher, length_sorted

pytestmark = pytest.mark.unit

# An op is ("add", dt) or ("poll", dt): advance the clock by dt, then act.
ops = st.lists(
    st.tuples(st.sampled_from(["add", "poll"]), st.floats(0, 2, allow_nan=False)), max_size=60
)


@settings(derandomize=True, deadline=None, max_examples=300)
@given(ops, st.integers(1, 8), st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0]))
def test_batches_preserve_order_size_and_wait(
    script: list[tuple[str, float]], max_size: int, max_wait: float
) -> None:
    b: MicroBatcher[int] = MicroBatcher(max_size, max_wait)
    now, n = 0.0, 0
    arrived: dict[int, float] = {}
    emitted: list[list[int]] = []
    for op, dt in script:
        now += dt
        if op == "add":
            arrived[n] = now
            for batch in b.add(n, now):
                assert len(batch) == max_size
                emitted.append(batch)
            n += 1
        else:
            batch = b.poll(now)
            if batch is not None:
                # The oldest item must have waited its full max_wait.
                assert now >= arrived[batch[0]] + max_wait
                emitted.append(batch)
            else:
                assert len(b) == 0 or b.due(now) > 0
        assert len(b) < max_size
    tail = b.flush()
    if tail is not None:
        emitted.append(tail)
    assert len(b) == 0 and b.flush() is None
    assert [x for batch in emitted for x in batch] == list(range(n))
    assert all(1 <= len(batch) <= max_size for batch in emitted)


def test_due_counts_down_from_oldest_item() -> None:
    b: MicroBatcher[str] = MicroBatcher(10, 0.5)
    assert b.due(0.0) is None
    b.add("a", 1.0)
    b.add("b", 1.3)  # a later item does not push the deadline back
    assert b.due(1.3) == pytest.approx(0.2)
    assert b.poll(1.3) is None
    assert b.due(2.0) == 0.0  # overdue clamps to 0
    assert b.poll(1.5) == ["a", "b"]
    assert b.due(1.5) is None and len(b) == 0


def test_zero_wait_polls_immediately_and_full_batch_resets_deadline() -> None:
    b: MicroBatcher[int] = MicroBatcher(2, 0.0)
    assert b.add(1, 5.0) == []
    assert b.due(5.0) == 0.0
    assert b.poll(5.0) == [1]
    b2: MicroBatcher[int] = MicroBatcher(2, 1.0)
    assert b2.add(1, 0.0) == [] and b2.add(2, 0.1) == [[1, 2]]
    assert b2.due(0.1) is None
    b2.add(3, 0.9)
    assert b2.due(1.0) == pytest.approx(0.9)  # deadline from item 3, not item 1


def test_max_size_one_emits_every_add() -> None:
    b: MicroBatcher[str] = MicroBatcher(1, 10.0)
    assert b.add("x", 0.0) == [["x"]]
    assert len(b) == 0 and b.poll(100.0) is None


@pytest.mark.parametrize(
    ("max_size", "max_wait"),
    [(0, 1.0), (-1, 1.0), (1.5, 1.0), (True, 1.0), (1, -0.1), (1, float("nan"))],
)
def test_invalid_config(max_size: int, max_wait: float) -> None:
    with pytest.raises(ValueError, match="max_size|max_wait"):
        MicroBatcher(max_size, max_wait)


@settings(derandomize=True, deadline=None)
@given(st.lists(st.integers(0, 12), max_size=40))
def test_length_sorted_restores_order(lengths: list[int]) -> None:
    # Items carry their original index so a misplaced result is always detectable.
    items = [(i, n) for i, n in enumerate(lengths)]
    order, restore = length_sorted(items, lambda it: it[1])
    assert sorted(order) == list(range(len(items)))
    keys = [items[i][1] for i in order]
    assert keys == sorted(keys)
    # Stable: equal lengths keep their original relative order.
    assert all(order[k] < order[k + 1] for k in range(len(order) - 1) if keys[k] == keys[k + 1])
    results = [("done", items[i]) for i in order]  # "computed" in sorted order
    assert restore(results) == [("done", it) for it in items]


def test_length_sorted_rejects_wrong_result_count() -> None:
    _, restore = length_sorted(["a", "bb"], len)
    with pytest.raises(ValueError):
        restore(["x"])
