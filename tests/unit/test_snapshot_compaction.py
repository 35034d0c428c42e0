"""Issue 12 (recovery time): once the deltas outgrow the base, the worker's snapshots stay
deltas and the committed blobs are compacted into a new base off the lock
(``SnapshotStore.compact``), instead of a base serialised from the live state under the
lock, whose cost paused every partition's snapshots (the scheduler's budget) and so
lengthened the tail no snapshot covered."""

from __future__ import annotations

import threading

from stream.core.bandit import BanditParams
from stream.core.profile import ProfileParams
from stream.worker.snapshots import COMPACT_SLACK, SnapshotStore, snapshot_kind
from stream.worker.state import PartitionState
from tests.inprocess.test_issue10_snapshot import _same
from tests.unit.test_incremental_state import DIM, T, _apply, _state

N = 1_000


def _changed(st: PartitionState, round_: int, share: int = 4) -> None:
    """A quarter of the users (``share`` 4) change: each delta is about half the base."""
    _apply(st, [f"user-{i:07d}" for i in range(round_ % share, N, share)], 10 + round_,
           T + 10 * round_)


def _loaded(store_dir, topic: str = "events") -> PartitionState:
    d = SnapshotStore(store_dir, topic).read(0)  # a fresh store: another process
    assert d is not None
    return PartitionState.from_dict(d, DIM, ProfileParams(), BanditParams(), 1000)


def test_snapshots_stay_deltas_and_compaction_folds_them_into_an_equal_base(tmp_path) -> None:
    """Without compaction, the third snapshot (deltas > base) is a full base; with it, every
    snapshot after the first is a delta a fraction of the base, and after each compaction the
    blobs read back (and load) to the live state exactly; the deltas after a compaction
    continue the compacted base."""
    old, new = _state(N), _state(N)
    plain = SnapshotStore(tmp_path / "plain", "events")
    store = SnapshotStore(tmp_path / "new", "events", compact=True)
    base = store.dumps(new)
    assert store.write(0, base) and plain.write(0, plain.dumps(old))
    kinds_old, kinds_new, compactions = [], [], 0
    for r in range(1, 10):
        _changed(old, r)
        _changed(new, r)
        b_old = plain.dumps(old)
        assert plain.write(0, b_old)
        kinds_old.append(snapshot_kind(b_old))
        blob = store.dumps(new)
        kinds_new.append(snapshot_kind(blob))
        assert store.write(0, blob)
        assert len(blob) < 0.6 * len(base), (r, len(blob), len(base))
        if store.wants_compaction(0):
            assert store.compact(0)
            compactions += 1
            m = store.manifest(0)
            assert m is not None and m.entries[0].chain  # what the next delta continues
        _same(store.read(0), new.to_dict())
        _same(_loaded(tmp_path / "new").to_dict(), new.to_dict())
    assert "base" in kinds_old  # the old rule: a base once the deltas outgrew the base
    assert kinds_new == ["delta"] * 9
    assert compactions >= 2
    # only the blobs the manifest lists are left
    m = store.manifest(0)
    assert m is not None
    left = {p.relative_to(tmp_path / "new").as_posix()
            for p in (tmp_path / "new").rglob("*") if p.is_file()}
    assert left == {e.name for e in m.entries} | {"events-0/manifest"}


def test_a_compaction_loses_to_a_write_that_replaced_its_blobs(tmp_path) -> None:
    """A base written between compaction's read and its commit wins: the compaction is not
    written, and the state read back is the newer base's."""
    st = _state(N)
    store = SnapshotStore(tmp_path, "events", compact=True)
    assert store.write(0, store.dumps(st))
    for r in (1, 2, 3):
        _changed(st, r)
        assert store.write(0, store.dumps(st))
    assert store.wants_compaction(0)
    merged = store._merged  # noqa: SLF001 (the seam between reading and committing)

    def racing(partition, m):
        doc = merged(partition, m)
        st.journal.erased = True  # a forget: the next snapshot is a base
        t = threading.Thread(target=lambda: store.write(0, store.dumps(st)))
        t.start()
        t.join(30)
        return doc

    store._merged = racing  # type: ignore[method-assign]
    assert not store.compact(0)
    m = store.manifest(0)
    assert m is not None and [e.kind for e in m.entries] == ["base"] and not m.entries[0].chain
    _same(SnapshotStore(tmp_path, "events").read(0), st.to_dict())


