"""The record the worker consumes: one Kafka message of the events topic, typed.

The Kafka layer builds them (``stream.kafka.app``, ``stream.kafka.highwater``); tests build them
with ``stream.worker.testing``.  Nothing else reads Kafka's own message classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream.worker.privacy import HASHED_HEADER

__all__ = ["Headers", "Record"]

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Record:
    """One message: where it is (partition, offset), when the broker stamped it, and its bytes."""

    partition: int
    offset: int
    #: Kafka message timestamp, epoch ms (0 when the broker gave none)
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()

    @property
    def id_hashed(self) -> bool:
        """The user id is already pseudonymised (a dead letter re-published by ``dlq replay``)."""
        return any(k == HASHED_HEADER for k, _ in self.headers)

    def header(self, name: str) -> bytes | None:
        """The first header of that name, or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None
