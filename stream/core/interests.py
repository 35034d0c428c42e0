"""Multi-interest profiles: up to K decayed interest vectors per user (pure: stdlib + numpy).

Each user has at most ``k`` interests.  An interest is a decayed weighted *mean* of the event
vectors assigned to it, stored as int8 codes with a float32 scale (:func:`quantise`; a pool
row per interest in use), with its *importance* ``W``: the decayed weight
``sum_e w_e * 2**((ts_e - anchor) / H)`` of those events, float64, relative to the user's
anchor (the newest event time seen, exactly as in :mod:`stream.core.profile`).  ``W * mean`` is
the interest's decayed weighted sum, so ``sum_i W_i * mean_i`` is the single profile's sum (up
to the int8 rounding of the means).

The rule, per event ``(ts, w, v)`` of a user, in the order the events are applied:

1. Move the user's anchor to ``max(anchor, ts)``, rescaling every ``W`` by ``2**((old - new)/H)``;
   the event's weight at the anchor is ``c = w * 2**((ts - anchor) / H)``.  An event with
   ``c == 0`` (a zero-weight type) moves the anchor and nothing else.
2. ``s_i = cos(v, mean_i)``; ``b = argmax_i s_i`` (lowest slot on ties).  If ``s_b >= threshold``
   the event **joins** ``b``: ``W_b += c`` and ``mean_b += (c / W_b) * (v - mean_b)``.
3. Otherwise it **opens** a new interest ``(mean=v, W=c)`` in the next free slot; when all ``k``
   slots are taken, the ``k + 1`` candidates (the interests in slot order, then the new one)
   **merge their closest pair** (largest cosine of the means; the lexicographically smallest
   slot pair ``(i, j)`` on ties) into slot ``i`` as their ``W``-weighted mean, ``W_i + W_j``;
   slot ``j`` is removed and the later ones move up.

After each event the touched means are rounded to int8 codes (:func:`quantise`; after a merge
all ``k``, which leaves the untouched ones as they were): the live state has the precision of
the snapshot, so a restart that loads the snapshot and replays the rest of the log reaches
bit-identical interests.

**Order.**  Step 1 is order-free (importances depend only on the set of events) and so is the
importance-weighted sum.  Steps 2-3 are not: which interest an event joins depends on the
interests formed by the events applied before it.  :meth:`InterestTable.apply` therefore applies
events per user in the order they are given (the worker gives them in offset order), never
re-sorted: a batch applied whole or split anywhere gives the same result, and a replay of the
same log gives the same interests.  A different order of the same events may cluster them
differently; tests bound that difference (README "Multi-interest profiles").

Benchmark (not a test): ``python -m stream.bench.interests`` (cost against the profile update,
order dependence).  Serving helpers (quotas by importance, per-interest content):
:mod:`stream.core.interest_quotas`, re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from stream.core.interest_quotas import allocate_quotas, merge_hits, multi_interest_hits
from stream.core.profile import DEFAULT_HALF_LIFE_MS
from stream.core.rows import NO_ANCHOR as _NO_ANCHOR
from stream.core.rows import UserRows, checked_batch, grown

__all__ = [
    "DEFAULT_INTEREST_K",
    "DEFAULT_INTEREST_THRESHOLD",
    "InterestParams",
    "InterestTable",
    "Interests",
    "allocate_quotas",
    "dequantise",
    "load_interests",
    "merge_hits",
    "multi_interest_hits",
    "quantise",
    "snapshot_params",
]

DEFAULT_INTEREST_K = 4
DEFAULT_INTEREST_THRESHOLD = 0.5
MAX_INTEREST_K = 32

_CODE_DTYPE = np.int8
_SCALE_DTYPE = np.float32
_QMAX = 127.0
_SCALE_MAX = float(np.finfo(np.float32).max)
_WORK = np.float64
_PER_USER_FROM = 4  # a user with this many events in a batch is applied on its own (_run)


@dataclass(frozen=True)
class InterestParams:
    """``k`` interests at most per user (>= 1), the cosine ``threshold`` to join one (in
    [-1, 1]) and the decay ``half_life_ms`` (the profile's)."""

    k: int = DEFAULT_INTEREST_K
    threshold: float = DEFAULT_INTEREST_THRESHOLD
    half_life_ms: float = DEFAULT_HALF_LIFE_MS

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= (
                MAX_INTEREST_K):
            raise ValueError(f"k must be an integer in [1, {MAX_INTEREST_K}], got {self.k!r}")
        t = self.threshold
        if not isinstance(t, (int, float)) or not math.isfinite(t) or not -1.0 <= t <= 1.0:
            raise ValueError(f"threshold must be a number in [-1, 1], got {t!r}")
        h = self.half_life_ms
        if not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0:
            raise ValueError(f"half_life_ms must be a finite number > 0, got {h!r}")


@dataclass(frozen=True)
class Interests:
    """One user's interests in slot order: ``vectors`` float32 [n, dim] L2-normalised (a zero
    mean stays zero), ``importance`` float64 [n] decayed weights at ``anchor_ts`` (the user's
    newest event time), ``means`` float32 [n, dim] the stored (unnormalised) means."""

    vectors: np.ndarray
    importance: np.ndarray
    means: np.ndarray
    anchor_ts: int

    def __len__(self) -> int:
        return int(self.importance.shape[0])

    @property
    def shares(self) -> np.ndarray:
        """Importances as fractions of their sum (all zero when the sum is 0)."""
        total = float(self.importance.sum())
        return self.importance / total if total > 0 else np.zeros_like(self.importance)

    def importance_at(self, now_ts: int, half_life_ms: float) -> np.ndarray:
        """Importances decayed to ``now_ts`` (ms); only a common factor, shares do not change."""
        factor = 2.0 ** ((self.anchor_ts - int(now_ts)) / float(half_life_ms))
        out: np.ndarray = self.importance * factor
        return out

    def profile(self) -> np.ndarray:
        """The importance-weighted sum of the means, L2-normalised float32 (zero if zero)."""
        s = (self.importance[:, None] * self.means.astype(np.float64)).sum(axis=0)
        n = float(np.linalg.norm(s))
        out: np.ndarray = (s / n if n > 0 else s).astype(np.float32)
        return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1.0), 0.0)


