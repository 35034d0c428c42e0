"""Switching models safely: a worker refuses another model's state; `profiles rebuild`
recomputes every profile with the new model and swaps the state directory atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import orjson
import pytest

from stream.core.errors import ProfilesError
from stream.kafka.changelog import KafkaBlobStore
from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items
from stream.worker.snapshots import SnapshotStore
from tests.conftest import kafka, total_outcomes
from tests.integration.test_faults import _send
from tests.oracle import oracle_profiles

pytestmark = pytest.mark.timeout(900)
DEFAULTS = Settings()


def test_rebuild_with_a_new_model_then_swap(broker, topics, dataset, oracle_vectors, start_worker,
                                            tmp_path):
    ds, paths = dataset
    create_topics(kafka(broker.bootstrap), {topics["events_topic"]: 4, topics["items_topic"]: 1,
                                     topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"], progress=False)
    # the live state starts as a symlink to a real directory (what --swap replaces)
    (tmp_path / "state-v1").mkdir()
    link = tmp_path / "state"
    link.symlink_to("state-v1")

    old = start_worker(encoder_kind="hashing", state_dir=str(link))
    old.wait_ready(240)
    events = ds.events[:3000]
    assert _send(broker, topics["events_topic"],
                 [(e["user_id"].encode(), orjson.dumps(e)) for e in events]) == len(events)
    old.wait_for(lambda: total_outcomes(old) == len(events), 300, "all outcomes (hashing model)")
    assert old.stop() == 0

    # a worker with another model refuses this state, in one line
    refused = start_worker(state_dir=str(link))  # the real MiniLM
    refused.proc.wait(120)
    assert refused.proc.returncode != 0
    lines = [ln for ln in refused.log_path.read_text().splitlines() if "profiles: error" in ln]
    assert len(lines) == 1 and "run `profiles rebuild`" in lines[0], refused.log_path.read_text()[-2000:]

    # rebuild with the real model, then swap
    env = dict(os.environ)
    env.update(Settings.from_env({}, bootstrap_servers=broker.bootstrap, state_dir=str(link),
                                 encoder_dtype="fp32", **topics).to_env())  # as start_worker
    out = subprocess.run([sys.executable, "-m", "stream.cli", "rebuild", "--swap"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["events"] == len(events) and result["events_applied"] == len(events)
    assert os.readlink(link) == os.path.basename(result["state_dir"]) != "state-v1"
    # the rebuilt state is in the changelog too, in the new model's namespace: a worker on
    # another host (an empty folder) restores it, not the state before the rebuild
    rebuilt = Settings.from_env({}, bootstrap_servers=broker.bootstrap, **topics)
    log = KafkaBlobStore(rebuilt, namespace=result["model"])
    try:
        manifests = log.names(f"{topics['events_topic']}-")
        assert [n for n in manifests if n.endswith("/manifest")], manifests
    finally:
        log.close()

    new = start_worker(state_dir=str(link))
    new.wait_ready(240)
    assert new.stats()["users"] == len({e["user_id"] for e in events})
    item_vecs, query_vecs = oracle_vectors
    expected = oracle_profiles(events, item_vecs, query_vecs, DEFAULTS.event_weight_map(),
                               DEFAULTS.half_life_ms)
    for user in sorted(expected)[::7]:
        got = np.asarray(new.json(f"/users/{user}/profile?vector=1")["vector"])
        assert np.max(np.abs(got - expected[user])) <= 1e-5, user
    # it resumed at the rebuilt offsets: nothing was applied twice
    assert new.stats()["events_applied"] == len(events)


def _files(directory) -> dict[str, bytes]:
    """Every file of ``directory`` by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _covered(directory, topic: str, partitions: int = 4) -> int:
    """The events the snapshots in ``directory`` cover (offsets start at 0: the sum of every
    partition's next offset)."""
    store = SnapshotStore(directory, topic)
    return sum(max(store.covered(p) or 0, 0) for p in range(partitions))


