"""The changelog with the local folder as its cache (:class:`TieredBlobStore`)."""

from __future__ import annotations

import hashlib
from typing import Protocol

from stream.worker.blobs import BlobStore

__all__ = ["RemoteBlobStore", "TieredBlobStore"]


class RemoteBlobStore(BlobStore, Protocol):
    """What the tiered store needs of its remote (``stream.kafka.changelog.KafkaBlobStore``):
    a blob store of one topic's partitions that knows each blob's sha256."""

    prefix: str

    def partition_of(self, name: str) -> int | None: ...

    def holds(self, name: str) -> bool: ...

    def digest(self, name: str) -> str | None: ...

    def release(self, name: str) -> None: ...

    def close(self) -> None: ...


class TieredBlobStore:
    """The changelog (``remote``) with the local folder as a cache.

    ``put``: remote first (acknowledged), then local; so the remote is never older than the
    local copy.  ``get``: the local copy when it is the remote's latest (same sha256: no
    bytes fetched), else the remote's, written to the local folder.  A partition the remote
    holds nothing of (the changelog was just turned on) is served from the local folder
    alone.  Names outside the remote's partitions (the item catalogue) stay local."""

    def __init__(self, local: BlobStore, remote: RemoteBlobStore) -> None:
        self.local = local
        self.remote = remote
        self.local_hits = 0
        self.remote_reads = 0

    def _remote_has_partition(self, name: str) -> bool:
        p = self.remote.partition_of(name)
        return bool(self.remote.names(f"{self.remote.prefix}-{p}/")
                    or self.remote.names(f"{self.remote.prefix}-{p}."))

    def put(self, name: str, data: bytes) -> None:
        if self.remote.holds(name):
            self.remote.put(name, data)
        self.local.put(name, data)

    def get(self, name: str) -> bytes | None:
        if not self.remote.holds(name):
            return self.local.get(name)
        sha = self.remote.digest(name)
        mine = self.local.get(name)
        if sha is None:
            if mine is not None and not self._remote_has_partition(name):
                self.local_hits += 1
                return mine  # written before the changelog was on: the local folder rules
            return None
        if mine is not None and hashlib.sha256(mine).hexdigest() == sha:
            self.local_hits += 1
            return mine
        data = self.remote.get(name)
        self.remote_reads += 1
        if data is not None:
            self.local.put(name, data)
            self.remote.release(name)
        return data

    def delete(self, name: str) -> None:
        if self.remote.holds(name):
            self.remote.delete(name)
        self.local.delete(name)

    def names(self, prefix: str) -> list[str]:
        local = self.local.names(prefix)
        remote = self.remote.names(prefix)
        held = {self.remote.partition_of(n) for n in remote}
        # a local name of a partition the remote holds something of: only if the remote has it
        keep = [n for n in local if not self.remote.holds(n)
                or self.remote.partition_of(n) not in held]
        return sorted(set(remote) | set(keep))

    def close(self) -> None:
        self.remote.close()
