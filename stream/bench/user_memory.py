"""Bytes per user of the base per-user state, part by part (a micro-benchmark, not a test).

    python -m stream.bench.user_memory [--lo 20000] [--hi 100000] [--events-per-user 20]
                                       [--partitions 4] [--no-index] [--stats-from FILE]

A smaller, faster companion of ``profiles bench scale``'s ``bytes_per_user``: no encoder, no
pipeline, no Kafka.  Each size runs in a fresh child process that feeds the pinned bulk log of
``stream.bench.scale_data`` (``--events-per-user`` events per user, 1-3 categories each, 5 %
purchases) in batches of 500 straight into the per-partition core structures the worker's
batch step updates: :class:`~stream.core.profile.ProfileTable` (dim 384),
:class:`~stream.core.profile.UserStats`, the :class:`~stream.core.dedupe.DedupeWindow`
(``PROFILES_DEDUPE_WINDOW`` pairs per partition) and the users index of the worker's settings
(``users_index_spec``: SQ4 IVF above ``PROFILES_INDEX_EXACT_BELOW``).  Every string is made
per event, as decoding does.  Printed per size: RSS + swap after ``gc.collect()`` and
``malloc_trim`` (:func:`stream.bench.scale_child.memory_bytes`), the arrays' bytes per user,
and the RSS each part frees when dropped (users index, dedupe, user stats, profiles: a lower
bound each); then the slope between the sizes.  ``--stats-from FILE`` takes ``UserStats`` from
another version of ``stream/core/profile.py`` (e.g. ``git show HEAD:stream/core/profile.py``)
to compare before and after in one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from stream.bench.scale_data import TYPE_MIX, ScaleData

__all__ = ["main"]

DIM = 384


def _stats_class(path: str | None) -> Any:
    if not path:
        from stream.core.profile import UserStats

        return UserStats
    spec = importlib.util.spec_from_file_location("_other_profile", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.UserStats


def child(n_users: int, epu: int, parts: int, with_index: bool, stats_from: str | None
          ) -> dict[str, Any]:
    from stream.bench.scale_child import memory_bytes
    from stream.core.dedupe import DedupeWindow
    from stream.core.profile import ProfileParams, ProfileTable
    from stream.settings import Settings
    from stream.worker.indexes import users_index_spec

    s = Settings.from_env()
    from stream.worker.malloc_tune import set_mmap_threshold

    set_mmap_threshold(s.malloc_mmap_threshold)  # as the worker does (service.run)
    stats_cls = _stats_class(stats_from)
    pp = ProfileParams()
    data = ScaleData(0, DIM, 10_000, n_users, epu)
    vecs = data.item_vectors()
    cats = [f"c{int(t) % 50}" for t in data.item_topic.tolist()]
    types = [t for t, _ in TYPE_MIX]
    tables = [ProfileTable(DIM, pp) for _ in range(parts)]
    stats = [stats_cls(pp) for _ in range(parts)]
    dedupe = [DedupeWindow(s.dedupe_window) for _ in range(parts)]

    def source(ids: Sequence[str]) -> np.ndarray:
        return tables[int(ids[0][1:]) % parts].vectors(ids) if len(ids) == 1 else np.stack(
            [tables[int(u[1:]) % parts].vectors([u])[0] for u in ids])

    index = users_index_spec(s).make(DIM, "users", source=source) if with_index else None
    mem0 = memory_bytes()
    t0 = time.perf_counter()
    for block in data.bulk(0, n_users):
        for lo in range(0, len(block), 500):
            u = block.user[lo:lo + 500]
            it = block.item[lo:lo + 500]
            ty = block.type[lo:lo + 500]
            ts = block.ts[lo:lo + 500]
            p_of = u % parts
            for p in range(parts):
                sel = np.flatnonzero(p_of == p)
                if not sel.size:
                    continue
                users = [f"u{x}" for x in u[sel].tolist()]  # new strings per event
                tnames = [types[x] for x in ty[sel].tolist()]
                items = [f"i{x}" for x in it[sel].tolist()]
                for k, x in enumerate(sel.tolist()):
                    dedupe[p].add(users[k], f"b{lo}-{x}-{int(ts[x])}")
                w = pp.weight_array(tnames)
                touched = tables[p].apply(users, ts[sel], w, vecs[it[sel]])
                stats[p].update(users, tnames, ts[sel], [cats[x] for x in it[sel].tolist()],
                                items)
                if index is not None:
                    index.upsert(touched, tables[p].vectors(touched))
    if index is not None and hasattr(index, "wait_built"):
        index.wait_built(600)
    load_s = time.perf_counter() - t0
    held = sum(len(t) for t in tables)
    mem1 = memory_bytes()
    out: dict[str, Any] = {
        "users": held, "load_s": round(load_s, 1), "rss_before": mem0, "rss_loaded": mem1,
        "user_index_kind": str(getattr(index, "factory", "none")),
        "arrays_per_user": {
            "profile": round(sum(t.nbytes() for t in tables) / held, 1),
            "user_stats": (round(sum(x.nbytes() for x in stats) / held, 1)
                           if hasattr(stats[0], "nbytes") else None),
            "dedupe_entries_per_user": round(sum(len(d) for d in dedupe) / held, 2),
        },
    }
    freed: dict[str, float] = {}
    before = mem1

    def drop(name: str) -> None:
        nonlocal before
        now = memory_bytes()
        freed[name] = round((before - now) / held, 1)
        before = now

    index = None
    drop("users_index")
    dedupe = [DedupeWindow(s.dedupe_window) for _ in range(parts)]
    drop("dedupe")
    stats = [stats_cls(pp) for _ in range(parts)]
    drop("user_stats")
    tables = [ProfileTable(DIM, pp) for _ in range(parts)]
    drop("profiles")
    freed["freed_total"] = round((mem1 - before) / held, 1)
    out["freed_per_user"] = freed
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stream.bench.user_memory")
    ap.add_argument("--lo", type=int, default=20_000)
    ap.add_argument("--hi", type=int, default=100_000)
    ap.add_argument("--events-per-user", type=int, default=20)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--no-index", action="store_true", help="leave the users index out")
    ap.add_argument("--stats-from", default=None,
                    help="a stream/core/profile.py of another version to take UserStats from")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.lo < 1000 or a.hi <= a.lo or a.events_per_user < 1 or a.partitions < 1:
        print("error: need 1000 <= --lo < --hi, --events-per-user >= 1, --partitions >= 1",
              file=sys.stderr)
        return 2
    if a.child:
        print(json.dumps(child(a.child, a.events_per_user, a.partitions, not a.no_index,
                               a.stats_from)))
        return 0
    runs = {}
    for n in (a.lo, a.hi):
        cmd = [sys.executable, "-m", "stream.bench.user_memory", "--child", str(n),
               "--events-per-user", str(a.events_per_user), "--partitions", str(a.partitions)]
        if a.no_index:
            cmd.append("--no-index")
        if a.stats_from:
            cmd += ["--stats-from", a.stats_from]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            print(res.stderr[-2000:], file=sys.stderr)
            return 1
        runs[n] = json.loads(res.stdout.strip().splitlines()[-1])
    lo, hi = runs[a.lo], runs[a.hi]
    slope = (hi["rss_loaded"] - lo["rss_loaded"]) / (hi["users"] - lo["users"])
    print(json.dumps({"bytes_per_user_slope": round(slope, 1), "lo": lo, "hi": hi,
                      "stats_from": a.stats_from or "this tree"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
