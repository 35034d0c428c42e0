"""Recovery after SIGKILL of a real ``profiles worker`` holding the bench's users.

The state was bulk-built by a :mod:`stream.bench.scale_child` ``--builder`` process and written
as the worker's own snapshots (partitions with ``next_offset`` 0, and the catalogue with the
pinned item vectors and the items topic's offsets).  Here, on a real broker (the embedded Tansu
unless ``--bootstrap``): the catalogue is produced to the items topic (item ``j`` in partition
``j % P``, so the catalogue snapshot's offsets are its end), a worker starts from the snapshots,
a tail of events is produced at a steady rate while ``/users/{id}/candidates`` and
``/users/{id}/similar`` are timed over HTTP, the tail is applied, the worker is SIGKILLed (what
no snapshot covered must be re-applied), and a second worker starts on the same state folder.
``recovery_s`` runs from the kill until ``/readyz`` is 200 *and* sampled profiles equal the
offline oracle to 1e-5 *and* ``/similar`` recall@10 against brute force over the oracle is at
least 0.95.  Its phases: ``ready_s`` (the kill until ``/readyz`` is 200: the consumer group's
session timeout, the restore from the changelog, the load), then ``caught_up_s`` (until every
partition's state covers the tail's end, polled on ``/stats``: the ``replayed_events`` no
snapshot covered, at ``replay_events_per_s``), then the checks.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.bench.scale_data import (
    TYPE_MIX,
    ScaleData,
    oracle_sums,
    percentile,
    recall_at_k,
    top_k_exact,
)
from stream.core.errors import ProfilesError
from stream.settings import Settings

__all__ = ["oracle_matrix", "recover"]

PROFILE_TOL = 1e-5
RECALL_GOAL = 0.95


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def oracle_matrix(data: ScaleData, tail: Any, s: Settings, chunk: int = 2000) -> np.ndarray:
    """Every user's profile (normalised, float32) over the bulk log and ``tail``."""
    weights = [s.event_weight_map().get(t, 0.0) for t, _ in TYPE_MIX]
    vecs = data.item_vectors()
    out = np.empty((data.n_users, data.dim), dtype=np.float32)
    for a in range(0, data.n_users, chunk):
        b = min(data.n_users, a + chunk)
        sums = oracle_sums([*data.bulk(a, b), tail], vecs, np.arange(a, b), weights,
                           s.half_life_ms)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        out[a:b] = sums / np.where(norms > 0, norms, 1.0)
    return out


def _produce(s: Settings, topic: str, msgs: list[tuple[bytes, bytes, int]],
             rate: float | None = None) -> None:
    """Send every message (at ``rate`` per s on a fixed schedule when given); all acked."""
    from stream.kafka.clients import Publisher

    t0 = time.monotonic()
    with Publisher(s, client_id="profiles-bench-scale", enable_idempotence=False) as pub:
        for i, (key, value, partition) in enumerate(msgs):
            if rate is not None and i % 100 == 0:
                time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            pub.send(topic, value, key=key, partition=partition)
        pub.flush()
    if pub.acks.acked != len(msgs) or pub.acks.errors:
        raise ProfilesError(f"producing to {topic}: {pub.acks.acked}/{len(msgs)} acked, "
                            f"errors {dict(pub.acks.errors)}")


def _replayed(log_path: Path, tail_events: int) -> int | None:
    """Tail events the restart re-applied: the tail less the offsets its snapshots covered
    (the worker logs where each partition resumed)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    resumed = [int(m) for m in re.findall(r"partition \d+: resumed at offset (\d+)", text)]
    return tail_events - sum(resumed) if resumed else None


_PHASES = {  # the restarted worker's log lines of each partition's load (seconds summed)
    "restore_s": r"changelog \S+ partition \d+: restored .* in ([0-9.]+)s",
    "read_s": r"partition \d+: snapshot read in ([0-9.]+)s",
    "build_s": r"partition \d+: snapshot read in [0-9.]+s, state built in ([0-9.]+)s",
    "index_s": r"partition \d+: resumed at offset \d+ .*indexed in ([0-9.]+)s",
}


def _load_phases(log_path: Path) -> dict[str, float]:
    """Seconds the restarted worker spent per load phase, summed over its partitions
    (``read_s`` includes ``restore_s``: reading a snapshot restores it from the changelog)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return {}
    return {k: round(sum(float(m) for m in re.findall(rx, text)), 2)
            for k, rx in _PHASES.items()}


