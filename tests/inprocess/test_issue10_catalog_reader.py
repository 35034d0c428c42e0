"""Issue 10 point 10: the catalogue reader is supervised.

A bad item is rejected alone (a non-finite vector, or an item the encoder fails on while it
encodes other texts), with a reason and a count, and the rest of its chunk is added; a
transient failure (the encoder down, the broker) is retried with a backoff, counted, and
``/readyz`` (``Pipeline.ready``) says not ready while the reader is failing.  The feed runs on a
fake consumer (``stream.kafka.catalog_feed.build`` patched); waits have deadlines, no sleeps
as synchronisation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka.structs import TopicPartition

from encoder.fake import HashingEncoder
from stream.core.errors import EncoderError
from stream.kafka import catalog_feed
from stream.settings import Settings
from stream.worker.pipeline import Pipeline
from stream.worker.testing import DeadLetters, InProcessWorker, ManualClock

TOPIC = "items"
DEADLINE_S = 10.0


class FlakyEncoder:
    """An ``ItemEncoder``: a hashing encoder that fails on texts containing "boom", returns a
    NaN row for texts containing "poison", and fails every call while ``down``."""

    def __init__(self, dim: int = 8) -> None:
        self.inner = HashingEncoder(dim)
        self.dim = dim
        self.down = 0  # the next this-many calls fail (an outage)
        self.calls = 0

    async def run_sync(self, texts: list[str], kind: str = "item") -> np.ndarray:
        self.calls += 1
        if self.down:
            self.down -= 1
            raise RuntimeError("CUDA error: out of memory")
        if any("boom" in t for t in texts):
            raise ValueError("tokenizer cannot handle this text")
        out = np.asarray(self.inner.encode(texts), dtype=np.float32)
        for i, t in enumerate(texts):
            if "poison" in t:
                out[i] = np.nan
        return out


def _item(i: str, title: str) -> bytes:
    return orjson.dumps({"item_id": i, "title": title})


def _settings(tmp_path) -> Settings:
    return Settings.from_env({}, state_dir=str(tmp_path / "state"), retry_backoff_s=0.001,
                             retry_max_backoff_s=0.01)


# ------------------------------------------------------------------ a bad item alone
@pytest.mark.parametrize("bad, reason", [("poison pill", "non_finite_vector"),
                                         ("boom box", "encoder_error")])
def test_a_bad_item_is_rejected_alone_and_the_rest_added(tmp_path, bad, reason) -> None:
    pipe = Pipeline(_settings(tmp_path), HashingEncoder(8), dead_letters=DeadLetters(),
                    clock=ManualClock())
    enc = FlakyEncoder()

    async def run() -> None:
        values = [_item(f"i{k}", f"good item {k}") for k in range(5)]
        values.insert(2, _item("bad", bad))
        n = await pipe.catalog.add_raw(values, enc)
        assert n == 5
        assert set(pipe.catalog.items) == {f"i{k}" for k in range(5)}
        assert len(pipe.catalog.index) == 5
        assert pipe.catalog.rejected[reason] == 1

    asyncio.run(run())


def test_an_encoder_down_is_not_blamed_on_the_items(tmp_path) -> None:
    """Every text failing (the encoder, not an item): an error for the caller to retry, no item
    rejected."""
    pipe = Pipeline(_settings(tmp_path), HashingEncoder(8), dead_letters=DeadLetters(),
                    clock=ManualClock())
    enc = FlakyEncoder()
    enc.down = 1000

    async def run() -> None:
        with pytest.raises(EncoderError, match="the item encoder is failing"):
            await pipe.catalog.add_raw([_item("a", "alpha"), _item("b", "beta")], enc)
        assert not pipe.catalog.rejected and not pipe.catalog.items

    asyncio.run(run())


def test_in_process_worker_items_skip_a_nan_vector(tmp_path) -> None:
    enc = HashingEncoder(8)

    class NanOnPoison(HashingEncoder):
        def encode(self, texts):  # type: ignore[no-untyped-def]
            out = np.asarray(enc.encode(texts), dtype=np.float32)
            out[[i for i, t in enumerate(texts) if "poison" in t]] = np.inf
            return out

    async def run() -> None:
        async with InProcessWorker(_settings(tmp_path), NanOnPoison(8)) as w:
            n = await w.items([{"item_id": "a", "title": "fine"},
                               {"item_id": "p", "title": "poison"}])
            assert n == 1 and set(w.pipeline.catalog.items) == {"a"}
            assert w.pipeline.catalog.rejected["non_finite_vector"] == 1

    asyncio.run(run())


# ------------------------------------------------------------------ the supervised feed
class FakeConsumer:
    """Enough of aiokafka's consumer for ``follow_catalog``, over a shared in-memory log."""

    def __init__(self, log: list[bytes]) -> None:
        self.log = log
        self.tp = TopicPartition(TOPIC, 0)
        self.pos = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def seek_to_beginning(self, *tps: Any) -> None:
        self.pos = 0

    def seek(self, tp: Any, offset: int) -> None:
        self.pos = offset

    async def getmany(self, timeout_ms: int = 0, max_records: int = 0) -> dict[Any, list[Any]]:
        if self.pos >= len(self.log):
            await asyncio.sleep(0.002)  # a poll's wait (the broker's), not synchronisation
            return {}
        msgs = [SimpleNamespace(partition=0, offset=o, timestamp=0, key=None, value=v,
                                headers=()) for o, v in enumerate(self.log) if o >= self.pos]
        self.pos = len(self.log)
        return {self.tp: msgs}


