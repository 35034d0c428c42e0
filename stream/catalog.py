"""The item catalogue: every worker reads the whole ``items`` topic and keeps item vectors.

Items are not partitioned by user, so each worker needs all of them.  A faust GlobalTable
would do this, but its recovery trusts ``end_offsets`` (wrong on Tansu); this reader assigns
every partition itself (no consumer group) and calls itself caught up only when its position
reaches the *Fetch* high watermark of every partition.  Each item is encoded once on arrival;
the vectors are snapshotted with the offsets they cover (and the model's fingerprint), so a
restarted worker resumes reading where its snapshot ends instead of re-encoding the catalogue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from index import VectorIndex
from stream.core.events import Item, Limits, Reject, decode_item

log = logging.getLogger(__name__)


class ItemCatalog:
    """Item vectors (FAISS items index) and metadata, fed from the items topic."""

    def __init__(self, dim: int, limits: Limits, model: str = "") -> None:
        self.model = model
        self.offsets: dict[int, int] = {}  # partition -> next offset the catalogue covers
        self.index = VectorIndex(dim, name="items")
        self.items: dict[str, Item] = {}
        self.limits = limits
        self.caught_up = asyncio.Event()
        self.rejected: Counter = Counter()
        self.version = 0  # bumps whenever new items arrive (parked events re-check then)

    def vectors(self, item_ids: list[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors of the known items and the positions (in ``item_ids``) that are unknown."""
        return self.index.get_many(item_ids)

    def category(self, item_id: str) -> str | None:
        it = self.items.get(item_id)
        return it.category if it else None

    async def add_raw(self, values: list[bytes], encoder_service) -> int:
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
        vecs = await encoder_service.run_sync([items[i].text() for i in ids], kind="item")
        self.index.upsert(ids, vecs)
        self.items.update(items)
        self.version += 1
        return len(ids)

    def state(self) -> dict:
        return {"model": self.model, "offsets": dict(self.offsets), "index": self.index.state(),
                "items": [(i.item_id, i.title, i.category, i.brand, i.price) for i in self.items.values()]}

    def load_state(self, d: dict) -> bool:
        """Adopt a snapshot if it was made by the same model; returns whether it was used."""
        if d.get("model") != self.model:
            log.warning("item snapshot made by model %s, not %s: re-encoding the catalogue",
                        d.get("model"), self.model)
            return False
        self.index = VectorIndex.from_state(d["index"])
        self.items = {t[0]: Item(*t) for t in d["items"]}
        self.offsets = dict(d["offsets"])
        self.version += 1
        return True

    async def run(self, bootstrap: str, topic: str, encoder_service, consumer_config: dict) -> None:
        """Read the topic (from the snapshot's offsets, else from the beginning) forever."""
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", **consumer_config)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic)
            while not parts:
                await consumer._client.force_metadata_update()  # topic created by the worker at start
                parts = consumer.partitions_for_topic(topic)
                if not parts:
                    await asyncio.sleep(0.2)
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            for tp in tps:
                if tp.partition in self.offsets:
                    consumer.seek(tp, self.offsets[tp.partition])
            empty_polls = 0
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=2000)
                values = [m.value for msgs in batches.values() for m in msgs if m.value is not None]
                if values:
                    n = await self.add_raw(values, encoder_service)
                    for tp, msgs in batches.items():
                        if msgs:
                            self.offsets[tp.partition] = msgs[-1].offset + 1
                    log.debug("catalogue +%d items (%d total)", n, len(self.index))
                    empty_polls = 0
                else:
                    empty_polls += 1
                if not self.caught_up.is_set() and await self._at_high_watermark(consumer, tps, empty_polls):
                    log.info("item catalogue caught up: %d items", len(self.index))
                    self.caught_up.set()
        finally:
            await consumer.stop()

    @staticmethod
    async def _at_high_watermark(consumer, tps, empty_polls: int) -> bool:
        for tp in tps:
            hw = consumer.highwater(tp)
            if hw is None:
                # No fetch response yet; an empty partition answers with nothing to read.
                if empty_polls < 3:
                    return False
                continue
            if await consumer.position(tp) < hw:
                return False
        return True
