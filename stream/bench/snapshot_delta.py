"""``python -m stream.bench.snapshot_delta``: the cost of a partition snapshot before and after
issue 12's incremental state, side by side in one run.

A partition of ``--users`` users (``--events`` events each: profile, user stats, interests,
recent items, popularity, co-visitation, dedupe entries, built with the tables' batch-apply
functions the worker uses), then ``--rounds`` rounds in which ``--changed`` of the users get
one event each.  Per round it serialises the partition both ways and reports bytes and CPU
seconds (``time.process_time``):

* ``full``: the whole partition (what every snapshot wrote before; still a *base* now);
* ``delta``: what changed since the previous snapshot (``stream.worker.deltas``), written
  through a :class:`~stream.worker.snapshots.SnapshotStore` into a temporary folder;

and the load time of the base plus all deltas against the base alone.  Prints one JSON
document.  A benchmark, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

import numpy as np

from stream.core.bandit import BanditParams
from stream.core.interests import InterestParams
from stream.core.profile import ProfileParams
from stream.worker.snapshots import SnapshotStore
from stream.worker.state import PartitionState

T = 1_700_000_000_000


def _apply(st: PartitionState, users: list[str], rng: np.random.Generator, ts: int,
           dim: int, items: int) -> None:
    n = len(users)
    times = np.full(n, ts, dtype=np.int64)
    vec = rng.standard_normal((n, dim)).astype(np.float32)
    st.journal.touch(users)  # as ProfileStore.apply marks them
    w = np.ones(n)
    st.profiles.apply(users, times, w, vec)
    if st.interests is not None:
        st.interests.apply(users, times, w, vec)
    its = [f"item-{k}" for k in rng.integers(0, items, n).tolist()]
    st.users.update(users, ["view"] * n, times, ["c"] * n, its)
    st.signals.apply(users, its, times, ["view"] * n)
    for u in users:
        st.dedupe.add(u, f"{u}@{ts}")
    st.next_offset += n


def run(users: int, events: int, changed: float, rounds: int, dim: int, items: int,
        interests_k: int, dedupe: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    ip = InterestParams(k=interests_k) if interests_k else None
    st = PartitionState.empty(0, dim, ProfileParams(), BanditParams(), dedupe, "bench", ip=ip)
    names = [f"user-{i:08d}" for i in range(users)]
    t0 = time.perf_counter()
    for e in range(events):
        for i in range(0, users, 50_000):
            _apply(st, names[i:i + 50_000], rng, T + e, dim, items)
    build_s = time.perf_counter() - t0
    out: dict[str, Any] = {"users": users, "events_per_user": events, "dim": dim,
                           "interests_k": interests_k, "dedupe_window": dedupe,
                           "changed_share": changed, "build_s": round(build_s, 1), "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        store = SnapshotStore(tmp, "events", max_deltas=rounds + 1)
        c0 = time.process_time()
        base = store.dumps(st)
        out["base_cpu_s"] = round(time.process_time() - c0, 3)
        out["base_bytes"] = len(base)
        store.write(0, base)
        k = max(1, int(users * changed))
        for r in range(rounds):
            pick = sorted(rng.choice(users, k, replace=False).tolist())
            _apply(st, [names[i] for i in pick], rng, T + events + r, dim, items)
            c0 = time.process_time()
            full = SnapshotStore.encode(st.to_dict(), st.next_offset)
            full_cpu = time.process_time() - c0
            c0 = time.process_time()
            delta = store.dumps(st)
            delta_cpu = time.process_time() - c0
            assert delta[:6] == b"PDELT2", "a delta was expected"
            store.write(0, delta)
            out["rounds"].append({"full_bytes": len(full), "full_cpu_s": round(full_cpu, 3),
                                  "delta_bytes": len(delta),
                                  "delta_cpu_s": round(delta_cpu, 4)})
        c0 = time.perf_counter()
        merged = store.read(0)
        out["load_base_plus_deltas_s"] = round(time.perf_counter() - c0, 3)
        assert merged is not None and merged["next_offset"] == st.next_offset
        one = SnapshotStore(tmp + "/one", "events")
        one.write(0, SnapshotStore.encode(st.to_dict(), st.next_offset))
        c0 = time.perf_counter()
        one.read(0)
        out["load_full_s"] = round(time.perf_counter() - c0, 3)
    rs = out["rounds"]
    out["full_bytes_mean"] = int(np.mean([r["full_bytes"] for r in rs]))
    out["delta_bytes_mean"] = int(np.mean([r["delta_bytes"] for r in rs]))
    out["full_cpu_s_mean"] = round(float(np.mean([r["full_cpu_s"] for r in rs])), 3)
    out["delta_cpu_s_mean"] = round(float(np.mean([r["delta_cpu_s"] for r in rs])), 4)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m stream.bench.snapshot_delta",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=2, help="events per user before the rounds")
    ap.add_argument("--changed", type=float, default=0.01, help="share of users changed a round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--interests-k", type=int, default=4)
    ap.add_argument("--dedupe", type=int, default=1_000_000, help="dedupe window entries")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.users < 1 or not 0 < a.changed <= 1 or a.rounds < 1 or a.events < 1:
        ap.error("need --users >= 1, 0 < --changed <= 1, --rounds >= 1, --events >= 1")
    print(json.dumps(run(a.users, a.events, a.changed, a.rounds, a.dim, a.items,
                         a.interests_k, a.dedupe, a.seed), indent=1))


if __name__ == "__main__":
    main()
