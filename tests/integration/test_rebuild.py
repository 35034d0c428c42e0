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

from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items
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
                                 **topics).to_env())
    out = subprocess.run([sys.executable, "-m", "stream.cli", "rebuild", "--swap"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["events"] == len(events) and result["events_applied"] == len(events)
    assert os.readlink(link) == os.path.basename(result["state_dir"]) != "state-v1"

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
