"""The index kind the worker's ``items`` and ``users`` indexes use, from settings."""

from __future__ import annotations

from index import IndexSpec
from stream.settings import Settings

__all__ = ["index_spec"]


def index_spec(settings: Settings) -> IndexSpec:
    """``PROFILES_INDEX_KIND``, ``PROFILES_INDEX_EXACT_BELOW`` and ``PROFILES_INDEX_NPROBE``;
    IVF centroids are trained off the event loop."""
    return IndexSpec(kind=settings.index_kind, exact_below=settings.index_exact_below,
                     nprobe=settings.index_nprobe, background=True)
