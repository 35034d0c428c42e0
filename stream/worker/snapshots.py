"""Snapshots: a partition's durable state (``SnapshotStore``) and when it is written
(``Scheduler``).

Layout (issue 12).  A partition's state is blobs in a :class:`~stream.worker.blobs.BlobStore`
(the state folder, or the Kafka changelog with the folder as its cache): one *base* (the whole
state), zero or more *deltas* (what changed since the blob before, ``stream.worker.deltas``)
and a *manifest* (``<topic>-<p>/manifest``, JSON) listing them in order with their sha256,
size and the ``next_offset`` each covers.  A snapshot writes its blob, then the manifest: the
manifest is the commit point, so a crash anywhere leaves the previous manifest and every blob
it lists intact; blobs no manifest lists any more are deleted once the new one is written.  A
snapshot costs what changed since the last one.  Once the deltas add up to more than the base
(or number more than ``PROFILES_SNAPSHOT_MAX_DELTAS``), the worker *compacts*
(:meth:`SnapshotStore.compact`): it folds the committed blobs into a new base from the blobs
themselves, on an executor thread without the pipeline's lock, so batches go on and the
snapshots under the lock stay deltas (their cost follows the changes, and so does the
scheduler's budget pause: a base serialised under the lock paused every partition's snapshots
for 20 times its length, and the tail no snapshot covered grew with it).  The deltas written
meanwhile continue the new base (its entry's ``chain``: the blob it replaced last).  A base is
still serialised from the live state for the first snapshot, after a forget (so the user's
bytes leave the durable state), whenever a delta would not continue the committed blob (a
failed write), and if compaction falls ``COMPACT_SLACK`` times behind, so loading reads a few
full snapshots at most.

A blob is ``PSNAP2`` (a base) or ``PDELT2`` (a delta, followed by the 32-byte sha256 of the
blob it continues) + the 8-byte ``next_offset`` it covers + an ``.npz`` archive (numpy's zip
of ``.npy`` arrays, written and read with ``allow_pickle=False``).  The archive holds one JSON
document (member ``doc``, UTF-8 as a uint8 array) for the strings, numbers and small dicts,
every numpy array of the state as its own member (``a0``, ``a1``, ...), and one uint8 member
(``heap``) with every ``bytes`` value and the long lists of names (user and item ids,
NUL-joined, UTF-8: decoding them is a split, not a JSON parse).  Reading it never runs code:
JSON and ``.npy`` are data, and the few types JSON lacks are tagged, one-key objects whose key
starts with NUL (see :func:`pack`), which the reader maps onto plain data types only.  A blob
of another format fails with one ``StateError``: the pickle files of earlier versions
(``PSNAP1``) are refused, not unpickled (a pickle can run any code; the README says how to
migrate).  The single-file snapshots of the version before (``<topic>-<p>.snap``, a PSNAP2
base) load while a partition has no manifest; its first snapshot replaces them.  Writes are
fenced: with a shared state folder or changelog, a stalled former owner of a partition cannot
replace a snapshot covering more offsets.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import logging
import math
import os
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.core.errors import StateError
from stream.core.events import Event
from stream.worker.blobs import BlobStore, LocalBlobStore
from stream.worker.deltas import UNPUBLISHED, delta_doc, mark_serialised, merge
from stream.worker.state import PartitionState

__all__ = ["COMPACT_SLACK", "MAX_DELTAS", "Capture", "Manifest", "Scheduler", "SnapshotStore",
           "finish_compaction", "owned", "pack", "snapshot_kind", "start_compaction", "unpack"]

log = logging.getLogger(__name__)

_MAGIC = b"PSNAP2"
_DELTA = b"PDELT2"  # a delta: header, then the sha256 of the blob it continues, then the archive
_MANIFEST = "profiles-manifest-1"
#: deltas after which a snapshot is a base again, whatever their size
MAX_DELTAS = 16
#: with compaction (SnapshotStore.compact), how many times over those limits the deltas may
#: grow before a base is serialised from the live state anyway (compaction fell behind)
COMPACT_SLACK = 4
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


@dataclass(frozen=True)
class Entry:
    """One blob of a partition's durable state, as its manifest lists it."""

    name: str
    sha256: str
    size: int
    next_offset: int
    kind: str  # "base" or "delta"
    # a base that compaction folded from blobs (:meth:`SnapshotStore.compact`): the sha256 of
    # the last blob it replaced, which the deltas after it continue ("": the blob's own)
    chain: str = ""


