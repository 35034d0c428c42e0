"""Reading a topic to its end: the *Fetch* high watermark, never ``end_offsets``.

Tansu's ListOffsets "latest" is wrong, so "have I read everything?" is answered here, in one
place, by comparing each partition's position with the high watermark of the last Fetch
response.  A partition that has had no Fetch answer yet (high watermark None) counts as not
read, until ``patience`` polls in a row have returned nothing (an empty partition may never be
answered with a watermark).  Partitions are assigned by hand: no consumer group, no commits.

- :func:`caught_up`: the check itself (aiokafka consumer);
- :func:`assign_all`: every partition of a topic, with its metadata fetched through public API;
- :func:`read_to_high_watermark`: read a topic from its beginning to its end (``profiles
  rebuild``);
- :class:`TopicScan`: the same with kafka-python, synchronous (``profiles dlq replay``, tests).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from stream.core.errors import BrokerError, ConfigError
from stream.kafka.clients import build
from stream.settings import Settings
from stream.worker.records import Record, from_message

__all__ = ["TopicScan", "assign_all", "caught_up", "read_all", "read_to_high_watermark"]


async def caught_up(consumer: Any, tps: list[Any], empty_polls: int, patience: int = 3,
                    targets: dict[Any, int] | None = None) -> bool:
    """Has ``consumer`` (aiokafka) read every partition in ``tps`` to its high watermark?

    With ``targets`` (a dict kept by the caller across calls), each partition's target is the
    first high watermark seen for it: what was in the topic when the reader started.  A topic
    that keeps growing meanwhile (the worker's own signal partials, re-published after a
    restart while its feed reads them back) is then caught up once that much is read, instead
    of chasing its end (4.5-5.5 s before ``/readyz`` at 10^5 users, stop 21)."""
    for tp in tps:
        hw = consumer.highwater(tp)
        if targets is not None and hw is not None:
            hw = targets.setdefault(tp, hw)
        if hw is None:
            if empty_polls < patience:
                return False
            continue
        if await consumer.position(tp) < hw:
            return False
    return True


async def assign_all(consumer: Any, topic: str, timeout_s: float = 30.0) -> list[Any]:
    """Assign every partition of ``topic`` to ``consumer`` (aiokafka, no group) and return them.

    A topic just created may not be in the client's metadata yet.  A *pattern* subscription
    makes the client fetch every topic's metadata through public API, without creating the
    topic (a plain subscription would, on brokers that auto-create topics); it is renewed while
    waiting and replaced by the manual assignment once the partitions are known.
    """
    from aiokafka import TopicPartition

    parts = consumer.partitions_for_topic(topic)
    if not parts:
        pattern = f"^{re.escape(topic)}$"
        deadline = time.monotonic() + timeout_s
        while not parts:
            if time.monotonic() > deadline:
                consumer.unsubscribe()
                raise ConfigError(f"topic {topic!r} does not exist (no metadata after "
                                  f"{timeout_s:g}s)")
            consumer.unsubscribe()
            consumer.subscribe(pattern=pattern)  # forces a metadata refresh
            await asyncio.sleep(0.2)
            parts = consumer.partitions_for_topic(topic)
        consumer.unsubscribe()
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    return tps


async def read_to_high_watermark(s: Settings, topic: str,
                                 on_batch: Callable[[list[Record]], Awaitable[None]],
                                 batch: int, metadata_timeout_s: float = 10.0) -> int:
    """Read ``topic`` from the beginning to the Fetch high watermark of every partition,
    handing each chunk of records to ``on_batch``; returns how many records were read."""
    consumer = build("aio_consumer", s, enable_auto_commit=False, auto_offset_reset="earliest",
                     fetch_max_wait_ms=s.fetch_max_wait_ms, fetch_max_bytes=s.fetch_max_bytes)
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic, metadata_timeout_s)
        await consumer.seek_to_beginning(*tps)
        n = 0
        empty = 0
        while True:
            got = await consumer.getmany(timeout_ms=500, max_records=batch)
            records = [from_message(m) for msgs in got.values() for m in msgs]
            if records:
                empty = 0
                n += len(records)
                await on_batch(records)
            else:
                empty += 1
            if await caught_up(consumer, tps, empty, patience=10):
                return n
    finally:
        await consumer.stop()


class TopicScan:
    """Read every partition of a topic from its beginning with kafka-python, synchronously."""

    def __init__(self, s: Settings, topic: str, client_id: str = "profiles-scan") -> None:
        from kafka import TopicPartition

        self.topic = topic
        self._consumer = build("consumer", s, client_id=client_id, group_id=None,
                               enable_auto_commit=False, auto_offset_reset="earliest")
        try:
            parts = self._consumer.partitions_for_topic(topic)
        except Exception as exc:
            self._consumer.close()
            raise BrokerError(f"cannot read metadata of topic {topic!r} on "
                              f"{s.bootstrap_servers}: {type(exc).__name__}: {exc}") from exc
        if not parts:
            self._consumer.close()
            raise BrokerError(f"topic {topic!r} does not exist on {s.bootstrap_servers}")
        self.tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self._consumer.assign(self.tps)

    def read(self, visit: Callable[[Record], None], idle_timeout_s: float,
             ends: dict[int, int] | None = None, at_least: int = 0) -> dict[int, int]:
        """Visit every record from the beginning; returns each partition's end (last offset
        seen + 1).

        Without ``ends``: stop at the high watermark of every partition once ``at_least``
        records were visited, or when a poll has stayed empty for ``idle_timeout_s``.  With
        ``ends``: visit only records below them (a second pass that cannot chase its own
        tail), stopping as soon as every partition reached its end.
        """
        c = self._consumer
        c.seek_to_beginning(*self.tps)
        seen: dict[int, int] = {}
        visited = 0
        idle_since = time.monotonic()
        while True:
            if ends is not None and all(c.position(tp) >= ends.get(tp.partition, 0)
                                        for tp in self.tps):
                break
            hw = [c.highwater(tp) for tp in self.tps]
            if ends is None and visited >= at_least and all(h is not None for h in hw) and all(
                    c.position(tp) >= h for tp, h in zip(self.tps, hw)):
                break
            remaining = idle_timeout_s - (time.monotonic() - idle_since)
            if remaining <= 0:
                break
            batches = c.poll(timeout_ms=max(1, int(min(remaining, 0.5) * 1000)))
            got = False
            for tp, msgs in batches.items():
                for m in msgs:
                    if ends is not None and m.offset >= ends.get(tp.partition, 0):
                        continue
                    got = True
                    seen[tp.partition] = m.offset + 1
                    visited += 1
                    visit(from_message(m))
            if got:
                idle_since = time.monotonic()
        return seen

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicScan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_all(s: Settings, topic: str, at_least: int = 0, timeout_s: float = 60.0) -> list[Record]:
    """Every record of ``topic``, read to the high watermark (and until ``at_least`` arrived,
    within ``timeout_s``)."""
    out: list[Record] = []
    with TopicScan(s, topic) as scan:
        scan.read(out.append, timeout_s, at_least=at_least)
    return out
