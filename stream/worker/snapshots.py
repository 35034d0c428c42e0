"""Snapshots: the state files (``SnapshotStore``) and when they are written (``Scheduler``).

A file is ``PSNAP1`` + the 8-byte ``next_offset`` it covers + a pickle of plain data (dicts,
lists, numpy arrays and the core's ``Event``).  It is read back by an unpickler that accepts
only those classes, so a file made by another version fails with one ``StateError`` that names
``profiles rebuild`` instead of a traceback (and a crafted file cannot run code).  Writes are
atomic (temp file, fsync, rename, fsync the folder) and fenced: with a shared state folder, a
stalled former owner of a partition cannot replace a newer snapshot.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stream.core.errors import StateError
from stream.worker.state import PartitionState

__all__ = ["Scheduler", "SnapshotStore", "safe_loads"]

log = logging.getLogger(__name__)

_MAGIC = b"PSNAP1"
_HEADER = len(_MAGIC) + 8

# (module, name) a snapshot may name.  A class that moves gets an entry in _MOVED (old path ->
# new path) so snapshots written before the move still load.
_ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("stream.core.events", "Event"),
    ("collections", "Counter"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
      for n in ("_reconstruct", "scalar")),
    *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
})
_MOVED: dict[tuple[str, str], tuple[str, str]] = {}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module, name = _MOVED.get((module, name), (module, name))
        if (module, name) not in _ALLOWED:
            raise StateError(f"holds {module}.{name}, which this version does not read")
        return super().find_class(module, name)


def safe_loads(payload: bytes) -> Any:
    """Unpickle data written by :meth:`SnapshotStore.dumps` (only the allowed classes)."""
    return _Unpickler(io.BytesIO(payload)).load()


class SnapshotStore:
    """Snapshot files ``<dir>/<topic>-<partition>.snap``, written atomically and fenced."""

    def __init__(self, directory: str | os.PathLike[str], topic: str) -> None:
        self.dir = Path(directory)
        self.topic = topic
        self._write_lock = threading.Lock()

    def path(self, partition: int | str) -> Path:
        return self.dir / f"{self.topic}-{partition}.snap"

    def model_path(self) -> Path:
        return self.dir / f"{self.topic}.model"

    def check_model(self, fingerprint: str) -> None:
        """Refuse a state directory whose snapshots were made by another encoder."""
        try:
            theirs = self.model_path().read_text().strip()
        except FileNotFoundError:
            return
        if theirs != fingerprint:
            raise StateError(
                f"state in {self.dir} holds vectors of model {theirs}, this worker's encoder is "
                f"{fingerprint}: run `profiles rebuild` for the new model, or point "
                "PROFILES_ENCODER_PATH at the model that made it")

    def mark_model(self, fingerprint: str) -> None:
        path = self.model_path()
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            path.write_text(fingerprint + "\n")

    def dumps(self, state: PartitionState) -> bytes:
        """Serialise on the event loop (the state must not change while this runs)."""
        return self.frame(pickle.dumps(state.to_dict(), protocol=pickle.HIGHEST_PROTOCOL),
                          state.next_offset)

    @staticmethod
    def frame(payload: bytes, next_offset: int = -1) -> bytes:
        return _MAGIC + next_offset.to_bytes(8, "big", signed=True) + payload

    def covered(self, partition: int | str) -> int | None:
        """The ``next_offset`` of the snapshot on disk (None when there is none)."""
        try:
            with open(self.path(partition), "rb") as f:
                head = f.read(_HEADER)
        except FileNotFoundError:
            return None
        if len(head) < _HEADER or not head.startswith(_MAGIC):
            return None
        return int.from_bytes(head[len(_MAGIC):], "big", signed=True)

    def write(self, partition: int | str, blob: bytes) -> bool:
        """Durable atomic replace (temp, fsync, rename, fsync the directory), unless the file
        on disk already covers more offsets; returns whether it was written.  Thread-safe: the
        check and the replace are one step (writes run on executor threads)."""
        with self._write_lock:
            return self._write(partition, blob)

    def _write(self, partition: int | str, blob: bytes) -> bool:
        mine = int.from_bytes(blob[len(_MAGIC):_HEADER], "big", signed=True)
        on_disk = self.covered(partition)
        if mine >= 0 and on_disk is not None and on_disk > mine:
            log.warning("snapshot %s covers offsets up to %d, beyond this worker's %d: not "
                        "overwritten (another worker owns the partition now)",
                        self.path(partition), on_disk, mine)
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{self.topic}-{partition}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(partition))
            dfd = os.open(self.dir, os.O_RDONLY)
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
        return True

    def read(self, partition: int | str) -> dict[str, Any] | None:
        """The snapshot's data, None when there is none; StateError when it cannot be used."""
        path = self.path(partition)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        if not blob.startswith(_MAGIC):
            raise StateError(f"snapshot {path} is not a profiles snapshot (bad header)")
        try:
            data = safe_loads(blob[_HEADER:])
        except StateError as exc:
            raise StateError(f"snapshot {path} {exc}: run `profiles rebuild` to recompute the "
                             "state with this version") from exc
        except Exception as exc:
            raise StateError(f"snapshot {path} is corrupt ({type(exc).__name__}: {exc}): run "
                             "`profiles rebuild` to recompute the state") from exc
        if not isinstance(data, dict):
            raise StateError(f"snapshot {path} holds a {type(data).__name__}, not a state: run "
                             "`profiles rebuild`")
        return data


class Scheduler:
    """Which partition to snapshot when, within a share of the event loop's time.

    A changed (``dirty``) partition is due once its last snapshot is ``interval_s`` old; the
    timer writes at most *one* partition per call, the due one whose snapshot is oldest.  After
    a snapshot that took ``c`` seconds to serialise the next waits ``c / budget``: serialising
    runs on the event loop, so this bounds the share of the loop's time it takes (the interval
    stretches as the state grows).
    """

    def __init__(self, interval_s: float, budget: float, monotonic: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self.budget = budget
        self.monotonic = monotonic
        self.dirty: set[int] = set()
        self._at: dict[int, float] = {}  # partition -> when its last snapshot was serialised
        self._not_before = 0.0  # the budget's pause

    def paused(self) -> bool:
        return self.monotonic() < self._not_before

    def due(self, owned: Iterable[int]) -> int | None:
        """The partition to snapshot now, if any."""
        now = self.monotonic()
        mine = set(owned)
        due = [p for p in self.dirty if p in mine
               and now - self._at.get(p, float("-inf")) >= self.interval_s]
        if not due:
            return None
        return min(due, key=lambda q: self._at.get(q, float("-inf")))

    def serialised(self, partition: int, seconds: float) -> None:
        """Record a snapshot of ``partition`` that took ``seconds`` to serialise."""
        self._at[partition] = self.monotonic()
        self.dirty.discard(partition)
        self._not_before = self.monotonic() + seconds / self.budget

    def written_now(self, partition: int) -> None:
        """A snapshot outside the schedule (revocation, shutdown)."""
        self._at[partition] = self.monotonic()
        self.dirty.discard(partition)

