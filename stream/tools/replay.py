"""Publish JSONL/CSV event and item logs to Kafka (``profiles replay``, ``profiles items load``).

The replay is a dumb pipe: it never judges content.  JSON lines are sent byte-for-byte (an
unparseable line is sent as-is so the worker dead-letters it); CSV rows are converted to JSON
(``stream.data.logs``).  Records go out through the Kafka layer's :class:`Publisher`
(idempotent, acknowledged by every replica, with the settings' security).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream.data.logs import check_file, count_records, iter_records
from stream.kafka.clients import Publisher
from stream.settings import Settings

__all__ = ["ReplaySummary", "load_items", "replay"]


@dataclass
class ReplaySummary:
    """Outcome of one replay: acked sends, failed sends, skipped records, wall time, error counts."""

    sent: int
    failed: int
    skipped: int
    seconds: float
    errors: dict[str, int] = field(default_factory=dict)  # exception class name -> count


def _key(obj: dict | None, key_field: str) -> bytes | None:
    k = obj.get(key_field) if obj is not None else None
    if k is None:
        return None  # no key: the default partitioner spreads it; the worker dead-letters it
    return (k if isinstance(k, str) else orjson.dumps(k).decode()).encode("utf-8")


def _publisher(s: Settings, client_id: str, overrides: Mapping[str, Any]) -> Publisher:
    return Publisher(s, client_id=client_id, **overrides)


def _publish(path: Path | str, s: Settings, *, topic: str, key_field: str,
             speed: float | None, rate: float | None, limit: int | None, progress: bool,
             desc: str, producer_overrides: Mapping[str, Any] | None = None) -> ReplaySummary:
    if speed is not None and rate is not None:
        raise ValueError("speed and rate are mutually exclusive; pass at most one")
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be > 0 (or None for as fast as possible), got {speed!r}")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit!r}")
    if not topic:
        raise ValueError("topic must be a non-empty string")
    p = check_file(path)

    from tqdm import tqdm

    show = progress and sys.stderr.isatty()
    total = count_records(p) if show else None
    if total is not None and limit is not None:
        total = min(total, limit)

    skipped = [0]
    publisher = _publisher(s, f"profiles-{desc}", producer_overrides or {})
    bar = tqdm(total=total, unit="rec", desc=desc, file=sys.stderr, disable=not show)
    t0 = time.monotonic()
    first_ts: float | None = None
    n = 0
    try:
        for rec in iter_records(p, skipped):
            if limit is not None and n >= limit:
                break
            # Pace against a fixed monotonic schedule so per-send overhead does not accumulate.
            target: float | None = None
            if rate is not None:
                target = t0 + n / rate
            elif speed is not None and rec.obj is not None:
                ts = rec.obj.get("ts")
                if isinstance(ts, (int, float)) and not isinstance(ts, bool):
                    if first_ts is None:
                        first_ts = ts
                    target = t0 + (ts - first_ts) / 1000.0 / speed
            if target is not None:
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            n += 1
            publisher.send(topic, rec.value, key=_key(rec.obj, key_field))
            bar.update(1)
        publisher.flush()
    finally:
        bar.close()
        publisher.close()
    seconds = time.monotonic() - t0
    acks = publisher.acks  # flushed and closed: no callback can still run
    return ReplaySummary(sent=acks.acked, failed=sum(acks.errors.values()),
                         skipped=skipped[0], seconds=seconds, errors=dict(acks.errors))


def replay(path: Path | str, s: Settings, *, topic: str | None = None,
           speed: float | None = None, rate: float | None = None, limit: int | None = None,
           progress: bool = True,
           producer_overrides: Mapping[str, Any] | None = None) -> ReplaySummary:
    """Publish an event log keyed by user_id to ``topic`` (default ``s.events_topic``).

    speed None sends as fast as possible, speed N replays at N x event time, rate R sends R
    events/s; speed and rate are mutually exclusive. limit stops after that many records.
    ``producer_overrides``: kafka-python producer options on top of the Publisher's defaults
    (e.g. unlimited retries across an outage).
    """
    return _publish(path, s, topic=s.events_topic if topic is None else topic,
                    key_field="user_id", speed=speed, rate=rate, limit=limit, progress=progress,
                    desc="events", producer_overrides=producer_overrides)


def load_items(path: Path | str, s: Settings, *, topic: str | None = None,
               progress: bool = True) -> ReplaySummary:
    """Publish an item catalogue keyed by item_id to ``topic`` (default ``s.items_topic``)."""
    return _publish(path, s, topic=s.items_topic if topic is None else topic,
                    key_field="item_id", speed=None, rate=None, limit=None, progress=progress,
                    desc="items")
