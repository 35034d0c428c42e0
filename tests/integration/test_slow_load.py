"""Issue 12 on the real broker: a worker restarted after a SIGKILL whose assignment takes longer
to load than faust's ``broker_request_timeout`` (30 s) becomes ready, and resumes each partition
at its snapshot's offset.

faust's recovery seeks to the committed offsets and then waits for our seek hook at most
``broker_request_timeout``; the hook used to wait for the load, so a load over 30 s (a 10^5-user
partition restored from the changelog on a slow box) made faust end its recovery silently: the
worker never became ready and never consumed.  The load is slowed here by a test-only
``sitecustomize`` (tests/slowload) in the restarted worker.  The snapshots end behind the group's
committed offsets, so a partition resumed at the commit instead of its snapshot would skip
events (``offset gap``): every event must be applied exactly once, equal to the oracle.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from encoder import HashingEncoder
from stream.settings import Settings
from stream.worker.snapshots import SnapshotStore
from tests.conftest import assert_matches_oracle, total_outcomes
from tests.integration.test_issue10_seek import (
    _committed,
    _events,
    _next_offsets,
    _resumed,
    _send,
    _topics_with_catalogue,
)
from tests.vectors import catalogue_vectors

pytestmark = pytest.mark.timeout(300)
DEFAULTS = Settings()
A, B, C = 600, 1800, 600  # snapshotted; applied and committed, not snapshotted; after the restart
SLOW_S = 36  # the restarted worker's first partition read: over faust's 30 s


def test_a_restart_whose_load_outlasts_fausts_recovery_timeout_becomes_ready_and_loses_nothing(
        broker, topics, dataset, start_worker):
    ds, _ = dataset
    bootstrap, n_parts = broker.bootstrap, DEFAULTS.partitions
    ev_topic = topics["events_topic"]
    _topics_with_catalogue(bootstrap, topics, n_parts, ds.items)
    events = ds.events[:A + B + C]
    settings = dict(encoder_kind="hashing", snapshot_interval_s=3600.0)

    first = start_worker(**settings)
    first.wait_ready(120)
    store = SnapshotStore(first.settings.state_dir, ev_topic)
    _send(bootstrap, ev_topic, _events(events[:A]))
    first.wait_for(lambda: total_outcomes(first) == A, 60, "the first events")
    # each partition's first snapshot is due at once, the next one only in an hour
    first.wait_for(lambda: all((store.read(p) or {}).get("next_offset", 0) > 0
                               for p in range(n_parts)), 30, "a snapshot of every partition")
    _send(bootstrap, ev_topic, _events(events[A:A + B]))
    first.wait_for(lambda: total_outcomes(first) == A + B, 60, "the events after the snapshots")
    applied_to = _next_offsets(first)
    first.wait_for(lambda: _committed(bootstrap, topics["group_id"], ev_topic, n_parts)
                   == applied_to, 30, "faust to commit every event applied")
    snap = {p: (store.read(p) or {})["next_offset"] for p in range(n_parts)}
    assert all(snap[p] < applied_to[p] for p in range(n_parts)), (snap, applied_to)
    first.kill()

    here = str(Path(__file__).resolve().parents[1] / "slowload")
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    second = start_worker(extra_env={"PYTHONPATH": path, "SLOW_FIRST_LOAD_S": str(SLOW_S)},
                          **settings)
    second.wait_for(lambda: "reading partition" in second.log_path.read_text(), 60,
                    "the slowed read to begin")
    second.wait_ready(SLOW_S + 60)
    text = second.log_path.read_text()
    assert _resumed(second) == snap
    # readiness came after the last partition was loaded
    assert text.index("ready after") > text.rindex("resumed at offset")
    _send(bootstrap, ev_topic, _events(events[A + B:]))

    def all_outcomes() -> bool:  # fails at once if records were skipped
        assert "offset gap" not in second.log_path.read_text(), (
            f"records skipped after the restart (snapshots ended at {snap}, the group had "
            f"committed {applied_to})")
        return total_outcomes(second) == len(events)  # the counters are in the snapshots

    second.wait_for(all_outcomes, 90, "every outcome after the restart")
    stats = second.stats()
    assert stats["events_applied"] == len(events) and stats.get("events_duplicate", 0) == 0
    assert second.total("profiles_offset_gaps") == 0
    assert_matches_oracle(second, events, catalogue_vectors(ds, HashingEncoder()))
