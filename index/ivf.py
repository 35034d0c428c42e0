"""The ``auto`` and ``ivf`` index kinds: exact below a size threshold, FAISS IVF above it.

:class:`IvfIndex` maps string ids to int64 slots and keeps each live vector in **one** store:

- below ``exact_below`` vectors, a float32 matrix (row = slot), searched exactly;
- from ``exact_below`` on, an IVF with an HNSW coarse quantiser (inner product) whose labels are
  the slots, with a hashtable direct map.  With ``codes="Flat"`` (factory string
  ``IVF{nlist}_HNSW32,Flat``) the IVF's lists *are* the store: ``get`` reconstructs from them
  and the matrix is dropped once the IVF is installed.  With compressed codes (``"SQ8"``,
  ``"SQ4"``, ...) and a ``source`` (a callable giving the exact current vectors of ids, such as
  the profile tables for the users index) the IVF holds only the codes, candidates are re-ranked
  exactly from ``source``, and again no second float32 copy is kept (issue 12: one copy of each
  vector).  Compressed codes without a source keep the matrix for the re-rank.

An update is ``remove_ids`` + ``add_core`` of that one slot and a removal is ``remove_ids``:
both touch only the id's own list (O(1) per id), nothing is tombstoned, and memory does not grow
with churn.  A removed or changed vector is therefore never returned stale.

The list a changed vector goes to (its coarse assignment) is found by a local search from the
list it is in (:func:`local_lists`): the best-scoring centroid among that list's and its
``COARSE_NEIGHBOURS`` nearest centroids', repeated from the winner until it stays.  A profile
moves a little per event, so it almost always stays: its list is then a local optimum on the
centroids' neighbour graph, the list it was in.  Only new vectors and those that move pay the
search over all centroids below (~13 us a row at 4,000 lists and dim 384 on one core, in
chunks; the local search costs ~2), and a moved one takes whichever of the two centroids scores
higher.  So an update's list never scores below the list it was in nor, for a moved vector,
below its best list over all (issue 12: the update rate at 10^5 users).

A new vector's list (at the build, the catch-up, an insert, or an update that moved) is its
best-scoring centroid, found exactly (:func:`assign_lists`: one product with the centroids, in
chunks) up to ``EXACT_ASSIGN_LISTS`` lists, and by the HNSW quantiser with ``ASSIGN_EF`` above.
FAISS's own ``add`` asks the HNSW quantiser with its default ``efSearch`` of 16, which at 4,000
lists put ~3 % of the vectors in a list that was not their best: searches probing the best
lists for a query never found them, so recall@20 stayed near 0.98 however many lists were
probed (0.9785 at 32, 0.9883 at 256).  Assigned exactly, 16 probes gave 0.9998.

Training the coarse centroids (k-means) is the only "rebuild".  It happens when the index
first reaches ``exact_below`` vectors and again when it has grown 4x since the last training.
With ``background=True`` it runs on a copy of the live vectors (taken ``COPY_CHUNK`` rows per
call, each row with its version; the only time a second copy exists) in a daemon thread (FAISS
releases the GIL; the thread uses one OpenMP thread) while searches keep using the previous
structure (exact search, or the old IVF kept up to date); then the calls on the owner thread
re-apply every slot whose version changed since the copy, ``CATCH_UP`` rows per call, and
install the new IVF once it is current.  The index answers correctly at every moment; only
its speed changes.  Below ``exact_below // 2`` vectors it goes back to the exact matrix.

Not thread-safe for callers: the worker calls it from a single event loop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import faiss as _faiss_typed
import numpy as np

from index.slots import SlotIndex, checked

# FAISS's partial type stubs lack the IVF/HNSW search parameters and the direct map
faiss: Any = _faiss_typed

__all__ = ["CODES", "DEFAULT_EXACT_BELOW", "Coarse", "IvfIndex", "VectorSource",
           "assign_lists", "auto_nprobe", "calibration_queries", "choose_nlist", "local_lists",
           "probe_ladder"]

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
#: the IVF's code kinds: exact float32 ("Flat") or scalar-quantised (re-ranked exactly)
CODES: tuple[str, ...] = ("Flat", "SQfp16", "SQ8", "SQ6", "SQ4")
#: nearest centroids (besides its own) an updated vector's list is searched among
COARSE_NEIGHBOURS = 16
#: rounds of that local search (a moved vector takes the HNSW choice when it scores higher)
COARSE_ROUNDS = 3
#: up to this many lists a vector's list is its best centroid found exactly (~13 us a row at
#: 4,000 lists and dim 384, one thread, in chunks; the HNSW quantiser at efSearch 16 took 39
#: and missed the best list for 3 % of the rows); above, the HNSW quantiser at ``ASSIGN_EF``
EXACT_ASSIGN_LISTS = 16_384
#: the HNSW quantiser's efSearch for assignments above ``EXACT_ASSIGN_LISTS`` (at 4,000 lists:
#: 64 agreed with the exact list for 99.97 % of rows, 128 for all of 10^5)
ASSIGN_EF = 128
#: rows per product of the exact assignment (1024 x 4,000 scores: 16 MB)
_ASSIGN_CHUNK = 1024
#: a calibrated search never probes fewer lists (a margin for queries unlike the sample)
MIN_PROBES = 16
#: queries and neighbours (k) of a calibration
CALIBRATION_QUERIES = 128
CALIBRATION_K = 20
#: recall@k against exact search that the calibrated probe count reaches (PROFILES_INDEX_TARGET_RECALL)
DEFAULT_TARGET_RECALL = 0.99

#: the exact current vectors of ids (float32 [n, dim]; zero rows for ids it does not know)
VectorSource = Callable[[Sequence[str]], np.ndarray]


def choose_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: about 4*sqrt(n), with >= 39 points per list."""
    return int(max(1, min(4 * math.sqrt(max(n, 1)), n // MIN_POINTS_PER_LIST, 65_536)))


def auto_nprobe(nlist: int) -> int:
    """Lists probed per query before a calibration has chosen (and if it failed): a tenth of
    the lists, 32 to 256."""
    return int(min(nlist, max(32, min(256, nlist // 10))))


def probe_ladder(nlist: int) -> list[int]:
    """The probe counts a calibration tries, fewest first: ``MIN_PROBES``, doubling, then all
    ``nlist`` lists (exhaustive: exact)."""
    out = [min(MIN_PROBES, nlist)]
    while out[-1] < nlist:
        out.append(min(2 * out[-1], nlist))
    return out


def calibration_queries(vectors: np.ndarray, lists: np.ndarray, m: int, seed: int
                        ) -> np.ndarray:
    """``m`` profile-like queries from the stored ``vectors`` (float32 [n, dim]) and their
    lists: a random vector mixed with 1-7 others of its own list, weights decaying 0.8 a step
    (a profile is a decayed sum of a few similar items), normalised.  Never a stored vector
    alone unless its list holds only it."""
    rng = np.random.default_rng(seed)
    n = vectors.shape[0]
    order = np.argsort(lists, kind="stable")
    starts = np.searchsorted(lists[order], lists)  # each row's list: [start, end) in order
    ends = np.searchsorted(lists[order], lists, side="right")
    out = np.empty((m, vectors.shape[1]), dtype=np.float64)
    for i in range(m):
        a = int(rng.integers(0, n))
        lo, hi = int(starts[a]), int(ends[a])
        k = int(rng.integers(1, 8))
        rows = np.concatenate([[a], order[lo + rng.integers(0, hi - lo, k)]])
        w = 0.8 ** np.arange(rows.size)
        out[i] = w @ vectors[rows].astype(np.float64)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norm > 0, norm, 1.0)).astype(np.float32)


class Coarse:
    """An IVF's centroids (float32 [nlist, dim]) and each centroid's ``COARSE_NEIGHBOURS + 1``
    nearest centroids by inner product, itself first (int64 [nlist, K + 1])."""

    def __init__(self, ivf: Any, chunk: int = 1024) -> None:
        nlist = int(ivf.nlist)
        self.centroids = np.ascontiguousarray(ivf.quantizer.reconstruct_n(0, nlist),
                                              dtype=np.float32)
        k = min(COARSE_NEIGHBOURS, nlist - 1)
        self.neighbours = np.empty((nlist, k + 1), dtype=np.int64)
        # ``chunk`` rows of the centroids' scores at a time: all of them at once would be
        # nlist^2 floats (1 GB at 16,384 lists)
        for lo in range(0, nlist, chunk):
            hi = min(lo + chunk, nlist)
            g = self.centroids[lo:hi] @ self.centroids.T
            g[np.arange(hi - lo), np.arange(lo, hi)] = np.inf  # itself first, whatever its norm
            near = np.argpartition(-g, k, axis=1)[:, :k + 1] if k + 1 < nlist else \
                np.tile(np.arange(nlist), (hi - lo, 1))
            # order each row by score, best first (itself: +inf)
            order = np.argsort(-np.take_along_axis(g, near, axis=1), axis=1, kind="stable")
            self.neighbours[lo:hi] = np.take_along_axis(near, order, axis=1)


def assign_lists(coarse: Coarse, quantizer: Any, x: np.ndarray) -> np.ndarray:
    """Each row's best-scoring (inner product) centroid: exact up to ``EXACT_ASSIGN_LISTS``
    lists (the first on a tie), the HNSW ``quantizer`` at ``ASSIGN_EF`` above (int64 [n])."""
    n = x.shape[0]
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    c = coarse.centroids
    if len(c) <= EXACT_ASSIGN_LISTS:
        for lo in range(0, n, _ASSIGN_CHUNK):
            out[lo:lo + _ASSIGN_CHUNK] = np.argmax(x[lo:lo + _ASSIGN_CHUNK] @ c.T, axis=1)
        return out
    params = faiss.SearchParametersHNSW(efSearch=ASSIGN_EF)
    _, labels = quantizer.search(np.ascontiguousarray(x, dtype=np.float32), 1, params=params)
    out[:] = labels.reshape(-1)
    return out


def local_lists(coarse: Coarse, x: np.ndarray, start: np.ndarray,
                rounds: int = COARSE_ROUNDS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From list ``start[i]``, the best-scoring (inner product) of its and its neighbours'
    centroids for ``x[i]``, again from the winner, until it stays (at most ``rounds``).
    Returns (lists, their scores, whether the row still moved in the last round)."""
    lists = start.astype(np.int64, copy=True)
    scores = np.zeros(lists.size, dtype=np.float32)
    rows = np.arange(lists.size)
    moving = np.zeros(lists.size, dtype=bool)
    c, nb = coarse.centroids, coarse.neighbours
    x = np.ascontiguousarray(x, dtype=np.float32)
    for _ in range(rounds):
        if not rows.size:
            break
        cand = nb[lists[rows]]  # [m, K + 1] (a fancy-indexed copy: C-contiguous)
        xr = x if rows.size == x.shape[0] else x[rows]
        s = np.empty(cand.shape, dtype=np.float32)
        # each row's products with its candidate centroids in C, without gathering them (a
        # copy of K + 1 centroids per row took ~3/4 of the time: 6 us a row at dim 384)
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(s), faiss.swig_ptr(xr),
                                         faiss.swig_ptr(c), faiss.swig_ptr(cand),
                                         x.shape[1], rows.size, cand.shape[1])
        best = np.argmax(s, axis=1)  # ties: the first (its own list comes first)
        pick = cand[np.arange(rows.size), best]
        scores[rows] = s[np.arange(rows.size), best]
        moved = pick != lists[rows]
        lists[rows] = pick
        moving[:] = False
        moving[rows[moved]] = True
        rows = rows[moved]
    return lists, scores, moving


def _exact_top(q: np.ndarray, x: np.ndarray, k: int, chunk: int = 65_536) -> np.ndarray:
    """Rows of ``x`` with the ``k`` highest inner products per query (unordered), in chunks
    of ``x`` (128 queries x 65,536 rows: 32 MB of scores at a time)."""
    best_s = np.full((q.shape[0], 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((q.shape[0], 0), dtype=np.int64)
    for lo in range(0, x.shape[0], chunk):
        s = np.concatenate([best_s, q @ x[lo:lo + chunk].T], axis=1)
        rows = np.arange(lo, min(lo + chunk, x.shape[0]), dtype=np.int64)
        i = np.concatenate([best_i, np.broadcast_to(rows, (q.shape[0], rows.size))], axis=1)
        keep = np.argpartition(-s, k - 1, axis=1)[:, :k] if s.shape[1] > k else \
            np.broadcast_to(np.arange(s.shape[1]), s.shape)
        best_s = np.take_along_axis(s, keep, axis=1)
        best_i = np.take_along_axis(i, keep, axis=1)
    return best_i


def _add(ivf: Any, vals: np.ndarray, slots: np.ndarray, lists: np.ndarray) -> None:
    """Put float32 rows ``vals`` into ``ivf`` under labels ``slots``, each in its list
    ``lists[i]`` (FAISS's ``add`` would ask the quantiser at its own efSearch)."""
    vals = np.ascontiguousarray(vals, dtype=np.float32)
    slots = np.ascontiguousarray(slots, dtype=np.int64)
    ivf.add_core(slots.size, faiss.swig_ptr(vals), faiss.swig_ptr(slots),
                 faiss.swig_ptr(np.ascontiguousarray(lists, dtype=np.int64)))


def _grown_lists(lists: np.ndarray, size: int) -> np.ndarray:
    """``lists`` (slot -> list, int32) covering at least ``size`` slots, new ones -1."""
    if lists.size >= size:
        return lists
    out = np.full(size, -1, dtype=np.int32)
    out[: lists.size] = lists
    return out


#: the scalar quantiser type of each lossy code kind
_SQ_TYPES = {"SQfp16": faiss.ScalarQuantizer.QT_fp16, "SQ8": faiss.ScalarQuantizer.QT_8bit,
             "SQ6": faiss.ScalarQuantizer.QT_6bit, "SQ4": faiss.ScalarQuantizer.QT_4bit}


def _sq_size(dim: int, codes: str) -> int:
    """Floats of trained ranges an IVF of ``codes`` holds (0 for ``Flat``): asked of FAISS by
    training the same kind on two rows, so a kept array of another length is refused rather
    than read past its end."""
    qtype = _SQ_TYPES.get(codes)
    if qtype is None:
        return 0
    sq = faiss.ScalarQuantizer(dim, qtype)
    x = np.zeros((2, dim), dtype=np.float32)
    x[1] = 1.0
    sq.train(x)
    return int(sq.trained.size())


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
        self.coarse: Coarse | None = None
        self.nlist = 0
        self.calibration: dict[int, float] = {}
        self.probes = 0
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.held: np.ndarray | None = None  # catch-up: slot -> version held by ``index``
        self.lists = np.full(0, -1, dtype=np.int32)  # slot -> its list in ``index`` (-1: none)
        #: trained centroids to reuse instead of k-means (:meth:`IvfIndex.adopt_trained`)
        self.preset: _Trained | None = None
        self.trained_n = slots.size  # the size the regrow rule counts from


class _Trained:
    """A trained IVF's reusable parts (:meth:`IvfIndex.trained_state`), checked: centroids
    float32 [nlist, dim], the scalar quantiser's trained ranges (lossy codes), the size it was
    trained at, its calibration; and optionally each vector's list (``lists``, aligned with
    the slots it is adopted for)."""

    def __init__(self, centroids: np.ndarray, sq: np.ndarray | None, trained_n: int,
                 probes: int, calibration: dict[int, float],
                 lists: np.ndarray | None = None) -> None:
        self.centroids = centroids
        self.sq = sq
        self.trained_n = trained_n
        self.probes = probes
        self.calibration = calibration
        self.lists = lists


class IvfIndex(SlotIndex):
    """Exact below ``exact_below`` vectors, IVF (HNSW coarse quantiser) with live updates and
    removals above it; the :class:`index.base.VectorIndex` protocol either way."""

    def __init__(self, dim: int, name: str = "", *, exact_below: int = DEFAULT_EXACT_BELOW,
                 nprobe: int = 0, background: bool = True, seed: int = 0,
                 codes: str = "Flat", source: VectorSource | None = None,
                 target_recall: float = DEFAULT_TARGET_RECALL) -> None:
        super().__init__(dim, name)
        if not 0.0 < target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        if codes not in CODES:
            raise ValueError(f"unknown IVF codes {codes!r}; expected one of {CODES}")
        self.exact_below = max(int(exact_below), 2 * MIN_POINTS_PER_LIST)
        self.nprobe = int(nprobe)
        self.target_recall = float(target_recall)
        #: the calibration of the IVF in use: {probes: recall@k} on its sample, and the pick
        self.calibration: dict[int, float] = {}
        self._calibrated = 0  # the probe count it chose (0: none yet; auto_nprobe)
        self.background = background
        self.seed = seed
        self.codes = codes
        self.source = source
        # the IVF replaces the matrix as the store unless its codes are lossy with no source
        self._ivf_is_store = codes == "Flat" or source is not None
        self._live = np.zeros(0, dtype=bool)  # slot -> live
        self._ver = np.zeros(0, dtype=np.uint32)  # slot -> change counter
        self._mat: np.ndarray | None = np.zeros((0, dim), dtype=np.float32)  # exact store
        self._ivf: Any = None  # faiss.IndexIVF* once trained
        self._coarse: Coarse | None = None  # its centroids and their neighbours (updates)
        # slot -> its list in the IVF (-1: not in it).  FAISS's hashtable direct map has it too,
        # but one ``direct_map.get`` call from Python took ~2.5 us, 4 bytes a slot here do not
        self._list_at = np.full(0, -1, dtype=np.int32)
        self._nlist = 0
        self._trained_n = 0
        self._job: _Build | None = None
        self.trainings = 0  # installed trainings (a figure for the bench and tests)
        self.adoptions = 0  # IVFs installed from kept centroids (adopt_trained)
        self._deferred = 0  # open training_deferred() blocks

    @contextmanager
    def training_deferred(self) -> Iterator[None]:
        """No training starts inside the block (searches stay exact or on the IVF in use);
        the one due starts when it ends.  Loading several partitions one after another then
        trains once at their total size, not at the first's and again at ``REGROW`` times it
        (a restart at 10^5 users trained IVF632 after the first partition, then IVF1264 for
        ~15 s beside the replay)."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
            if not self._deferred:
                self._maybe_train()

    # -- trained centroids kept across restarts ----------------------------------------------
    def trained_state(self) -> dict[str, Any] | None:
        """The installed IVF's trained parts, data only, for a snapshot (None while exact):
        ``{"codes", "centroids" float32 [nlist, dim], "sq" (float32 ranges of lossy codes),
        "trained_n", "probes", "calibration" [[probes, recall], ...]}``.  A restart that adopts
        them (:meth:`adopt_trained`) assigns its vectors to these centroids instead of running
        k-means and the calibration again."""
        if self._ivf is None or self._coarse is None:
            return None
        out: dict[str, Any] = {
            "codes": self.codes, "centroids": self._coarse.centroids,
            "trained_n": int(self._trained_n), "probes": int(self._calibrated),
            "calibration": [[int(p), float(r)] for p, r in self.calibration.items()]}
        sq = getattr(self._ivf, "sq", None)
        if sq is not None:
            out["sq"] = faiss.vector_to_array(sq.trained).astype(np.float32)
        return out

    def state(self) -> dict[str, Any]:
        """:meth:`SlotIndex.state`, and with an IVF installed its :meth:`trained_state` with
        each vector's list (``"ivf"``; ``"lists"`` int32, aligned with ``"ids"``)."""
        out = super().state()
        trained = self.trained_state()
        if trained is not None:
            live = self._live_slots()
            trained["lists"] = self._list_at[live].astype(np.int32)
            out["ivf"] = trained
        return out

    def _load_state(self, state: dict[str, Any]) -> None:
        """:meth:`SlotIndex._load_state`; the state's IVF, if it had one and it fits this
        index's options, is installed at once from the kept centroids and lists (no k-means,
        no calibration); otherwise the index trains as after any bulk insert."""
        with self.training_deferred():
            super()._load_state(state)
            trained = state.get("ivf")
            if len(self) and isinstance(trained, dict):
                self.adopt_trained(trained, ids=list(state["ids"]), background=False)

    def adopt_trained(self, trained: dict[str, Any], ids: Sequence[str] | None = None,
                      background: bool | None = None) -> bool:
        """Install an IVF over the live vectors from :meth:`trained_state` (another index's, or
        this one's before a restart) instead of training one: its centroids, quantiser ranges
        and calibration; each vector goes to its best centroid, or to ``trained["lists"]``
        (aligned with ``ids``) where those are given and valid.  Only while no IVF is installed
        or training, with at least ``exact_below // 2`` vectors (below, the index would go
        back to exact search) and the same codes; anything that does not check out (shape,
        non-finite values, counts) is refused with a warning, and the index trains as usual.
        ``background`` (default: the index's): the assignment runs on the training thread and
        is installed by a later call, as a training is.  Returns whether it was taken."""
        if self._ivf is not None or self._job is not None:
            return False
        n = len(self._slot_of)
        if n < self.exact_below // 2 or n == 0:
            return False
        try:
            preset = self._checked_trained(trained)
        except (TypeError, ValueError, KeyError) as exc:
            log.warning("%s index: kept IVF centroids not used (%s); training instead",
                        self.name or "an", exc)
            return False
        if preset is None:
            return False
        slots = np.fromiter(self._slot_of.values(), dtype=np.int64, count=n)
        job = _Build(slots, self.dim)
        job.preset, job.trained_n = preset, preset.trained_n
        lists = trained.get("lists")
        if ids is not None and isinstance(lists, np.ndarray) and lists.ndim == 1 \
                and lists.size == len(ids) and lists.dtype.kind in "iu" and len(ids) == n:
            nlist = preset.centroids.shape[0]
            by_slot = np.full(int(slots.max()) + 1, -1, dtype=np.int64)
            at = np.fromiter((self._slot_of.get(i, -1) for i in ids), dtype=np.int64,
                             count=len(ids))
            ok = (at >= 0) & (lists >= 0) & (lists < nlist)
            by_slot[at[ok]] = lists[ok]
            if ok.all():
                preset.lists = by_slot[slots]
        self._job = job
        if self.background if background is None else background:
            self._copy_step(job, COPY_CHUNK)
        else:
            self._copy_step(job, n, thread=False)
            self._build(job, False)
            self._poll()
        return True

    def _checked_trained(self, d: dict[str, Any]) -> _Trained | None:
        """:meth:`trained_state` checked against this index (None: other codes)."""
        if d.get("codes") != self.codes:
            return None
        c = d["centroids"]
        if not isinstance(c, np.ndarray) or c.dtype != np.float32 or c.ndim != 2 \
                or c.shape[1] != self.dim or not 1 <= c.shape[0] <= 65_536:
            raise ValueError(f"centroids of {getattr(c, 'dtype', type(c).__name__)} "
                             f"{list(np.shape(c))}, expected float32 [nlist, {self.dim}]")
        if not np.isfinite(c).all():
            raise ValueError("non-finite centroids")
        sq = d.get("sq")
        want = _sq_size(self.dim, self.codes)
        if want:
            if not isinstance(sq, np.ndarray) or sq.dtype != np.float32 or sq.shape != (want,) \
                    or not np.isfinite(sq).all():
                got = list(sq.shape) if isinstance(sq, np.ndarray) else type(sq).__name__
                raise ValueError(f"quantiser ranges of {got}, expected {want} finite float32")
        else:
            sq = None
        trained_n, probes = int(d["trained_n"]), int(d["probes"])
        if trained_n < 1 or not 0 <= probes <= c.shape[0]:
            raise ValueError(f"trained_n {trained_n}, probes {probes} out of range")
        calibration = {int(p): float(r) for p, r in d.get("calibration", [])}
        return _Trained(np.ascontiguousarray(c), sq, trained_n, probes, calibration)

    # -- what is in use ------------------------------------------------------------------
    @property
    def factory(self) -> str:
        """The FAISS factory string of the structure searches use now."""
        return "Flat" if self._ivf is None else f"IVF{self._nlist}_HNSW{HNSW_M},{self.codes}"

    @property
    def probes(self) -> int:
        """Lists a search probes now: ``nprobe`` if set, else the count the installed
        training calibrated (:meth:`_calibrate`; :func:`auto_nprobe` had it none); 0 while the
        search is exact."""
        if self._ivf is None:
            return 0
        return min(self._nlist, self.nprobe or self._calibrated or auto_nprobe(self._nlist))

    @property
    def building(self) -> bool:
        """Whether a background training is in progress."""
        return self._job is not None

    def nbytes(self) -> int:
        """Bytes of the stored vectors and codes (exact matrix, IVF codes and labels; not the
        id maps, the quantiser or a training's copy)."""
        n = 0 if self._mat is None else self._mat.nbytes
        if self._ivf is not None:
            n += int(self._ivf.ntotal) * (int(self._ivf.code_size) + 8)
        return n

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

    # -- storage ---------------------------------------------------------------------------
    def _ensure(self, top: int) -> None:
        """Per-slot arrays (and the exact matrix) cover slots ``[0, top)``."""
        if top <= self._ver.size:
            return
        cap = max(top, 2 * self._ver.size, 64)
        for attr in ("_ver", "_live"):
            old = getattr(self, attr)
            new = np.zeros(cap, dtype=old.dtype)
            new[: old.size] = old
            setattr(self, attr, new)
        self._list_at = _grown_lists(self._list_at, cap)
        if self._mat is not None:
            mat = np.zeros((cap, self.dim), dtype=np.float32)
            mat[: self._mat.shape[0]] = self._mat
            self._mat = mat

    def _read(self, slots: np.ndarray) -> np.ndarray:
        """float32 [n, dim] current vectors of live ``slots``, from the one store."""
        if slots.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._mat is not None:
            out: np.ndarray = self._mat[slots]
            return out
        if self.source is not None:
            id_at = self._id_at
            got = np.asarray(self.source([id_at[s] or "" for s in slots.tolist()]),
                             dtype=np.float32)
            return got.reshape(slots.size, self.dim)
        return np.asarray(self._ivf.reconstruct_batch(np.ascontiguousarray(slots, np.int64)),
                          dtype=np.float32)

    def _live_of(self, slots: np.ndarray) -> np.ndarray:
        return slots[self._live[slots]]

    # -- mutation --------------------------------------------------------------------------
    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or overwrite; within one call the last duplicate id wins."""
        self._poll()
        last, vecs = self._rows_by_id(ids, vectors)
        if not last:
            return
        slots = self._assign(last)
        vals = vecs[np.fromiter(last.values(), dtype=np.int64, count=len(last))]
        self._ensure(int(slots.max()) + 1)
        was = self._live[slots]  # in the IVF, if there is one
        self._ver[slots] += 1
        self._live[slots] = True
        if self._mat is not None:
            self._mat[slots] = vals
        if self._ivf is not None:
            self._ivf_update(slots, np.ascontiguousarray(vals, dtype=np.float32), was)
        self._maybe_train()

    def _ivf_update(self, slots: np.ndarray, vals: np.ndarray, was: np.ndarray) -> None:
        """Put ``vals`` at ``slots`` into the installed IVF (``was``: already in it), each
        in the list the local search (:func:`local_lists`) or the quantiser picks."""
        ivf, coarse = self._ivf, self._coarse
        if coarse is None:
            coarse = self._coarse = Coarse(ivf)
        slots = np.ascontiguousarray(slots, dtype=np.int64)
        lists = np.full(slots.size, -1, dtype=np.int64)
        old = np.flatnonzero(was)
        if old.size:
            start = self._list_at[slots[old]].astype(np.int64)
            got, _, moving = local_lists(coarse, vals[old], start)
            lists[old] = got
        ask_mask = lists < 0
        if old.size:
            ask_mask[old[(got != start) | moving]] = True
        ask = np.flatnonzero(ask_mask)
        if ask.size:  # new vectors, and those that moved: their best list over all (too)
            q = np.ascontiguousarray(vals[ask])
            hnsw = assign_lists(coarse, ivf.quantizer, q)
            known = lists[ask] >= 0
            if known.any():  # a moved vector: the better of the two (local on a tie)
                mine = np.einsum("md,md->m", q[known], coarse.centroids[lists[ask][known]])
                theirs = np.einsum("md,md->m", q[known], coarse.centroids[hnsw[known]])
                hnsw[known] = np.where(theirs > mine, hnsw[known], lists[ask][known])
            lists[ask] = hnsw
        self._ivf_remove(ivf, slots)
        _add(ivf, vals, slots, lists)
        self._list_at[slots] = lists

    def remove(self, ids: Iterable[str]) -> int:
        """Drop ids (unknown ones are ignored); returns how many were live."""
        self._poll()
        gone = self._release(ids)
        if gone:
            slots = np.array(gone, dtype=np.int64)
            self._ver[slots] += 1
            self._live[slots] = False
            if self._mat is not None:
                self._mat[slots] = 0.0
            if self._ivf is not None:
                self._ivf_remove(self._ivf, slots)
                self._list_at[slots] = -1
        self._maybe_train()
        return len(gone)

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
        q = checked(queries, self.dim, self.name, "queries", allow_1d=True)
        m = q.shape[0]
        if exclude is not None and len(exclude) != m:
            raise ValueError(f"exclude has {len(exclude)} sets for {m} queries")
        n = len(self._slot_of)
        if k <= 0 or n == 0 or m == 0:
            return [[] for _ in range(m)]
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        fetch = min(n, k + extra)
        if self._ivf is None:
            return self._search_exact(q, k, fetch, exclude)
        results: list[list[tuple[str, float]]] = []
        scores, labels = self._ivf_search(q, fetch, self.probes)
        for qi in range(m):
            skip = exclude[qi] if exclude is not None else None
            hits = self._hits(q[qi], scores[qi], labels[qi], k, skip)
            want = min(k, n - (len(skip & self._slot_of.keys()) if skip else 0))
            if len(hits) < want:
                # the probed lists held too few vectors: probe every list (exhaustive)
                sc, lab = self._ivf_search(q[qi : qi + 1], fetch, self._nlist)
                hits = self._hits(q[qi], sc[0], lab[0], k, skip)
            results.append(hits)
        return results

    def _ivf_search(self, q: np.ndarray, fetch: int, nprobe: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, slots) of candidates per query; lossy codes fetch more, to be re-ranked."""
        return self._ivf_search_on(self._ivf, q, min(len(self._slot_of), fetch), nprobe)

    def _ivf_search_on(self, ivf: Any, q: np.ndarray, fetch: int, nprobe: int
                       ) -> tuple[np.ndarray, np.ndarray]:
        if self.codes != "Flat":
            fetch = min(int(ivf.ntotal), 2 * fetch + 16)
        params = faiss.SearchParametersIVF(
            nprobe=nprobe, quantizer_params=faiss.SearchParametersHNSW(efSearch=max(64, 2 * nprobe)))
        scores, labels = ivf.search(q, fetch, params=params)
        return scores, labels

    def _hits(self, q: np.ndarray, scores: np.ndarray, labels: np.ndarray, k: int,
              skip: set[str] | None) -> list[tuple[str, float]]:
        """The best ``k`` candidates; lossy codes are re-scored exactly from the store."""
        keep = labels >= 0
        slots, scores = labels[keep], scores[keep]
        if self.codes != "Flat":
            slots = self._live_of(slots)
            if slots.size == 0:
                return []
            scores = self._read(slots) @ q
        order = np.argsort(-scores, kind="stable")
        id_at = self._id_at
        hits: list[tuple[str, float]] = []
        for j in order.tolist():
            id_ = id_at[int(slots[j])]
            if id_ is None or (skip and id_ in skip):
                continue
            hits.append((id_, float(scores[j])))
            if len(hits) == k:
                break
        return hits

    def _search_exact(self, q: np.ndarray, k: int, fetch: int,
                      exclude: Sequence[set[str]] | None) -> list[list[tuple[str, float]]]:
        assert self._mat is not None
        top = len(self._id_at)
        # [top, dim] @ [dim, nq], not [nq, dim] @ [dim, top]: OpenBLAS's sgemm with a few rows
        # of queries is 2-4x slower than the other way round (4 queries x 2,000 items: 431 vs
        # 190 us); one query is a gemv either way
        scores = np.ascontiguousarray((self._mat[:top] @ q.T).T)
        scores[:, ~self._live[:top]] = -np.inf  # free slots never rank
        if fetch < top:
            part = np.argpartition(-scores, fetch - 1, axis=1)[:, :fetch]
        else:
            part = np.broadcast_to(np.arange(top), (q.shape[0], top))
        id_at = self._id_at
        results: list[list[tuple[str, float]]] = []
        for qi in range(q.shape[0]):
            cand = part[qi]
            sc = scores[qi, cand]
            order = np.lexsort((cand, -sc))  # best first, lower slot on ties
            skip = exclude[qi] if exclude is not None else None
            hits: list[tuple[str, float]] = []
            for j in order.tolist():
                if not np.isfinite(sc[j]):
                    break
                id_ = id_at[int(cand[j])]
                if id_ is None or (skip and id_ in skip):
                    continue
                hits.append((id_, float(sc[j])))
                if len(hits) == k:
                    break
            results.append(hits)
        return results

    def _live_slots(self) -> np.ndarray:
        # the slots' liveness is kept as an array here: no walk over the id list
        return np.flatnonzero(self._live[: len(self._id_at)])

    # -- training ------------------------------------------------------------------------------
    def _maybe_train(self) -> None:
        if self._job is not None or self._deferred:
            return
        n = len(self._slot_of)
        if self._ivf is not None and n < self.exact_below // 2:
            log.info("%s index: %d vectors, back to exact search", self.name or "an", n)
            if self._mat is None:
                top = len(self._id_at)
                live = np.flatnonzero(self._live[:top])
                mat = np.zeros((self._ver.size, self.dim), dtype=np.float32)
                mat[live] = self._read(live)
                self._mat = mat
            self._ivf, self._nlist, self._trained_n, self._coarse = None, 0, 0, None
            self._list_at = np.full(self._ver.size, -1, dtype=np.int32)
            self.calibration, self._calibrated = {}, 0
            return
        if n < self.exact_below or (self._ivf is not None and n < REGROW * self._trained_n):
            return
        slots = np.fromiter(self._slot_of.values(), dtype=np.int64, count=n)
        job = _Build(slots, self.dim)
        self._job = job
        if self.background:
            self._copy_step(job, COPY_CHUNK)  # the rest on the next calls, then the thread
        else:
            self._copy_step(job, n)
            self._build(job, False)
            self._poll()

    def _copy_step(self, job: _Build, rows: int, thread: bool = True) -> None:
        """Copy the next ``rows`` rows with their versions; after the last, start the training
        thread (a background index, unless ``thread`` is False: the caller builds inline).
        A row's version is taken with it, so a slot changed later is caught up, like any
        change made during the training."""
        lo = job.copied
        hi = min(lo + rows, job.slots.size)
        part = job.slots[lo:hi]
        live = self._live[part]
        job.live[lo:hi] = live
        job.vectors[lo:hi][live] = self._read(part[live])
        job.versions[lo:hi] = self._ver[part]
        job.copied = hi
        if hi == job.slots.size and self.background and thread:
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
            preset = job.preset
            nlist = choose_nlist(n) if preset is None else preset.centroids.shape[0]
            ivf = faiss.index_factory(self.dim, f"IVF{nlist}_HNSW{HNSW_M},{self.codes}",
                                      faiss.METRIC_INNER_PRODUCT)
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            if preset is not None:  # kept centroids: no k-means
                ivf.quantizer.add(preset.centroids)
                if preset.sq is not None:
                    faiss.copy_array_to_vector(preset.sq, ivf.sq.trained)
                ivf.is_trained = True
            else:
                ivf.cp.seed = self.seed
                ivf.cp.min_points_per_centroid = 1
                ivf.cp.niter = 15
                cap = nlist * 40  # a seeded sample is enough for the centroids
                sample = vectors
                if n > cap:
                    pick = np.random.default_rng(self.seed).choice(n, cap, replace=False)
                    sample = vectors[np.sort(pick)]
                ivf.train(sample)
            job.coarse = Coarse(ivf)  # here, off the owner thread
            if preset is not None and preset.lists is not None and job.live.all():
                lists = preset.lists  # each vector's list as kept (checked in range)
            else:
                lists = assign_lists(job.coarse, ivf.quantizer, vectors)
            _add(ivf, vectors, slots, lists)
            job.lists = _grown_lists(job.lists, int(job.slots.max()) + 1 if n else 0)
            job.lists[slots] = lists
            if preset is not None:
                job.calibration, job.probes = preset.calibration, preset.probes
            elif not self.nprobe:
                job.calibration, job.probes = self._calibrate(ivf, vectors, slots, lists, nlist)
            job.vectors = np.zeros((0, self.dim), dtype=np.float32)  # the copy is no longer needed
            job.index, job.nlist = ivf, nlist
        except BaseException as exc:  # reported by _poll on the owner thread
            job.error = exc
        finally:
            if not background:
                faiss.omp_set_num_threads(threads)

    def _calibrate(self, ivf: Any, vectors: np.ndarray, slots: np.ndarray, lists: np.ndarray,
                   nlist: int) -> tuple[dict[int, float], int]:
        """The fewest lists (of :func:`probe_ladder`) whose recall@``CALIBRATION_K`` against
        exact search, on :func:`calibration_queries` of the training's copy, reaches
        ``target_recall`` (all lists, i.e. exact, if none does); with every recall tried.

        Runs on the training's thread against the new IVF before anything else sees it, with
        the copy as the exact store.  How many lists a query needs depends on the data: at
        10^5 items of 1,000 topics 4 lists found 0.9999 of the true 20, of 10,000 topics 128
        found 0.78 (``python -m index.bench --topics``), so no fixed share of the lists fits
        both."""
        n = vectors.shape[0]
        k = min(CALIBRATION_K, n)
        q = calibration_queries(vectors, lists, CALIBRATION_QUERIES, self.seed + 1)
        truth = [set(slots[row].tolist()) for row in _exact_top(q, vectors, k)]
        row_of = np.empty(0, dtype=np.int64)
        if self.codes != "Flat":  # re-ranked from the copy, as searches re-rank from the store
            row_of = np.full(int(slots.max()) + 1, -1, dtype=np.int64)
            row_of[slots] = np.arange(n)
        found: dict[int, float] = {}
        for probes in probe_ladder(nlist):
            _, labels = self._ivf_search_on(ivf, q, k, probes)
            hit = 0
            for i in range(q.shape[0]):
                got = labels[i][labels[i] >= 0]
                if self.codes != "Flat" and got.size:
                    exact = vectors[row_of[got]] @ q[i]
                    got = got[np.argsort(-exact, kind="stable")[:k]]
                hit += len(truth[i] & set(got[:k].tolist()))
            found[probes] = hit / (k * q.shape[0])
            if found[probes] >= self.target_recall:
                return found, probes
        return found, nlist

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
        job.lists = _grown_lists(job.lists, self._ver.size)
        # Re-apply what changed since the copy: stale rows out, current rows of live slots in.
        diff = np.flatnonzero(self._ver != job.held)
        chunk = diff[:CATCH_UP]
        if chunk.size:
            self._ivf_remove(ivf, chunk)
            job.lists[chunk] = -1
            live = self._live_of(chunk)
            if live.size:
                assert job.coarse is not None
                vals = np.ascontiguousarray(self._read(live), dtype=np.float32)
                lists = assign_lists(job.coarse, ivf.quantizer, vals)
                _add(ivf, vals, live, lists)
                job.lists[live] = lists
            job.held[chunk] = self._ver[chunk]
        if diff.size > CATCH_UP:
            return  # the rest on the next calls: no call blocks for long
        self._job = None
        self._ivf, self._nlist, self._trained_n = ivf, job.nlist, job.trained_n
        self._coarse = job.coarse
        self._list_at = job.lists
        self.calibration, self._calibrated = job.calibration, job.probes
        if self._ivf_is_store:
            self._mat = None  # the IVF (or the source) holds the vectors now: one copy
        if job.preset is None:
            self.trainings += 1
        else:
            self.adoptions += 1
        log.info("%s index: %s over %d vectors%s, %d lists probed (recall@%d %s)",
                 self.name or "an", self.factory, len(self),
                 "" if job.preset is None else " (kept centroids, no training)", self.probes,
                 CALIBRATION_K,
                 ", ".join(f"{p}: {r:.4f}" for p, r in self.calibration.items()) or "-")
        # It may have outgrown this training while it ran (a catalogue bulk-loaded meanwhile):
        # the next one starts now, not at the next upsert, which may never come.
        self._maybe_train()
