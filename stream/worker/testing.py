"""In-process testing: run the worker's :class:`~stream.worker.pipeline.Pipeline` without Kafka.

Public and documented (like bytewax's ``TestingSource`` / ``TestingSink``): a test builds a
pipeline with an in-memory dead-letter sink and a clock it moves by hand, feeds it records made
by a :class:`Source`, and reads the state, the dead letters and the metrics in milliseconds::

    from encoder import HashingEncoder
    from stream.settings import Settings
    from stream.worker.testing import InProcessWorker

    w = InProcessWorker(Settings.from_env({}, state_dir=str(tmp_path)), HashingEncoder(16))
    async with w:
        await w.items([{"item_id": "i1", "title": "red shoe"}])
        await w.events([{"event_id": "e1", "user_id": "u1", "type": "view",
                         "ts": 1_700_000_000_000, "item_id": "i1"}])
        assert w.pipeline.profiles.owner("u1") is not None
        assert w.dead_letters.reasons() == {}

Records go to partitions as Kafka's default partitioner puts them (murmur2 of the key), so a
user's records stay in order in one partition, as on a real broker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson

from encoder.base import Encoder
from stream.settings import Settings
from stream.worker.pipeline import Pipeline
from stream.worker.ports import Header
from stream.worker.records import Headers, Record

__all__ = ["DeadLetters", "InProcessWorker", "ManualClock", "Published", "SignalsTopic", "Source",
           "murmur2"]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (the Java client's ``Utils.murmur2``), as a signed 32-bit int."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length & 3
    tail = data[4 * n4:]
    if rest >= 3:
        h ^= tail[2] << 16
    if rest >= 2:
        h ^= tail[1] << 8
    if rest >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class ManualClock:
    """A :class:`~stream.worker.ports.Clock` that moves only when told (``advance``)."""

    def __init__(self, wall: float = 1_700_000_000.0, monotonic: float = 1_000.0) -> None:
        self._wall = wall
        self._mono = monotonic

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds


@dataclass(frozen=True)
class DeadLetter:
    """One record the pipeline sent to the dead-letter sink."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    @property
    def reason(self) -> str:
        return self.headers.get("reason", b"").decode()


@dataclass
class DeadLetters:
    """An in-memory :class:`~stream.worker.ports.DeadLetterSink`.  ``fail`` makes every send
    raise it (a broker refusing the write)."""

    records: list[DeadLetter] = field(default_factory=list)
    fail: BaseException | None = None

    async def __call__(self, key: bytes | None, value: bytes | None,
                       headers: list[Header]) -> None:
        if self.fail is not None:
            raise self.fail
        self.records.append(DeadLetter(key, value, dict(headers)))

    def reasons(self) -> dict[str, int]:
        """How many dead letters per reason (erasure tombstones not counted)."""
        return dict(Counter(r.reason for r in self.records if r.value is not None))

    def tombstones(self) -> list[bytes | None]:
        """Keys of the tombstones sent (a forgotten user's dead letters)."""
        return [r.key for r in self.records if r.value is None]


@dataclass
class Published:
    """An in-memory :class:`~stream.worker.ports.EventPublisher`."""

    records: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def __call__(self, key: bytes, value: bytes) -> None:
        self.records.append((key, value))


@dataclass
class SignalsTopic:
    """An in-memory :class:`~stream.worker.ports.SignalSink` standing for the compacted signals
    topic: every published ``(key, value)`` in order; ``fail`` makes every send raise it."""

    messages: list[tuple[bytes, bytes]] = field(default_factory=list)
    fail: BaseException | None = None

    async def __call__(self, messages: list[tuple[bytes, bytes]]) -> None:
        if self.fail is not None:
            raise self.fail
        self.messages.extend(messages)

    def records(self, start: int = 0) -> list[Record]:
        """The messages from offset ``start`` on, as the signals feed would read them."""
        return [Record(0, i, 0, k, v) for i, (k, v) in enumerate(self.messages) if i >= start]

    def compacted(self) -> dict[bytes, bytes]:
        """What compaction keeps: the last value of every key."""
        return dict(self.messages)


