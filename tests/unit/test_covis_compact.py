"""The columnar co-visitation rows (issue 12: a dict of Python floats per row held ~80-90 B an
entry, the largest per-user part of ``profiles bench scale`` at 10^6 items) against the dict
version they replaced, kept here as the reference: the same pairs give the same rows, values to
the bit, order, anchors, pruning, partials and snapshots, over batches with rebases, ties,
one-way pairs and rows over capacity; and an entry costs a fraction of the memory."""

from __future__ import annotations

import heapq
import itertools
import operator
import tracemalloc
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from stream.core.signal_params import CovisPartial, SignalParams, decay
from stream.core.signals import _REBASE, CoVisitation, Pairs

_VALUE = operator.itemgetter(1)


def _top(row: Mapping[str, float], m: int) -> list[tuple[str, float]]:
    if len(row) <= 2 * m:
        return sorted(row.items(), key=_VALUE, reverse=True)[:m]
    return heapq.nlargest(m, row.items(), key=_VALUE)


# The implementation before the columnar rows (stream/core/signals.py at cc2ba92), verbatim.
class DictCoVisitation:
    """item -> at most ``covis_capacity`` neighbours with decayed pair weights (one reference
    time per row)."""

    def __init__(self, params: SignalParams) -> None:
        self.params = params
        self._rows: dict[str, dict[str, float]] = {}
        self._anchor: dict[str, int] = {}
        self._changed: set[str] = set()
        self.dirty: set[str] = set()  # changed since the last snapshot (stream.worker.deltas)

    def add(self, pairs: Pairs) -> None:
        """Add each pair to both rows, then prune rows over capacity (weakest out)."""
        rows, anchors = self._rows, self._anchor
        inv_h = 1.0 / self.params.covis_half_life_ms
        rebase = _REBASE * self.params.covis_half_life_ms
        for a, b, t, w, wr in zip(pairs.left, pairs.right, pairs.ts, pairs.weight, pairs.back):
            # both directions, unrolled: this loop is the hot path of the signals
            row = rows.get(a)
            if row is None:
                rows[a] = {b: w}
                anchors[a] = t
            else:
                d = t - anchors[a]
                if d > rebase:
                    self._rebase(a, t)
                    d = 0
                row[b] = row.get(b, 0.0) + w * 2.0 ** (d * inv_h)
            if not wr:  # covis_backward 0: no reverse entry (it would hold a row slot at 0)
                continue
            row = rows.get(b)
            if row is None:
                rows[b] = {a: wr}
                anchors[b] = t
            else:
                d = t - anchors[b]
                if d > rebase:
                    self._rebase(b, t)
                    d = 0
                row[a] = row.get(a, 0.0) + wr * 2.0 ** (d * inv_h)
        touched = set(pairs.left)
        touched.update(b for b, wr in zip(pairs.right, pairs.back) if wr)
        cap = self.params.covis_capacity
        # A full row drops to 7/8 of the capacity (weakest out), so pruning runs once per
        # capacity/8 new neighbours instead of on every one; rows never exceed the capacity
        # after add() returns.
        keep = max(self.params.covis_top_m, cap - cap // 8)
        get = _VALUE
        for x in touched:
            row = rows[x]
            if len(row) > cap:
                rows[x] = dict(sorted(row.items(), key=get, reverse=True)[:keep])
        self._changed |= touched
        self.dirty |= touched

    def _rebase(self, item: str, t: int) -> None:
        """Move a row's reference time to ``t`` (rescaling its values)."""
        f = 2.0 ** ((self._anchor[item] - t) / self.params.covis_half_life_ms)
        row = self._rows[item]
        for k in row:
            row[k] *= f
        self._anchor[item] = t

    def partial(self, item: str) -> CovisPartial | None:
        """(anchor, neighbours, values): the row's top covis_top_m, best first."""
        row = self._rows.get(item)
        if row is None:
            return None
        top = _top(row, self.params.covis_top_m)
        return (self._anchor[item], [k for k, _ in top], [v for _, v in top])

    def neighbours(self, item: str, now: float, m: int | None = None) -> list[tuple[str, float]]:
        """This partition's top ``m`` neighbours of ``item`` decayed to ``now`` (best first)."""
        row = self._rows.get(item)
        if row is None:
            return []
        f = float(decay(self._anchor[item], now, self.params.covis_half_life_ms))
        return [(k, v * f) for k, v in _top(row, self.params.covis_top_m if m is None else m)]

    def row(self, item: str) -> tuple[int, dict[str, float]] | None:
        """(anchor, copy of the whole row) for tests and debugging."""
        row = self._rows.get(item)
        return None if row is None else (self._anchor[item], dict(row))

    def take_changed(self) -> set[str]:
        out, self._changed = self._changed, set()
        return out

    def items(self) -> list[str]:
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def keys_newest_first(self) -> Iterator[str]:
        return reversed(self._rows)

    def __contains__(self, item: object) -> bool:
        return item in self._rows

    def state(self, only: Sequence[str] | None = None) -> dict[str, Any]:
        """Every row, or ``only`` those known (in that order: an incremental snapshot's)."""
        items = list(self._rows) if only is None else [i for i in only if i in self._rows]
        rows = list(map(self._rows.__getitem__, items))  # one lookup per row, then flat
        nbs = list(itertools.chain.from_iterable(rows))  # (C iterators: no Python step each)
        return {"items": items,
                "anchors": np.fromiter(map(self._anchor.__getitem__, items), np.int64,
                                       len(items)),
                "lengths": np.fromiter(map(len, rows), np.int64, len(items)),
                "neighbours": nbs,
                "values": np.fromiter(itertools.chain.from_iterable(map(dict.values, rows)),
                                      np.float64, len(nbs))}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], params: SignalParams) -> DictCoVisitation:
        out = cls(params)
        canon: dict[str, str] = {}  # one string object per item id (not one per row entry)
        items = [canon.setdefault(s, s) for s in map(str, state["items"])]
        anchors = np.asarray(state["anchors"], dtype=np.int64).reshape(-1).tolist()
        lengths = np.asarray(state["lengths"], dtype=np.int64).reshape(-1).tolist()
        nbs = [canon.setdefault(s, s) for s in map(str, state["neighbours"])]
        vals = np.asarray(state["values"], dtype=np.float64).reshape(-1).tolist()
        if not (len(items) == len(anchors) == len(lengths)) or not (
                sum(lengths) == len(nbs) == len(vals)) or len(set(items)) != len(items):
            raise ValueError("co-visitation state: lengths disagree")
        pos = 0
        for it, a, n in zip(items, anchors, lengths):
            out._rows[it] = dict(zip(nbs[pos:pos + n], vals[pos:pos + n]))
            out._anchor[it] = int(a)
            pos += n
        return out




