"""Issue 10, point 8 on the real broker: a worker takes over partitions whose snapshots end
*behind* the consumer group's committed offsets, while its snapshot timer rewrites a large item
catalogue under the pipeline's lock.

faust's recovery seeks to the committed offsets concurrently with the ``on_partitions_assigned``
signal, whose ``pipeline.assign`` waits for that lock.  A seek to the snapshots' offsets that
covered only the partitions already loaded left them at the committed offsets: the events
between a snapshot and the commit were skipped (``offset gap``).  A process's first assignment
comes before faust starts its timers, so the race needs a rebalance of a running worker: two
workers share the partitions; the second snapshots each of its partitions once
(``snapshot_interval_s`` = 1 h), applies more events, lets faust commit them and is SIGKILLed;
items keep arriving until the first worker owns every partition, so the catalogue (80,000 items,
~130 MB) is rewritten at every timer tick around the takeover.  Every event must be applied
exactly once: no gap, no duplicate, every profile and arm equal to the offline oracle.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from encoder import HashingEncoder
from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.worker.snapshots import SnapshotStore
from tests.conftest import assert_matches_oracle, kafka, total_outcomes
from tests.vectors import catalogue_vectors

pytestmark = pytest.mark.timeout(300)
DEFAULTS = Settings()
PADDING = 80_000  # catalogue items no event refers to: they make the catalogue write long
A, B, C = 600, 1800, 600  # snapshotted; applied and committed, not snapshotted; after the takeover


def _send(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                      batch_size=256 * 1024)
    futures = [p.send(topic, key=k, value=v) for k, v in records]
    p.flush()
    p.close()
    assert all(f.succeeded() for f in futures)


def _events(events: list[dict]) -> list[tuple[bytes, bytes]]:
    return [(e["user_id"].encode(), orjson.dumps(e)) for e in events]


def _item(item_id: str, title: str) -> tuple[bytes, bytes]:
    return item_id.encode(), orjson.dumps({"item_id": item_id, "title": title})


def _topics_with_catalogue(bootstrap: str, topics: dict[str, str], partitions: int,
                           items: list[dict], extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """The test's fresh topics, with ``items`` (and ``extra`` records) in the items topic."""
    create_topics(kafka(bootstrap), {topics["events_topic"]: partitions,
                                     topics["items_topic"]: 1, topics["dlq_topic"]: 1})
    _send(bootstrap, topics["items_topic"],
          [(it["item_id"].encode(), orjson.dumps(it)) for it in items] + list(extra))


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)}
    finally:
        c.close()


def _next_offsets(worker) -> dict[int, int]:
    return {int(s.labels["partition"]): int(s.value)
            for s in worker.metrics().get("profiles_next_offset", [])}


def _resumed(worker) -> dict[int, int]:
    return {int(m.group(1)): int(m.group(2)) for m in re.finditer(
        r"partition (\d+): resumed at offset (\d+)", worker.log_path.read_text())}


def _owned(worker) -> set[int]:
    return {int(p) for p in worker.stats()["partitions"]}


def test_takeover_of_partitions_snapshotted_behind_the_commit_while_the_catalogue_is_written(
        broker, topics, dataset, start_worker):
    ds, _ = dataset
    bootstrap, n_parts = broker.bootstrap, DEFAULTS.partitions
    ev_topic = topics["events_topic"]
    _topics_with_catalogue(bootstrap, topics, n_parts, ds.items, [
        _item(f"pad-{i}", f"padding widget {i} of the catalogue") for i in range(PADDING)])
    events = ds.events[:A + B + C]
    settings = dict(encoder_kind="hashing", snapshot_interval_s=3600.0)

    survivor = start_worker(**settings)
    survivor.wait_ready(120)
    victim = start_worker(**settings)
    victim.wait_ready(120)
    survivor.wait_for(lambda: _owned(survivor) and _owned(victim)
                      and _owned(survivor) | _owned(victim) == set(range(n_parts))
                      and not _owned(survivor) & _owned(victim), 60, "both to own partitions")
    taken = sorted(_owned(victim))
    store = SnapshotStore(survivor.settings.state_dir, ev_topic)

    def outcomes() -> int:
        a, b = total_outcomes(survivor), total_outcomes(victim)
        return -1 if min(a, b) < 0 else a + b

    _send(bootstrap, ev_topic, _events(events[:A]))
    survivor.wait_for(lambda: outcomes() == A, 60, "the first events")
    # each partition's first snapshot is due at once, the next one only in an hour (the files
    # exist already, empty: the survivor wrote them when the victim's arrival revoked them)
    victim.wait_for(lambda: all((store.read(p) or {}).get("next_offset", 0) > 0 for p in taken),
                    30, "the victim to snapshot its partitions")
    _send(bootstrap, ev_topic, _events(events[A:A + B]))
    survivor.wait_for(lambda: outcomes() == A + B, 60, "the events after the snapshots")
    applied_to = _next_offsets(victim)
    committed = lambda: _committed(bootstrap, topics["group_id"], ev_topic, n_parts)  # noqa: E731
    victim.wait_for(lambda: all(committed()[p] == applied_to[p] for p in taken), 30,
                    "faust to commit every event the victim applied")
    snap = {p: (store.read(p) or {})["next_offset"] for p in taken}
    assert all(snap[p] < applied_to[p] for p in taken), (snap, applied_to)
    loads_before = survivor.log_path.read_text().count("resumed at offset")

    # items arrive throughout the takeover: the survivor's snapshot timer rewrites the whole
    # catalogue under the pipeline's lock at every tick
    stop = threading.Event()

    def more_items() -> None:
        p = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
        k = 0
        while not stop.is_set():
            key, value = _item(f"late-{k}", f"late widget {k}")
            p.send(topics["items_topic"], key=key, value=value)
            p.flush()
            k += 1
            stop.wait(0.02)
        p.close()

    feeder = threading.Thread(target=more_items, daemon=True)
    feeder.start()
    try:
        catalogue = len(ds.items) + PADDING  # the catalogue writes have begun once it grows
        survivor.wait_for(lambda: survivor.stats()["items_index"] >= catalogue + 20, 30,
                          "late items in the survivor's catalogue")
        victim.kill()
        survivor.wait_for(lambda: _owned(survivor) == set(range(n_parts)), 60,
                          "the survivor to take every partition")
    finally:
        stop.set()
        feeder.join(10)
    assert {p: o for p, o in _resumed(survivor).items() if p in taken} == snap
    assert survivor.log_path.read_text().count("resumed at offset") >= loads_before + len(taken)
    survivor.wait_ready(60)
    _send(bootstrap, ev_topic, _events(events[A + B:]))

    def all_outcomes() -> bool:  # fails at once if records were skipped
        assert "offset gap" not in survivor.log_path.read_text(), (
            f"records skipped after the takeover (the victim's snapshots ended at {snap}, "
            f"the group had committed {applied_to})")
        return total_outcomes(survivor) == len(events)

    survivor.wait_for(all_outcomes, 90, "every outcome after the takeover")
    stats = survivor.stats()
    assert stats["events_applied"] == len(events) and stats.get("events_duplicate", 0) == 0
    assert survivor.total("profiles_offset_gaps") == 0
    assert_matches_oracle(survivor, events, catalogue_vectors(ds, HashingEncoder()))
