"""The signals feed: every worker reads the whole compacted signals topic into its merged view.

Each worker publishes the partials of the items its partitions changed (``Pipeline
.publish_signals``, through a :class:`SignalPublisher`) to ``Settings.signals_topic_name()``, keyed ``<events partition>:<item>``; the topic is compacted,
so it holds the latest partial of every (partition, item) and a re-published partial replaces
the old one.  Like the catalogue feed (``stream.kafka.catalog_feed``) this reader assigns every
partition itself (no consumer group), reads from the beginning, sets ``caught_up`` once it
reaches the Fetch high watermark of every partition, then follows the topic for as long as the
worker runs.  What it reads goes to :meth:`stream.worker.sharing.SharedSignals.receive`, in
chunks of ``RECEIVE_CHUNK`` records with the event loop free in between.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from stream.kafka.clients import build
from stream.kafka.highwater import assign_all, caught_up
from stream.settings import Settings
from stream.worker.records import Record, from_message

__all__ = ["RECEIVE_CHUNK", "SIGNALS_TOPIC_CONFIG", "SignalPublisher", "follow_signals"]

log = logging.getLogger(__name__)

#: the signals topic's configuration when the worker creates it: the latest partial per key
SIGNALS_TOPIC_CONFIG = {"cleanup.policy": "compact"}
#: records put into the view per turn of the event loop: a poll holds up to 5,000 and another
#: worker's record costs ~10 us to decode and put, so requests wait ~5 ms at most, not ~50 ms
RECEIVE_CHUNK = 500


class SignalReceiver(Protocol):
    """What the feed hands records to (``stream.worker.sharing.SharedSignals``)."""

    def receive(self, records: list[Record]) -> int: ...

    def mark_caught_up(self) -> None: ...

    def is_caught_up(self) -> bool: ...


async def follow_signals(s: Settings, receiver: SignalReceiver) -> None:
    """Read the signals topic from its beginning into ``receiver``, forever."""
    topic = s.signals_topic_name()
    consumer = build("aio_consumer", s, enable_auto_commit=False, auto_offset_reset="earliest",
                     fetch_max_wait_ms=s.fetch_max_wait_ms, fetch_max_bytes=s.fetch_max_bytes)
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic, timeout_s=float("inf"))
        await consumer.seek_to_beginning(*tps)
        empty_polls = 0
        targets: dict[Any, int] = {}  # the end seen first: never chase our own re-publish
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            records = [from_message(m) for msgs in batches.values() for m in msgs]
            if records:
                for i in range(0, len(records), RECEIVE_CHUNK):
                    receiver.receive(records[i:i + RECEIVE_CHUNK])
                    await asyncio.sleep(0)
                empty_polls = 0
            else:
                empty_polls += 1
            if not receiver.is_caught_up() and await caught_up(
                    consumer, tps, empty_polls, targets=targets):
                log.info("signals topic %s caught up", topic)
                receiver.mark_caught_up()
    finally:
        await consumer.stop()


class SignalPublisher:
    """The worker's :class:`~stream.worker.ports.SignalSink`: an aiokafka producer for the
    signals topic, started on first use.

    Not faust's producer: a publish sends one record per changed (partition, item) — thousands
    a second on a busy worker — and ``send_and_wait`` per record cost ~150 µs each (a task per
    record), where ``send`` and one gather of the delivery futures cost ~22 µs (measured on the
    embedded broker, 8,000 records of 1.2 KB).
    """

    def __init__(self, s: Settings) -> None:
        self.settings = s
        self.topic = s.signals_topic_name()
        self._producer: Any = None
        self._starting = asyncio.Lock()

    async def _start(self) -> Any:
        async with self._starting:
            if self._producer is None:
                producer = build("aio_producer", self.settings, acks="all", linger_ms=5,
                                 max_batch_size=1 << 20, client_id="profiles-signals")
                await producer.start()
                self._producer = producer
        return self._producer

    async def __call__(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Send and wait until the broker acknowledged every record (raises otherwise)."""
        if not messages:
            return
        producer = self._producer or await self._start()
        send, topic = producer.send, self.topic
        futures = [await send(topic, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