def _pairs(rng: np.random.Generator, n: int, items: int, t0: int, span: int,
           back: float) -> Pairs:
    left = [f"i{k}" for k in rng.integers(0, items, n).tolist()]
    right = [f"i{k}" for k in rng.integers(0, items, n).tolist()]
    ts = sorted((t0 + rng.integers(0, span, n)).tolist())
    w = np.round(rng.uniform(0.1, 3.0, n), 3).tolist()
    tie = rng.random(n) < 0.2  # tied pairs go both ways in full
    wr = [x if t else x * back for x, t in zip(w, tie.tolist())]
    return Pairs(left, right, ts, w, wr)


def _same(new: CoVisitation, old: DictCoVisitation, now: int) -> None:
    assert new.items() == old.items() and len(new) == len(old)
    assert list(new.keys_newest_first()) == list(old.keys_newest_first())
    a, b = new.state(), old.state()
    assert a["items"] == b["items"] and a["neighbours"] == b["neighbours"]
    for k in ("anchors", "lengths", "values"):
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    for it in old.items()[:50] + ["nobody"]:
        assert new.partial(it) == old.partial(it)
        assert new.neighbours(it, now, 7) == old.neighbours(it, now, 7)
        assert new.row(it) == old.row(it)
        assert (it in new) == (it in old)