@dataclass(frozen=True)
class Manifest:
    """A partition's durable state: one base blob and the deltas on it, in order.  Writing it
    commits a snapshot: a crash before leaves the previous manifest (and its blobs) valid."""

    seq: int  # blobs written so far for the partition (names them; orders garbage)
    next_offset: int
    entries: tuple[Entry, ...]

    @property
    def tip(self) -> str:
        """What the next delta continues: the newest blob (or the blobs a base replaced)."""
        last = self.entries[-1]
        return last.chain or last.sha256

    def wants_compaction(self, max_deltas: int) -> bool:
        """Whether the deltas outgrew the base (or number more than ``max_deltas``)."""
        return len(self.entries) > 1 and (len(self.entries) > max_deltas
                                          or self.delta_bytes() > self.entries[0].size)

    def delta_bytes(self) -> int:
        return sum(e.size for e in self.entries[1:])

    def encode(self) -> bytes:
        return orjson.dumps({"format": _MANIFEST, "seq": self.seq,
                             "next_offset": self.next_offset,
                             "entries": [{k: v for k, v in e.__dict__.items()
                                          if k != "chain" or v} for e in self.entries]})

    @classmethod
    def decode(cls, raw: bytes) -> Manifest:
        d = orjson.loads(raw)
        if not isinstance(d, dict) or d.get("format") != _MANIFEST:
            raise ValueError("not a snapshot manifest")
        entries = tuple(Entry(str(e["name"]), str(e["sha256"]), int(e["size"]),
                              int(e["next_offset"]), str(e["kind"]), str(e.get("chain", "")))
                        for e in d["entries"])
        if not entries or entries[0].kind != "base" or any(e.kind != "delta"
                                                           for e in entries[1:]):
            raise ValueError("a manifest lists one base then deltas")
        return cls(int(d["seq"]), int(d["next_offset"]), entries)


#: the journal's parent while a capture packs (never a sha256): what a capture taken meanwhile
#: sees is no blob, so it is a base
_PACKING = "packing-"
_captures = itertools.count()


#: keys a snapshot document holds beside the state (the ``extra`` of :meth:`SnapshotStore.capture`,
#: returned apart by :meth:`SnapshotStore.read_beside`)
BESIDE: tuple[str, ...] = (UNPUBLISHED,)


@dataclass(frozen=True)
class Capture:
    """A partition's snapshot data taken under the pipeline's lock
    (:meth:`SnapshotStore.capture`), packed into its blob without it (:meth:`SnapshotStore.pack`)."""

    state: PartitionState  # whose journal the blob's sha256 goes to (only that)
    next_offset: int
    parent: str | None  # the sha256 a delta continues; None: a base
    doc: dict[str, Any]  # to_dict (a base) or delta_doc (a delta), owned copies
    token: str  # the journal's parent until packed


def owned(doc: dict[str, Any], base: bool) -> dict[str, Any]:
    """``doc`` (``to_dict`` or ``delta_doc``) with no part the live state keeps changing.
    Every table's ``state()`` already returns copies (fancy-indexed or ``.copy()`` arrays,
    fresh lists and dicts of immutable values) except the DLQ keys: a dict copy whose values
    are the live per-user lists that dead-lettering appends to.  Copied here: one list per
    user with DLQ keys (a delta: per changed one)."""
    if base:
        doc["dlq_keys"] = {u: list(keys) for u, keys in doc["dlq_keys"].items()}
    else:
        part = doc["tables"]["dlq_keys"]
        part["rows"] = {u: list(keys) for u, keys in part["rows"].items()}
    return doc


