"""Index benchmark (not a test): recall and latency of the index kinds at 10^4-10^5 vectors.

    python -m index.bench --sizes 10000 100000 --dim 384 [--json]

Vectors come from a pinned generator (topic centres plus noise, unit norm); queries are
profile-like: decayed mixtures of a few item vectors, never a stored vector.  For each size:

- items: an ``auto`` index filled with ``n`` vectors (IVF trained inline, timed), recall@20
  against exact search, single-query search p50/p99;
- the same fill with background training: p50/p99/max of the index calls (an upsert of 500
  plus a search) while the centroids train and catch up, i.e. how long the loop is blocked;
- users: ``n`` profiles, then churn of 10x ``n`` (batches of 500: 90% drift updates, 5%
  forgets, 5% new users), upsert cost per vector, recall@10 against exact after the churn,
  rows held by the IVF (must equal the live count: memory does not grow with churn); the IVF
  has ``--user-codes`` (SQ4, the worker's default) re-ranked from the profiles, as in the worker.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from index import FlatIndex, IvfIndex, factory_of

TOPICS = 1000
_SETUP = {"topics": TOPICS}  # --topics


class Gen:
    """Pinned vectors: ``TOPICS`` unit centres, items = centre + noise (unit norm); a profile
    mixes 2-8 items of its user's 1-3 topics."""

    def __init__(self, dim: int, seed: int = 7) -> None:
        self.dim = dim
        self.rng = np.random.default_rng(seed)
        self.topics = _SETUP["topics"]
        c = self.rng.standard_normal((self.topics, dim)).astype(np.float32)
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.topic_of = np.zeros(0, dtype=np.int64)  # of the last items() call

    def items(self, n: int) -> np.ndarray:
        topic = self.rng.integers(0, self.topics, n)
        self.topic_of = topic
        noise = self.rng.standard_normal((n, self.dim)).astype(np.float32) / np.sqrt(self.dim)
        v = self.centres[topic] + noise
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def profiles(self, items: np.ndarray, m: int) -> np.ndarray:
        """Decayed sums of 2-8 item vectors from 1-3 topics (what a profile is), normalised."""
        by_topic = np.argsort(self.topic_of, kind="stable")
        starts = np.searchsorted(self.topic_of[by_topic], np.arange(self.topics + 1))
        out = np.empty((m, self.dim), dtype=np.float32)
        for i in range(m):
            topics = self.rng.integers(0, self.topics, int(self.rng.integers(1, 4)))
            pool = np.concatenate([by_topic[starts[t]:starts[t + 1]] for t in topics])
            if pool.size == 0:
                pool = np.arange(len(items))
            k = int(self.rng.integers(2, 9))
            w = 0.8 ** np.arange(k)[::-1]
            out[i] = w @ items[pool[self.rng.integers(0, pool.size, k)]]
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def near(self, items: np.ndarray, profiles: np.ndarray) -> np.ndarray:
        """For each profile, a random item of the topic it is closest to (its next event)."""
        topic = np.argmax(profiles @ self.centres.T, axis=1)
        by_topic = np.argsort(self.topic_of, kind="stable")
        starts = np.searchsorted(self.topic_of[by_topic], np.arange(self.topics + 1))
        out = np.empty_like(profiles)
        for i, t in enumerate(topic.tolist()):
            lo, hi = starts[t], starts[t + 1]
            j = by_topic[lo + int(self.rng.integers(0, hi - lo))] if hi > lo else 0
            out[i] = items[j]
        return out


def _recall(got: list[list[tuple[str, float]]], want: list[list[tuple[str, float]]]) -> float:
    return float(np.mean([len({i for i, _ in g} & {i for i, _ in w}) / max(1, len(w))
                          for g, w in zip(got, want)]))


