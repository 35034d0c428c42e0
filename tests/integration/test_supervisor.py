"""``profiles worker --processes 2`` on the real broker, scraped by a real Prometheus.

One supervised worker (two children, real encoder, snapshots every second) behind one port:

1. the first 10,000 events of the generated log, with a malformed record every 100 (three
   DLQ reasons), replayed at a fixed 350 events/s; then, through Prometheus's HTTP API at an
   instant whose 20 s rate window lies inside the replay: every dashboard query returns finite
   values, the events/s panel agrees with the replayed rate within 20 %, the per-process
   panels show both children and the parent, the index sizes are each child's (the whole
   catalogue on each, the users split between them), and every shipped alert rule evaluates
   without error to no alert (its expression is empty on this healthy run);
2. the other 10,000 events at 1,000 events/s, and one child SIGKILLed once 30 % of them are
   applied: the supervisor starts it again, every event has exactly one outcome, and every
   profile and arm read through the parent's port (forwarded to a child, routed to the owner)
   equals the offline oracle;
3. SIGTERM to the parent stops both children cleanly (exit 0).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items, replay
from tests.conftest import assert_matches_oracle, kafka, total_outcomes
from tests.prom import MALFORMED, WINDOW_S, mixed_log, needs_prometheus, shipped_rules
from tests.unit.test_deploy import DASHBOARD

pytestmark = [pytest.mark.timeout(600), needs_prometheus]

RATE = 350.0
N_FIRST = 10_000


def _child_stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/stats", timeout=5) as r:
        return json.loads(r.read())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_two_processes_scraped_by_prometheus_and_one_sigkilled(
        broker, topics, dataset, oracle_vectors, start_worker, start_prometheus, tmp_path):
    ds, paths = dataset
    t_test = time.monotonic()
    partitions = Settings().partitions
    create_topics(kafka(broker.bootstrap), {topics["events_topic"]: partitions,
                                            topics["items_topic"]: 1, topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"],
               progress=False)
    # segments on: the "Users per customer segment" panel has data
    worker = start_worker(processes=2, snapshot_interval_s=1.0, segments_k=4, segments_every_s=2.0)
    worker.wait_ready(300)
    children = worker.stats()["processes"]
    assert [c["process"] for c in children] == [0, 1] and all(c["running"] for c in children)

    def split():
        owned = [set(map(int, _child_stats(c["url"])["partitions"])) for c in children]
        return owned if all(owned) and not (owned[0] & owned[1]) \
            and owned[0] | owned[1] == set(range(partitions)) else None

    worker.wait_for(split, 120, "both children to own partitions")
    worker.wait_ready(60)
    t_ready = time.monotonic() - t_test

    prom = start_prometheus(f"127.0.0.1:{worker.settings.http_port}")
    try:
        prom.wait_scraped()
        # ------------------------------------------------------------ 1. a live replay
        log, mixed = mixed_log(ds.events[:N_FIRST], tmp_path / "first.jsonl", probes=False)
        bad = sum(mixed.values())
        sent = replay(log, kafka(broker.bootstrap), topic=topics["events_topic"], rate=RATE,
                      progress=False)
        t_end = time.time()
        assert sent.sent == N_FIRST + bad and sent.failed == 0, sent
        t_start = t_end - sent.seconds
        at = t_end - 2.0
        assert at - WINDOW_S > t_start + 5.0, sent  # the rate window lies inside the replay
        worker.wait_for(lambda: total_outcomes(worker) == N_FIRST + bad, 300,
                        "every record of the first part to have an outcome")
        prom.wait_scraped(after=at, timeout_s=30)
        answers = prom.panels(json.loads(DASHBOARD.read_text()), at)

        def panel(title: str, i: int = 0) -> list[tuple[dict, float]]:
            return answers[title, i]

        events_rate = sum(v for _, v in panel("Events/s by type and outcome"))
        replayed = sent.sent / sent.seconds
        assert abs(events_rate / replayed - 1) <= 0.20, (events_rate, replayed)
        assert {m["reason"] for m, _ in panel("DLQ rate by reason")} == set(MALFORMED)
        assert [v for _, v in panel("Worker up")] == [1.0]
        assert [v for _, v in panel("Ready")] == [1.0]
        for title in ("Process memory (RSS)", "Process CPU"):  # each child and the parent
            assert {m.get("process") for m, _ in panel(title)} == {"0", "1", "supervisor"}, title
        lag = panel("Consumer lag per partition")
        assert {m["partition"] for m, _ in lag} == {str(p) for p in range(partitions)}
        p50, p95, p99 = (panel("Ingest → index latency (p50 / p95 / p99)", i)[0][1]
                         for i in range(3))
        assert 0 < p50 <= p95 <= p99 < 30, (p50, p95, p99)
        # the latency histogram summed over the children = the children's own counts
        count = prom.query("sum(profiles_ingest_to_index_seconds_count)", at)[0][1]
        per = prom.query("profiles_ingest_to_index_seconds_count", at)
        assert {m["process"] for m, _ in per} == {"0", "1"}
        assert sum(v for _, v in per) == count > 0

        users = len({e["user_id"] for e in ds.events[:N_FIRST]})

        def sizes():
            got = prom.query("sum by (instance, process, index) (profiles_index_vectors)")
            items = {m["process"]: v for m, v in got if m["index"] == "items"}
            n_users = sum(v for m, v in got if m["index"] == "users")
            return (items, n_users) if items == {"0": float(len(ds.items)),
                                                 "1": float(len(ds.items))} \
                and n_users == users else None

        prom.wait_for(sizes, 30, "each child's index sizes")

        for r in shipped_rules():  # a healthy run: no alert's condition holds
            assert prom.query(r["expr"], at) == [], (r["alert"], prom.query(r["expr"], at))
        rules = prom.wait_rules_evaluated()
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
        assert [r["name"] for r in rules if r.get("state") != "inactive"] == []
    finally:
        prom.stop()

    # ---------------------------------------------------------------- 2. SIGKILL one child
    rest = tmp_path / "rest.jsonl"
    rest.write_text("".join(json.dumps(e) + "\n" for e in ds.events[N_FIRST:]))
    result = {}
    producer = threading.Thread(target=lambda: result.setdefault("s", replay(
        rest, kafka(broker.bootstrap), topic=topics["events_topic"], rate=1000,
        progress=False)), daemon=True)
    producer.start()
    n = len(ds.events)
    target = N_FIRST + bad + 0.3 * (n - N_FIRST)
    worker.wait_for(lambda: total_outcomes(worker) >= target, 120, "30 % of the rest applied",
                    interval=0.05)
    victim = worker.stats()["processes"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    t_kill = time.monotonic()

    def restarted():
        c = worker.stats()["processes"][0]
        return c if c["restarts"] == 1 and c["running"] and c["pid"] != victim["pid"] else None

    worker.wait_for(restarted, 60, "the killed child to be started again")
    producer.join(120)
    assert not producer.is_alive() and result["s"].sent == n - N_FIRST, result
    worker.wait_for(lambda: total_outcomes(worker) == n + bad, 300, "every outcome")
    worker.wait_ready(120)
    recovered_s = time.monotonic() - t_kill
    stats = worker.stats()
    assert stats["events_applied"] == n, stats
    assert stats.get("events_duplicate", 0) == 0 and stats["events_rejected"] == bad, stats
    assert stats["users"] == len({e["user_id"] for e in ds.events})
    worst, arms = assert_matches_oracle(worker, ds.events, oracle_vectors)
    assert arms > 0

    # ---------------------------------------------------------------- 3. SIGTERM
    pids = [c["pid"] for c in worker.stats()["processes"]]
    assert worker.stop(signal.SIGTERM, 60) == 0
    assert not any(_alive(p) for p in pids)
    print(f"--processes 2: ready in {t_ready:.0f}s, events/s panel {events_rate:.0f} vs "
          f"{replayed:.0f} replayed, p99 {p99 * 1000:.0f} ms; child 0 killed, all outcomes "
          f"{recovered_s:.0f}s later, worst profile error {worst:.1e}; whole test "
          f"{time.monotonic() - t_test:.0f}s")
