"""Async shell around an ``Encoder``: micro-batching, a query cache, and inference off the loop.

Callers ``await service.encode(texts)``; texts from concurrent callers are grouped by the
pure ``MicroBatcher`` (size cap + max wait) and encoded on one dedicated thread, so torch
never blocks the event loop (Kafka heartbeats keep flowing) and the model sees full batches.
Awaiting callers give natural backpressure: the stream does not read ahead of the encoder.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from encoder.base import Encoder
from stream.core.batcher import MicroBatcher
from stream.worker.metrics import Metrics

__all__ = ["EncoderService"]

log = logging.getLogger(__name__)


class EncoderService:
    def __init__(self, encoder: Encoder, max_batch: int, max_wait_s: float,
                 metrics: Metrics | None = None, cache_size: int = 50_000) -> None:
        self.encoder = encoder
        self.dim: int = encoder.dim
        self.metrics = metrics
        self._batcher: MicroBatcher[tuple[str, asyncio.Future[np.ndarray]]] = MicroBatcher(
            max_batch, max_wait_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="encoder-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def run_sync(self, texts: list[str], kind: str = "item") -> np.ndarray:
        """Encode one caller's texts as a single call on the encoder thread (catalogue loads)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._encode, texts, kind)

    def _encode(self, texts: list[str], kind: str) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            out = self.encoder.encode(texts)
        except Exception:
            if self.metrics:
                self.metrics.encoder_errors.inc()
            raise
        if self.metrics:
            self.metrics.encoder_seconds.observe(time.perf_counter() - t0)
            self.metrics.encoder_texts.labels(kind).inc(len(texts))
        return out

    async def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings for ``texts`` (float32 [n, dim]); repeated texts are served from a cache."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        loop = asyncio.get_running_loop()
        pending: dict[str, asyncio.Future[np.ndarray]] = {}
        now = time.monotonic()
        todo: list[int] = []
        for i, t in enumerate(texts):
            hit = self._cache.get(t)
            if hit is not None:
                out[i] = hit
                continue
            todo.append(i)
            if t in pending:
                continue
            fut = loop.create_future()
            pending[t] = fut
            for batch in self._batcher.add((t, fut), now):
                self._dispatch(batch)
        if len(self._batcher):
            self._wakeup.set()
        if pending:
            await asyncio.gather(*pending.values())
        for i in todo:
            out[i] = pending[texts[i]].result()
        return out

    def _dispatch(self, batch: list[tuple[str, asyncio.Future[np.ndarray]]]) -> None:
        asyncio.get_running_loop().create_task(self._encode_batch(batch))

    async def _encode_batch(self, batch: list[tuple[str, asyncio.Future[np.ndarray]]]) -> None:
        texts = [t for t, _ in batch]
        try:
            vecs = await self.run_sync(texts, kind="query")
        except Exception as exc:  # every waiter learns of the failure
            log.exception("encoder failed on a batch of %d texts", len(texts))
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (t, fut), v in zip(batch, vecs):
            self._cache[t] = v
            if not fut.done():
                fut.set_result(v)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _run(self) -> None:
        while True:
            due = self._batcher.due(time.monotonic())
            if due is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if due > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=due)
                except TimeoutError:
                    pass
            batch = self._batcher.poll(time.monotonic())
            if batch:
                self._dispatch(batch)