class Source:
    """Makes :class:`Record` lists as a Kafka topic of ``partitions`` partitions would deliver
    them: consecutive offsets per partition, keyed records partitioned like Kafka's default
    partitioner, the broker's timestamp from ``clock`` unless given."""

    def __init__(self, partitions: int = 4, clock: ManualClock | None = None) -> None:
        self.partitions = partitions
        self.clock = clock or ManualClock()
        self.next_offset: dict[int, int] = {p: 0 for p in range(partitions)}

    def record(self, value: Mapping[str, Any] | bytes | None, *, key: bytes | None = None,
               partition: int | None = None, timestamp_ms: int | None = None,
               headers: Headers = ()) -> Record:
        """The next record: ``value`` (a dict is JSON-encoded), keyed by its ``user_id`` unless
        ``key`` is given."""
        if isinstance(value, Mapping):
            if key is None and value.get("user_id") is not None:
                uid = value["user_id"]
                key = (uid if isinstance(uid, str) else orjson.dumps(uid).decode()).encode()
            raw: bytes | None = orjson.dumps(dict(value))
        else:
            raw = value
        if partition is None:
            partition = partition_of(key, self.partitions) if key is not None else 0
        offset = self.next_offset[partition]
        self.next_offset[partition] = offset + 1
        ts = int(self.clock.wall() * 1000) if timestamp_ms is None else timestamp_ms
        return Record(partition, offset, ts, key, raw, headers)

    def records(self, values: Iterable[Mapping[str, Any] | bytes | None],
                **kw: Any) -> list[Record]:
        return [self.record(v, **kw) for v in values]

    def skip(self, partition: int, n: int = 1) -> None:
        """Leave a gap of ``n`` offsets in ``partition`` (a compacted or lost range)."""
        self.next_offset[partition] += n


class InProcessWorker:
    """A :class:`Pipeline` with an in-memory dead-letter sink and signals topic, a manual clock
    and a :class:`Source`, owning ``partitions`` (default: every partition); ``async with``
    starts and stops its encoder service.  Its signals feed is "caught up" from the start
    (nothing to read in memory); hand it another worker's partials with
    ``pipeline.sharing.receive(other.signals.records())``."""

    def __init__(self, settings: Settings, encoder: Encoder, *,
                 clock: ManualClock | None = None, dead_letters: DeadLetters | None = None,
                 source: Source | None = None, signals: SignalsTopic | None = None,
                 partitions: Iterable[int] | None = None) -> None:
        self.settings = settings
        self.clock = clock or ManualClock()
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetters()
        self.source = source if source is not None else Source(settings.partitions, self.clock)
        self.signals = signals if signals is not None else SignalsTopic()
        self.partitions = (list(range(settings.partitions)) if partitions is None
                           else list(partitions))
        self.pipeline = Pipeline(settings, encoder, dead_letters=self.dead_letters,
                                 clock=self.clock, signals=self.signals)
        self.pipeline.sharing.mark_caught_up()

    async def __aenter__(self) -> InProcessWorker:
        self.pipeline.encoder_service.start()
        self.pipeline.load_catalog()
        await self.pipeline.assign(self.partitions)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.pipeline.encoder_service.stop()

    async def items(self, items: Sequence[Mapping[str, Any] | bytes]) -> int:
        """Add catalogue items (as the items topic would deliver them); the catalogue is then
        caught up."""
        values = [v if isinstance(v, bytes) else orjson.dumps(dict(v)) for v in items]
        n = await self.pipeline.catalog.add_raw(values, self.pipeline.encoder_service)
        self.pipeline.catalog.caught_up.set()
        return n

    async def events(self, events: Iterable[Mapping[str, Any] | bytes | None],
                     **kw: Any) -> list[Record]:
        """Publish events to the source and process them as one batch; returns the records."""
        records = self.source.records(events, **kw)
        await self.pipeline.process(records)
        return records

    async def restart(self) -> InProcessWorker:
        """Snapshot everything, then a new worker on the same state folder and clock (its source
        continues the offsets): what a restart after a clean shutdown sees."""
        await self.pipeline.snapshot(everything=True)
        await self.pipeline.encoder_service.stop()
        other = InProcessWorker(self.settings, self.pipeline.encoder, clock=self.clock,
                                dead_letters=self.dead_letters, source=self.source,
                                signals=self.signals, partitions=self.partitions)
        await other.__aenter__()
        if self.pipeline.catalog.caught_up.is_set():
            other.pipeline.catalog.caught_up.set()
        return other
