"""The broker stage ends when the Fetch response reached aiokafka (stream.worker.latency:
FetchLog.arrived; stream.kafka.fetch_stamps), not when faust's consumer thread handed the
records over: the time in aiokafka's buffer and faust's hand-off counts as ``buffer``."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, namedtuple
from types import SimpleNamespace

import numpy as np
import pytest

from stream.kafka import fetch_stamps
from stream.kafka.fetch_stamps import StampedRecords, stamp_fetches
from stream.worker.latency import FetchLog

pytestmark = pytest.mark.unit

TP = namedtuple("TP", "topic partition")


class Ticks:
    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def _result(first: int) -> SimpleNamespace:
    """An aiokafka FetchResult as far as StampedRecords reads it."""
    return SimpleNamespace(_partition_records=SimpleNamespace(next_fetch_offset=first))


def test_an_offset_gets_the_arrival_of_the_response_that_carried_it() -> None:
    log = FetchLog(Ticks(1.0, 2.0, 5.0, 6.0, 7.0))
    log.arrived(0, 0)        # t=1: a response with offsets 0.. of p0
    log.arrived(0, 10)       # t=2: the next, from 10
    log.polled({0: 9})       # t=5: faust's poll returned ..9
    log.polled({0: 14, 1: 3})  # t=6: ..14; p1 ..3 (no response noted for p1)
    log.arrived(1, 4)        # t=7: p1 from 4, not polled yet
    got = log.times(np.array([0, 0, 0, 0, 1, 1, 0]), np.array([0, 9, 10, 14, 3, 4, 15]))
    np.testing.assert_array_equal(got[:4], [1.0, 1.0, 2.0, 2.0])  # arrival, not the poll (5, 6)
    assert got[4] == 6.0  # p1 offset 3: no response covers it -> the poll
    assert got[5] == 7.0  # arrived, delivered before the next poll was noted
    assert got[6] == 2.0  # the newest response starting at or before 15


def test_a_seek_starts_a_new_run_of_responses_and_a_late_arrival_never_wins() -> None:
    log = FetchLog(Ticks(1.0, 2.0, 3.0, 4.0, 8.0, 9.0))
    log.arrived(0, 0)    # t=1
    log.arrived(0, 50)   # t=2
    log.arrived(0, 20)   # t=3: re-read from 20 after a seek: only this run counts
    log.polled({0: 30})  # t=4
    log.polled({2: 5})   # t=8: p2 ..5 returned by a poll
    log.arrived(2, 0)    # t=9: noted after that poll (it cannot have carried it)
    got = log.times(np.array([0, 0, 0, 2]), np.array([10, 20, 55, 3]))
    assert got[0] == 4.0  # before the newest run: falls back to the poll
    assert got[1] == 3.0 and got[2] == 3.0
    assert got[3] == 8.0  # an arrival later than the poll that returned it is not believed


def test_stamped_records_report_each_fetch_result_with_its_first_offset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(fetch_stamps, "_ON_FETCH", {"events": lambda p, o: seen.append((p, o))})
    buf = StampedRecords()
    buf[TP("events", 3)] = _result(41)
    buf[TP("items", 0)] = _result(7)           # another topic: not reported
    buf[TP("events", 1)] = object()            # a fetch error, not a result: not reported
    assert seen == [(3, 41)]
    # still aiokafka's OrderedDict: order, deletion, popitem
    assert list(buf) == [TP("events", 3), TP("items", 0), TP("events", 1)]
    del buf[TP("events", 3)]
    assert buf.popitem(last=False)[0] == TP("items", 0)
    assert isinstance(buf, OrderedDict)


def test_a_topics_responses_reach_its_fetch_log_before_the_poll(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_stamps, "_ON_FETCH", {})

    class Consumer:
        async def _getmany(self, active: object, timeout: float) -> dict:
            return {TP("events", 0): [SimpleNamespace(offset=5)]}

    class Fetcher:
        def __init__(self) -> None:
            self._records: OrderedDict = OrderedDict()

    log = FetchLog(Ticks(1.0, 3.0))
    c = Consumer()
    assert log.wrap(c, "events")
    stamp_fetches("events", log.arrived, Fetcher)
    Fetcher()._records[TP("events", 0)] = _result(5)  # t=1, in aiokafka
    asyncio.run(c._getmany(None, 0.1))                # t=3, faust's poll
    assert log.times(np.array([0]), np.array([5])).tolist() == [1.0]


def test_stamp_fetches_swaps_the_buffer_of_fetchers_built_afterwards(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_stamps, "_ON_FETCH", {})

    class Fetcher:
        def __init__(self, stored: bool = False) -> None:
            self._records: OrderedDict = OrderedDict()
            if stored:
                self._records["x"] = 1

    before = Fetcher()
    stamp_fetches("events", lambda p, o: None, Fetcher)
    patched = Fetcher.__init__
    stamp_fetches("events", lambda p, o: None, Fetcher)
    assert Fetcher.__init__ is patched  # patched once only
    assert type(before._records) is OrderedDict
    assert type(Fetcher()._records) is StampedRecords
    kept = Fetcher(stored=True)  # something already stored: never replaced (nothing lost)
    assert type(kept._records) is OrderedDict and kept._records["x"] == 1


def test_stamp_fetches_on_aiokafkas_own_fetcher(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka.client import AIOKafkaClient
    from aiokafka.consumer.fetcher import Fetcher
    from aiokafka.consumer.subscription_state import SubscriptionState

    monkeypatch.setattr(Fetcher, "__init__", Fetcher.__init__)  # restored afterwards
    monkeypatch.setattr(Fetcher, "_profiles_stamped", False, raising=False)
    monkeypatch.setattr(fetch_stamps, "_ON_FETCH", {})
    stamp_fetches("events", lambda p, o: None)

    async def build() -> object:
        fetcher = Fetcher(AIOKafkaClient(bootstrap_servers="127.0.0.1:9"), SubscriptionState())
        records = fetcher._records
        await fetcher.close()
        return records

    assert type(asyncio.run(build())) is StampedRecords
