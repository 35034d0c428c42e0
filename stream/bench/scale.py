"""``profiles bench scale``: what a user costs, and whether the service stays fast as they grow.

    profiles bench scale --users N --items M [--json] [--dim 384] [--events-per-user 20]
                         [--seed S] [--no-recovery]

Every figure comes from a fresh measuring process (:mod:`stream.bench.scale_child`) that runs
the worker's real pipeline in process on a pinned data set (:mod:`stream.bench.scale_data`):
users with ``--events-per-user`` events each are bulk-loaded through ``Pipeline.process`` (the
worker's batch step), items are put in its catalogue.  Processes, one after the other:

- ``base`` features (profile, users index, dedupe window; multi-interest profiles off, one
  recent item per user, segments off) at N/10 and N users: ``bytes_per_user`` is the slope of
  the process's RSS + swap between the two sizes (the catalogue is the same in both);
- every per-user feature at its default (interests, recent items, user stats, ...) at N/10 and
  N: ``bytes_per_user_all_features``; the process at N also writes its state as the worker's
  snapshots for the recovery run (:mod:`stream.bench.scale_recovery`, on a real broker and a
  real ``profiles worker``: ``recovery_s``);
- at N (base): ``Pipeline.process`` events/s on events of random users (and the same at 10^4
  users, or N/10 when N <= 10^4: ``rate_ratio_large_vs_small``), a steady ingest at 5,000
  events/s with the snapshot timer while single-threaded item searches are timed, CPU s and
  bytes written per s, item recall@20 against exact search, then churn of 10x N (updates,
  forgets, new users) and users-index recall@10 against exact search.

``/candidates`` and ``/similar`` p99 are timed over HTTP on the recovery run's real worker
holding the N users, while the tail streams in at 5,000 events/s (so without the recovery run,
``--no-recovery``, they are null).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from stream.bench.scale_data import ScaleData, slope
from stream.core.errors import ConfigError, ProfilesError
from stream.settings import Settings

__all__ = ["GOALS", "bench_scale", "goals_table", "report"]

#: key -> (goal, "<=" or ">="), from issue 12
GOALS: dict[str, tuple[float, str]] = {
    "bytes_per_user": (2048.0, "<="),
    "bytes_per_user_all_features": (4096.0, "<="),
    "item_recall_at_20": (0.98, ">="),
    "item_search_p99_ms": (10.0, "<="),
    "user_recall_at_10_after_churn": (0.95, ">="),
    "recovery_s": (60.0, "<="),
    "rate_ratio_large_vs_small": (0.8, ">="),
    "candidates_p99_ms": (20.0, "<="),
    "similar_p99_ms": (50.0, "<="),
}
RATE_REF_USERS = 10_000
STEADY_RATE = 5000.0  # events/s of the steady ingest (in process) and of the recovery's tail
BASE = {"interests_k": 0, "signals_recent_n": 1, "segments_k": 0}


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _child(s: Settings, workdir: Path, tag: str, args: Any, users: int,
           extra: list[str]) -> dict[str, Any]:
    out = workdir / f"{tag}.json"
    if args.resume is not None and out.exists():  # measured by an earlier, interrupted run
        _say(f"{tag}: kept from {out}")
        return dict(json.loads(out.read_text()))
    argv = [sys.executable, "-m", "stream.bench.scale_child", "--users", str(users),
            "--items", str(args.items), "--dim", str(args.dim), "--events-per-user",
            str(args.events_per_user), "--seed", str(args.seed), "--out", str(out), *extra]
    _say(f"{tag}: {users} users, {args.items} items ({' '.join(extra) or 'memory only'})")
    t = time.monotonic()
    proc = subprocess.run(argv, env=s.child_env({"PYTHONUNBUFFERED": "1"}), cwd=str(workdir),
                          stdout=subprocess.DEVNULL, timeout=args.child_timeout)
    if proc.returncode != 0 or not out.exists():
        raise ProfilesError(f"bench scale: measuring process {tag} exited with "
                            f"{proc.returncode} (its errors are above)")
    result: dict[str, Any] = json.loads(out.read_text())
    _say(f"{tag}: done in {time.monotonic() - t:.0f}s")
    return result


def _settings(workdir: Path, tag: str, **changes: Any) -> Settings:
    s = Settings.from_env()  # the operator's PROFILES_* (half-life, weights, index kind, ...)
    return s.replace(encoder_kind="hashing", state_dir=str(workdir / f"state-{tag}"), **changes)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def report(args: Any, runs: dict[str, dict[str, Any]], recovery: dict[str, Any] | None
           ) -> dict[str, Any]:
    """The JSON object: the issue's keys first, then the details of every process."""
    small, large = runs["base_small"], runs["base_large"]
    ref = runs.get("base_ref", small)
    steady = large.get("steady", {})
    # /candidates and /similar: on the real worker of the recovery run, while its tail streams in
    probe = (recovery or {}).get("probe") or {}
    sizes = [small["users"], large["users"]]
    out: dict[str, Any] = {
        "item_index_kind": large["item_index_kind"],
        "user_index_kind": large["user_index_kind"],
        "item_index_probes": large.get("item_index_probes"),
        "user_index_probes": large.get("user_index_probes"),
        "bytes_per_user": round(slope(sizes, [small["memory_loaded"], large["memory_loaded"]]), 1),
        "bytes_per_user_all_features": round(slope(
            sizes, [runs["all_small"]["memory_loaded"], runs["all_large"]["memory_loaded"]]), 1),
        "item_recall_at_20": large.get("item_recall_at_20"),
        "item_search_p99_ms": steady.get("item_search_p99_ms"),
        "user_recall_at_10_after_churn": large.get("user_recall_at_10_after_churn"),
        "recovery_s": None if recovery is None else recovery.get("recovery_s"),
        "rate_ratio_large_vs_small": _ratio(large.get("rate", {}).get("events_per_s"),
                                            ref.get("rate", {}).get("events_per_s")),
        "candidates_p99_ms": probe.get("candidates_p99_ms"),
        "similar_p99_ms": probe.get("similar_p99_ms"),
        "snapshot_bytes_per_s": steady.get("bytes_written_per_s"),
        "cpu_s_per_s": steady.get("cpu_s_per_s"),
        "steady_events_per_s": steady.get("achieved_events_per_s"),
        # a lower bound per part, freed by dropping it at N users with every feature on
        "bytes_per_user_by_part": runs["all_large"].get("bytes_per_user_by_part"),
        "users": args.users, "items": args.items, "dim": args.dim,
        "events_per_user": args.events_per_user, "seed": args.seed,
        "memory_sizes": sizes,
        "rate_sizes": [ref["users"], large["users"]],
        "nproc": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "goals": {k: f"{op} {v:g}" for k, (v, op) in GOALS.items()},
        "recovery": recovery, "runs": runs,
    }
    return out


