"""Broker outage: a fault-injecting proxy between every client and the broker drops all
connections for 20 s in the middle of a replay.

The test's own Tansu broker advertises the proxy's address, so after bootstrap the worker (its
group consumer, its item-catalogue reader, its producer) and the replaying producer reach the
broker only through the proxy.  Just before the drop the proxy loses the broker's answers for a
moment, so produce requests that landed go unacknowledged and are retried after the outage (the
idempotent producer must not write them twice).  The worker is never restarted: it must reconnect, rejoin its
group and carry on by itself.  Afterwards the log holds every event exactly once, every event
was applied exactly once and every profile equals the offline oracle.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from stream.kafka.broker import free_port
from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items
from stream.tools.runner import WorkerProcess
from tests.conftest import assert_matches_oracle, kafka, total_outcomes
from tests.faultproxy import ProxiedBroker, wait_until

pytestmark = pytest.mark.timeout(900)
OUTAGE_S = 20.0


def _read_log(bootstrap: str, topic: str, partitions: int, timeout_s: float = 120) -> Counter:
    """event_id -> how many records of the topic carry it, read up to each Fetch high watermark
    (Tansu's ListOffsets "latest" is not to be trusted)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                      fetch_max_wait_ms=100)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ids: Counter = Counter()
        deadline = time.monotonic() + timeout_s
        while True:
            for msgs in c.poll(timeout_ms=200, max_records=5000).values():
                ids.update(orjson.loads(m.value)["event_id"] for m in msgs)
            if all(c.highwater(tp) is not None and c.position(tp) >= c.highwater(tp) for tp in tps):
                return ids
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end within {timeout_s}s")
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_worker_recovers_from_a_20s_broker_outage(mode, dataset, oracle_vectors, tmp_path):
    ds, paths = dataset
    n = len(ds.events)
    tag = uuid.uuid4().hex[:10]
    with ProxiedBroker(log_path=str(tmp_path / "broker.log"), mode=mode) as broker:
        proxy = broker.proxy
        settings = Settings.from_env(
            {}, bootstrap_servers=broker.bootstrap, state_dir=str(tmp_path / "state"),
            http_port=free_port(), session_timeout_s=6.0, encoder_dtype="fp32",  # oracle: fp32
            events_topic=f"events-{tag}",
            items_topic=f"items-{tag}", dlq_topic=f"events.dlq-{tag}", group_id=f"profiles-{tag}")
        create_topics(kafka(broker.bootstrap), {settings.events_topic: settings.partitions,
                                         settings.items_topic: 1, settings.dlq_topic: 1})
        assert load_items(paths["items"], kafka(broker.bootstrap), topic=settings.items_topic,
                          progress=False).sent == len(ds.items)
        producer = None
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        try:
            worker.wait_ready(300)
            pid = worker.proc.pid
            # A resilient producer in its own process (its client's reconnect churn stays out of
            # this one): idempotent (kafka-python's default with acks=all), retries without limit
            # within a delivery timeout far longer than the outage.
            producer = _start_producer(paths["events"], broker.bootstrap, settings.events_topic,
                                       tmp_path / "producer.json", tmp_path / "producer.log")
            worker.wait_for(lambda: worker.stats().get("events_applied", 0) >= 0.25 * n, 300,
                            "25% applied", interval=0.05)
            dropped_before = proxy.dropped
            # First the answers stop (requests still land: the producer's batches are appended
            # but never acknowledged, so it must retry them), then every connection is reset.
            proxy.lose_responses = True
            wait_until(lambda: proxy.produce_responses_lost > 0, 10, "a Produce answer to be lost")
            proxy.drop_all(OUTAGE_S)
            t_drop = time.monotonic()
            proxy.lose_responses = False
            applied_at_drop = worker.stats()["events_applied"]  # HTTP does not go through the proxy
            assert 0.25 * n <= applied_at_drop < 0.75 * n, applied_at_drop
            assert proxy.dropped - dropped_before >= 3, proxy  # worker + producer connections
            # during the outage the worker stays up and serves what it has
            deadline = t_drop + OUTAGE_S + 10
            while proxy.down and time.monotonic() < deadline:
                assert worker.alive(), f"worker died during the outage; log: {worker.log_path}"
                assert worker.get("/healthz")[0] == 200
                proxy.wait_restored(0.5)
            assert proxy.wait_restored(0), "the proxy did not restore"
            outage_s = time.monotonic() - t_drop
            assert outage_s >= OUTAGE_S - 0.5
            # the clients kept knocking while the broker was unreachable
            assert proxy.refused + proxy.blackholed > 0, proxy

            assert producer.wait(300) == 0, (tmp_path / "producer.log").read_text()[-3000:]
            summary = orjson.loads((tmp_path / "producer.json").read_bytes())
            assert summary["sent"] == n and summary["failed"] == 0, summary

            # the log holds each event exactly once (nothing lost, nothing doubled by retries)
            in_log = _read_log(broker.bootstrap, settings.events_topic, settings.partitions)
            assert sum(in_log.values()) == n and len(in_log) == n, \
                (sum(in_log.values()), len(in_log), [i for i, c in in_log.items() if c > 1][:5])

            worker.wait_for(lambda: total_outcomes(worker) == n, 600, "all outcomes after the outage")
            recovered_s = time.monotonic() - t_drop
            assert worker.alive() and worker.proc.pid == pid  # recovered by itself
            worker.wait_ready(60)
            stats = worker.stats()
            assert stats["events_applied"] == n, stats
            assert stats.get("events_duplicate", 0) == 0 and stats.get("events_rejected", 0) == 0, stats
            assert sorted(int(p) for p in stats["partitions"]) == list(range(settings.partitions))
            assert sum(stats["partitions"].values()) == n  # next_offset = end of every partition

            assert_matches_oracle(worker, ds.events, oracle_vectors)
            print(f"outage ({mode}): dropped at {applied_at_drop}/{n} applied, outage {outage_s:.1f}s, "
                  f"all applied {recovered_s:.1f}s after the drop; proxy {proxy}; "
                  f"redelivered {_metric(worker, 'profiles_redelivered_total')}")
        finally:
            worker.kill()
            if producer is not None and producer.poll() is None:
                os.killpg(producer.pid, signal.SIGKILL)
                producer.wait(10)


_PRODUCER = """
import sys, orjson
from stream.tools.replay import replay
from stream.settings import Settings
s = replay(sys.argv[1], Settings.from_env({}, bootstrap_servers=sys.argv[2]), topic=sys.argv[3],
           rate=1000, progress=False,
           producer_overrides={"retries": 2**31 - 1, "delivery_timeout_ms": 300_000,
                               "reconnect_backoff_max_ms": 500})
open(sys.argv[4], "wb").write(orjson.dumps(s.__dict__))
"""


def _start_producer(events, bootstrap: str, topic: str, out: Path, log: Path) -> subprocess.Popen:
    """``replay`` at 1,000 events/s in a child process (own process group); the summary goes to
    ``out`` as JSON."""
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-c", _PRODUCER, str(events), bootstrap, topic, str(out)],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _metric(worker, name: str) -> float | None:
    for fam in worker.metrics().values():
        for s in fam:
            if s.name == name:
                return s.value
    return None
