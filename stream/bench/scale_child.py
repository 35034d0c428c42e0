"""One measuring process of ``profiles bench scale`` (started by ``stream.bench.scale``).

``python -m stream.bench.scale_child --users N --items M ... --out result.json`` with the
worker's settings in the environment (``PROFILES_*``).  It builds the worker's real
:class:`~stream.worker.pipeline.Pipeline` (hashing encoder of ``--dim``, item vectors from the
pinned generator put into its catalogue), bulk-loads the users' events through
``Pipeline.process`` (the worker's batch step: classify, dedupe, profiles, interests, user stats,
signals, bandit, users index), and then, as asked:

- memory: RSS + swap of this fresh process before and after the users (``/proc/self/smaps_rollup``);
- ``--builder``: writes the state as the worker's snapshots, in the state folder and (with
  ``PROFILES_CHANGELOG``) the Kafka changelog, as the worker does (``next_offset`` 0: the bulk
  log is not in the topic), and the catalogue snapshot, for the recovery run on a real worker;
- ``--rate-events R``: events/s of ``Pipeline.process`` on ``R`` events of random users;
- ``--steady-s T``: ``T`` s at a steady ``--steady-rate`` events/s with the snapshot timer, while
  single-threaded item searches are timed; CPU s per s and bytes written per s;
- item recall@20 of the catalogue's index against exact search, profile-like queries;
- ``--churn C``: ``C`` x users events in batches (90 % updates, 5 % forgets, 5 % new users), then
  users-index recall@10 against exact search over the state's vectors, and memory again;
- ``--breakdown``: last, the bytes per user each part frees when dropped (a lower bound each).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.bench.scale_data import (
    TYPE_MIX,
    EventBlock,
    ScaleData,
    percentile,
    recall_at_k,
    top_k_exact,
)

__all__ = ["main", "memory_bytes"]


def memory_bytes() -> int:
    """Resident plus swapped bytes of this process, file-mapped pages included."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed arenas back: RSS is what is held
    except OSError:
        pass
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Rss:", "Swap:")):
                total += int(line.split()[1]) * 1024
    return total


