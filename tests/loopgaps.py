"""How long the event loop's thread went between two turns of a ticker task (tests that a
piece of work lets the loop in).  CPU time of the loop's thread: other processes on busy cores
do not count."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any


class LoopGaps:
    """``async with LoopGaps() as g: ...`` then ``max(g.gaps)``: a ticker task sleeps 0.5 ms
    at a time and records the loop thread's CPU time between its turns."""

    def __init__(self, settle_s: float = 0.005) -> None:
        self.gaps: list[float] = []
        self.settle_s = settle_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.thread_time()
        while not self._stop.is_set():
            await asyncio.sleep(0.0005)
            now = time.thread_time()
            self.gaps.append(now - last)
            last = now

    async def __aenter__(self) -> LoopGaps:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(self.settle_s)
        self.gaps.clear()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


async def max_gap(coro: Awaitable[Any]) -> float:
    """The longest gap between the ticker's turns while ``coro`` ran."""
    async with LoopGaps() as g:
        await coro
    return max(g.gaps)
