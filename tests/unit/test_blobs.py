"""LocalBlobStore: the BlobStore protocol on a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.worker.blobs import BlobStore, LocalBlobStore


def test_put_get_replace_delete_names(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "state")
    assert isinstance(store, BlobStore)
    assert store.get("events-0/manifest") is None
    assert store.names("") == []
    store.put("events-0/base-000001", b"base")
    store.put("events-0/manifest", b"m1")
    store.put("events-1/manifest", b"other")
    store.put("events-0/manifest", b"m2")  # replaced
    assert store.get("events-0/manifest") == b"m2"
    assert store.names("events-0/") == ["events-0/base-000001", "events-0/manifest"]
    store.delete("events-0/base-000001")
    store.delete("events-0/base-000001")  # absent: nothing
    assert store.names("events-0/") == ["events-0/manifest"]
    # no temp file is left behind by a put
    assert not [p for p in (tmp_path / "state").rglob(".*")]


@pytest.mark.parametrize("name", ["", "a//b", "../x", "a/./b", "a b", "x/é", "/abs"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    store = LocalBlobStore(tmp_path)
    with pytest.raises(ValueError, match="bad blob name"):
        store.put(name, b"x")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_put_keeps_the_old_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path)
    store.put("p/manifest", b"old")

    def boom(*_a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("stream.worker.blobs.os.replace", boom)
    with pytest.raises(OSError):
        store.put("p/manifest", b"new")
    assert store.get("p/manifest") == b"old"
    assert store.names("") == ["p/manifest"]
