"""The changelog's records in memory (``stream.kafka.changelog``): what was read of one
changelog partition (the latest record per chunk key, and per blob its newest whole version),
and the private event loop its producer runs on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Blob", "Chunk", "LoopThread", "PartitionLog", "last_offset", "tombstone"]

T = TypeVar("T")


@dataclass
class Chunk:
    """One record of a blob (at ``offset``); ``chunks == 0``: a tombstone.  ``data`` is None
    when its bytes are not kept (fetched again by offset when needed)."""

    offset: int
    chunks: int
    sha256: str
    size: int
    data: bytes | None


@dataclass
class Blob:
    """One whole version of a blob: its chunks, in order."""

    sha256: str
    size: int
    parts: list[Chunk]


class PartitionLog:
    """What was read of one changelog partition: the latest record per chunk key, and per
    blob name its newest complete version."""

    def __init__(self) -> None:
        self.position = 0  # the next offset to read
        self.chunks: dict[str, dict[int, Chunk]] = {}
        self.blobs: dict[str, Blob] = {}

    def apply(self, name: str, index: int, chunk: Chunk, keep_bytes: bool) -> None:
        """The record of key ``<name>#<index>`` at ``chunk.offset`` (read, or written by this
        store); a tombstone is a chunk with ``chunks == 0``.  Records apply in offset order
        per key: one older than what is known (an own write read back) changes nothing."""
        keys = self.chunks.setdefault(name, {})
        old = keys.get(index)
        if old is not None and old.offset >= chunk.offset:
            return
        if not keep_bytes:
            chunk.data = None
        keys[index] = chunk
        current = self.blobs.get(name)
        if chunk.chunks == 0:  # a tombstone: a delete tombstones every chunk, the first too
            if index == 0 and current is not None and last_offset(current) < chunk.offset:
                del self.blobs[name]
            if all(c.chunks == 0 for c in keys.values()) and name not in self.blobs:
                del self.chunks[name]  # a deleted blob leaves nothing behind
            return
        parts = [keys.get(i) for i in range(chunk.chunks)]
        whole = [c for c in parts if c is not None and c.sha256 == chunk.sha256
                 and c.chunks == chunk.chunks and c.size == chunk.size]
        if len(whole) == chunk.chunks:
            blob = Blob(chunk.sha256, chunk.size, whole)
            if current is None or last_offset(current) < last_offset(blob):
                self.blobs[name] = blob


def tombstone(offset: int) -> Chunk:
    return Chunk(offset, 0, "", 0, None)


def last_offset(blob: Blob) -> int:
    return max(c.offset for c in blob.parts)


class LoopThread:
    """An event loop of its own, run by a daemon thread; :meth:`run` blocks the caller."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="profiles-changelog",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()
