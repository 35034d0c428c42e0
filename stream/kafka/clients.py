"""Every Kafka client the service uses is built here, from :class:`Settings`.

Security (``PROFILES_SECURITY_PROTOCOL``, SASL, TLS) is applied once, in :func:`client_config`,
for every kind of client, so no tool can forget it (``profiles dlq replay`` once built its
consumer without it).  Kinds:

========================  =============================  ==================================
kind                      library                        used by
========================  =============================  ==================================
``producer``              kafka-python ``KafkaProducer`` replay, items load, dlq replay, bench
``consumer``              kafka-python ``KafkaConsumer`` dlq replay, topic scans (tests)
``admin``                 kafka-python admin client      topic creation
``aio_consumer``          aiokafka ``AIOKafkaConsumer``  catalogue feed, rebuild, bench R
``aio_producer``          aiokafka ``AIOKafkaProducer``  decision logging
faust                     ``faust.App`` credentials      the worker (``stream.kafka.app``)
========================  =============================  ==================================
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from stream.core.errors import BrokerError
from stream.settings import Settings

__all__ = ["CLIENT_KINDS", "DLQ_TOPIC_CONFIG", "Acks", "AsyncTopicProducer", "Publisher", "build",
           "client_config", "create_topics", "faust_credentials", "security_config"]

log = logging.getLogger(__name__)

CLIENT_KINDS: tuple[str, ...] = ("producer", "consumer", "admin", "aio_consumer", "aio_producer")


def _client_class(kind: str) -> Callable[..., Any]:
    """The library class of a client kind (imported on first use)."""
    if kind == "producer":
        from kafka import KafkaProducer
        return KafkaProducer
    if kind == "consumer":
        from kafka import KafkaConsumer
        return KafkaConsumer
    if kind == "admin":
        from kafka.admin import KafkaAdminClient
        return KafkaAdminClient
    if kind == "aio_consumer":
        from aiokafka import AIOKafkaConsumer
        return AIOKafkaConsumer
    if kind == "aio_producer":
        from aiokafka import AIOKafkaProducer
        return AIOKafkaProducer
    raise ValueError(f"unknown Kafka client kind {kind!r}; expected one of {CLIENT_KINDS}")


def security_config(s: Settings, library: str) -> dict[str, Any]:
    """SASL/TLS options for ``library`` ("kafka-python" or "aiokafka"); empty for PLAINTEXT."""
    if s.security_protocol == "PLAINTEXT":
        return {}
    opts: dict[str, Any] = {"security_protocol": s.security_protocol}
    if s.security_protocol.startswith("SASL"):
        opts.update(sasl_mechanism=s.sasl_mechanism, sasl_plain_username=s.sasl_username,
                    sasl_plain_password=s.sasl_password.reveal())
    if s.security_protocol.endswith("SSL"):
        if library == "aiokafka":
            from aiokafka.helpers import create_ssl_context

            opts["ssl_context"] = create_ssl_context(cafile=s.ssl_cafile or None)
        elif s.ssl_cafile:
            opts["ssl_cafile"] = s.ssl_cafile
    return opts


def client_config(s: Settings, kind: str, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments a client of ``kind`` is built with: bootstrap servers, security,
    then ``overrides`` (which may not weaken security: its keys win only where they add)."""
    if kind not in CLIENT_KINDS:
        raise ValueError(f"unknown Kafka client kind {kind!r}; expected one of {CLIENT_KINDS}")
    library = "aiokafka" if kind.startswith("aio_") else "kafka-python"
    security = security_config(s, library)
    clash = sorted(set(security) & set(overrides))
    if clash:
        raise ValueError(f"security options are set from Settings, not per client: {clash}")
    return {"bootstrap_servers": s.bootstrap_servers, **security, **overrides}


def build(kind: str, s: Settings, **overrides: Any) -> Any:
    """A client of ``kind`` configured by :func:`client_config`; an unreachable broker or a
    refused configuration is a one-line :class:`BrokerError`."""
    cls = _client_class(kind)
    try:
        return cls(**client_config(s, kind, **overrides))
    except Exception as exc:  # NoBrokersAvailable, KafkaTimeoutError, bad config...
        raise BrokerError(f"cannot reach Kafka at {s.bootstrap_servers}: "
                          f"{type(exc).__name__}: {exc}") from exc


def faust_credentials(s: Settings) -> Any:
    """faust credentials from the SASL/TLS settings (None for PLAINTEXT)."""
    if s.security_protocol == "PLAINTEXT":
        return None
    import faust

    context = ssl.create_default_context(cafile=s.ssl_cafile or None)
    if s.security_protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=s.sasl_username, password=s.sasl_password.reveal(),
                                 mechanism=s.sasl_mechanism,
                                 ssl_context=context if s.security_protocol == "SASL_SSL" else None)


# ---------------------------------------------------------------------------- topics
#: the dead-letter topic is compacted, so a forget's tombstones erase its records (and deleted
#: by retention like any topic); create_topics asks for it whenever it creates ``dlq_topic``
DLQ_TOPIC_CONFIG: Mapping[str, str] = {"cleanup.policy": "compact,delete"}


class _TopicError(BrokerError):
    """The broker answered but refused to create a topic: retrying will not help."""


