"""The item catalogue: item vectors (the ``items`` index) and metadata, on every worker.

Items are not partitioned by user, so each worker needs all of them: the Kafka layer
(``stream.kafka.catalog_feed``) reads the whole ``items`` topic and hands each chunk of values
to :meth:`ItemCatalog.add_raw`, then sets ``caught_up`` at the Fetch high watermark.  Each item
is encoded once on arrival; the vectors are snapshotted with the offsets they cover (and the
model's fingerprint), so a restarted worker resumes reading where its snapshot ends instead of
re-encoding the catalogue.

A bad item never stops the catalogue: one whose vector is not finite (``non_finite_vector``)
or that the encoder fails on alone while it encodes a probe text (``encoder_error``) is left
out with its reason counted (``rejected``), and the rest of its chunk is added.  When the
encoder fails on everything (it is down), :meth:`ItemCatalog.add_raw` raises
``EncoderError`` and nothing of the chunk is added: the feed retries it with a backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from index import IndexSpec, VectorIndex
from stream.core.errors import EncoderError
from stream.core.events import Item, Limits, Reject, decode_item
from stream.worker.records import Record

__all__ = ["PROBE_TEXT", "ItemCatalog", "ItemEncoder"]

log = logging.getLogger(__name__)

#: encoded when an item fails alone: if this fails too, the encoder is down, not the item
PROBE_TEXT = "probe"


class ItemEncoder(Protocol):
    """Encodes item texts off the event loop (``EncoderService.run_sync``)."""

    async def run_sync(self, texts: list[str], kind: str = "item") -> np.ndarray: ...


class ItemCatalog:
    """Item vectors (the ``items`` index) and metadata, fed from the items topic."""

    def __init__(self, dim: int, limits: Limits, model: str = "",
                 spec: IndexSpec | None = None) -> None:
        self.model = model
        self.spec = spec if spec is not None else IndexSpec()  # which index kind (settings)
        self.offsets: dict[int, int] = {}  # partition -> next offset the catalogue covers
        self.index: VectorIndex = self.spec.make(dim, name="items")
        self.items: dict[str, Item] = {}
        self.limits = limits
        self.caught_up = asyncio.Event()  # set by the feed at the high watermark
        self.rejected: Counter[str] = Counter()
        self.version = 0  # bumps whenever new items arrive (parked events re-check then)

    def vectors(self, item_ids: list[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors of the known items and the positions (in ``item_ids``) that are unknown."""
        return self.index.get_many(item_ids)

    def category(self, item_id: str) -> str | None:
        it = self.items.get(item_id)
        return it.category if it else None

    async def add_raw(self, values: list[bytes], encoder_service: ItemEncoder) -> int:
        """Decode, encode and upsert a chunk of item messages; returns how many were added."""
        items: dict[str, Item] = {}
        for raw in values:
            item = decode_item(raw, self.limits)
            if isinstance(item, Reject):
                self.rejected[item.reason] += 1
                log.warning("item rejected (%s): %s", item.reason, item.detail)
                continue
            items[item.item_id] = item  # last version of an id wins
        if not items:
            return 0
        ids = list(items)
        good: list[str] = []
        rows: list[np.ndarray] = []
        await self._encode(ids, [items[i].text() for i in ids], encoder_service, good, rows)
        if not good:
            return 0
        self.index.upsert(good, np.stack(rows))
        self.items.update((i, items[i]) for i in good)
        self.version += 1
        return len(good)

    async def _encode(self, ids: list[str], texts: list[str], encoder: ItemEncoder,
                      good: list[str], rows: list[np.ndarray]) -> None:
        """Encode ``texts``, appending the ids and finite vectors that came out to ``good`` and
        ``rows``; a failing chunk is bisected down to the items the encoder fails on alone.
        Raises ``EncoderError`` when the encoder fails on the probe text too (it is down)."""
        try:
            vecs = np.asarray(await encoder.run_sync(texts, kind="item"), dtype=np.float32)
            if vecs.shape != (len(texts), self.index.dim):
                raise EncoderError(f"the encoder returned vectors of shape {list(vecs.shape)} "
                                   f"for {len(texts)} texts of dimension {self.index.dim}")
        except Exception as exc:
            if len(texts) > 1:
                mid = len(texts) // 2
                await self._encode(ids[:mid], texts[:mid], encoder, good, rows)
                await self._encode(ids[mid:], texts[mid:], encoder, good, rows)
                return
            try:
                await encoder.run_sync([PROBE_TEXT], kind="item")
            except Exception as down:
                raise EncoderError(f"the item encoder is failing ({type(down).__name__}: "
                                   f"{down})") from down
            self._reject(ids[0], "encoder_error", f"{type(exc).__name__}: {exc}")
            return
        finite: list[bool] = np.asarray(np.isfinite(vecs).all(axis=1), dtype=bool).tolist()
        for i, v, ok in zip(ids, vecs, finite):
            if ok:
                good.append(i)
                rows.append(v)
            else:
                self._reject(i, "non_finite_vector", "its vector has NaN or inf")

    def _reject(self, item_id: str, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        log.warning("item %r rejected (%s): %s", item_id[:64], reason, detail)

    async def add_records(self, records: Sequence[Record], encoder_service: ItemEncoder) -> int:
        """:meth:`add_raw` for records of the items topic, then move ``offsets`` past them."""
        n = await self.add_raw([r.value for r in records if r.value is not None], encoder_service)
        for r in records:
            self.offsets[r.partition] = max(self.offsets.get(r.partition, 0), r.offset + 1)
        return n

    def state(self) -> dict[str, Any]:
        return {"model": self.model, "offsets": dict(self.offsets), "index": self.index.state(),
                "items": [(i.item_id, i.title, i.category, i.brand, i.price)
                          for i in self.items.values()]}

    def load_state(self, d: dict[str, Any]) -> bool:
        """Adopt a snapshot if it was made by the same model; returns whether it was used."""
        if d.get("model") != self.model:
            log.warning("item snapshot made by model %s, not %s: re-encoding the catalogue",
                        d.get("model"), self.model)
            return False
        self.index = self.spec.from_state(d["index"])
        self.items = {t[0]: Item(*t) for t in d["items"]}
        self.offsets = dict(d["offsets"])
        self.version += 1
        return True
