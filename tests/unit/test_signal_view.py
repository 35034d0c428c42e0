"""The merged signal view (stream.core.signal_view): the vectorised popularity merge equals the
per-item formula bit for bit, and its caches (merged popularity, co-visitation rows, ranked
lists) never serve a value older than the last put."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from stream.core.signal_params import SignalParams, decay
from stream.core.signal_view import SignalView
from stream.core.signals import Signals

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000
H = 3_600_000


def per_item_oracle(parts: dict[str, dict[int, tuple[int, float, float, int]]],
                    p: SignalParams) -> dict[str, tuple[int, float, float, int]]:
    """The merge as a plain loop per item: anchor = newest, values summed with Python's sum in
    partition order, each brought to the newest anchor with Python's ``**``."""
    out = {}
    for item, by_part in parts.items():
        vs = [by_part[k] for k in sorted(by_part)]
        if not vs:
            out[item] = (0, 0.0, 0.0, 0)
            continue
        top = max(v[0] for v in vs)
        out[item] = (top,
                     sum(v[1] * 2.0 ** ((v[0] - top) / p.pop_short_half_life_ms) for v in vs),
                     sum(v[2] * 2.0 ** ((v[0] - top) / p.pop_long_half_life_ms) for v in vs),
                     sum(v[3] for v in vs))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_popularity_merge_equals_the_per_item_formula_bit_for_bit(seed: int) -> None:
    rng = random.Random(seed)
    p = SignalParams(pop_short_half_life_ms=2 * H, pop_long_half_life_ms=20 * H)
    items = [f"i{k}" for k in range(60)]
    parts: dict[str, dict[int, tuple[int, float, float, int]]] = {}
    view = SignalView(p)
    local = {k: Signals(p) for k in (3, 7)}  # two partitions put through put_local
    for step in range(400):
        if step % 50 == 49:  # a batch of a local partition: one vectorised put
            k = rng.choice(sorted(local))
            batch = rng.sample(items, 15)
            local[k].apply([f"u{rng.randrange(9)}" for _ in batch], batch,
                           [T0 + rng.randrange(50 * H) for _ in batch], ["click"] * len(batch))
            changed, _ = local[k].take_changed()
            assert view.put_local(k, local[k], sorted(changed)) == len(changed)
            for it in changed:
                pp = local[k].popularity.partial(it)
                assert pp is not None
                parts.setdefault(it, {})[k] = pp
        else:  # a partial read from the topic: replaced, sometimes deleted
            k, it = rng.choice([0, 1, 2, 5, 11]), rng.choice(items)
            if rng.random() < 0.1:
                view.put_pop(k, it, None)
                parts.setdefault(it, {}).pop(k, None)
            else:
                pp = (T0 + rng.randrange(50 * H), rng.random() * 10, rng.random() * 40,
                      rng.randrange(1, 99))
                view.put_pop(k, it, pp)
                parts.setdefault(it, {})[k] = pp
        if step % 37 == 0 or step == 399:  # reads in between: merged lazily, then cached
            want = per_item_oracle(parts, p)
            names = sorted(want)
            now = T0 + 60 * H
            tops = np.array([want[i][0] for i in names], dtype=np.int64)
            short, long = view.popularity(names, now)
            exp_s = np.array([want[i][1] for i in names]) * decay(tops, now, p.pop_short_half_life_ms)
            exp_l = np.array([want[i][2] for i in names]) * decay(tops, now, p.pop_long_half_life_ms)
            assert short.tobytes() == exp_s.tobytes()
            assert long.tobytes() == exp_l.tobytes()
            assert view.counts(names).tolist() == [want[i][3] for i in names]
            held = [want[i][0] for i in names if parts[i]]
            assert view.newest_ts() == (max(held) if held else None)
    assert view.partitions() == {k for by_part in parts.values() for k in by_part} | set(local)


def test_ranked_lists_are_cached_until_the_next_put() -> None:
    p = SignalParams()
    v = SignalView(p)
    for k in range(30):
        v.put_pop(k % 3, f"i{k:02d}", (T0, float(k % 7 + 1), float(k % 5 + 1), 1))
    top10 = v.trending(T0, 10)
    assert v.trending(T0, 4) == top10[:4]  # a smaller k: a prefix of the cached list
    assert v.trending(T0, 30) == sorted(v.trending(T0, 30), key=lambda kv: (-kv[1], kv[0]))
    assert v.trending(T0, 30)[:10] == top10  # a larger k: computed again, same order
    assert len(v.trending(T0, 100)) == 30  # every item with a score > 0
    assert v.trending(T0, 1000) == v.trending(T0, 100)
    got = v.trending(T0, 5)
    got.append(("zz", 0.0))  # the caller's copy: the cache is not changed through it
    assert v.trending(T0, 5) == top10[:5]
    # a put after the read is seen by the next read
    v.put_pop(2, "i29", (T0, 100.0, 100.0, 1))
    assert v.trending(T0, 1)[0][0] == "i29" and v.popular(T0, 1)[0][0] == "i29"
    v.put_pop(2, "i29", None)
    assert "i29" not in [i for i, _ in v.trending(T0, 10)]
    # another "now" is another list (decay): never served from the cache of an older one
    later = v.popular(T0 + 3 * 86_400_000, 3)
    assert later[0][1] < v.popular(T0, 3)[0][1]