def create_topics(s: Settings, topics: Mapping[str, int], replication: int = 1,
                  timeout_s: float = 30,
                  configs: Mapping[str, Mapping[str, str]] | None = None) -> None:
    """Create missing topics with the given partition counts (and topic ``configs``, e.g.
    ``{"cleanup.policy": "compact"}``); wait for the broker up to ``timeout_s``.  Existing
    topics are left alone (their partition count and configs are not changed).  The settings'
    ``dlq_topic`` always gets :data:`DLQ_TOPIC_CONFIG` (over any config given for it), so no
    caller can create a dead-letter topic that erasure cannot compact."""
    for name, parts in topics.items():
        if not name or isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
            raise ValueError(f"topic {name!r}: partitions must be an integer >= 1, got {parts!r}")
    if replication < 1:
        raise ValueError(f"replication must be >= 1, got {replication!r}")
    if not topics:
        return
    if s.dlq_topic in topics:
        configs = {**(configs or {}),
                   s.dlq_topic: {**(configs or {}).get(s.dlq_topic, {}), **DLQ_TOPIC_CONFIG}}

    from kafka.errors import TopicAlreadyExistsError

    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"could not create topics {sorted(topics)} on Kafka at {s.bootstrap_servers} "
                f"within {timeout_s:g}s: {type(last).__name__ if last else 'timeout'}: {last}")
        admin = None
        try:
            ms = max(1000, int(remaining * 1000))
            admin = _client_class("admin")(**client_config(
                s, "admin", client_id="profiles-admin", bootstrap_timeout_ms=ms,
                request_timeout_ms=min(ms, 30000)))
            existing = set(admin.list_topics())
            missing = {t: p for t, p in topics.items() if t not in existing}
            if missing:
                res = admin.create_topics(
                    {t: {"num_partitions": p, "replication_factor": replication,
                         **({"configs": dict(configs[t])} if configs and t in configs else {})}
                     for t, p in missing.items()},
                    raise_errors=False)
                for t in res.get("topics", []):
                    code = t.get("error_code", 0)
                    if code and code != TopicAlreadyExistsError.errno:
                        raise _TopicError(f"creating topic {t.get('name')!r} on "
                                          f"{s.bootstrap_servers} failed: error {code} "
                                          f"{t.get('error_message') or ''}")
                # Producers right after this call should find the topics with leaders.
                admin.wait_for_topics(list(missing), timeout_ms=max(1000, int(remaining * 1000)))
            return
        except _TopicError:
            raise
        except Exception as exc:  # broker not up yet (NoBrokersAvailable, timeouts, OSError)
            last = exc
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        finally:
            if admin is not None:
                try:
                    admin.close()
                except Exception:
                    pass


# ---------------------------------------------------------------------------- producing
class Acks:
    """Counts a producer's delivery callbacks (they run on kafka-python's I/O thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acked = 0
        self.errors: Counter[str] = Counter()

    def ok(self, _meta: object) -> None:
        with self._lock:
            self.acked += 1

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors[type(exc).__name__] += 1

    def watch(self, future: Any) -> None:
        future.add_callback(self.ok)
        future.add_errback(self.failed)


class Publisher:
    """A kafka-python producer for the tools, counting acknowledged and failed sends.

    Defaults: every replica acknowledges, idempotent (a retried send whose first attempt was
    stored is not stored twice), one request in flight (retries cannot reorder a user's
    events).  A send whose metadata never arrives (topic missing, broker gone) raises
    :class:`BrokerError`: every further send would block as long.  Other send errors (e.g. a
    record over the size limit) are counted in ``acks.errors`` and publishing goes on.
    """

    DEFAULTS: Mapping[str, Any] = {
        "acks": "all", "linger_ms": 5, "batch_size": 256 * 1024, "compression_type": None,
        "retries": 5, "enable_idempotence": True, "max_in_flight_requests_per_connection": 1,
    }

    def __init__(self, s: Settings, *, client_id: str = "profiles-publisher",
                 **overrides: Any) -> None:
        from kafka.errors import KafkaTimeoutError

        self.settings = s
        self.acks = Acks()
        self._metadata_timeout = KafkaTimeoutError
        self._producer = build("producer", s, client_id=client_id,
                               **{**self.DEFAULTS, **overrides})

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
        try:
            fut = self._producer.send(topic, key=key, value=value, headers=headers,
                                      partition=partition)
        except self._metadata_timeout as exc:
            raise BrokerError(f"cannot publish to topic {topic!r} on "
                              f"{self.settings.bootstrap_servers}: {exc}") from exc
        except Exception as exc:  # e.g. MessageSizeTooLargeError: count it, keep going
            self.acks.failed(exc)
        else:
            self.acks.watch(fut)

    def flush(self) -> None:
        self._producer.flush()

    def close(self, timeout: float = 10) -> None:
        self._producer.close(timeout=timeout)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTopicProducer:
    """An aiokafka producer for one topic, started (and the topic created) on first send."""

    def __init__(self, s: Settings, topic: str, **overrides: Any) -> None:
        self.settings = s
        self.topic = topic
        self.overrides = {"acks": 1, "linger_ms": 5, **overrides}
        self._producer: Any = None
        self._starting = asyncio.Lock()

    async def _start(self) -> Any:
        async with self._starting:
            if self._producer is None:
                await asyncio.get_running_loop().run_in_executor(
                    None, create_topics, self.settings, {self.topic: 1})
                producer = build("aio_producer", self.settings, **self.overrides)
                await producer.start()
                self._producer = producer
        return self._producer

    async def send(self, key: bytes, value: bytes) -> None:
        producer = self._producer or await self._start()
        await producer.send_and_wait(self.topic, value, key=key)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

