"""``profiles bench pipeline``: how fast is our worker next to raw Kafka, faust and the pure core?

A command, not a timed test.  It generates one seeded data set (``stream.data.generate``: the
generator's event mix, about 60 % view, 22 % click, 8 % add_to_cart, 4 % purchase, 6 % search;
the exact counts are printed), encodes each event once to JSON bytes, and every stage reads
exactly those N events.  Each stage gets a fresh topic (``settings.partitions`` partitions, keyed
by user_id) and a fresh consumer group, pre-filled with the N events *before* its consumer starts,
so every stage reads a backlog.  Counts are exact (messages counted, never ``end_offsets``:
Tansu's ListOffsets is wrong).  Stages:

R   raw ``AIOKafkaConsumer`` (same session timeout) + ``orjson.loads`` per message
    (``getmany(max_records=batch_size)``).
F   a faust agent with the worker's settings (raw serializers, ``take_events(batch_size,
    batch_max_wait_s)``) that only ``orjson.loads`` each value (``stream/bench/faust_noop.py``).
F0  faust's no-op rate with faust's DEFAULT settings: ``async for value in stream: pass``.
P   our worker (``WorkerProcess``: profiles + users index + bandit, snapshots to disk every
    ``snapshot_interval_s``), real encoder.  Items are loaded to a fresh items topic and
    encoded by the worker before any event is applied (the agent waits for the catalogue);
    search queries are encoded on first sight and cached.  Timed from the first /stats poll
    (every 0.1 s) that shows an event applied until applied + duplicate + rejected == N.
C   the pure core in memory on the same bytes, batches of ``batch_size``: decode_event +
    ProfileTable.apply + UserStats.update + ArmStats.update, with pre-made (random unit)
    item and query vectors of the encoder's dimension; no Kafka, no asyncio.

R is timed from its partition assignment (the end of the group join, so its first fetch is
timed: aiokafka's first fetch alone can hold ~1 MB per partition, i.e. most of a small N), F and
F0 from the first message delivered to the agent (faust hands messages over one at a time, so
little is read before that); all until the Nth; events/s is N divided by that time.

Then the process scaling: for each N of ``--processes`` (default 1,2) the same backlog on a
fresh topic, drained by ``profiles worker --processes N`` (N consumer-group members behind one
port, ``stream.worker.supervisor``); ``--processes 1`` is the plain worker in its own process by
construction, so P1 against P is the run-to-run noise.  These rates are timed from the first
/stats poll with every process ready and an event applied (a second member joining is a
rebalance: start-up, not drain), P's too, so the table compares like with like.

Then the latency runs (:data:`LATENCY_RUNS`), each on a fresh topic with a fresh worker (same
items), an aiokafka producer (:func:`open_loop`: a fixed monotonic schedule, independent of
the worker; acks=all) sending for ``--latency-seconds``: at 0.5 x P's rate, at 0.5 x with
``/users/{id}/candidates`` requested 20 times a second meanwhile, and at 0.1 x; p50/p99 of
``profiles_ingest_to_index_seconds`` (Kafka message timestamp -> profile in the index), as
the difference of the worker's histogram before and after.  ``--latency-runs N`` repeats the
three N times, alternating, and adds the min / median / max of each one's p50 and p99 and how
many of the N met the target: one run's p99 varies by 2x between runs of the same code here.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, namedtuple
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.core.bandit import ArmStats
from stream.core.errors import ProfilesError
from stream.core.events import Reject, decode_event
from stream.core.profile import ProfileTable, UserStats
from stream.data.generate import generate
from stream.kafka.broker import bootstrap_or_embedded, free_port
from stream.kafka.clients import Publisher, build, create_topics
from stream.kafka.raw import drain
from stream.settings import Settings
from stream.tools.latency_report import latency_budget, min_median_max
from stream.tools.replay import load_items
from stream.tools.runner import WorkerProcess, histogram_quantile

_Sample = namedtuple("_Sample", "name labels value")


def _say(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def _uid(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------- producing
def _produce(s: Settings, topic: str, partitions: int, keys: list[bytes],
             values: list[bytes]) -> float:
    """Create ``topic`` and send every (key, value); fail unless each one is acked."""
    create_topics(s, {topic: partitions})
    t0 = time.perf_counter()
    # The replay's producer settings (acks=all, one request in flight: per-key order kept).
    with Publisher(s, client_id="profiles-bench", enable_idempotence=False) as producer:
        for k, v in zip(keys, values):
            producer.send(topic, v, key=k)
        producer.flush()
    acks = producer.acks
    if acks.acked != len(values) or acks.errors:
        raise ProfilesError(f"pre-producing {topic}: {acks.acked}/{len(values)} acked, "
                            f"errors {dict(acks.errors)}")
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- stages F, F0
def _faust_stage(mode: str, settings: Settings, topic: str, n: int, workdir: Path,
                 timeout_s: float) -> dict[str, Any]:
    group = _uid(f"faust-{mode}")
    result = workdir / f"faust-{mode}.json"
    argv = [sys.executable, "-m", "stream.bench.faust_noop", "--mode", mode, "--topic", topic,
            "--group", group, "--n", str(n), "--result", str(result),
            "--datadir", str(workdir / f"faust-{mode}-data"), "--web-port", str(free_port())]
    log_path = workdir / f"faust-{mode}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, env=settings.child_env({"PYTHONUNBUFFERED": "1"}),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(workdir))
    t0 = time.monotonic()
    try:
        while not result.exists():
            if proc.poll() is not None:
                raise ProfilesError(f"faust {mode} exited with {proc.returncode}; log: {log_path}")
            if time.monotonic() - t0 > timeout_s:
                raise ProfilesError(f"faust {mode}: no result after {timeout_s:.0f}s; log: {log_path}")
            time.sleep(0.1)
        out = json.loads(result.read_text())
        out["wall_s"] = time.monotonic() - t0
        return out
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------- stage P
def _outcomes(stats: dict) -> int:
    return int(stats.get("events_applied", 0) + stats.get("events_duplicate", 0)
               + stats.get("events_rejected", 0))


def _hist(metrics: dict, name: str) -> dict[str, float]:
    """{"le" or "_sum"/"_count": value} of a histogram from WorkerProcess.metrics(), summed
    over its series (``--processes N``: one per process)."""
    out: dict[str, float] = {}
    for s in metrics.get(name, []):
        key = s.labels["le"] if s.name.endswith("_bucket") else (
            "_sum" if s.name.endswith("_sum") else "_count" if s.name.endswith("_count") else None)
        if key is not None:
            out[key] = out.get(key, 0.0) + s.value
    return out


def _hist_diff_quantiles(name: str, before: dict[str, float], after: dict[str, float],
                         qs: tuple[float, ...]) -> tuple[list[float | None], float]:
    samples = [_Sample(name + "_bucket", {"le": le}, v - before.get(le, 0.0))
               for le, v in after.items() if not le.startswith("_")]
    count = after.get("_count", 0.0) - before.get("_count", 0.0)
    return [histogram_quantile(samples, q) for q in qs], count


def _worker_settings(base: Settings, workdir: Path, tag: str, items_topic: str) -> Settings:
    topic = _uid(f"events-{tag}")
    return base.replace(events_topic=topic, group_id=_uid(f"group-{tag}"), items_topic=items_topic,
                        dlq_topic=topic + ".dlq", state_dir=str(workdir / f"state-{tag}"),
                        http_port=free_port())


def _stage_p(settings: Settings, n: int, workdir: Path, timeout_s: float,
             name: str = "P") -> dict:
    w = WorkerProcess(settings, workdir / f"worker-{name}.log").start()
    try:
        t_first = None
        t_ready, n_ready = None, 0  # first poll with every process ready and an event applied
        t_start = time.monotonic()
        while True:
            if not w.alive():
                code = w.proc.returncode if w.proc is not None else None
                raise ProfilesError(f"worker exited ({code}); log: {w.log_path}")
            if time.monotonic() - t_start > timeout_s:
                raise ProfilesError(f"stage P: not done after {timeout_s:.0f}s; log: {w.log_path}")
            try:
                st = w.stats()
            except (OSError, ValueError):
                time.sleep(0.1)
                continue
            done = _outcomes(st)
            now = time.perf_counter()
            if done and t_first is None:
                t_first, n_first = now, done
            if done and st.get("ready") and t_ready is None:
                t_ready, n_ready = now, done
            if done >= n:
                t_end = now
                break
            time.sleep(0.1)
        m = w.metrics()
        bs = _hist(m, "profiles_batch_size")
        snaps = sum(s.value for s in m.get("profiles_snapshots", []) if s.name.endswith("_total"))
        assert t_first is not None
        if t_ready is None or n_ready >= done:  # drained before every process was in
            t_ready, n_ready = t_first, 0
        return {"count": done, "n_first": n_first, "seconds": t_end - t_first,
                "ready_count": done - n_ready, "ready_seconds": t_end - t_ready,
                "processes": settings.processes or 1,
                "applied": int(st.get("events_applied", 0)),
                "duplicate": int(st.get("events_duplicate", 0)),
                "rejected": int(st.get("events_rejected", 0)), "parked": int(st.get("parked", 0)),
                "batch_mean": bs.get("_sum", 0) / bs["_count"] if bs.get("_count") else None,
                "batch_p50": _hist_diff_quantiles("profiles_batch_size", {}, bs, (0.5,))[0][0],
                "batches": int(bs.get("_count", 0)), "snapshots": int(snaps),
                "wall_s": time.monotonic() - t_start}
    finally:
        w.stop()


# ---------------------------------------------------------------------------- stage C
def _encoder_dim(settings: Settings) -> int:
    if settings.encoder_kind == "hashing":
        from encoder import HashingEncoder

        return HashingEncoder().dim
    from encoder.transformer import default_model_path

    folder = Path(settings.encoder_path or default_model_path())
    return int(json.loads((folder / "config.json").read_text())["hidden_size"])


def _stage_c(settings: Settings, values: list[bytes], items: list[dict],
             events: list[dict]) -> dict[str, Any]:
    """The pure core on the same bytes, with the worker's parameters (one mapping from the
    settings: ``Settings.limits/profile_params/bandit_params``)."""

    s = settings
    dim = _encoder_dim(s)
    rng = np.random.default_rng(s.seed)

    def unit(k: int) -> np.ndarray:
        v = rng.standard_normal((k, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    item_vec = dict(zip([it["item_id"] for it in items], unit(len(items))))
    queries = sorted({e["query"] for e in events if "query" in e})
    query_vec = dict(zip(queries, unit(len(queries))))
    item_cat = {it["item_id"]: it.get("category") for it in items}
    limits, pp, bp = s.limits(), s.profile_params(), s.bandit_params()
    table, ustats, arms = ProfileTable(dim, pp), UserStats(pp), ArmStats(bp)
    msg_ts = int(time.time() * 1000)
    bs = s.batch_size
    rejected = 0
    t0 = time.perf_counter()
    for start in range(0, len(values), bs):
        evs = []
        for raw in values[start:start + bs]:
            ev = decode_event(raw, msg_ts, limits)
            if isinstance(ev, Reject):
                rejected += 1
            else:
                evs.append(ev)
        users = [e.user_id for e in evs]
        types = [e.type for e in evs]
        item_ids = [e.item_id for e in evs]
        ts = np.fromiter((e.ts for e in evs), dtype=np.int64, count=len(evs))
        vectors = np.stack([item_vec[e.item_id] if e.item_id is not None else query_vec[e.query]
                            for e in evs])
        table.apply(users, ts, pp.weight_array(types), vectors)
        ustats.update(users, types, ts, [item_cat.get(i) if i else None for i in item_ids], item_ids)
        a_arms, a_types, a_ts, a_ctx = [], [], [], []
        for e in evs:
            arm = e.arm or e.item_id
            if arm is not None:
                a_arms.append(arm)
                a_types.append(e.type)
                a_ts.append(e.ts)
                a_ctx.append(e.position)
        arms.update(a_arms, a_types, ts=a_ts, contexts=a_ctx if bp.context else None)
    seconds = time.perf_counter() - t0
    return {"count": len(values), "seconds": seconds, "rejected": rejected, "dim": dim,
            "users": len(table)}


# ---------------------------------------------------------------------------- latency
#: open-loop sends: the schedule is kept to this granularity (every message due by then goes
#: out together; aiokafka's linger of 5 ms batches them anyway)
TICK_S = 0.002


async def open_loop(producer: Any, topic: str, keys: list[bytes], values: list[bytes],
                    rate: float, clock: Any = time.monotonic, sleep: Any = asyncio.sleep,
                    wall_ms: Any = lambda: time.time() * 1000.0) -> dict[str, Any]:
    """Send ``values`` (keyed by ``keys``) through a started aiokafka ``producer`` at ``rate``
    per second on a fixed schedule from the first send, message i due at ``i / rate`` whatever
    the broker or the worker do (open loop); wait for every acknowledgement.

    The latency run's producer shares the cores with the worker and the broker: kafka-python
    (the tools' :class:`~stream.kafka.clients.Publisher`) spent 35-37 us of CPU per message
    here, aiokafka 12-13 us (20,000 messages each way, alternating, one process; nproc 2).
    Returns sent (acknowledged), failed, errors (by class), seconds (first send to last ack),
    the largest lag behind the schedule, and the acknowledgement latency (Kafka timestamp to
    ack, ms) p50/p99 over every acknowledged message."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate!r}")
    n = len(values)
    ack_ms = np.full(n, np.nan)
    errors: Counter[str] = Counter()

    def done(i: int, fut: Any) -> None:
        exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if exc is not None:
            errors[type(exc).__name__] += 1
        else:
            ack_ms[i] = wall_ms() - fut.result().timestamp

    futures = []
    t0 = clock()
    behind = 0.0
    i = 0
    while i < n:
        now = clock()
        behind = max(behind, now - (t0 + i / rate))  # message i was due then
        while i < n and t0 + i / rate <= now + 1e-6:  # due (to a microsecond)
            fut = await producer.send(topic, values[i], key=keys[i])
            fut.add_done_callback(lambda f, i=i: done(i, f))
            futures.append(fut)
            i += 1
        if i < n:
            await sleep(max(0.0, min(TICK_S, t0 + i / rate - clock())))
    await asyncio.gather(*futures, return_exceptions=True)
    seconds = clock() - t0
    acked = ack_ms[np.isfinite(ack_ms)]
    return {"sent": len(acked), "failed": sum(errors.values()), "errors": dict(errors),
            "seconds": seconds, "max_behind_ms": round(1000 * behind, 1),
            "ack_p50_ms": round(float(np.quantile(acked, 0.5)), 1) if len(acked) else None,
            "ack_p99_ms": round(float(np.quantile(acked, 0.99)), 1) if len(acked) else None}


