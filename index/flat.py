"""The ``flat`` index kind: exact inner product with string ids and in-place row updates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import faiss
import numpy as np

from stream.core.errors import IndexShapeError


def checked(arr: np.ndarray, dim: int, name: str, what: str, allow_1d: bool = False
            ) -> np.ndarray:
    """``arr`` as contiguous float32 [n, dim]; an IndexShapeError naming the expected and
    actual shape, a non-numeric dtype or the first row with NaN/inf."""
    a = np.asarray(arr)
    label = name or "index"
    given = list(a.shape)  # report the caller's shape, not our reshaped one
    if allow_1d and a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2 or a.shape[1] != dim:
        expected = f"[n, {dim}]" + (f" or [{dim}]" if allow_1d else "")
        raise IndexShapeError(f"{label}: {what} must have shape {expected}, got {given}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise IndexShapeError(f"{label}: {what} must be real numbers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).argmax())
        raise IndexShapeError(f"{label}: {what} row {bad} has NaN or inf (after float32 cast)")
    return a


class FlatIndex:
    """`faiss.IndexFlatIP` plus a string-id <-> int64-slot map.

    Upserts of known ids overwrite their row in FAISS storage in place (no rebuild);
    removed rows are zeroed and their slots reused by later inserts. Search over-fetches
    so free and excluded slots never reduce the number of results.

    Not thread-safe: the worker calls it from a single event loop.
    """

    def __init__(self, dim: int, name: str = "") -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.name = name
        self._index = faiss.IndexFlatIP(dim)
        self._slot_of: dict[str, int] = {}
        self._id_at: list[str | None] = []  # slot -> id, None for free slots
        self._free: list[int] = []
        self._view = np.empty((0, dim), dtype=np.float32)

    @property
    def factory(self) -> str:
        """The FAISS factory string searches use (always exact)."""
        return "Flat"

    def nbytes(self) -> int:
        """Bytes of the stored vectors (all slots, free ones included)."""
        return int(self._index.ntotal) * self.dim * 4

    # -- storage ---------------------------------------------------------------
    def _refresh_view(self) -> None:
        """Writable view of the flat codes; must be re-taken after add() (realloc)."""
        n = self._index.ntotal
        if n == 0:
            self._view = np.empty((0, self.dim), dtype=np.float32)
        else:
            flat = faiss.rev_swig_ptr(self._index.get_xb(), n * self.dim)
            self._view = flat.reshape(n, self.dim)

    def _check(self, arr: np.ndarray, what: str, allow_1d: bool = False) -> np.ndarray:
        return checked(arr, self.dim, self.name, what, allow_1d)

    # -- mutation --------------------------------------------------------------
    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or overwrite vectors; within one call the last duplicate id wins."""
        if isinstance(ids, str):
            raise TypeError("ids must be a sequence of str, not a single str")
        ids = list(ids)
        vecs = self._check(vectors, "vectors")
        if len(ids) != vecs.shape[0]:
            raise IndexShapeError(
                f"{self.name or 'index'}: {len(ids)} ids but vectors has shape {list(vecs.shape)}"
            )
        last: dict[str, int] = {}
        for row, id_ in enumerate(ids):
            if not isinstance(id_, str):
                raise TypeError(f"id at position {row} is {type(id_).__name__}, expected str")
            last[id_] = row  # later duplicates overwrite earlier ones
        new_rows: list[int] = []
        new_ids: list[str] = []
        old_slots: list[int] = []
        old_rows: list[int] = []
        slot_of = self._slot_of
        for id_, row in last.items():
            slot = slot_of.get(id_)
            if slot is None and self._free:
                slot = self._free.pop()
                slot_of[id_] = slot
                self._id_at[slot] = id_
            if slot is None:
                new_ids.append(id_)
                new_rows.append(row)
            else:
                old_slots.append(slot)
                old_rows.append(row)
        if old_slots:  # one vectorised scatter into FAISS's storage
            self._view[old_slots] = vecs[old_rows]
        if new_ids:
            start = self._index.ntotal
            self._index.add(vecs[new_rows])
            for offset, id_ in enumerate(new_ids):
                self._slot_of[id_] = start + offset
                self._id_at.append(id_)
            self._refresh_view()

    def remove(self, ids: Iterable[str]) -> int:
        """Drop ids (unknown ones are ignored); returns how many were live."""
        if isinstance(ids, str):
            raise TypeError("ids must be an iterable of str, not a single str")
        removed = 0
        for id_ in ids:
            slot = self._slot_of.pop(id_, None)
            if slot is None:
                continue
            self._view[slot] = 0.0  # scores 0 until reused; filtered in search anyway
            self._id_at[slot] = None
            self._free.append(slot)
            removed += 1
        return removed

    # -- queries ---------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[set[str]] | None = None
    ) -> list[list[tuple[str, float]]]:
        """Per query, up to k (id, inner product) pairs, best first."""
        q = self._check(queries, "queries", allow_1d=True)
        m = q.shape[0]
        if exclude is not None and len(exclude) != m:
            raise ValueError(f"exclude has {len(exclude)} sets for {m} queries")
        if k <= 0 or not self._slot_of or m == 0:
            return [[] for _ in range(m)]
        # Free slots and excluded ids can occupy the top ranks; fetch enough extra
        # that k valid hits always survive filtering.
        extra = len(self._free) + (max((len(e) for e in exclude), default=0) if exclude else 0)
        fetch = min(self._index.ntotal, k + extra)
        scores, slots = self._index.search(q, fetch)
        results: list[list[tuple[str, float]]] = []
        for qi in range(m):
            skip = exclude[qi] if exclude is not None else None
            hits: list[tuple[str, float]] = []
            for score, slot in zip(scores[qi].tolist(), slots[qi].tolist()):
                if slot < 0:
                    break
                id_ = self._id_at[slot]
                if id_ is None or (skip and id_ in skip):
                    continue
                hits.append((id_, score))
                if len(hits) == k:
                    break
            results.append(hits)
        return results

    def get_many(self, ids: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors of ``ids`` (zero rows for unknown ids) and the positions that are unknown."""
        slot_of = self._slot_of
        slots = [slot_of.get(i, -1) for i in ids]
        missing = [pos for pos, slot in enumerate(slots) if slot < 0]
        if not missing:
            return self._view[slots], missing
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        known = [pos for pos, slot in enumerate(slots) if slot >= 0]
        if known:
            out[known] = self._view[[slots[pos] for pos in known]]
        return out, missing

    def get(self, id: str) -> np.ndarray | None:
        """Copy of the stored vector, or None if the id is not live."""
        slot = self._slot_of.get(id)
        return None if slot is None else self._view[slot].copy()

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, id: object) -> bool:
        return id in self._slot_of

    def ids(self) -> list[str]:
        """Live ids in slot order."""
        return [i for i in self._id_at if i is not None]

    # -- snapshots ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Compact snapshot of live rows: {"dim", "name", "ids", "vectors" [n, dim] float32}."""
        live = [s for s, i in enumerate(self._id_at) if i is not None]
        return {
            "dim": self.dim,
            "name": self.name,
            "ids": [self._id_at[s] for s in live],
            "vectors": self._view[live].copy() if live else np.empty((0, self.dim), np.float32),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FlatIndex:
        """Rebuild from state(); the result has no free slots."""
        idx = cls(int(state["dim"]), name=str(state.get("name", "")))
        ids = list(state["ids"])
        if ids:
            idx.upsert(ids, state["vectors"])
        elif np.asarray(state["vectors"]).size:
            shape = list(np.shape(state["vectors"]))
            raise IndexShapeError(f"state has no ids but vectors of shape {shape}")
        return idx
