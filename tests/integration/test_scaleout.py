"""Scale-out: two workers share the events partitions; one is SIGKILLed midway.

Both workers use the same group, topics and state directory (state moves with its partition
through the snapshot files, so the directory must be shared storage).  The victim is frozen
until one of its partitions' snapshots provably lags what it had applied, then killed, so the
survivor must re-read applied offsets after it takes the partitions over (session timeout).
At the end every profile equals the offline oracle and every outcome is counted once.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from stream.kafka.changelog import KafkaBlobStore
from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items, replay
from stream.worker.snapshots import SnapshotStore
from tests.conftest import assert_matches_oracle, kafka, total_outcomes

pytestmark = pytest.mark.timeout(900)
DEFAULTS = Settings()
RESUMED = re.compile(r"partition (\d+): resumed at offset (\d+)")


def _owned(worker) -> set[int]:
    return {int(p) for p in worker.stats()["partitions"]}


def _wait_stopped(pid: int, timeout_s: float = 10.0) -> None:
    """Wait until every thread of ``pid`` is stopped (SIGSTOP is delivered asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except FileNotFoundError:
                continue  # the thread ended
            states.append(stat.rsplit(")", 1)[1].split()[0])
        if states and all(s in ("T", "t") for s in states):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid} not stopped after {timeout_s}s: {states}")
        time.sleep(0.005)


def test_two_workers_one_sigkilled_midway_equals_oracle(broker, topics, dataset, oracle_vectors,
                                                        start_worker):
    ds, paths = dataset
    n = len(ds.events)
    create_topics(kafka(broker.bootstrap), {topics["events_topic"]: DEFAULTS.partitions,
                                     topics["items_topic"]: 1, topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"], progress=False)
    all_parts = set(range(DEFAULTS.partitions))

    victim = start_worker(snapshot_interval_s=1.0)
    survivor = start_worker(snapshot_interval_s=1.0)
    assert victim.settings.state_dir == survivor.settings.state_dir  # shared storage
    victim.wait_ready(300)
    survivor.wait_ready(300)

    def split() -> bool:
        a, b = _owned(victim), _owned(survivor)
        return bool(a) and bool(b) and not (a & b) and (a | b) == all_parts \
            and victim.stats()["ready"] and survivor.stats()["ready"]

    victim.wait_for(split, 120, "both workers to own partitions")
    survivor.wait_for(split, 5, "the split to hold")
    victim_parts = _owned(victim)

    result = {}

    def produce() -> None:
        result["summary"] = replay(paths["events"], kafka(broker.bootstrap),
                                   topic=topics["events_topic"], rate=1000, progress=False)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()

    def applied_total() -> int:
        return int(victim.stats().get("events_applied", 0) + survivor.stats().get("events_applied", 0))

    victim.wait_for(lambda: applied_total() >= 0.3 * n, 300, "30% applied", interval=0.05)
    # the snapshots the survivor will load: the changelog's (written before the folder's)
    changelog = KafkaBlobStore(kafka(broker.bootstrap, events_topic=topics["events_topic"]),
                               keep_bytes=False, namespace="*")
    store = SnapshotStore(victim.settings.state_dir, topics["events_topic"], changelog)
    while True:
        # The victim's applied offsets (a lower bound), then freeze it and read its snapshots:
        # if a snapshot lags an applied offset, the survivor must re-read that offset.
        applied = applied_total()
        offsets = {int(p): off for p, off in victim.stats()["partitions"].items()}
        os.killpg(victim.proc.pid, signal.SIGSTOP)
        _wait_stopped(victim.proc.pid)
        snap = {p: (store.read(p) or {"next_offset": 0})["next_offset"] for p in offsets}
        if any(snap[p] < off for p, off in offsets.items()):
            break
        os.killpg(victim.proc.pid, signal.SIGCONT)  # a snapshot landed in between: try again
        time.sleep(0.05)
    log_mark = survivor.log_path.stat().st_size
    victim.kill()
    t_kill = time.monotonic()
    changelog.close()
    assert set(offsets) == victim_parts
    assert 0.3 * n <= applied <= 0.7 * n, f"killed outside 30-70 %: {applied} of {n} applied"

    # the survivor takes the victim's partitions over after the session timeout
    survivor.wait_for(lambda: _owned(survivor) == all_parts, 120, "the survivor to own everything")
    takeover_s = time.monotonic() - t_kill
    producer.join(120)
    assert not producer.is_alive(), "the replay did not finish"
    summary = result["summary"]
    assert summary.sent == n and summary.failed == 0, summary
    survivor.wait_for(lambda: total_outcomes(survivor) == n, 600, "all outcomes after the kill")

    # it loaded the victim's snapshots as they were at the kill, i.e. re-read applied offsets
    resumed: dict[int, int] = {}
    for m in RESUMED.finditer(survivor.log_path.read_bytes()[log_mark:].decode(errors="replace")):
        resumed.setdefault(int(m.group(1)), int(m.group(2)))
    assert {p: resumed.get(p) for p in victim_parts} == snap, (resumed, snap)
    assert any(resumed[p] < off for p, off in offsets.items()), (resumed, offsets)

    stats = survivor.stats()
    assert stats["events_applied"] == n, stats
    assert stats.get("events_duplicate", 0) == 0 and stats.get("events_rejected", 0) == 0, stats
    assert stats["users"] == len({e["user_id"] for e in ds.events})

    worst, arms = assert_matches_oracle(survivor, ds.events, oracle_vectors)
    assert arms > 0
    print(f"scale-out: killed at {applied}/{n} applied, victim partitions {sorted(victim_parts)}, "
          f"takeover {takeover_s:.1f}s, re-read from {snap} (victim had {offsets}), worst {worst:.2e}")
