"""What the worker needs from the outside world, as protocols.

The Kafka layer implements them on faust's producer (``stream.kafka.app.FaustIO``);
``stream.worker.testing`` implements them in memory.  The pipeline is given them when it is
built, never attached afterwards.
"""

from __future__ import annotations

import time
from typing import Protocol

from stream.core.errors import ProfilesError

__all__ = ["Clock", "DeadLetterError", "DeadLetterSink", "EventPublisher", "Header",
           "SignalSink", "SystemClock", "TransientError"]

Header = tuple[str, bytes]


class TransientError(ProfilesError):
    """A service outside the batch failed (the encoder, the broker): the batch is retried with
    backoff, never bisected and never dead-lettered while the service stays down."""


class DeadLetterError(TransientError):
    """The dead-letter sink refused a write: the batch waits (``profiles_stalled``) until it
    can be written, it is never skipped."""


class DeadLetterSink(Protocol):
    """Sends one dead-letter record and returns once the broker acknowledged it.

    ``value`` None is a tombstone (log compaction then erases that key's records).
    """

    async def __call__(self, key: bytes | None, value: bytes | None,
                       headers: list[Header]) -> None: ...


class EventPublisher(Protocol):
    """Publishes one record to the events topic (``DELETE /users/{id}`` sends a forget)."""

    async def __call__(self, key: bytes, value: bytes) -> None: ...


class SignalSink(Protocol):
    """Publishes signal partials (``(key, value)`` pairs) to the compacted signals topic and
    returns once the broker acknowledged every one of them (``stream.worker.sharing``)."""

    async def __call__(self, messages: list[tuple[bytes, bytes]]) -> None: ...


class Clock(Protocol):
    """Time for the worker: ``wall()`` (epoch s: latency, parking) and ``monotonic()``
    (snapshot scheduling).  Tests pass a clock they move by hand."""

    def wall(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clock."""

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
