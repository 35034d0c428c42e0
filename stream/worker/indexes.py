"""The index kind the worker's ``items`` and ``users`` indexes use, from settings."""

from __future__ import annotations

import weakref
from typing import Any

from index import IndexSpec, VectorIndex, factory_of
from stream.settings import Settings

__all__ = ["index_spec", "publish_index_info", "users_index_spec"]


def index_spec(settings: Settings) -> IndexSpec:
    """``PROFILES_INDEX_KIND``, ``PROFILES_INDEX_EXACT_BELOW``, ``PROFILES_INDEX_NPROBE`` and
    ``PROFILES_INDEX_TARGET_RECALL``;
    IVF centroids are trained off the event loop."""
    return IndexSpec(kind=settings.index_kind, exact_below=settings.index_exact_below,
                     nprobe=settings.index_nprobe, background=True,
                     target_recall=settings.index_target_recall)


def users_index_spec(settings: Settings) -> IndexSpec:
    """:func:`index_spec` with ``PROFILES_INDEX_USER_CODES``: compressed IVF codes that the
    users index re-ranks from the profile tables (its ``source``), so above the exact threshold
    it holds no float32 copy."""
    return IndexSpec(kind=settings.index_kind, exact_below=settings.index_exact_below,
                     nprobe=settings.index_nprobe, background=True,
                     codes=settings.index_user_codes, target_recall=settings.index_target_recall)


def publish_index_info(gauge: Any, **indexes: VectorIndex) -> None:
    """``profiles_index_info{index, kind} 1`` for each index's factory string now (one series
    per index: a kind that changed, e.g. Flat -> IVF at the threshold, is dropped)."""
    published = _PUBLISHED.setdefault(gauge, {})
    for name, idx in indexes.items():
        kind = factory_of(idx)
        before = published.get(name)
        if before is not None and before != kind:
            gauge.remove(name, before)
        gauge.labels(name, kind).set(1)
        published[name] = kind


#: per gauge, the kind each index was last published with (public API only: no registry peeking)
_PUBLISHED: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
