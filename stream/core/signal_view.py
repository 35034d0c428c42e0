"""The merged read view over the signal partials of every source partition (pure: stdlib +
numpy).

Partials are keyed (partition, item): putting one replaces what that partition said about that
item before (never adds), so re-published or replayed partials cannot double-count.  Sums over
partitions are taken when reading, **in partition order**, so every worker that holds the same
partials computes bit-identical merged values, whatever order they arrived in.

Costs, and why the view is built the way it is (the worker puts after every batch, on the event
loop that also answers ``/candidates``):

- **popularity**: one numpy row per source partition (anchor, short, long, count, present) over
  the view's items.  A put writes the partial into its partition's row and marks the item; the
  merged values of the marked items are recomputed all at once (numpy over partitions, the
  factors ``2**((anchor - top)/H)`` by Python's ``**``, exactly as a per-item merge computes
  them, so the floats are the same bit for bit) by :meth:`SignalView.merge`, which the batch
  step calls once after its puts (so no request pays it), or else by the next read.
- **co-visitation**: merged when read, then cached until a put touches the item again
  (:meth:`SignalView.put_local`, :meth:`SignalView.put_covis`, :meth:`SignalView.detach`).
  A partition this process owns is registered with :meth:`SignalView.put_local`: its partials
  are taken from the live partition state at that read, not copied after every batch.  Which
  partitions hold an item live, and whether its merged row is stale, are columns (one flag per
  partition and item), not Python objects per item: the view spans the whole catalogue on every
  worker, and a dict per item cost ~300 B of it.
- **trending / popular**: the ranked list is cached per (kind, ``now``) until the next put; a
  smaller ``k`` is served from a longer cached list (the order is total: score desc, id asc).

The view reads the partition state only through the small protocols below
(:class:`LocalSignals`), so this module does not import :mod:`stream.core.signals`
(which re-exports :class:`SignalView` and puts into it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from stream.core.rows import row_ints, unique_ints
from stream.core.signal_params import CovisPartial, PopPartial, SignalParams, decay, read_pop

__all__ = ["CovisSource", "LocalSignals", "PopSource", "SignalView"]

_INT64_MIN = np.iinfo(np.int64).min
#: single puts (the signals topic) merged together at the latest after this many
_MERGE_EVERY = 4096


class PopSource(Protocol):
    """A partition's popularity (``stream.core.signals.ItemPopularity``)."""

    def partial(self, item: str) -> PopPartial | None: ...


class CovisSource(Protocol):
    """A partition's co-visitation (``stream.core.signals.CoVisitation``)."""

    def partial(self, item: str) -> CovisPartial | None: ...


class LocalSignals(Protocol):
    """The live signals of a partition this process owns (``stream.core.signals.Signals``)."""

    @property
    def popularity(self) -> PopSource: ...

    @property
    def covis(self) -> CovisSource: ...


def _rank_key(kv: tuple[str, float]) -> tuple[float, str]:
    return (-kv[1], kv[0])


