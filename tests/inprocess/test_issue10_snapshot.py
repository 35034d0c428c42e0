"""Issue 10, point 13: snapshots are data, not code.  A snapshot is an ``.npz`` archive read
with ``allow_pickle=False`` (a JSON document plus numpy arrays); the pickle files of earlier
versions are refused with one StateError and never unpickled, so a crafted file in a shared
state folder cannot run code.  Round trips are exact; the offset fence still holds."""

from __future__ import annotations

import asyncio
import io
import math
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from encoder.fake import HashingEncoder
from stream.core.errors import StateError
from stream.core.events import Event
from stream.settings import Settings
from stream.worker import snapshots
from stream.worker.snapshots import SnapshotStore
from stream.worker.state import SNAPSHOT_VERSION, PartitionState
from stream.worker.testing import InProcessWorker, ManualClock

T = 1_700_000_000_000
HEADER = 14  # magic (6) + next_offset (8)


def _settings(tmp_path: Path) -> Settings:
    return Settings.from_env({}, state_dir=str(tmp_path / "state"), rate_limit_events=100,
                             bandit_context="position", bandit_half_life_ms=3_600_000.0,
                             dedupe_window=1000)


class _Evil:
    """A pickle of this creates ``marker`` when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _same(a: Any, b: Any, where: str = "") -> None:
    """Exact equality, types included (numpy arrays: dtype, shape and every value)."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


async def _busy_worker(tmp_path: Path) -> InProcessWorker:
    """A worker whose partition 0 uses every part of the state."""
    w = InProcessWorker(_settings(tmp_path), HashingEncoder(16),
                        clock=ManualClock(wall=T / 1000 + 60), partitions=[0])
    await w.__aenter__()
    await w.items([{"item_id": f"i{i}", "title": f"item {i}", "category": f"c{i % 3}"}
                   for i in range(6)])
    evs = [{"event_id": f"e{i}", "user_id": f"u{i % 4}", "type": t, "ts": T + i,
            "item_id": f"i{i % 6}", "arm": "a" if i % 2 else "b", "position": i % 3}
           for i, t in enumerate(["view", "click", "purchase", "view"] * 5)]
    evs += [{"event_id": "e0", "user_id": "u0", "type": "view", "ts": T, "item_id": "i0"},
            {"event_id": "p1", "user_id": "u1", "type": "view", "ts": T + 50, "item_id": "new"},
            {"event_id": "f1", "user_id": "u3", "type": "forget", "ts": T + 60},
            {"event_id": "bad", "user_id": "u2", "type": "teleport", "ts": T + 70}]
    await w.events(evs, partition=0)
    st = w.pipeline.states[0]
    # what the stream above may not reach
    st.dlq_keys["u\x00x"] = [b"\x00\xff", b"k" * 40]
    st.outcomes[("view", "applied\u00e9")] += 1
    st.rate.windows.setdefault("u0", (7, 3))
    st.park_clock = 12.5
    return w


def _base_blob(store: SnapshotStore, partition: int | str) -> bytes:
    m = store.manifest(partition)
    assert m is not None
    blob = store.blobs.get(m.entries[0].name)
    assert blob is not None
    return blob


def test_a_snapshot_file_is_an_npz_archive_loadable_without_pickle(tmp_path) -> None:
    """Fails on the pickle format: the payload after the header must be plain numpy data."""

    async def run() -> None:
        w = await _busy_worker(tmp_path)
        await w.pipeline.snapshot(everything=True)
        await w.__aexit__(None, None, None)
        blob = _base_blob(w.pipeline.store, 0)  # issue 12: a base blob listed by a manifest
        assert blob[:6] == b"PSNAP2"
        with np.load(io.BytesIO(blob[HEADER:]), allow_pickle=False) as z:
            doc = orjson.loads(z["doc"].tobytes())
        assert doc["version"] == SNAPSHOT_VERSION == 2 and doc["partition"] == 0
        cat = _base_blob(w.pipeline.items_store, "catalogue")
        with np.load(io.BytesIO(cat[HEADER:]), allow_pickle=False) as z:
            assert orjson.loads(z["doc"].tobytes())["model"] == w.pipeline.model

    asyncio.run(run())


def test_the_round_trip_is_exact_and_the_worker_resumes(tmp_path) -> None:
    async def run() -> None:
        w = await _busy_worker(tmp_path)
        pipe = w.pipeline
        st = pipe.states[0]
        assert st.parked and st.dlq and st.tombstones and st.dlq_keys and st.users.state()["users"]
        want = st.to_dict()
        await pipe.snapshot(everything=True)
        got = pipe.store.read(0)
        _same(got, want)
        s = w.settings
        back = PartitionState.from_dict(got, pipe.dim, pipe.pp, pipe.bp, s.dedupe_window,
                                        s.rate_limit_events, s.rate_limit_window_ms, pipe.sp,
                                        ttl_rank=s.ttl_watermark_rank)
        _same(back.to_dict(), want)
        w2 = await w.restart()
        _same(w2.pipeline.states[0].to_dict(), want)
        for u in w2.pipeline.states[0].profiles.users():
            np.testing.assert_array_equal(w2.pipeline.profiles.vector(u), pipe.profiles.vector(u))
        await w2.__aexit__(None, None, None)

    asyncio.run(run())


