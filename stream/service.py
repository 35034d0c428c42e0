"""The composition root: ``profiles worker`` builds every part here, once, and runs it.

    settings ─► encoder ─► Pipeline(settings, encoder, dead_letters=FaustIO, clock)
                          ├─► Queries(pipeline, peers=Router, decisions, publish=FaustIO)
                          │      └─► Api (aiohttp routes) on the HTTP port
                          └─► wire(faust app, pipeline): agent, rebalance hooks, timers,
                                 catalogue feed

Nothing is attached after construction: each object is given what it talks to when it is
made.  This is the only module that knows every layer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from encoder import load_encoder
from encoder.base import Encoder
from encoder.sequence import SEQUENCE_META, SequenceModel
from stream.kafka.app import FaustIO, quiet_client_logs, run_app, wire, worker_app
from stream.kafka.changelog import changelog_store, changelog_topics
from stream.kafka.clients import AsyncTopicProducer, create_topics
from stream.kafka.membership import FaustMembership
from stream.kafka.signals_feed import SIGNALS_TOPIC_CONFIG, SignalPublisher
from stream.serve.decisions import DecisionLogger
from stream.serve.http import Api, check_exposure
from stream.serve.queries import Queries
from stream.serve.routing import Router
from stream.settings import Settings
from stream.worker.blas_threads import set_blas_threads
from stream.worker.blobs import LocalBlobStore
from stream.worker.faiss_threads import set_faiss_threads
from stream.worker.gil import set_gil_switch
from stream.worker.latency import set_torch_threads
from stream.worker.malloc_tune import set_mmap_threshold
from stream.worker.pipeline import Pipeline

__all__ = ["Service", "build_service", "run", "run_worker"]

log = logging.getLogger("stream.service")


@dataclass
class Service:
    """Every part of one worker process, built and connected."""

    settings: Settings
    app: Any  # the faust.App (stream.kafka.app.worker_app)
    pipeline: Pipeline
    queries: Queries
    api: Api
    router: Router
    decisions: DecisionLogger | None
    signals: SignalPublisher | None = None
    runner: web.AppRunner | None = None

    async def start_http(self) -> None:
        s = self.settings
        check_exposure(s)  # also checked before anything is loaded (run_worker)
        self.runner = self.api.runner()
        await self.runner.setup()
        await web.TCPSite(self.runner, s.http_host, s.http_port).start()
        log.info("HTTP on http://%s:%d (metrics at /metrics)", s.http_host, s.http_port)

    async def stop(self) -> None:
        if self.decisions is not None:  # flush logged decisions still in flight
            await self.decisions.close()
        await self.router.close()
        if self.signals is not None:  # after the shutdown publish (on_before_shutdown)
            await self.signals.close()
        close = getattr(self.pipeline.blobs, "close", None)  # the changelog's clients, after
        if close is not None:  # the shutdown snapshot
            await asyncio.get_running_loop().run_in_executor(None, close)


def load_sequence(s: Settings) -> SequenceModel | None:
    """The sequence source's model: ``sequence.json`` in the ranker's directory (written by
    ``profiles ranker train``), else None (no sequence source)."""
    if not s.ranker_dir or not (Path(s.ranker_dir) / SEQUENCE_META).is_file():
        return None
    return SequenceModel.load(s.ranker_dir)


def build_service(settings: Settings, encoder: Encoder) -> Service:
    """The worker's parts for ``settings`` and ``encoder``, connected."""
    s = settings
    app = worker_app(s)
    io = FaustIO(app, s)
    signals = SignalPublisher(s)
    # partition state: in the Kafka changelog too (PROFILES_CHANGELOG), the folder a cache
    pipeline = Pipeline(s, encoder, dead_letters=io.send_dead_letter, signals=signals,
                        blob_store=lambda folder: changelog_store(s, LocalBlobStore(folder),
                                                                  encoder.fingerprint))

    def ready() -> bool:
        return pipeline.ready() and not io.rebalancing()

    router = Router(FaustMembership(app, s.events_topic, s.public_url()))
    decisions = (DecisionLogger(AsyncTopicProducer(s, s.decisions_topic))
                 if s.decisions_topic else None)
    queries = Queries(pipeline, peers=router, decisions=decisions, publish=io.publish_event,
                      ready=ready, sequence=load_sequence(s))
    api = Api(queries, token=s.api_token.reveal(), router=router)
    service = Service(s, app, pipeline, queries, api, router, decisions, signals)
    wire(app, io, s, pipeline, on_start=service.start_http, on_stop=service.stop, ready=ready)
    return service


def run_worker(settings: Settings) -> None:
    """Build the encoder and the worker, then run until SIGTERM/SIGINT."""
    check_exposure(settings)  # an open API beyond loopback: one line, before any loading
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_client_logs()
    t0 = time.monotonic()
    if settings.encoder_kind == "transformer":  # PROFILES_ENCODER_THREADS (issue 14: the tail)
        set_torch_threads(settings.encoder_threads)
    set_faiss_threads(settings.faiss_threads)  # PROFILES_FAISS_THREADS: this (the loop's) thread
    set_blas_threads(settings.blas_threads)  # PROFILES_BLAS_THREADS: numpy's OpenBLAS, process-wide
    set_gil_switch(settings.gil_switch_ms)  # PROFILES_GIL_SWITCH_MS (stream.worker.gil)
    set_mmap_threshold(settings.malloc_mmap_threshold)  # PROFILES_MALLOC_MMAP_THRESHOLD
    enc = load_encoder(settings.encoder_path or None, device=settings.encoder_device,
                       kind=settings.encoder_kind, dtype=settings.encoder_dtype,
                       trace=settings.encoder_trace)
    log.info("encoder %s (%s, dim %d) loaded in %.1fs", enc.name, enc.fingerprint, enc.dim,
             time.monotonic() - t0)
    service = build_service(settings, enc)
    service.pipeline.store.check_model(enc.fingerprint)  # before joining: a one-line refusal
    # Reach the broker (and create missing topics) before faust starts: an unreachable broker
    # is one line (BrokerError), not a crash inside faust's services.
    signals_topic = settings.signals_topic_name()
    changelog, changelog_configs = changelog_topics(settings)
    create_topics(settings, {settings.events_topic: settings.partitions,
                             settings.items_topic: 1, settings.dlq_topic: 1, signals_topic: 1,
                             **changelog},
                  timeout_s=max(30.0, settings.session_timeout_s * 3),
                  configs={signals_topic: SIGNALS_TOPIC_CONFIG, **changelog_configs})
    run_app(service.app, settings.log_level)


def run(settings: Settings) -> int:
    """``profiles worker``: the plain worker in this process when ``processes`` resolves to 1,
    else that many supervised worker processes behind one port (``stream.serve.front``)."""
    from stream.serve.front import run_supervised
    from stream.worker.supervisor import process_count

    n = process_count(settings)
    if n == 1:  # no parent, no hop: exactly the plain worker
        run_worker(settings)
        return 0
    return run_supervised(settings, n)
