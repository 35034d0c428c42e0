"""profiles: real-time user profiles from Kafka events (faust, a transformer encoder, FAISS).

Bad arguments and expected failures print one line (``profiles: error: ...``) and exit 2
(usage) or 1 (runtime); no tracebacks.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields
from pathlib import Path

from stream.core.errors import ConfigError, ProfilesError
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


def _positive(kind, allow_zero: bool = False):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {'>=' if allow_zero else '>'} 0, got "
                                             f"{text!r}")
        return v
    return parse


def _non_negative(kind):
    return _positive(kind, allow_zero=True)


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a float, got {text!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return v


def _process_list(text: str) -> list[int]:
    """``1,2,4``: worker process counts, each in 1..1024, at least one."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or not all(1 <= n <= 1024 for n in out):
        raise argparse.ArgumentTypeError(f"each must be in 1..1024, got {text!r}")
    return out


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
    p.add_argument("--repeat-frac", type=_fraction, default=0.0,
                   help="repeat-purchase mode: this share of the events are purchases of each "
                        "user's staple items, bought again every few days (default 0: off); "
                        "needs repeat-frac x events >= 2 x users x staples")
    p.add_argument("--staples", type=_positive(int), default=3,
                   help="staple items per user in repeat-purchase mode")
    p.add_argument("--staple-days", type=_positive(float), default=4.0,
                   help="mean days between two purchases of a staple (each item's own period "
                        "is log-normal around it)")
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
    p.add_argument("--rate", type=float, default=2000.0,
                   help="events/s of the replay, so latency is that of a live stream (0: as fast "
                        "as possible, a backlog)")
    p.add_argument("--runs", type=_positive(int), default=1,
                   help="with --once: the whole demo N times in a row (a fresh broker, worker "
                        "and state each), then one JSON summary: each run's, and the min / "
                        "median / max of their quantiles")
    p.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    p = bsub.add_parser("pipeline", help="raw aiokafka vs faust vs our worker vs the pure core")
    p.add_argument("--events", type=_positive(int), default=200_000)
    p.add_argument("--users", type=_positive(int), default=20_000)
    p.add_argument("--items", type=_positive(int), default=2_000)
    p.add_argument("--bootstrap", default=None)
    p.add_argument("--latency-seconds", type=_positive(float), default=20.0)
    p.add_argument("--latency-runs", type=_positive(int), default=1,
                   help="run each latency configuration this many times (alternating, a fresh "
                        "worker and topic each) and print the min / median / max of their "
                        "p50 / p99 and how many met the target")
    p.add_argument("--processes", type=_process_list, default=[1, 2],
                   help="`profiles worker --processes N` runs to drain the same backlog, next to "
                        "the plain worker P: comma-separated N (default 1,2)")
    p.set_defaults(func=cmd_bench_pipeline)

    p = bsub.add_parser("encoder", help="encoder sentences/s and FLOP/s by batch size, dtype, length")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-sizes", default="1,4,16,64,256,1024", help="comma-separated")
    p.add_argument("--tokens", default="32,128", help="comma-separated sequence lengths")
    p.add_argument("--dtypes", default=None, help="fp32,bf16 (default: fp32,bf16 on CUDA and on CPUs with "
                        "avx512_bf16/amx_bf16, else fp32)")
    p.add_argument("--seconds", type=_positive(float), default=1.0, help="time per measurement")
    p.add_argument("--peak-tflops", type=_positive(float), default=None,
                   help="device peak TFLOP/s for the dtype (default: known GPU table / CPU estimate)")
    p.add_argument("--compile", action="store_true", help="also torch.compile the model")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: torch's default; the worker runs PROFILES_ENCODER_THREADS)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.set_defaults(func=cmd_bench_encoder)
    _add_bench_scale(bsub)

    encp = sub.add_parser("encoder", help="fine-tune and evaluate the encoder on a behaviour log")
    esub = encp.add_subparsers(dest="encoder_command", required=True, metavar="ACTION")
    p = esub.add_parser("finetune", help="contrastive fine-tuning on (profile so far -> next item)")
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--items", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--base", default=None, help="base model folder (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--epochs", type=_positive(int), default=1)
    p.add_argument("--batch-size", type=_positive(int), default=128)
    p.add_argument("--lr", type=_positive(float), default=5e-5)
    p.add_argument("--max-steps", type=_positive(int), default=None, help="step budget")
    p.add_argument("--eval-every", type=_positive(int), default=25, help="steps between validations")
    p.add_argument("--patience", type=_positive(int), default=4, help="validations without gain")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--logq", action=argparse.BooleanOptionalAction, default=None,
                   help="correct in-batch negatives by log of the streaming item frequency "
                        "(Yi et al. 2019); recorded in the model metadata (default: "
                        "FinetuneConfig.logq, chosen by measurement, README)")
    p.add_argument("--no-progress", action="store_true")
    _add_settings_flags(p, ["half_life_ms", "event_weights"])
    p.set_defaults(func=cmd_encoder_finetune)
    p = esub.add_parser("eval", help="next-item retrieval on the test split: popularity / untuned / fine-tuned")
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--items", type=Path, required=True)
    p.add_argument("--model", type=Path, default=None, help="fine-tuned model directory")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--bootstrap", type=_positive(int), default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    _add_settings_flags(p, ["half_life_ms", "event_weights"])
    p.set_defaults(func=cmd_encoder_eval)

    p = sub.add_parser("rebuild", help="recompute all profiles with another encoder into "
                                       "<state-dir>-<model>; --swap points the state dir at it")
    p.add_argument("--swap", action="store_true",
                   help="atomically point the state dir (a symlink) at the rebuilt state")
    _add_settings_flags(p)
    p.set_defaults(func=cmd_rebuild)

    dlq = sub.add_parser("dlq", help="dead-letter topic commands")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    p = dsub.add_parser("replay", help="re-publish dead-lettered events to the events topic")
    p.add_argument("--reason", action="append", default=None, help="only these reasons (repeatable)")
    p.add_argument("--dry-run", action="store_true")
    _add_settings_flags(p, ["bootstrap_servers", "events_topic", "dlq_topic"])
    p.set_defaults(func=cmd_dlq_replay)
    _add_bandit_commands(sub)
    _add_movielens(sub)
    _add_ranker_eval_obd(sub)
    _add_eval(sub)
    _add_ranker_train_eval(sub)
    _add_search_eval(sub)
    return parser