def _dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products over the last axis.  Multiply then sum: numpy reduces each row
    the same way whatever the number of rows, so the vectorised path (many users) and the
    per-user path get bit-identical similarities (einsum / BLAS may not)."""
    out: np.ndarray = np.add.reduce(a * b, axis=-1)  # what ndarray.sum runs, minus a wrapper
    return out


def _cosines(dots: np.ndarray, sq_a: np.ndarray, sq_b: np.ndarray) -> np.ndarray:
    """Cosines from dot products and squared norms (broadcast); 0 where a norm is 0."""
    den = np.sqrt(sq_a * sq_b)
    out: np.ndarray = np.where(den > 0, dots / np.where(den > 0, den, 1.0), 0.0)
    return out


def _merge_closest(means: np.ndarray, weight: np.ndarray, v: np.ndarray, c: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """``k`` interests ``[m, k, dim]`` + a new one each -> ``k``, merging the closest pair (rule step 3)."""
    m, k, dim = means.shape
    cand = np.concatenate([means, v[:, None, :]], axis=1)  # [m, k+1, dim]
    cw = np.concatenate([weight, c[:, None]], axis=1)  # [m, k+1]
    sq = _dots(cand, cand)  # [m, k+1]
    pairs = [(a, b) for a in range(k + 1) for b in range(a + 1, k + 1)]  # lexicographic
    sims = np.stack([_cosines(_dots(cand[:, a], cand[:, b]), sq[:, a], sq[:, b])
                     for a, b in pairs], axis=1)
    first = np.argmax(sims, axis=1)  # the first closest pair on ties
    i = np.array([pairs[x][0] for x in first.tolist()], dtype=np.int64)
    j = np.array([pairs[x][1] for x in first.tolist()], dtype=np.int64)
    ar = np.arange(m)
    wi, wj = cw[ar, i], cw[ar, j]
    tot = wi + wj
    safe = np.where(tot > 0, tot, 1.0)
    merged = np.where(
        (tot > 0)[:, None],
        (wi[:, None] * cand[ar, i] + wj[:, None] * cand[ar, j]) / safe[:, None],
        0.5 * (cand[ar, i] + cand[ar, j]),
    )
    cand[ar, i] = merged
    cw[ar, i] = tot
    keep = np.arange(k + 1)[None, :] != j[:, None]
    return cand[keep].reshape(m, k, dim), cw[keep].reshape(m, k)


def quantise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` (float64 [..., dim]) as int8 codes [..., dim] and float32 scales [...]:
    ``scale = float32(max|x| / 127)``, ``code = rint(x / scale)`` clipped to [-127, 127]; a
    zero row is all-zero codes with scale 0.  Element-wise, so any batch shape gives the same
    bits; idempotent: ``quantise(dequantise(q, s)) == (q, s)``."""
    x = np.asarray(x, dtype=_WORK)
    s = np.minimum(np.abs(x).max(axis=-1) / _QMAX, _SCALE_MAX).astype(_SCALE_DTYPE)
    s64 = s.astype(_WORK)
    q = np.rint(x / np.where(s64 > 0, s64, 1.0)[..., None])
    return np.clip(q, -_QMAX, _QMAX).astype(_CODE_DTYPE), s


