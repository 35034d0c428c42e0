"""profiles: real-time user profiles from Kafka events (faust, a transformer encoder, FAISS).

Bad arguments and expected failures print one line (``profiles: error: ...``) and exit 2
(usage) or 1 (runtime); no tracebacks.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from stream.errors import ConfigError, ProfilesError
from stream.settings import Settings

# Settings that the worker-facing commands expose as flags (all fields are also env vars).
_FLAG_FIELDS = [f.name for f in fields(Settings)]


def _add_settings_flags(p: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    group = p.add_argument_group("settings (flag, or the environment variable shown)")
    for f in fields(Settings):
        if names is not None and f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        group.add_argument(flag, dest=f.name, type=kind if kind in (int, float) else str, default=None,
                           metavar=kind.__name__.upper(),
                           help=f"{f.metadata.get('help', '')} [env {Settings.env_name(f.name)}, "
                                f"default {f.default!r}]")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    return Settings.from_env(**overrides)


def _positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return v
    return parse


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    return _positive(float)(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="profiles", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu) on loopback")
    p.add_argument("--port", type=int, default=9092, help="port (0 = any free port)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("worker", help="run the faust worker (profiles, index, bandit, HTTP)")
    _add_settings_flags(p)
    p.set_defaults(func=cmd_worker)

    items = sub.add_parser("items", help="item catalogue commands")
    isub = items.add_subparsers(dest="items_command", required=True, metavar="ACTION")
    p = isub.add_parser("load", help="publish an item catalogue (JSONL) to the items topic")
    p.add_argument("file", type=Path)
    p.add_argument("--no-progress", action="store_true")
    _add_settings_flags(p, ["bootstrap_servers", "items_topic"])
    p.set_defaults(func=cmd_items_load)

    p = sub.add_parser("replay", help="publish an event log (JSONL or CSV) to the events topic")
    p.add_argument("file", type=Path)
    p.add_argument("--speed", type=_speed, default=None, help="N x event time, or 'max' (default)")
    p.add_argument("--rate", type=_positive(float), default=None, help="fixed events per second")
    p.add_argument("--limit", type=_positive(int), default=None, help="stop after N events")
    p.add_argument("--no-progress", action="store_true")
    _add_settings_flags(p, ["bootstrap_servers", "events_topic"])
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("generate", help="write a seeded synthetic catalogue, event log and true interests")
    p.add_argument("--users", type=_positive(int), default=1000)
    p.add_argument("--items", type=_positive(int), default=500)
    p.add_argument("--events", type=_positive(int), default=20000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="broker + worker + generated data + HTTP, all on this machine")
    p.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    p.add_argument("--once", action="store_true", help="exit when every event has a final outcome")
    p.add_argument("--users", type=_positive(int), default=1000)
    p.add_argument("--items", type=_positive(int), default=500)
    p.add_argument("--events", type=_positive(int), default=20000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--port", type=int, default=8080, help="HTTP port of the worker")
    p.add_argument("--workdir", type=Path, default=None, help="data + state folder (default: temp)")
    p.add_argument("--timeout", type=_positive(float), default=900.0, help="seconds --once may take")
    p.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    p = bsub.add_parser("pipeline", help="raw aiokafka vs faust vs our worker vs the pure core")
    p.add_argument("--events", type=_positive(int), default=200_000)
    p.add_argument("--users", type=_positive(int), default=20_000)
    p.add_argument("--items", type=_positive(int), default=2_000)
    p.add_argument("--bootstrap", default=None)
    p.add_argument("--latency-seconds", type=_positive(float), default=20.0)
    p.set_defaults(func=cmd_bench_pipeline)

    dlq = sub.add_parser("dlq", help="dead-letter topic commands")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    p = dsub.add_parser("replay", help="re-publish dead-lettered events to the events topic")
    p.add_argument("--reason", action="append", default=None, help="only these reasons (repeatable)")
    p.add_argument("--dry-run", action="store_true")
    _add_settings_flags(p, ["bootstrap_servers", "events_topic", "dlq_topic"])
    p.set_defaults(func=cmd_dlq_replay)
    return parser


# ---------------------------------------------------------------------------- commands
def cmd_broker(args) -> int:
    import signal
    import time

    from stream.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port).start()
    print(f"bootstrap: {broker.bootstrap}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while broker.proc.poll() is None:
            time.sleep(0.5)
        raise ProfilesError(f"broker exited with code {broker.proc.returncode}")
    finally:
        broker.stop()


def cmd_worker(args) -> int:
    from stream.app import run_worker

    run_worker(_settings(args))
    return 0


def cmd_items_load(args) -> int:
    from stream.replay import create_topics, load_items

    s = _settings(args)
    _need_file(args.file)
    create_topics(s.bootstrap_servers, {s.items_topic: 1})
    summary = load_items(args.file, bootstrap=s.bootstrap_servers, topic=s.items_topic,
                         progress=not args.no_progress)
    print(f"items: sent {summary.sent}, failed {summary.failed}")
    return 1 if summary.failed else 0


def cmd_replay(args) -> int:
    from stream.replay import create_topics, replay

    s = _settings(args)
    _need_file(args.file)
    if args.speed is not None and args.rate is not None:
        raise ConfigError("--speed and --rate are mutually exclusive")
    create_topics(s.bootstrap_servers, {s.events_topic: s.partitions})
    summary = replay(args.file, bootstrap=s.bootstrap_servers, topic=s.events_topic, speed=args.speed,
                     rate=args.rate, limit=args.limit, progress=not args.no_progress)
    print(f"events: sent {summary.sent}, failed {summary.failed}, {summary.seconds:.1f}s"
          + (f", errors {summary.errors}" if summary.errors else ""))
    return 1 if summary.failed else 0


def cmd_generate(args) -> int:
    from stream.generate import generate

    ds = generate(args.users, args.items, args.events, args.seed)
    paths = ds.write(args.out)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def cmd_demo(args) -> int:
    from stream.demo import run_demo

    return run_demo(args)


def cmd_bench_pipeline(args) -> int:
    from stream.bench import bench_pipeline

    return bench_pipeline(args)


def cmd_dlq_replay(args) -> int:
    from stream.dlq import replay_dlq

    s = _settings(args)
    n, skipped = replay_dlq(s, reasons=args.reason, dry_run=args.dry_run)
    print(f"dlq: {'would re-publish' if args.dry_run else 're-published'} {n}, skipped {skipped}")
    return 0


def _need_file(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except ConfigError as exc:
        parser.exit(2, f"profiles: error: {exc}\n")
    except (ProfilesError, FileNotFoundError, ValueError) as exc:
        parser.exit(1, f"profiles: error: {exc}\n")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
