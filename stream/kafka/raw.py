"""The raw Kafka client, without faust: the benchmark's reference stage R.

``drain`` reads exactly ``n`` records of a pre-filled topic with a plain ``AIOKafkaConsumer``
in a fresh consumer group and ``orjson.loads`` each value; it is timed from the group's
partition assignment (so the first fetch is timed too) and from the first delivery.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from stream.core.errors import ProfilesError
from stream.kafka.clients import build
from stream.settings import Settings

__all__ = ["drain"]


async def drain(s: Settings, topic: str, group: str, n: int, batch: int,
                timeout_s: float) -> dict[str, Any]:
    """Read ``n`` records of ``topic`` as fast as the raw consumer can; timings in seconds."""
    from aiokafka import ConsumerRebalanceListener

    t_assigned: list[float] = []

    class Listener(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        async def on_partitions_assigned(self, assigned: Any) -> None:
            t_assigned.append(time.perf_counter())

    consumer = build("aio_consumer", s, group_id=group, auto_offset_reset="earliest",
                     enable_auto_commit=False,
                     session_timeout_ms=int(s.session_timeout_s * 1000),
                     heartbeat_interval_ms=int(max(0.5, s.session_timeout_s / 6) * 1000))
    consumer.subscribe([topic], listener=Listener())
    await consumer.start()
    loads = orjson.loads
    count = 0
    n_first = 0
    t_first = None
    deadline = time.monotonic() + timeout_s
    try:
        while count < n:
            if time.monotonic() > deadline:
                raise ProfilesError(f"stage R: {count}/{n} events after {timeout_s:.0f}s")
            got = await consumer.getmany(timeout_ms=500, max_records=batch)
            if not got:
                continue
            if t_first is None:
                t_first = time.perf_counter()
            k = 0
            for msgs in got.values():
                for m in msgs:
                    loads(m.value)
                k += len(msgs)
            count += k
            if not n_first:
                n_first = k
        t_end = time.perf_counter()
    finally:
        await consumer.stop()
    assert t_first is not None
    # From the end of the group join (assignment), so the first fetch is timed too; the
    # first-delivery figure is kept for comparison with F and F0.
    return {"count": count, "n_first": n_first, "seconds": t_end - t_assigned[0],
            "seconds_from_first": t_end - t_first}