@pytest.fixture
def fake_broker(monkeypatch) -> list[bytes]:
    log: list[bytes] = []
    monkeypatch.setattr(catalog_feed, "build", lambda *a, **kw: FakeConsumer(log))

    async def assign_all(consumer: Any, topic: str, timeout_s: float = 0) -> list[Any]:
        return [consumer.tp]

    async def caught_up(consumer: Any, tps: list[Any], empty_polls: int, patience: int = 3) -> bool:
        return consumer.pos >= len(consumer.log)

    monkeypatch.setattr(catalog_feed, "assign_all", assign_all)
    monkeypatch.setattr(catalog_feed, "caught_up", caught_up)
    return log


async def _until(cond: Callable[[], bool], what: str) -> None:
    async def wait() -> None:
        while not cond():
            await asyncio.sleep(0.002)
    try:
        await asyncio.wait_for(wait(), DEADLINE_S)
    except TimeoutError:
        raise AssertionError(f"not within {DEADLINE_S}s: {what}") from None


def _feed(tmp_path) -> tuple[Settings, Pipeline]:
    s = _settings(tmp_path)
    pipe = Pipeline(s, HashingEncoder(8), dead_letters=DeadLetters(), clock=ManualClock())
    pipe.sharing.mark_caught_up()
    pipe.assigned_once.set()
    return s, pipe


def test_feed_retries_a_transient_encoder_failure_then_adds_the_items(tmp_path,
                                                                        fake_broker) -> None:
    s, pipe = _feed(tmp_path)
    enc = FlakyEncoder()
    fake_broker += [_item("a", "alpha"), _item("b", "beta")]
    enc.down = 3  # the first three encoder calls fail

    async def run() -> None:
        task = asyncio.create_task(catalog_feed.follow_catalog(s, pipe.catalog, enc))
        try:
            await _until(lambda: set(pipe.catalog.items) == {"a", "b"} or task.done(),
                         "items added after the encoder came back")
            assert not task.done(), f"the catalogue reader stopped: {task.exception()!r}"
            assert set(pipe.catalog.items) == {"a", "b"}
            assert not pipe.catalog.rejected  # an outage rejects nothing
            await _until(pipe.ready, "ready again")
        finally:
            task.cancel()

    asyncio.run(run())


def test_readyz_reflects_a_catalogue_reader_that_is_failing(tmp_path, fake_broker) -> None:
    s, pipe = _feed(tmp_path)
    enc = FlakyEncoder()
    fake_broker.append(_item("a", "alpha"))

    async def run() -> None:
        task = asyncio.create_task(
            catalog_feed.follow_catalog(s, pipe.catalog, enc, pipe.metrics))
        try:
            await _until(pipe.ready, "ready once caught up")
            enc.down = 10 ** 9  # the encoder goes down; a new item arrives
            fake_broker.append(_item("b", "beta"))
            await _until(lambda: not pipe.ready() or task.done(), "not ready while failing")
            assert not task.done(), f"the catalogue reader stopped: {task.exception()!r}"
            assert not pipe.ready()
            await _until(lambda: pipe.metrics.catalog_retries._value.get() >= 3,
                         "retried (profiles_catalog_retries_total)")
            assert pipe.metrics.catalog_reader_down._value.get() == 1
            enc.down = 0  # back
            await _until(lambda: "b" in pipe.catalog.items and pipe.ready(), "recovered")
            assert pipe.metrics.catalog_reader_down._value.get() == 0
        finally:
            task.cancel()

    asyncio.run(run())


def test_feed_counts_rejected_items_and_moves_on(tmp_path, fake_broker) -> None:
    s, pipe = _feed(tmp_path)
    enc = FlakyEncoder()
    fake_broker += [_item("a", "alpha"), _item("p", "poison"), _item("x", "boom"),
                    _item("b", "beta")]

    async def run() -> None:
        task = asyncio.create_task(
            catalog_feed.follow_catalog(s, pipe.catalog, enc, pipe.metrics))
        try:
            await _until(lambda: pipe.catalog.caught_up.is_set() or task.done(), "caught up")
            assert not task.done(), f"the catalogue reader stopped: {task.exception()!r}"
            assert set(pipe.catalog.items) == {"a", "b"}
            assert pipe.catalog.offsets == {0: 4}
            rejected = pipe.metrics.catalog_rejected
            assert rejected.labels("non_finite_vector")._value.get() == 1
            assert rejected.labels("encoder_error")._value.get() == 1
        finally:
            task.cancel()

    asyncio.run(run())
