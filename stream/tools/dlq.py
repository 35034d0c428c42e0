"""Re-publish dead-lettered events (``profiles dlq replay``).

The worker dead-letters a rejected record with its original bytes as value, its original key,
and the headers ``reason``, ``detail``, ``source_topic``, ``source_partition`` and
``source_offset`` (see ``Pipeline._dead_letter``).  Replaying sends value and key back to the
events topic, where the worker judges them again, e.g. after a fix to the data or settings.

The DLQ is read from the beginning with partitions assigned by hand (no consumer group, no
commits) to the Fetch high watermark (``stream.kafka.highwater.TopicScan``), not to
``end_offsets``: ListOffsets "latest" is wrong on the embedded broker.  Reading happens in two
passes so that a replay cannot chase its own tail: pass one only scans and notes each
partition's end; pass two re-publishes records below those ends.  Records that are rejected
again while the replay runs land in the DLQ beyond the noted ends and are left for a later run.
Both the consumer and the producer are built by the Kafka layer, with the settings' security.

With ``PROFILES_ID_SECRET`` a dead letter's value holds the pseudonymised id and its
``profiles-id-hashed`` header a tag over those bytes and the source partition
(``stream.worker.privacy``): the record goes back to that partition with the tag as it is, and
the worker, which alone can check it, then does not hash the id again.  A record rejected
again is dead-lettered with the same pseudonym and a fresh tag, so any number of
DLQ -> replay rounds keeps exactly one level of hashing.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from stream.core.errors import BrokerError, ConfigError
from stream.kafka.clients import Publisher
from stream.kafka.highwater import TopicScan
from stream.settings import Settings
from stream.worker.privacy import HASHED_HEADER
from stream.worker.records import Record

__all__ = ["Republication", "replay_dlq", "republication"]

log = logging.getLogger(__name__)


def _reason(rec: Record) -> str:
    return (rec.header("reason") or b"").decode("utf-8", "replace")


class Republication(NamedTuple):
    """What a dead letter is re-published as."""

    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]] | None
    partition: int | None


def republication(rec: Record) -> Republication:
    """The events-topic record for dead letter ``rec``: its value, to its source partition (with
    pseudonymous ids the raw key is gone, and the hashed one would not hash there), keyed by
    its source key when it has one, and with its ``profiles-id-hashed`` tag passed on as it is."""
    partition = rec.header("source_partition")
    tag = rec.header(HASHED_HEADER)
    return Republication(rec.value, rec.header("source_key") or None,
                         [(HASHED_HEADER, tag)] if tag is not None else None,
                         int(partition) if partition else None)


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
    wanted = None if reasons is None else set(reasons)

    erased: set[bytes | None] = set()  # keys tombstoned by a forget: their user was erased

    def keep(rec: Record) -> bool:
        if rec.value is None or rec.key in erased:
            return False
        return wanted is None or _reason(rec) in wanted

    with TopicScan(settings, settings.dlq_topic, client_id="profiles-dlq-replay") as scan:
        # Pass one: scan to the end, note erased keys.
        live: list[tuple[bytes | None, str]] = []  # (key, reason) of records with a value

        def note(rec: Record) -> None:
            if rec.value is None:
                erased.add(rec.key)
            else:
                live.append((rec.key, _reason(rec)))

        ends = scan.read(note, timeout_s)
        matching = sum(1 for key, reason in live
                       if key not in erased and (wanted is None or reason in wanted))
        counts = [matching, len(live) - matching]
        live.clear()
        log.info("dlq %s: %d records (%d match), ends %s", settings.dlq_topic, sum(counts),
                 counts[0], ends)
        if dry_run or counts[0] == 0:
            return counts[0], counts[1]

        # Pass two: re-publish matching records below the ends found in pass one.
        skipped = 0
        with Publisher(settings, client_id="profiles-dlq-replay") as publisher:

            def publish(rec: Record) -> None:
                nonlocal skipped
                if not keep(rec):
                    skipped += 1
                    return
                out = republication(rec)
                publisher.send(settings.events_topic, out.value, key=out.key,
                               headers=out.headers, partition=out.partition)

            scan.read(publish, timeout_s, ends=ends)
            publisher.flush()
        acks = publisher.acks
        if acks.errors:
            raise BrokerError(f"re-published {acks.acked} to {settings.events_topic!r}, "
                              f"{sum(acks.errors.values())} sends failed: {dict(acks.errors)}")
        return acks.acked, skipped
