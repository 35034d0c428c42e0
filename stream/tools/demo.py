"""``profiles demo``: the whole service on one machine, from nothing.

Starts the embedded broker (unless ``--bootstrap``), a worker, loads a generated catalogue,
replays a generated log, and serves HTTP + metrics until Ctrl-C; ``--once`` exits when every
replayed event has a final outcome and prints a JSON summary.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from copy import copy
from pathlib import Path
from typing import Any

from stream.data.generate import generate
from stream.kafka.broker import bootstrap_or_embedded, free_port
from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.latency_report import latency_budget, min_median_max
from stream.tools.replay import load_items, replay
from stream.tools.runner import WorkerProcess, histogram_quantile


def final_outcomes(worker: WorkerProcess) -> int:
    s = worker.stats()
    return int(sum(v for k, v in s.items() if k.startswith("events_")))


def summary(worker: WorkerProcess, elapsed: float) -> dict[str, Any]:
    s = worker.stats()
    m = worker.metrics()
    lat = m.get("profiles_ingest_to_index_seconds", [])
    p50, p99 = histogram_quantile(lat, 0.5), histogram_quantile(lat, 0.99)
    return {
        "events_applied": int(s.get("events_applied", 0)),
        "events_rejected": int(s.get("events_rejected", 0)),
        "events_duplicate": int(s.get("events_duplicate", 0)),
        "events_parked": int(s.get("parked", 0)),
        "users": int(s.get("users", 0)),
        "users_index": s.get("users_index"),
        "items_index": s.get("items_index"),
        "ingest_to_index_p50_ms": None if p50 is None else round(p50 * 1000, 1),
        "ingest_to_index_p99_ms": None if p99 is None else round(p99 * 1000, 1),
        "elapsed_s": round(elapsed, 1),
        # per-stage quantiles, parked events applied late, GC pauses (stream.worker.latency)
        "latency_budget": latency_budget(m),
    }


#: the summary fields :func:`spread` gives min / median / max of across runs
SPREAD_FIELDS = ("ingest_to_index_p50_ms", "ingest_to_index_p99_ms", "elapsed_s")


def spread(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary of several ``--once`` runs: each run's summary under ``runs``; for each of
    :data:`SPREAD_FIELDS`, ``{"min", "median", "max"}`` over the runs that have it under
    ``spread``; and the median at the top level under the field's own name, so a reader of
    one run's summary reads ``ingest_to_index_p99_ms`` the same way (the median of an even
    number of runs is the mean of the middle two).  Events are summed over the runs."""
    out: dict[str, Any] = {}
    for key in ("events_applied", "events_rejected", "events_duplicate", "events_parked"):
        out[key] = sum(int(r.get(key) or 0) for r in runs)
    spreads: dict[str, dict[str, float] | None] = {}
    for key in SPREAD_FIELDS:
        mmm = min_median_max(r.get(key) for r in runs)
        if mmm is not None:
            mmm["median"] = round(mmm["median"], 1)
        out[key] = None if mmm is None else mmm["median"]
        spreads[key] = mmm
    out["spread"] = spreads
    out["runs"] = list(runs)
    return out


def run_demos(args: Any) -> int:
    """``profiles demo --once --runs N``: :func:`run_demo` N times in a row, each from nothing
    (its own broker, worker and folder: ``<workdir>/run-<i>`` under ``--workdir``), each run's
    progress on stderr, then one JSON summary (:func:`spread`) on stdout."""
    results = []
    base = args.workdir
    for i in range(1, args.runs + 1):
        say(f"run {i} of {args.runs}")
        one = copy(args)
        one.workdir = None if base is None else Path(base) / f"run-{i}"
        got: list[dict[str, Any]] = []
        code = run_demo(one, emit=got.append)
        if code:
            return code
        results.extend(got)
    print(json.dumps(spread(results), indent=2))
    return 0


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def run_demo(args: Any, emit: Callable[[dict[str, Any]], None] | None = None) -> int:
    """The demo; with ``--once`` it returns once every event has a final outcome, after
    printing the summary as JSON (or handing it to ``emit``)."""
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="profiles-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker = None
    worker = None
    # SIGTERM/SIGHUP at any point (also during start-up) unwinds through ``finally``: the broker
    # and worker run in their own sessions, so nothing else would stop them.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        bootstrap, broker = bootstrap_or_embedded(args.bootstrap, str(workdir / "broker.log"))
        if broker is not None:
            say(f"embedded broker (Tansu) on {bootstrap}")
        port = args.port or free_port()
        settings = Settings.from_env(bootstrap_servers=bootstrap, http_port=port,
                                     state_dir=str(workdir / "state"), session_timeout_s=6.0)
        paths = generate(args.users, args.items, args.events, args.seed).write(workdir / "data")
        say(f"generated {args.users} users, {args.items} items, {args.events} events in {workdir / 'data'}")
        create_topics(settings, {settings.events_topic: settings.partitions,
                                 settings.items_topic: 1, settings.dlq_topic: 1})
        worker = WorkerProcess(settings, workdir / "worker.log").start()
        say(f"worker starting (log: {workdir / 'worker.log'}) ...")
        t0 = time.monotonic()
        items = load_items(paths["items"], settings, progress=False)
        worker.wait_ready(timeout_s=300)
        say(f"worker ready; replaying {args.events} events"
            + (f" at {args.rate:g}/s" if args.rate else " as fast as possible"))
        sent = replay(paths["events"], settings, rate=args.rate or None, progress=not args.once)
        say(f"replayed: sent {sent.sent}, failed {sent.failed}; items sent {items.sent}")
        worker.wait_for(lambda: final_outcomes(worker) >= sent.sent, args.timeout,
                        f"{sent.sent} final outcomes", interval=0.5)
        result = summary(worker, time.monotonic() - t0)
        if args.once:
            if emit is not None:
                emit(result)
            else:
                print(json.dumps(result, indent=2))
            return 0
        first_user = json.loads(Path(paths["events"]).read_text().split("\n", 1)[0])["user_id"]
        say(json.dumps(result, indent=2))
        say(f"""
Look around:
  curl {worker.url}/users/{first_user}/profile
  curl '{worker.url}/users/{first_user}/candidates?k=10'
  curl '{worker.url}/users/{first_user}/similar?k=5'
  curl {worker.url}/metrics
  profiles replay {paths['events']} --bootstrap-servers {bootstrap}   # again: all duplicates
Ctrl-C to stop.""")
        while worker.alive():
            time.sleep(1)
        return 1
    finally:
        if worker is not None:
            worker.stop()
        if broker is not None:
            broker.stop()
