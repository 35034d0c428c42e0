"""State written by earlier versions.  Snapshots were pickles until issue 10 (point 13); they
are data-only now, and a pickle snapshot (e.g. tests/fixtures/state-37d1982, see its README) is
refused with one StateError that names the file and `profiles rebuild --swap`, never unpickled.
Its *data* still maps onto today's state: converted by a trusted, allow-listed reader (test
code only, for the fixture we made ourselves) it loads and equals what the old code held.  A
snapshot this version cannot read fails with one StateError that names `profiles rebuild`."""

from __future__ import annotations

import asyncio
import atexit
import io
import json
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from stream.core.errors import StateError
from stream.settings import Settings
from stream.worker.snapshots import SnapshotStore
from stream.worker.testing import InProcessWorker

#: the pickle state folder written before the restructuring (refused today)
PICKLE_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "state-37d1982"
T = 1_700_000_000_000


class _TrustedFixtureUnpickler(pickle.Unpickler):
    """The allow-list the pickle format was read with: here only to convert our own fixture."""

    ALLOWED = frozenset({("stream.core.events", "Event"), ("collections", "Counter"),
                         ("builtins", "set"), ("builtins", "frozenset"), ("numpy", "dtype"),
                         ("numpy", "ndarray"),
                         *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                           for n in ("_reconstruct", "scalar")),
                         *((m, "_frombuffer") for m in ("numpy.core.numeric",
                                                        "numpy._core.numeric"))})

    def find_class(self, module: str, name: str) -> Any:
        assert (module, name) in self.ALLOWED, (module, name)
        return super().find_class(module, name)


def _convert_fixture(state: Path) -> None:
    """Rewrite the fixture's pickle snapshots in today's format (same data, version 2)."""
    for path in sorted(state.glob("*.snap")):
        blob = path.read_bytes()
        assert blob[:6] == b"PSNAP1"
        offset = int.from_bytes(blob[6:14], "big", signed=True)
        data = _TrustedFixtureUnpickler(io.BytesIO(blob[14:])).load()
        if "version" in data:
            data["version"] = 2
        path.write_bytes(SnapshotStore.encode(data, offset))


def _converted_fixture() -> Path:
    out = Path(tempfile.mkdtemp(prefix="profiles-state-37d1982-v2-"))
    atexit.register(shutil.rmtree, out, True)
    shutil.copytree(PICKLE_FIXTURE, out, dirs_exist_ok=True)
    _convert_fixture(out)
    return out


#: the same data in today's format (what the tests of old-state semantics load, e.g.
#: tests/inprocess/test_issue10_classify.py): converted once per session, by test code
FIXTURE = _converted_fixture()


def _settings(state: Path) -> Settings:
    # the settings the fixture was written with (make_state.py)
    return Settings.from_env({}, state_dir=str(state), rate_limit_events=100,
                             bandit_context="position", bandit_half_life_ms=3_600_000.0,
                             dedupe_window=1000)


@pytest.fixture
def state(tmp_path) -> Path:
    """A copy of the pickle fixture."""
    out = tmp_path / "state"
    shutil.copytree(PICKLE_FIXTURE, out)
    return out


def test_the_old_pickle_state_is_refused_naming_the_file_and_the_migration(state) -> None:
    want = json.loads((PICKLE_FIXTURE / "expected.json").read_text())
    store = SnapshotStore(state, "events")
    for p, exp in want.items():
        with pytest.raises(StateError, match=rf"events-{p}\.snap is in the pickle format.*"
                                             r"`profiles rebuild --swap`"):
            store.read(int(p))
        assert store.covered(int(p)) == exp["next_offset"]  # the fence still reads its header
    with pytest.raises(StateError, match=r"items-catalogue\.snap is in the pickle format"):
        SnapshotStore(state, "items").read("catalogue")

    async def run() -> None:
        async with InProcessWorker(_settings(state), HashingEncoder(16)):
            pass

    with pytest.raises(StateError, match="pickle format.*profiles rebuild --swap"):
        asyncio.run(run())


def test_the_old_data_converted_loads_and_equals_what_the_old_code_held(state) -> None:
    _convert_fixture(state)
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


def test_a_snapshot_of_another_version_is_one_state_error_naming_rebuild(state) -> None:
    _convert_fixture(state)
    store = SnapshotStore(state, "events")
    d = store.read(0)
    assert d is not None

    store.path(1).write_bytes(store.frame(b"PK\x03\x04 not an archive", 3))
    with pytest.raises(StateError, match="corrupt.*profiles rebuild"):
        store.read(1)
    store.path(1).write_bytes(b"something else")
    with pytest.raises(StateError, match="bad header.*profiles rebuild"):
        store.read(1)
    store.path(0).write_bytes(store.encode(dict(d, version=99, parked=[]), 7))

    async def run() -> None:
        async with InProcessWorker(_settings(state), HashingEncoder(16)):
            pass

    with pytest.raises(StateError, match="version 99.*profiles rebuild"):
        asyncio.run(run())


def test_a_snapshot_cannot_run_code(state, tmp_path) -> None:
    """A pickle that would call a function is refused unread (the header says pickle)."""
    store = SnapshotStore(state, "events")
    marker = tmp_path / "ran"
    evil = type("Evil", (), {"__reduce__": lambda self: (Path.touch, (marker,))})()
    store.path(0).write_bytes(b"PSNAP1" + (7).to_bytes(8, "big") + pickle.dumps(
        {"version": 1, "x": evil}))
    with pytest.raises(StateError, match="pickle format"):
        store.read(0)
    assert not marker.exists()