def dequantise(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float64 values of int8 ``codes`` [..., dim] with float32 ``scales`` [...] (exact)."""
    out: np.ndarray = codes.astype(_WORK) * scales.astype(_WORK)[..., None]
    return out


def _quantise1(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.ndarray]:
    """:func:`quantise` of one row (float64 [dim]) with the scale in Python, and the stored
    values: (codes as float64 integers, scale, codes times scale) -- the same bits."""
    m = float(np.abs(x).max()) / _QMAX
    s = np.float32(m if m < _SCALE_MAX else _SCALE_MAX)
    s64 = float(s)
    q = np.rint(x / (s64 if s64 > 0 else 1.0))
    if not m < _SCALE_MAX:  # otherwise |q| <= 127 already
        q = np.clip(q, -_QMAX, _QMAX)
    out: np.ndarray = q * s64
    return q, s, out


class InterestTable(UserRows):
    """The interests of many users in contiguous arrays: a row per user, capacity doubling,
    and a pool of interest vectors that only the interests in use take.

    Per user row: ``anchor`` int64, ``count`` uint8, ``weight`` float64 [k], ``slot`` int32 [k]
    (the pool rows of the user's interests, the first ``count`` valid): ``9 + 12k`` bytes.
    Per interest in use, a pool row: int8 codes [dim] and a float32 scale (``dim + 4`` bytes,
    :func:`quantise`); an unused slot costs no pool row.  So ``9 + 12k + n(dim + 4)`` bytes for
    a user with ``n`` interests: 1,609 for 4 of k=4 at dim 384, 833 for 2 (the float16 means
    of earlier versions took 3,113 whatever ``n``).  Freed pool rows (forget, expiry) are
    zeroed and reused first.  Row bookkeeping (``remove``, ``idle``, ``users``):
    :class:`stream.core.rows.UserRows`.
    """

    def __init__(self, dim: int, params: InterestParams, capacity: int = 1024) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be > 0, got {dim}")
        super().__init__(capacity)
        self.dim = int(dim)
        self.params = params
        self.k = params.k
        cap = len(self._anchor)
        self._count = np.zeros(cap, dtype=np.uint8)
        self._weight = np.zeros((cap, self.k), dtype=np.float64)
        self._slot = np.zeros((cap, self.k), dtype=np.int32)
        self._code = np.zeros((cap, self.dim), dtype=_CODE_DTYPE)  # the pool
        self._scale = np.zeros(cap, dtype=_SCALE_DTYPE)
        self._pool_next = 0  # pool rows [0, _pool_next) have been handed out at least once
        self._pool_free = np.zeros(0, dtype=np.int32)  # a stack of released pool rows
        self._n_free = 0

    @property
    def bytes_per_user(self) -> int:
        """Array bytes of a user holding all ``k`` interests (fewer take ``dim + 4`` less each)."""
        return 8 + 1 + 12 * self.k + self.k * (self.dim + 4)

    def nbytes_in_use(self) -> int:
        """Array bytes the live users' rows and the pool rows in use take (capacity aside)."""
        return len(self) * (8 + 1 + 12 * self.k) + self.pool_rows() * (self.dim + 4)

    def pool_rows(self) -> int:
        """Pool rows in use: the interests of all live users."""
        return self._pool_next - self._n_free

    # -- rows (bookkeeping in UserRows) ---------------------------------------------------
    def _resize(self, new_cap: int) -> None:
        self._count = grown(self._count, new_cap)
        self._weight = grown(self._weight, new_cap)
        self._slot = grown(self._slot, new_cap)

    def _clear(self, row: int) -> None:
        self._give(self._slot[row, : int(self._count[row])])
        self._count[row] = 0
        self._weight[row] = 0.0
        self._slot[row] = 0

    def _take(self, m: int) -> np.ndarray:
        """``m`` pool rows: released ones first (newest released first), then new ones."""
        out = np.empty(m, dtype=np.int64)
        got = min(m, self._n_free)
        if got:
            top = self._n_free
            out[:got] = self._pool_free[top - got: top][::-1]
            self._n_free = top - got
        rest = m - got
        if rest:
            start = self._pool_next
            need = start + rest
            cap = len(self._scale)
            if need > cap:
                while cap < need:
                    cap *= 2
                self._code = grown(self._code, cap)
                self._scale = grown(self._scale, cap)
            out[got:] = np.arange(start, need)
            self._pool_next = need
        return out

    def _give(self, prows: np.ndarray) -> None:
        """Release pool rows (zeroed: a forgotten user's interests do not linger)."""
        m = int(prows.shape[0])
        if not m:
            return
        self._code[prows] = 0
        self._scale[prows] = 0.0
        need = self._n_free + m
        if need > len(self._pool_free):
            self._pool_free = grown(self._pool_free, max(need, 2 * len(self._pool_free)))
        self._pool_free[self._n_free: need] = prows
        self._n_free = need

    def _stored(self, rows: np.ndarray) -> np.ndarray:
        """The stored means of ``rows`` as float64 [m, k, dim] (zero beyond each count)."""
        valid = np.arange(self.k)[None, :] < self._count[rows][:, None]
        p = np.where(valid, self._slot[rows], 0)
        out = dequantise(self._code[p], self._scale[p])
        out[~valid] = 0.0
        return out

    def _put(self, prows: np.ndarray, means: np.ndarray) -> np.ndarray:
        """Store ``means`` (float64 [..., dim]) quantised at pool rows ``prows`` [...];
        returns the stored values (float64)."""
        q, s = quantise(means)
        self._code[prows] = q
        self._scale[prows] = s
        return dequantise(q, s)

    # -- updates --------------------------------------------------------------------------
    def apply(
        self,
        users: Sequence[str],
        ts: np.ndarray,
        weights: np.ndarray,
        vectors: np.ndarray,
    ) -> list[str]:
        """Apply a batch, each user's events in the given order (``users[i]`` had an event at
        ``ts[i]`` ms with ``weights[i]`` and vector ``vectors[i]``; the arguments of
        ``ProfileTable.apply``).  Returns the distinct users touched, in first-appearance order.
        Vectorised across users: round ``j`` applies every user's ``j``-th event of the batch.
        """
        n = len(users)
        ts, w, vec = checked_batch(n, ts, weights, vectors, self.dim)
        if n == 0:
            return []
        rows = self._rows(users)
        vec64 = vec.astype(_WORK, copy=False)
        # users with many events here: one user at a time (fewer numpy calls per event)
        by_row = np.argsort(rows, kind="stable")
        sorted_rows = rows[by_row]
        starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
        lengths = np.diff(np.r_[starts, n])
        heavy = lengths >= _PER_USER_FROM
        for s0, ln in zip(starts[heavy].tolist(), lengths[heavy].tolist(), strict=True):
            idx = by_row[s0:s0 + ln]  # stable sort: the user's events in batch order
            self._run(int(rows[idx[0]]), ts[idx], w[idx], vec64[idx])
        # the others: round j applies every such user's j-th event of the batch, vectorised
        light = np.empty(n, dtype=bool)
        light[by_row] = np.repeat(~heavy, lengths)
        if light.any():
            rank = np.empty(n, dtype=np.int64)
            rank[by_row] = np.arange(n) - np.repeat(starts, lengths)
            sel = np.flatnonzero(light)
            order = sel[np.lexsort((sel, rank[sel]))]
            cuts = np.searchsorted(rank[order], np.arange(1, int(rank[order].max()) + 1))
            for idx in np.split(order, cuts):
                self._step(rows[idx], ts[idx], w[idx], vec64[idx])
        _, first = np.unique(rows, return_index=True)
        names = self._names
        return [str(names[r]) for r in rows[np.sort(first)].tolist()]

    def _step(self, rows: np.ndarray, ts: np.ndarray, w: np.ndarray, v: np.ndarray) -> None:
        """One event for each of ``rows`` (distinct)."""
        inv_h = 1.0 / float(self.params.half_life_ms)
        old = self._anchor[rows]
        fresh = old == _NO_ANCHOR
        new = np.where(fresh, ts, np.maximum(old, ts))
        scale = np.exp2((np.where(fresh, new, old) - new).astype(np.float64) * inv_h)
        weight = self._weight[rows] * scale[:, None]
        self._anchor[rows] = new
        c = w * np.exp2((ts - new).astype(np.float64) * inv_h)
        act = np.flatnonzero(c > 0)
        if act.shape[0] < rows.shape[0]:
            self._weight[rows] = weight
            if act.shape[0] == 0:
                return
            rows, c, v, weight = rows[act], c[act], v[act], weight[act]
        k, m = self.k, rows.shape[0]
        count = self._count[rows].astype(np.int64)
        means = self._stored(rows)  # [m, k, dim]
        sims = _cosines(_dots(means, v[:, None, :]), _dots(means, means), _dots(v, v)[:, None])
        sims[np.arange(k)[None, :] >= count[:, None]] = -np.inf
        best = np.argmax(sims, axis=1)
        join = (count > 0) & (sims[np.arange(m), best] >= self.params.threshold)
        j = np.flatnonzero(join)
        if j.shape[0]:  # only the joined slot changes
            b = best[j]
            wj = weight[j, b] + c[j]
            mj = means[j, b]
            self._put(self._slot[rows[j], b], mj + (c[j] / wj)[:, None] * (v[j] - mj))
            weight[j, b] = wj
        o = np.flatnonzero(~join & (count < k))
        if o.shape[0]:
            slot = count[o]
            p = self._take(o.shape[0])
            self._slot[rows[o], slot] = p
            self._put(p, v[o])
            weight[o, slot] = c[o]
            self._count[rows[o]] = (slot + 1).astype(np.uint8)
        f = np.flatnonzero(~join & (count >= k))
        if f.shape[0]:  # k interests in, k out: the user's pool rows are reused in slot order
            mf, weight[f] = _merge_closest(means[f], weight[f], v[f], c[f])
            self._put(self._slot[rows[f]], mf)
        self._weight[rows] = weight

    def _run(self, row: int, ts: np.ndarray, w: np.ndarray, v: np.ndarray) -> None:
        """All of one user's events of a batch, in order: the arithmetic of :meth:`_step`,
        operation for operation (so the result is bit-identical), with scalars in Python."""
        inv_h = 1.0 / float(self.params.half_life_ms)
        k, thr = self.k, self.params.threshold
        a0 = int(self._anchor[row])
        if a0 == _NO_ANCHOR:
            new = np.maximum.accumulate(ts)
            prev = np.r_[new[:1], new[:-1]]
        else:
            new = np.maximum.accumulate(np.maximum(ts, a0))
            prev = np.r_[np.int64(a0), new[:-1]]
        scale = np.exp2((prev - new).astype(np.float64) * inv_h).tolist()
        c = (w * np.exp2((ts - new).astype(np.float64) * inv_h)).tolist()
        vv = _dots(v, v).tolist()
        cnt = int(self._count[row])
        weight = self._weight[row].tolist()
        slots = self._slot[row]  # a view: opened slots are written through it
        pending: dict[int, tuple[np.ndarray, Any]] = {}  # slot -> (codes, scale), written last
        means = self._stored(np.array([row]))[0]  # [k, dim], the stored values
        sq = _dots(means, means).tolist()
        for e in range(len(c)):
            sc = scale[e]
            weight = [x * sc for x in weight]
            ce = c[e]
            if not ce > 0:
                continue
            ve = v[e]
            b, top = -1, -math.inf
            if cnt:
                for i, d in enumerate(_dots(means[:cnt], ve).tolist()):
                    den = math.sqrt(sq[i] * vv[e])
                    sim = d / den if den > 0 else 0.0
                    if sim > top:
                        b, top = i, sim
            if b >= 0 and top >= thr:
                wj = weight[b] + ce
                mj = means[b]
                q, sc8, means[b] = _quantise1(mj + (ce / wj) * (ve - mj))
                pending[b] = (q, sc8)
                sq[b] = float(_dots(means[b], means[b]))
                weight[b] = wj
            elif cnt < k:
                p = int(self._take(1)[0])
                slots[cnt] = p
                q, sc8, means[cnt] = _quantise1(ve)
                pending[cnt] = (q, sc8)
                sq[cnt] = float(_dots(means[cnt], means[cnt]))
                weight[cnt] = ce
                cnt += 1
            else:  # _merge_closest for one user: one call for the Gram matrix
                cand = np.concatenate([means, ve[None]])
                cw, csq = [*weight, ce], [*sq, vv[e]]
                gram = _dots(cand[:, None, :], cand[None, :, :]).tolist()
                pi, pj, top = 0, 1, -math.inf
                for i in range(k + 1):
                    for j in range(i + 1, k + 1):
                        den = math.sqrt(csq[i] * csq[j])
                        sim = gram[i][j] / den if den > 0 else 0.0
                        if sim > top:
                            pi, pj, top = i, j, sim
                tot = cw[pi] + cw[pj]
                cand[pi] = ((cw[pi] * cand[pi] + cw[pj] * cand[pj]) / tot if tot > 0
                            else 0.5 * (cand[pi] + cand[pj]))
                cw[pi] = tot
                keep = [i for i in range(k + 1) if i != pj]
                q8, s8 = quantise(cand[keep])
                means = dequantise(q8, s8)
                pending = {i: (q8[i], s8[i]) for i in range(k)}  # every slot: shifted
                sq = _dots(means, means).tolist()
                weight = [cw[i] for i in keep]
        for i, (q, sc8) in pending.items():
            p = int(slots[i])
            self._code[p] = q
            self._scale[p] = sc8
        self._weight[row] = weight
        self._count[row] = cnt
        self._anchor[row] = int(new[-1])

    # -- reads ----------------------------------------------------------------------------
    def _means_of(self, row: int) -> np.ndarray:
        n = int(self._count[row])
        p = self._slot[row, :n]
        return dequantise(self._code[p], self._scale[p])

    def get(self, user: str) -> Interests | None:
        """The user's interests (slot order), or None for an unknown user."""
        row = self._index.get(user)
        if row is None:
            return None
        n = int(self._count[row])
        means = self._means_of(row)
        return Interests(
            vectors=_unit_rows(means).astype(np.float32),
            importance=self._weight[row, :n].copy(),
            means=means.astype(np.float32),
            anchor_ts=int(self._anchor[row]),
        )

    def count(self, user: str) -> int:
        row = self._index.get(user)
        return 0 if row is None else int(self._count[row])

    def counts(self) -> np.ndarray:
        """Interests per live user (uint8), for the histogram metric."""
        rows = np.fromiter(self._index.values(), dtype=np.int64, count=len(self._index))
        return self._count[rows].copy()

    def raw(self, user: str) -> tuple[int, np.ndarray, np.ndarray] | None:
        """(anchor_ts, float64 importances, float64 stored means: the int8 codes times their
        scales, exact) copies, for tests."""
        row = self._index.get(user)
        if row is None:
            return None
        n = int(self._count[row])
        return int(self._anchor[row]), self._weight[row, :n].copy(), self._means_of(row)

    # -- persistence ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Live rows only, data-only: per user its anchor, count, ``k`` importances, and ``k``
        int8 code rows with their float32 scales (zero beyond the count)."""
        users, rows = self._live_rows()
        valid = np.arange(self.k)[None, :] < self._count[rows][:, None]
        p = np.where(valid, self._slot[rows], 0)
        codes = self._code[p]
        codes[~valid] = 0
        scales = self._scale[p]
        scales[~valid] = 0.0
        return {
            "k": self.k,
            "threshold": self.params.threshold,
            "half_life_ms": self.params.half_life_ms,
            "users": users,
            "anchors": self._anchor[rows].copy(),
            "counts": self._count[rows].copy(),
            "weights": self._weight[rows].copy(),
            "codes": codes,
            "scales": scales,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], dim: int, params: InterestParams
                   ) -> InterestTable:
        """Rebuild from :meth:`state`.  A snapshot of another ``k`` is refitted: a larger one
        merges each user's closest pairs (rule step 3) until ``k`` are left.  A snapshot of an
        earlier version (float16 ``means``) loads with its means quantised (:func:`quantise`)."""
        users = [str(u) for u in state["users"]]
        n = len(users)
        sk = int(state["k"])
        anchors = np.asarray(state["anchors"], dtype=np.int64).reshape(-1)
        counts = np.asarray(state["counts"]).astype(np.int64).reshape(-1)
        weights = np.asarray(state["weights"], dtype=np.float64)
        if "codes" in state:
            codes = np.asarray(state["codes"])
            scales = np.asarray(state["scales"])
            ok = (codes.dtype == _CODE_DTYPE and codes.shape == (n, sk, dim)
                  and scales.dtype == _SCALE_DTYPE and scales.shape == (n, sk))
            got = f"codes {codes.shape} {codes.dtype}, scales {scales.shape} {scales.dtype}"
        else:  # written before int8 codes: float16 means
            means = np.asarray(state["means"])
            ok = means.shape == (n, sk, dim) and means.dtype == np.float16
            got = f"means {means.shape} {means.dtype}"
            if ok:
                codes, scales = quantise(means.astype(_WORK))
        if not ok or anchors.shape != (n,) or counts.shape != (n,) or weights.shape != (n, sk):
            raise ValueError(
                f"interests state does not match dim {dim}: {n} users, k {sk}, anchors "
                f"{anchors.shape}, counts {counts.shape}, weights {weights.shape}, {got}")
        if len(set(users)) != n:
            raise ValueError("interests state has duplicate users")
        if n and (counts.min() < 0 or counts.max() > sk):
            raise ValueError(f"interests state has counts outside [0, {sk}]")
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise ValueError("interests state has scales that are not finite and >= 0")
        table = cls(dim, params, capacity=max(n, 1))
        table._load_rows(users, anchors)
        k = table.k
        kk = min(sk, k)
        codes_k, scales_k, weights_k = (codes[:, :kk].copy(), scales[:, :kk].copy(),
                                         weights[:, :kk].copy())
        for r in np.flatnonzero(counts > k).tolist():  # refit: merge down to k
            c_r = int(counts[r])
            m = dequantise(codes[r:r + 1, :c_r], scales[r:r + 1, :c_r])
            wt = weights[r:r + 1, :c_r]
            while m.shape[1] > k:
                km = m.shape[1] - 1
                m, wt = _merge_closest(m[:, :km], wt[:, :km], m[:, km], wt[:, km])
            codes_k[r], scales_k[r] = quantise(m[0])
            weights_k[r] = wt[0]
        cnt = np.minimum(counts, k)
        valid = np.arange(kk)[None, :] < cnt[:, None]
        total = int(valid.sum())
        table._weight[:n, :kk] = weights_k
        table._count[:n] = cnt.astype(np.uint8)
        p = table._take(total)
        slots = np.zeros((n, kk), dtype=np.int64)
        slots[valid] = p
        table._slot[:n, :kk] = slots
        table._code[p] = codes_k[valid]
        table._scale[p] = scales_k[valid]
        return table


def snapshot_params(state: Mapping[str, Any]) -> InterestParams:
    """The parameters a table's :meth:`InterestTable.state` was written with."""
    return InterestParams(k=int(state["k"]), threshold=float(state["threshold"]),
                          half_life_ms=float(state["half_life_ms"]))


def load_interests(state: Mapping[str, Any] | None, dim: int,
                   params: InterestParams | Literal["snapshot"] | None) -> InterestTable | None:
    """A partition's table from its snapshot entry.  ``params`` None: interests are off (a
    snapshot's are dropped); ``"snapshot"``: as the snapshot was written (None if it has
    none); else a snapshot without interests (written before them, or with them off) loads an
    empty table: they grow from the next events."""
    if params == "snapshot":
        return None if state is None else InterestTable.from_state(
            state, dim, snapshot_params(state))
    if params is None:
        return None
    if state is None:
        return InterestTable(dim, params)
    return InterestTable.from_state(state, dim, params)
