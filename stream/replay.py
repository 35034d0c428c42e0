"""Publish JSONL/CSV event and item logs to Kafka with kafka-python.

The replay is a dumb pipe: it never judges content. JSON lines are sent byte-for-byte (an
unparseable line is sent as-is so the worker dead-letters it); CSV rows are converted to JSON.
"""

from __future__ import annotations

import csv
import errno
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import orjson

from stream.errors import BrokerError

__all__ = ["ReplaySummary", "create_topics", "load_items", "read_events", "replay"]

# CSV cells converted to numbers; everything else stays a string.
_INT_FIELDS = frozenset({"ts", "position"})
_FLOAT_FIELDS = frozenset({"propensity", "price"})


@dataclass
class ReplaySummary:
    """Outcome of one replay: acked sends, failed sends, skipped records, wall time, error counts."""

    sent: int
    failed: int
    skipped: int
    seconds: float
    errors: dict[str, int] = field(default_factory=dict)  # exception class name -> count


class _TopicError(BrokerError):
    """The broker answered but refused to create a topic: retrying will not help."""


class _Record(NamedTuple):
    value: bytes  # exactly what goes on the wire
    obj: dict | None  # parsed object, None for a line that is not a JSON object
    raw: bytes  # original line (for read_events' bytes case)


def _check_file(path: Path | str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(errno.ENOENT, f"no such file: {p}", str(p))
    return p


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _iter_records(path: Path, skipped: list[int]) -> Iterator[_Record]:
    """Yield wire records; ``skipped[0]`` counts blank lines / empty CSV rows."""
    if _is_csv(path):
        yield from _iter_csv(path, skipped)
        return
    with path.open("rb") as f:
        first = True
        for line in f:
            if first:
                line = line.removeprefix(b"\xef\xbb\xbf")  # tolerate a UTF-8 BOM
                first = False
            line = line.strip()
            if not line:
                skipped[0] += 1
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                obj = None
            yield _Record(line, obj if isinstance(obj, dict) else None, line)


def _convert(name: str, cell: str) -> object:
    # A cell that does not parse stays a string: validation is the worker's job.
    try:
        if name in _INT_FIELDS:
            return int(cell) if cell.lstrip("+-").isdigit() else int(float(cell))
        if name in _FLOAT_FIELDS:
            return float(cell)
    except ValueError:
        pass
    return cell


def _iter_csv(path: Path, skipped: list[int]) -> Iterator[_Record]:
    with path.open("r", newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            # Empty cells are omitted; cells beyond the header (key None) are dropped.
            obj = {k: _convert(k, v) for k, v in row.items()
                   if k is not None and isinstance(v, str) and v != ""}
            if not obj:
                skipped[0] += 1
                continue
            value = orjson.dumps(obj)
            yield _Record(value, obj, value)


def read_events(path: Path | str) -> Iterator[dict | bytes]:
    """Yield each record of a JSONL or CSV (by ``.csv`` suffix) log.

    JSON objects come back as dicts; a line that is not a JSON object comes back as raw bytes.
    Blank lines are skipped. A missing file raises FileNotFoundError.
    """
    p = _check_file(path)
    for rec in _iter_records(p, [0]):
        yield rec.obj if rec.obj is not None else rec.raw


def _count_lines(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
    return n - 1 if _is_csv(path) else n  # minus the CSV header


def _key(obj: dict | None, key_field: str) -> bytes | None:
    k = obj.get(key_field) if obj is not None else None
    if k is None:
        return None  # no key: the default partitioner spreads it; the worker dead-letters it
    return (k if isinstance(k, str) else orjson.dumps(k).decode()).encode("utf-8")


def _make_producer(bootstrap: str, producer_config: dict | None):
    from kafka import KafkaProducer  # imported lazily so reading/validation never needs it

    cfg: dict = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "compression_type": None,
        "retries": 5,
        # A retried send whose first attempt was stored must not be stored twice.
        "enable_idempotence": True,
        # One in-flight request per connection: retries cannot reorder a user's events.
        "max_in_flight_requests_per_connection": 1,
    }
    cfg.update(producer_config or {})
    try:
        return KafkaProducer(**cfg)
    except Exception as exc:  # NoBrokersAvailable, KafkaTimeoutError, bad config...
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {type(exc).__name__}: {exc}") from exc


class Acks:
    """Counts a producer's delivery callbacks (they run on kafka-python's I/O thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acked = 0
        self.errors: Counter[str] = Counter()

    def ok(self, _meta) -> None:
        with self._lock:
            self.acked += 1

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors[type(exc).__name__] += 1

    def watch(self, future) -> None:
        future.add_callback(self.ok)
        future.add_errback(self.failed)


def _publish(path: Path | str, *, bootstrap: str, topic: str, key_field: str,
             speed: float | None, rate: float | None, limit: int | None, progress: bool,
             producer_config: dict | None, desc: str) -> ReplaySummary:
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
    p = _check_file(path)

    from kafka.errors import KafkaTimeoutError
    from tqdm import tqdm

    show = progress and sys.stderr.isatty()
    total = _count_lines(p) if show else None
    if total is not None and limit is not None:
        total = min(total, limit)

    acks = Acks()
    skipped = [0]
    producer = _make_producer(bootstrap, producer_config)
    bar = tqdm(total=total, unit="rec", desc=desc, file=sys.stderr, disable=not show)
    t0 = time.monotonic()
    first_ts: float | None = None
    n = 0
    try:
        for rec in _iter_records(p, skipped):
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
            try:
                fut = producer.send(topic, key=_key(rec.obj, key_field), value=rec.value)
            except KafkaTimeoutError as exc:
                # Metadata never arrived: the topic is missing or the broker is gone. Every
                # further send would block max_block_ms too, so stop instead of hanging.
                raise BrokerError(
                    f"cannot publish to topic {topic!r} on {bootstrap}: {exc}") from exc
            except Exception as exc:  # e.g. MessageSizeTooLargeError: count it, keep going
                acks.failed(exc)
            else:
                acks.watch(fut)
            bar.update(1)
        producer.flush()
    finally:
        bar.close()
        producer.close(timeout=10)
    seconds = time.monotonic() - t0
    # flushed and closed: no callback can still run
    return ReplaySummary(sent=acks.acked, failed=sum(acks.errors.values()),
                         skipped=skipped[0], seconds=seconds, errors=dict(acks.errors))


def replay(path: Path | str, *, bootstrap: str, topic: str = "events",
           speed: float | None = None, rate: float | None = None, limit: int | None = None,
           progress: bool = True, producer_config: dict | None = None) -> ReplaySummary:
    """Publish an event log keyed by user_id.

    speed None sends as fast as possible, speed N replays at N x event time, rate R sends R
    events/s; speed and rate are mutually exclusive. limit stops after that many records.
    """
    return _publish(path, bootstrap=bootstrap, topic=topic, key_field="user_id", speed=speed,
                    rate=rate, limit=limit, progress=progress,
                    producer_config=producer_config, desc="events")


def load_items(path: Path | str, *, bootstrap: str, topic: str = "items", progress: bool = True,
               producer_config: dict | None = None) -> ReplaySummary:
    """Publish an item catalogue keyed by item_id, as fast as possible."""
    return _publish(path, bootstrap=bootstrap, topic=topic, key_field="item_id", speed=None,
                    rate=None, limit=None, progress=progress,
                    producer_config=producer_config, desc="items")


def create_topics(bootstrap: str, topics: Mapping[str, int], replication: int = 1,
                  timeout_s: float = 30, client_config: Mapping | None = None) -> None:
    """Create missing topics with the given partition counts; wait for the broker up to timeout_s.

    Existing topics are left alone (their partition count is not changed).
    """
    for name, parts in topics.items():
        if not name or isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
            raise ValueError(f"topic {name!r}: partitions must be an integer >= 1, got {parts!r}")
    if replication < 1:
        raise ValueError(f"replication must be >= 1, got {replication!r}")
    if not topics:
        return

    from kafka.admin import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"could not create topics {sorted(topics)} on Kafka at {bootstrap} within "
                f"{timeout_s:g}s: {type(last).__name__ if last else 'timeout'}: {last}")
        admin = None
        try:
            ms = max(1000, int(remaining * 1000))
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="profiles-admin",
                                     bootstrap_timeout_ms=ms, request_timeout_ms=min(ms, 30000),
                                     **dict(client_config or {}))
            existing = set(admin.list_topics())
            missing = {t: p for t, p in topics.items() if t not in existing}
            if missing:
                res = admin.create_topics(
                    {t: {"num_partitions": p, "replication_factor": replication}
                     for t, p in missing.items()},
                    raise_errors=False)
                for t in res.get("topics", []):
                    code = t.get("error_code", 0)
                    if code and code != TopicAlreadyExistsError.errno:
                        raise _TopicError(f"creating topic {t.get('name')!r} on {bootstrap} "
                                           f"failed: error {code} {t.get('error_message') or ''}")
                # Producers right after this call should find the topics with leaders.
                admin.wait_for_topics(list(missing), timeout_ms=max(1000, int(remaining * 1000)))
            return
        except _TopicError:
            raise
        except Exception as exc:  # broker not up yet (NoBrokersAvailable, timeouts, OSError)
            last = exc
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        finally:
            if admin is not None:
                try:
                    admin.close()
                except Exception:
                    pass
