"""State that lives in the broker: the :class:`~stream.worker.blobs.BlobStore` protocol on a
compacted Kafka topic (the *changelog*), so a partition can be restored on any host.

- :class:`KafkaBlobStore`: blobs in the changelog topic (``PROFILES_CHANGELOG_TOPIC``, default
  ``<events topic>-changelog``, ``cleanup.policy=compact``, one partition per events
  partition).  The blobs of events partition ``p`` (names ``<events topic>-<p>/...`` or
  ``<events topic>-<p>.snap``) go to changelog partition ``p``.
- :class:`~stream.kafka.tiered.TieredBlobStore`: the changelog plus the local folder as a
  cache; :func:`changelog_store` builds the worker's.

Records.  A blob is one or more records keyed ``<model>|<name>#<chunk>`` (the namespace: the
worker's encoder fingerprint; see :class:`KafkaBlobStore`) (chunks of
:data:`CHUNK_BYTES`, well under a broker's 1 MB message limit), each with headers ``chunks``
(how many), ``sha256`` (of the whole blob, hex) and ``size``.  Compaction keeps the latest
record of each key, i.e. the latest bytes of every blob.  ``delete`` writes a tombstone for
each chunk key; a put that shrinks a blob tombstones the chunk keys it no longer uses.

Reading.  A partition is read from its beginning to the **Fetch** high watermark (the one in
the last Fetch response, never ListOffsets "latest", which Tansu gets wrong; see
``stream.kafka.highwater``), keeping the latest record per key; later calls read on from
where the last one stopped, so ``get``/``names`` always see every write acknowledged before
they were called (another worker's too: the snapshot layer's fence works across hosts).  A
blob is served only whole: the newest version whose every chunk carries the same sha256 (a
put torn by a crash leaves the previous version readable while the log still holds it).
Without ``keep_bytes`` only where each chunk lies is kept in memory, and ``get`` fetches the
chunks again by offset (the tiered store does so: its local folder holds the bytes).

Every method blocks and is thread-safe (one lock around the consumer): the worker calls them
on executor threads.  Reading uses kafka-python's synchronous consumer (CRC checks off: its
CRC-32C is pure Python; each blob's sha256 checks the bytes instead), writing aiokafka's
producer on a private event loop in a thread of the store's own; nothing here touches the
worker's event loop.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from stream.core.errors import BrokerError, StateError
from stream.kafka.chunks import Chunk, LoopThread, PartitionLog, tombstone
from stream.kafka.clients import build, create_topics
from stream.kafka.tiered import TieredBlobStore
from stream.settings import Settings
from stream.worker.blobs import BlobStore, check_name

__all__ = ["CHANGELOG_TOPIC_CONFIG", "CHUNK_BYTES", "KafkaBlobStore", "TieredBlobStore",
           "blob_versions", "changelog_store", "changelog_topics"]

log = logging.getLogger(__name__)

#: compaction keeps the latest record per key (every blob's latest bytes) and drops deleted
#: blobs (tombstones after a day); it cleans closed segments only, so a segment closes at
#: least hourly (Kafka's default: weekly or at 1 GB) and the superseded bytes a partition
#: holds stay about an hour's writes
CHANGELOG_TOPIC_CONFIG: Mapping[str, str] = {"cleanup.policy": "compact",
                                             "segment.ms": "3600000"}
#: bytes per record: well under the 1 MB default message limit of Kafka brokers
CHUNK_BYTES = 256 * 1024
_SEP = "#"
_NS = "|"  # after the namespace (the model) in a key
_POLL_MS = 20  # a poll waits this long at most: an idle catch-up costs a round trip or two


class KafkaBlobStore:
    """Named byte blobs in a compacted changelog topic (see the module docstring).

    ``prefix``: the events topic whose partitions' blobs this store holds (names
    ``<prefix>-<p>`` followed by ``/`` or ``.``); other names are refused (:meth:`holds`
    tells).  ``keep_bytes``: keep the blobs read in memory (else only where they lie).

    ``namespace`` (the worker: its encoder's fingerprint) prefixes every key
    (``<namespace>|<name>#<chunk>``): the state of one model is invisible to a worker of
    another, as a state folder of one model is to ``profiles rebuild``'s new folder (a rebuild
    runs while the old model's workers still write).  ``"*"`` reads every namespace (tools and
    tests, read only); ``""`` keys without a prefix."""

    def __init__(self, s: Settings, topic: str | None = None, *, prefix: str | None = None,
                 partitions: int | None = None, chunk_bytes: int = CHUNK_BYTES,
                 keep_bytes: bool = True, timeout_s: float = 60.0,
                 fetch_max_wait_ms: int = 10, namespace: str = "") -> None:
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
        if _NS in namespace or _SEP in namespace or (namespace != "*" and "*" in namespace):
            raise ValueError(f"bad changelog namespace {namespace!r}")
        self.namespace = namespace
        self._key_prefix = f"{namespace}{_NS}" if namespace not in ("", "*") else ""
        self.s = s
        self.topic = topic or s.changelog_topic_name()
        self.prefix = prefix if prefix is not None else s.events_topic
        self.partitions = partitions if partitions is not None else s.partitions
        self.chunk_bytes = chunk_bytes
        self.keep_bytes = keep_bytes
        self.timeout_s = timeout_s
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self._name_re = re.compile(rf"^{re.escape(self.prefix)}-(\d+)(?=[/.]|$)")
        self._prefix_re = re.compile(rf"^{re.escape(self.prefix)}-(\d+)[/.]")
        self._lock = threading.RLock()
        self._parts: dict[int, PartitionLog] = {}
        self._producer: Any = None
        self._consumer: Any = None
        self._stopper: Any = None  # stops the producer if the store goes without close()
        self._topic_ready = False
        self.records_read = 0  # every record read from the topic (restores and catch-ups)
        self.bytes_read = 0
        self.bytes_written = 0

    # ------------------------------------------------------------------ names
    def partition_of(self, name: str) -> int | None:
        """The changelog partition of ``name`` (its events partition), None if it has none."""
        m = self._name_re.match(name)
        return int(m.group(1)) if m else None

    def holds(self, name: str) -> bool:
        """Whether blobs named ``name`` live in this store."""
        return self.partition_of(name) is not None

    def _partition(self, name: str) -> int:
        p = self.partition_of(check_name(name))
        if p is None:
            raise ValueError(f"blob {name!r} does not belong to a partition of topic "
                             f"{self.prefix!r}: it cannot go to the changelog {self.topic!r}")
        if p >= self.partitions:
            raise StateError(f"blob {name!r} is of partition {p}, but changelog topic "
                             f"{self.topic!r} has {self.partitions} partitions: create it with "
                             "as many partitions as the events topic")
        return p

    # ------------------------------------------------------------------ clients
    def ensure_topic(self) -> None:
        """Create the changelog topic (compacted) unless it exists."""
        if not self._topic_ready:
            create_topics(self.s, {self.topic: self.partitions}, timeout_s=self.timeout_s,
                          configs={self.topic: CHANGELOG_TOPIC_CONFIG})
            self._topic_ready = True

    def _producer_(self) -> tuple[LoopThread, Any]:
        """aiokafka's producer (its record batches and CRCs are compiled: kafka-python's
        pure-Python CRC-32C took 0.8 s of GIL per 3 MB) on an event loop of this store's own,
        in a thread of its own: never the worker's loop."""
        with self._lock:
            if self._producer is None:
                self.ensure_topic()
                loop = LoopThread()

                async def start() -> Any:
                    producer = build("aio_producer", self.s, client_id="profiles-changelog",
                                     acks="all", linger_ms=0,
                                     request_timeout_ms=int(self.timeout_s * 1000),
                                     max_request_size=max(1_048_576, 2 * self.chunk_bytes))
                    # no idempotence (Tansu refuses aiokafka's InitProducerId): a retried
                    # chunk stored twice is the same key and bytes, harmless
                    try:
                        await producer.start()
                    except BaseException:
                        await producer.stop()
                        raise
                    return producer

                try:
                    self._producer = (loop, loop.run(start(), self.timeout_s))
                except BaseException:
                    loop.close()
                    raise
                self._stop_when_gone()
            return self._producer

    def _stop_when_gone(self) -> None:
        """Stop the producer when the store is collected or the process exits without
        :meth:`close` (``profiles bench scale``'s builder drops its state, then exits): aiokafka
        warned "Unclosed AIOKafkaProducer" and "Task was destroyed but it is pending"."""
        if self._stopper is None:
            loop, producer = self._producer
            self._stopper = weakref.finalize(self, _stop_producer, loop, producer)

    def _consumer_(self) -> Any:
        if self._consumer is None:
            self.ensure_topic()
            self._consumer = build(
                "consumer", self.s, client_id="profiles-changelog-reader", group_id=None,
                enable_auto_commit=False, auto_offset_reset="earliest",
                fetch_max_wait_ms=self.fetch_max_wait_ms,
                # kafka-python's CRC-32C is pure Python (~5 MB/s): each blob's sha256 checks it
                check_crcs=False,
                max_partition_fetch_bytes=max(16 * 1_048_576, 2 * self.chunk_bytes),
                fetch_max_bytes=max(64 * 1_048_576, 2 * self.chunk_bytes))
        return self._consumer

    def close(self) -> None:
        with self._lock:
            if self._stopper is not None:
                self._stopper.detach()
                self._stopper = None
            if self._producer is not None:
                loop, producer = self._producer
                self._producer = None
                try:
                    loop.run(producer.stop(), 10)
                finally:
                    loop.close()
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None

    # ------------------------------------------------------------------ reading
    def _key(self, name: str, index: int) -> bytes:
        if self.namespace == "*":
            raise ValueError("a changelog store of every namespace is read only")
        return f"{self._key_prefix}{name}{_SEP}{index}".encode()

    def _decode(self, msg: Any) -> tuple[str, int, Chunk] | None:
        """The record's blob name, chunk index and chunk; None: another namespace's."""
        key = bytes(msg.key or b"").decode("ascii", "replace")
        ns, has_ns, key = key.rpartition(_NS)
        if self.namespace != "*" and (ns if has_ns else "") != self.namespace:
            return None
        name, sep, index = key.rpartition(_SEP)
        if not sep or not index.isdigit():
            raise StateError(f"changelog {self.topic!r} partition {msg.partition} offset "
                             f"{msg.offset}: key {key[:80]!r} is not <blob>#<chunk>")
        if msg.value is None:
            return name, int(index), tombstone(msg.offset)
        h = {k: bytes(v) for k, v in (msg.headers or [])}
        try:
            chunk = Chunk(msg.offset, int(h["chunks"]), h["sha256"].decode("ascii"),
                           int(h["size"]), bytes(msg.value))
        except (KeyError, ValueError) as exc:
            raise StateError(f"changelog {self.topic!r} partition {msg.partition} offset "
                             f"{msg.offset}: bad chunk headers ({exc})") from exc
        return name, int(index), chunk

    def _sync(self, p: int) -> PartitionLog:
        """Read partition ``p`` from where the last read stopped to the Fetch high watermark
        (under the lock)."""
        from kafka import TopicPartition

        part = self._parts.get(p)
        if part is None:
            part = self._parts[p] = PartitionLog()
        c = self._consumer_()
        tp = TopicPartition(self.topic, p)
        # a fresh assignment (assign() of the same partitions keeps the old state): its high
        # watermark can only come from a Fetch answered during this call
        c.unsubscribe()
        c.assign([tp])
        c.seek(tp, part.position)
        deadline = time.monotonic() + self.timeout_s
        t0, first, n0, b0 = time.monotonic(), part.position, self.records_read, self.bytes_read
        empty = 0
        while True:
            hw = c.highwater(tp)
            if hw is not None and c.position(tp) >= hw:
                break
            if hw is None and empty >= 100:  # never answered with a watermark: nothing there
                break
            if time.monotonic() > deadline:
                raise BrokerError(f"reading changelog {self.topic!r} partition {p} to its high "
                                  f"watermark took over {self.timeout_s:g}s (at offset "
                                  f"{c.position(tp)}, high watermark {hw})")
            got = c.poll(timeout_ms=_POLL_MS).get(tp, [])
            empty = 0 if got else empty + 1
            for msg in got:
                self.records_read += 1
                self.bytes_read += len(msg.value or b"") + len(msg.key or b"")
                record = self._decode(msg)
                if record is not None:
                    part.apply(*record, self.keep_bytes)
        part.position = c.position(tp)
        if first == 0 and self.records_read > n0:
            log.info("changelog %s partition %d: restored %d records (%.1f MB) to offset %d in "
                     "%.2fs", self.topic, p, self.records_read - n0,
                     (self.bytes_read - b0) / 1e6, part.position, time.monotonic() - t0)
        return part

    def _refetch(self, p: int, parts: list[Chunk]) -> list[bytes]:
        """The bytes of ``parts`` (chunks of partition ``p`` whose bytes were not kept), read
        again by offset (under the lock)."""
        from kafka import TopicPartition

        want = {c.offset: c for c in parts if c.data is None}
        got: dict[int, bytes] = {}
        if want:
            c = self._consumer_()
            tp = TopicPartition(self.topic, p)
            c.assign([tp])
            c.seek(tp, min(want))
            deadline = time.monotonic() + self.timeout_s
            last = max(want)
            while c.position(tp) <= last:
                hw = c.highwater(tp)
                if hw is not None and c.position(tp) >= hw:
                    break  # the end: what is still missing was compacted away
                if time.monotonic() > deadline:
                    raise BrokerError(f"reading changelog {self.topic!r} partition {p} at "
                                      f"offsets {min(want)}..{last} took over "
                                      f"{self.timeout_s:g}s")
                for msg in c.poll(timeout_ms=_POLL_MS).get(tp, []):
                    if msg.offset in want:
                        got[msg.offset] = bytes(msg.value or b"")
                        self.records_read += 1
                        self.bytes_read += len(msg.value or b"")
            missing = sorted(set(want) - set(got))
            if missing:
                raise StateError(f"changelog {self.topic!r} partition {p}: the records at "
                                 f"offsets {missing[:5]} are gone (compacted away by a later "
                                 "write): read the blob again")
        return [c.data if c.data is not None else got[c.offset] for c in parts]

    def get(self, name: str) -> bytes | None:
        p = self._partition(name)
        with self._lock:
            blob = self._sync(p).blobs.get(name)
            if blob is None:
                return None
            data = b"".join(self._refetch(p, blob.parts))
        if len(data) != blob.size or hashlib.sha256(data).hexdigest() != blob.sha256:
            raise StateError(f"changelog {self.topic!r}: blob {name!r} does not match its "
                             "sha256 (corrupt): run `profiles rebuild` to recompute the state")
        return data

    def digest(self, name: str) -> str | None:
        """The sha256 (hex) of the blob's latest bytes, None when there is none (reads the
        partition to its end, not the bytes)."""
        p = self._partition(name)
        with self._lock:
            blob = self._sync(p).blobs.get(name)
            return None if blob is None else blob.sha256

    def names(self, prefix: str) -> list[str]:
        m = self._prefix_re.match(prefix)
        parts = [int(m.group(1))] if m else range(self.partitions)
        out: list[str] = []
        with self._lock:
            for p in parts:
                if p < self.partitions:
                    out.extend(n for n in self._sync(p).blobs if n.startswith(prefix))
        return sorted(out)

    def release(self, name: str) -> None:
        """Drop the kept bytes of ``name`` (a later ``get`` fetches them again by offset)."""
        p = self._partition(name)
        with self._lock:
            blob = self._parts.get(p, PartitionLog()).blobs.get(name)
            for c in blob.parts if blob else []:
                c.data = None

    # ------------------------------------------------------------------ writing
    def _send(self, records: list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]],
              p: int, what: str) -> list[int]:
        """Send ``records`` to partition ``p``, wait until every one is acknowledged by every
        in-sync replica (acks=all); their offsets."""
        loop, producer = self._producer_()

        async def send() -> list[int]:
            futures = [await producer.send(self.topic, value=v, key=k, partition=p,
                                           headers=h or None) for k, v, h in records]
            return [(await f).offset for f in futures]

        try:
            offsets = loop.run(send(), self.timeout_s)
        except Exception as exc:  # KafkaTimeoutError, NotEnoughReplicas, MessageSizeTooLarge...
            raise BrokerError(f"writing {what} to changelog {self.topic!r} on "
                              f"{self.s.bootstrap_servers} failed: {type(exc).__name__}: "
                              f"{exc}") from exc
        self.bytes_written += sum(len(k) + len(v or b"") for k, v, _ in records)
        return offsets

    def put(self, name: str, data: bytes) -> None:
        p = self._partition(name)
        n = max(1, -(-len(data) // self.chunk_bytes))
        sha = hashlib.sha256(data).hexdigest()
        headers = [("chunks", str(n).encode()), ("sha256", sha.encode()),
                   ("size", str(len(data)).encode())]
        with self._lock:
            known = self._parts.get(p)
            old = known.chunks.get(name, {}) if known else {}
            stale = sorted(i for i in old if i >= n)
        records: list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]] = [
            (self._key(name, i), data[i * self.chunk_bytes:(i + 1) * self.chunk_bytes],
             headers) for i in range(n)]
        records += [(self._key(name, i), None, []) for i in stale]
        offsets = self._send(records, p, f"blob {name!r}")
        with self._lock:
            part = self._parts.get(p)
            if part is not None:  # else: the first read of p reads this write back
                for i in range(n):
                    chunk = Chunk(offsets[i], n, sha, len(data),
                                   records[i][1] if self.keep_bytes else None)
                    part.apply(name, i, chunk, self.keep_bytes)
                for i, off in zip(stale, offsets[n:]):
                    part.apply(name, i, tombstone(off), self.keep_bytes)

    def delete(self, name: str) -> None:
        p = self._partition(name)
        with self._lock:
            part = self._sync(p)
            indexes = sorted((i for i, c in part.chunks.get(name, {}).items() if c.chunks),
                             reverse=True)  # the first chunk last
        if not indexes:
            return
        offsets = self._send([(self._key(name, i), None, []) for i in indexes], p,
                             f"tombstones of {name!r}")
        with self._lock:
            for i, off in zip(indexes, offsets):
                part.apply(name, i, tombstone(off), self.keep_bytes)