async def _produce_open_loop(s: Settings, keys: list[bytes], values: list[bytes],
                             rate: float) -> dict[str, Any]:
    # acks=all like the tools' Publisher; no idempotence (Tansu refuses aiokafka's); aiokafka
    # sends one batch per partition at a time, so a user's events keep their order
    producer = build("aio_producer", s, client_id="profiles-bench-latency", acks="all",
                     linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    try:
        return await open_loop(producer, s.events_topic, keys, values, rate)
    finally:
        await producer.stop()


def _latency_events(events: list[dict], count: int) -> list[bytes]:
    """``count`` events: the data set again (fresh topic, fresh state), ids made unique per lap."""
    out: list[bytes] = []
    lap = 0
    while len(out) < count:
        for e in events[: count - len(out)]:
            if lap:
                e = dict(e, event_id=f"{e['event_id']}-lap{lap}")
            out.append(orjson.dumps(e))
        lap += 1
    return out


class _CandidatesProbe:
    """``GET /users/{id}/candidates?k=20`` at a steady 20 requests/s while the worker ingests;
    latencies of the answered (200) requests, measured by the client."""

    def __init__(self, worker: WorkerProcess, users: list[str], per_s: float = 20.0) -> None:
        import threading

        self.worker, self.users, self.period = worker, users, 1.0 / per_s
        self.latencies: list[float] = []
        self.not_found = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        i = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            user = self.users[(i * 7919) % len(self.users)]
            i += 1
            t0 = time.perf_counter()
            try:
                status, _ = self.worker.get(f"/users/{user}/candidates?k=20")
            except OSError:
                status = 0
            if status == 200:
                self.latencies.append(time.perf_counter() - t0)
            else:
                self.not_found += 1
            next_at += self.period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def summary(self) -> dict:
        lat = np.sort(np.asarray(self.latencies))

        def q(f: float) -> float | None:
            return float(lat[min(len(lat) - 1, int(f * len(lat)))]) if len(lat) else None

        return {"n": len(lat), "not_found": self.not_found, "p50": q(0.5), "p99": q(0.99)}


def _stage_latency(base: Settings, workdir: Path, items_topic: str, events: list[dict],
                   rate: float, seconds: float, probe: bool = True,
                   tag: str = "L") -> dict[str, Any]:
    """Ingest->index quantiles of ``rate`` events/s offered open loop for ``seconds`` to a fresh
    worker; ``probe``: with ``/candidates`` requests at 20/s meanwhile (each costs the loop a few
    ms, which the ingest then waits for)."""
    s = _worker_settings(base, workdir, tag, items_topic)
    count = max(1, int(rate * seconds))
    values = _latency_events(events, count)
    keys = [orjson.loads(v)["user_id"].encode() for v in values]
    create_topics(s, {s.events_topic: s.partitions})
    w = WorkerProcess(s, workdir / f"worker-{tag}.log").start()
    try:
        w.wait_ready(timeout_s=600)
        scrape0 = w.metrics()
        before = _hist(scrape0, "profiles_ingest_to_index_seconds")
        users = list(dict.fromkeys(e["user_id"] for e in events))
        requests = _CandidatesProbe(w, users)
        if probe:
            requests.start()
        try:
            summary = asyncio.run(_produce_open_loop(s, keys, values, rate))
        finally:
            if probe:
                requests.stop()
        if summary["failed"]:
            raise ProfilesError(f"latency producer: {summary['failed']} sends failed "
                                f"{summary['errors']}")
        sent = summary["sent"]
        w.wait_for(lambda: _outcomes(w.stats()) >= sent, 600, f"{sent} outcomes", interval=0.1)
        scrape1 = w.metrics()
        after = _hist(scrape1, "profiles_ingest_to_index_seconds")
        (p50, p90, p99), n_obs = _hist_diff_quantiles("profiles_ingest_to_index_seconds", before,
                                                      after, (0.5, 0.9, 0.99))
        return {"rate": rate, "sent": sent, "send_seconds": summary["seconds"],
                "producer": {k: summary[k] for k in ("max_behind_ms", "ack_p50_ms", "ack_p99_ms")},
                "observed": int(n_obs), "p50": p50, "p90": p90, "p99": p99,
                "candidates": requests.summary() if probe else None,
                "budget": latency_budget(scrape1, scrape0)}  # per stage (stream.worker.latency)
    finally:
        w.stop()


#: the open-loop latency runs: (key, share of P offered, /candidates at 20/s meanwhile).  The
#: issue's targets: p99 <= 250 ms at 50 % of P, <= 150 ms at 10 %; the run with requests shows
#: what serving costs the ingest (each /candidates holds the loop a few ms)
LATENCY_RUNS: tuple[tuple[str, float, bool], ...] = (
    ("50%", 0.5, False), ("50%+requests", 0.5, True), ("10%", 0.1, False))
LATENCY_TARGET_S = {"50%": 0.25, "50%+requests": 0.25, "10%": 0.15}


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{1000 * x:.0f} ms"


def _mmm(d: dict[str, float] | None) -> str:
    """A :func:`min_median_max` of seconds as "min / median / max" in ms."""
    return "n/a" if d is None else " / ".join(_ms(d[k]) for k in ("min", "median", "max"))


def _print_latency(lats: dict[str, list[dict]]) -> None:
    """Each latency run: its quantiles against the target, the stage budget, the producer; with
    more than one run of a configuration, the spread of their p50 / p99 and how many met the
    target."""
    for key, reps in lats.items():
        for i, lat in enumerate(reps):
            if len(reps) > 1:
                print(f"[{key}, run {i + 1} of {len(reps)}]")
            _print_latency_run(key, lat)
    for key, reps in lats.items():
        if len(reps) < 2:
            continue
        target = LATENCY_TARGET_S[key]
        p50 = min_median_max(r["p50"] for r in reps)
        p99 = min_median_max(r["p99"] for r in reps)
        met = sum(r["p99"] is not None and r["p99"] <= target for r in reps)
        line = (f"ingest->index at {key} of P over {len(reps)} runs (min / median / max): "
                f"p50 {_mmm(p50)}, p99 {_mmm(p99)}; p99 <= {1000 * target:.0f} ms in {met} of "
                f"{len(reps)}")
        cands = [r["candidates"] for r in reps if r["candidates"] is not None]
        if cands:
            line += f"; /candidates p99 {_mmm(min_median_max(c['p99'] for c in cands))}"
        print(line)
    print("  (quantiles interpolated within buckets 5,10,25,50,100,150,250,500,750 ms, 1 s, ...)")
    print("  (broker: to the Fetch response reaching aiokafka, which fetches a partition again "
          "only once faust took its last response; buffer: aiokafka's buffer, faust's "
          "consumer thread and per-message delivery, the agent's channel)")


def _print_latency_run(key: str, lat: dict) -> None:
    """One latency run: its quantiles against the target, the stage budget, the producer."""
    target = LATENCY_TARGET_S[key]
    print(f"ingest->index latency at {key} of P ({lat['rate']:,.0f} events/s offered, "
          f"{lat['sent']:,} sent in {lat['send_seconds']:.1f}s = "
          f"{lat['sent'] / lat['send_seconds']:,.0f}/s achieved, {lat['observed']:,} "
          f"observations)")
    ok = lat["p99"] is not None and lat["p99"] <= target
    print(f"  p50 {_ms(lat['p50'])}, p90 {_ms(lat['p90'])}, p99 {_ms(lat['p99'])}   "
          f"target p99 <= {1000 * target:.0f} ms   {_check(ok)}")
    b = lat["budget"]
    print("  per stage (p50 / p99 / mean ms): " + ", ".join(
        f"{k} {v['p50_ms']} / {v['p99_ms']} / {v['mean_ms']}" for k, v in b["stages"].items()))
    pr = lat["producer"]
    print(f"  producer (aiokafka, open loop): acks p50 {pr['ack_p50_ms']} / p99 "
          f"{pr['ack_p99_ms']} ms after the Kafka timestamp; at most {pr['max_behind_ms']} ms "
          f"behind its schedule")
    print(f"  parked and applied later: {b['parked_applied']} (p99 {b['parked_p99_ms']} ms); "
          f"GC pauses by generation: {b['gc']}")
    c = lat["candidates"]
    if c is not None:
        c_ok = c["p99"] is not None and c["p99"] <= 0.05
        print(f"  /users/{{id}}/candidates?k=20 meanwhile ({c['n']} answered at 20/s, "
              f"client-side): p50 {_ms(c['p50'])}, p99 {_ms(c['p99'])}   target p99 <= 50 ms"
              f"   {_check(c_ok)}")


# ---------------------------------------------------------------------------- report
def _machine() -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def ver(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "-"

    return [f"machine: nproc {os.cpu_count()}, CPU {cpu}, {platform.system()} {platform.release()}",
            (f"python {platform.python_version()}, torch {ver('torch')}, faust-streaming "
             f"{ver('faust-streaming')}, aiokafka {ver('aiokafka')}, kafka-python {ver('kafka-python')}, "
             f"orjson {ver('orjson')}, numpy {ver('numpy')}")]


def _fmt_rate(r: dict) -> tuple[float, float]:
    eps = r["count"] / r["seconds"]
    return eps, 1e6 / eps


def _check(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _print_scaling(plain: dict, scaling: dict[int, dict], raw: dict, partitions: int) -> None:
    """The process-scaling table: drain rates of the same backlog, P and each --processes N,
    timed from the first /stats poll with every process ready and an event applied (a second
    process joining is a rebalance, which is start-up, not drain)."""
    def rate(r: dict) -> float:
        return float(r["ready_count"] / r["ready_seconds"])

    p = rate(plain)
    one = rate(scaling[1]) if 1 in scaling else None
    print("process scaling: the same pre-produced backlog, drained by `profiles worker "
          "--processes N` (one consumer-group member per process; timed from the first "
          "/stats poll with every process ready and an event applied)")
    print(f"{'run':<28} {'events/s':>10} {'x P':>6} {'x N=1':>6}  goal")
    print(f"{'P  plain worker':<28} {p:>10,.0f} {1.0:>6.2f} {'':>6}")
    for procs, r in sorted(scaling.items()):
        v = rate(r)
        vs1 = f"{v / one:>6.2f}" if one else f"{'':>6}"
        if procs == 1:
            goal = f">= 0.95 x P    {_check(v / p >= 0.95)}"
        elif procs == 2 and one:
            goal = f">= 1.5 x N=1   {_check(v / one >= 1.5)}"
        else:
            goal = ""
        print(f"{f'P{procs} --processes {procs}':<28} {v:>10,.0f} {v / p:>6.2f} {vs1}  {goal}")
    if one and len(scaling) > 1:
        top = max(scaling)
        eff = rate(scaling[top]) / (top * one)  # per-process efficiency at the largest N
        raw_eps = raw["count"] / raw["seconds"]
        busy = min(16, partitions)
        print(f"16-core projection: at most min(16 cores, {partitions} partitions) = {busy} busy "
              f"processes (a member without a partition idles); at the measured {eff:.2f} "
              f"efficiency per process ({top} processes) ~{busy * one * eff:,.0f} events/s; "
              f"with 16 partitions ~{16 * one * eff:,.0f} events/s, "
              f"{16 * one * eff / raw_eps:.2f} x what one raw consumer drew from this broker "
              f"(R {raw_eps:,.0f}/s). Limits: the partition count, then the broker (one Tansu "
              f"process here, sharing the cores with the workers).")


def bench_pipeline(args: Any) -> int:
    n = int(args.events)
    if n < 200_000:
        _say(f"note: --events {n} is below the 200,000 the benchmark is specified for (quick check)")
    workdir = Path(tempfile.mkdtemp(prefix="profiles-bench-"))
    broker = None
    t_all = time.monotonic()
    try:
        bootstrap, broker = bootstrap_or_embedded(args.bootstrap, str(workdir / "broker.log"))
        if broker is not None:
            _say(f"embedded broker (Tansu) on {bootstrap}; workdir {workdir}")
        base = Settings.from_env(bootstrap_servers=bootstrap, session_timeout_s=6.0)
        bs = base.batch_size

        t0 = time.perf_counter()
        ds = generate(args.users, args.items, n, 42)
        paths = ds.write(workdir / "data")
        values = [orjson.dumps(e) for e in ds.events]
        keys = [e["user_id"].encode() for e in ds.events]
        mix = Counter(e["type"] for e in ds.events)
        _say(f"generated {n} events, {args.users} users, {args.items} items in "
             f"{time.perf_counter() - t0:.1f}s")
        timeout = 300 + n / 500

        results: dict[str, dict] = {}

        topic = _uid("events-R")
        _say(f"R: producing {n} events "
             f"({_produce(base, topic, base.partitions, keys, values):.1f}s)")
        results["R"] = asyncio.run(drain(base, topic, _uid("group-R"), n, bs, timeout))
        _say(f"R: {results['R']}")

        for stage, mode in (("F", "ours"), ("F0", "default")):
            topic = _uid(f"events-{stage}")
            _say(f"{stage}: producing {n} events "
                 f"({_produce(base, topic, base.partitions, keys, values):.1f}s)")
            results[stage] = _faust_stage(mode, base, topic, n, workdir, timeout)
            _say(f"{stage}: {results[stage]}")

        results["C"] = _stage_c(base, values, ds.items, ds.events)
        _say(f"C: {results['C']}")

        items_topic = _uid("items")
        create_topics(base, {items_topic: 1})
        isum = load_items(paths["items"], base, topic=items_topic, progress=False)
        if isum.failed or isum.sent != len(ds.items):
            raise ProfilesError(f"items: sent {isum.sent}/{len(ds.items)}, failed {isum.failed}")
        ps = _worker_settings(base, workdir, "P", items_topic)
        _say(f"P: producing {n} events "
             f"({_produce(base, ps.events_topic, ps.partitions, keys, values):.1f}s); "
             f"starting worker (log {workdir / 'worker-P.log'})")
        results["P"] = _stage_p(ps, n, workdir, timeout)
        _say(f"P: {results['P']}")
        scaling: dict[int, dict] = {}
        for procs in args.processes:  # `profiles worker --processes N`, the same backlog
            ns = _worker_settings(base, workdir, f"P{procs}", items_topic).replace(processes=procs)
            _say(f"--processes {procs}: producing {n} events "
                 f"({_produce(base, ns.events_topic, ns.partitions, keys, values):.1f}s)")
            scaling[procs] = _stage_p(ns, n, workdir, timeout, name=f"P{procs}")
            _say(f"--processes {procs}: {scaling[procs]}")

        p_rate = results["P"]["count"] / results["P"]["seconds"]
        lats: dict[str, list[dict]] = {key: [] for key, _, _ in LATENCY_RUNS}
        runs = int(getattr(args, "latency_runs", 1))
        for rep in range(runs):  # the configurations alternate, so drift hits each alike
            for key, share, probe in LATENCY_RUNS:
                nth = f" (run {rep + 1} of {runs})" if runs > 1 else ""
                _say(f"latency {key}{nth}: {share * p_rate:,.0f} events/s for "
                     f"{args.latency_seconds:g}s on a fresh topic"
                     f"{', /candidates at 20/s' if probe else ''}")
                tag = "L" + "".join(c for c in key if c.isalnum()) + (f"r{rep}" if rep else "")
                lats[key].append(_stage_latency(base, workdir, items_topic, ds.events,
                                                share * p_rate, float(args.latency_seconds),
                                                probe=probe, tag=tag))
                _say(f"latency {key}{nth}: {lats[key][-1]}")

        # ------------------------------------------------------------------ the table
        rates = {k: _fmt_rate(r) for k, r in results.items()}
        names = {
            "R": "raw aiokafka consumer + orjson.loads",
            "F": f"faust, our settings, take_events({bs}) + orjson.loads",
            "F0": "faust defaults, async for value: pass",
            "P": "our worker (profile+index+bandit, snapshots)",
            "C": f"pure core in memory (batches of {bs})",
        }
        print()
        print(f"profiles bench pipeline: N = {n:,} events, {args.users:,} users, {args.items:,} items, "
              f"{base.partitions} partitions, embedded Tansu broker" if broker else
              f"profiles bench pipeline: N = {n:,} events on {bootstrap}")
        print("event mix (the generator's): " + ", ".join(
            f"{t} {mix[t]:,} ({100 * mix[t] / n:.1f}%)" for t in sorted(mix, key=lambda t: -mix[t])))
        print("items pre-loaded to the items topic and encoded by the worker before the first event; "
              "search queries encoded on first sight, then cached")
        for line in _machine():
            print(line)
        print()
        print(f"{'stage':<4} {'what':<52} {'events/s':>11} {'us/event':>9} {'seconds':>8}")
        for k in ("R", "F", "F0", "P", "C"):
            eps, us = rates[k]
            print(f"{k:<4} {names[k]:<52} {eps:>11,.0f} {us:>9.2f} {results[k]['seconds']:>8.2f}")
        p = results["P"]
        print(f"     P: applied {p['applied']:,}, duplicate {p['duplicate']:,}, rejected {p['rejected']:,}, "
              f"parked {p['parked']:,}; profiles_batch_size mean {p['batch_mean'] or 0:.0f} "
              f"(p50 ~{p['batch_p50'] or 0:.0f}) over {p['batches']:,} batches; {p['snapshots']} snapshot "
              f"writes; first /stats poll showed {p['n_first']:,} applied")
        print(f"     R is timed from its partition assignment (first fetch included; from its first "
              f"delivery it is {n / results['R']['seconds_from_first']:,.0f}/s); F and F0 from their first "
              f"delivery ({results['F']['n_first']:,} and {results['F0']['n_first']:,} events), nothing "
              f"subtracted")
        print()
        r = {k: v[0] for k, v in rates.items()}
        print("ratios")
        print(f"  P/R  = {r['P'] / r['R']:.2f}")
        print(f"  P/F  = {r['P'] / r['F']:.2f}   target >= 0.8   {_check(r['P'] / r['F'] >= 0.8)}")
        print(f"  C/R  = {r['C'] / r['R']:.2f}   target >= 0.5   {_check(r['C'] / r['R'] >= 0.5)}")
        print(f"  F/F0 = {r['F'] / r['F0']:.2f}   target >= 2     {_check(r['F'] / r['F0'] >= 2)}")
        print()
        _print_scaling(results["P"], scaling, results["R"], base.partitions)
        print()
        _print_latency(lats)
        print(f"\ntotal {time.monotonic() - t_all:.0f}s; logs in {workdir}")
        return 0
    finally:
        if broker is not None:
            broker.stop()