def _probe(url: str, users: int, stop: Any, seed: int) -> dict[str, Any]:
    """``/users/{id}/candidates?k=20`` and ``/users/{id}/similar?k=10`` of random users,
    alternately, every 25 ms until ``stop`` is set: client-side latencies of the answers."""
    rng = np.random.default_rng([seed, 10])
    lat: dict[str, list[float]] = {"candidates": [], "similar": []}
    statuses: dict[str, int] = {}
    http = _Http(url)
    try:
        i = 0
        while not stop.is_set():
            name = ("candidates", "similar")[i % 2]
            u = int(rng.integers(0, users))
            path = f"/users/u{u}/candidates?k=20" if name == "candidates" else \
                f"/users/u{u}/similar?k=10"
            t = time.perf_counter()
            try:
                status, _ = http.get(path)
            except OSError:
                http.close()
                http = _Http(url)
                status = 0
            if status == 200:
                lat[name].append((time.perf_counter() - t) * 1e3)
            statuses[f"{name}_{status}"] = statuses.get(f"{name}_{status}", 0) + 1
            i += 1
            stop.wait(0.025)
    finally:
        http.close()
    out: dict[str, Any] = {"statuses": statuses}
    for name, values in lat.items():
        out[f"{name}_n"] = len(values)
        out[f"{name}_p50_ms"] = percentile(values, 50)
        out[f"{name}_p99_ms"] = percentile(values, 99)
    return out


def _applied(w: Any) -> int:
    return int(w.stats().get("events_applied", 0))


def _caught_up(w: Any, ends: list[int]) -> bool:
    """Whether every partition's state covers its end offset ``ends[p]`` (``/stats``)."""
    got = {int(p): int(o) for p, o in (w.stats().get("partitions") or {}).items()}
    return all(got.get(p, -1) >= end for p, end in enumerate(ends))


class _Http:
    """GETs over one kept-alive connection (a check asks a few hundred questions)."""

    def __init__(self, url: str) -> None:
        import http.client
        from urllib.parse import urlsplit

        u = urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=10)

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        return r.status, r.read()

    def close(self) -> None:
        self.conn.close()


def _check(w: _Http, data: ScaleData, oracle: np.ndarray, tail_users: np.ndarray,
           seed: int) -> dict[str, Any]:
    """Sampled profiles against the oracle, and ``/similar`` recall@10 against brute force."""
    rng = np.random.default_rng([seed, 8])
    sample = np.unique(np.concatenate([tail_users[:100],
                                       rng.integers(0, data.n_users, 100)]))
    # look-alikes first, then profiles: the index is read closest to the check's start
    probe = rng.choice(data.n_users, min(100, data.n_users), replace=False)
    want = top_k_exact(oracle, oracle[probe], 10, exclude=probe.tolist())
    got_ids: list[list[int]] = []
    for u in probe.tolist():
        status, body = w.get(f"/users/u{u}/similar?k=10")
        hits = orjson.loads(body).get("similar", []) if status == 200 else []
        got_ids.append([int(h["user_id"][1:]) for h in hits])
    worst, missing = 0.0, 0
    for u in sample.tolist():
        status, body = w.get(f"/users/u{u}/profile?vector=1")
        if status != 200:
            missing += 1
            continue
        got = np.asarray(orjson.loads(body)["vector"], dtype=np.float64)
        worst = max(worst, float(np.max(np.abs(got - oracle[u]))))
    recall = recall_at_k(got_ids, want)
    return {"profiles_checked": int(sample.size), "profiles_missing": missing,
            "max_abs_error": worst, "user_recall_at_10": round(recall, 4),
            "ok": missing == 0 and worst <= PROFILE_TOL and recall >= RECALL_GOAL}


