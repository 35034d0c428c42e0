"""Snapshots: the state files (``SnapshotStore``) and when they are written (``Scheduler``).

A file is ``PSNAP2`` + the 8-byte ``next_offset`` it covers + an ``.npz`` archive (numpy's
zip of ``.npy`` arrays, written and read with ``allow_pickle=False``).  The archive holds one
JSON document (member ``doc``, UTF-8 as a uint8 array) for the strings, numbers and small dicts,
every numpy array of the state as its own member (``a0``, ``a1``, ...), and one uint8 member
(``heap``) with every ``bytes`` value and the long lists of names (user and item ids,
NUL-joined, UTF-8: decoding them is a split, not a JSON parse).  Reading it never runs code:
JSON and ``.npy`` are data, and the few types JSON lacks are tagged, one-key objects whose key
starts with NUL (see :func:`pack`), which the reader maps onto plain data types only.  A file
of another format fails with one ``StateError``: the pickle files of earlier versions
(``PSNAP1``) are refused, not unpickled (a pickle can run any code; the README says how to
migrate).  Writes are atomic (temp file, fsync, rename, fsync the folder) and fenced: with a
shared state folder, a stalled former owner of a partition cannot replace a newer snapshot.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.core.errors import StateError
from stream.core.events import Event
from stream.worker.state import PartitionState

__all__ = ["Scheduler", "SnapshotStore", "pack", "unpack"]

log = logging.getLogger(__name__)

_MAGIC = b"PSNAP2"
_LEGACY = b"PSNAP1"  # the pickle format before issue 10: refused, never unpickled
_HEADER = len(_MAGIC) + 8

# Tags: a JSON object with exactly one key that starts with NUL is a value JSON cannot hold.
# A plain dict never has such a key (one that would is written as _MAP), so this is unambiguous.
_ARRAY, _BYTES, _TUPLE, _SET, _MAP, _COUNTER, _FLOAT, _INT, _EVENT, _STRS = (
    "\0a", "\0b", "\0t", "\0s", "\0m", "\0C", "\0f", "\0i", "\0E", "\0L")
_STRS_MIN = 16  # a list of at least this many str (names, ids) goes to the heap NUL-joined
_INT64 = (-(2 ** 63), 2 ** 64)  # what orjson writes as a JSON number
_EVENT_FIELDS = tuple(f.name for f in fields(Event))


_SCALARS = frozenset({str, bool, type(None)})


def _as_is(values: Collection[Any]) -> bool:
    """Whether JSON holds every one of ``values`` exactly as it is (checked in C, not one by
    one: the long lists of names and numbers of a state go through unchanged)."""
    types = set(map(type, values))
    if types <= _SCALARS:
        return True
    if types == {int}:
        return bool(_INT64[0] <= min(values) and max(values) < _INT64[1])
    if types == {float}:
        return math.isfinite(sum(values))  # nan and ±inf survive a sum (or overflow it: slow path)
    return False


def _no_containers(values: Iterable[Any]) -> bool:
    types = set(map(type, values))
    return dict not in types and list not in types


class _Packer:
    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self.heap: list[bytes] = []
        self.heap_size = 0

    def bytes_ref(self, b: bytes) -> list[int]:
        ref = [self.heap_size, len(b)]
        self.heap.append(b)
        self.heap_size += len(b)
        return ref

    def walk(self, x: Any) -> Any:  # noqa: C901 (one branch per type, flat)
        t = type(x)
        if t is str or t is bool or x is None:
            return x
        if t is int:
            return x if _INT64[0] <= x < _INT64[1] else {_INT: str(x)}
        if t is float:
            return x if math.isfinite(x) else {_FLOAT: repr(x)}
        if t is list:
            if len(x) >= _STRS_MIN and set(map(type, x)) == {str}:
                joined = "\0".join(x)
                if joined.count("\0") == len(x) - 1:  # no NUL inside: split gives them back
                    return {_STRS: [*self.bytes_ref(joined.encode("utf-8", "surrogatepass")),
                                    len(x)]}
            return x if _as_is(x) else [self.walk(v) for v in x]
        if t is dict:
            if set(map(type, x)) <= {str} and "\0" not in "".join(x):  # else: a key may look
                return x if _as_is(x.values()) else {k: self.walk(v) for k, v in x.items()}
            return {_MAP: [[self.walk(k), self.walk(v)] for k, v in x.items()]}  # like a tag
        if t is tuple:
            return {_TUPLE: [self.walk(v) for v in x]}
        if t is bytes or t is bytearray:
            return {_BYTES: self.bytes_ref(bytes(x))}
        if isinstance(x, np.ndarray):
            if x.dtype.hasobject:
                raise TypeError("a snapshot cannot hold a numpy array of Python objects")
            self.arrays.append(x)
            return {_ARRAY: len(self.arrays) - 1}
        if isinstance(x, np.generic):
            return self.walk(x.item())
        if t is Counter:
            return {_COUNTER: self.walk(dict(x))}
        if t is set or t is frozenset:
            return {_SET: [self.walk(v) for v in x]}
        if t is Event:
            return {_EVENT: {f: self.walk(getattr(x, f)) for f in _EVENT_FIELDS}}
        raise TypeError(f"a snapshot cannot hold a {t.__module__}.{t.__qualname__}")


def pack(data: Any) -> bytes:
    """``data`` (dicts, lists, tuples, sets, Counters, str, int, float, bool, None, bytes, numpy
    arrays of numbers or fixed-size strings, the core's ``Event``) as an ``.npz`` archive."""
    p = _Packer()
    doc = p.walk(data)
    try:
        text = orjson.dumps(doc)
    except orjson.JSONEncodeError:  # a lone surrogate (orjson refuses them): escape it
        text = json.dumps(doc, ensure_ascii=True, allow_nan=False).encode("ascii")
    members = {f"a{i}": a for i, a in enumerate(p.arrays)}
    members["doc"] = np.frombuffer(text, np.uint8)
    members["heap"] = np.frombuffer(b"".join(p.heap), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **members)
    return buf.getvalue()


class _Unpacker:
    def __init__(self, arrays: dict[str, np.ndarray], heap: bytes) -> None:
        self.arrays = arrays
        self.heap = heap

    def bytes(self, start: int, n: int) -> bytes:
        if not (0 <= start and 0 <= n and start + n <= len(self.heap)):
            raise ValueError("a bytes value outside the heap")
        return self.heap[start:start + n]

    def walk(self, x: Any) -> Any:  # noqa: C901
        if type(x) is list:
            return x if _no_containers(x) else [self.walk(v) for v in x]
        if type(x) is not dict:
            return x  # str, int, float, bool, None: what JSON holds
        if len(x) != 1 or not next(iter(x)).startswith("\0"):
            if "\0" in "".join(x):
                raise ValueError("a NUL in a plain key")
            return x if _no_containers(x.values()) else {k: self.walk(v) for k, v in x.items()}
        ((tag, v),) = x.items()
        if tag == _ARRAY:
            return self.arrays[f"a{int(v)}"]
        if tag == _BYTES:
            start, n = (int(i) for i in v)
            return self.bytes(start, n)
        if tag == _STRS:
            start, n, count = (int(i) for i in v)
            out = self.bytes(start, n).decode("utf-8", "surrogatepass").split("\0")
            if len(out) != count:
                raise ValueError("a list of names of the wrong length")
            return out
        if tag == _TUPLE:
            return tuple(self.walk(i) for i in v)
        if tag == _MAP:
            return {self.walk(k): self.walk(i) for k, i in v}
        if tag == _COUNTER:
            return Counter(self.walk(v))
        if tag == _SET:
            return {self.walk(i) for i in v}
        if tag == _FLOAT:
            if v not in ("nan", "inf", "-inf"):
                raise ValueError(f"bad float {v!r}")
            return float(v)
        if tag == _INT:
            return int(v)
        if tag == _EVENT:
            return Event(**{str(k): self.walk(i) for k, i in dict(v).items()})
        raise ValueError(f"unknown tag {tag!r}")


def unpack(payload: bytes) -> Any:
    """The data of :func:`pack`.  Never unpickles (``allow_pickle=False``): an archive holding
    a pickled member raises ValueError, as does one that is not a snapshot's."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        arrays = {name: z[name] for name in z.files}
    doc = arrays.pop("doc")
    heap = arrays.pop("heap")
    if doc.dtype != np.uint8 or heap.dtype != np.uint8:
        raise ValueError("doc or heap is not bytes")
    text = doc.tobytes()
    try:
        tree = orjson.loads(text)
    except orjson.JSONDecodeError:
        tree = json.loads(text.decode("utf-8", "surrogatepass"))  # written escaped by pack
    return _Unpacker(arrays, heap.tobytes()).walk(tree)


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
        """Serialise (the state must not change while this runs)."""
        return self.encode(state.to_dict(), state.next_offset)

    @classmethod
    def encode(cls, data: dict[str, Any], next_offset: int = -1) -> bytes:
        """A file's bytes for ``data`` (see :func:`pack`), covering ``next_offset``."""
        return cls.frame(pack(data), next_offset)

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
        # a legacy file's header is data too: it still fences (it is never loaded)
        if len(head) < _HEADER or not head.startswith((_MAGIC, _LEGACY)):
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
        if blob.startswith(_LEGACY):
            raise StateError(
                f"snapshot {path} is in the pickle format of earlier versions, which this "
                "version refuses to load (a pickle can run code): recompute the state from the "
                "topics with `profiles rebuild --swap` (it writes a fresh state folder)")
        if not blob.startswith(_MAGIC):
            raise StateError(f"snapshot {path} is not a profiles snapshot (bad header): run "
                             "`profiles rebuild` to recompute the state")
        try:
            data = unpack(blob[_HEADER:])
        except Exception as exc:  # any malformed archive or document: data, never code
            raise StateError(f"snapshot {path} is corrupt ({type(exc).__name__}: {exc}): run "
                             "`profiles rebuild` to recompute the state") from exc
        if not isinstance(data, dict):
            raise StateError(f"snapshot {path} holds a {type(data).__name__}, not a state: run "
                             "`profiles rebuild`")
        return data


class Scheduler:
    """Which partition to snapshot when, within a share of the time.

    A changed (``dirty``) partition is due once its last snapshot is ``interval_s`` old; the
    timer writes at most *one* partition per call, the due one whose snapshot is oldest.  After
    a snapshot that took ``c`` seconds to serialise the next waits ``c / budget``: serialising
    runs on an executor thread while the pipeline's lock is held (requests are answered, batches
    wait), so this bounds the share of time batches wait on snapshots (the interval stretches as
    the state grows).
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

