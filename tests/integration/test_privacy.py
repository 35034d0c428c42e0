"""Privacy on the real broker and worker: forget everywhere, pseudonymous ids, API tokens."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from stream.kafka.clients import create_topics
from stream.tools.replay import load_items
from tests.conftest import kafka, read_topic, total_outcomes
from tests.integration.test_faults import _send

pytestmark = pytest.mark.timeout(600)


def _prepare(broker, topics, paths):
    create_topics(kafka(broker.bootstrap), {topics["events_topic"]: 4, topics["items_topic"]: 1,
                                     topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"], progress=False)


def _dlq_records(broker, topic):
    """Every record of the DLQ, in order, and the compacted view (latest value per key)."""
    records = read_topic(broker.bootstrap, topic)
    view = {}
    for m in records:
        if m.value is None:
            view.pop(m.key, None)
        else:
            view[m.key] = m
    return records, view


def _request(url, method="GET", token=None):
    req = urllib.request.Request(url, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_forget_erases_the_user_everywhere(broker, topics, dataset, start_worker, tmp_path):
    ds, paths = dataset
    _prepare(broker, topics, paths)
    events = ds.events[:4000]
    user = events[0]["user_id"]
    mine = [e for e in events if e["user_id"] == user]
    bad = orjson.dumps({"event_id": "bad-1", "user_id": user, "type": "teleport", "ts": 1})
    worker = start_worker(snapshot_interval_s=0.5)
    worker.wait_ready(240)
    records = [(e["user_id"].encode(), orjson.dumps(e)) for e in events] + [(user.encode(), bad)]
    assert _send(broker, topics["events_topic"], records) == len(records)
    worker.wait_for(lambda: total_outcomes(worker) == len(records), 300, "all outcomes")
    assert worker.json(f"/users/{user}/profile")["_status"] == 200
    _, view = _dlq_records(broker, topics["dlq_topic"])
    assert any(k.startswith(user.encode() + b"/") for k in view)

    status, body = _request(f"{worker.url}/users/{user}", method="DELETE")
    assert status == 202, body
    forget_ts = orjson.loads(body)["ts"]
    worker.wait_for(lambda: worker.json(f"/users/{user}/profile")["_status"] == 404, 60, "404")
    forget_total = worker.total("profiles_forget")
    assert forget_total == 1
    # absent from the users index: nobody's look-alikes include them
    others = sorted({e["user_id"] for e in events} - {user})[:20]
    for other in others:
        hits = worker.json(f"/users/{other}/similar?k=1000")["similar"]
        assert user not in {h["user_id"] for h in hits}
    # gone from the snapshot files once the next snapshot is written (a tombstone keeps a hash)
    def snapshots_clean() -> bool:  # issue 12: per partition a manifest, a base and deltas
        state = Path(worker.settings.state_dir)
        snaps = [f for f in state.glob(f"{topics['events_topic']}-*/*") if f.is_file()]
        manifests = [f for f in snaps if f.name == "manifest"]
        return len(manifests) == 4 and not any(user.encode() in f.read_bytes() for f in snaps)

    worker.wait_for(snapshots_clean, 30, "the user to leave the snapshot files")
    # the audit line names the hash and the offset, not the user
    log = worker.log_path.read_text()
    assert re.search(r"audit: forget user-hash=[0-9a-f]{32} partition=\d+ offset=\d+", log)
    assert user not in log
    # their dead letters are tombstoned: the compacted DLQ has none left
    _, view = _dlq_records(broker, topics["dlq_topic"])
    assert not any(k.startswith(user.encode() + b"/") for k in view)

    # a replay of their history (new event ids, older than the forget) does not resurrect them
    again = [(user.encode(), orjson.dumps(e | {"event_id": "again-" + e["event_id"]})) for e in mine]
    assert _send(broker, topics["events_topic"], again) == len(again)
    worker.wait_for(lambda: worker.stats().get("events_forgotten", 0) == len(again), 120,
                    "forgotten outcomes")
    assert worker.json(f"/users/{user}/profile")["_status"] == 404
    # a newer event starts a fresh profile
    fresh = mine[0] | {"event_id": "fresh-1", "ts": forget_ts + 1000}
    assert _send(broker, topics["events_topic"], [(user.encode(), orjson.dumps(fresh))]) == 1
    worker.wait_for(lambda: worker.json(f"/users/{user}/profile").get("events") == 1, 60, "fresh")


def test_pseudonymous_ids_never_store_raw_ids(broker, topics, dataset, start_worker):
    ds, paths = dataset
    _prepare(broker, topics, paths)
    events = ds.events[:3000]
    users = sorted({e["user_id"] for e in events})
    worker = start_worker(id_secret="test-secret", snapshot_interval_s=0.5, park_timeout_s=0.5)
    worker.wait_ready(240)
    bad = [(users[0].encode(), orjson.dumps({"event_id": "b1", "user_id": users[0], "type": "nope",
                                             "ts": 1})),
           (users[1].encode(), orjson.dumps({"event_id": "b2", "user_id": users[1], "type": "view",
                                             "ts": 1, "item_id": "never-known"})),
           (users[2].encode(), b"not json " + users[2].encode())]
    records = [(e["user_id"].encode(), orjson.dumps(e)) for e in events] + bad
    assert _send(broker, topics["events_topic"], records) == len(records)
    worker.wait_for(lambda: total_outcomes(worker) == len(records), 300, "all outcomes")
    # the API takes raw ids and hashes them
    body = worker.json(f"/users/{users[3]}/profile")
    assert body["_status"] == 200 and body["user_id"] != users[3]
    hits = worker.json(f"/users/{users[3]}/similar?k=50")["similar"]
    assert hits and all(re.fullmatch(r"[0-9a-f]{32}", h["user_id"]) for h in hits)
    assert worker.stop() == 0  # final snapshots, logs flushed

    pattern = re.compile(rb"u\d{5}")  # the generator's raw user ids

    for snap in (f for f in Path(worker.settings.state_dir).rglob("*") if f.is_file()):
        assert not pattern.search(snap.read_bytes()), f"raw id in {snap}"
    assert not pattern.search(worker.log_path.read_bytes()), "raw id in the worker log"
    records, _ = _dlq_records(broker, topics["dlq_topic"])
    assert len(records) == 3
    for m in records:
        assert not pattern.search(m.key or b""), m.key
        assert not pattern.search(m.value or b""), m.value
    unparseable = [m for m in records if dict(m.headers)["reason"] == b"bad_json"]
    assert unparseable and unparseable[0].value is None  # only reason and offset kept

    worker2 = start_worker(id_secret="test-secret")
    worker2.wait_ready(240)
    metrics = worker2.get("/metrics")[1]
    assert not pattern.search(metrics)

    # after the fix (the item arrives), the hashed dead letter goes back to its user's partition
    # and is applied without hashing the id twice
    from stream.tools.dlq import replay_dlq

    before = worker2.json(f"/users/{users[1]}/profile")["events"]
    assert _send(broker, topics["items_topic"], [(b"never-known", orjson.dumps(
        {"item_id": "never-known", "title": "Harbor canvas tote bag, navy"}))]) == 1
    assert replay_dlq(worker2.settings, reasons=["unknown_item"], timeout_s=2.0) == (1, 2)
    worker2.wait_for(lambda: worker2.json(f"/users/{users[1]}/profile")["events"] == before + 1,
                     60, "the replayed dead letter applied to the same pseudonymous user")


def test_api_token_required_when_configured(broker, topics, dataset, start_worker):
    ds, paths = dataset
    _prepare(broker, topics, paths)
    worker = start_worker(api_token="s3cret-token")
    worker.wait_ready(240)
    user = ds.events[0]["user_id"]
    assert _request(f"{worker.url}/users/{user}/profile")[0] == 401
    assert _request(f"{worker.url}/users/{user}/profile", token="wrong")[0] == 401
    assert _request(f"{worker.url}/users/{user}/profile", token="s3cret-token")[0] == 404
    assert _request(f"{worker.url}/users/{user}", method="DELETE")[0] == 401
    assert _request(f"{worker.url}/metrics")[0] == 200
    assert _request(f"{worker.url}/healthz")[0] == 200
    assert "s3cret-token" not in worker.log_path.read_text()


def test_rate_cap_and_ttl(broker, topics, start_worker, dataset):
    """A bot over the per-user cap is dead-lettered; idle users expire in event time."""
    ds, paths = dataset
    _prepare(broker, topics, paths)
    item = ds.items[0]["item_id"]
    t0 = 1_700_000_000_000
    bot = [{"event_id": f"bot-{i}", "user_id": "bot", "type": "view", "item_id": item,
            "ts": t0 + i} for i in range(50)]  # 50 events within one 60 s window
    idle = [{"event_id": "idle-1", "user_id": "idle-user", "type": "view", "item_id": item, "ts": t0}]
    late = [{"event_id": "late-1", "user_id": "active-user", "type": "view", "item_id": item,
             "ts": t0 + 3_600_000}]  # an hour later in event time
    worker = start_worker(rate_limit_events=10, rate_limit_window_ms=60_000,
                          profile_ttl_ms=1_800_000)
    worker.wait_ready(240)
    assert _send(broker, topics["events_topic"],
                 [(e["user_id"].encode(), orjson.dumps(e)) for e in bot + idle]) == 51
    worker.wait_for(lambda: total_outcomes(worker) == 51, 120, "51 outcomes")
    stats = worker.stats()
    assert stats["events_applied"] == 11 and stats["events_rejected"] == 40
    dlq = worker.total("profiles_dlq", by="reason")
    assert dlq == {"rate_limited": 40.0}
    assert worker.json("/users/idle-user/profile")["_status"] == 200
    # every partition's newest event time moves on an hour (100 users cover the 4 partitions);
    # the idle user is then past the 30-minute TTL and expires
    active = [late[0] | {"event_id": f"late-{i}", "user_id": f"active-{i}"} for i in range(100)]
    assert _send(broker, topics["events_topic"],
                 [(e["user_id"].encode(), orjson.dumps(e)) for e in active]) == 100
    worker.wait_for(lambda: worker.json("/users/idle-user/profile")["_status"] == 404, 60,
                    "the idle user to expire")
    expired = worker.total("profiles_expired")
    assert expired >= 2  # the idle user and the bot (both an hour idle)
    assert worker.json("/users/active-0/profile")["_status"] == 200
