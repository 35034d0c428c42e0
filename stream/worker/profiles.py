"""The partitions a worker owns and the users index over their profiles, changed together.

Every change to a profile goes through :class:`ProfileStore` (a partition loaded or dropped, a
batch applied, a user forgotten, idle users expired), which updates the users index in the same
call: the index never disagrees with the state it is built from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from index import IndexSpec, VectorIndex, make_index
from stream.core.events import Event
from stream.worker.state import PartitionState

__all__ = ["ProfileStore"]


class ProfileStore:
    """Owned partition states plus the ``users`` index of their profile vectors.

    Given an :class:`IndexSpec`, the index is made with the profile tables as its ``source``:
    an IVF with compressed codes then re-ranks from the tables' float32 unit vectors and keeps
    no copy of its own (issue 12: one copy of each vector; below the exact threshold it keeps
    an exact matrix, at most ``exact_below`` rows)."""

    def __init__(self, dim: int, index: VectorIndex | IndexSpec | None = None) -> None:
        self.dim = dim
        self._states: dict[int, PartitionState] = {}
        if isinstance(index, IndexSpec):
            index = index.make(dim, "users", source=self.exact_vectors)
        self.index: VectorIndex = index if index is not None else make_index(dim, name="users")

    # -- partitions --------------------------------------------------------------------
    @property
    def states(self) -> Mapping[int, PartitionState]:
        """Owned partitions (read-only view: add and drop them through this store)."""
        return self._states

    def partitions(self) -> list[PartitionState]:
        """The owned partitions' states, by partition."""
        return [self._states[p] for p in sorted(self._states)]

    def __contains__(self, partition: object) -> bool:
        return partition in self._states

    def get(self, partition: int) -> PartitionState | None:
        return self._states.get(partition)

    def add(self, st: PartitionState) -> None:
        """Own a loaded partition: its users become searchable."""
        self._states[st.partition] = st  # first: the index may read its vectors (source)
        users = st.profiles.users()
        if users:
            self.index.upsert(users, st.profiles.vectors(users))

    def drop(self, partition: int) -> PartitionState | None:
        """Stop owning a partition: its users leave the index."""
        st = self._states.pop(partition, None)
        if st is not None:
            self.index.remove(st.profiles.users())
        return st

    # -- changes -----------------------------------------------------------------------
    def apply(self, work: Mapping[int, tuple[Sequence[Event], np.ndarray]],
              category: Callable[[str], str | None]) -> int:
        """Apply events with their vectors to their partitions' profiles and user stats, then
        update the index once for every touched user; returns how many users were touched."""
        touched_all: list[str] = []
        vectors_all: list[np.ndarray] = []
        for p, (events, vectors) in work.items():
            if not events:
                continue
            st = self._states[p]
            users = [e.user_id for e in events]
            types = [e.type for e in events]
            ts = np.fromiter((e.ts for e in events), dtype=np.int64, count=len(events))
            weights = st.profiles.params.weight_array(types)
            st.journal.touch(users)  # rows the next (incremental) snapshot writes
            touched = st.profiles.apply(users, ts, weights, vectors)
            if st.interests is not None:  # the same events, weights and vectors, offset order
                st.interests.apply(users, ts, weights, vectors)
            item_ids = [e.item_id for e in events]
            st.users.update(users, types, ts, [category(i) if i else None for i in item_ids],
                            item_ids)
            touched_all += touched
            vectors_all.append(st.profiles.vectors(touched))
        if touched_all:
            self.index.upsert(touched_all, np.concatenate(vectors_all))
        return len(touched_all)

    def erase(self, st: PartitionState, user: str) -> None:
        """Every trace of ``user`` in the partition and the index (not the tombstone)."""
        st.erase(user)
        self.index.remove([user])

    def expire(self, st: PartitionState, cutoff_ts: int) -> list[str]:
        """Remove the partition's profiles idle since before ``cutoff_ts`` (event time)."""
        idle = st.profiles.idle(cutoff_ts)
        st.journal.touch(idle)
        for user in idle:
            st.profiles.remove(user)
            st.users.remove(user)
            st.rate.forget(user)
            st.signals.erase(user)
            if st.interests is not None:
                st.interests.remove(user)
        if idle:
            self.index.remove(idle)
            st.expired += len(idle)
        return idle

    # -- reads -------------------------------------------------------------------------
    def owner(self, user: str) -> PartitionState | None:
        """The owned partition holding ``user``'s profile, if any."""
        for st in self._states.values():
            if user in st.profiles:
                return st
        return None

    def exact_vectors(self, users: Sequence[str]) -> np.ndarray:
        """float32 [n, dim] profile vectors of owned ``users`` (zero rows for others): the
        users index's ``source``, read from the partitions' tables (no copy kept)."""
        out = np.zeros((len(users), self.dim), dtype=np.float32)
        states = list(self._states.values())
        if len(states) == 1:
            out[:] = states[0].profiles.vectors(users)
            return out
        by_state: dict[int, list[int]] = {}
        for pos, user in enumerate(users):
            for j, st in enumerate(states):
                if user in st.profiles:
                    by_state.setdefault(j, []).append(pos)
                    break
        for j, where in by_state.items():
            out[where] = states[j].profiles.vectors([users[i] for i in where])
        return out

    def vector(self, user: str) -> np.ndarray | None:
        """The user's profile vector as indexed (None when not owned here)."""
        return self.index.get(user)

    def search(self, vector: np.ndarray, k: int, exclude: set[str] | None = None
               ) -> list[tuple[str, float]]:
        """The ``k`` owned users nearest ``vector`` (inner product), never one of ``exclude``."""
        return self.index.search(vector[None, :], k,
                                 exclude=None if exclude is None else [exclude])[0]

    def indexed(self) -> int:
        """Users in the index."""
        return len(self.index)
