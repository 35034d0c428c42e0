"""Soak: 200,000 users churn through the profile TTL; the worker's memory stays flat.

Users arrive one after another in event time, each with three events, and go quiet; with a
TTL of 20 s of event time only a few thousand profiles are live at once.  Over the second half
of the soak the worker's resident memory may grow by less than 5 %.  The broker's memory is
reported too (Tansu keeps every record in RAM, so it grows with the log by design).
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from stream.kafka.clients import create_topics
from stream.tools.replay import load_items
from tests.conftest import kafka

pytestmark = pytest.mark.timeout(1200)

USERS = 200_000
EVENTS_PER_USER = 3


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_memory_flat_while_users_churn_through_the_ttl(broker, topics, dataset, start_worker):
    ds, paths = dataset
    create_topics(kafka(broker.bootstrap), {topics["events_topic"]: 4, topics["items_topic"]: 1,
                                     topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"], progress=False)
    items = [it["item_id"] for it in ds.items]
    worker = start_worker(profile_ttl_ms=20_000, dedupe_window=20_000)
    worker.wait_ready(240)

    n = USERS * EVENTS_PER_USER
    t0 = 1_700_000_000_000
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20, acks=1,
                             batch_size=512 * 1024)
    samples: list[tuple[int, int]] = []  # (events applied, worker RSS)
    next_sample = time.monotonic()
    for u in range(USERS):
        user = f"soak-{u:06d}"
        key = user.encode()
        for j in range(EVENTS_PER_USER):
            producer.send(topics["events_topic"], key=key, value=orjson.dumps({
                "event_id": f"s{u}-{j}", "user_id": user, "type": "view",
                "item_id": items[(u * 7 + j) % len(items)], "ts": t0 + u * 10 + j}))
        if time.monotonic() >= next_sample:
            samples.append((worker.stats().get("events_applied", 0), _rss(worker.proc.pid)))
            next_sample = time.monotonic() + 0.25
    producer.flush()
    producer.close()

    def done():
        applied = worker.stats().get("events_applied", 0)
        samples.append((applied, _rss(worker.proc.pid)))
        return applied == n

    worker.wait_for(done, 900, f"{n} events applied", interval=0.25)

    def median_rss(lo: float, hi: float) -> float:
        window = sorted(rss for applied, rss in samples if lo * n <= applied <= hi * n)
        assert len(window) >= 3, f"too few samples between {lo:.0%} and {hi:.0%} applied"
        return window[len(window) // 2]

    # medians of a window just past half-way and of the last tenth: a snapshot's transient
    # allocation in one sample must not read as growth, a leak still does
    rss_mid, rss_end = median_rss(0.5, 0.6), median_rss(0.9, 1.0)
    trend = [f"{q:.0%}:{median_rss(q, q + 0.1) / 2**20:.0f}" for q in (0.1, 0.3, 0.5, 0.7, 0.9)]
    print("soak RSS (MiB) by share applied:", " ".join(trend))
    stats = worker.stats()
    expired = worker.total("profiles_expired")
    print(f"soak: {USERS} users, {n} events; worker RSS median at 50-60 % {rss_mid / 2**20:.0f} MiB, at 90-100 % "
          f"{rss_end / 2**20:.0f} MiB ({100 * (rss_end / rss_mid - 1):+.1f} %); live profiles "
          f"{stats['users']}, expired {expired:.0f}; broker RSS {_rss(broker.proc.pid) / 2**20:.0f} MiB")
    assert stats["events_applied"] == n
    assert expired >= USERS * 0.95  # almost everyone churned out
    assert stats["users"] < 20_000  # only the recent ones are live
    assert rss_end < rss_mid * 1.05, f"worker RSS grew {rss_mid} -> {rss_end} over the second half"
