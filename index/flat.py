"""The ``flat`` index kind: exact inner product with string ids and in-place row updates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import faiss
import numpy as np

from index.slots import SlotIndex, checked


class FlatIndex(SlotIndex):
    """`faiss.IndexFlatIP` over the string-id <-> slot map of :class:`index.slots.SlotIndex`
    (a slot is a row of FAISS's storage).

    Upserts of known ids overwrite their row in FAISS storage in place (no rebuild);
    removed rows are zeroed and their slots reused by later inserts. Search over-fetches
    so free and excluded slots never reduce the number of results.

    Not thread-safe: the worker calls it from a single event loop.
    """

    def __init__(self, dim: int, name: str = "") -> None:
        super().__init__(dim, name)
        self._index = faiss.IndexFlatIP(dim)
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

    def _read(self, slots: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._view[slots]  # fancy indexing: a copy
        return out

    def _row(self, slot: int) -> np.ndarray:
        return self._view[slot].copy()

    def _check(self, arr: np.ndarray, what: str, allow_1d: bool = False) -> np.ndarray:
        return checked(arr, self.dim, self.name, what, allow_1d)

    # -- mutation --------------------------------------------------------------
    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or overwrite vectors; within one call the last duplicate id wins."""
        last, vecs = self._rows_by_id(ids, vectors)
        if not last:
            return
        slots = self._assign(last)
        rows = np.fromiter(last.values(), dtype=np.int64, count=len(last))
        old = slots < self._index.ntotal  # new slots past the end come in ascending order
        if old.any():  # one vectorised scatter into FAISS's storage
            self._view[slots[old]] = vecs[rows[old]]
        if not old.all():
            self._index.add(vecs[rows[~old]])
            self._refresh_view()

    def remove(self, ids: Iterable[str]) -> int:
        """Drop ids (unknown ones are ignored); returns how many were live."""
        gone = self._release(ids)
        if gone:
            self._view[gone] = 0.0  # scores 0 until reused; filtered in search anyway
        return len(gone)

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
