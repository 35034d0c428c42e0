"""State that lives in Kafka: two workers with **separate** state folders; one is SIGKILLed
midway; the survivor restores the lost partitions from the changelog topic (its own folder
never held them) and ends with every profile equal to the offline oracle.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from encoder.fake import HashingEncoder
from stream.core.events import Item
from stream.kafka.changelog import KafkaBlobStore
from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items, replay
from stream.worker.snapshots import SnapshotStore
from tests.conftest import assert_matches_oracle, kafka, total_outcomes

pytestmark = pytest.mark.timeout(300)
DEFAULTS = Settings()
N = 8000  # events: enough for every partition to snapshot before the kill
RESUMED = re.compile(r"partition (\d+): resumed at offset (\d+) from snapshot")


def _owned(worker) -> set[int]:
    return {int(p) for p in worker.stats()["partitions"]}


def _hashing_vectors(ds) -> tuple[dict, dict]:
    """The oracle's item and query vectors, from the workers' encoder (PROFILES_ENCODER_KIND=
    hashing), computed here."""
    enc = HashingEncoder()
    items = [Item(**{k: it.get(k) for k in ("item_id", "title", "category", "brand", "price")})
             for it in ds.items]
    item_vecs = dict(zip([i.item_id for i in items], enc.encode([i.text() for i in items])))
    queries = sorted({e["query"] for e in ds.events[:N] if e["type"] == "search"})
    return item_vecs, dict(zip(queries, enc.encode(queries))) if queries else {}


def test_survivor_with_its_own_folder_restores_the_lost_partitions_from_kafka(
        broker, topics, dataset, start_worker, tmp_path) -> None:
    ds, paths = dataset
    events = ds.events[:N]
    ev = topics["events_topic"]
    create_topics(kafka(broker.bootstrap), {ev: DEFAULTS.partitions, topics["items_topic"]: 1,
                                            topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"],
               progress=False)
    all_parts = set(range(DEFAULTS.partitions))
    folders = {"victim": tmp_path / "host-a", "survivor": tmp_path / "host-b"}
    common = dict(encoder_kind="hashing", snapshot_interval_s=0.5)
    # the victim first: it owns everything, then gives the survivor its share, so the
    # survivor's folder never holds a partition the victim keeps
    victim = start_worker(state_dir=str(folders["victim"]), **common)
    victim.wait_ready(120)
    survivor = start_worker(state_dir=str(folders["survivor"]), **common)
    survivor.wait_ready(120)

    def split() -> bool:
        a, b = _owned(victim), _owned(survivor)
        return bool(a) and bool(b) and not (a & b) and (a | b) == all_parts \
            and victim.stats()["ready"] and survivor.stats()["ready"]

    victim.wait_for(split, 60, "both workers to own partitions")
    lost = _owned(victim)

    result = {}

    def produce() -> None:
        result["summary"] = replay(paths["events"], kafka(broker.bootstrap), topic=ev,
                                   rate=1500, limit=N, progress=False)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    changelog = SnapshotStore(tmp_path / "unused", ev,
                              KafkaBlobStore(kafka(broker.bootstrap, events_topic=ev),
                                             keep_bytes=False, namespace="hashing-384"))

    def applied_total() -> int:
        return int(victim.stats().get("events_applied", 0)
                   + survivor.stats().get("events_applied", 0))

    # every lost partition has a snapshot in Kafka that covers some events, then the kill
    victim.wait_for(lambda: applied_total() >= 0.3 * N
                    and all((changelog.covered(p) or 0) > 0 for p in lost), 60,
                    "the victim's snapshots in the changelog", interval=0.05)
    applied = applied_total()
    log_mark = survivor.log_path.stat().st_size
    held = {p for p in lost if (folders["survivor"] / f"{ev}-{p}").exists()
            or (folders["survivor"] / f"{ev}-{p}.snap").exists()}
    os.killpg(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(10)
    t_kill = time.monotonic()
    # what the victim left in Kafka (the survivor takes over only after the session timeout)
    kafka_covered = {p: changelog.covered(p) for p in lost}
    changelog.blobs.close()  # type: ignore[attr-defined]
    assert not held, f"the survivor's folder held partitions {held} before the kill"
    assert applied < N, "killed after every event was applied"

    survivor.wait_for(lambda: _owned(survivor) == all_parts, 60, "the survivor to own everything")
    takeover_s = time.monotonic() - t_kill
    producer.join(60)
    assert not producer.is_alive(), "the replay did not finish"
    assert result["summary"].sent == N and result["summary"].failed == 0, result["summary"]
    survivor.wait_for(lambda: total_outcomes(survivor) == N, 120, "all outcomes after the kill")

    # it resumed each lost partition where the victim's last snapshot in Kafka ended
    resumed: dict[int, int] = {}
    log_text = survivor.log_path.read_bytes()[log_mark:].decode(errors="replace")
    for m in RESUMED.finditer(log_text):
        resumed.setdefault(int(m.group(1)), int(m.group(2)))
    assert {p: resumed.get(p) for p in lost} == kafka_covered, (resumed, kafka_covered)
    assert all(off > 0 for off in kafka_covered.values()), kafka_covered
    # ...and its folder is now a cache of them
    assert all((Path(folders["survivor"]) / f"{ev}-{p}" / "manifest").exists() for p in lost)

    stats = survivor.stats()
    assert stats["events_applied"] == N, stats
    assert stats.get("events_duplicate", 0) == 0 and stats.get("events_rejected", 0) == 0, stats
    assert stats["users"] == len({e["user_id"] for e in events})
    worst, arms = assert_matches_oracle(survivor, events, _hashing_vectors(ds))
    assert arms > 0
    print(f"changelog takeover: killed at {applied}/{N} applied, lost partitions {sorted(lost)} "
          f"restored from Kafka at {kafka_covered}, takeover {takeover_s:.1f}s, "
          f"worst {worst:.2e}")
