"""Existing state survives the restructuring: a state folder written by the code before it
(tests/fixtures/state-37d1982, see its README) loads with today's code and gives the same state;
a snapshot this version cannot read fails with one StateError that names `profiles rebuild`."""

from __future__ import annotations

import asyncio
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from stream.core.errors import StateError
from stream.settings import Settings
from stream.worker.snapshots import SnapshotStore
from stream.worker.testing import InProcessWorker

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "state-37d1982"
T = 1_700_000_000_000


def _settings(state: Path) -> Settings:
    # the settings the fixture was written with (make_state.py)
    return Settings.from_env({}, state_dir=str(state), rate_limit_events=100,
                             bandit_context="position", bandit_half_life_ms=3_600_000.0,
                             dedupe_window=1000)


@pytest.fixture
def state(tmp_path) -> Path:
    out = tmp_path / "state"
    shutil.copytree(FIXTURE, out)
    return out


def test_the_old_state_loads_and_equals_what_the_old_code_held(state) -> None:
    want = json.loads((FIXTURE / "expected.json").read_text())

    async def run() -> None:
        async with InProcessWorker(_settings(state), HashingEncoder(16)) as w:
            pipe = w.pipeline
            assert pipe.catalog.load_state(pipe.items_store.read("catalogue")) and \
                sorted(pipe.catalog.items) == [f"i{i}" for i in range(6)]
            for p, exp in want.items():
                st = pipe.states[int(p)]
                assert st.next_offset == exp["next_offset"]
                assert sorted(st.profiles.users()) == exp["users"]
                assert len(st.parked) == exp["parked"]
                assert sorted([*k, v] for k, v in st.outcomes.items()) == exp["outcomes"]
                assert st.tombstones == exp["tombstones"]
                assert st.arms.state()["impressions"].tolist() == exp["arms"]
                for user, vec in exp["vectors"].items():
                    np.testing.assert_allclose(st.profiles.vector(user), vec, atol=1e-7)
                    np.testing.assert_allclose(pipe.profiles.vector(user), vec, atol=1e-7)
            # and it goes on: bob's parked view is applied when its item arrives
            w.source.next_offset.update({0: 5, 1: 4})
            await w.items([{"item_id": "i9", "title": "item 9"}])
            await pipe.resolve_parked()
            assert pipe.profiles.owner("bob") is pipe.states[0] and not pipe.states[0].parked
            await w.events([{"event_id": "e9", "user_id": "carol", "type": "view", "ts": T + 900,
                             "item_id": "i3"}], partition=1)
            assert pipe.states[1].next_offset == 5

    asyncio.run(run())


def _rewrite(store: SnapshotStore, partition: int | str, data: object) -> None:
    store.path(partition).write_bytes(store.frame(pickle.dumps(data), 7))


def test_a_snapshot_of_another_version_is_one_state_error_naming_rebuild(state) -> None:
    store = SnapshotStore(state, "events")
    d = store.read(0)
    assert d is not None

    # a class this version does not know, as pickled from a module that has moved since
    store.path(0).write_bytes(store.frame(b"\x80\x02cstream.state\nParked\n)\x81.", 5))
    with pytest.raises(StateError, match=r"stream\.state\.Parked.*profiles rebuild"):
        store.read(0)
    store.path(1).write_bytes(store.frame(b"\x80\x05not a pickle", 3))
    with pytest.raises(StateError, match="corrupt.*profiles rebuild"):
        store.read(1)
    d2 = dict(d, version=99, parked=[])
    _rewrite(store, 0, d2)

    async def run() -> None:
        async with InProcessWorker(_settings(state), HashingEncoder(16)):
            pass

    with pytest.raises(StateError, match="version 99.*profiles rebuild"):
        asyncio.run(run())


def test_a_snapshot_cannot_run_code(state, tmp_path) -> None:
    """Only data classes are accepted: a pickle that would call a function is refused."""
    store = SnapshotStore(state, "events")
    marker = tmp_path / "ran"
    evil = type("Evil", (), {"__reduce__": lambda self: (Path.touch, (marker,))})()
    _rewrite(store, 0, {"version": 1, "x": evil})
    with pytest.raises(StateError, match="pathlib"):
        store.read(0)
    assert not marker.exists()