def _latency(index: Any, q: np.ndarray, k: int) -> tuple[float, float]:
    times = []
    for row in q:
        t = time.perf_counter()
        index.search(row, k)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _rss_mb() -> float:
    """Resident memory now (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * 4096 / 2**20


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _by_nprobe(idx: IvfIndex, q: np.ndarray, want: list[list[tuple[str, float]]], k: int,
               nprobes: list[int]) -> dict[str, dict[str, float]]:
    """Recall@k and single-query p50/p99 with each of ``nprobes`` lists probed (the index's
    own ``nprobe`` is restored)."""
    out: dict[str, dict[str, float]] = {}
    keep = idx.nprobe
    try:
        for npb in nprobes:
            idx.nprobe = npb
            p50, p99 = _latency(idx, q, k)
            out[str(npb)] = {"recall": round(_recall(idx.search(q, k), want), 4),
                             "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}
    finally:
        idx.nprobe = keep
    return out


def bench_items(n: int, dim: int, queries: int, exact_below: int,
                nprobes: list[int] | None = None) -> dict[str, Any]:
    g = Gen(dim)
    vecs = g.items(n)
    ids = [f"i{j}" for j in range(n)]
    q = g.profiles(vecs, queries)
    exact = FlatIndex(dim, name="exact")
    exact.upsert(ids, vecs)
    idx = IvfIndex(dim, name="items", exact_below=exact_below, background=False)
    t = time.perf_counter()
    for s in range(0, n, 5000):
        idx.upsert(ids[s:s + 5000], vecs[s:s + 5000])
    fill_s = time.perf_counter() - t
    want = exact.search(q, 20)
    got = idx.search(q, 20)
    p50, p99 = _latency(idx, q, 20)
    e50, e99 = _latency(exact, q[: min(queries, 200)], 20)
    out = {"n": n, "kind": factory_of(idx), "fill_s_inline_training": round(fill_s, 2),
           "recall_at_20": round(_recall(got, want), 4), "search_p50_ms": round(p50, 3),
           "search_p99_ms": round(p99, 3), "exact_p50_ms": round(e50, 3),
           "exact_p99_ms": round(e99, 3), "nprobe": idx.probes}
    if nprobes:
        out["by_nprobe"] = _by_nprobe(idx, q, want, 20, nprobes)
    _log(f"items n={n}: {out}")
    # background training: the longest single call while it runs
    bg = IvfIndex(dim, name="items-bg", exact_below=exact_below, background=True)
    durations: list[float] = []
    calls, t0 = 0, time.perf_counter()
    for s in range(0, n, 500):
        t = time.perf_counter()
        bg.upsert(ids[s:s + 500], vecs[s:s + 500])
        if bg.building:
            bg.search(q[calls % queries], 20)
            calls += 1
            durations.append(time.perf_counter() - t)
    while bg.building:
        t = time.perf_counter()
        bg.upsert(ids[calls % n: calls % n + 1], vecs[calls % n: calls % n + 1])
        bg.search(q[calls % queries], 20)
        calls += 1
        durations.append(time.perf_counter() - t)
    ms = np.array(durations or [0.0]) * 1e3
    out["background_fill_s"] = round(time.perf_counter() - t0, 2)
    out["background_call_p50_ms"] = round(float(np.percentile(ms, 50)), 1)
    out["background_call_p99_ms"] = round(float(np.percentile(ms, 99)), 1)
    out["background_longest_call_ms"] = round(float(ms.max()), 1)
    out["background_calls_during_training"] = calls
    _log(f"items n={n} background: calls (upsert + search) p50 {out['background_call_p50_ms']} "
         f"p99 {out['background_call_p99_ms']} max {out['background_longest_call_ms']} ms "
         f"over {calls} calls")
    return out


def bench_users(n: int, dim: int, queries: int, exact_below: int, churn: float,
                codes: str = "SQ4", nprobes: list[int] | None = None) -> dict[str, Any]:
    g = Gen(dim, seed=11)
    items = g.items(20_000)
    live: dict[str, np.ndarray] = {}  # the profiles: the index re-ranks from them (its source)
    zero = np.zeros(dim, dtype=np.float32)
    idx = IvfIndex(dim, name="users", exact_below=exact_below, background=False, codes=codes,
                   source=lambda ids: np.stack([live.get(u, zero) for u in ids]))
    first = g.profiles(items, n)
    ids = [f"u{j}" for j in range(n)]
    for s in range(0, n, 5000):
        live.update(zip(ids[s:s + 5000], first[s:s + 5000]))
        idx.upsert(ids[s:s + 5000], first[s:s + 5000])
    rss0 = _rss_mb()
    total = int(churn * n)
    next_id, done, upsert_s, upserted, batches = n, 0, 0.0, 0, 0
    keys = list(live)
    pos = {u: j for j, u in enumerate(keys)}
    while done < total:
        b = 500
        pick = g.rng.integers(0, len(keys), b)
        upd = list(dict.fromkeys(keys[j] for j in pick[: int(b * 0.9)]))
        gone = list(dict.fromkeys(keys[j] for j in pick[int(b * 0.9): int(b * 0.95)]))
        gone = [u for u in gone if u not in set(upd)]  # a user is forgotten or updated
        new = [f"u{next_id + j}" for j in range(b - len(upd) - len(gone))]
        next_id += len(new)
        old = np.stack([live[u] for u in upd])
        step = g.near(items, old)
        moved = 0.9 * old + 0.3 * step  # a decayed profile takes in one more item
        moved /= np.linalg.norm(moved, axis=1, keepdims=True)
        fresh = g.profiles(items, len(new))
        for u in gone:  # the profiles change first, then the index (as ProfileStore does)
            del live[u]
        live.update(zip(upd, [r.copy() for r in moved]))  # no views: old batches are freed
        live.update(zip(new, [r.copy() for r in fresh]))
        t = time.perf_counter()
        idx.remove(gone)
        idx.upsert(upd + new, np.concatenate([moved, fresh]))
        upsert_s += time.perf_counter() - t
        upserted += len(upd) + len(new) + len(gone)
        done += b
        batches += 1
        for u in gone:  # swap-remove from the sampling list
            j, last = pos.pop(u), keys.pop()
            if last != u:
                keys[j], pos[last] = last, j
        for u in new:
            pos[u] = len(keys)
            keys.append(u)
        if batches % 200 == 0:
            _log(f"users n={n}: churn {done}/{total}")
    rss1 = _rss_mb()  # before the exact reference below is built
    exact = FlatIndex(dim, name="exact")
    exact.upsert(list(live), np.stack(list(live.values())))
    q = g.profiles(items, queries)
    got, want = idx.search(q, 10), exact.search(q, 10)
    p50, p99 = _latency(idx, q, 10)
    e50, e99 = _latency(exact, q[: min(queries, 200)], 10)
    out = {"n": n, "kind": factory_of(idx), "churn_ops": upserted, "batches": batches,
           "upsert_us_per_vector": round(upsert_s / upserted * 1e6, 1),
           "recall_at_10_after_churn": round(_recall(got, want), 4),
           "search_p50_ms": round(p50, 3), "search_p99_ms": round(p99, 3),
           "exact_p50_ms": round(e50, 3), "exact_p99_ms": round(e99, 3),
           "live": len(idx), "ivf_rows": int(idx._ivf.ntotal) if idx._ivf is not None else None,
           "trainings": idx.trainings, "rss_growth_mb_during_churn": round(rss1 - rss0, 1),
           "index_bytes_per_vector": round(idx.nbytes() / max(len(idx), 1), 1),
           "nprobe": idx.probes}
    if nprobes:
        out["by_nprobe"] = _by_nprobe(idx, q, want, 10, nprobes)
    _log(f"users n={n}: {out}")
    return out


def bench_hnsw(n: int, dim: int, queries: int) -> dict[str, Any]:
    """The alternative: FAISS HNSW (M=32, efConstruction=40) over the same items, against the
    IVF kind trained on all of them: build cost per vector, recall@20, search latency."""
    import faiss as _faiss_typed

    faiss: Any = _faiss_typed  # partial stubs
    g = Gen(dim)
    vecs = g.items(n)
    q = g.profiles(vecs, queries)
    ids = [f"i{j}" for j in range(n)]
    exact = FlatIndex(dim, name="exact")
    exact.upsert(ids, vecs)
    want = exact.search(q, 20)
    h = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    h.hnsw.efConstruction = 40
    t = time.perf_counter()
    h.add(vecs)
    out: dict[str, Any] = {"n": n, "hnsw_build_us_per_vector": round((time.perf_counter() - t) / n * 1e6, 1)}
    for ef in (64, 128):
        params = faiss.SearchParametersHNSW(efSearch=ef)
        _, labels = h.search(q, 20, params=params)
        got = [[(ids[j], 0.0) for j in row if j >= 0] for row in labels]
        times = []
        for row in q:
            t = time.perf_counter()
            h.search(row[None, :], 20, params=params)
            times.append(time.perf_counter() - t)
        out[f"hnsw_ef{ef}_recall_at_20"] = round(_recall(got, want), 4)
        out[f"hnsw_ef{ef}_p99_ms"] = round(float(np.percentile(np.array(times) * 1e3, 99)), 3)
    ivf = IvfIndex(dim, name="ivf", exact_below=100, background=False)
    t = time.perf_counter()
    ivf.upsert(ids, vecs)
    out["ivf_kind"] = factory_of(ivf)
    out["ivf_build_us_per_vector"] = round((time.perf_counter() - t) / n * 1e6, 1)
    out["ivf_recall_at_20"] = round(_recall(ivf.search(q, 20), want), 4)
    out["ivf_p99_ms"] = round(_latency(ivf, q, 20)[1], 3)
    _log(f"hnsw vs ivf n={n}: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m index.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--exact-below", type=int, default=20_000,
                    help="exact-search threshold (the service default)")
    ap.add_argument("--churn", type=float, default=10.0, help="user churn as a multiple of n")
    ap.add_argument("--hnsw-n", type=int, default=30_000,
                    help="size of the HNSW-vs-IVF comparison (0: skip)")
    ap.add_argument("--topics", type=int, default=TOPICS,
                    help="topic centres of the generator (more topics: a harder data set)")
    ap.add_argument("--parts", nargs="+", choices=("items", "users"), default=["items", "users"])
    ap.add_argument("--user-codes", default="SQ4",
                    help="users IVF codes (PROFILES_INDEX_USER_CODES), re-ranked from the profiles")
    ap.add_argument("--nprobes", type=int, nargs="*", default=[],
                    help="also report recall and latency with each of these lists probed")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args(argv)
    if any(v < 1 for v in a.nprobes):
        ap.error("--nprobes must be >= 1")
    _SETUP["topics"] = a.topics
    report: dict[str, Any] = {"dim": a.dim, "topics": a.topics, "items": [], "users": [],
                              "hnsw_vs_ivf": None}
    if a.hnsw_n:
        report["hnsw_vs_ivf"] = bench_hnsw(a.hnsw_n, a.dim, a.queries)
    for n in a.sizes:
        if "items" in a.parts:
            report["items"].append(bench_items(n, a.dim, a.queries, a.exact_below,
                                               a.nprobes))
        if "users" in a.parts:
            report["users"].append(bench_users(n, a.dim, a.queries, a.exact_below, a.churn,
                                               a.user_codes, a.nprobes))
    if a.json:
        print(json.dumps(report))
    else:
        if report["hnsw_vs_ivf"]:
            print("hnsw_vs_ivf", " ".join(f"{k}={v}" for k, v in report["hnsw_vs_ivf"].items()))
        for part in ("items", "users"):
            for row in report[part]:
                print(part, " ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