def _add_search_eval(sub) -> None:
    """``profiles eval-search`` (stream/eval/search_eval.py): personalised vs plain search."""
    p = sub.add_parser("eval-search", help="personalised search vs plain query relevance on "
                                           "generated users with known interests")
    p.add_argument("--users", type=_positive(int), default=400)
    p.add_argument("--items", type=_positive(int), default=2000)
    p.add_argument("--events", type=_positive(int), default=20_000)
    p.add_argument("--seed", type=int, default=11, help="data and bootstrap seed")
    p.add_argument("--k", type=_positive(int), default=10, help="results per query")
    p.add_argument("--tolerance", type=_non_negative(float), default=0.01,
                   help="equal relevance: most drop of mean relevance@k (cosine)")
    p.add_argument("--bootstrap", type=_positive(int), default=1000, help="bootstrap resamples")
    p.add_argument("--encoder", choices=["transformer", "hashing"], default="transformer")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (encoding)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_settings_flags(p, ["half_life_ms", "event_weights", "search_blend", "search_pool"])
    p.set_defaults(func=cmd_eval_search)


def cmd_eval_search(args) -> int:
    from stream.eval.search_eval import run_cli

    return run_cli(args, _settings(args))


def _add_eval(sub) -> None:
    """``profiles eval`` (stream/eval/run.py): every method side by side on one split."""
    p = sub.add_parser("eval", help="next-item retrieval: popularity, co-visitation, ItemKNN, "
                                    "SASRec, content profiles and the hybrid, side by side")
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--items", type=Path, required=True)
    p.add_argument("--model", type=Path, default=None, help="fine-tuned encoder directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--plot", type=Path, default=None, help="draw Recall@K, K = 1..50 (PNG)")
    p.add_argument("--bootstrap", type=_positive(int), default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and cold hold-out seed")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of the methods (default: all)")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-start protocols")
    p.add_argument("--cold-only", action="store_true",
                   help="only the cold-start protocols (short histories of 1/3/5 timestamps, "
                        "cold items), with each method's difference against popularity")
    p.add_argument("--interests", action="store_true",
                   help="also single profile vector vs multi-interest at the same K: "
                        "content_single, content_multi, hybrid_multi, with diversity (ILD@20)")
    p.add_argument("--interests-k", type=_positive(int), default=None,
                   help="interests per user for --interests (default: InterestParams)")
    p.add_argument("--interests-threshold", type=float, default=None,
                   help="cosine to join an interest for --interests (default: InterestParams)")
    p.add_argument("--ablation", action="store_true",
                   help="also the hybrid without each source / feature group (default: "
                        "without content only)")
    p.add_argument("--sasrec-seconds", type=_positive(float), default=360.0,
                   help="SASRec's training budget in the main run (the cold run gets half)")
    p.add_argument("--no-sequence", action="store_true",
                   help="the hybrid without its sequence source (the run's SASRec)")
    p.add_argument("--fresh-every", type=_non_negative(int), default=None,
                   help="the hybrid's freshness rule: a fresh item at least every N positions "
                        "(0: off; default: HybridParams.fresh_every)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (encoding)")
    p.add_argument("--encoder", choices=["transformer", "hashing"], default="transformer",
                   help="the untuned encoder: the bundled transformer, or the hashing test fake")
    p.add_argument("--verbose", action="store_true", help="progress on stderr even with --json")
    _add_settings_flags(p, ["half_life_ms", "event_weights"])
    p.set_defaults(func=cmd_eval)


