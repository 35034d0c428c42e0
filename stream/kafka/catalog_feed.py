"""The catalogue feed: every worker reads the whole ``items`` topic into its ``ItemCatalog``.

A faust GlobalTable would do this, but its recovery trusts ``end_offsets`` (wrong on Tansu);
this reader assigns every partition itself (no consumer group), starts where the catalogue's
snapshot ends, and sets ``catalog.caught_up`` once it reaches the Fetch high watermark of
every partition.  It then follows the topic for as long as the worker runs.
"""

from __future__ import annotations

import logging

from stream.kafka.clients import build
from stream.kafka.highwater import assign_all, caught_up
from stream.settings import Settings
from stream.worker.catalog import ItemCatalog, ItemEncoder
from stream.worker.records import from_message

__all__ = ["follow_catalog"]

log = logging.getLogger(__name__)


async def follow_catalog(s: Settings, catalog: ItemCatalog, encoder: ItemEncoder) -> None:
    """Read ``s.items_topic`` into ``catalog`` forever (from its snapshot's offsets)."""
    consumer = build("aio_consumer", s, enable_auto_commit=False, auto_offset_reset="earliest",
                     fetch_max_wait_ms=s.fetch_max_wait_ms, fetch_max_bytes=s.fetch_max_bytes)
    await consumer.start()
    try:
        tps = await assign_all(consumer, s.items_topic, timeout_s=float("inf"))
        await consumer.seek_to_beginning(*tps)
        for tp in tps:
            if tp.partition in catalog.offsets:
                consumer.seek(tp, catalog.offsets[tp.partition])
        empty_polls = 0
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            records = [from_message(m) for msgs in batches.values() for m in msgs]
            if records:
                n = await catalog.add_records(records, encoder)
                log.debug("catalogue +%d items (%d total)", n, len(catalog.index))
                empty_polls = 0
            else:
                empty_polls += 1
            if not catalog.caught_up.is_set() and await caught_up(consumer, tps, empty_polls):
                log.info("item catalogue caught up: %d items", len(catalog.index))
                catalog.caught_up.set()
    finally:
        await consumer.stop()