def test_pack_keeps_every_type_and_cannot_be_confused_by_tag_like_keys() -> None:
    data = {
        "\x00a": 0, "\x00t": [1, 2], "k": {"\x00m": "x"}, "plain": {"a": 1.5, "b": None},
        "big": 2 ** 80, "neg": -(2 ** 70), "u64": 2 ** 64 - 1, "floats": [0.1, math.inf, -0.0],
        "nan": math.nan, "tuple": (1, "a", (2.5,)), "set": {1, 2}, "fset": frozenset({"x"}),
        "counter": Counter({("view", "applied"): 3}), "bytes": [b"", b"\x00" * 16, bytearray(b"z")],
        "bytes_keys": {b"\x01" * 16: 2}, "int_keys": {0: 5, 3: 6}, "surrogate": "a\ud800b",
        "arrays": [np.arange(5, dtype=np.int64), np.ones((2, 3), np.float32),
                   np.array(["ab", "c"]), np.empty((0, 4))],
        "scalars": [np.float64(1.25), np.int64(-3), np.bool_(True)],
        "event": Event("e1", "u1", "view", T, item_id="i1", propensity=0.5),
        "names": [f"n\u00e9{i}" for i in range(40)] + ["", "x\ud800"],  # NUL-joined on the heap
        "nul_names": ["a\x00b"] + [str(i) for i in range(40)],  # a NUL inside: kept as JSON
    }
    back = snapshots.unpack(snapshots.pack(data))
    want = dict(data, bytes=[b"", b"\x00" * 16, b"z"], fset={"x"}, scalars=[1.25, -3, True])
    _same(back, want)
    with pytest.raises(TypeError, match="numpy array of Python objects"):
        snapshots.pack({"x": np.array([object()])})
    with pytest.raises(TypeError, match="cannot hold a .*_Evil"):
        snapshots.pack({"x": _Evil(Path("never"))})


def test_a_legacy_pickle_snapshot_is_refused_and_never_unpickled(tmp_path, monkeypatch) -> None:
    """Fails before: the old reader unpickled it (with an allow-list); now it is refused by
    its header, no unpickler runs, and the one-line error names the file and the migration."""
    state = tmp_path / "state"
    store = SnapshotStore(state, "events")
    marker = tmp_path / "ran"
    state.mkdir()
    store.path(0).write_bytes(b"PSNAP1" + (41).to_bytes(8, "big") + pickle.dumps(
        {"version": 1, "x": _Evil(marker)}))

    def no_unpickling(*a: Any, **k: Any) -> Any:
        raise AssertionError("a snapshot was unpickled")

    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "Unpickler", no_unpickling)
    with pytest.raises(StateError, match=r"events-0\.snap is in the pickle format .*"
                                         r"profiles rebuild --swap") as err:
        store.read(0)
    assert "\n" not in str(err.value)
    assert store.covered(0) == 41  # its header still fences: never overwritten by older state
    assert not store.write(0, store.encode({"version": 2}, 40))

    async def run() -> None:
        async with InProcessWorker(_settings(tmp_path), HashingEncoder(16)):
            pass

    with pytest.raises(StateError, match="pickle format"):
        asyncio.run(run())
    assert not marker.exists()


@pytest.mark.parametrize("form", ["bare pickle", "pickle in the archive", "object array",
                                  "not a zip", "unknown tag", "bytes beyond the heap",
                                  "wrong count", "not a dict"])
def test_a_crafted_file_is_one_state_error_and_runs_nothing(tmp_path, form) -> None:
    marker = tmp_path / "ran"
    evil = pickle.dumps({"x": _Evil(marker)})
    store = SnapshotStore(tmp_path / "state", "events")
    store.dir.mkdir()

    def archive(**members: Any) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=True, **members)
        return store.frame(buf.getvalue(), 3)

    doc = np.frombuffer(b'{"version": 2}', np.uint8)
    heap = np.zeros(0, np.uint8)
    blob = {
        "wrong count": archive(doc=np.frombuffer(b'{"x": {"\\u0000L": [0, 3, 5]}}', np.uint8),
                               heap=np.frombuffer(b"a\x00b", np.uint8)),
        "bare pickle": evil,
        "pickle in the archive": archive(doc=np.array([_Evil(marker)], dtype=object), heap=heap),
        "object array": archive(doc=doc, heap=heap, a0=np.array([_Evil(marker)], dtype=object)),
        "not a zip": store.frame(evil, 3),
        "unknown tag": archive(doc=np.frombuffer(b'{"x": {"\\u0000R": "os.system"}}', np.uint8),
                               heap=heap),
        "bytes beyond the heap": archive(
            doc=np.frombuffer(b'{"x": {"\\u0000b": [0, 99]}}', np.uint8), heap=heap),
        "not a dict": store.encode([1, 2], 3)  # type: ignore[arg-type],
    }[form]
    store.path(0).write_bytes(blob)
    with pytest.raises(StateError, match=r"events-0\.snap .*profiles rebuild"):
        store.read(0)
    assert not marker.exists()


def test_a_state_of_another_version_names_rebuild(tmp_path) -> None:
    store = SnapshotStore(tmp_path / "state", "events")
    store.write(0, store.encode({"version": 99, "partition": 0, "model": "hashing-16"}, 5))

    async def run() -> None:
        async with InProcessWorker(_settings(tmp_path), HashingEncoder(16)):
            pass

    with pytest.raises(StateError, match="version 99.*profiles rebuild"):
        asyncio.run(run())


def test_the_module_imports_no_pickle() -> None:
    assert "pickle" not in vars(snapshots)
    assert "import pickle" not in Path(snapshots.__file__).read_text()
