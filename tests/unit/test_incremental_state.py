"""Issue 12, incremental durable state (stream.worker.snapshots, stream.worker.deltas): a
delta's cost follows the users changed, not the users held; the single-file snapshots of
earlier versions still load; the offset fence and the delta chain refuse stale writes; a
damaged manifest or blob is one StateError."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stream.core.bandit import BanditParams
from stream.core.dedupe import DedupeWindow
from stream.core.errors import StateError
from stream.core.profile import ProfileParams
from stream.worker.snapshots import SnapshotStore
from stream.worker.state import PartitionState
from tests.inprocess.test_issue10_snapshot import _same

T = 1_700_000_000_000
DIM = 8


def _state(n_users: int, seed: int = 0) -> PartitionState:
    st = PartitionState.empty(0, DIM, ProfileParams(), BanditParams(), 1000, "m")
    _apply(st, [f"user-{i:07d}" for i in range(n_users)], seed, T)
    return st


def _apply(st: PartitionState, users: list[str], seed: int, ts: int) -> None:
    """Every user one event (what the worker's batch step changes per user), marked in the
    journal as ProfileStore.apply marks them."""
    rng = np.random.default_rng(seed)
    n = len(users)
    times = np.full(n, ts, dtype=np.int64)
    st.journal.touch(users)
    st.profiles.apply(users, times, np.ones(n), rng.standard_normal((n, DIM)))
    items = [f"i{k}" for k in rng.integers(0, 50, n).tolist()]
    st.users.update(users, ["view"] * n, times, ["c"] * n, items)
    st.signals.apply(users, items, times, ["view"] * n)
    for u in users:
        st.dedupe.add(u, f"{u}-{ts}")
    st.next_offset += n


def test_a_deltas_bytes_and_time_follow_the_changed_users_not_all(tmp_path) -> None:
    """100,000 users held, 100 changed: the delta is under 5% of the base in bytes and in
    serialising time (the base grows with the users; the delta would equal it if it did)."""
    st = _state(100_000)
    store = SnapshotStore(tmp_path, "events")
    t0 = time.process_time()
    base = store.dumps(st)
    t_base = time.process_time() - t0
    assert store.write(0, base)
    _apply(st, [f"user-{i:07d}" for i in range(0, 100_000, 1000)], 1, T + 1)
    t0 = time.process_time()
    delta = store.dumps(st)
    t_delta = time.process_time() - t0
    assert delta[:6] == b"PDELT2" and store.write(0, delta)
    assert len(delta) < 0.05 * len(base), (len(delta), len(base))
    assert t_delta < 0.05 * t_base, (t_delta, t_base)
    d = store.read(0)  # base + delta: the rows copied run by run between the changed ones
    assert d is not None
    want = st.to_dict()
    for part in ("profiles", "users", "signals", "dedupe"):
        _same(d[part], want[part], part)


def test_a_single_file_snapshot_of_earlier_versions_loads_and_is_upgraded(tmp_path) -> None:
    """``<topic>-<p>.snap`` (PSNAP2, one file) loads as a base while no manifest exists; the
    first write commits a manifest and removes the old file; deltas follow."""
    st = _state(50)
    legacy = tmp_path / "events-0.snap"
    legacy.write_bytes(SnapshotStore.encode(st.to_dict(), st.next_offset))
    store = SnapshotStore(tmp_path, "events")
    assert store.covered(0) == 50
    d = store.read(0)
    assert d is not None
    back = PartitionState.from_dict(d, DIM, ProfileParams(), BanditParams(), 1000)
    assert back.to_dict()["profiles"]["users"] == st.profiles.users()
    assert store.tip(0) is None  # a legacy file is no base a delta can continue
    back.journal.parent = store.tip(0)
    _apply(back, ["user-0000003"], 2, T + 5)
    assert store.write(0, store.dumps(back))
    assert not legacy.exists()
    m = store.manifest(0)
    assert m is not None and [e.kind for e in m.entries] == ["base"]
    _apply(back, ["user-0000004"], 3, T + 6)
    assert store.write(0, store.dumps(back))
    m = store.manifest(0)
    assert m is not None and [e.kind for e in m.entries] == ["base", "delta"]


def test_the_fence_and_the_chain_refuse_stale_writes(tmp_path) -> None:
    """A snapshot covering fewer offsets than the committed one is never written (a stalled
    former owner), nor a delta that does not continue the committed blob; the state that
    wrote the refused delta writes a base next."""
    a = _state(20)  # next_offset 20
    store = SnapshotStore(tmp_path, "events")
    assert store.write(0, store.dumps(a))
    old = _state(10)
    assert not store.write(0, store.dumps(old))  # covers 10 < 20
    _apply(a, ["user-0000001"], 4, T + 1)
    d1 = store.dumps(a)  # a delta on the committed base
    assert d1[:6] == b"PDELT2" and store.write(0, d1)
    assert not store.write(0, d1)  # again: it no longer continues the committed tip
    _apply(a, ["user-0000002"], 5, T + 2)
    assert store.dumps(a)[:6] == b"PDELT2"  # never written (a failed write, a crash) ...
    _apply(a, ["user-0000003"], 6, T + 3)
    blob = store.dumps(a)
    assert blob[:6] == b"PSNAP2"  # ... so the next one is a base, which holds its changes
    assert store.write(0, blob)
    d = SnapshotStore(tmp_path, "events").read(0)
    assert d is not None and d["next_offset"] == a.next_offset == 23
    back = PartitionState.from_dict(d, DIM, ProfileParams(), BanditParams(), 1000)
    assert back.to_dict()["users"] == a.to_dict()["users"]


def test_a_damaged_manifest_or_blob_is_one_state_error(tmp_path) -> None:
    st = _state(30)
    store = SnapshotStore(tmp_path, "events")
    assert store.write(0, store.dumps(st))
    _apply(st, ["user-0000001"], 1, T + 1)
    assert store.write(0, store.dumps(st))
    m = store.manifest(0)
    assert m is not None and len(m.entries) == 2
    delta = tmp_path / m.entries[1].name
    good = delta.read_bytes()
    delta.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(StateError, match=r"events-0 blob .* corrupt \(sha256"):
        store.read(0)
    delta.unlink()
    with pytest.raises(StateError, match=r"events-0 blob .* missing"):
        store.read(0)
    (tmp_path / "events-0" / "manifest").write_bytes(b"{not json")
    with pytest.raises(StateError, match=r"manifest of events-0 is corrupt"):
        store.read(0)


def test_the_dedupe_ring_delta_rebuilds_the_window_across_evictions() -> None:
    w = DedupeWindow(5)
    state = w.state()
    mark = 0
    for i in range(23):
        w.add("u", f"e{i}")
        if i % 4 == 0:
            w.discard("u", f"e{i}")
        if i % 3 == 2:
            state = DedupeWindow.merge_delta(state, w.delta(w.appended - mark))
            mark = w.appended
            assert state == w.state()
