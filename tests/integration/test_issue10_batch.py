"""Issue 10, points 1 and 2 on the real broker: a 2 MB record (over the consumer's Fetch limit,
``PROFILES_FETCH_MAX_BYTES``, and over the producer's ``max_request_size``) in a partition
followed by valid events of the same user and of users in every partition: nothing stalls,
nothing is skipped, the record is dead-lettered truncated."""

from __future__ import annotations

import hashlib

import orjson
import pytest
from kafka import KafkaProducer

from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items
from tests.conftest import kafka, read_topic, total_outcomes

pytestmark = pytest.mark.timeout(600)
DEFAULTS = Settings()


def test_a_record_over_the_fetch_limit_neither_stalls_nor_skips_its_partition(
        broker, topics, dataset, start_worker):
    ds, paths = dataset
    create_topics(kafka(broker.bootstrap), {topics["events_topic"]: DEFAULTS.partitions,
                                            topics["items_topic"]: 1, topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"],
               progress=False)
    events = ds.events[:400]
    victim = events[0]["user_id"]
    big = orjson.dumps({"event_id": "big", "user_id": victim, "type": "search",
                        "ts": events[0]["ts"], "query": "x" * 2_000_000})
    assert len(big) > 2 * DEFAULTS.fetch_max_bytes - 100_000
    records = ([(victim.encode(), big)]
               + [(e["user_id"].encode(), orjson.dumps(e)) for e in events])
    assert any(e["user_id"] == victim for e in events[1:])  # same user after the big one
    worker = start_worker(encoder_kind="hashing", park_timeout_s=5.0)
    worker.wait_ready(240)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5,
                      max_request_size=4_000_000)
    futures = [p.send(topics["events_topic"], key=k, value=v) for k, v in records]
    p.flush()
    assert all(f.succeeded() for f in futures)  # the broker takes it
    p.close()
    worker.wait_for(lambda: total_outcomes(worker) == len(records), 180, "every outcome")
    stats = worker.stats()
    assert stats["events_rejected"] == 1
    assert stats["events_applied"] + stats.get("events_duplicate", 0) == len(events)
    assert worker.total("profiles_offset_gaps") == 0  # ProfilesOffsetsSkipped stays silent
    assert worker.total("profiles_agent_crashes") == 0
    (dead,) = read_topic(broker.bootstrap, topics["dlq_topic"], at_least=1)
    h = dict(dead.headers)
    assert h["reason"] == b"oversized" and h["truncated"] == b"1"
    assert int(h["original_size"]) == len(big)
    assert h["sha256"].decode() == hashlib.sha256(big).hexdigest()
    assert len(dead.value) < DEFAULTS.max_request_bytes
