"""Steps of a batch's apply phase made once per partition instead of once per event (issue 14,
point 3: less of our own cost per event).

- :func:`add_to_windows`: per partition, once, the events' users into its journal (the rows
  the next incremental snapshot writes) and their dedupe keys (computed once, by classify) into
  its dedupe window, one vectorised ``DedupeWindow.add_many``, in the order the per-event adds
  made (the window equals one fed event by event: tests/unit/test_columnar_batch.py);
- :func:`mark_journals`: the users of the rejects that have one (rate cap, DLQ keys) and of
  the forgets (their erasure marks them too);
- :func:`check_applicable`: what applying needs, checked for the whole batch at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from stream.core.dedupe import key_rows
from stream.worker.classify import Accepted
from stream.worker.deadletter import DeadLetter
from stream.worker.state import PartitionState

__all__ = ["add_to_windows", "by_partition", "check_applicable", "mark_journals"]

_I64_MIN, _I64_END = -(1 << 63), 1 << 63


def by_partition(accepted: Iterable[Accepted]) -> dict[int, tuple[PartitionState,
                                                                   list[Accepted]]]:
    """The events of each partition, in their order (one pass)."""
    out: dict[int, tuple[PartitionState, list[Accepted]]] = {}
    for a in accepted:
        group = out.get(a.st.partition)
        if group is None:
            out[a.st.partition] = (a.st, [a])
        else:
            group[1].append(a)
    return out


def mark_journals(rejects: Sequence[DeadLetter], forgets: Sequence[Accepted]) -> None:
    """Mark the users of rejects (those with a user) and of forgets in their journals (one
    by one: a set add per event is cheaper than grouping them, and both are rare)."""
    for r in rejects:
        if r.user is not None:
            r.st.journal.users.add(r.user)
    for a in forgets:
        a.st.journal.users.add(a.ev.user_id)


def add_to_windows(*parts: Sequence[Accepted]) -> None:
    """The events of ``parts`` (in that order; every accepted event but the forgets: applied,
    parked, forgotten), per partition: their users into its journal, their keys into its
    dedupe window."""
    for st, group in by_partition(a for part in parts for a in part).values():
        st.journal.touch([a.ev.user_id for a in group])
        st.dedupe.add_many(key_rows([a.key for a in group]))


def check_applicable(live: Sequence[Accepted], vectors: np.ndarray, parked: set[int]) -> None:
    """Finite vectors (parked rows have none yet), times and positions that fit int64: a
    ``ValueError`` naming the first offending record otherwise."""
    if not live:
        return
    ok = np.isfinite(vectors).all(axis=1)
    if parked:
        ok[list(parked)] = True
    if not ok.all():
        bad = np.flatnonzero(~ok)
        a = live[int(bad[0])]
        raise ValueError(f"non-finite vector for partition {a.st.partition} offset "
                         f"{a.offset} ({len(bad)} in the batch)")
    ts = [a.ev.ts for a in live]
    pos = [p for a in live if (p := a.ev.position) is not None]
    if (min(ts) < _I64_MIN or max(ts) >= _I64_END
            or (pos and (min(pos) < _I64_MIN or max(pos) >= _I64_END))):
        for a in live:
            for name, v in (("ts", a.ev.ts), ("position", a.ev.position)):
                if v is not None and not _I64_MIN <= v < _I64_END:
                    raise ValueError(f"{name} {v} does not fit int64 (partition "
                                     f"{a.st.partition} offset {a.offset})")