def _add_ranker_train_eval(sub) -> None:
    """``profiles ranker train|eval`` (stream/eval/ranker_cmd.py) on a behaviour log, added to
    the ``ranker`` group (created here if absent)."""
    ranker = sub.choices.get("ranker")
    if ranker is None:
        ranker = sub.add_parser("ranker", help="the CTR ranker: train, evaluate")
        ranker.add_subparsers(dest="ranker_command", required=True, metavar="ACTION")
    rsub = next(a for a in ranker._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("train", "eval"):
        if name == "train":
            p = rsub.add_parser("train", help="fit the ranker on the hybrid's candidates of the "
                                              "validation split; write a ranker directory")
            p.add_argument("--out", type=Path, required=True, help="ranker directory to write")
            p.add_argument("--kind", choices=["auto", "linear", "trees"], default="auto",
                           help="auto: logistic regression vs HistGradientBoosting, by "
                                "validation Recall@20")
            p.add_argument("--max-queries", type=_positive(int), default=3000,
                           help="validation queries (seeded sample) to learn from")
            p.add_argument("--sequence-seconds", type=_non_negative(float), default=300.0,
                           help="training budget of the sequence source's SASRec (early "
                                "stopped on validation); 0: no sequence source")
            p.set_defaults(func=cmd_ranker_train)
        else:
            p = rsub.add_parser("eval", help="logloss, AUC and Recall@20 of a ranker directory "
                                             "on the test split's candidates")
            p.add_argument("--ranker", type=Path, required=True, help="ranker directory")
            p.add_argument("--json", action="store_true", help="print JSON")
            p.set_defaults(func=cmd_ranker_eval)
        p.add_argument("--events", type=Path, required=True)
        p.add_argument("--items", type=Path, required=True)
        p.add_argument("--model", type=Path, default=None,
                       help="fine-tuned encoder directory (default: the bundled encoder)")
        p.add_argument("--encoder", choices=["transformer", "hashing"], default="transformer",
                       help="without --model: the bundled transformer, or the hashing test fake")
        p.add_argument("--device", default="auto", help="auto, cpu or cuda (encoding)")
        p.add_argument("--seed", type=int, default=0)
        _add_settings_flags(p, ["half_life_ms", "event_weights"])


def cmd_ranker_train(args) -> int:
    from stream.eval.ranker_cmd import run_train

    for f in (args.events, args.items):
        _need_file(f)
    return run_train(args, _settings(args).profile_params())


def cmd_ranker_eval(args) -> int:
    from stream.eval.ranker_cmd import run_eval

    for f in (args.events, args.items):
        _need_file(f)
    if not args.ranker.is_dir():
        raise ConfigError(f"no such ranker directory: {args.ranker}")
    return run_eval(args, _settings(args).profile_params())


def cmd_eval(args) -> int:
    from stream.eval.run import run_cli

    for f in (args.events, args.items):
        _need_file(f)
    if args.cold_only and args.no_cold:
        raise ConfigError("--cold-only and --no-cold leave nothing to evaluate")
    if args.interests_threshold is not None and not -1 <= args.interests_threshold <= 1:
        raise ConfigError(f"--interests-threshold must be in [-1, 1], got "
                          f"{args.interests_threshold}")
    return run_cli(args, _settings(args).profile_params())


def _add_ranker_eval_obd(sub) -> None:
    """``profiles ranker eval-obd`` (stream/eval/obd_ctr.py), added to the ``ranker`` group
    (created here if absent)."""
    ranker = sub.choices.get("ranker")
    if ranker is None:
        ranker = sub.add_parser("ranker", help="the CTR ranker: train, evaluate")
        ranker.add_subparsers(dest="ranker_command", required=True, metavar="ACTION")
    rsub = next(a for a in ranker._actions if isinstance(a, argparse._SubParsersAction))
    p = rsub.add_parser("eval-obd", help="click prediction on the Open Bandit Dataset's random "
                                         "campaigns: logloss/AUC of the ranker vs CTR baselines")
    p.add_argument("--data", type=Path, default=None,
                   help="folder of the obp 0.5.7 sdist, downloaded there when absent "
                        "(default: <cache-dir>/obd)")
    p.add_argument("--model-out", type=Path, default=None,
                   help="save the chosen model here as a ranker directory")
    p.add_argument("--bootstrap", type=_positive(int), default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    _add_settings_flags(p, ["cache_dir"])
    p.set_defaults(func=cmd_ranker_eval_obd)


def cmd_ranker_eval_obd(args) -> int:
    import json

    from stream.eval.obd_ctr import EvalConfig, format_table, run

    data = args.data or _settings(args).cache_path() / "obd"
    report = run(data, EvalConfig(n_boot=args.bootstrap, seed=args.seed), args.model_out)
    print(json.dumps(report, indent=1) if args.json else format_table(report))
    return 0


def _add_movielens(sub) -> None:
    """``profiles data movielens``, added to the ``data`` group (created here if absent)."""
    data = sub.choices.get("data")
    if data is None:
        data = sub.add_parser("data", help="real data sets (fetched at run time, never committed)")
        data.add_subparsers(dest="data_command", required=True, metavar="SET")
    dsub = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))
    p = dsub.add_parser("movielens", help="MovieLens-100k (from the recbole 1.2.1 wheel) -> items + events JSONL")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=None,
                   help="where the downloaded wheel is kept (default: <cache-dir>/movielens)")
    _add_settings_flags(p, ["cache_dir"])
    p.set_defaults(func=cmd_data_movielens)


