"""Vector indexes with string ids: the :class:`VectorIndex` protocol and its FAISS kinds.

``make_index(kind, dim, name)`` builds one; ``index_from_state(state)`` rebuilds one from a
snapshot.  Kinds: ``flat`` (exact inner product, ``faiss.IndexFlatIP``).
"""

from __future__ import annotations

from typing import Any

from index.base import VectorIndex
from index.flat import FlatIndex
from stream.core.errors import IndexShapeError

__all__ = ["INDEX_KINDS", "FlatIndex", "IndexShapeError", "VectorIndex", "index_from_state",
           "make_index"]

INDEX_KINDS: tuple[str, ...] = ("flat",)


def make_index(dim: int, name: str = "", kind: str = "flat") -> VectorIndex:
    """A new, empty index of ``kind``."""
    if kind == "flat":
        return FlatIndex(dim, name=name)
    raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")


def index_from_state(state: dict[str, Any], kind: str = "flat") -> VectorIndex:
    """Rebuild an index of ``kind`` from :meth:`VectorIndex.state`."""
    if kind == "flat":
        return FlatIndex.from_state(state)
    raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
