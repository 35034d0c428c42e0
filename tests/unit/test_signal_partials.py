"""``ItemPopularity.partials`` (many partials at once) equals ``partial`` item by item, and the
merged view put from it equals the view put one ``partial`` at a time (issue 14: the batch
step's signal puts)."""

from __future__ import annotations

from typing import Any

import numpy as np

from stream.core.signal_params import SignalParams
from stream.core.signal_view import SignalView
from stream.core.signals import Signals


def _signals(seed: int) -> tuple[Signals, list[list[str]]]:
    rng = np.random.default_rng(seed)
    sig = Signals(SignalParams())
    changed = []
    for b in range(6):
        users = [f"u{x}" for x in rng.integers(0, 50, 80)]
        items = [f"i{x}" for x in rng.integers(0, 120, 80)]
        ts = (1_700_000_000_000 + b * 60_000 + rng.integers(0, 50_000, 80)).tolist()
        types = [("view", "click", "purchase")[x] for x in rng.integers(0, 3, 80)]
        sig.apply(users, items, ts, types)
        pop, cov = sig.take_changed()
        changed.append(sorted(pop | cov))
    return sig, changed


def test_partials_equal_partial_item_by_item() -> None:
    sig, _ = _signals(0)
    pop = sig.popularity
    ask = ["nope", *pop.items()[::-1], "i-unknown", pop.items()[0]]
    known, a, sh, lg, c = pop.partials(ask)
    want = [(i, pp) for i in ask if (pp := pop.partial(i)) is not None]
    assert known == [i for i, _ in want]
    assert a.dtype == np.int64 and c.dtype == np.int64
    assert sh.dtype == np.float64 and lg.dtype == np.float64
    for j, (_, (wa, wsh, wlg, wc)) in enumerate(want):
        assert (int(a[j]), float(sh[j]), float(lg[j]), int(c[j])) == (wa, wsh, wlg, wc)
    empty = pop.partials([])
    assert empty[0] == [] and all(len(x) == 0 for x in empty[1:])


class _OneByOne:
    """A partition's signals whose popularity has only ``partial`` (the view's fallback)."""

    def __init__(self, sig: Signals) -> None:
        self.covis = sig.covis
        self._pop = sig.popularity

    @property
    def popularity(self) -> Any:
        pop = self._pop

        class P:
            def partial(self, item: str) -> Any:
                return pop.partial(item)

        return P()


def test_view_put_from_partials_equals_view_put_one_by_one() -> None:
    sig, changed = _signals(1)
    fast, slow = SignalView(SignalParams()), SignalView(SignalParams())
    for items in changed:
        fast.put_local(3, sig, [*items, "never-seen"])
        slow.put_local(3, _OneByOne(sig), [*items, "never-seen"])
    fast.merge()
    slow.merge()
    assert fast._names == slow._names
    for attr in ("_anchor", "_short", "_long", "_count", "_p_anchor", "_p_short", "_p_long",
                 "_p_count", "_p_has"):
        assert np.array_equal(getattr(fast, attr), getattr(slow, attr)), attr
    now = 1_700_000_000_000 + 10 * 60_000
    assert fast.popular(now, 10) == slow.popular(now, 10)
    assert fast.trending(now, 10) == slow.trending(now, 10)
