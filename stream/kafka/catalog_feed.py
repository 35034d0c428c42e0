"""The catalogue feed: every worker reads the whole ``items`` topic into its ``ItemCatalog``.

A faust GlobalTable would do this, but its recovery trusts ``end_offsets`` (wrong on Tansu);
this reader assigns every partition itself (no consumer group), starts where the catalogue's
snapshot ends, and sets ``catalog.caught_up`` once it reaches the Fetch high watermark of
every partition.  It then follows the topic for as long as the worker runs.

The reader is supervised: any failure (the encoder down, the broker) is counted
(``profiles_catalog_retries_total``), clears ``caught_up`` (so ``/readyz`` answers 503 and parked
events do not expire meanwhile), sets ``profiles_catalog_reader_down`` and restarts the reader
from the catalogue's offsets after a backoff (``PROFILES_RETRY_BACKOFF_S``, doubling up to
``PROFILES_RETRY_MAX_BACKOFF_S``).  Offsets move only past chunks that were added, so nothing is
skipped.  A bad item alone is left out by the catalogue (``profiles_catalog_rejected_total``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from stream.kafka.clients import build
from stream.kafka.highwater import assign_all, caught_up
from stream.settings import Settings
from stream.worker.catalog import ItemCatalog, ItemEncoder
from stream.worker.metrics import Metrics
from stream.worker.records import from_message

__all__ = ["follow_catalog"]

log = logging.getLogger(__name__)


async def follow_catalog(s: Settings, catalog: ItemCatalog, encoder: ItemEncoder,
                         metrics: Metrics | None = None) -> None:
    """Read ``s.items_topic`` into ``catalog`` forever (from its snapshot's offsets), restarting
    the reader after a backoff whenever it fails."""
    backoff = s.retry_backoff_s
    exported: Counter[str] = Counter()  # catalog.rejected as of the last export

    def healthy() -> None:  # a poll went through: the next failure waits the least again
        nonlocal backoff
        backoff = s.retry_backoff_s
        if metrics is not None:
            metrics.catalog_reader_down.set(0)

    while True:
        try:
            await _follow(s, catalog, encoder, metrics, exported, healthy)
        except Exception as exc:  # CancelledError (shutdown) is not an Exception
            catalog.caught_up.clear()
            if metrics is not None:
                metrics.catalog_retries.inc()
                metrics.catalog_reader_down.set(1)
            log.warning("item catalogue reader failed (%s: %s); retrying in %.2fs from offsets "
                        "%s", type(exc).__name__, exc, backoff, catalog.offsets)
            await asyncio.sleep(backoff)
            backoff = min(s.retry_max_backoff_s, backoff * 2)


def _export_rejected(catalog: ItemCatalog, metrics: Metrics | None,
                     exported: Counter[str]) -> None:
    if metrics is None:
        return
    for reason, n in catalog.rejected.items():
        if n > exported[reason]:
            metrics.catalog_rejected.labels(reason).inc(n - exported[reason])
            exported[reason] = n


async def _follow(s: Settings, catalog: ItemCatalog, encoder: ItemEncoder,
                  metrics: Metrics | None, exported: Counter[str],
                  healthy: Callable[[], None]) -> None:
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
                _export_rejected(catalog, metrics, exported)
                log.debug("catalogue +%d items (%d total)", n, len(catalog.index))
                empty_polls = 0
            else:
                empty_polls += 1
            healthy()
            if not catalog.caught_up.is_set() and await caught_up(consumer, tps, empty_polls):
                log.info("item catalogue caught up: %d items", len(catalog.index))
                catalog.caught_up.set()
    finally:
        await consumer.stop()