def _add_bandit_commands(sub) -> None:
    """``profiles bandit ope|convert-obd`` and ``profiles data obd`` (stream/data/offpolicy.py,
    stream/data/obd.py)."""
    bandit = sub.add_parser("bandit", help="bandit tools: off-policy evaluation, OBD conversion")
    bsub = bandit.add_subparsers(dest="bandit_command", required=True, metavar="ACTION")
    p = bsub.add_parser("ope", help="off-policy estimates (IPW, SNIPW, DR) of a policy's click rate")
    p.add_argument("--log", type=Path, required=True,
                   help="OBD CSV, our events JSONL (views with propensity + clicks), or "
                        "rows {arm, position, propensity, reward}")
    p.add_argument("--policy", action="append", required=True,
                   help="thompson, ucb1[:c=2], egreedy[:epsilon=0.1] (repeatable)")
    p.add_argument("--train-frac", type=float, default=0.5,
                   help="fit the policy on this first fraction of the log (by time), evaluate on the rest")
    p.add_argument("--n-boot", type=_positive(int), default=1000, help="bootstrap resamples")
    p.add_argument("--level", type=float, default=0.95, help="confidence level")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--prior-alpha", type=_positive(float), default=1.0)
    p.add_argument("--prior-beta", type=_positive(float), default=1.0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_bandit_ope)
    p = bsub.add_parser("convert-obd", help="convert an Open Bandit Dataset CSV to event JSONL")
    p.add_argument("csv", type=Path)
    p.add_argument("--out", type=Path, required=True, help="events JSONL to write")
    p.add_argument("--items", type=Path, default=None,
                   help="item_context.csv (default: next to the CSV, if there)")
    p.add_argument("--items-out", type=Path, default=None)
    p.set_defaults(func=cmd_bandit_convert_obd)

    data = sub.add_parser("data", help="real data sets (fetched at run time, never committed)")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SET")
    p = dsub.add_parser("obd", help="Open Bandit Dataset from the obp 0.5.7 sdist -> events + items JSONL")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--campaign", choices=["random", "bts"], default="random")
    p.add_argument("--population", choices=["all", "men", "women"], default="all")
    p.add_argument("--cache", type=Path, default=None,
                   help="where the downloaded sdist is kept (default: <cache-dir>/obd)")
    _add_settings_flags(p, ["cache_dir"])
    p.set_defaults(func=cmd_data_obd)