class SnapshotStore:
    """A topic's partition snapshots in a :class:`~stream.worker.blobs.BlobStore`: per
    partition ``<topic>-<p>/manifest`` listing a base blob and the deltas since it
    (``<topic>-<p>/base-<seq>-<sha>``, ``.../delta-<seq>-<sha>``), written blobs first and the
    manifest last, fenced; a single-file snapshot of earlier versions (``<topic>-<p>.snap``)
    still loads, as a base, while no manifest exists.

    :meth:`dumps` writes a delta (``stream.worker.deltas``) when the state's last serialised
    blob is the committed tip, no user was erased since (so a forgotten user's bytes leave the
    durable state at the next snapshot) and the deltas since the base add up to less than the
    base (and fewer than ``max_deltas``): loading stays within about twice a full snapshot.
    """

    def __init__(self, directory: str | os.PathLike[str], topic: str,
                 blobs: BlobStore | None = None, max_deltas: int = MAX_DELTAS,
                 compact: bool = False) -> None:
        self.dir = Path(directory)
        self.topic = topic
        self.blobs: BlobStore = blobs if blobs is not None else LocalBlobStore(self.dir)
        self.max_deltas = max_deltas
        # the owner calls compact() when wants_compaction(): deltas go on meanwhile, and a
        # base is serialised from the live state only once they are COMPACT_SLACK times over
        self.compact_blobs = compact
        self._write_lock = threading.Lock()
        self._manifests: dict[str, Manifest] = {}  # partition -> the last one read or written

    def path(self, partition: int | str) -> Path:
        """The single-file snapshot of earlier versions (loaded while no manifest exists)."""
        return self.dir / self._legacy(partition)

    def _legacy(self, partition: int | str) -> str:
        return f"{self.topic}-{partition}.snap"

    def _prefix(self, partition: int | str) -> str:
        return f"{self.topic}-{partition}/"

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

    # -- manifests ---------------------------------------------------------------------
    def manifest(self, partition: int | str) -> Manifest | None:
        """The partition's committed manifest, read from the blob store (None: none)."""
        raw = self.blobs.get(self._prefix(partition) + "manifest")
        if raw is None:
            return None
        try:
            m = Manifest.decode(raw)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise StateError(f"snapshot manifest of {self.topic}-{partition} is corrupt "
                             f"({type(exc).__name__}: {exc}): run `profiles rebuild`") from exc
        self._manifests[str(partition)] = m
        return m

    def tip(self, partition: int | str) -> str | None:
        """sha256 of the newest blob of the manifest last read or written here (what a state
        loaded by :meth:`read` continues from); None when there is none."""
        m = self._manifests.get(str(partition))
        return None if m is None else m.tip

    # -- writing ----------------------------------------------------------------------
    def dumps(self, state: PartitionState, extra: Mapping[str, Any] | None = None) -> bytes:
        """Serialise, a delta when it can be (the state must not change while this runs):
        :meth:`capture` then :meth:`pack`.  The state's journal then starts again from this
        blob."""
        return self.pack(self.capture(state, extra))

    def capture(self, state: PartitionState, extra: Mapping[str, Any] | None = None) -> Capture:
        """What a snapshot of ``state`` holds, as of now, in copies the live state no longer
        changes (the part of a snapshot that needs the pipeline's lock): a base's ``to_dict``
        or a delta's document (:func:`~stream.worker.deltas.delta_doc`: only the changed
        rows).  The journal starts again here (changes from now on go to the next snapshot);
        :meth:`pack` serialises the capture without the lock, batches going on meanwhile."""
        j = state.journal
        m = self._manifests.get(str(state.partition))
        slack = COMPACT_SLACK if self.compact_blobs else 1
        base = (j.parent is None or j.erased or m is None or m.tip != j.parent
                or len(m.entries) > slack * self.max_deltas
                or m.delta_bytes() > slack * m.entries[0].size)
        if base:
            doc = owned(state.to_dict(), base=True)
            parent = None
        else:
            assert j.parent is not None
            doc = owned(delta_doc(state), base=False)
            parent = j.parent
        if extra:  # what the pipeline records beside the state (``unpublished``)
            if set(extra) - set(BESIDE):
                raise ValueError(f"not a key beside the state: {sorted(set(extra) - set(BESIDE))}")
            doc.update(extra)
        token = f"{_PACKING}{next(_captures)}"
        # the next capture continues this one's blob once packed (its sha256, see pack); one
        # taken before that (a revocation while the timer's capture packs) sees no blob's
        # sha256 here, so it is a base
        mark_serialised(state, token)
        return Capture(state, state.next_offset, parent, doc, token)

    @classmethod
    def pack(cls, cap: Capture) -> bytes:
        """The blob of a :meth:`capture` (needs no lock: the capture is a copy); the
        captured state's next delta continues it.  Thread-safe."""
        if cap.parent is None:
            blob = cls.encode(cap.doc, cap.next_offset)
        else:
            blob = (_DELTA + cap.next_offset.to_bytes(8, "big", signed=True)
                    + bytes.fromhex(cap.parent) + pack(cap.doc))
        j = cap.state.journal
        if j.parent == cap.token:  # no later capture of the state meanwhile
            j.parent = hashlib.sha256(blob).hexdigest()
        return blob

    @classmethod
    def encode(cls, data: dict[str, Any], next_offset: int = -1) -> bytes:
        """A base blob's bytes for ``data`` (see :func:`pack`), covering ``next_offset``."""
        return cls.frame(pack(data), next_offset)

    def write_data(self, partition: int | str, build: Callable[[], dict[str, Any]]) -> bool:
        """:meth:`encode` ``build()`` as a base and :meth:`write` it: for an executor thread,
        with ``build`` captured on the loop from a copy the live state no longer changes
        (``stream.worker.capture``): packing the catalogue there held the loop ~45 ms per
        20,000 items."""
        return self.write(partition, self.encode(build()))

    @staticmethod
    def frame(payload: bytes, next_offset: int = -1) -> bytes:
        return _MAGIC + next_offset.to_bytes(8, "big", signed=True) + payload

    def covered(self, partition: int | str) -> int | None:
        """The ``next_offset`` of the committed snapshot (None when there is none)."""
        m = self.manifest(partition)
        if m is not None:
            return m.next_offset
        head = (self.blobs.get(self._legacy(partition)) or b"")[:_HEADER]
        # a legacy file's header is data too: it still fences (it is never loaded)
        if len(head) < _HEADER or not head.startswith((_MAGIC, _LEGACY)):
            return None
        return int.from_bytes(head[len(_MAGIC):], "big", signed=True)

    def write(self, partition: int | str, blob: bytes) -> bool:
        """Commit ``blob`` (of :meth:`dumps` or :meth:`encode`): its blob, then the manifest,
        then delete what no manifest lists any more.  Not written (False) when the committed
        snapshot covers more offsets (another worker owns the partition now) or, for a delta,
        when it does not continue the committed tip (a base follows).  Thread-safe."""
        with self._write_lock:
            return self._write(partition, blob)

    def _write(self, partition: int | str, blob: bytes) -> bool:
        kind = "base" if blob.startswith(_MAGIC) else "delta" if blob.startswith(_DELTA) else ""
        if not kind:
            raise ValueError("not a snapshot blob")
        mine = int.from_bytes(blob[len(_MAGIC):_HEADER], "big", signed=True)
        m = self.manifest(partition)
        on_disk = m.next_offset if m is not None else self.covered(partition)
        if mine >= 0 and on_disk is not None and on_disk > mine:
            log.warning("snapshot %s-%s covers offsets up to %d, beyond this worker's %d: not "
                        "overwritten (another worker owns the partition now)", self.topic,
                        partition, on_disk, mine)
            return False
        if kind == "delta" and (m is None or blob[_HEADER:_HEADER + 32].hex() != m.tip):
            log.info("snapshot delta of %s-%s does not continue the committed one: dropped "
                     "(the next snapshot is a base)", self.topic, partition)
            return False
        sha = hashlib.sha256(blob).hexdigest()
        seq = 1 if m is None else m.seq + 1
        name = f"{self._prefix(partition)}{kind}-{seq:010d}-{sha[:16]}"
        entry = Entry(name, sha, len(blob), mine, kind)
        entries = (entry,) if kind == "base" or m is None else (*m.entries, entry)
        new = Manifest(seq, mine, entries)
        self.blobs.put(name, blob)
        self.blobs.put(self._prefix(partition) + "manifest", new.encode())
        self._manifests[str(partition)] = new
        self._collect(partition, new, m)
        return True

    def _collect(self, partition: int | str, new: Manifest, old: Manifest | None) -> None:
        """Delete the blobs the committed manifest ``new`` no longer lists: those ``old``
        listed, and on a new base every unlisted one up to its number (left by a crash
        between a blob and its manifest; a higher number may be another writer's, in
        flight)."""
        keep = {e.name for e in new.entries}
        gone = [e.name for e in old.entries if e.name not in keep] if old is not None else []
        if new.entries[-1].kind == "base":
            prefix = self._prefix(partition)
            for name in self.blobs.names(prefix):
                rest = name[len(prefix):]
                if rest != "manifest" and name not in keep and _seq(rest) <= new.seq:
                    gone.append(name)
            if old is None:
                gone.append(self._legacy(partition))  # upgraded: the manifest replaces it
        for name in dict.fromkeys(gone):
            self.blobs.delete(name)

    # -- compaction -------------------------------------------------------------------
    def wants_compaction(self, partition: int | str) -> bool:
        """Whether the committed deltas of ``partition`` outgrew its base (compaction on)."""
        m = self._manifests.get(str(partition))
        return self.compact_blobs and m is not None and m.wants_compaction(self.max_deltas)

    def compact(self, partition: int | str) -> bool:
        """Fold the committed base and deltas into one new base, from the blobs, not from the
        live state: the owner runs it without holding its state's lock, so batches go on, and
        the deltas the owner writes meanwhile continue it (its manifest entry's ``chain``).
        Not written (False) when nothing is due or another write replaced those blobs
        meanwhile (a base, another owner).  Thread-safe."""
        with self._write_lock:
            m = self.manifest(partition)
        if m is None or not m.wants_compaction(self.max_deltas):
            return False
        try:
            blob = self.encode(self._merged(partition, m), m.next_offset)
        except StateError as exc:  # a blob replaced meanwhile (or damaged: loading says so)
            log.info("compaction of %s-%s skipped: %s", self.topic, partition, exc)
            return False
        with self._write_lock:
            now = self.manifest(partition)
            n = len(m.entries)
            if now is None or now.entries[:n] != m.entries:
                return False
            sha = hashlib.sha256(blob).hexdigest()
            seq = now.seq + 1
            name = f"{self._prefix(partition)}base-{seq:010d}-{sha[:16]}"
            entry = Entry(name, sha, len(blob), m.next_offset, "base", chain=m.tip)
            new = Manifest(seq, now.next_offset, (entry, *now.entries[n:]))
            try:
                self.blobs.put(name, blob)
                self.blobs.put(self._prefix(partition) + "manifest", new.encode())
            except Exception as exc:  # the committed manifest still stands: tried again later
                log.warning("compaction of %s-%s not written (%s: %s)", self.topic, partition,
                            type(exc).__name__, exc)
                return False
            self._manifests[str(partition)] = new
            self._collect(partition, new, now)
        return True

    # -- reading ----------------------------------------------------------------------
    def read(self, partition: int | str) -> dict[str, Any] | None:
        """The snapshot's state document (base + deltas: what ``to_dict`` wrote), None when
        there is none; StateError when it cannot be used."""
        return self.read_beside(partition)[0]

    def read_beside(self, partition: int | str
                    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """(:meth:`read`'s document, what the writer recorded beside the state: the ``extra``
        of :meth:`capture`, keys :data:`BESIDE`)."""
        d = self._read_doc(partition)
        if d is None:
            return None, {}
        return d, {k: d.pop(k) for k in BESIDE if k in d}

    def _read_doc(self, partition: int | str) -> dict[str, Any] | None:
        tries = 0
        while True:
            m = self.manifest(partition)
            if m is None:
                self._manifests.pop(str(partition), None)
                return self._read_legacy(partition)
            try:
                return self._merged(partition, m)
            except StateError:
                # a write committed meanwhile (a compaction still running for a partition
                # revoked and assigned again, another owner) deletes the blobs it replaced:
                # read the new manifest; the same one means the blobs are damaged
                tries += 1
                if tries >= 3 or self.manifest(partition) == m:
                    raise

    def _merged(self, partition: int | str, m: Manifest) -> dict[str, Any]:
        docs = []
        for e in m.entries:
            blob = self.blobs.get(e.name)
            where = f"snapshot {self.topic}-{partition} blob {e.name}"
            if blob is None:
                raise StateError(f"{where} is missing: run `profiles rebuild`")
            if hashlib.sha256(blob).hexdigest() != e.sha256:
                raise StateError(f"{where} is corrupt (sha256 mismatch): run `profiles rebuild`")
            skip = _HEADER + (32 if e.kind == "delta" else 0)
            docs.append(self._unpack(blob[skip:], where))
        try:
            return merge(docs[0], docs[1:])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise StateError(f"snapshot {self.topic}-{partition} cannot be merged "
                             f"({type(exc).__name__}: {exc}): run `profiles rebuild`") from exc

    def _read_legacy(self, partition: int | str) -> dict[str, Any] | None:
        path = self.path(partition)
        blob = self.blobs.get(self._legacy(partition))
        if blob is None:
            return None
        if blob.startswith(_LEGACY):
            raise StateError(
                f"snapshot {path} is in the pickle format of earlier versions, which this "
                "version refuses to load (a pickle can run code): recompute the state from the "
                "topics with `profiles rebuild --swap` (it writes a fresh state folder)")
        if not blob.startswith(_MAGIC):
            raise StateError(f"snapshot {path} is not a profiles snapshot (bad header): run "
                             "`profiles rebuild` to recompute the state")
        return self._unpack(blob[_HEADER:], f"snapshot {path}")

    @staticmethod
    def _unpack(payload: bytes, where: str) -> dict[str, Any]:
        try:
            data = unpack(payload)
        except Exception as exc:  # any malformed archive or document: data, never code
            raise StateError(f"{where} is corrupt ({type(exc).__name__}: {exc}): run "
                             "`profiles rebuild` to recompute the state") from exc
        if not isinstance(data, dict):
            raise StateError(f"{where} holds a {type(data).__name__}, not a state: run "
                             "`profiles rebuild`")
        return data


def start_compaction(store: SnapshotStore, partition: int,
                     running: asyncio.Future[bool] | None) -> asyncio.Future[bool] | None:
    """``store.compact(partition)`` on an executor thread when it is due and none is running
    (``running``); returns the one running now.  The caller does not wait: snapshots of the
    other partitions go on meanwhile (a compaction at 25,000 users takes seconds)."""
    if (running is not None and not running.done()) or not store.wants_compaction(partition):
        return running
    fut = asyncio.get_running_loop().run_in_executor(None, store.compact, partition)
    fut.add_done_callback(_compaction_done)
    return fut


async def finish_compaction(running: asyncio.Future[bool] | None) -> None:
    """Wait for the compaction ``running`` (if any); its failure was logged already."""
    if running is not None:
        await asyncio.wait([running])


def _compaction_done(fut: asyncio.Future[bool]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("snapshot compaction failed (the committed snapshot stands)",
                  exc_info=fut.exception())


def snapshot_kind(blob: bytes) -> str:
    """``base`` or ``delta``: what a blob of :meth:`SnapshotStore.dumps` is."""
    return "delta" if blob.startswith(_DELTA) else "base"


def _seq(rest: str) -> int:
    """The number in a blob name ``base-<seq>-<sha>`` (a huge one when it has none: kept)."""
    parts = rest.split("-")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 1 << 62


class Scheduler:
    """Which partition to snapshot when, within a share of the time.

    A changed (``dirty``) partition is due once its last snapshot is ``interval_s`` old; the
    timer writes at most *one* partition per call, the due one whose snapshot is oldest.  After
    a snapshot that took ``c`` seconds to capture and pack the next waits ``c / budget``: both
    run on an executor thread, the capture while the pipeline's lock is held (requests are
    answered, batches wait), the pack after it (batches go on), so this bounds the share of time
    snapshots take (the interval stretches as the state grows).
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

    def paced(self, seconds: float) -> None:
        """The snapshot :meth:`serialised` (captured) took ``seconds`` in all once packed
        (the pack runs without the lock, but on the same cores): the next waits
        ``seconds / budget`` from now, as when the whole of it held the lock."""
        self._not_before = max(self._not_before, self.monotonic() + seconds / self.budget)

    def written_now(self, partition: int) -> None:
        """A snapshot outside the schedule (revocation, shutdown)."""
        self._at[partition] = self.monotonic()
        self.dirty.discard(partition)