def _met(value: Any, goal: float, op: str) -> str:
    if value is None:
        return "-"
    return "ok" if (value <= goal if op == "<=" else value >= goal) else "MISSED"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def goals_table(r: dict[str, Any]) -> str:
    """The figures with their goals side by side (the text form)."""
    rows = [("figure", "measured", "goal", ""), ("item_index_kind", r["item_index_kind"], "", ""),
            ("user_index_kind", r["user_index_kind"], "", ""),
            ("item_index_probes", _fmt(r.get("item_index_probes")), "", ""),
            ("user_index_probes", _fmt(r.get("user_index_probes")), "", "")]
    for key, (goal, op) in GOALS.items():
        v = r.get(key)
        rows.append((key, _fmt(v), f"{op} {goal:g}", _met(v, goal, op)))
    for key in ("snapshot_bytes_per_s", "cpu_s_per_s", "steady_events_per_s"):
        v = r.get(key)
        rows.append((key, _fmt(v), "(reported)", ""))
    width = [max(len(str(row[i])) for row in rows) for i in range(4)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, width)).rstrip()
                     for row in rows)


def _check_args(args: Any) -> None:
    if args.users < 10:
        raise ConfigError(f"--users must be >= 10 (the memory slope needs N/10 >= 1), got "
                          f"{args.users}")
    if args.items < 2:
        raise ConfigError(f"--items must be >= 2, got {args.items}")
    if args.dim < 2:
        raise ConfigError(f"--dim must be >= 2, got {args.dim}")
    if not args.no_recovery and args.dim != 384:
        raise ConfigError("the recovery run uses the worker's hashing encoder, which is 384-d: "
                          "use --dim 384 or --no-recovery")
    ScaleData(args.seed, args.dim, args.items, args.users, args.events_per_user)


