"""The sort-based replacements of ``np.unique`` (numpy 2.3+ takes a hash table for a plain
``np.unique``, measured 2-35x slower here): ``stream.core.rows.unique_ints`` and the dedupe
window's ``_repeats`` / ``_distinct`` give exactly what ``np.unique`` gives."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as hst

from stream.core.dedupe import _PAIR, _distinct, _repeats
from stream.core.rows import unique_ints

ints = hst.lists(hst.integers(-(2**62), 2**62), max_size=60)
small = hst.lists(hst.integers(0, 5), max_size=60)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(hst.one_of(ints, small))
def test_unique_ints_is_np_unique(values: list[int]) -> None:
    a = np.array(values, dtype=np.int64)
    got = unique_ints(a)
    assert got.dtype == a.dtype and np.array_equal(got, np.unique(a))
    assert np.array_equal(a, np.array(values, dtype=np.int64))  # the input is left alone


def _keys(pairs: list[tuple[int, int]]) -> np.ndarray:
    return np.array(pairs, dtype="<u8").reshape(-1, 2)


halves = hst.integers(0, 3) | hst.integers(0, 2**64 - 1)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(hst.lists(hst.tuples(halves, halves), max_size=40))
def test_distinct_and_repeats_match_np_unique(pairs: list[tuple[int, int]]) -> None:
    keys = _keys(pairs)
    records = np.ascontiguousarray(keys).view(_PAIR).reshape(-1)
    assert _repeats(keys) == (len(np.unique(records)) != len(keys))
    uniq, newest, counts = _distinct(keys)
    want, rev_first, want_counts = np.unique(records[::-1], return_index=True,
                                             return_counts=True)
    assert np.array_equal(uniq, want)
    assert np.array_equal(newest, len(keys) - 1 - rev_first)
    assert np.array_equal(counts, want_counts)


def test_repeats_sees_keys_that_share_only_their_first_half() -> None:
    assert not _repeats(_keys([(1, 2), (1, 3), (0, 2)]))
    assert _repeats(_keys([(1, 2), (0, 2), (1, 2)]))
