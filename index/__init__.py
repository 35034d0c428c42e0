"""Vector indexes with string ids: the :class:`VectorIndex` protocol and its FAISS kinds.

``make_index(dim, name, kind)`` builds one; ``index_from_state(state, kind)`` rebuilds one from
a snapshot; :class:`IndexSpec` carries a kind and its options (from settings) to both.  Kinds:

- ``flat``: exact inner product (``faiss.IndexFlatIP``), :class:`FlatIndex`;
- ``auto``: exact below ``exact_below`` vectors, IVF with an HNSW coarse quantiser and live
  updates/removals above it, :class:`IvfIndex`; each vector is stored once (the IVF's ``Flat``
  lists, or compressed ``codes`` re-ranked from a ``source`` such as the profile tables);
- ``ivf``: the same, IVF from the smallest size k-means can train on.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from index.base import VectorIndex
from index.flat import FlatIndex
from index.ivf import (
    CODES,
    DEFAULT_EXACT_BELOW,
    DEFAULT_TARGET_RECALL,
    MIN_POINTS_PER_LIST,
    IvfIndex,
    VectorSource,
)
from stream.core.errors import IndexShapeError

__all__ = ["CODES", "DEFAULT_EXACT_BELOW", "INDEX_KINDS", "FlatIndex", "IndexShapeError",
           "IndexSpec", "IvfIndex", "VectorIndex", "VectorSource", "adopt_trained",
           "factory_of", "index_from_state", "ivf_installs", "make_index", "trained_state",
           "training_deferred"]

INDEX_KINDS: tuple[str, ...] = ("auto", "flat", "ivf")


@dataclass(frozen=True)
class IndexSpec:
    """Which kind of index to make, with its options (``PROFILES_INDEX_*`` settings)."""

    kind: str = "flat"
    exact_below: int = DEFAULT_EXACT_BELOW
    nprobe: int = 0  # 0: the fewest lists reaching target_recall on a calibration sample
    target_recall: float = DEFAULT_TARGET_RECALL
    background: bool = True  # train IVF centroids off the caller's thread
    codes: str = "Flat"  # the IVF's codes: Flat (the IVF is the store) or SQ* (re-ranked)

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; expected one of {INDEX_KINDS}")
        if self.codes not in CODES:
            raise ValueError(f"unknown IVF codes {self.codes!r}; expected one of {CODES}")

    def _options(self) -> dict[str, Any]:
        below = 2 * MIN_POINTS_PER_LIST if self.kind == "ivf" else self.exact_below
        return {"exact_below": below, "nprobe": self.nprobe, "background": self.background,
                "codes": self.codes, "target_recall": self.target_recall}

    def make(self, dim: int, name: str = "", source: VectorSource | None = None) -> VectorIndex:
        """A new, empty index; ``source``: where an IVF with lossy codes re-ranks from (the
        exact vectors live there, so the index keeps no float32 copy above the threshold)."""
        if self.kind == "flat":
            return FlatIndex(dim, name=name)
        return IvfIndex(dim, name=name, source=source, **self._options())

    def from_state(self, state: dict[str, Any]) -> VectorIndex:
        """Rebuild from :meth:`VectorIndex.state` (ids and vectors; no pickle)."""
        if self.kind == "flat":
            return FlatIndex.from_state(state)
        return IvfIndex.from_state(state, **self._options())


def make_index(dim: int, name: str = "", kind: str = "flat", **options: Any) -> VectorIndex:
    """A new, empty index of ``kind`` (``options``: the :class:`IndexSpec` fields)."""
    return IndexSpec(kind, **options).make(dim, name)


def index_from_state(state: dict[str, Any], kind: str = "flat", **options: Any) -> VectorIndex:
    """Rebuild an index of ``kind`` from :meth:`VectorIndex.state`."""
    return IndexSpec(kind, **options).from_state(state)


def factory_of(index: VectorIndex) -> str:
    """The FAISS factory string an index searches with now (``Flat`` for exact search)."""
    return str(getattr(index, "factory", "Flat"))


def training_deferred(index: VectorIndex) -> AbstractContextManager[None]:
    """A block in which ``index`` starts no training (an IVF trains once when it ends, at the
    size it has then); a no-op for indexes that do not train."""
    if isinstance(index, IvfIndex):
        return index.training_deferred()
    return nullcontext()


def ivf_installs(index: VectorIndex) -> int:
    """How many IVFs ``index`` has installed (trained or adopted); 0 for kinds without."""
    if isinstance(index, IvfIndex):
        return index.trainings + index.adoptions
    return 0


def trained_state(index: VectorIndex) -> dict[str, Any] | None:
    """The installed IVF's centroids and calibration (:meth:`IvfIndex.trained_state`), data
    only; None for an exact index."""
    return index.trained_state() if isinstance(index, IvfIndex) else None


def adopt_trained(index: VectorIndex, trained: dict[str, Any]) -> bool:
    """:meth:`IvfIndex.adopt_trained` (in the index's background mode); False for kinds
    without centroids."""
    return index.adopt_trained(trained) if isinstance(index, IvfIndex) else False
