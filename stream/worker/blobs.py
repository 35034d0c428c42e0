"""Where a worker's durable state lives: named byte blobs (``BlobStore``).

The partition snapshots (``stream.worker.snapshots``) are written as blobs named
``<topic>-<partition>/<part>`` (for example ``events-3/manifest``, ``events-3/base-000012``,
``events-3/delta-000013``).  A store only keeps bytes under names; what the bytes mean, which
blob commits a snapshot (the manifest, written last) and which blobs are garbage is the
snapshot layer's business.  Two kinds implement it:

- :class:`LocalBlobStore`: files in ``PROFILES_STATE_DIR`` (atomic replace, fsync);
- ``stream.kafka.changelog``: a compacted Kafka topic, so a partition can be restored on any
  host (the local folder is then a cache).

Every method blocks and is thread-safe: the worker calls them on executor threads, never on
the event loop.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["BlobStore", "LocalBlobStore"]


@runtime_checkable
class BlobStore(Protocol):
    """Named byte blobs; names are ``/``-separated ASCII (letters, digits, ``-_.``)."""

    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` (replacing it); durable when this returns."""
        ...

    def get(self, name: str) -> bytes | None:
        """The bytes under ``name``, None when there are none."""
        ...

    def delete(self, name: str) -> None:
        """Remove ``name`` (nothing when absent)."""
        ...

    def names(self, prefix: str) -> list[str]:
        """Every stored name that starts with ``prefix``, sorted."""
        ...


def check_name(name: str) -> str:
    """``name`` if it is a valid blob name, else ValueError (names become paths and keys)."""
    parts = name.split("/")
    ok = all(p and p not in (".", "..") and all(c.isascii() and (c.isalnum() or c in "-_.")
                                                 for c in p) for p in parts)
    if not ok:
        raise ValueError(f"bad blob name {name!r}")
    return name


class LocalBlobStore:
    """Blobs as files under one folder: ``<dir>/<name>`` (temp file, fsync, rename, fsync the
    folder), so a crash leaves either the old or the new bytes, never a mix."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        return self.dir / check_name(name)

    def put(self, name: str, data: bytes) -> None:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            with self._lock:
                os.replace(tmp, path)
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def get(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            pass

    def names(self, prefix: str) -> list[str]:
        if not self.dir.is_dir():
            return []
        out = []
        for root, _dirs, files in os.walk(self.dir):
            rel = Path(root).relative_to(self.dir)
            for f in files:
                if f.startswith("."):
                    continue  # temp files of a put in progress
                name = (rel / f).as_posix() if str(rel) != "." else f
                if name.startswith(prefix):
                    out.append(name)
        return sorted(out)
