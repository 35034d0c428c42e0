"""The oracles' inputs: the vectors the worker embeds a generated dataset's items and search
queries with (one helper instead of a copy in every in-process test)."""

from __future__ import annotations

import numpy as np

from encoder.base import Encoder
from stream.core.events import Item
from stream.data.generate import Dataset


def catalogue_vectors(ds: Dataset, enc: Encoder
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(item_vecs, query_vecs)``: ``enc``'s vector of each item of ``ds`` by item id (its
    ``Item.text()``) and of each distinct search query of ``ds.events``."""
    items = [Item(**{k: it.get(k) for k in ("item_id", "title", "category", "brand", "price")})
             for it in ds.items]
    item_vecs = dict(zip([i.item_id for i in items], enc.encode([i.text() for i in items])))
    queries = sorted({e["query"] for e in ds.events if e["type"] == "search"})
    query_vecs = dict(zip(queries, enc.encode(queries)))
    return item_vecs, query_vecs