def test_rolling_restart_with_a_worker_running_during_the_rebuild(
        broker, topics, dataset, oracle_vectors, start_worker, tmp_path):
    """Issue 10, point 9, the documented rolling restart: a worker on the old model keeps
    running (and snapshotting) while `profiles rebuild --swap` builds and swaps in the new
    model's state; it keeps writing into its own directory, and the worker restarted with the new
    model on the swapped link starts, loads the rebuilt state and catches up with what arrived
    after the rebuild, applying nothing twice."""
    ds, paths = dataset
    events_topic = topics["events_topic"]
    create_topics(kafka(broker.bootstrap), {events_topic: 4, topics["items_topic"]: 1,
                                            topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"], progress=False)
    old_dir = tmp_path / "state-v1"
    old_dir.mkdir()
    link = tmp_path / "state"
    link.symlink_to(old_dir.name)
    events = ds.events[:3000]
    before, during, after = events[:2000], events[2000:2500], events[2500:]

    def send(batch: list[dict]) -> None:
        assert _send(broker, events_topic,
                     [(e["user_id"].encode(), orjson.dumps(e)) for e in batch]) == len(batch)

    def wait_outcomes(worker, n: int, what: str) -> None:
        worker.wait_for(lambda: total_outcomes(worker) == n, 120, what)

    old = start_worker(encoder_kind="hashing", state_dir=str(link))
    old.wait_ready(240)
    send(before)
    wait_outcomes(old, len(before), "the old model's outcomes")
    old.wait_for(lambda: _covered(old_dir, events_topic) == len(before), 60,
                 "the old worker's snapshots")
    old_model = (old_dir / f"{events_topic}.model").read_text().strip()

    # rebuild with the real model and swap, while the old worker runs and receives events
    env = dict(os.environ)
    env.update(Settings.from_env({}, bootstrap_servers=broker.bootstrap, state_dir=str(link),
                                 encoder_dtype="fp32", **topics).to_env())  # as start_worker
    rebuild = subprocess.Popen([sys.executable, "-m", "stream.cli", "rebuild", "--swap"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    send(during)
    stdout, stderr = rebuild.communicate(timeout=300)
    assert rebuild.returncode == 0, stderr[-3000:]
    result = json.loads(stdout)
    new_dir = tmp_path / os.path.basename(result["state_dir"])
    assert os.readlink(link) == new_dir.name and result["model"] != old_model
    # it read to the high watermark at some point while `during` was being sent
    assert len(before) <= result["events"] == result["events_applied"] <= len(before + during)
    rebuilt = _files(new_dir)
    assert _covered(new_dir, events_topic) == result["events"]

    # the old worker keeps serving the old model and snapshots again after the swap
    send(after)
    wait_outcomes(old, len(events), "the old model's outcomes after the swap")
    old.wait_for(lambda: len(events) in (_covered(old_dir, events_topic),
                                         _covered(new_dir, events_topic)), 60,
                 "the old worker's snapshots after the swap")
    assert old.stop() == 0  # SIGTERM: a last snapshot of everything

    left_by_old = _files(new_dir)

    # the worker restarted with the new model starts on the swapped link (no StateError) ...
    new = start_worker(state_dir=str(link))  # the real MiniLM
    try:
        new.wait_ready(240)
    except ProfilesError:
        log = new.log_path.read_text()
        errors = [ln for ln in log.splitlines() if "StateError" in ln or "profiles: error" in ln]
        pytest.fail(f"the new-model worker did not start: {errors[-1] if errors else log[-2000:]}")
    # ... because the old worker wrote only into its own directory
    assert left_by_old == rebuilt, "the old worker wrote into the swapped-in directory"
    assert (old_dir / f"{events_topic}.model").read_text().strip() == old_model
    assert _covered(old_dir, events_topic) == len(events)
    wait_outcomes(new, len(events), "the new model's outcomes")
    # the rebuilt state plus what arrived after the rebuild, each event applied once
    assert new.stats()["events_applied"] == len(events)
    assert new.stats()["users"] == len({e["user_id"] for e in events})
    item_vecs, query_vecs = oracle_vectors
    expected = oracle_profiles(events, item_vecs, query_vecs, DEFAULTS.event_weight_map(),
                               DEFAULTS.half_life_ms)
    for user in sorted(expected):
        got = np.asarray(new.json(f"/users/{user}/profile?vector=1")["vector"])
        assert np.max(np.abs(got - expected[user])) <= 1e-5, user
    assert (new_dir / f"{events_topic}.model").read_text().strip() == result["model"]
