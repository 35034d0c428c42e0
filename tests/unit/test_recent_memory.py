"""Recent items cost one packed record (and its dict entry) per user, and nothing more (issue
12: a per-user "changed" set that nothing ever read grew with every user who had an item event,
forever: ~40 B a user of bench scale's bytes_per_user)."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np

from stream.core.signals import SignalParams, Signals


def _bytes_per_user(users: int) -> float:
    """Traced bytes per user held by ``Signals.recent`` after ``users`` users' first events
    (recent_n=1, the bench's base config; items drawn from 100, so item tables stay small)."""
    sig = Signals(SignalParams(recent_n=1))
    rng = np.random.default_rng(0)
    names = [f"u{k}" for k in range(users)]  # made before tracing: ids are not the table's
    items = [f"i{k}" for k in range(100)]
    t0 = 1_700_000_000_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for lo in range(0, users, 500):
            batch = names[lo:lo + 500]
            sig.recent.apply(batch, [items[k] for k in rng.integers(0, 100, len(batch)).tolist()],
                             np.full(len(batch), t0 + lo, dtype=np.int64), np.ones(len(batch)))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(sig.recent) == users
    return held / users


def test_recent_items_hold_a_record_and_a_dict_entry_per_user_only() -> None:
    # a one-event record is 9 + 16 bytes in a bytes object (~64 B with its header); the dict
    # entry and its slack ~40-80 B; before, a set entry of every user on top (~130 B in all)
    per_user = _bytes_per_user(20_000)
    assert per_user <= 120, per_user


def test_forget_and_apply_still_work_without_the_changed_set() -> None:
    sig = Signals(SignalParams(recent_n=2))
    t = 1_700_000_000_000
    sig.recent.apply(["a", "a", "b"], ["x", "y", "x"], np.array([t, t + 1, t + 2]),
                     np.ones(3))
    assert "a" in sig.recent and len(sig.recent) == 2
    assert sig.erase("a") and "a" not in sig.recent and not sig.erase("a")
    assert sig.recent.interned() == 1  # "y" was only a's: released
