"""The Kafka changelog blob store (``stream.kafka.changelog``) on the real embedded broker, and
its restore loop on a fake consumer (the Fetch high watermark, never ListOffsets)."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import namedtuple
from typing import Any

import pytest

from stream.core.errors import StateError
from stream.kafka import changelog as cl
from stream.kafka.changelog import KafkaBlobStore, TieredBlobStore
from stream.kafka.clients import build
from stream.worker.blobs import BlobStore, LocalBlobStore
from tests.conftest import kafka


@pytest.fixture
def settings(broker):
    tag = uuid.uuid4().hex[:10]
    return kafka(broker.bootstrap, events_topic=f"ev-{tag}", partitions=2)


def _blob(n: int, seed: int) -> bytes:
    out = b""
    while len(out) < n:
        out += hashlib.sha256(f"{seed}-{len(out)}".encode()).digest()
    return out[:n]


def test_blobs_round_trip_in_chunks_and_another_host_restores_them(settings) -> None:
    ev = settings.events_topic
    a = KafkaBlobStore(settings, chunk_bytes=1000)
    assert isinstance(a, BlobStore)
    big, small, other = _blob(4500, 1), _blob(10, 2), _blob(2100, 3)
    try:
        a.put(f"{ev}-0/base-1", big)  # 5 chunks
        a.put(f"{ev}-0/manifest", small)
        a.put(f"{ev}-1.snap", other)
        a.put(f"{ev}-0/base-1", other)  # shrinks: chunks 3 and 4 get tombstones
        a.put(f"{ev}-0/gone", small)
        a.delete(f"{ev}-0/gone")
        a.delete(f"{ev}-0/never")  # nothing there: nothing happens
        assert a.get(f"{ev}-0/base-1") == other
        assert a.get(f"{ev}-0/gone") is None
        # another host: nothing in memory, reads the topic from its beginning
        for keep in (True, False):
            b = KafkaBlobStore(settings, chunk_bytes=1000, keep_bytes=keep)
            try:
                assert b.names(f"{ev}-0/") == [f"{ev}-0/base-1", f"{ev}-0/manifest"]
                assert b.names("") == [f"{ev}-0/base-1", f"{ev}-0/manifest", f"{ev}-1.snap"]
                assert b.get(f"{ev}-0/base-1") == other
                assert b.get(f"{ev}-0/manifest") == small
                assert b.get(f"{ev}-1.snap") == other
                assert b.get(f"{ev}-0/gone") is None
                assert b.digest(f"{ev}-1.snap") == hashlib.sha256(other).hexdigest()
                # a write by the first store after this one read: seen on the next call
                a.put(f"{ev}-0/manifest", big)
                assert b.get(f"{ev}-0/manifest") == big
                a.put(f"{ev}-0/manifest", small)
            finally:
                b.close()
        with pytest.raises(ValueError, match="does not belong to a partition"):
            a.put("items-catalogue.snap", b"x")
        with pytest.raises(StateError, match="2 partitions"):
            a.put(f"{ev}-7/manifest", b"x")
    finally:
        a.close()


def test_a_torn_put_leaves_the_previous_version_readable(settings) -> None:
    ev = settings.events_topic
    a = KafkaBlobStore(settings, chunk_bytes=100)
    old, new = _blob(250, 1), _blob(250, 2)
    try:
        a.put(f"{ev}-0.snap", old)
        # a crash after the first chunk of the next version: only its chunk 0 arrived
        producer = build("producer", settings, acks="all")
        sha = hashlib.sha256(new).hexdigest().encode()
        producer.send(a.topic, key=f"{ev}-0.snap#0".encode(), value=new[:100], partition=0,
                      headers=[("chunks", b"3"), ("sha256", sha), ("size", b"250")]).get(30)
        producer.close()
        for keep in (True, False):
            b = KafkaBlobStore(settings, chunk_bytes=100, keep_bytes=keep)
            try:
                assert b.get(f"{ev}-0.snap") == old
            finally:
                b.close()
    finally:
        a.close()


def test_concurrent_puts_from_threads(settings) -> None:
    ev = settings.events_topic
    a = KafkaBlobStore(settings, chunk_bytes=300)
    want = {f"{ev}-{i % 2}/blob-{i}": _blob(700 + i, i) for i in range(8)}
    try:
        threads = [threading.Thread(target=a.put, args=kv) for kv in want.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        b = KafkaBlobStore(settings, keep_bytes=False)
        try:
            assert {n: b.get(n) for n in b.names("")} == want
        finally:
            b.close()
    finally:
        a.close()


def test_tiered_store_restores_from_kafka_into_an_empty_folder(settings, tmp_path) -> None:
    ev = settings.events_topic
    v1, v2, v3 = _blob(3000, 1), _blob(1200, 2), _blob(40, 3)
    one = TieredBlobStore(LocalBlobStore(tmp_path / "one"),
                          KafkaBlobStore(settings, chunk_bytes=1000, keep_bytes=False))
    two = TieredBlobStore(LocalBlobStore(tmp_path / "two"),
                          KafkaBlobStore(settings, chunk_bytes=1000, keep_bytes=False))
    try:
        one.put(f"{ev}-0/base", v1)
        one.put("items.catalogue", v3)  # not a partition's: local only
        assert one.remote.names("") == [f"{ev}-0/base"]
        # a host whose folder never saw partition 0
        assert two.names(f"{ev}-0/") == [f"{ev}-0/base"]
        assert two.get(f"{ev}-0/base") == v1 and two.remote_reads == 1
        assert (tmp_path / "two" / f"{ev}-0" / "base").read_bytes() == v1  # cache refilled
        assert two.get(f"{ev}-0/base") == v1 and two.local_hits == 1  # the cache, same sha256
        assert two.get("items.catalogue") is None
        # the partition moves back: the remote's newer bytes win over the stale local copy
        two.put(f"{ev}-0/base", v2)
        assert one.get(f"{ev}-0/base") == v2
        assert (tmp_path / "one" / f"{ev}-0" / "base").read_bytes() == v2
        # deleted remotely: the other host's cached copy is not resurrected
        two.put(f"{ev}-0/delta", v3)
        assert one.get(f"{ev}-0/delta") == v3
        two.delete(f"{ev}-0/delta")
        assert one.get(f"{ev}-0/delta") is None
        assert one.names(f"{ev}-0/") == [f"{ev}-0/base"]
        # a partition the changelog holds nothing of (written before it was on): local rules
        LocalBlobStore(tmp_path / "one").put(f"{ev}-1.snap", v3)
        assert one.get(f"{ev}-1.snap") == v3
        assert one.names("") == sorted([f"{ev}-0/base", f"{ev}-1.snap", "items.catalogue"])
    finally:
        one.close()
        two.close()


# ---------------------------------------------------------------- the high watermark, faked
TP = namedtuple("TP", "topic partition")
Msg = namedtuple("Msg", "partition offset key value headers")


class FakeConsumer:
    """A kafka-python consumer whose ListOffsets "latest" is wrong (as Tansu's is) and whose
    Fetch answers come late and a few records at a time."""

    def __init__(self, log: list[Msg]) -> None:
        self.log = log
        self.pos = 0
        self.hw: int | None = None
        self.polls = 0

    def end_offsets(self, tps: Any) -> Any:
        raise AssertionError("ListOffsets 'latest' (end_offsets) is wrong on Tansu")

    beginning_offsets = end_offsets

    def unsubscribe(self) -> None:
        self.hw = None

    def assign(self, tps: list[Any]) -> None:
        self.tp = tps[0]

    def seek(self, tp: Any, offset: int) -> None:
        self.pos = offset

    def position(self, tp: Any) -> int:
        return self.pos

    def highwater(self, tp: Any) -> int | None:
        return self.hw

    def poll(self, timeout_ms: int) -> dict[Any, list[Msg]]:
        self.polls += 1
        if self.polls <= 3:
            return {}  # no Fetch answer yet: no watermark either
        self.hw = len(self.log)
        got = self.log[self.pos:self.pos + 2]
        if self.polls % 2:
            return {}  # an empty answer mid-way: not the end
        self.pos += len(got)
        return {self.tp: got} if got else {}

    def close(self) -> None:
        pass


def test_a_restore_reads_to_the_fetch_high_watermark_not_list_offsets(monkeypatch) -> None:
    s = kafka("127.0.0.1:1", events_topic="ev", partitions=1)
    data = _blob(950, 5)
    sha = hashlib.sha256(data).hexdigest().encode()
    log = [Msg(0, i, f"ev-0.snap#{i}".encode(), data[i * 100:(i + 1) * 100],
               [("chunks", b"10"), ("sha256", sha), ("size", b"950")]) for i in range(10)]
    consumer = FakeConsumer(log)
    monkeypatch.setattr(cl, "build", lambda kind, *a, **k: consumer)
    monkeypatch.setattr(cl, "create_topics", lambda *a, **k: None)
    monkeypatch.setattr("kafka.TopicPartition", TP)
    store = KafkaBlobStore(s, chunk_bytes=100)
    assert store.get("ev-0.snap") == data  # every chunk, the last one included
    assert store.records_read == 10 and consumer.pos == 10


# ---------------------------------------------------------------- assignment off the loop
def test_assign_restores_on_an_executor_and_is_not_ready_meanwhile(tmp_path) -> None:
    """A partition's read (a restore from Kafka: seconds) runs on an executor thread: the loop
    answers meanwhile, and ready() stays False until the state is loaded and indexed."""
    import asyncio

    from encoder.fake import HashingEncoder
    from stream.settings import Settings
    from stream.worker.pipeline import Pipeline
    from stream.worker.testing import DeadLetters

    pipe = Pipeline(Settings.from_env({}, state_dir=str(tmp_path)), HashingEncoder(8),
                    dead_letters=DeadLetters())
    pipe.catalog.caught_up.set()
    pipe.sharing.mark_caught_up()
    entered, release = threading.Event(), threading.Event()
    threads: list[int] = []
    read = pipe.read_partition

    def slow_read(p: int) -> Any:
        threads.append(threading.get_ident())
        entered.set()
        assert release.wait(10), "never released"
        return read(p)

    pipe.read_partition = slow_read  # type: ignore[method-assign]

    async def run() -> None:
        task = asyncio.create_task(pipe.assign([0, 1]))
        for _ in range(1000):  # the loop keeps running while the read blocks
            if entered.is_set():
                break
            await asyncio.sleep(0.01)
        assert entered.is_set()
        # both partitions of the assignment count until loaded
        assert not pipe.ready() and pipe.loading == 2 and not task.done()
        release.set()
        await asyncio.wait_for(task, 10)
        assert pipe.ready() and pipe.loading == 0
        assert sorted(pipe.states) == [0, 1]

    asyncio.run(run())
    assert threads and threading.get_ident() not in threads


def test_namespaces_keep_one_models_state_from_another(settings) -> None:
    """The worker writes in its model's namespace: a worker of another model (after
    ``profiles rebuild --swap``) sees none of it; ``*`` reads every namespace, read only."""
    ev = settings.events_topic
    old = KafkaBlobStore(settings, namespace="model-a")
    new = KafkaBlobStore(settings, namespace="model-b")
    every = KafkaBlobStore(settings, namespace="*")
    try:
        old.put(f"{ev}-0/manifest", b"a")
        assert new.get(f"{ev}-0/manifest") is None and new.names("") == []
        new.put(f"{ev}-1/manifest", b"b")
        assert old.names("") == [f"{ev}-0/manifest"]
        assert every.names("") == [f"{ev}-0/manifest", f"{ev}-1/manifest"]
        assert every.get(f"{ev}-1/manifest") == b"b"
        with pytest.raises(ValueError, match="read only"):
            every.put(f"{ev}-1/manifest", b"c")
        with pytest.raises(ValueError, match="namespace"):
            KafkaBlobStore(settings, namespace="a|b")
    finally:
        for st in (old, new, every):
            st.close()
