"""What the worker serves equals what was evaluated (issue 11, point 6), on the real broker.

Two worker processes share the events partitions; each publishes the signal partials of its
partitions to the compacted signals topic and follows it.  A small deterministic history is
replayed; once every event has its outcome and both workers have read every published partial
(counters with deadlines), ``/candidates`` for a sample of users — asked of one worker, so half
of them are forwarded to the other — equals the offline lists: ``stream.core.hybrid.generate``
+ the ranker on a state built offline from the same events, as of the same cut-off (the newest
event time), with the bandit's exploration off (``PROFILES_EXPLORE_WEIGHT=0``).
"""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from stream.core.ranker import default_ranker
from stream.data.generate import generate
from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items, replay
from tests.conftest import kafka, total_outcomes
from tests.offline_candidates import Offline

pytestmark = pytest.mark.timeout(300)

RESUMED = re.compile(r"partition (\d+): resumed at offset (\d+)")
SETTINGS = {"encoder_kind": "hashing", "explore_weight": 0.0, "signals_publish_ms": 200,
            "snapshot_interval_s": 1.0}


def test_two_workers_serve_the_offline_candidate_lists(broker, topics, start_worker, tmp_path):
    t0 = time.monotonic()
    ds = generate(users=150, items=150, events=3000, seed=11)
    paths = ds.write(tmp_path / "data")
    n = len(ds.events)
    partitions = Settings().partitions
    create_topics(kafka(broker.bootstrap), {topics["events_topic"]: partitions,
                                            topics["items_topic"]: 1, topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"],
               progress=False)
    a = start_worker(**SETTINGS)
    b = start_worker(**SETTINGS)
    a.wait_ready(240)
    b.wait_ready(240)

    def owned(w) -> set[int]:
        return {int(p) for p in w.stats()["partitions"]}

    def split() -> bool:
        pa, pb = owned(a), owned(b)
        return bool(pa) and bool(pb) and not (pa & pb) and (pa | pb) == set(range(partitions)) \
            and a.stats()["ready"] and b.stats()["ready"]

    a.wait_for(split, 120, "both workers to own partitions")
    sent = replay(paths["events"], kafka(broker.bootstrap), topic=topics["events_topic"],
                  progress=False)
    assert sent.sent == n and sent.failed == 0
    a.wait_for(lambda: total_outcomes(a) + total_outcomes(b) == n, 120,
               "every event to reach a final outcome")

    def signals_caught_up() -> bool:
        sa, sb = a.stats()["signals"], b.stats()["signals"]
        published = sa["published"] + sb["published"]
        return (published > 0 and sa["pending"] == 0 and sb["pending"] == 0
                and sa["received"] == published and sb["received"] == published)

    a.wait_for(signals_caught_up, 60, "both workers to read every published partial")
    assert split(), "a rebalance during the test"

    s = a.settings
    offline = Offline(ds.events, ds.items, s, HashingEncoder(), default_ranker())
    assert a.stats()["signals"]["newest_ts"] == b.stats()["signals"]["newest_ts"] == offline.now
    users = sorted({e["user_id"] for e in ds.events})[::5] + ["never-seen"]
    forwarded = 0
    for user in users:
        want = offline.candidates(user, 20)
        got = a.json(f"/users/{user}/candidates?k=20")
        assert got["_status"] == 200, got
        forwarded += offline.partition.get(user, -1) in owned(b)
        # the same items in the same order; scores equal up to float64 rounding (the workers
        # sum their state batch by batch, the offline state is built in one step)
        assert [c["item_id"] for c in got["candidates"]] == [i for i, _ in want], user
        np.testing.assert_allclose([c["score"] for c in got["candidates"]],
                                   [v for _, v in want], rtol=1e-6, atol=0)
    assert forwarded > 0  # some of the users were answered by the other worker
    by_source: dict[str, float] = {}
    for w in (a, b):
        for src, v in w.total("profiles_candidates", by="source").items():
            by_source[src] = by_source.get(src, 0.0) + v
    assert {"content", "covis", "trending"} <= {k for k, v in by_source.items() if v}, by_source
    print(f"serving == evaluation: {len(users)} users ({forwarded} forwarded), "
          f"{a.stats()['signals']['published'] + b.stats()['signals']['published']} partials "
          f"published, candidates by source {by_source}, {time.monotonic() - t0:.1f}s")


def test_signals_survive_a_sigkilled_worker(broker, topics, start_worker, tmp_path):
    """A worker killed mid-replay, its snapshots far behind what it had applied (and
    published): the survivor re-applies its partitions' events exactly once, replaces the
    stale partials, and serves the offline lists."""
    ds = generate(users=120, items=80, events=3000, seed=13)
    paths = ds.write(tmp_path / "data")
    n = len(ds.events)
    partitions = Settings().partitions
    create_topics(kafka(broker.bootstrap), {topics["events_topic"]: partitions,
                                            topics["items_topic"]: 1, topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"],
               progress=False)
    victim = start_worker(**{**SETTINGS, "snapshot_interval_s": 600.0})
    survivor = start_worker(**SETTINGS)
    victim.wait_ready(240)
    survivor.wait_ready(240)
    victim.wait_for(lambda: victim.stats()["partitions"] and survivor.stats()["partitions"]
                    and victim.stats()["ready"] and survivor.stats()["ready"], 120,
                    "both workers to own partitions")

    result = {}
    producer = threading.Thread(target=lambda: result.update(summary=replay(
        paths["events"], kafka(broker.bootstrap), topic=topics["events_topic"], rate=1500,
        progress=False)), daemon=True)
    producer.start()
    victim.wait_for(lambda: victim.stats()["signals"]["published"] > 0
                    and victim.stats().get("events_applied", 0) >= 300, 60,
                    "the victim to apply and publish", interval=0.05)
    applied = {int(q): off for q, off in victim.stats()["partitions"].items()}
    log_mark = survivor.log_path.stat().st_size
    victim.kill()
    producer.join(60)
    assert result["summary"].sent == n and result["summary"].failed == 0
    survivor.wait_for(lambda: len(survivor.stats()["partitions"]) == partitions, 120,
                      "the survivor to own every partition")
    survivor.wait_for(lambda: total_outcomes(survivor) == n
                      and survivor.stats()["signals"]["pending"] == 0, 120,
                      "every event applied and every partial published")
    stats = survivor.stats()
    assert stats["events_applied"] == n and stats.get("events_duplicate", 0) == 0, stats
    # it re-read offsets the victim had applied (and published partials for)
    resumed = {int(m.group(1)): int(m.group(2)) for m in RESUMED.finditer(
        survivor.log_path.read_bytes()[log_mark:].decode(errors="replace"))}
    assert any(resumed.get(q, off) < off for q, off in applied.items()), (resumed, applied)

    offline = Offline(ds.events, ds.items, survivor.settings, HashingEncoder(), default_ranker())
    assert stats["signals"]["newest_ts"] == offline.now
    for user in sorted({e["user_id"] for e in ds.events})[::6] + ["never-seen"]:
        got = survivor.json(f"/users/{user}/candidates?k=20")
        want = offline.candidates(user, 20)
        assert [c["item_id"] for c in got["candidates"]] == [i for i, _ in want], user
        np.testing.assert_allclose([c["score"] for c in got["candidates"]],
                                   [v for _, v in want], rtol=1e-6, atol=0)
