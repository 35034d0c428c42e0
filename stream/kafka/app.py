"""The faust shell: the app, the events agent, rebalance hooks, timers, and the worker's ports.

The agent reads raw bytes in micro-batches (``take_events``), turns each message into a typed
:class:`~stream.worker.records.Record` (here, and only here) and hands the batch to the
``Pipeline``.  On assignment the worker loads each partition's snapshot and *seeks to the
snapshot's offset*, after faust's own seek to the committed offset: the snapshot, not the
consumer group's commit, says what the state covers.

The composition root (``stream.service``) builds the app with :func:`worker_app`, the worker's
ports with :class:`FaustIO`, the pipeline, and then calls :func:`wire` to connect them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, cast

import faust
from faust.types import TP

from stream.kafka.catalog_feed import follow_catalog
from stream.kafka.clients import faust_credentials
from stream.kafka.fetch_stamps import stamp_fetches
from stream.kafka.rejoin import evict_dead_members, forget_member, record_member
from stream.kafka.signals_feed import follow_signals
from stream.settings import Settings
from stream.worker.latency import BatchTiming, FetchLog, GcTimer, freeze_heap
from stream.worker.pipeline import Pipeline
from stream.worker.ports import Header
from stream.worker.records import from_message

__all__ = ["NO_INLINE_COMMIT", "FaustIO", "RepeatFilter", "faust_app", "plain_faust_app",
           "quiet_client_logs", "run_app", "tune_fetch", "wire", "worker_app"]

log = logging.getLogger("stream.app")

#: ``broker_commit_every`` of the worker's app: never reached, so faust's message loop never
#: stops delivering to commit; the ``broker_commit_interval`` timer commits instead
NO_INLINE_COMMIT = 2**62


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

    cls: Any = driver.AIOKafkaConsumerThread
    original = getattr(cls, "_profiles_original_create", cls._create_worker_consumer)

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms  # read by AIOKafkaConsumer.start()
        consumer._fetch_max_bytes = max_bytes
        return consumer

    cls._profiles_original_create = original
    cls._create_worker_consumer = create


def _datadir(s: Settings) -> str:
    """faust's data folder: ``<state dir>/faust`` (faust keeps nothing there with in-memory
    tables, but creates it; its default is ``<app id>-data`` in the current folder, which the
    tools must not litter)."""
    return str(Path(s.state_dir) / "faust")


def _brokers(bootstrap: str) -> list[str]:
    return [f"kafka://{b.strip()}" for b in bootstrap.split(",")]


def faust_app(s: Settings, app_id: str, **extra: Any) -> faust.App:
    """A faust app with the worker's settings (also used by the benchmark's faust stage)."""
    tune_fetch(s.fetch_max_wait_ms, s.fetch_max_bytes)
    extra.setdefault("datadir", _datadir(s))
    return faust.App(
        app_id,
        broker=_brokers(s.bootstrap_servers),
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
        # faust's message loop also commits inline every ``broker_commit_every`` acked messages
        # (default 10,000), and delivers nothing to the agent until that commit returns (a
        # round trip through faust's consumer thread, 5-57 ms measured on busy cores): the
        # state's offsets come from the snapshots, and the timer above commits anyway
        broker_commit_every=NO_INLINE_COMMIT,
        stream_buffer_maxsize=max(4096, 4 * s.batch_size),
        consumer_max_fetch_size=s.fetch_max_bytes,
        producer_linger=0.005,
        # a dead letter over this is stored truncated (stream.worker.deadletter.truncate)
        producer_max_request_size=s.max_request_bytes,
        producer_acks=-1,
        loghandlers=[],
        broker_credentials=faust_credentials(s),
        **extra,
    )


def plain_faust_app(s: Settings, app_id: str, **extra: Any) -> faust.App:
    """faust's defaults, with only the brokers (and security) to connect: the benchmark's F0."""
    extra.setdefault("datadir", _datadir(s))
    return faust.App(app_id, broker=_brokers(s.bootstrap_servers),
                     broker_credentials=faust_credentials(s), **extra)


def worker_app(s: Settings) -> faust.App:
    """The worker's app: its canonical URL is spread to the group (partition -> owner's HTTP
    URL, for request routing)."""
    return faust_app(s, s.group_id, canonical_url=s.public_url())


def run_app(app: faust.App, loglevel: str) -> None:
    """Run ``app`` as a faust worker until SIGTERM/SIGINT."""
    Path(app.conf.datadir).mkdir(parents=True, exist_ok=True)  # faust makes only the last level
    worker = faust.Worker(app, loglevel=loglevel.upper(), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


class FaustIO:
    """The worker's ports (``stream.worker.ports``) on faust's producer: the dead-letter sink
    and the events publisher; and whether the group is rebalancing."""

    def __init__(self, app: faust.App, s: Settings) -> None:
        self.app = app
        self._events = app.topic(s.events_topic, key_type=bytes, value_type=bytes,
                                 partitions=s.partitions)
        self._dlq = app.topic(s.dlq_topic, key_type=bytes, value_type=bytes, partitions=1)

    @property
    def events_topic(self) -> Any:
        return self._events

    async def send_dead_letter(self, key: bytes | None, value: bytes | None,
                               headers: list[Header]) -> None:
        await self.app.producer.send_and_wait(self._dlq.get_topic_name(), key, value,
                                              partition=None, timestamp=None, headers=headers)

    async def publish_event(self, key: bytes, value: bytes) -> None:
        await self.app.producer.send_and_wait(self._events.get_topic_name(), key, value,
                                              partition=None, timestamp=None, headers=None)

    def rebalancing(self) -> bool:
        return bool(self.app.rebalancing)


def wire(app: faust.App, io: FaustIO, s: Settings, pipeline: Pipeline, *,
         on_start: Callable[[], Awaitable[None]], on_stop: Callable[[], Awaitable[None]],
         ready: Callable[[], bool]) -> None:
    """Connect ``pipeline`` to ``app``: the events agent, rebalance hooks, the seek to the
    snapshots' offsets, the catalogue and signals feeds, timers (snapshots, signal publishing,
    housekeeping) and shutdown.
    ``on_start`` runs once the app runs (the HTTP server), ``on_stop`` at shutdown."""
    t_start = time.monotonic()
    ready_logged = False

    def is_events(tp: TP) -> bool:
        return bool(tp.topic == s.events_topic)

    def events_partitions(tps: Iterable[TP]) -> list[int]:
        return sorted(tp.partition for tp in tps if is_events(tp))

    # the consumer generation whose assignment was revoked last: until a new one arrives,
    # ``consumer.assignment()`` still names the revoked partitions
    revoked_generation: list[int | None] = [None]

    async def on_revoked(_app: Any, revoked: Iterable[TP], **kw: Any) -> None:
        revoked_generation[0] = app.consumer_generation_id
        parts = events_partitions(revoked)
        if parts:
            await pipeline.revoke(parts)

    recorded_member: list[str | None] = [None]

    def record_membership() -> None:
        """This process's group member id, in the state folder: a worker restarted after a
        SIGKILL takes it out of the group (stream.kafka.rejoin)."""
        try:
            consumer: Any = app.consumer
            member = str(consumer._thread._ensure_consumer()._coordinator.member_id)
        except Exception:  # faust/aiokafka internals: without it, the session timeout applies
            return
        if member and member != recorded_member[0]:
            try:
                record_member(s, s.group_id, member)
                recorded_member[0] = member
            except OSError as exc:
                log.warning("could not record the group member id: %s", exc)

    async def on_assigned(_app: Any, assigned: Iterable[TP], **kw: Any) -> None:
        record_membership()
        mine = set(events_partitions(assigned))
        gone = [p for p in pipeline.states if p not in mine]
        if gone:
            await pipeline.revoke(gone)
        await pipeline.assign(sorted(mine))
        if s.gc_freeze and ready_logged:  # states a rebalance loaded (the first: when ready)
            freeze_heap()

    # the deferred seeks of :func:`install_seek` (kept: the loop holds tasks weakly)
    deferred: set[asyncio.Future[None]] = set()

    async def seek_when_loaded(generation: int, waiting: list[TP]) -> None:
        """Load the partitions :func:`install_seek` paused, then seek each to where its snapshot
        ends and resume it, unless a newer rebalance has begun (its own seek does it then)."""
        try:
            await pipeline.assign(sorted(tp.partition for tp in waiting))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # as faust does when the assignment signal fails
            log.critical("loading partitions %s failed (%s: %s): stopping the worker",
                         sorted(tp.partition for tp in waiting), type(exc).__name__, exc)
            await app.crash(exc)
            return

        def current() -> bool:  # no rebalance began since that seek
            return bool(app.consumer_generation_id == generation
                        and revoked_generation[0] != generation)

        resumed = []
        for tp in waiting:
            st = pipeline.profiles.get(tp.partition)
            if st is not None and current():
                await app.consumer.seek(tp, st.next_offset)
                resumed.append(tp)
        if resumed and current():
            app.consumer.resume_partitions(resumed)
            log.info("partitions %s loaded: resumed at their snapshots' offsets",
                     sorted(tp.partition for tp in resumed))

    def install_seek() -> None:
        """After faust seeks to committed offsets, move to where each snapshot ends.

        faust's recovery seeks concurrently with the ``on_partitions_assigned`` signal, whose
        ``pipeline.assign`` may still be loading (the changelog restore: tens of seconds at
        10^5 users a partition) or waiting for the lock (the snapshot timer holds it while it
        writes the catalogue).  The seek must neither go on without the snapshots' offsets (a
        partition left at the committed offset, ahead of its snapshot, skipped the events in
        between) nor wait for the load: faust waits for it at most ``broker_request_timeout``
        (30 s), then ends its recovery silently and the worker never becomes ready.  So the
        partitions already loaded are seeked at once; the others are paused, loaded by a task
        (``assign`` skips what the signal loaded) and seeked and resumed when loaded.  Nothing
        is loaded while the assignment is revoked and no new one has arrived."""
        consumer = app.consumer
        original = consumer.perform_seek

        async def perform_seek() -> None:
            await original()
            generation = app.consumer_generation_id
            assigned_now = generation != revoked_generation[0]  # not revoked meanwhile
            waiting: list[TP] = []
            for tp in consumer.assignment():
                if not is_events(tp):
                    continue
                st = pipeline.profiles.get(tp.partition)
                if st is not None:
                    await consumer.seek(tp, st.next_offset)
                elif assigned_now:
                    waiting.append(tp)
            if waiting:
                consumer.pause_partitions(waiting)
                task = asyncio.ensure_future(seek_when_loaded(generation, waiting))
                deferred.add(task)
                task.add_done_callback(deferred.discard)

        consumer.perform_seek = perform_seek  # type: ignore[method-assign]  # faust has no hook

    @app.agent(io.events_topic, name="apply-events", concurrency=1)
    async def apply_events(stream: Any) -> None:
        await pipeline.catalog.caught_up.wait()
        try:
            async for batch in stream.take_events(s.batch_size, within=s.batch_max_wait_s):
                # faust's message timestamps are in seconds
                records = [from_message(e.message, 1000.0) for e in batch]
                # time_in: when the stream took the message (faust's Monitor sensor)
                timing = BatchTiming.of([r.partition for r in records],
                                        [r.offset for r in records],
                                        [e.message.time_in for e in batch], fetch_log)
                await pipeline.process(records, timing)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # process() retries, bisects and waits out outages itself; what still escapes
            # (a broken state) must not be "handled" by faust restarting the agent: it would
            # go on after the batch in flight and skip it.  Stop the worker instead: it
            # restarts from its snapshots (ProfilesAgentCrashed alerts).
            pipeline.metrics.agent_crashes.inc()
            log.critical("events agent crashed (%s: %s): stopping the worker, which resumes "
                         "from its snapshots", type(exc).__name__, exc)
            await app.crash(exc)
            raise

    # Before the worker joins the group: a killed predecessor on this state folder leaves it
    # (else the first join waits for it and a second rebalance follows its session timeout)
    evict_dead_members(s, s.group_id)
    # Before the worker starts: the first assignment's seek (a restart with snapshots) must
    # already go to the snapshots' offsets.  Installed from an app task instead, it came after
    # that seek when the state loaded fast, and faust's read offsets (its committed offsets,
    # ahead of a snapshot) made it drop the records in between (caught by the SIGKILL test).
    install_seek()
    # the latency budget (stream.worker.latency): when Fetch responses brought which offsets
    # (aiokafka's fetcher, in faust's consumer thread, built when the consumer starts: after
    # this) and when faust's polls returned them; GC pauses
    fetch_log = FetchLog()
    fetch_log.wrap(app.consumer, s.events_topic)
    stamp_fetches(s.events_topic, fetch_log.arrived)
    GcTimer(lambda gen, secs: pipeline.metrics.gc_seconds.labels(str(gen)).observe(secs)).install()

    @app.task
    async def start_services() -> None:
        pipeline.encoder_service.start()
        pipeline.load_catalog()
        if s.gc_freeze:  # the modules (torch, faust: ~470,000 objects) and the catalogue
            freeze_heap()
        await on_start()
        loop = asyncio.get_running_loop()
        loop.create_task(follow_catalog(s, pipeline.catalog, pipeline.encoder_service,
                                       pipeline.metrics))
        loop.create_task(follow_signals(s, pipeline.sharing))

    @app.timer(s.signals_publish_ms / 1000.0)
    async def publish_signals() -> None:
        try:
            await pipeline.publish_signals()
        except Exception as exc:  # kept pending: the next tick sends them again
            log.warning("publishing signal partials failed (%s: %s); retrying",
                        type(exc).__name__, exc)

    @app.timer(min(0.25, s.snapshot_interval_s))  # pipeline.snapshot decides what is due
    async def snapshot_timer() -> None:
        await pipeline.snapshot()

    @app.timer(1.0)
    async def housekeeping() -> None:
        nonlocal ready_logged
        await pipeline.housekeeping(lambda p: app.consumer.highwater(TP(s.events_topic, p)))
        ok = ready()
        pipeline.metrics.ready.set(1 if ok else 0)
        if ok and not ready_logged:
            ready_logged = True
            if s.gc_freeze:  # modules, catalogue, loaded states: never walked by gc again
                log.info("gc: %d objects frozen", freeze_heap())
            log.info("ready after %.1fs (state recovered, %d items, %d users)",
                     time.monotonic() - t_start, len(pipeline.catalog.index),
                     pipeline.profiles.indexed())

    async def on_shutdown(_app: Any, **kw: Any) -> None:
        try:
            await pipeline.publish_signals()
        except Exception as exc:  # the next owner re-publishes every partial it loads
            log.warning("publishing signal partials at shutdown failed: %s", exc)
        n = await pipeline.snapshot(everything=True)
        log.info("shutdown: wrote %d partition snapshots", n)
        forget_member(s, s.group_id)  # faust's consumer leaves the group itself
        await on_stop()

    # faust's signal types want a ``signal`` keyword our handlers take through ``**kw``
    app.on_partitions_revoked.connect(cast(Any, on_revoked))
    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    app.on_before_shutdown.connect(cast(Any, on_shutdown))


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


def quiet_client_logs(every_s: float = 10.0) -> None:
    """One line per message template every ``every_s`` from the Kafka client's loggers."""
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.client", "aiokafka.cluster",
                 "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator",
                 "aiokafka.producer.sender"):
        logging.getLogger(name).addFilter(RepeatFilter(every_s))
