"""Issue 10, point 3: the TTL's event-time watermark (stream.core.profile.EventTimeWatermark)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.profile import EventTimeWatermark


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**13), max_size=60), st.integers(1, 12), st.randoms())
def test_the_watermark_is_the_rank_th_largest_whatever_the_order_and_batching(
        times, rank, rnd) -> None:
    shuffled = list(times)
    rnd.shuffle(shuffled)
    w = EventTimeWatermark(rank)
    i = 0
    while i < len(shuffled):  # random batches
        n = rnd.randint(1, 7)
        w.observe(shuffled[i:i + n])
        i += n
    want = sorted(times, reverse=True)[rank - 1] if len(times) >= rank else None
    assert w.value() == want
    assert EventTimeWatermark.from_state(w.state(), rank).value() == want


def test_one_far_future_time_does_not_move_it() -> None:
    w = EventTimeWatermark(3, [100, 100, 100])
    w.observe([4_102_444_800_000])
    assert w.value() == 100
    w.observe([200, 200])
    assert w.value() == 200


def test_a_smaller_rank_after_a_restart_keeps_the_largest() -> None:
    assert EventTimeWatermark.from_state([1, 2, 3, 4], 2).value() == 3
    assert EventTimeWatermark.from_state([1, 2], 5).value() is None
    assert EventTimeWatermark.from_state(None, 1).value() is None
    with pytest.raises(ValueError, match="rank must be >= 1"):
        EventTimeWatermark(0)
