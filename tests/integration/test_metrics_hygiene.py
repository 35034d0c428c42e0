"""Metric hygiene: per-partition series follow ownership; no unbounded label values.

A worker that loses partitions to a second worker of its group (rebalance) must stop
exporting ``profiles_consumer_lag`` / ``profiles_next_offset`` for them, and export them
again once it gets them back (the second worker stopped); a restarted worker exports only
what it owns.  "Owns" is the worker's own ``/stats`` "partitions".  No label value is ever a
user, event or item id.
"""

from __future__ import annotations

import pytest

from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items, replay
from tests.conftest import kafka, total_outcomes

pytestmark = pytest.mark.timeout(600)

PARTITIONED = ("profiles_consumer_lag", "profiles_next_offset")
ALL = {str(p) for p in range(Settings().partitions)}
MAX_VALUES_PER_LABEL = 64  # reasons, types, outcomes, partitions, indexes: all small sets


def _owned(worker) -> set[str]:
    return {str(p) for p in worker.stats()["partitions"]}


def _series_partitions(worker) -> dict[str, set[str]]:
    fams = worker.metrics()
    return {name: {s.labels["partition"] for s in fams.get(name, [])
                   if s.labels.get("topic") == worker.settings.events_topic}
            for name in PARTITIONED}


def observe(worker) -> tuple[set[str], dict[str, set[str]]] | None:
    """(owned, partitions with series) read between two equal ownership reads, else None."""
    before = _owned(worker)
    series = _series_partitions(worker)
    after = _owned(worker)
    return (before, series) if before == after else None


def assert_hygienic(worker, expect: set[str], timeout_s: float = 60) -> None:
    """Series never name a partition the worker does not own, and converge to ``expect``."""
    def check():
        seen = observe(worker)
        if seen is None:
            return False  # a rebalance between the reads: look again
        owned, series = seen
        for name, parts in series.items():
            assert parts <= owned, f"{name} has series for partitions {sorted(parts - owned)} " \
                                   f"not owned by {worker.url} (owns {sorted(owned)})"
        return owned == expect and all(parts == owned for parts in series.values())

    worker.wait_for(check, timeout_s, f"series of exactly partitions {sorted(expect)}")


# The one deliberate exception: per-arm bandit gauges, for the top PROFILES_BANDIT_TOP_ARMS
# arms only (default 20), so the arm label (an item id) stays bounded.
TOP_ARMS = 20


def assert_bounded_labels(worker, ids: set[str]) -> None:
    values: dict[tuple[str, str], set[str]] = {}
    for name, samples in worker.metrics().items():
        for s in samples:
            for k, v in s.labels.items():
                if name.startswith("profiles_bandit_arm_") and k == "arm":
                    values.setdefault((name, k), set()).add(v)
                    continue
                assert v not in ids, f"{name} has an id as label value: {k}={v!r}"
                values.setdefault((name, k), set()).add(v)
    for (name, k), vs in values.items():
        if k == "arm":
            assert len(vs) <= TOP_ARMS, f"{name}{{arm}} has {len(vs)} values, over the top {TOP_ARMS}"
    for (name, k), vs in values.items():
        assert len(vs) <= MAX_VALUES_PER_LABEL, f"{name}{{{k}}} has {len(vs)} values"


def test_partition_series_follow_ownership_across_rebalance_and_restart(
        broker, topics, dataset, start_worker):
    ds, paths = dataset
    ids = ({e["user_id"] for e in ds.events} | {e["event_id"] for e in ds.events}
           | {it["item_id"] for it in ds.items})
    create_topics(kafka(broker.bootstrap), {topics["events_topic"]: len(ALL),
                                     topics["items_topic"]: 1, topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"], progress=False)

    def publish(limit: int) -> None:
        sent = replay(paths["events"], kafka(broker.bootstrap), topic=topics["events_topic"],
                      limit=limit, progress=False)
        assert sent.sent == limit and sent.failed == 0

    # the hashing encoder: this test is about metrics, not embeddings (and is cheaper)
    first = start_worker(encoder_kind="hashing", snapshot_interval_s=1.0)
    first.wait_ready(300)
    publish(3000)
    first.wait_for(lambda: total_outcomes(first) == 3000, 120, "the first 3,000 events")
    assert_hygienic(first, ALL)
    assert_bounded_labels(first, ids)

    # rebalance: a second worker of the same group takes some partitions
    second = start_worker(encoder_kind="hashing", snapshot_interval_s=1.0)
    second.wait_ready(300)

    def split():
        a, b = _owned(first), _owned(second)
        return a and b and not (a & b) and (a | b) == ALL and first.stats()["ready"] \
            and second.stats()["ready"]

    first.wait_for(split, 120, "both workers to own partitions")
    kept, moved = _owned(first), _owned(second)
    assert kept and moved
    assert_hygienic(first, kept)  # the moved partitions' series are gone from the first worker
    assert_hygienic(second, moved)
    assert_bounded_labels(first, ids)
    assert_bounded_labels(second, ids)

    # the second worker leaves: the first gets everything back, series included
    second.stop()
    first.wait_for(lambda: _owned(first) == ALL and first.stats()["ready"], 120,
                   "the first worker to own every partition again")
    assert_hygienic(first, ALL)

    # restart: a new process exports exactly what it owns
    first.stop()
    third = start_worker(encoder_kind="hashing", snapshot_interval_s=1.0)
    third.wait_ready(300)
    assert_hygienic(third, ALL)
    publish(1000)  # the log again from the start: 1,000 duplicates of applied events
    third.wait_for(lambda: total_outcomes(third) == 4000, 120, "the re-sent events")
    assert_hygienic(third, ALL)
    assert_bounded_labels(third, ids)