def bench_scale(args: Any) -> int:
    _check_args(args)
    if args.resume is not None:
        if not Path(args.resume).is_dir():
            raise ConfigError(f"--resume {args.resume}: not a folder of an earlier run")
        workdir = Path(args.resume)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="profiles-bench-scale-"))
    n = args.users
    small = max(1, n // 10)
    ref = RATE_REF_USERS if n > RATE_REF_USERS and small != RATE_REF_USERS else None
    rate_events = min(20_000, 10 * n)
    _say(f"bench scale: {n} users x {args.events_per_user} events, {args.items} items, dim "
         f"{args.dim}; work folder {workdir}")
    runs: dict[str, dict[str, Any]] = {}
    base = _settings(workdir, "base", **BASE)
    rate = ["--rate-events", str(rate_events)]
    runs["base_small"] = _child(base, workdir, "base_small", args, small,
                                [] if ref is not None else rate)
    if ref is not None:
        runs["base_ref"] = _child(base, workdir, "base_ref", args, ref, rate)
    runs["base_large"] = _child(
        base, workdir, "base_large", args, n,
        [*rate, "--steady-s", str(args.steady_seconds), "--recall", "--churn", str(args.churn)])
    runs["all_small"] = _child(_settings(workdir, "all_small"), workdir, "all_small", args,
                               small, ["--breakdown"])
    tag = uuid.uuid4().hex[:10]
    rec = _settings(workdir, "recovery", events_topic=f"scale-events-{tag}",
                    items_topic=f"scale-items-{tag}", dlq_topic=f"scale-events-{tag}.dlq",
                    group_id=f"scale-{tag}")
    recovery = None
    if args.no_recovery:
        runs["all_large"] = _child(rec, workdir, "all_large", args, n, ["--breakdown"])
    else:
        from stream.kafka.broker import bootstrap_or_embedded, free_port

        # the builder writes the state as the worker does: the folder and the Kafka changelog
        bootstrap, broker = bootstrap_or_embedded(args.bootstrap, str(workdir / "broker.log"))
        try:
            rec = rec.replace(bootstrap_servers=bootstrap, http_port=free_port())
            runs["all_large"] = _child(rec, workdir, "all_large", args, n,
                                       ["--builder", "--breakdown"])
            recovery = _recover(args, rec, workdir)
        finally:
            if broker is not None:
                broker.stop()
    r = report(args, runs, recovery)
    if args.json:
        print(json.dumps(r))
    else:
        print(goals_table(r))
        parts = r.get("bytes_per_user_by_part") or {}
        if parts:
            print("bytes per user freed by dropping each part, all features, at N (lower bounds): "
                  + ", ".join(f"{k} {_fmt(v)}" for k, v in parts.items()))
        print(f"users {n} (memory slope between {small} and {n}), items {args.items}, dim "
              f"{args.dim}, {args.events_per_user} events per user; nproc {r['nproc']}, load "
              f"{r['loadavg']}; {r['date']}; details: --json")
    return 0


def _recover(args: Any, s: Settings, workdir: Path) -> dict[str, Any]:
    from stream.bench.scale_recovery import recover

    try:
        data = ScaleData(args.seed, args.dim, args.items, args.users, args.events_per_user)
        # the tail: 5,000 events/s for --steady-seconds while /candidates and /similar are
        # timed on the real worker, then SIGKILL
        tail = max(1, min(int(STEADY_RATE * args.steady_seconds), 10 * args.users))
        return recover(s, data, workdir, tail, args.seed, rate=STEADY_RATE)
    except ProfilesError as exc:  # reported, with the other figures: recovery_s is null
        _say(f"recovery run failed: {exc}")
        return {"recovery_s": None, "error": str(exc)}
