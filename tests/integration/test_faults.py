"""Faults on the real broker and worker: duplicates, malformed events, SIGKILL mid-stream."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from stream.kafka.changelog import KafkaBlobStore
from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items, replay
from stream.worker.snapshots import SnapshotStore
from tests.conftest import assert_matches_oracle, kafka, read_topic, total_outcomes

pytestmark = pytest.mark.timeout(900)
DEFAULTS = Settings()


def _prepare(broker, topics, paths):
    create_topics(kafka(broker.bootstrap), {topics["events_topic"]: DEFAULTS.partitions,
                                     topics["items_topic"]: 1, topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"], progress=False)


def _send(broker, topic, records):
    """records: (key bytes | None, value bytes). Returns how many were acknowledged."""
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    futures = [p.send(topic, key=k, value=v) for k, v in records]
    p.flush()
    ok = sum(1 for f in futures if f.succeeded())
    p.close()
    return ok


def _vectors(worker, users):
    return {u: np.asarray(worker.json(f"/users/{u}/profile?vector=1")["vector"]) for u in users}


def test_duplicates_and_dead_letters(broker, topics, dataset, start_worker):
    ds, paths = dataset
    _prepare(broker, topics, paths)
    events = ds.events[:3000]
    good = [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
    e0 = events[0]
    bad = [
        (b"u1", b"{not json", "bad_json"),
        (b"u1", b"[1, 2]", "not_object"),
        (b"u1", orjson.dumps({k: v for k, v in e0.items() if k != "ts"} | {"event_id": "x1"}), "missing_field"),
        (b"u1", orjson.dumps(e0 | {"event_id": "x2", "type": "teleport"}), "unknown_type"),
        (b"u1", orjson.dumps(e0 | {"event_id": "x3", "ts": "yesterday"}), "bad_field"),
        (b"u1", orjson.dumps(e0 | {"event_id": "x4", "ts": int(time.time() * 1000) + 10 * 86_400_000}),
         "ts_in_future"),
        (b"u1", orjson.dumps(e0 | {"event_id": "x5", "ts": -5}), "ts_too_old"),
        (b"u1", orjson.dumps({"event_id": "x6", "user_id": "u1", "type": "search", "ts": e0["ts"],
                              "query": "q" * 5000}), "oversized"),
        (b"u1", orjson.dumps(e0 | {"event_id": "x7", "item_id": "no-such-item"}), "unknown_item"),
    ]
    # malformed events interleaved with valid ones
    mixed = good[:1500] + [(k, v) for k, v, _ in bad] + good[1500:]
    worker = start_worker(park_timeout_s=2.0)
    worker.wait_ready(240)
    assert _send(broker, topics["events_topic"], mixed) == len(mixed)
    worker.wait_for(lambda: total_outcomes(worker) == len(mixed), 300, "all outcomes")
    stats = worker.stats()
    assert stats["events_applied"] == len(good)
    assert stats["events_rejected"] == len(bad)
    dlq_metric = worker.total("profiles_dlq", by="reason")
    assert dlq_metric == {reason: 1.0 for *_, reason in bad}
    dead = read_topic(broker.bootstrap, topics["dlq_topic"], at_least=len(bad))
    got = sorted((dict(m.headers)["reason"].decode(), m.value) for m in dead)
    assert got == sorted((reason, value) for _, value, reason in bad)
    assert all(dict(m.headers).get("detail") for m in dead)

    users = sorted({e["user_id"] for e in events})[:50]
    before = _vectors(worker, users)
    # duplicates re-sent after the state was snapshotted (and faust committed)
    worker.wait_for(lambda: worker.metrics()["profiles_snapshots"][0].value > 0, 30, "a snapshot")
    time.sleep(DEFAULTS.snapshot_interval_s + 1.0)
    assert _send(broker, topics["events_topic"], good[:500]) == 500
    worker.wait_for(lambda: worker.stats().get("events_duplicate", 0) == 500, 120, "500 duplicates")
    unchanged = _vectors(worker, users)
    assert all(np.array_equal(before[u], unchanged[u]) for u in users)

    # ... and across a restart (SIGTERM drains and snapshots)
    assert worker.stop() == 0
    worker2 = start_worker(park_timeout_s=2.0)
    worker2.wait_ready(240)
    assert _send(broker, topics["events_topic"], good[500:1000]) == 500
    worker2.wait_for(lambda: worker2.stats().get("events_duplicate", 0) == 1000, 120, "1000 duplicates")
    stats2 = worker2.stats()
    assert stats2["events_applied"] == len(good)
    after = _vectors(worker2, users)
    for u in users:
        assert np.max(np.abs(after[u] - before[u])) <= 1e-6


def test_sigkill_mid_stream_then_restart_equals_oracle(broker, topics, dataset, oracle_vectors,
                                                       start_worker):
    ds, paths = dataset
    _prepare(broker, topics, paths)
    n = len(ds.events)
    # snapshots less often than faust commits (every 2 s): the group's committed offsets run
    # ahead of the snapshots, and the restart must still resume at the snapshots
    worker = start_worker(snapshot_interval_s=3.0)
    worker.wait_ready(240)
    # a steady producer, so the kill lands mid-stream
    producer = threading.Thread(target=replay, args=(paths["events"],), daemon=True,
                                kwargs=dict(s=kafka(broker.bootstrap), topic=topics["events_topic"],
                                            rate=2500, progress=False))
    producer.start()
    # the snapshots the restart will load: the changelog's (written before the folder's)
    changelog = KafkaBlobStore(kafka(broker.bootstrap, events_topic=topics["events_topic"]),
                               keep_bytes=False, namespace="*")
    store = SnapshotStore(worker.settings.state_dir, topics["events_topic"], changelog)
    worker.wait_for(lambda: worker.stats().get("events_applied", 0) >= 0.3 * n, 300, "30% applied",
                    interval=0.05)
    while True:
        # Applied offsets (a lower bound), then freeze the worker and read its snapshots: if a
        # snapshot lags an applied offset, the restart must re-read that offset.
        applied = worker.stats()["events_applied"]
        offsets = {int(s.labels["partition"]): int(s.value)
                   for s in worker.metrics()["profiles_next_offset"]}
        os.killpg(worker.proc.pid, signal.SIGSTOP)
        snap = {p: (store.read(p) or {"next_offset": 0})["next_offset"] for p in offsets}
        if any(snap[p] < off for p, off in offsets.items()):
            break
        os.killpg(worker.proc.pid, signal.SIGCONT)  # a snapshot landed in between: try again
        time.sleep(0.05)
    worker.kill()
    changelog.close()
    assert 0.3 * n <= applied <= 0.7 * n, f"killed outside 30-70 %: {applied} of {n} applied"

    worker2 = start_worker(snapshot_interval_s=1.0)
    worker2.wait_ready(240)
    producer.join(120)

    def all_outcomes() -> bool:  # fails at once if records were skipped, not at the deadline
        assert "offset gap" not in worker2.log_path.read_text(), "records skipped after the restart"
        return total_outcomes(worker2) == n

    worker2.wait_for(all_outcomes, 600, "all outcomes after restart")
    # it re-read at least one offset the killed worker had applied
    log = worker2.log_path.read_text()
    resumed = {int(m.group(1)): int(m.group(2))
               for m in re.finditer(r"partition (\d+): resumed at offset (\d+)", log)}
    assert resumed == snap, (resumed, snap)
    skipped = [s for s in worker2.metrics().get("profiles_offset_gaps", []) if s.name.endswith("_total")]
    assert not any(s.value for s in skipped), skipped
    assert any(resumed[p] < off for p, off in offsets.items()), (resumed, offsets)

    stats = worker2.stats()
    assert stats["events_applied"] == n and stats.get("events_duplicate", 0) == 0
    assert_matches_oracle(worker2, ds.events, oracle_vectors)


def test_dead_lettered_unknown_items_come_back_with_dlq_replay(broker, topics, dataset,
                                                               start_worker):
    """Events for an item that arrives too late are dead-lettered, then replayed after the fix."""
    from stream.tools.dlq import replay_dlq

    ds, paths = dataset
    _prepare(broker, topics, paths)
    worker = start_worker(park_timeout_s=1.0)
    worker.wait_ready(240)
    late = [{"event_id": f"late-{i}", "user_id": f"late-user-{i % 3}", "type": "click",
             "ts": 1_700_000_000_000 + i, "item_id": "late-item"} for i in range(6)]
    assert _send(broker, topics["events_topic"],
                 [(e["user_id"].encode(), orjson.dumps(e)) for e in late]) == 6
    worker.wait_for(lambda: worker.stats().get("events_rejected", 0) == 6, 120, "6 unknown_item")
    assert worker.json("/users/late-user-0/profile")["_status"] == 404
    # the fix: the item is published; then the dead letters are replayed
    assert _send(broker, topics["items_topic"], [(b"late-item", orjson.dumps(
        {"item_id": "late-item", "title": "Trailblazer hydration pack, 12 l, blue"}))]) == 1
    settings = worker.settings
    republished, skipped = replay_dlq(settings, reasons=["unknown_item"], timeout_s=2.0)
    assert (republished, skipped) == (6, 0)
    worker.wait_for(lambda: worker.stats().get("events_applied", 0) == 6, 120, "6 applied")
    body = worker.json("/users/late-user-0/profile")
    assert body["_status"] == 200 and body["events"] == 2