def _progress(total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of transformers
        return None
    return tqdm(total=total, desc=desc, unit="ev", file=sys.stderr, mininterval=2.0,
                leave=False)


def _wait_built(index: Any) -> None:
    wait = getattr(index, "wait_built", None)
    if wait is not None:
        wait(600)


class Harness:
    """The worker's pipeline without Kafka, on the system clock (the snapshot timer runs on
    it), with its records made here (users partitioned like Kafka's default partitioner)."""

    def __init__(self, a: argparse.Namespace) -> None:
        from encoder import HashingEncoder
        from stream.settings import Settings
        from stream.worker.faiss_threads import set_faiss_threads
        from stream.worker.pipeline import Pipeline
        from stream.worker.ports import SystemClock
        from stream.worker.testing import DeadLetters

        self.s = Settings.from_env()
        set_faiss_threads(self.s.faiss_threads)  # as the worker does (service.run)
        from stream.worker.blas_threads import set_blas_threads

        set_blas_threads(self.s.blas_threads)  # as the worker does (service.run)
        from stream.worker.gil import set_gil_switch

        set_gil_switch(self.s.gil_switch_ms)  # PROFILES_GIL_SWITCH_MS, as the worker does
        from stream.worker.malloc_tune import set_mmap_threshold

        set_mmap_threshold(self.s.malloc_mmap_threshold)  # as the worker does (service.run)
        self.a = a
        self.data = ScaleData(a.seed, a.dim, a.items, a.users, a.events_per_user)
        self.dead = DeadLetters()
        stores: dict[str, Any] = {}
        if a.builder:  # the worker's own state store: the folder, and the Kafka changelog
            from stream.kafka.changelog import changelog_store
            from stream.worker.blobs import LocalBlobStore

            model = HashingEncoder(a.dim).fingerprint
            stores["blob_store"] = lambda folder: changelog_store(self.s, LocalBlobStore(folder),
                                                                  model)
        self.p = Pipeline(self.s, HashingEncoder(a.dim), dead_letters=self.dead,
                          clock=SystemClock(), signals=None, **stores)
        self.p.sharing.mark_caught_up()
        self.parts = self.s.partitions
        self.offsets = dict.fromkeys(range(self.parts), 0)
        # partition per user number ("u<k>"), one int16 each: a dict of user strings here
        # added ~100 B per user of the bench's own to the bytes_per_user slope
        self._part = np.full(0, -1, dtype=np.int16)
        self.types = [t for t, _ in TYPE_MIX]

    async def start(self) -> None:
        from stream.core.events import Item

        self.p.encoder_service.start()
        cat, d = self.p.catalog, self.data
        vecs = d.item_vectors()
        for s in range(0, d.n_items, 5000):
            ids = d.item_ids(range(s, min(d.n_items, s + 5000)))
            cat.index.upsert(ids, vecs[s:s + 5000])
            for j in range(s, min(d.n_items, s + 5000)):
                r = d.item_record(j)
                cat.items[r["item_id"]] = Item(r["item_id"], r["title"], r["category"])
        _wait_built(cat.index)
        # the items topic holds item j in partition j % P, in order (stream.bench.scale)
        cat.offsets = {p: len(range(p, d.n_items, self.parts)) for p in range(self.parts)}
        cat.version += 1
        cat.caught_up.set()
        await self.p.assign(range(self.parts))

    def partition(self, user: str) -> int:
        from stream.worker.testing import partition_of

        k = int(user[1:])
        if k >= len(self._part):
            grow = max(k + 1, 2 * len(self._part)) - len(self._part)
            self._part = np.concatenate([self._part, np.full(grow, -1, dtype=np.int16)])
        p = int(self._part[k])
        if p < 0:
            p = partition_of(user.encode(), self.parts)
            self._part[k] = p
        return p

    def records(self, b: EventBlock, prefix: str, first: int = 0) -> list[Any]:
        from stream.worker.records import Record

        now = int(time.time() * 1000)
        out = []
        ids = self.data.item_ids(b.item)
        for i, (u, t, ts) in enumerate(zip(b.user.tolist(), b.type.tolist(), b.ts.tolist())):
            user = f"u{u}"
            p = self.partition(user)
            raw = orjson.dumps({"event_id": f"{prefix}{first + i}", "user_id": user,
                                "type": self.types[t], "ts": ts, "item_id": ids[i]})
            out.append(Record(p, self.offsets[p], now, user.encode(), raw))
            self.offsets[p] += 1
        return out

    def batches(self, b: EventBlock, prefix: str) -> Iterator[list[Any]]:
        n = self.s.batch_size
        for s in range(0, len(b), n):
            part = EventBlock(b.user[s:s + n], b.item[s:s + n], b.type[s:s + n], b.ts[s:s + n])
            yield self.records(part, prefix, s)

    async def bulk(self) -> float:
        bar = _progress(self.data.n_users * self.data.epu, f"load {self.data.n_users} users")
        t0 = time.perf_counter()
        for block in self.data.bulk(0, self.data.n_users):
            prefix = f"b{int(block.user[0]) if len(block) else 0}-"
            for batch in self.batches(block, prefix):
                await self.p.process(batch)
                if bar is not None:
                    bar.update(len(batch))
        if bar is not None:
            bar.close()
        _wait_built(self.p.profiles.index)
        for st in self.p.profiles.states.values():
            if st.journal.parent is None:  # the next snapshot is a base whatever it lists:
                st.journal.users = set()  # a worker's journal holds one interval's users,
        return time.perf_counter() - t0  # not the whole bulk log's (not per-user state)

    def users(self) -> int:
        return sum(len(st.profiles) for st in self.p.profiles.states.values())


async def _rate(h: Harness, n: int) -> dict[str, Any]:
    batches = list(h.batches(h.data.tail(1, n), "r"))
    t0 = time.perf_counter()
    for b in batches:
        await h.p.process(b)
    sec = time.perf_counter() - t0
    return {"events": n, "seconds": round(sec, 3), "events_per_s": round(n / sec, 1)}


def _io_written() -> int:
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def _steady(h: Harness, seconds: float, rate: float) -> dict[str, Any]:
    """Ingest at ``rate`` events/s for ``seconds`` with the snapshot timer, timing
    single-threaded item searches meanwhile (``/candidates`` and ``/similar`` are timed on the
    real worker: stream.bench.scale_recovery)."""
    import faiss

    faiss.omp_set_num_threads(1)  # single-threaded searches, as the issue asks
    n = max(h.s.batch_size, int(rate * seconds))
    batches = list(h.batches(h.data.tail(2, n), "s"))
    queries = h.data.queries(256, tag=2)
    lat: dict[str, list[float]] = {"item_search": []}
    done = asyncio.Event()
    snaps = [0]

    async def ingest() -> None:
        t0 = time.monotonic()
        sent = 0
        for b in batches:
            delay = t0 + sent / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await h.p.process(b)
            sent += len(b)
            await asyncio.sleep(0)
        done.set()

    async def timer() -> None:
        while not done.is_set():
            snaps[0] += await h.p.snapshot()
            await asyncio.sleep(min(0.25, h.s.snapshot_interval_s))

    async def probe() -> None:
        i = 0
        while not done.is_set():
            t = time.perf_counter()
            h.p.catalog.index.search(queries[i % len(queries)][None, :], 20)
            lat["item_search"].append((time.perf_counter() - t) * 1e3)
            i += 1
            await asyncio.sleep(0.02)

    # The bulk load left every row changed: the first snapshot of each partition is a base
    # of all of it (at 10^6 users ~2 GB, most of the window).  Written first and reported
    # apart, so the window measures the steady state: deltas of the users the ingest changes.
    w0, c0, t0 = _io_written(), time.process_time(), time.monotonic()
    await h.p.snapshot(everything=True)
    base = {"seconds": round(time.monotonic() - t0, 2),
            "cpu_s": round(time.process_time() - c0, 2), "bytes_written": _io_written() - w0}
    w0, c0, t0 = _io_written(), time.process_time(), time.monotonic()
    await asyncio.gather(ingest(), timer(), probe())
    wall = time.monotonic() - t0
    cpu, written = time.process_time() - c0, _io_written() - w0
    out: dict[str, Any] = {"events": n, "seconds": round(wall, 2),
                           "achieved_events_per_s": round(n / wall, 1),
                           "cpu_s_per_s": round(cpu / wall, 3),
                           "bytes_written_per_s": round(written / wall),
                           "snapshots": snaps[0], "base_snapshot": base}
    for name, values in lat.items():
        out[f"{name}_n"] = len(values)
        out[f"{name}_p50_ms"] = percentile(values, 50)
        out[f"{name}_p99_ms"] = percentile(values, 99)
    return out


def _item_recall(h: Harness, n: int = 200) -> float:
    q = h.data.queries(n, tag=1)
    got = h.p.catalog.index.search(q, 20)
    want = top_k_exact(h.data.item_vectors(), q, 20)
    return recall_at_k([[int(i[1:]) for i, _ in row] for row in got], want)


def _live_vectors(h: Harness) -> tuple[list[str], np.ndarray]:
    users: list[str] = []
    rows = []
    for st in h.p.profiles.partitions():
        ids = st.profiles.users()
        users += ids
        if ids:
            rows.append(np.asarray(st.profiles.vectors(ids), dtype=np.float32))
    return users, np.concatenate(rows)


def _user_recall(h: Harness, n: int = 200) -> float:
    """Users-index search (what ``/similar`` asks) against brute force over the state."""
    users, mat = _live_vectors(h)
    rng = np.random.default_rng([h.a.seed, 5])
    pick = rng.choice(len(users), min(n, len(users)), replace=False)
    q = mat[pick]
    want = top_k_exact(mat, q, 10, exclude=pick.tolist())
    at = {u: i for i, u in enumerate(users)}
    got = [[at[u] for u, _ in h.p.profiles.search(q[j], 10, exclude={users[int(i)]})]
           for j, i in enumerate(pick)]
    return recall_at_k(got, want)


def _ivf_rows(index: Any) -> int | None:
    """Rows the trained IVF holds (None while searching exactly): must equal the live users."""
    ivf = getattr(index, "_ivf", None)
    return None if ivf is None else int(ivf.ntotal)


async def _churn(h: Harness, factor: float) -> dict[str, Any]:
    """``factor`` x users events in batches of ``batch_size``: 90 % events of live users, 5 %
    forgets of live users, 5 % first events of new users."""
    from stream.worker.records import Record

    d = h.data
    total = int(factor * d.n_users)
    live = list(range(d.n_users))
    pos = {u: i for i, u in enumerate(live)}
    next_user, done, tag = d.n_users, 0, 100
    rng = np.random.default_rng([h.a.seed, 6])
    mem0, t0 = memory_bytes(), time.perf_counter()
    bar = _progress(total, "churn")
    bs = h.s.batch_size
    while done < total:
        n_upd, n_forget = int(bs * 0.9), int(bs * 0.05)
        upd = h.data.tail(tag, n_upd, np.asarray(live, dtype=np.int64))
        tag += 1
        gone = {int(live[j]) for j in rng.integers(0, len(live), n_forget)} - set(upd.user.tolist())
        new = np.arange(next_user, next_user + bs - n_upd - n_forget, dtype=np.int64)
        next_user += new.size
        fresh = h.data.tail(tag, new.size, new)
        fresh.user = new  # one first event each
        tag += 1
        recs = h.records(upd, f"c{tag}-") + h.records(fresh, f"n{tag}-")
        now = int(time.time() * 1000)
        for u in sorted(gone):
            user = f"u{u}"
            p = h.partition(user)
            recs.append(Record(p, h.offsets[p], now, user.encode(), orjson.dumps(
                {"event_id": f"f{u}", "user_id": user, "type": "forget", "ts": now - 1000})))
            h.offsets[p] += 1
        await h.p.process(recs)
        for u in gone:
            j, last = pos.pop(u), live.pop()
            if last != u:
                live[j], pos[last] = last, j
        for u in new.tolist():
            pos[u] = len(live)
            live.append(u)
        done += len(recs)
        if bar is not None:
            bar.update(len(recs))
    if bar is not None:
        bar.close()
    _wait_built(h.p.profiles.index)
    sec = time.perf_counter() - t0
    held = h.users()
    return {"ops": done, "seconds": round(sec, 1), "live_users": len(live), "state_users": held,
            "indexed": h.p.profiles.indexed(), "ivf_rows": _ivf_rows(h.p.profiles.index),
            "memory_growth_bytes": memory_bytes() - mem0,
            "memory_growth_bytes_per_op": round((memory_bytes() - mem0) / max(1, done), 2),
            "tombstones": sum(len(st.tombstones) for st in h.p.profiles.states.values()),
            "dead_letters": h.dead.reasons()}


def _breakdown(h: Harness) -> dict[str, float | None]:
    """Bytes per user freed by dropping each per-user part in turn (users index, dedupe window,
    user stats, signals, interests, profiles; the catalogue stays).  A lower bound per part:
    memory the allocator keeps after a free is not seen; what no drop freed is ``unattributed``.
    Destroys the state: the last step of a measuring process."""
    from stream.core.dedupe import DedupeWindow
    from stream.core.profile import ProfileTable, UserStats
    from stream.core.signals import Signals
    from stream.worker.indexes import index_spec

    p, n = h.p, max(1, h.users())
    states = list(p.profiles.states.values())
    def each(attr: str, make: Any) -> Any:
        def drop() -> None:
            for st in states:
                setattr(st, attr, make())
        return drop

    def no_index() -> None:
        p.profiles.index = index_spec(h.s).make(h.a.dim, "users")

    steps: list[tuple[str, Any]] = [
        ("users_index", no_index),
        ("dedupe", each("dedupe", lambda: DedupeWindow(h.s.dedupe_window))),
        ("user_stats", each("users", lambda: UserStats(p.pp))),
        ("signals", each("signals", lambda: Signals(p.sp))),
        ("interests", each("interests", lambda: None)),
        ("profiles", each("profiles", lambda: ProfileTable(h.a.dim, p.pp))),
    ]
    out: dict[str, float | None] = {}
    before = start = memory_bytes()
    for name, drop in steps:
        try:
            drop()
        except Exception:  # another version's constructor: that part is not attributed
            out[name] = None
            continue
        now = memory_bytes()
        out[name] = round((before - now) / n, 1)
        before = now
    out["freed_total"] = round((start - before) / n, 1)
    return out


async def run(a: argparse.Namespace) -> dict[str, Any]:
    def factory_of(index: Any) -> str:  # the FAISS factory string searches use now
        return str(getattr(index, "factory", "Flat"))

    h = Harness(a)
    out: dict[str, Any] = {"users": a.users, "items": a.items, "dim": a.dim,
                           "events_per_user": a.events_per_user}
    out["memory_start"] = memory_bytes()
    await h.start()
    out["memory_catalogue"] = memory_bytes()
    out["load_seconds"] = round(await h.bulk(), 2)
    out["memory_loaded"] = memory_bytes()
    out["state_users"] = h.users()
    out["dead_letters"] = h.dead.reasons()
    out["item_index_kind"] = factory_of(h.p.catalog.index)
    out["user_index_kind"] = factory_of(h.p.profiles.index)
    # lists a search probes (calibrated at each training; 0 while exact)
    out["item_index_probes"] = int(getattr(h.p.catalog.index, "probes", 0))
    out["user_index_probes"] = int(getattr(h.p.profiles.index, "probes", 0))
    if a.builder:
        for st in h.p.profiles.states.values():
            st.next_offset = 0  # the bulk log is not in the topic: the tail starts at 0
        t = time.perf_counter()
        await h.p.snapshot(everything=True)
        out["snapshot_all_seconds"] = round(time.perf_counter() - t, 2)
        out["snapshot_bytes"] = sum(f.stat().st_size for f in Path(h.s.state_dir).glob("**/*")
                                    if f.is_file())
    if a.rate_events:
        out["rate"] = await _rate(h, a.rate_events)
    if a.steady_s:
        out["steady"] = await _steady(h, a.steady_s, a.steady_rate)
    if a.recall:
        out["item_recall_at_20"] = round(_item_recall(h), 4)
    if a.churn:
        out["churn"] = await _churn(h, a.churn)
        out["user_recall_at_10_after_churn"] = round(_user_recall(h), 4)
        out["user_index_kind_after_churn"] = factory_of(h.p.profiles.index)
        out["user_index_probes_after_churn"] = int(getattr(h.p.profiles.index, "probes", 0))
    if a.breakdown:
        out["bytes_per_user_by_part"] = _breakdown(h)
    await h.p.encoder_service.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stream.bench.scale_child")
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--events-per-user", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--builder", action="store_true")
    ap.add_argument("--rate-events", type=int, default=0)
    ap.add_argument("--steady-s", type=float, default=0.0)
    ap.add_argument("--steady-rate", type=float, default=5000.0)
    ap.add_argument("--recall", action="store_true")
    ap.add_argument("--churn", type=float, default=0.0)
    ap.add_argument("--breakdown", action="store_true",
                    help="finally, the bytes per user each part frees (destroys the state)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    result = asyncio.run(run(a))
    a.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
