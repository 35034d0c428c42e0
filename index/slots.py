"""String ids over int64 slots: the bookkeeping every FAISS index kind shares.

:class:`SlotIndex` keeps the id <-> slot maps and a free list (a removed id's slot is reused by
the next new id), validates what callers pass in (:func:`checked`), and implements the read
side of :class:`index.base.VectorIndex` (``get``, ``get_many``, ``__len__``, ``__contains__``,
``ids``, ``state``, ``from_state``) over one method a kind provides, ``_read(slots)``.  A kind
(``flat.py``, ``ivf.py``) keeps only its storage and search: its ``upsert`` calls
:meth:`SlotIndex._rows_by_id` and :meth:`SlotIndex._assign`, its ``remove``
:meth:`SlotIndex._release`, and then writes the slots to FAISS.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Self

import numpy as np

from stream.core.errors import IndexShapeError

__all__ = ["SlotIndex", "checked"]


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


class SlotIndex:
    """String ids mapped to int64 slots (FAISS labels / storage rows), slots reused after
    removals; a kind subclasses it and implements :meth:`_read`, ``upsert``, ``remove`` and
    ``search``.  Not thread-safe: the worker calls it from a single event loop."""

    def __init__(self, dim: int, name: str = "") -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.name = name
        self._slot_of: dict[str, int] = {}
        self._id_at: list[str | None] = []  # slot -> id, None for free slots
        self._free: list[int] = []

    # -- for the kinds ---------------------------------------------------------------------
    def _read(self, slots: np.ndarray) -> np.ndarray:
        """float32 [n, dim] current vectors of live ``slots`` (int64), a new array."""
        raise NotImplementedError

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or overwrite; within one call the last duplicate id wins."""
        raise NotImplementedError

    def _row(self, slot: int) -> np.ndarray:
        """float32 [dim]: a copy of one live slot's vector (a kind may have a faster way)."""
        return np.array(self._read(np.array([slot], dtype=np.int64))[0], dtype=np.float32)

    def _rows_by_id(self, ids: Sequence[str], vectors: np.ndarray
                    ) -> tuple[dict[str, int], np.ndarray]:
        """An upsert's arguments validated: each id's row in ``vectors`` (the last duplicate
        wins; ids in first-seen order) and the vectors as checked float32."""
        if isinstance(ids, str):
            raise TypeError("ids must be a sequence of str, not a single str")
        ids = list(ids)
        vecs = checked(vectors, self.dim, self.name, "vectors")
        if len(ids) != vecs.shape[0]:
            raise IndexShapeError(
                f"{self.name or 'index'}: {len(ids)} ids but vectors has shape {list(vecs.shape)}"
            )
        last: dict[str, int] = {}
        for row, id_ in enumerate(ids):
            if not isinstance(id_, str):
                raise TypeError(f"id at position {row} is {type(id_).__name__}, expected str")
            last[id_] = row  # later duplicates overwrite earlier ones
        return last, vecs

    def _assign(self, ids: Iterable[str]) -> np.ndarray:
        """The slots of ``ids`` (int64, in order): a known id keeps its slot, a new one takes
        the last freed slot, else the next slot past the end (so the new slots past the end
        come in ascending order)."""
        slot_of, id_at, free = self._slot_of, self._id_at, self._free
        out: list[int] = []
        for id_ in ids:
            slot = slot_of.get(id_)
            if slot is None:
                if free:
                    slot = free.pop()
                    id_at[slot] = id_
                else:
                    slot = len(id_at)
                    id_at.append(id_)
                slot_of[id_] = slot
            out.append(slot)
        return np.array(out, dtype=np.int64)

    def _release(self, ids: Iterable[str]) -> list[int]:
        """Forget ``ids`` (unknown ones are ignored) and free their slots; the freed slots."""
        if isinstance(ids, str):
            raise TypeError("ids must be an iterable of str, not a single str")
        gone: list[int] = []
        for id_ in ids:
            slot = self._slot_of.pop(id_, None)
            if slot is not None:
                self._id_at[slot] = None
                self._free.append(slot)
                gone.append(slot)
        return gone

    def _live_slots(self) -> np.ndarray:
        """The slots holding an id, ascending."""
        return np.array([s for s, i in enumerate(self._id_at) if i is not None], dtype=np.int64)

    # -- the read side of the protocol ---------------------------------------------------------
    def get(self, id: str) -> np.ndarray | None:
        """A copy of the stored vector, or None if the id is not live."""
        slot = self._slot_of.get(id)
        return None if slot is None else self._row(slot)

    def get_many(self, ids: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors of ``ids`` (zero rows for unknown ids) and the positions that are unknown."""
        slot_of = self._slot_of
        slots = [slot_of.get(i, -1) for i in ids]
        missing = [pos for pos, slot in enumerate(slots) if slot < 0]
        if not missing:
            return self._read(np.array(slots, dtype=np.int64)), missing
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        known = [pos for pos, slot in enumerate(slots) if slot >= 0]
        if known:
            out[known] = self._read(np.array([slots[p] for p in known], dtype=np.int64))
        return out, missing

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, id: object) -> bool:
        return id in self._slot_of

    def ids(self) -> list[str]:
        """Live ids in slot order."""
        return [i for i in self._id_at if i is not None]

    # -- snapshots ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Live rows only: ``{"dim", "name", "ids", "vectors" [n, dim] float32}`` in slot
        order (the index is rebuilt from them on load, with no free slots)."""
        live = self._live_slots()
        return {"dim": self.dim, "name": self.name,
                "ids": [self._id_at[s] for s in live.tolist()],
                "vectors": self._read(live)}

    @classmethod
    def from_state(cls, state: dict[str, Any], **options: Any) -> Self:
        """Rebuild from :meth:`state` (``options``: the kind's constructor keywords)."""
        idx = cls(int(state["dim"]), name=str(state.get("name", "")), **options)
        idx._load_state(state)
        return idx

    def _load_state(self, state: dict[str, Any]) -> None:
        """Insert :meth:`state`'s rows into this new index."""
        ids = list(state["ids"])
        if ids:
            self.upsert(ids, state["vectors"])
        elif np.asarray(state["vectors"]).size:
            shape = list(np.shape(state["vectors"]))
            raise IndexShapeError(f"state has no ids but vectors of shape {shape}")