class SignalView:
    """Merged read view over the partials of every source partition (module docstring)."""

    def __init__(self, params: SignalParams | None = None) -> None:
        self.params = params or SignalParams()
        # items: one column each, in order of first put
        self._index: dict[str, int] = {}
        self._names: list[str] = []
        # merged popularity per item (current except for the columns in _pop_dirty)
        cap = 64
        self._anchor = np.zeros(cap, dtype=np.int64)
        self._short = np.zeros(cap, dtype=np.float64)
        self._long = np.zeros(cap, dtype=np.float64)
        self._count = np.zeros(cap, dtype=np.int64)
        # popularity partials: one row per source partition ("slot", in order of first put)
        self._slots: dict[int, int] = {}
        self._sum_order = np.zeros(0, dtype=np.intp)  # slots in partition order: how sums go
        self._p_anchor = np.zeros((0, cap), dtype=np.int64)
        self._p_short = np.zeros((0, cap), dtype=np.float64)
        self._p_long = np.zeros((0, cap), dtype=np.float64)
        self._p_count = np.zeros((0, cap), dtype=np.int64)
        self._p_has = np.zeros((0, cap), dtype=np.bool_)
        # co-visitation read live: the partition's source (put_local) holds the item's row
        self._p_live = np.zeros((0, cap), dtype=np.bool_)
        self._slot_part: list[int] = []  # slot -> partition
        # columns whose merged popularity is out of date (put_local's arrays, put_pop's ints)
        self._pop_dirty: list[np.ndarray] = []
        self._pop_dirty_one: list[int] = []
        # co-visitation
        self._cov_parts: dict[str, dict[int, CovisPartial]] = {}
        self._cov_merged: dict[str, tuple[int, list[tuple[str, float]]]] = {}
        # items whose merged neighbours must be recomputed (a flag per column)
        self._cov_stale = np.zeros(cap, dtype=np.bool_)
        # partition -> its live source (put_local); which items it holds is _p_live. Columns,
        # not a dict per item: at 10^5 items the per-item dicts and the stale set cost ~300 B
        # an item on every worker (issue 12)
        self._cov_src: dict[int, CovisSource] = {}
        # kind -> (version, now, k asked, ranked list)
        self._ranked_cache: dict[str, tuple[int, float, int, list[tuple[str, float]]]] = {}
        self.version = 0  # bumped by every put: lets callers cache reads

    # -- storage ----------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = len(self._anchor)
        if need <= cap:
            return
        new = cap
        while new < need:
            new *= 2
        for attr in ("_anchor", "_short", "_long", "_count", "_cov_stale"):
            old = getattr(self, attr)
            arr = np.zeros(new, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, attr, arr)
        for attr in ("_p_anchor", "_p_short", "_p_long", "_p_count", "_p_has", "_p_live"):
            old = getattr(self, attr)
            arr = np.zeros((old.shape[0], new), dtype=old.dtype)
            arr[:, :cap] = old
            setattr(self, attr, arr)

    def _row(self, item: str) -> int:
        r = self._index.get(item)
        if r is None:
            r = self._index[item] = row_ints(len(self._names) + 1)[len(self._names)]
            self._names.append(item)
            self._grow(r + 1)
        return r

    def _rows(self, items: Sequence[str]) -> np.ndarray:
        index = self._index
        rows = np.fromiter((index.get(i, -1) for i in items), dtype=np.intp, count=len(items))
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            for k in missing.tolist():
                rows[k] = self._row(items[k])
        return rows

    def _slot(self, partition: int) -> int:
        s = self._slots.get(partition)
        if s is None:
            s = self._slots[partition] = len(self._slots)
            self._slot_part.append(partition)
            for attr in ("_p_anchor", "_p_short", "_p_long", "_p_count", "_p_has", "_p_live"):
                old = getattr(self, attr)
                setattr(self, attr, np.vstack([old, np.zeros((1, old.shape[1]), old.dtype)]))
            self._sum_order = np.array([self._slots[p] for p in sorted(self._slots)],
                                       dtype=np.intp)
        return s

    # -- writes ---------------------------------------------------------------------------
    def put_pop(self, partition: int, item: str, partial: PopPartial | None) -> None:
        """Replace ``partition``'s popularity partial of ``item`` (None deletes it)."""
        r = self._row(item)
        s = self._slot(partition)
        if partial is None:
            self._p_has[s, r] = False
            self._p_anchor[s, r] = 0
            self._p_short[s, r] = self._p_long[s, r] = 0.0
            self._p_count[s, r] = 0
        else:
            a, sh, lg, c = partial
            self._p_anchor[s, r] = int(a)
            self._p_short[s, r] = float(sh)
            self._p_long[s, r] = float(lg)
            self._p_count[s, r] = int(c)
            self._p_has[s, r] = True
        self._pop_dirty_one.append(r)
        if len(self._pop_dirty_one) >= _MERGE_EVERY:  # bounded without reads, too
            self._merge_pop()
        self.version += 1

    def put_covis(self, partition: int, item: str, partial: CovisPartial | None) -> None:
        """Replace ``partition``'s co-visitation partial of ``item`` (None deletes it)."""
        if partial is not None:
            a, nbs, vals = partial
            if len(nbs) != len(vals):
                raise ValueError(f"co-visitation partial of {item!r}: {len(nbs)} neighbours, "
                                 f"{len(vals)} values")
        r = self._row(item)
        s = self._slots.get(partition)
        if s is not None:
            self._p_live[s, r] = False
        if partial is None:
            parts = self._cov_parts.get(item)
            if parts is not None:
                parts.pop(partition, None)
        else:
            self._cov_parts.setdefault(item, {})[partition] = (int(a), list(nbs),
                                                               list(map(float, vals)))
        self._cov_stale[r] = True
        self.version += 1

    def put_local(self, partition: int, signals: LocalSignals, items: Iterable[str]) -> int:
        """``partition`` is owned here by ``signals`` and ``items`` changed: their popularity
        partials are put now (one numpy write for all of them; merged by :meth:`merge` or the
        next read), their co-visitation partials are taken from ``signals`` when next read.
        Returns the number of items."""
        items = list(items)
        if not items:
            return 0
        many = getattr(signals.popularity, "partials", None)  # ItemPopularity: columns at once
        if many is not None:
            known, a, sh, lg, c = many(items)
        else:
            partial = signals.popularity.partial
            got = [(it, pp) for it in items if (pp := partial(it)) is not None]
            known = [it for it, _ in got]
            a, sh, lg, c = zip(*(pp for _, pp in got)) if got else ((), (), (), ())
        s = self._slot(partition)
        if known:
            r = self._rows(known)
            self._p_anchor[s, r] = np.asarray(a, dtype=np.int64)
            self._p_short[s, r] = np.asarray(sh, dtype=np.float64)
            self._p_long[s, r] = np.asarray(lg, dtype=np.float64)
            self._p_count[s, r] = np.asarray(c, dtype=np.int64)
            self._p_has[s, r] = True
            self._pop_dirty.append(r)
        self._cov_src[partition] = signals.covis
        rows = self._rows(items)
        self._p_live[s, rows] = True
        self._cov_stale[rows] = True
        self.version += 1
        return len(items)

    def detach(self, partition: int) -> None:
        """``partition`` left this process: freeze its live co-visitation partials as they are."""
        s = self._slots.get(partition)
        src = self._cov_src.pop(partition, None)
        if s is None or src is None:
            return
        names = self._names
        for r in np.flatnonzero(self._p_live[s, :len(names)]).tolist():
            self.put_covis(partition, names[r], src.partial(names[r]))

    def extend(self, partials: Iterable[tuple[str, int, str, Any]]) -> None:
        """Put many ``(kind, partition, item, partial)`` with kind "pop" or "covis"."""
        for kind, part, item, partial in partials:
            if kind == "pop":
                self.put_pop(part, item, partial)
            elif kind == "covis":
                self.put_covis(part, item, partial)
            else:
                raise ValueError(f"unknown partial kind {kind!r} (want 'pop' or 'covis')")

    # -- merging ----------------------------------------------------------------------------
    def merge(self) -> None:
        """Merge the popularity partials put since the last merge (reads merge first, too: this
        only chooses when the work is done)."""
        self._merge_pop()

    def _merge_pop(self) -> None:
        """Recompute the merged popularity of the columns put since the last merge.

        Per item: anchor = the newest partition anchor; short / long = the sum, in partition
        order, of each partition's value times ``2.0 ** ((anchor_p - anchor) / H)`` (Python's
        ``**``: numpy's SIMD ``power`` can differ in the last bit); count = the sum of counts.
        An item no partition holds reads 0."""
        if not self._pop_dirty and not self._pop_dirty_one:
            return
        dirty, self._pop_dirty = self._pop_dirty, []
        if self._pop_dirty_one:
            dirty.append(unique_ints(np.array(self._pop_dirty_one, dtype=np.intp)))
            self._pop_dirty_one = []
        # a column put twice is merged twice, to the same values
        rows = dirty[0] if len(dirty) == 1 else np.concatenate(dirty)
        order = self._sum_order
        at = np.ix_(order, rows)
        has = self._p_has[at]
        anc = self._p_anchor[at]
        top = np.where(has, anc, _INT64_MIN).max(axis=0)
        top[top == _INT64_MIN] = 0
        # An absent partial is all zeros with factor 1, so it adds exactly 0.0 below.
        fs = np.ones(anc.shape, dtype=np.float64)
        fl = np.ones(anc.shape, dtype=np.float64)
        off = has & (anc != top)  # the newest partition's factor is exactly 1
        if off.any():
            d = (anc - top)[off].astype(np.float64)
            p = self.params
            fs[off] = [2.0 ** v for v in (d / p.pop_short_half_life_ms).tolist()]
            fl[off] = [2.0 ** v for v in (d / p.pop_long_half_life_ms).tolist()]
        vs = self._p_short[at] * fs
        vl = self._p_long[at] * fl
        short = np.zeros(rows.size, dtype=np.float64)
        long = np.zeros(rows.size, dtype=np.float64)
        for j in range(order.size):  # partition order: the same floats on every worker
            short += vs[j]
            long += vl[j]
        self._anchor[rows] = top
        self._short[rows] = short
        self._long[rows] = long
        self._count[rows] = self._p_count[at].sum(axis=0)

    def _merge_covis(self, item: str) -> tuple[int, list[tuple[str, float]]] | None:
        r = self._index[item]
        self._cov_stale[r] = False
        parts = self._cov_parts.get(item)
        for s in np.flatnonzero(self._p_live[:, r]).tolist():
            part = self._slot_part[s]
            cp = self._cov_src[part].partial(item)
            if cp is not None:
                if parts is None:
                    parts = self._cov_parts[item] = {}
                parts[part] = cp
            elif parts is not None:
                parts.pop(part, None)
        if not parts:
            self._cov_parts.pop(item, None)
            self._cov_merged.pop(item, None)
            return None
        if len(parts) == 1:
            ((a, nbs, vals),) = parts.values()
            merged = (a, list(zip(nbs, vals)))
        else:
            top = max(v[0] for v in parts.values())
            h = self.params.covis_half_life_ms
            acc: dict[str, float] = {}
            for a, nbs, vals in (parts[k] for k in sorted(parts)):  # arrival order irrelevant
                f = 2.0 ** ((a - top) / h)
                for k, v in zip(nbs, vals):
                    acc[k] = acc.get(k, 0.0) + v * f
            merged = (top, sorted(acc.items(), key=_rank_key))
        self._cov_merged[item] = merged
        return merged

    # -- reads ----------------------------------------------------------------------------
    def popularity(self, items: Sequence[str], now: float) -> tuple[np.ndarray, np.ndarray]:
        """(short, long) merged popularity of each item decayed to ``now`` (0 when unknown)."""
        self._merge_pop()
        return read_pop(self._index, self._anchor, self._short, self._long, self.params, items,
                        now)

    def counts(self, items: Sequence[str]) -> np.ndarray:
        """Undecayed event counts (int64), 0 when unknown."""
        self._merge_pop()
        index = self._index
        rows = np.fromiter((index.get(i, -1) for i in items), dtype=np.int64, count=len(items))
        return np.where(rows >= 0, self._count[np.maximum(rows, 0)], 0)

    def _ranked(self, kind: str, now: float, k: int) -> list[tuple[str, float]]:
        n = len(self._names)
        if n == 0 or k <= 0:
            return []
        hit = self._ranked_cache.get(kind)
        # a cached list serves any k up to the one it was made for, or any k when it holds
        # every item with a score > 0 (shorter than asked)
        if hit is not None and hit[0] == self.version and hit[1] == now and (
                k <= hit[2] or len(hit[3]) < hit[2]):
            return hit[3][:k]
        self._merge_pop()
        if kind == "trending":
            values, half_life = self._short, self.params.pop_short_half_life_ms
        else:
            values, half_life = self._long, self.params.pop_long_half_life_ms
        score = values[:n] * decay(self._anchor[:n], now, half_life)
        pos = np.flatnonzero(score > 0)
        if pos.size > k:
            # keep every item tied with the k-th score, then order exactly (score desc, id asc)
            kth = np.partition(score[pos], pos.size - k)[pos.size - k]
            pos = pos[score[pos] >= kth]
        names = self._names
        ranked = sorted(((names[i], float(score[i])) for i in pos.tolist()), key=_rank_key)[:k]
        self._ranked_cache[kind] = (self.version, now, k, ranked)
        return ranked[:]

    def trending(self, now: float, k: int) -> list[tuple[str, float]]:
        """Top ``k`` items by short-half-life popularity as of ``now`` (score desc, id asc)."""
        return self._ranked("trending", now, k)

    def popular(self, now: float, k: int) -> list[tuple[str, float]]:
        """Top ``k`` items by long-half-life popularity as of ``now``."""
        return self._ranked("popular", now, k)

    def neighbours(self, item: str, now: float, m: int | None = None) -> list[tuple[str, float]]:
        """Merged top ``m`` (default covis_top_m) co-visitation neighbours decayed to ``now``
        (merged again only when a put touched ``item`` since it was last read)."""
        r = self._index.get(item)
        if r is not None and self._cov_stale[r]:
            merged = self._merge_covis(item)
        else:
            merged = self._cov_merged.get(item)
        if merged is None:
            return []
        a, ranked = merged
        f = float(decay(a, now, self.params.covis_half_life_ms))
        k = self.params.covis_top_m if m is None else m
        return [(nb, v * f) for nb, v in ranked[:k]]

    def newest_ts(self) -> int | None:
        """Newest popularity anchor over all partials (the merged view's event time), or None."""
        self._merge_pop()
        n = len(self._names)
        held = self._p_has[:, :n].any(axis=0)
        return int(self._anchor[:n][held].max()) if held.any() else None

    def items(self) -> list[str]:
        """Items with any popularity partial (in order of first put)."""
        names = self._names
        held = self._p_has[:, :len(names)].any(axis=0)
        return [names[r] for r in np.flatnonzero(held).tolist()]

    def partitions(self) -> set[int]:
        out = {p for p, s in self._slots.items() if self._p_has[s].any()}
        for cparts in self._cov_parts.values():
            out.update(cparts)
        n = len(self._names)
        out.update(self._slot_part[s] for s in range(len(self._slot_part))
                   if self._p_live[s, :n].any())
        return out
