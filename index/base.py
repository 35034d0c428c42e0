"""What every vector index offers the service: string ids, upserts, removals, top-k search.

The worker keeps two indexes: ``items`` (the catalogue) and ``users`` (look-alikes).  Both are
made by :func:`index.make_index`; a new kind (HNSW, IVF, ...) is a new module next to
``flat.py`` implementing this protocol, plus a branch in ``make_index``.  The id bookkeeping
(string ids <-> int64 slots, reused after removals, and the read side: ``get``, ``state``, ...)
is :class:`index.slots.SlotIndex`, which ``flat.py`` and ``ivf.py`` subclass.  Vectors are
L2-normalised float32 rows of the encoder's dimension; scores are inner products.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["VectorIndex"]


@runtime_checkable
class VectorIndex(Protocol):
    """A mutable index of vectors under string ids."""

    dim: int
    name: str

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or overwrite; within one call the last duplicate id wins."""
        ...

    def remove(self, ids: Iterable[str]) -> int:
        """Drop ids (unknown ones are ignored); returns how many were live."""
        ...

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[set[str]] | None = None
               ) -> list[list[tuple[str, float]]]:
        """Per query, up to ``k`` (id, score) pairs, best first, never an excluded id."""
        ...

    def get(self, id: str) -> np.ndarray | None:
        """A copy of the stored vector, or None."""
        ...

    def get_many(self, ids: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors of ``ids`` (zero rows for unknown ids) and the positions that are unknown."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, id: object) -> bool: ...

    def ids(self) -> list[str]: ...

    def state(self) -> dict[str, Any]:
        """Live rows: ``{"dim", "name", "ids", "vectors"}`` (what a snapshot stores)."""
        ...