def test_without_compaction_deltas_stop_at_the_slack_and_a_base_follows(tmp_path) -> None:
    """A store that compacts but is never asked to (compaction failing) writes a base from the
    live state once the deltas are COMPACT_SLACK times the base: loading stays bounded."""
    st = _state(N)
    store = SnapshotStore(tmp_path, "events", compact=True)
    assert store.write(0, store.dumps(st))
    kinds = []
    for r in range(1, 4 * COMPACT_SLACK):
        _changed(st, r)
        blob = store.dumps(st)
        kinds.append(snapshot_kind(blob))
        assert store.write(0, blob)
        m = store.manifest(0)
        assert m is not None
        assert m.delta_bytes() <= (COMPACT_SLACK + 1) * m.entries[0].size
    assert "base" in kinds and kinds[0] == "delta"
    _same(_loaded(tmp_path).to_dict(), st.to_dict())


def test_a_compaction_that_fails_to_write_leaves_the_committed_snapshot(tmp_path) -> None:
    """The process dies (the store raises) on the compaction's blob or its manifest: the
    committed manifest still loads to the state, and the next delta still continues it."""
    from stream.worker.blobs import LocalBlobStore

    for fail_on in ("blob", "manifest"):
        where = tmp_path / fail_on

        class Failing(LocalBlobStore):
            armed = False
            on_manifest = False

            def put(self, name: str, data: bytes) -> None:
                if self.armed and name.endswith("/manifest") == self.on_manifest:
                    raise OSError("disk gone (test)")
                super().put(name, data)

        blobs = Failing(where)
        blobs.on_manifest = fail_on == "manifest"
        st = _state(N)
        store = SnapshotStore(where, "events", blobs, compact=True)
        assert store.write(0, store.dumps(st))
        for r in (1, 2, 3):
            _changed(st, r)
            assert store.write(0, store.dumps(st))
        assert store.wants_compaction(0)
        blobs.armed = True
        assert not store.compact(0)
        blobs.armed = False
        _same(SnapshotStore(where, "events").read(0), st.to_dict())
        _changed(st, 4)
        blob = store.dumps(st)
        assert snapshot_kind(blob) == "delta" and store.write(0, blob)
        _same(_loaded(where).to_dict(), st.to_dict())


def test_a_read_racing_a_compaction_reads_the_new_manifest(tmp_path) -> None:
    """A compaction commits (and deletes the blobs it replaced) while another store reads the
    partition: the read retries on the new manifest and returns the same state; blobs that
    stay damaged are still one StateError."""
    import pytest

    from stream.core.errors import StateError
    from stream.worker.blobs import LocalBlobStore

    st = _state(N)
    writer = SnapshotStore(tmp_path, "events", compact=True)
    assert writer.write(0, writer.dumps(st))
    for r in (1, 2, 3):
        _changed(st, r)
        assert writer.write(0, writer.dumps(st))
    assert writer.wants_compaction(0)

    class Racing(LocalBlobStore):
        raced = False

        def get(self, name: str) -> bytes | None:
            if "/base-" in name and not self.raced:
                self.raced = True
                assert writer.compact(0)  # commits, deletes ``name``
            return super().get(name)

    blobs = Racing(tmp_path)
    reader = SnapshotStore(tmp_path, "events", blobs)
    _same(reader.read(0), st.to_dict())
    assert blobs.raced
    m = writer.manifest(0)
    assert m is not None
    (tmp_path / m.entries[0].name).write_bytes(b"damaged")
    with pytest.raises(StateError, match="corrupt"):
        SnapshotStore(tmp_path, "events").read(0)