@pytest.mark.parametrize("back,capacity,half_life,items", [
    (1.0, 200, 14 * 86_400_000, 60),  # the defaults: no pruning at this size, no rebase
    (0.5, 12, 14 * 86_400_000, 80),  # rows over capacity pruned every batch
    (0.0, 8, 1_000, 40),  # one-way pairs; reference times move inside batches
    (0.3, 16, 50_000, 300),
])
def test_columnar_rows_equal_the_dict_rows(back: float, capacity: int, half_life: float,
                                           items: int) -> None:
    p = SignalParams(covis_backward=back, covis_capacity=capacity, covis_top_m=min(5, capacity),
                     covis_half_life_ms=half_life)
    rng = np.random.default_rng(int(capacity * 7 + items))
    new, old = CoVisitation(p), DictCoVisitation(p)
    t = 1_700_000_000_000
    for step in range(40):
        # a jump of many half-lives now and then: rows rebase, some in mid-batch
        span = int(_REBASE * half_life * 3) if step % 7 == 3 else 10_000
        batch = _pairs(rng, int(rng.integers(1, 400)), items, t, span, back)
        new.add(batch)
        old.add(batch)
        t = max(batch.ts) + 1
        assert new.take_changed() == old.take_changed()
        assert new.dirty == old.dirty
        _same(new, old, t)
        if step % 10 == 9:  # a snapshot and a restore in between
            new = CoVisitation.from_state(new.state(), p)
            old = DictCoVisitation.from_state(old.state(), p)
            _same(new, old, t)
    assert max(len(old.row(i)[1]) for i in old.items()) <= capacity  # type: ignore[index]


def test_partial_state_and_restore_of_some_rows() -> None:
    p = SignalParams(covis_capacity=10, covis_top_m=4)
    new, old = CoVisitation(p), DictCoVisitation(p)
    rng = np.random.default_rng(5)
    batch = _pairs(rng, 500, 50, 1_700_000_000_000, 10_000, 1.0)
    new.add(batch)
    old.add(batch)
    only = ["i3", "nobody", "i1", "i40"]
    a, b = new.state(only), old.state(only)
    assert a["items"] == b["items"] and a["neighbours"] == b["neighbours"]
    assert a["values"].tobytes() == b["values"].tobytes()
    back = CoVisitation.from_state(a, p)
    assert back.items() == a["items"] and back.row("i3") == old.row("i3")
    with pytest.raises(ValueError, match="lengths disagree"):
        CoVisitation.from_state({**a, "lengths": a["lengths"] + 1}, p)
    with pytest.raises(ValueError, match="repeats"):
        CoVisitation.from_state({"items": ["a"], "anchors": [1], "lengths": [2],
                                 "neighbours": ["x", "x"], "values": [1.0, 2.0]}, p)


def _traced_per_entry(cls: Any, n_items: int = 2000, pairs: int = 60_000) -> tuple[float, Any]:
    """(traced bytes per neighbour entry, the rows) after ``pairs`` random pairs."""
    p = SignalParams()
    rng = np.random.default_rng(0)
    names = [f"item-{k}" for k in range(n_items)]  # the catalogue's strings, not counted
    batches = []
    for b in range(pairs // 500):
        left = [names[k] for k in rng.integers(0, n_items, 500).tolist()]
        right = [names[k] for k in rng.integers(0, n_items, 500).tolist()]
        w = rng.uniform(0.5, 2.0, 500).tolist()
        batches.append(Pairs(left, right, [1_700_000_000_000 + b] * 500, w, w))
    cls(p).add(batches[0])  # imports and caches of a first call, not counted
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        cv = cls(p)
        for batch in batches:
            cv.add(batch)
        cv.take_changed()
        cv.dirty = set()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    entries = sum(len(cv.row(i)[1]) for i in cv.items())
    return held / entries, cv


def test_an_entry_costs_a_fraction_of_a_dict_entry() -> None:
    """Measured: ~51 traced B an entry for the dict rows (a float object and a dict slot with
    its slack), ~26 for the columnar ones, of which the pool's spare capacity (zero pages from
    calloc, not resident until used) is a third; the pool slots used are ~16 B an entry
    (12 B plus block slack)."""
    new, cv = _traced_per_entry(CoVisitation)
    old, _ = _traced_per_entry(DictCoVisitation)
    assert new < 0.75 * old, (new, old)
    assert cv._end * 12 / cv.entries() < 18
