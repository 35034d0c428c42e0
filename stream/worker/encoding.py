"""Async shell around an ``Encoder``: micro-batching, a query cache, and inference off the loop.

Callers ``await service.encode(texts)``; texts from concurrent callers are grouped by the
pure ``MicroBatcher`` (size cap + max wait) and encoded on one dedicated thread, so torch
never blocks the event loop (Kafka heartbeats keep flowing) and the model sees full batches.
Awaiting callers give natural backpressure: the stream does not read ahead of the encoder.

Query vectors are cached by text in an LRU bounded in bytes (``PROFILES_ENCODER_CACHE_BYTES``,
default 64 MiB; 0 turns it off): an entry costs :func:`cache_entry_bytes` (the text, its
vector and the bookkeeping), a hit makes it the most recent, and the least recently used are
evicted beyond the bound (``profiles_encoder_cache_evictions_total``).  Texts are client data
(search queries), so the cache must not grow with them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from encoder.base import Encoder
from stream.core.batcher import MicroBatcher
from stream.worker.metrics import Metrics

__all__ = ["DEFAULT_CACHE_BYTES", "EncoderService", "cache_entry_bytes"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
#: per entry beyond the text and the vector's data: the ndarray header (~112 B) and the
#: OrderedDict's share (~70 B), measured with tracemalloc on CPython 3.11, rounded up
_ENTRY_OVERHEAD = 200


def cache_entry_bytes(text: str, dim: int) -> int:
    """What one cached query costs: its text (the str object), its float32 vector and the
    objects around them."""
    return sys.getsizeof(text) + 4 * dim + _ENTRY_OVERHEAD


class EncoderService:
    def __init__(self, encoder: Encoder, max_batch: int, max_wait_s: float,
                 metrics: Metrics | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.encoder = encoder
        self.dim: int = encoder.dim
        self.metrics = metrics
        self._batcher: MicroBatcher[tuple[str, asyncio.Future[np.ndarray]]] = MicroBatcher(
            max_batch, max_wait_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        #: the bound (bytes), and what the cached entries cost now
        self.cache_limit = max(0, int(cache_bytes))
        self.cache_bytes = 0
        #: entries evicted so far (also profiles_encoder_cache_evictions_total)
        self.evicted = 0

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

    async def encode(self, texts: list[str], whole: bool = False) -> np.ndarray:
        """Embeddings for ``texts`` (float32 [n, dim]); repeated texts are served from a cache.

        ``whole``: the caller's texts are a batch already (the pipeline's queries of one
        micro-batch): what is pending is dispatched now instead of waiting up to
        ``PROFILES_ENCODER_MAX_WAIT_S`` for other callers' texts, which the whole batch would
        wait for (requests' texts pending meanwhile go with it)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        loop = asyncio.get_running_loop()
        pending: dict[str, asyncio.Future[np.ndarray]] = {}
        now = time.monotonic()
        todo: list[int] = []
        cache = self._cache
        for i, t in enumerate(texts):
            hit = cache.get(t)
            if hit is not None:
                cache.move_to_end(t)  # least recently *used* goes first
                out[i] = hit
                continue
            todo.append(i)
            if t in pending:
                continue
            fut = loop.create_future()
            pending[t] = fut
            for batch in self._batcher.add((t, fut), now):
                self._dispatch(batch)
        if whole and pending:
            rest = self._batcher.flush()
            if rest:
                self._dispatch(rest)
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
            self._remember(t, v)
            if not fut.done():
                fut.set_result(v)

    def _remember(self, text: str, vector: np.ndarray) -> None:
        """Cache one query vector (a copy: a row view would keep its whole batch alive) and
        evict the least recently used entries beyond the byte bound."""
        cost = cache_entry_bytes(text, self.dim)
        if cost > self.cache_limit:
            return
        cache = self._cache
        old = cache.pop(text, None)
        if old is not None:
            self.cache_bytes -= cache_entry_bytes(text, self.dim)
        cache[text] = np.array(vector, dtype=np.float32, copy=True)
        self.cache_bytes += cost
        evicted = 0
        while self.cache_bytes > self.cache_limit:
            t, _ = cache.popitem(last=False)
            self.cache_bytes -= cache_entry_bytes(t, self.dim)
            evicted += 1
        if evicted:
            self.evicted += evicted
            if self.metrics:
                self.metrics.encoder_cache_evictions.inc(evicted)

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