def test_covis_rows_are_merged_once_and_again_after_a_put() -> None:
    p = SignalParams()
    s = Signals(p)
    s.apply(["u", "u"], ["a", "b"], [T0, T0 + 1], ["view", "view"])
    v = SignalView(p)
    s.publish(v, 0)
    v.put_covis(1, "a", (T0, ["c"], [2.0]))
    first = v.neighbours("a", T0 + 1)
    assert dict(first) == pytest.approx({"b": 1.0, "c": 2.0})
    # the live row changes, nothing is put: the merged row read before is served
    s.apply(["u"], ["c"], [T0 + 2], ["purchase"])
    assert v.neighbours("a", T0 + 1) == first
    # the batch step's put: the next read merges the live row again
    s.publish(v, 0)
    got = dict(v.neighbours("a", T0 + 2))
    assert got["c"] == pytest.approx(2.0 + math.sqrt(8.0))
    # a partial from the topic replaces the other partition's and invalidates the row too
    v.put_covis(1, "a", (T0, ["c"], [5.0]))
    assert dict(v.neighbours("a", T0 + 2))["c"] == pytest.approx(5.0 + math.sqrt(8.0))
    v.put_covis(1, "a", None)
    assert dict(v.neighbours("a", T0 + 2))["c"] == pytest.approx(math.sqrt(8.0))
    # m only cuts the cached list
    assert v.neighbours("a", T0 + 2, 1) == v.neighbours("a", T0 + 2)[:1]


def test_put_local_reads_only_the_items_it_is_given() -> None:
    p = SignalParams()
    s = Signals(p)
    s.apply(["u", "u", "u"], ["a", "b", "c"], [T0, T0 + 1, T0 + 2], ["view"] * 3)
    s.take_changed()
    v = SignalView(p)
    assert v.put_local(0, s, ["a", "zz"]) == 2  # zz: no partial anywhere
    assert v.items() == ["a"]
    assert v.counts(["a", "b", "zz"]).tolist() == [1, 0, 0]
    assert sorted(n for n, _ in v.neighbours("a", T0 + 2)) == ["b", "c"]
    assert v.neighbours("b", T0 + 2) == []  # never put: nothing registered for it
    assert v.put_local(0, s, []) == 0


def test_a_detached_partition_keeps_what_its_live_rows_said_and_reads_nothing_more() -> None:
    p = SignalParams()
    s = Signals(p)
    s.apply(["u", "u"], ["a", "b"], [T0, T0 + 1], ["view"] * 2)
    s.take_changed()
    v = SignalView(p)
    v.put_local(4, s, ["a", "b"])
    assert v.partitions() == {4}
    v.detach(4)
    s.apply(["u"], ["c"], [T0 + 2], ["view"])  # the state moves on: the view must not see it
    assert [n for n, _ in v.neighbours("a", T0 + 2)] == ["b"]
    assert v.partitions() == {4}  # frozen partials, no live source
    v.put_covis(4, "a", None)
    assert v.neighbours("a", T0 + 2) == []


def test_live_items_cost_no_python_object_each() -> None:
    """put_local registers its items in columns: 20,000 items of one partition cost ~230 B an
    item (arrays, the id index); a dict of sources and a stale-set entry per item made it ~500
    (issue 12: every worker holds the view of the whole catalogue)."""
    import tracemalloc

    p = SignalParams()
    s = Signals(p)
    n = 20_000
    items = [f"item-{i:06d}" for i in range(n)]
    s.apply([f"u{i % 997}" for i in range(n)], items, [T0 + i for i in range(n)], ["view"] * n)
    s.take_changed()
    v = SignalView(p)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        v.put_local(0, s, items)
        v.merge()
        per_item = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert per_item < 350, per_item
    assert not v._cov_parts and not v._cov_merged  # nothing per item until an item is read
    partial = s.covis.partial(items[5])
    assert partial is not None and partial[1]
    assert [k for k, _ in v.neighbours(items[5], T0 + n)] == list(partial[1])
