"""Incremental snapshots: what changed in a partition since its last snapshot (a *delta*), and
the state of a base snapshot plus its deltas.

A delta is a document like :meth:`PartitionState.to_dict`'s, packed the same way
(``stream.worker.snapshots.pack``: data only), holding

- the partition-wide parts that are small, in full: ``next_offset``, outcome and DLQ
  counters, bandit arms, parked events, park clock, watermark, ``newest_ts``, ``expired``,
  segment centroids;
- the dedupe window as a ring: the entries appended since the last snapshot and the window's
  length (it is always the newest ``len`` entries of everything ever appended), its stale counts
  and bare keys in full;
- for each keyed table (profiles, user stats, interests, recent items, rate-cap windows, DLQ
  keys and tombstones per user; popularity and co-visitation rows per item): the complete rows
  of the keys changed since the last snapshot (``rows``, in the table's own ``state()``
  format), the changed keys that are gone (``removed``: forgotten, expired), and ``tail``: how
  many of the rows (the last ones) go to the end of the table's order.

Order.  Every table keeps its keys in insertion order (a dict), and ``to_dict`` writes them in
that order, so a loaded state equals the written one bit for bit only if the order is rebuilt
too.  A key inserted since the last snapshot (new, or removed and added again) sits after every
key that was not: the newest keys of the table, all of them changed.  So the writer walks the
table from its newest key while the keys are changed (:func:`_split`): those rows are removed
and appended again in order when loading, every other changed row is replaced where it is.  The
walk costs the number of changed keys, like everything else here: a delta's bytes and time are
proportional to the changes, not to the partition.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from stream.core.dedupe import DedupeWindow
from stream.worker.privacy import tombstone_key
from stream.worker.state import SNAPSHOT_VERSION, PartitionState

__all__ = ["KIND_DELTA", "UNPUBLISHED", "continues", "delta_doc", "mark_serialised", "merge"]

KIND_DELTA = "delta"

#: the document key of the signal partials not yet published when it was captured (a list of
#: item ids; stream.worker.pipeline): taken from the newest document when blobs are merged
UNPUBLISHED = "unpublished"

# the parts written in full by a delta (the newest delta's replace the base's)
_WHOLE = ("partition", "next_offset", "model", "arms", "parked", "park_clock", "outcomes", "dlq",
          "newest_ts", "watermark", "expired", "segments")

# keyed tables with rows in arrays: where they sit in to_dict, their key field, and their
# ragged fields (a lengths field per row and the flat fields it cuts)
_RAGGED: dict[str, tuple[str, tuple[str, ...]]] = {
    "recent": ("lengths", ("ts", "items", "weights")),
    "covis": ("lengths", ("neighbours", "values")),
}
_ROW_TABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "profiles": (("profiles",), "users"),
    "users": (("users",), "users"),
    "interests": (("interests",), "users"),
    "recent": (("signals", "recent"), "users"),
    "popularity": (("signals", "popularity"), "items"),
    "covis": (("signals", "covis"), "items"),
}
_DICT_TABLES = ("rate", "dlq_keys", "tombstones")


def _split(newest_first: Iterator[str], contains: Callable[[str], bool], changed: set[str]
           ) -> tuple[list[str], list[str], int]:
    """(rows to write: replaced-in-place keys then the tail in table order, removed keys,
    tail length) for a table whose changed keys are ``changed``."""
    # set operations and takewhile: no Python-level step per changed key (every key of a
    # table is in the tail when all of them changed)
    tail = list(itertools.takewhile(changed.__contains__, newest_first))
    tail.reverse()
    rest = changed.difference(tail)
    present = sorted(filter(contains, rest)) if rest else []
    removed = sorted(rest.difference(present)) if rest else []
    return present + tail, removed, len(tail)


def _dict_part(d: dict[str, Any], changed: set[str]) -> dict[str, Any]:
    order, removed, tail = _split(reversed(d), d.__contains__, changed)
    return {"rows": {k: d[k] for k in order}, "removed": removed, "tail": tail}


def delta_doc(st: PartitionState) -> dict[str, Any]:
    """The delta of ``st`` since its last serialised snapshot (``st.journal``)."""
    j = st.journal
    users = j.users
    full = {
        "partition": st.partition, "next_offset": st.next_offset, "model": st.model,
        "arms": st.arms.state(), "parked": [p.to_tuple() for p in st.parked],
        "park_clock": st.park_clock, "outcomes": dict(st.outcomes), "dlq": dict(st.dlq),
        "newest_ts": st.newest_ts, "watermark": st.watermark.state(), "expired": st.expired,
        "segments": None if st.segments is None else st.segments.state(),
    }
    tables: dict[str, Any] = {}
    sig = st.signals
    row_objs: dict[str, tuple[Any, set[str]]] = {
        "profiles": (st.profiles, users), "users": (st.users, users),
        "recent": (sig.recent, users), "popularity": (sig.popularity, sig.popularity.dirty),
        "covis": (sig.covis, sig.covis.dirty)}
    if st.interests is not None:
        row_objs["interests"] = (st.interests, users)
    for name, (obj, changed) in row_objs.items():
        order, removed, tail = _split(obj.keys_newest_first(), obj.__contains__, changed)
        rows = obj.state_of(order) if hasattr(obj, "state_of") else obj.state(only=order)
        tables[name] = {"rows": rows, "removed": removed, "tail": tail}
    if "interests" not in tables:
        tables["interests"] = None
    tables["rate"] = _dict_part(st.rate.windows, users)
    tables["dlq_keys"] = _dict_part(st.dlq_keys, users)
    # tombstones are only ever added, so none can have gone when there are none now; their
    # keys are hashes (a sha256 per changed user): skipped in the usual case of no forgets
    tkeys = {tombstone_key(u) for u in users} if st.tombstones else set()
    tables["tombstones"] = _dict_part(st.tombstones, tkeys)
    return {"version": SNAPSHOT_VERSION, "kind": KIND_DELTA, **full,
            "dedupe": st.dedupe.delta(st.dedupe.appended - j.dedupe_mark),
            "tables": tables}


def mark_serialised(st: PartitionState, parent: str) -> None:
    """``st`` was serialised as the blob of sha256 ``parent``: the next delta starts here."""
    j = st.journal
    j.users = set()
    j.erased = False
    j.dedupe_mark = st.dedupe.appended
    j.parent = parent
    st.signals.popularity.dirty = set()
    st.signals.covis.dirty = set()


def continues(doc: Mapping[str, Any], st: PartitionState) -> bool:
    """Whether ``st``, loaded from ``doc``, can be written as deltas on it: not when loading
    reshaped a table's rows (multi-interest profiles refitted to another
    ``PROFILES_INTERESTS_K``); the next snapshot is then a base."""
    theirs = doc.get("interests")
    if theirs is None or st.interests is None:
        return True
    # float16 "means" (before int8 codes) were re-encoded on load: the next one is a base too
    return int(theirs.get("k", -1)) == st.interests.k and "codes" in theirs


# ------------------------------------------------------------------------------- loading
def _get(doc: Mapping[str, Any], path: Sequence[str]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _set(doc: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for p in path[:-1]:
        doc = doc[p]
    doc[path[-1]] = value


def _gather(values: list[Any], lengths: list[int], gidx: np.ndarray) -> Any:
    """``values`` (one sequence per source) concatenated, taken at global indices ``gidx``.
    Arrays are copied once, straight into the result, run by run where the rows of a source
    stay in order (the base's, between the few changed rows): no concatenated copy."""
    if not any(isinstance(v, np.ndarray) for v in values):
        flat = [x for v in values for x in v]
        return [flat[g] for g in gidx.tolist()]
    arrays = [np.asarray(v) for v in values]
    ref = next((a for a, n in zip(arrays, lengths) if n), arrays[0])
    out = np.empty((len(gidx), *ref.shape[1:]), dtype=ref.dtype)
    starts = np.cumsum([0, *lengths])
    src = np.searchsorted(starts, gidx, side="right") - 1
    for s, arr in enumerate(arrays):
        pos = np.flatnonzero(src == s)
        if not pos.size:
            continue
        rows = gidx[pos] - starts[s]
        cut = np.flatnonzero((np.diff(pos) != 1) | (np.diff(rows) != 1)) + 1
        if len(cut) * 64 > len(pos):  # scattered: one fancy copy
            out[pos] = arr[rows]
            continue
        for a, b in zip([0, *cut.tolist()], [*cut.tolist(), len(pos)]):
            p0, r0 = int(pos[a]), int(rows[a])
            out[p0:p0 + b - a] = arr[r0:r0 + b - a]
    return out


def _merge_rows(base: dict[str, Any] | None, parts: list[dict[str, Any] | None], key: str,
                ragged: tuple[str, tuple[str, ...]] | None) -> dict[str, Any] | None:
    """A row table's state after ``parts`` (each ``{"rows", "removed", "tail"}``, oldest first)
    on ``base`` (both in the table's ``state()`` format)."""
    if parts and parts[-1] is None:
        return None  # the table is off now (interests)
    live = [p for p in parts if p is not None]
    if base is None:
        if not live:
            return None
        base = {k: (v[:0] if isinstance(v, (list, np.ndarray)) else v)
                for k, v in live[0]["rows"].items()}
    sources = [base] + [p["rows"] for p in live]
    final: dict[str, tuple[int, int]] = {k: (0, i) for i, k in enumerate(base[key])}
    for s, p in enumerate(live, 1):
        keys = list(p["rows"][key])
        for k in p["removed"]:
            final.pop(k, None)
        for k in keys[len(keys) - int(p["tail"]):]:
            final.pop(k, None)
        for i, k in enumerate(keys):
            final[k] = (s, i)
    counts = [len(src[key]) for src in sources]
    offsets = np.cumsum([0, *counts])[:-1]
    where = np.array(list(final.values()), dtype=np.int64).reshape(-1, 2)
    gidx = offsets[where[:, 0]] + where[:, 1]
    flat_fields: tuple[str, ...] = ragged[1] if ragged else ()
    out: dict[str, Any] = {}
    newest = sources[-1]
    for f, v in newest.items():
        if f in flat_fields:
            continue
        if isinstance(v, (list, np.ndarray)):
            out[f] = _gather([src[f] for src in sources], counts, gidx)
        else:
            out[f] = v
    out[key] = list(final)
    if ragged:
        lf = ragged[0]
        lens = [np.asarray(src[lf], dtype=np.int64).reshape(-1) for src in sources]
        all_lens = np.concatenate(lens)
        starts = np.concatenate([np.cumsum(x) - x for x in lens])
        flat_off = np.cumsum([0, *(int(x.sum()) for x in lens)])[:-1]
        src_of = np.repeat(np.arange(len(sources)), counts)
        g_start = starts[gidx] + flat_off[src_of[gidx]]
        g_len = all_lens[gidx]
        total = int(g_len.sum())
        out_start = np.cumsum(g_len) - g_len
        fidx = np.arange(total, dtype=np.int64) + np.repeat(g_start - out_start, g_len)
        flat_counts = [int(x.sum()) for x in lens]
        for f in flat_fields:
            out[f] = _gather([src[f] for src in sources], flat_counts, fidx)
    return out


def _merge_dict(base: dict[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    rows = part["rows"]
    keys = list(rows)
    for k in [*part["removed"], *keys[len(keys) - int(part["tail"]):]]:
        out.pop(k, None)
    out.update(rows)
    return out


def merge(base: dict[str, Any], deltas: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The ``to_dict`` document of a base snapshot's document with ``deltas`` applied in
    order (ValueError when one is not a delta of this format)."""
    deltas = list(deltas)
    if not deltas:
        return base
    for d in deltas:
        if d.get("kind") != KIND_DELTA or d.get("version") != base.get("version"):
            raise ValueError(f"not a delta of snapshot version {base.get('version')}")
    out = dict(base)
    out["signals"] = dict(base.get("signals") or {})
    for f in _WHOLE:
        out[f] = deltas[-1][f]
    # beside the state (stream.worker.sharing): as of the newest document, absent if it has none
    out.pop(UNPUBLISHED, None)
    if UNPUBLISHED in deltas[-1]:
        out[UNPUBLISHED] = deltas[-1][UNPUBLISHED]
    dd = base["dedupe"]
    for d in deltas:
        dd = DedupeWindow.merge_delta(dd, d["dedupe"])
    out["dedupe"] = dd
    for name, (path, key) in _ROW_TABLES.items():
        try:
            b = _get(out, path)
        except KeyError:
            b = None
        _set(out, path, _merge_rows(b, [d["tables"][name] for d in deltas], key,
                                    _RAGGED.get(name)))
    for name in _DICT_TABLES:
        t = dict(base.get(name) or {})
        for d in deltas:
            t = _merge_dict(t, d["tables"][name])
        out[name] = t
    return out