def recover(s: Settings, data: ScaleData, workdir: Path, tail_events: int, seed: int,
            rate: float = 5000.0, timeout_s: float = 600.0) -> dict[str, Any]:
    """Produce the catalogue, start a worker on the built state, produce a tail at ``rate``
    events/s while probing ``/candidates`` and ``/similar``, SIGKILL, restart, and time the
    recovery (``s``: the builder's settings, with the broker's address)."""
    import threading

    from stream.kafka.broker import free_port
    from stream.kafka.clients import create_topics
    from stream.tools.runner import WorkerProcess
    from stream.worker.testing import partition_of

    parts = s.partitions
    create_topics(s, {s.items_topic: parts, s.events_topic: parts})
    t = time.monotonic()
    _produce(s, s.items_topic, [(f"i{j}".encode(), orjson.dumps(data.item_record(j)), j % parts)
                                for j in range(data.n_items)])
    _say(f"recovery: {data.n_items} items produced in {time.monotonic() - t:.1f}s")
    tail = data.tail(7, tail_events)
    types = [t for t, _ in TYPE_MIX]
    msgs = []
    for i, (u, it, ty, ts) in enumerate(zip(tail.user.tolist(), tail.item.tolist(),
                                            tail.type.tolist(), tail.ts.tolist())):
        key = f"u{u}".encode()
        msgs.append((key, orjson.dumps({"event_id": f"t{i}", "user_id": f"u{u}",
                                        "type": types[ty], "ts": ts, "item_id": f"i{it}"}),
                     partition_of(key, parts)))
    ends = [0] * parts  # the tail's end offset in each partition (the topic is new)
    for _, _, p in msgs:
        ends[p] += 1
    t = time.monotonic()
    oracle = oracle_matrix(data, tail, s)
    _say(f"recovery: oracle of {data.n_users} users in {time.monotonic() - t:.1f}s")
    out: dict[str, Any] = {"tail_events": tail_events}
    first = WorkerProcess(s, workdir / "worker-recovery-1.log").start()
    second = None
    try:
        t = time.monotonic()
        first.wait_ready(timeout_s)
        out["first_start_ready_s"] = round(time.monotonic() - t, 2)
        before = _applied(first)
        stop = threading.Event()
        probed: dict[str, Any] = {}
        prober = threading.Thread(
            target=lambda: probed.update(_probe(first.url, data.n_users, stop, seed)),
            daemon=True)
        prober.start()
        t = time.monotonic()
        try:
            _produce(s, s.events_topic, msgs, rate=rate)
        finally:
            stop.set()
            prober.join(30)
        out["probe"] = {"offered_events_per_s": rate,
                        "produced_events_per_s": round(tail_events / (time.monotonic() - t), 1),
                        **probed}
        first.wait_for(lambda: _applied(first) >= before + tail_events, timeout_s,
                       f"{tail_events} tail events applied", interval=0.1)
        out["rejected_before_kill"] = int(first.stats().get("events_rejected", 0))
        t_kill = time.monotonic()
        first.kill()
        second = WorkerProcess(s.replace(http_port=free_port()),
                               workdir / "worker-recovery-2.log").start()
        second.wait_ready(timeout_s)
        out["ready_s"] = round(time.monotonic() - t_kill, 2)
        replayed = _replayed(second.log_path, tail_events)
        out["load_phases"] = _load_phases(second.log_path)
        t_ready = time.monotonic()
        # The tail no snapshot covered is re-applied now.  Its progress is polled on /stats
        # (one cheap request every 0.1 s): the full checks, hundreds of requests each, would
        # compete with the replay they wait for (they made it 5-15x slower, see the README)
        second.wait_for(lambda: _caught_up(second, ends), timeout_s, "the tail re-applied",
                        interval=0.1)
        out["caught_up_s"] = round(time.monotonic() - t_kill, 2)
        if replayed:
            out["replay_events_per_s"] = round(replayed / max(1e-3, time.monotonic() - t_ready))
        sizes = {s.name: s.value for s in second.metrics().get("profiles_batch_size", [])}
        if sizes.get("profiles_batch_size_count"):
            out["replay_mean_batch"] = round(sizes["profiles_batch_size_sum"]
                                             / sizes["profiles_batch_size_count"], 1)
        deadline = time.monotonic() + timeout_s
        checks = 0
        while True:
            if not second.alive():
                raise ProfilesError(f"the restarted worker exited; log: {second.log_path}")
            applied0 = _applied(second)
            ready0 = second.get("/readyz")[0] == 200
            http, t_check = _Http(second.url), time.monotonic()
            try:
                check = _check(http, data, oracle, tail.user, seed)
            except OSError as exc:  # the worker went away mid-check: asked again above
                check = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            finally:
                http.close()
            checks += 1
            # what the check read was the state when it began, if no event was applied while it
            # ran (none is produced after the tail) and /readyz was green then
            still = ready0 and _applied(second) == applied0
            if check["ok"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        t_verified = time.monotonic()
        out["verified_s"] = round(t_verified - t_kill, 2) if check["ok"] else None
        # recovery_s: when all three held (the passing check's start, when nothing changed the
        # state while it ran; else its end).  The check's own requests (hundreds, on a worker
        # still snapshotting the replayed state) are the measurement, not the recovery.
        at = t_check if still else t_verified
        out["recovery_s"] = round(at - t_kill, 2) if check["ok"] else None
        out["recovery_at"] = "check start" if still else "check end"
        out["last_check_s"] = round(t_verified - t_check, 2)
        out.update(check)
        out["checks"] = checks
        out["replayed_events"] = replayed
    finally:
        first.kill()
        if second is not None:
            second.stop()
    return out