def cmd_bandit_ope(args) -> int:
    import json

    from stream.core.policies import parse_policy
    from stream.data.offpolicy import format_report, read_log, run_ope

    _need_file(args.log)
    if not 0 < args.train_frac < 1:
        raise ConfigError(f"--train-frac must be in (0, 1), got {args.train_frac}")
    if not 0 < args.level < 1:
        raise ConfigError(f"--level must be in (0, 1), got {args.level}")
    try:
        policies = [parse_policy(spec) for spec in args.policy]
    except ConfigError as exc:
        raise ConfigError(f"--policy: {exc}") from None
    log = read_log(args.log)
    header, results = run_ope(log, policies, train_frac=args.train_frac,
                              prior=(args.prior_alpha, args.prior_beta), n_boot=args.n_boot,
                              level=args.level, seed=args.seed)
    if args.json:
        print(json.dumps({**header, "policies": [r.as_dict(log.arms) for r in results]}, indent=1))
    else:
        print(format_report(header, results, log.arms, args.level))
    return 0


def cmd_bandit_convert_obd(args) -> int:
    from stream.data.obd import convert_csv

    _need_file(args.csv)
    items = args.items
    if items is None:
        guess = args.csv.with_name("item_context.csv")
        items = guess if guess.is_file() else None
    elif not items.is_file():
        raise ConfigError(f"no such file: {items}")
    s = convert_csv(args.csv, args.out, items, args.items_out)
    print(f"rows {s['rows']}, clicks {s['clicks']} -> {s['events']} events: {s['events_file']}"
          + (f"; {s['items']} items: {s['items_file']}" if "items" in s else ""))
    return 0


def cmd_data_obd(args) -> int:
    from stream.data.obd import prepare_obd

    cache = args.cache or _settings(args).cache_path() / "obd"
    try:
        s = prepare_obd(args.out, cache, args.campaign, args.population)
    except RuntimeError as exc:
        raise ProfilesError(str(exc)) from None
    print(f"OBD {args.campaign}/{args.population}: {s['rows']} impressions, {s['clicks']} clicks")
    print(f"events: {s['events_file']} ({s['events']} events)")
    print(f"items: {s['items_file']} ({s['items']} items)")
    print(f"csv: {s['csv']}")
    return 0


