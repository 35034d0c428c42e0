"""The record the worker consumes: one Kafka message of the events topic, typed.

The Kafka layer builds them (``stream.kafka.app``, ``stream.kafka.highwater``); tests build them
with ``stream.worker.testing``.  Nothing else reads Kafka's own message classes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from stream.worker.privacy import HASHED_HEADER

__all__ = ["Headers", "Record", "from_message"]

Headers = tuple[tuple[str, bytes], ...]


class Record(NamedTuple):
    """One message: where it is (partition, offset), when the broker stamped it, and its bytes.

    A NamedTuple, not a dataclass: one is built per event on the hot path, and a frozen
    dataclass costs about three times as much to build."""

    partition: int
    offset: int
    #: Kafka message timestamp, epoch ms (0 when the broker gave none)
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()

    @property
    def id_tag(self) -> bytes | None:
        """The ``profiles-id-hashed`` header: a claim that the user id is already pseudonymised
        (a dead letter re-published by ``dlq replay``), to be verified
        (``Pseudonymizer.verify``) before it is believed; None when absent."""
        for k, v in self.headers:
            if k == HASHED_HEADER:
                return v
        return None

    def header(self, name: str) -> bytes | None:
        """The first header of that name, or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None


def from_message(msg: Any, timestamp_scale: float = 1.0) -> Record:
    """The record of a Kafka client's message (faust, aiokafka or kafka-python: the same
    attribute names); ``timestamp_scale`` turns its timestamp into ms (faust's is in seconds)."""
    headers = msg.headers
    return Record(msg.partition, msg.offset, int((msg.timestamp or 0) * timestamp_scale),
                  msg.key, msg.value, tuple(headers) if headers else ())
