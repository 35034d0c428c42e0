"""The Kafka layer builds every client from Settings, with the security settings applied to
every kind (``profiles dlq replay``'s consumer and the decision logger once had none)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest

from stream.kafka import clients
from stream.kafka.clients import CLIENT_KINDS, AsyncTopicProducer, client_config
from stream.settings import Settings

pytestmark = pytest.mark.unit

SASL = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "svc", "sasl_password": "pw"}
KAFKA_PYTHON_SASL = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                     "sasl_plain_username": "svc", "sasl_plain_password": "pw"}
SRC = Path(__file__).resolve().parents[2]


class TP(NamedTuple):
    topic: str
    partition: int


def _secured(**kw: Any) -> Settings:
    return Settings.from_env({}, bootstrap_servers="k1:9093,k2:9093", **SASL, **kw)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_every_client_kind_gets_the_security_settings(kind: str) -> None:
    cfg = client_config(_secured(), kind, client_id="x")
    assert cfg["bootstrap_servers"] == "k1:9093,k2:9093" and cfg["client_id"] == "x"
    assert {k: cfg[k] for k in KAFKA_PYTHON_SASL} == KAFKA_PYTHON_SASL
    if kind.startswith("aio_"):
        assert cfg["ssl_context"] is not None
    assert client_config(Settings(), kind).keys() == {"bootstrap_servers"}  # PLAINTEXT


def test_a_client_cannot_override_the_security_settings() -> None:
    with pytest.raises(ValueError, match="security"):
        client_config(_secured(), "consumer", security_protocol="PLAINTEXT")


def test_faust_gets_sasl_credentials() -> None:
    from stream.kafka.app import faust_app, plain_faust_app

    for app in (faust_app(_secured(), "a"), plain_faust_app(_secured(), "b")):
        creds = app.conf.broker_credentials
        assert (creds.username, creds.password, creds.mechanism.value) == ("svc", "pw",
                                                                          "SCRAM-SHA-512")


class Recorder:
    """Stands for the Kafka libraries' client classes: records each kind's configuration."""

    def __init__(self, dlq_records: list[Any] | None = None) -> None:
        self.built: list[tuple[str, dict[str, Any]]] = []
        self.dlq_records = dlq_records or []
        self.sent: list[tuple[Any, ...]] = []

    def __call__(self, kind: str) -> Any:
        def make(**cfg: Any) -> Any:
            self.built.append((kind, cfg))
            return getattr(self, kind)()
        return make

    def consumer(self) -> Any:
        records = list(self.dlq_records)
        tp = TP("events.dlq", 0)
        pos = {"at": 0}

        def seek_to_beginning(*tps: Any) -> None:
            pos["at"] = 0

        def poll(timeout_ms: int) -> dict[Any, list[Any]]:
            out = records[pos["at"]:]
            pos["at"] = len(records)
            return {tp: out} if out else {}

        return SimpleNamespace(
            partitions_for_topic=lambda t: {0}, assign=lambda tps: None,
            seek_to_beginning=seek_to_beginning, poll=poll, highwater=lambda tp: len(records),
            position=lambda tp: pos["at"], close=lambda: None)

    def producer(self) -> Any:
        def send(topic: str, **kw: Any) -> Any:
            self.sent.append((topic, kw))
            return SimpleNamespace(add_callback=lambda f: f(None), add_errback=lambda f: None)
        return SimpleNamespace(send=send, flush=lambda: None, close=lambda timeout=None: None)

    def admin(self) -> Any:
        return SimpleNamespace(list_topics=lambda: ["decisions"], close=lambda: None)

    def aio_producer(self) -> Any:
        async def noop(*a: Any, **kw: Any) -> None:
            self.sent.append(a)
        return SimpleNamespace(start=noop, stop=noop, send_and_wait=noop)


def _secured_everywhere(built: list[tuple[str, dict[str, Any]]]) -> set[str]:
    for kind, cfg in built:
        assert {k: cfg.get(k) for k in KAFKA_PYTHON_SASL} == KAFKA_PYTHON_SASL, kind
    return {kind for kind, _ in built}


def test_dlq_replay_reads_and_publishes_with_the_security_settings(monkeypatch) -> None:
    from stream.tools.dlq import replay_dlq

    record = SimpleNamespace(partition=0, offset=0, timestamp=1, key=b"u1/0/7", value=b"{}",
                             headers=[("reason", b"unknown_item"), ("source_partition", b"2"),
                                      ("source_key", b"u1")])
    rec = Recorder([record])
    monkeypatch.setattr(clients, "_client_class", rec)
    assert replay_dlq(_secured(), timeout_s=1.0) == (1, 0)
    assert _secured_everywhere(rec.built) == {"consumer", "producer"}
    (topic, kw), = rec.sent
    assert topic == "events" and kw["partition"] == 2 and kw["key"] == b"u1"


def test_decision_logging_creates_its_topic_and_produces_with_the_security_settings(
        monkeypatch) -> None:
    from stream.serve.decisions import DecisionLogger

    rec = Recorder()
    monkeypatch.setattr(clients, "_client_class", rec)

    async def main() -> None:
        logger = DecisionLogger(AsyncTopicProducer(_secured(), "decisions"))
        assert logger.submit({"user_id": "u1", "decision_id": "d1"})
        await logger.close()
        assert (logger.sent, logger.failed) == (1, 0)

    asyncio.run(main())
    assert _secured_everywhere(rec.built) == {"admin", "aio_producer"}


def test_only_the_clients_module_constructs_library_clients() -> None:
    names = ("KafkaProducer(", "KafkaConsumer(", "KafkaAdminClient(", "AIOKafkaConsumer(",
             "AIOKafkaProducer(", "AIOKafkaAdminClient(")
    bad = []
    for root, _dirs, files in os.walk(SRC / "stream"):
        for f in files:
            path = Path(root) / f
            if f.endswith(".py") and path != SRC / "stream" / "kafka" / "clients.py":
                text = path.read_text()
                bad += [f"{path.relative_to(SRC)}: {n}" for n in names if n in text]
    assert not bad


def test_faust_keeps_its_data_folder_in_the_state_folder(tmp_path, monkeypatch) -> None:
    """faust's default is `<app id>-data` in the current folder (the demo left
    `profiles-data/` behind); the worker's lives under PROFILES_STATE_DIR."""
    from stream.kafka.app import faust_app, worker_app

    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({}, state_dir=str(tmp_path / "state"))
    for app in (worker_app(s), faust_app(s, "bench-x")):
        assert Path(app.conf.datadir).resolve() == (tmp_path / "state" / "faust").resolve()
