"""The ``auto`` and ``ivf`` index kinds: exact below a size threshold, FAISS IVF above it.

:class:`IvfIndex` keeps every live vector in a :class:`FlatIndex` (string ids, slots, ``get``,
``state``, the exact search) and, once the index holds ``exact_below`` vectors, also an
``IndexIVFFlat`` with an HNSW coarse quantiser (factory string ``IVF{nlist}_HNSW32,Flat``,
inner product) whose labels are the flat slots.  The IVF has a hashtable direct map, so an
update is ``remove_ids`` + ``add_with_ids`` of that one slot and a removal is ``remove_ids``:
both touch only the id's own list (O(1) per id), nothing is tombstoned, and memory does not
grow with churn.  A removed or changed vector is therefore never returned stale.

Training the coarse centroids (k-means) is the only "rebuild".  It happens when the index
first reaches ``exact_below`` vectors and again when it has grown 4x since the last training.
With ``background=True`` it runs on a copy of the live vectors (taken ``COPY_CHUNK`` rows per
call, each row with its version) in a daemon thread (FAISS releases the GIL; the thread uses
one OpenMP thread) while searches keep using the previous
structure (exact search, or the old IVF kept up to date); then the calls on the owner thread
re-apply every slot whose version changed since the copy, ``CATCH_UP`` rows per call, and
install the new IVF once it is current.  The index answers correctly at every moment; only
its speed changes.

Not thread-safe for callers: the worker calls it from a single event loop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import faiss as _faiss_typed
import numpy as np

from index.flat import FlatIndex

# FAISS's partial type stubs lack the IVF/HNSW search parameters and the direct map
faiss: Any = _faiss_typed

__all__ = ["DEFAULT_EXACT_BELOW", "IvfIndex", "auto_nprobe", "choose_nlist"]

log = logging.getLogger(__name__)

#: catalogue/user counts below this are searched exactly (issue 12: at most 2e4)
DEFAULT_EXACT_BELOW = 20_000
#: fewest training points per centroid (FAISS warns below 39)
MIN_POINTS_PER_LIST = 39
#: retrain when the index has grown this many times since the last training
REGROW = 4.0
HNSW_M = 32
#: rows a finished training catches up per call before it is installed
CATCH_UP = 1024
#: rows copied per call for a background training (the copy of all would block the loop)
COPY_CHUNK = 8192


def choose_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: about 4*sqrt(n), with >= 39 points per list."""
    return int(max(1, min(4 * math.sqrt(max(n, 1)), n // MIN_POINTS_PER_LIST, 65_536)))


def auto_nprobe(nlist: int) -> int:
    """Lists probed per query when not set: a tenth of the lists, 32 to 256 (recall and
    latency measured with ``python -m index.bench``)."""
    return int(min(nlist, max(32, min(256, nlist // 10))))


class _Build:
    """A training job: copies of the slots, their versions, vectors and liveness (filled
    ``COPY_CHUNK`` rows per call), and the result."""

    def __init__(self, slots: np.ndarray, dim: int) -> None:
        self.slots = slots
        self.versions = np.zeros(slots.size, dtype=np.uint32)
        self.vectors = np.empty((slots.size, dim), dtype=np.float32)  # pages touched per chunk
        self.live = np.zeros(slots.size, dtype=bool)  # still live when its row was copied
        self.copied = 0
        self.index: Any = None
        self.nlist = 0
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.held: np.ndarray | None = None  # catch-up: slot -> version held by ``index``


class IvfIndex:
    """Exact below ``exact_below`` vectors, IVF (HNSW coarse quantiser) with live updates and
    removals above it; the :class:`index.base.VectorIndex` protocol either way."""

    def __init__(self, dim: int, name: str = "", *, exact_below: int = DEFAULT_EXACT_BELOW,
                 nprobe: int = 0, background: bool = True, seed: int = 0) -> None:
        self._exact = FlatIndex(dim, name=name)
        self.dim = dim
        self.name = name
        self.exact_below = max(int(exact_below), 2 * MIN_POINTS_PER_LIST)
        self.nprobe = int(nprobe)
        self.background = background
        self.seed = seed
        self._ivf: Any = None  # faiss.IndexIVFFlat once trained
        self._nlist = 0
        self._trained_n = 0
        self._ver = np.zeros(0, dtype=np.uint32)  # slot -> change counter
        self._job: _Build | None = None
        self.trainings = 0  # installed trainings (a figure for the bench and tests)

    # -- what is in use ------------------------------------------------------------------
    @property
    def factory(self) -> str:
        """The FAISS factory string of the structure searches use now."""
        return "Flat" if self._ivf is None else f"IVF{self._nlist}_HNSW{HNSW_M},Flat"

    @property
    def building(self) -> bool:
        """Whether a background training is in progress."""
        return self._job is not None

    def wait_built(self, timeout: float | None = None) -> bool:
        """Wait for a background training and install it; returns False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (job := self._job) is not None:
            if job.thread is not None and job.thread.is_alive():
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                job.thread.join(left)
                if job.thread.is_alive():
                    return False
            self._poll()
        return True

    # -- mutation --------------------------------------------------------------------------
    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or overwrite; within one call the last duplicate id wins."""
        self._poll()
        self._exact.upsert(ids, vectors)  # validates; raises before changing anything
        slot_of = self._exact._slot_of
        slots = np.fromiter((slot_of[i] for i in dict.fromkeys(ids)), dtype=np.int64)
        if slots.size:
            top = int(slots.max()) + 1
            if top > self._ver.size:
                grown = np.zeros(max(top, 2 * self._ver.size), dtype=np.uint32)
                grown[: self._ver.size] = self._ver
                self._ver = grown
            self._ver[slots] += 1
            if self._ivf is not None:
                self._ivf_remove(self._ivf, slots)
                self._ivf.add_with_ids(self._exact._view[slots], slots)
        self._maybe_train()

    def remove(self, ids: Iterable[str]) -> int:
        """Drop ids (unknown ones are ignored); returns how many were live."""
        self._poll()
        if isinstance(ids, str):
            raise TypeError("ids must be an iterable of str, not a single str")
        ids = list(ids)
        slot_of = self._exact._slot_of
        slots = np.fromiter({slot_of[i] for i in ids if i in slot_of}, dtype=np.int64)
        removed = self._exact.remove(ids)
        if slots.size:
            self._ver[slots] += 1
            if self._ivf is not None:
                self._ivf_remove(self._ivf, slots)
        self._maybe_train()
        return removed

    @staticmethod
    def _ivf_remove(ivf: Any, slots: np.ndarray) -> None:
        arr = np.ascontiguousarray(slots, dtype=np.int64)
        # the hashtable direct map removes only through an IDSelectorArray (O(1) per id)
        ivf.remove_ids(faiss.IDSelectorArray(arr.size, faiss.swig_ptr(arr)))

    # -- queries ---------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, exclude: Sequence[set[str]] | None = None
               ) -> list[list[tuple[str, float]]]:
        """Per query, up to ``k`` (id, inner product) pairs, best first, never excluded."""
        self._poll()
        ivf = self._ivf
        if ivf is None:
            return self._exact.search(queries, k, exclude)
        q = self._exact._check(queries, "queries", allow_1d=True)
        m = q.shape[0]
        if exclude is not None and len(exclude) != m:
            raise ValueError(f"exclude has {len(exclude)} sets for {m} queries")
        n = len(self._exact)
        if k <= 0 or n == 0 or m == 0:
            return [[] for _ in range(m)]
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        fetch = min(n, k + extra)
        nprobe = min(self._nlist, self.nprobe or auto_nprobe(self._nlist))
        params = faiss.SearchParametersIVF(
            nprobe=nprobe, quantizer_params=faiss.SearchParametersHNSW(efSearch=max(64, 2 * nprobe)))
        scores, labels = ivf.search(q, fetch, params=params)
        id_at = self._exact._id_at
        results: list[list[tuple[str, float]]] = []
        for qi in range(m):
            skip = exclude[qi] if exclude is not None else None
            hits: list[tuple[str, float]] = []
            for score, slot in zip(scores[qi].tolist(), labels[qi].tolist()):
                if slot < 0:
                    break
                id_ = id_at[slot]
                if id_ is None or (skip and id_ in skip):
                    continue
                hits.append((id_, score))
                if len(hits) == k:
                    break
            if len(hits) < k and len(hits) < n - (len(skip) if skip else 0):
                # the probed lists held too few vectors: answer this query exactly
                hits = self._exact.search(q[qi], k, None if skip is None else [skip])[0]
            results.append(hits)
        return results

    def get(self, id: str) -> np.ndarray | None:
        return self._exact.get(id)

    def get_many(self, ids: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        return self._exact.get_many(ids)

    def __len__(self) -> int:
        return len(self._exact)

    def __contains__(self, id: object) -> bool:
        return id in self._exact

    def ids(self) -> list[str]:
        return self._exact.ids()

    # -- snapshots ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Live rows only (ids and vectors): the IVF is rebuilt from them on load."""
        return self._exact.state()

    @classmethod
    def from_state(cls, state: dict[str, Any], **options: Any) -> IvfIndex:
        flat = FlatIndex.from_state(state)  # validates
        idx = cls(flat.dim, name=flat.name, **options)
        st = flat.state()
        if st["ids"]:
            idx.upsert(st["ids"], st["vectors"])
        return idx

    # -- training ------------------------------------------------------------------------------
    def _maybe_train(self) -> None:
        if self._job is not None:
            return
        n = len(self._exact)
        if self._ivf is not None and n < self.exact_below // 2:
            log.info("%s index: %d vectors, back to exact search", self.name or "an", n)
            self._ivf, self._nlist, self._trained_n = None, 0, 0
            return
        if n < self.exact_below or (self._ivf is not None and n < REGROW * self._trained_n):
            return
        slots = np.fromiter(self._exact._slot_of.values(), dtype=np.int64, count=n)
        job = _Build(slots, self.dim)
        self._job = job
        if self.background:
            self._copy_step(job, COPY_CHUNK)  # the rest on the next calls, then the thread
        else:
            self._copy_step(job, n)
            self._build(job, False)
            self._poll()

    def _copy_step(self, job: _Build, rows: int) -> None:
        """Copy the next ``rows`` rows with their versions; start the training after the last.
        A row's version is taken with it, so a slot changed later is caught up, like any
        change made during the training."""
        lo = job.copied
        hi = min(lo + rows, job.slots.size)
        part = job.slots[lo:hi]
        job.vectors[lo:hi] = self._exact._view[part]
        job.versions[lo:hi] = self._ver[part]
        id_at = self._exact._id_at
        job.live[lo:hi] = np.fromiter((id_at[s] is not None for s in part.tolist()),
                                      dtype=bool, count=part.size)
        job.copied = hi
        if hi == job.slots.size and self.background:
            job.thread = threading.Thread(target=self._build, args=(job, True), daemon=True,
                                          name=f"ivf-train-{self.name}")
            job.thread.start()

    def _build(self, job: _Build, background: bool) -> None:
        """Train and fill a new IVF from the job's copies (touches nothing else).

        One OpenMP thread: the result is then deterministic (parallel k-means sums and HNSW
        inserts are not), and a background build leaves the other cores to the event loop.
        The setting is per calling thread; an inline build restores it."""
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            vectors, slots = job.vectors, job.slots
            if not job.live.all():  # slots removed between the listing and their copy
                vectors, slots = vectors[job.live], slots[job.live]
            n = slots.size
            nlist = choose_nlist(n)
            ivf = faiss.index_factory(self.dim, f"IVF{nlist}_HNSW{HNSW_M},Flat",
                                      faiss.METRIC_INNER_PRODUCT)
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            ivf.cp.seed = self.seed
            ivf.cp.min_points_per_centroid = 1
            ivf.cp.niter = 15
            cap = nlist * 40  # a seeded sample is enough for the centroids
            sample = vectors
            if n > cap:
                pick = np.random.default_rng(self.seed).choice(n, cap, replace=False)
                sample = vectors[np.sort(pick)]
            ivf.train(sample)
            ivf.add_with_ids(vectors, slots)
            job.index, job.nlist = ivf, nlist
        except BaseException as exc:  # reported by _poll on the owner thread
            job.error = exc
        finally:
            if not background:
                faiss.omp_set_num_threads(threads)

    def _poll(self) -> None:
        """Bring a finished training up to date, at most ``CATCH_UP`` rows per call, then
        install it (owner thread only).  Until then searches use the previous structure."""
        job = self._job
        if job is None:
            return
        if job.copied < job.slots.size:
            self._copy_step(job, COPY_CHUNK)
            return
        if job.thread is not None and job.thread.is_alive():
            return
        if job.error is not None or job.index is None:
            self._job = None
            log.error("%s index: IVF training failed (%r); searching exactly",
                      self.name or "an", job.error)
            return
        ivf = job.index
        if job.held is None:  # slot -> the version the new IVF holds (0: none)
            job.held = np.zeros(self._ver.size, dtype=np.uint32)
            job.held[job.slots] = job.versions
        if job.held.size < self._ver.size:
            job.held = np.concatenate(
                [job.held, np.zeros(self._ver.size - job.held.size, dtype=np.uint32)])
        # Re-apply what changed since the copy: stale rows out, current rows of live slots in.
        diff = np.flatnonzero(self._ver != job.held)
        chunk = diff[:CATCH_UP]
        if chunk.size:
            self._ivf_remove(ivf, chunk)
            id_at = self._exact._id_at
            live = chunk[np.fromiter((id_at[s] is not None for s in chunk.tolist()),
                                     dtype=bool, count=chunk.size)]
            if live.size:
                ivf.add_with_ids(self._exact._view[live], live)
            job.held[chunk] = self._ver[chunk]
        if diff.size > CATCH_UP:
            return  # the rest on the next calls: no call blocks for long
        self._job = None
        self._ivf, self._nlist, self._trained_n = ivf, job.nlist, job.slots.size
        self.trainings += 1
        log.info("%s index: %s over %d vectors", self.name or "an", self.factory, len(self))
