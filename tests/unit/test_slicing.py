"""stream.worker.slicing: how a batch is cut into slices, and when (issue 12)."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.errors import ConfigError
from stream.settings import Settings
from stream.worker.slicing import Serving, let_requests_in, slices


class Rec(NamedTuple):
    partition: int
    offset: int


def _batch(parts: list[int]) -> list[Rec]:
    """Records of these partitions in this order, consecutive offsets per partition."""
    nxt: dict[int, int] = {}
    out = []
    for p in parts:
        out.append(Rec(p, nxt.get(p, 0)))
        nxt[p] = nxt.get(p, 0) + 1
    return out


@settings(derandomize=True, max_examples=200)
@given(st.lists(st.integers(0, 5), max_size=60), st.integers(0, 25))
def test_slices_keep_every_partition_in_order(parts: list[int], size: int) -> None:
    recs = _batch(parts)
    out = slices(recs, size)
    flat = [r for s in out for r in s]
    assert sorted(flat) == sorted(recs)  # every record once
    for p in set(parts):  # each partition's records in offset order, across the slices
        assert [r.offset for r in flat if r.partition == p] == list(range(parts.count(p)))
    if size == 0 or len(recs) <= size:
        assert out == [recs]
    else:
        assert all(0 < len(s) <= size for s in out)
        assert len(out) == -(-len(recs) // size)  # as few slices as the size allows
        # a partition is split at most at slice ends: it is contiguous in the order
        seen = [r.partition for r in flat]
        assert all(seen.index(p) + seen.count(p) - 1 == len(seen) - 1 - seen[::-1].index(p)
                   for p in set(seen))


def test_slices_group_partitions() -> None:
    recs = _batch([0, 1, 0, 1, 2, 0])
    assert slices(recs, 4) == [[Rec(0, 0), Rec(0, 1), Rec(0, 2), Rec(1, 0)],
                               [Rec(1, 1), Rec(2, 0)]]


def test_serving_window() -> None:
    now = [100.0]
    s = Serving(lambda: now[0], window_s=2.0)
    assert not s.active() and s.slice_size(100) == 0
    s.note()
    assert s.active() and s.slice_size(100) == 100 and s.slice_size(0) == 0
    now[0] += 2.0
    assert s.slice_size(100) == 100
    now[0] += 0.01
    assert not s.active() and s.slice_size(100) == 0 and s.requests == 1


def test_slice_size_follows_the_cpu_per_record() -> None:
    now = [0.0]
    s = Serving(lambda: now[0], window_s=5.0, target_s=0.02)
    s.note()
    assert s.slice_size(128) == 128  # nothing measured yet: the setting
    s.observe(500, 0.025)  # 50 us a record: 20 ms hold 400
    assert s.per_record == pytest.approx(5e-5) and s.slice_size(128) == 400
    s.observe(100, 0.1)  # 1 ms a record: the average moves a fifth of the way
    assert s.per_record == pytest.approx(0.8 * 5e-5 + 0.2 * 1e-3)
    assert s.slice_size(128) == 128  # never fewer than the setting
    s.observe(0, 1.0)  # nothing applied: ignored
    assert s.per_record == pytest.approx(0.8 * 5e-5 + 0.2 * 1e-3)
    assert s.slice_size(0) == 0  # 0: whole batches
    fixed = Serving(lambda: now[0], window_s=5.0)  # target 0: the setting, as before
    fixed.note()
    fixed.observe(500, 0.025)
    assert fixed.slice_size(128) == 128
    now[0] += 6
    assert s.slice_size(128) == 0  # not serving


def test_apply_slice_ms_setting() -> None:
    assert Settings.from_env({}).apply_slice_ms == 20.0
    with pytest.raises(ConfigError, match="apply_slice_ms must be >= 0"):
        Settings.from_env({"PROFILES_APPLY_SLICE_MS": "-1"})


def test_let_requests_in_gives_the_loop_passes() -> None:
    async def main() -> int:
        ticks = 0
        stop = False

        async def other() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(other())
        await asyncio.sleep(0)
        before = ticks
        await let_requests_in(3)
        got = ticks - before
        stop = True
        await task
        return got

    assert asyncio.run(main()) == 3


def test_apply_slice_setting() -> None:
    assert Settings.from_env({}).apply_slice == 128
    assert Settings.from_env({"PROFILES_APPLY_SLICE": "0"}).apply_slice == 0
    with pytest.raises(ConfigError, match="apply_slice must be >= 0"):
        Settings.from_env({"PROFILES_APPLY_SLICE": "-1"})
