"""The faust shell: topics, the events agent, rebalance hooks, timers and the HTTP server.

The agent reads raw bytes in micro-batches (``take_events``) and hands them to the
``Pipeline``.  On assignment the worker loads each partition's snapshot and *seeks to the
snapshot's offset*, after faust's own seek to the committed offset: the snapshot, not the
consumer group's commit, says what the state covers.
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
from aiohttp import web
from faust.types import TP

from stream.pipeline import Pipeline
from stream.routing import Router
from stream.settings import Settings

log = logging.getLogger("stream.app")


def tune_fetch(max_wait_ms: int, max_bytes: int) -> None:
    """Make faust's consumer long-poll for at most ``max_wait_ms`` and fetch at most
    ``max_bytes`` per request.

    faust 0.15 hard-codes ``fetch_max_wait_ms=1500`` for its aiokafka consumer.  A broker that
    does not answer a waiting Fetch as soon as data arrives (Tansu, measured: p99
    ingest→index 2.4 s at 200 events/s) then holds every new event up to 1.5 s.

    faust sets no request-wide ``fetch_max_bytes`` either (aiokafka's default is 50 MiB), and
    Tansu ignores the per-partition limit: a lagging worker was measured holding 175,000
    fetched records (about 100 MiB) at once.  There are no settings for either, so wrap the
    factory that builds the consumer (this process only).
    """
    from faust.transport.drivers import aiokafka as driver

    cls = driver.AIOKafkaConsumerThread
    original = getattr(cls, "_profiles_original_create", cls._create_worker_consumer)

    def create(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms  # read by AIOKafkaConsumer.start()
        consumer._fetch_max_bytes = max_bytes
        return consumer

    cls._profiles_original_create = original
    cls._create_worker_consumer = create


def broker_credentials(s: Settings):
    """faust credentials from the SASL/SSL settings (None for PLAINTEXT)."""
    if s.security_protocol == "PLAINTEXT":
        return None
    import ssl

    context = ssl.create_default_context(cafile=s.ssl_cafile or None)
    if s.security_protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=s.sasl_username, password=s.sasl_password.reveal(),
                                 mechanism=s.sasl_mechanism,
                                 ssl_context=context if s.security_protocol == "SASL_SSL" else None)


def faust_app(s: Settings, app_id: str, **extra) -> faust.App:
    """A faust app with the worker's settings (also used by the benchmark's faust stage)."""
    tune_fetch(s.fetch_max_wait_ms, s.fetch_max_bytes)
    return faust.App(
        app_id,
        broker=[f"kafka://{b.strip()}" for b in s.bootstrap_servers.split(",")],
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        web_enabled=False,
        topic_partitions=s.partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=max(0.5, s.session_timeout_s / 6),
        broker_request_timeout=max(30.0, s.session_timeout_s * 3),
        broker_commit_interval=2.0,
        stream_buffer_maxsize=max(4096, 4 * s.batch_size),
        consumer_max_fetch_size=s.fetch_max_bytes,
        producer_linger=0.005,
        producer_acks=-1,
        loghandlers=[],
        broker_credentials=broker_credentials(s),
        **extra,
    )


def build_app(settings: Settings, pipeline: Pipeline) -> faust.App:
    s = settings
    # canonical_url is spread to the group: partition -> owner's HTTP URL (request routing)
    app = faust_app(s, s.group_id, canonical_url=s.public_url())
    events = app.topic(s.events_topic, key_type=bytes, value_type=bytes, partitions=s.partitions)
    dlq = app.topic(s.dlq_topic, key_type=bytes, value_type=bytes, partitions=1)
    t_start = time.monotonic()
    ready_logged = False

    def is_events(tp: TP) -> bool:
        return tp.topic == s.events_topic

    async def send_dlq(key, value, headers) -> None:
        await app.producer.send_and_wait(dlq.get_topic_name(), key, value, partition=None,
                                         timestamp=None, headers=headers)

    async def publish_event(key: bytes, value: bytes) -> None:
        await app.producer.send_and_wait(events.get_topic_name(), key, value, partition=None,
                                         timestamp=None, headers=None)

    pipeline.send_dlq = send_dlq
    pipeline.publish_event = publish_event
    pipeline.router = Router(app, s.events_topic, s.public_url())

    def ready() -> bool:
        return pipeline.catalog.caught_up.is_set() and pipeline.assigned_once.is_set() and not app.rebalancing

    @app.on_partitions_revoked.connect
    async def on_revoked(_app, revoked, **kw) -> None:
        parts = [tp.partition for tp in revoked if is_events(tp)]
        if parts:
            await pipeline.revoke(parts)

    @app.on_partitions_assigned.connect
    async def on_assigned(_app, assigned, **kw) -> None:
        mine = {tp.partition for tp in assigned if is_events(tp)}
        gone = [p for p in pipeline.states if p not in mine]
        if gone:
            await pipeline.revoke(gone)
        await pipeline.assign(sorted(mine))

    def install_seek() -> None:
        """After faust seeks to committed offsets, move to where each snapshot ends."""
        consumer = app.consumer
        original = consumer.perform_seek

        async def perform_seek() -> None:
            await original()
            for tp in consumer.assignment():
                st = pipeline.states.get(tp.partition) if is_events(tp) else None
                if st is not None:
                    await consumer.seek(tp, st.next_offset)

        consumer.perform_seek = perform_seek

    @app.agent(events, name="apply-events", concurrency=1)
    async def apply_events(stream):
        await pipeline.catalog.caught_up.wait()
        async for batch in stream.take_events(s.batch_size, within=s.batch_max_wait_s):
            records = [(e.message.partition, e.message.offset,
                        int((e.message.timestamp or 0) * 1000), e.message.key, e.message.value,
                        e.message.headers)
                       for e in batch]
            await pipeline.process(records)

    # Before the worker starts: the first assignment's seek (a restart with snapshots) must
    # already go to the snapshots' offsets.  Installed from an app task instead, it came after
    # that seek when the state loaded fast, and faust's read offsets (its committed offsets,
    # ahead of a snapshot) made it drop the records in between (caught by the SIGKILL test).
    install_seek()

    @app.task
    async def start_services() -> None:
        pipeline.encoder_service.start()
        pipeline.load_catalog()
        runner = web.AppRunner(_api(pipeline, ready).app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, s.http_host, s.http_port).start()
        log.info("HTTP on http://%s:%d (metrics at /metrics)", s.http_host, s.http_port)
        app._profiles_runner = runner  # keep a reference for shutdown
        asyncio.get_running_loop().create_task(
            pipeline.catalog.run(s.bootstrap_servers, s.items_topic, pipeline.encoder_service,
                                 {"fetch_max_wait_ms": s.fetch_max_wait_ms, "fetch_max_bytes": s.fetch_max_bytes,
                                  **s.kafka_security("aiokafka")}))

    @app.timer(min(0.25, s.snapshot_interval_s))  # pipeline.snapshot decides what is due
    async def snapshot_timer() -> None:
        await pipeline.snapshot()

    @app.timer(1.0)
    async def housekeeping() -> None:
        nonlocal ready_logged
        pipeline.update_lag(lambda p: app.consumer.highwater(TP(s.events_topic, p)))
        await pipeline.resolve_parked()
        await pipeline.expire()
        ok = ready()
        pipeline.metrics.ready.set(1 if ok else 0)
        if ok and not ready_logged:
            ready_logged = True
            log.info("ready after %.1fs (state recovered, %d items, %d users)",
                     time.monotonic() - t_start, len(pipeline.catalog.index), len(pipeline.users_index))

    @app.on_before_shutdown.connect
    async def on_shutdown(_app, **kw) -> None:
        n = await pipeline.snapshot(everything=True)
        log.info("shutdown: wrote %d partition snapshots", n)
        decisions = getattr(pipeline, "_decision_logger", None)
        if decisions is not None:  # flush logged decisions still in flight
            await decisions.close()
        if pipeline.router is not None:
            await pipeline.router.close()

    return app


class RepeatFilter(logging.Filter):
    """Let each message template through at most once per ``every`` seconds.

    During a broker outage aiokafka logs ~100 identical errors a second; one line per template
    every few seconds (with how many were held back) says the same.
    """

    def __init__(self, every: float) -> None:
        super().__init__()
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        last, held = self._last.get(record.msg, (0.0, 0))
        if now - last < self.every:
            self._last[record.msg] = (last, held + 1)
            return False
        self._last[record.msg] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it)"
        return True


def _api(pipeline: Pipeline, ready):
    from stream.http import Api

    return Api(pipeline, ready)


def run_worker(settings: Settings) -> None:
    """Build the encoder and the faust worker, then run until SIGTERM/SIGINT."""
    from encoder import load_encoder

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.client", "aiokafka.cluster",
                 "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator",
                 "aiokafka.producer.sender"):
        logging.getLogger(name).addFilter(RepeatFilter(10.0))
    t0 = time.monotonic()
    enc = load_encoder(settings.encoder_path or None, device=settings.encoder_device,
                       kind=settings.encoder_kind)
    log.info("encoder %s (%s, dim %d) loaded in %.1fs", enc.name, enc.fingerprint, enc.dim,
             time.monotonic() - t0)
    pipeline = Pipeline(settings, enc)
    pipeline.store.check_model(enc.fingerprint)  # before joining the group: a one-line refusal
    # Reach the broker (and create missing topics) before faust starts: an unreachable broker
    # is one line (BrokerError), not a crash inside faust's services.
    from stream.replay import create_topics

    create_topics(settings.bootstrap_servers,
                  {settings.events_topic: settings.partitions, settings.items_topic: 1,
                   settings.dlq_topic: 1},
                  timeout_s=max(30.0, settings.session_timeout_s * 3),
                  client_config=settings.kafka_security())
    app = build_app(settings, pipeline)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
