"""The latency benchmark's producer is open-loop (stream.bench.pipeline.open_loop): message i
goes out at its due time i / rate from the first send, whatever happened before; a stall
makes the messages due meanwhile go out together, then the schedule goes on unshifted."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from stream.bench.pipeline import TICK_S, open_loop

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.t = 100.0
        self.stall_at: float | None = None  # one stall of 0.1 s once the clock passes this

    def __call__(self) -> float:
        return self.t

    async def sleep(self, d: float) -> None:
        await asyncio.sleep(0)  # the acks' callbacks run meanwhile, as they would
        self.t += d
        if self.stall_at is not None and self.t >= self.stall_at:
            self.stall_at = None
            self.t += 0.1


class Producer:
    """Records each send's time; acks come 3 ms after the send (wall = clock * 1000 ms), or
    fail for the keys in ``fail``."""

    def __init__(self, clock: Clock, fail: frozenset[bytes] = frozenset()) -> None:
        self.clock, self.fail = clock, fail
        self.sent: list[tuple[float, bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.sent.append((self.clock(), key, value))
        if key in self.fail:
            fut.set_exception(TimeoutError("no ack"))
        else:
            fut.set_result(SimpleNamespace(timestamp=self.clock() * 1000.0 - 3.0))
        return fut


def _run(producer: Producer, clock: Clock, n: int, rate: float) -> dict:
    keys = [f"u{i}".encode() for i in range(n)]
    values = [f"v{i}".encode() for i in range(n)]
    return asyncio.run(open_loop(producer, "events", keys, values, rate, clock=clock,
                                 sleep=clock.sleep, wall_ms=lambda: clock() * 1000.0))


def test_each_message_goes_out_at_its_due_time() -> None:
    clock = Clock()
    p = Producer(clock)
    out = _run(p, clock, 1000, 500.0)
    assert [k for _, k, _ in p.sent] == [f"u{i}".encode() for i in range(1000)]  # in order
    for i, (t, _, _) in enumerate(p.sent):
        due = 100.0 + i / 500.0
        assert due - 1e-6 <= t <= due + TICK_S + 1e-9
    assert out["sent"] == 1000 and out["failed"] == 0
    assert out["ack_p50_ms"] == pytest.approx(3.0) and out["ack_p99_ms"] == pytest.approx(3.0)
    assert out["seconds"] == pytest.approx(999 / 500.0, abs=TICK_S)
    assert out["max_behind_ms"] <= 1000 * TICK_S


def test_a_stall_neither_drops_nor_shifts_the_schedule() -> None:
    clock = Clock()
    clock.stall_at = 100.5  # 0.1 s without a send from about message 250 on
    p = Producer(clock, fail=frozenset({b"u7"}))
    out = _run(p, clock, 1000, 500.0)
    times = [t for t, _, _ in p.sent]
    assert len(times) == 1000
    burst = [i for i in range(1, 1000) if times[i] == times[i - 1]]
    assert len(burst) >= 45  # the ~50 messages due during the stall go out at once...
    for i in range(400, 1000):  # ...and afterwards each is at its own due time again
        due = 100.0 + i / 500.0
        assert due - 1e-6 <= times[i] <= due + TICK_S + 1e-9
    assert out["max_behind_ms"] >= 90  # how far the stall put it behind
    assert out["sent"] == 999 and out["failed"] == 1 and out["errors"] == {"TimeoutError": 1}


def test_the_rate_must_be_positive() -> None:
    clock = Clock()
    with pytest.raises(ValueError, match="rate must be > 0"):
        _run(Producer(clock), clock, 3, 0.0)