# ---------------------------------------------------------------------------- commands
def cmd_broker(args) -> int:
    import signal
    import time

    from stream.kafka.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port).start()
    proc = broker.proc
    assert proc is not None  # started
    print(f"bootstrap: {broker.bootstrap}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while proc.poll() is None:
            time.sleep(0.5)
        raise ProfilesError(f"broker exited with code {proc.returncode}")
    finally:
        broker.stop()


def cmd_worker(args) -> int:
    from stream.service import run

    # --processes N (PROFILES_PROCESSES; 0: one per core): N supervised worker processes
    return run(_settings(args))  # a corrupt PROFILES_ENCODER_PATH: EncoderError, one line


def cmd_items_load(args) -> int:
    from stream.kafka.clients import create_topics
    from stream.tools.replay import load_items

    s = _settings(args)
    _need_file(args.file)
    create_topics(s, {s.items_topic: 1})
    summary = load_items(args.file, s, progress=not args.no_progress)
    print(f"items: sent {summary.sent}, failed {summary.failed}")
    return 1 if summary.failed else 0


def cmd_replay(args) -> int:
    from stream.kafka.clients import create_topics
    from stream.tools.replay import replay

    s = _settings(args)
    _need_file(args.file)
    if args.speed is not None and args.rate is not None:
        raise ConfigError("--speed and --rate are mutually exclusive")
    create_topics(s, {s.events_topic: s.partitions})
    summary = replay(args.file, s, speed=args.speed, rate=args.rate, limit=args.limit,
                     progress=not args.no_progress)
    print(f"events: sent {summary.sent}, failed {summary.failed}, {summary.seconds:.1f}s"
          + (f", errors {summary.errors}" if summary.errors else ""))
    return 1 if summary.failed else 0


def cmd_generate(args) -> int:
    from stream.data.generate import generate

    ds = generate(args.users, args.items, args.events, args.seed, repeat_frac=args.repeat_frac,
                  staples=args.staples, staple_days=args.staple_days)
    paths = ds.write(args.out)
    for name, path in paths.items():
        print(f"{name}: {path}")
    if ds.staples and ds.events:
        days = (ds.events[-1]["ts"] - ds.events[0]["ts"]) / 86_400_000
        print(f"repeat-purchase mode: {round(args.repeat_frac * args.events)} staple purchases "
              f"over {days:.1f} days")
    return 0


def cmd_demo(args) -> int:
    from stream.tools.demo import run_demo, run_demos

    if args.runs > 1:
        if not args.once:
            raise ConfigError("--runs needs --once (an interactive demo serves until Ctrl-C)")
        return run_demos(args)
    return run_demo(args)


def cmd_bench_pipeline(args) -> int:
    from stream.bench.pipeline import bench_pipeline

    return bench_pipeline(args)


def cmd_bench_encoder(args) -> int:
    from stream.bench.encoder import bench_encoder_cli

    return bench_encoder_cli(args)


def _add_bench_scale(bsub) -> None:
    """``profiles bench scale`` (stream/bench/scale.py): cost per user and speed as users grow."""
    p = bsub.add_parser("scale", help="bytes per user, index recall, recovery and latency at "
                                      "N users and M items (issue 12)")
    p.add_argument("--users", type=_positive(int), required=True)
    p.add_argument("--items", type=_positive(int), required=True)
    p.add_argument("--dim", type=_positive(int), default=384)
    p.add_argument("--events-per-user", type=_positive(int), default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-recovery", action="store_true",
                   help="skip the SIGKILL recovery run on a real broker and worker")
    p.add_argument("--bootstrap", default=None, help="broker (default: an embedded one)")
    p.add_argument("--steady-seconds", type=_positive(float), default=15.0,
                   help="length of the steady 5,000 events/s ingest with probes")
    p.add_argument("--churn", type=_positive(float), default=10.0,
                   help="users-index churn as a multiple of --users")
    p.add_argument("--child-timeout", type=_positive(float), default=3600.0,
                   help="seconds one measuring process may take")
    p.add_argument("--resume", type=Path, default=None, metavar="WORKDIR",
                   help="the work folder of an interrupted run with the same arguments: keep "
                        "the measuring processes it finished, run the rest")
    p.set_defaults(func=cmd_bench_scale)


def cmd_bench_scale(args) -> int:
    from stream.bench.scale import bench_scale

    return bench_scale(args)


def cmd_data_movielens(args) -> int:
    from stream.data.movielens import RATING_TO_TYPE, movielens

    cache = args.cache or _settings(args).cache_path() / "movielens"
    paths = movielens(args.out, cache)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print("ratings -> types: " + ", ".join(f"{r}={t}" for r, t in sorted(RATING_TO_TYPE.items())))
    return 0


def cmd_encoder_finetune(args) -> int:
    from encoder.training.finetune import FinetuneConfig, finetune

    s = _settings(args)
    for f in (args.events, args.items):
        _need_file(f)
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         max_steps=args.max_steps, device=args.device, seed=args.seed,
                         eval_every=args.eval_every, patience=args.patience,
                         half_life_ms=s.half_life_ms, event_weights=s.event_weight_map())
    if args.logq is not None:
        cfg.logq = args.logq
    meta = finetune(args.events, args.items, args.out, cfg, base=args.base,
                    progress=not args.no_progress)
    v = meta["validation"]
    print(f"model: {args.out} (fingerprint {meta['fingerprint']}); val Recall@20 untuned "
          f"{v['untuned']:.4f} -> {v['best']:.4f} at step {v['best_step']}; "
          f"logQ {'on' if meta['logq']['enabled'] else 'off'}; {meta['training']['seconds']:.0f}s")
    return 0


def cmd_encoder_eval(args) -> int:
    from encoder.training.evaluate import run_eval

    s = _settings(args)
    for f in (args.events, args.items):
        _need_file(f)
    return run_eval(args, s.profile_params())


def cmd_rebuild(args) -> int:
    import json

    from stream.tools.rebuild import run_rebuild

    print(json.dumps(run_rebuild(_settings(args), args.swap), indent=2))
    return 0


def cmd_dlq_replay(args) -> int:
    from stream.tools.dlq import replay_dlq

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