def changelog_topics(s: Settings) -> tuple[dict[str, int], dict[str, Mapping[str, str]]]:
    """The changelog topic to create with the worker's others (none when it is off): its
    partition count and configs, for :func:`stream.kafka.clients.create_topics`."""
    if not s.changelog:
        return {}, {}
    return {s.changelog_topic_name(): s.partitions}, {s.changelog_topic_name():
                                                      CHANGELOG_TOPIC_CONFIG}


def _stop_producer(loop: LoopThread, producer: Any) -> None:
    """A collected (or, at exit, left open) store's producer: stopped on its own loop."""
    try:
        loop.run(producer.stop(), 10)
    except Exception as exc:  # never raise from a finaliser
        log.warning("changelog producer not stopped (%s: %s)", type(exc).__name__, exc)
    finally:
        loop.close()


def changelog_store(s: Settings, local: BlobStore, model: str) -> BlobStore:
    """The worker's blob store: ``local`` alone, or tiered over the changelog
    (``PROFILES_CHANGELOG``; its topic is created on first use when missing), in the namespace
    of ``model`` (the encoder's fingerprint)."""
    if not s.changelog:
        return local
    return TieredBlobStore(local, KafkaBlobStore(s, keep_bytes=False, namespace=model))


def blob_versions(s: Settings) -> dict[str, int]:
    """Blob versions ever written to the changelog (every namespace), by kind: the last part
    of the name up to its first ``-`` (``manifest``, ``base``, ``delta``), ``snap`` for a
    single-file snapshot; read from the start of every partition (the bench: on a broker
    that does not compact, each snapshot's blobs are all still there)."""
    from kafka import TopicPartition

    c = build("consumer", s, group_id=None, enable_auto_commit=False, check_crcs=False,
              auto_offset_reset="earliest", fetch_max_wait_ms=10)
    try:
        tps = [TopicPartition(s.changelog_topic_name(), p) for p in range(s.partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        counts: dict[str, int] = {}
        empty = 0
        while empty < 100:
            hw = [c.highwater(tp) for tp in tps]
            if all(h is not None and c.position(tp) >= h for tp, h in zip(tps, hw)):
                break
            got = [m for ms in c.poll(timeout_ms=50).values() for m in ms]
            empty = 0 if got else empty + 1
            for m in got:
                key = m.key.decode().rpartition("|")[2]
                if m.value is not None and key.endswith("#0"):
                    last = key[:-2].rsplit("/", 1)[-1]
                    kind = "snap" if last.endswith(".snap") else last.split("-")[0]
                    counts[kind] = counts.get(kind, 0) + 1
        return counts
    finally:
        c.close()
