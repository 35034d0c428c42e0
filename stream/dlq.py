"""Re-publish dead-lettered events (``profiles dlq replay``).

The worker dead-letters a rejected record with its original bytes as value, its original key,
and the headers ``reason``, ``detail``, ``source_topic``, ``source_partition`` and
``source_offset`` (see ``Pipeline._dead_letter``).  Replaying sends value and key back to the
events topic, where the worker judges them again, e.g. after a fix to the data or settings.

The DLQ is read from the beginning with partitions assigned by hand (no consumer group, no
commits).  Where it ends is found by reading until a poll stays empty for ``timeout_s``, not by
``end_offsets``: ListOffsets "latest" is wrong on the embedded broker.  Reading happens in two
passes so that a replay cannot chase its own tail: pass one only scans and notes each
partition's end; pass two re-publishes records below those ends.  Records that are rejected
again while the replay runs land in the DLQ beyond the noted ends and are left for a later run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from stream.errors import BrokerError, ConfigError
from stream.privacy import HASHED_HEADER
from stream.settings import Settings

__all__ = ["replay_dlq"]

log = logging.getLogger(__name__)


def _reason(headers: Iterable[tuple[str, bytes | None]] | None) -> str:
    for name, value in headers or ():
        if name == "reason":
            return (value or b"").decode("utf-8", "replace")
    return ""


def _open_consumer(settings: Settings):
    from kafka import KafkaConsumer, TopicPartition

    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id="profiles-dlq-replay",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
    except Exception as exc:  # NoBrokersAvailable, OSError, ...
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: "
                          f"{type(exc).__name__}: {exc}") from exc
    try:
        parts = consumer.partitions_for_topic(settings.dlq_topic)
    except Exception as exc:
        consumer.close()
        raise BrokerError(f"cannot read metadata of topic {settings.dlq_topic!r} on "
                          f"{settings.bootstrap_servers}: {type(exc).__name__}: {exc}") from exc
    if not parts:
        consumer.close()
        raise BrokerError(f"dead-letter topic {settings.dlq_topic!r} does not exist on "
                          f"{settings.bootstrap_servers}")
    tps = [TopicPartition(settings.dlq_topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    return consumer, tps


def _read(consumer, tps, timeout_s: float, ends: dict | None, visit: Callable) -> dict:
    """Read every assigned partition from its beginning, calling ``visit(record)``.

    Without ``ends``: stop once a poll has stayed empty for ``timeout_s``; return each
    partition's end (last offset seen + 1).  With ``ends``: only visit records below them and
    stop as soon as every partition has reached its end (or, as a safety net, when idle).
    """
    consumer.seek_to_beginning(*tps)
    seen: dict = {}
    idle_since = time.monotonic()
    while True:
        if ends is not None and all(consumer.position(tp) >= ends.get(tp, 0) for tp in tps):
            break
        # The Fetch high watermark (right on Tansu, unlike ListOffsets) says when we are done.
        hw = [consumer.highwater(tp) for tp in tps]
        if ends is None and all(h is not None for h in hw) and all(
                consumer.position(tp) >= h for tp, h in zip(tps, hw)):
            break
        remaining = timeout_s - (time.monotonic() - idle_since)
        if remaining <= 0:
            break
        batches = consumer.poll(timeout_ms=max(1, int(min(remaining, 0.5) * 1000)))
        got = False
        for tp, records in batches.items():
            for rec in records:
                if ends is not None and rec.offset >= ends.get(tp, 0):
                    continue
                got = True
                seen[tp] = rec.offset + 1
                visit(rec)
        if got:
            idle_since = time.monotonic()
    return seen


def replay_dlq(settings: Settings, reasons: list[str] | None = None, dry_run: bool = False,
               timeout_s: float = 5.0) -> tuple[int, int]:
    """Re-publish dead-lettered events to ``settings.events_topic``.

    ``reasons`` keeps only records whose ``reason`` header is one of them (None: all).
    ``dry_run`` only counts.  Returns ``(republished, skipped)``; with ``dry_run`` the first
    number is how many would be re-published.  Raises BrokerError when Kafka is unreachable,
    the DLQ topic does not exist, or a send fails.
    """
    if settings.dlq_topic == settings.events_topic:
        raise ConfigError(f"dlq_topic and events_topic are both {settings.dlq_topic!r}")
    if not timeout_s > 0:
        raise ConfigError(f"timeout_s must be > 0, got {timeout_s!r}")
    wanted = None if reasons is None else {r for r in reasons}

    erased: set[bytes] = set()  # keys tombstoned by a forget: their user was erased

    def keep(rec) -> bool:
        if rec.value is None or rec.key in erased:
            return False
        return wanted is None or _reason(rec.headers) in wanted

    consumer, tps = _open_consumer(settings)
    try:
        # Pass one: scan to the end, note erased keys.
        live: list[tuple[bytes | None, str]] = []  # (key, reason) of records with a value

        def scan(rec) -> None:
            if rec.value is None:
                erased.add(rec.key)
            else:
                live.append((rec.key, _reason(rec.headers)))

        ends = _read(consumer, tps, timeout_s, None, scan)
        matching = sum(1 for key, reason in live
                       if key not in erased and (wanted is None or reason in wanted))
        counts = [matching, len(live) - matching]
        live.clear()
        log.info("dlq %s: %d records (%d match), ends %s", settings.dlq_topic, sum(counts),
                 counts[0], {tp.partition: end for tp, end in ends.items()})
        if dry_run or counts[0] == 0:
            return counts[0], counts[1]

        # Pass two: re-publish matching records below the ends found in pass one.
        from kafka.errors import KafkaTimeoutError

        from stream.replay import Acks, _make_producer

        # raises BrokerError (one line) when Kafka cannot be reached
        producer = _make_producer(settings.bootstrap_servers,
                                  {"client_id": "profiles-dlq-replay", **settings.kafka_security()})
        acks = Acks()
        skipped = 0

        def publish(rec) -> None:
            nonlocal skipped
            if not keep(rec):
                skipped += 1
                return
            headers = dict(rec.headers or ())
            # The record goes back to its user's partition: with pseudonymous ids the raw key is
            # gone, and the key would not hash there (the id is already hashed: say so).
            partition = headers.get("source_partition")
            out_headers = [(HASHED_HEADER, b"1")] if HASHED_HEADER in headers else None
            try:
                fut = producer.send(settings.events_topic, key=headers.get("source_key") or None,
                                    value=rec.value, headers=out_headers,
                                    partition=int(partition) if partition else None)
            except KafkaTimeoutError as exc:
                # No metadata for the events topic: every further send would block as long.
                raise BrokerError(f"cannot publish to topic {settings.events_topic!r} on "
                                  f"{settings.bootstrap_servers}: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - e.g. MessageSizeTooLargeError: count it
                acks.failed(exc)
            else:
                acks.watch(fut)

        try:
            _read(consumer, tps, timeout_s, ends, publish)
            producer.flush()
        finally:
            producer.close(timeout=10)
        if acks.errors:
            raise BrokerError(f"re-published {acks.acked} to {settings.events_topic!r}, "
                              f"{sum(acks.errors.values())} sends failed: {dict(acks.errors)}")
        return acks.acked, skipped
    finally:
        consumer.close()
