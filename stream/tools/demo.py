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
from pathlib import Path
from typing import Any

from stream.data.generate import generate
from stream.kafka.broker import bootstrap_or_embedded, free_port
from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.latency_report import latency_budget
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


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def run_demo(args: Any) -> int:
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
