"""``profiles eval``: every method side by side on one split, with paired-bootstrap CIs.

One *run* is: a visibility (which events exist), validation queries (for the choices each
method makes: ItemKNN neighbours, co-visitation settings, SASRec epochs, hybrid ranker) and test
queries, one streaming replay that scores the test queries with every method.  The main run
uses the whole log; the cold run hides items and users (``stream.eval.data.cold_visibility``).
Reported per case set: every method's expected-rank metrics with 95 % CIs (paired bootstrap
over users, ``encoder.training.evaluate.bootstrap``: the same resampled users for every method),
and the differences ``hybrid - <method>`` (the cold run's case sets also ``<method> -
popularity``).  ``main_run=False`` (``--cold-only``) runs the cold run alone; ``wrappers`` and
``reporters`` let an optional part (``stream.eval.interests_eval``, ``--interests``) probe the
served lists and add a section to the JSON.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from encoder.training.evaluate import bootstrap
from stream.core.profile import ProfileParams
from stream.eval import baselines
from stream.eval.data import (
    TEST,
    ColdParams,
    EvalLog,
    Queries,
    SplitParams,
    Visibility,
    cold_visibility,
    make_queries,
)
from stream.eval.metrics import METRICS, expected_metrics, recall_curve
from stream.eval.replay import Method, Result, StreamState, run_replay

# Method names, in the order of the table.
ORDER = ("popularity", "recent_pop_7d", "recent_pop_30d", "covis", "itemknn", "sasrec",
         "content_untuned", "content_finetuned", "buy_again", "hybrid")
BASE = "hybrid"  # differences are BASE - each other method


@dataclass
class EvalConfig:
    split: SplitParams = field(default_factory=SplitParams)
    cold: ColdParams | None = field(default_factory=ColdParams)
    n_boot: int = 1000
    seed: int = 0
    methods: tuple[str, ...] = ORDER  # which to run (those that cannot run are left out)
    knn_grid: list[baselines.KnnParams] | None = None
    # extra per-run method builders: name -> builder(ctx) -> (Method | None, tuning info)
    extra: dict[str, Callable[[RunContext], tuple[Method | None, dict]]] = field(
        default_factory=dict)
    sasrec: Any = None  # encoder.sasrec.SasrecConfig (None: its defaults)
    sasrec_val_cases: int = 3000  # validation cases for SASRec's early stopping (sampled)
    sasrec_seconds: float | None = 360.0  # SASRec training budget (main run; cold run: half)
    fresh_every: int | None = None  # the hybrid's freshness rule (None: HybridParams default)
    # the hybrid's sequence source (the run's SASRec): off for tests of invariances a learnt
    # model cannot have (its initialisation follows catalogue rows)
    hybrid_sequence: bool = True
    tune_queries: int = 1500  # validation queries (sampled) for the co-visitation settings
    hybrid_val_queries: int | None = 6000  # validation queries (sampled) the ranker learns from
    # hybrid ablations (stream.eval.hybrid_eval.ABLATIONS) of the main and of the cold run
    ablations: tuple[str, ...] = ("hybrid-content",)
    cold_ablations: tuple[str, ...] = ("hybrid-content",)
    # choices made on the main run's validation queries and reused by the cold run (the
    # co-visitation settings, the ranker configuration; never anything from test events)
    memo: dict[str, Any] = field(default_factory=dict)
    # False: the cold run only (``--cold-only``: the short-history / cold-item table without
    # the main run; its choices are then made on the cold run's own validation queries)
    main_run: bool = True
    # the cold run's case sets also report "<method> - <base>" for each of these bases
    cold_bases: tuple[str, ...] = ("popularity",)
    # per-run hooks after the replay: (name, run context, result, test queries) -> extra
    # JSON entries of that run (stream.eval.interests_eval: diversity of the served lists)
    reporters: list[Callable[[str, RunContext, Result, Queries], dict]] = field(
        default_factory=list)
    # per-run wrappers of every built method (a probe that records what the method serves)
    wrappers: list[Callable[[RunContext, Method], Method]] = field(default_factory=list)
    # what the reporters returned, per run: {run name: {section: ...}}
    reports: dict[str, dict] = field(default_factory=dict)


@dataclass
class RunContext:
    """What a method builder may use: the log, the visibility, the validation queries."""

    name: str  # "main" or "cold"
    ev: EvalLog
    vis: Visibility
    val: Queries
    vectors: dict[str, np.ndarray]
    params: ProfileParams
    config: EvalConfig
    state_hooks: list[Callable[[StreamState], None]] = field(default_factory=list)
    say: Callable[[str], None] = lambda s: None
    shared: dict[str, Any] = field(default_factory=dict)  # between builders of one run


def _say(quiet: bool) -> Callable[[str], None]:
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


def build_methods(ctx: RunContext) -> tuple[list[Method], dict]:
    """The methods of one run, each tuned on ``ctx.val`` where it has a choice to make."""
    want = set(ctx.config.methods)
    methods: list[Method] = []
    tuning: dict[str, Any] = {}
    if "popularity" in want:
        methods.append(baselines.popularity())
    for d in (7, 30):
        if f"recent_pop_{d}d" in want:
            methods.append(baselines.recent_popularity(d))
    if "itemknn" in want:
        sim, best, curve = baselines.tune_item_knn(ctx.ev, ctx.vis, ctx.val, ctx.config.knn_grid)
        methods.append(baselines.item_knn_method(sim))
        tuning["itemknn"] = {"chosen": best.describe(), "validation": curve}
        ctx.say(f"itemknn: {best.describe()}")
    for vec_name, name in (("untuned", "content_untuned"), ("finetuned", "content_finetuned")):
        if name in want and vec_name in ctx.vectors:
            methods.append(baselines.content(vec_name, name))
    if "buy_again" in want:
        methods.append(baselines.buy_again())
    for name, builder in ctx.config.extra.items():
        if name not in want:
            continue
        m, info = builder(ctx)
        tuning[name] = info
        if m is not None:
            methods.append(m)
            ctx.say(f"{name}: ready")
        else:
            ctx.say(f"{name}: left out ({info.get('left_out', '')})")
    methods.extend(ctx.shared.get("extra_methods", []))  # ablation variants of the hybrid
    rank = {n: i for i, n in enumerate(ORDER)}
    methods.sort(key=lambda m: rank.get(m.name, len(ORDER)))
    return methods, tuning


def run_once(name: str, ev: EvalLog, vis: Visibility, test_masks: dict[str, np.ndarray],
             vectors: dict[str, np.ndarray], params: ProfileParams, config: EvalConfig,
             say: Callable[[str], None]) -> tuple[Result, Queries, dict]:
    """Tune on the validation queries of ``vis``, then replay the test queries."""
    val = make_queries(ev, vis, {"val": vis.tunable})
    test = make_queries(ev, vis, test_masks)
    say(f"queries: validation {len(val)}, test {len(test)}")
    ctx = RunContext(name, ev, vis, val, vectors, params, config, say=say)
    methods, tuning = build_methods(ctx)
    for wrap in config.wrappers:
        methods = [wrap(ctx, m) for m in methods]
    state = StreamState(ev, vis, profiles=vectors, profile_params=params)
    for hook in ctx.state_hooks:
        hook(state)
    say(f"replaying {len(test)} test queries with {len(methods)} methods")
    res = run_replay(ev, vis, test, state, methods)
    for report in config.reporters:
        config.reports.setdefault(name, {}).update(report(name, ctx, res, test))
    return res, test, tuning


def _per_case(res: Result, protocol: str, names: list[str],
              keep: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for m in names:
        g, e = res.counts(m, protocol)
        met = expected_metrics(g[keep], e[keep])
        out[m] = {k: met[k] for k in METRICS}
    return out


def summarise(res: Result, q: Queries, protocol: str, keep_query: np.ndarray, n_boot: int,
              seed: int, bases: tuple[str, ...] = ()) -> dict:
    """Metrics (+ CIs, n) of every method on the cases whose query is in ``keep_query``, and
    the differences hybrid - each other method (then each method - each of ``bases``)."""
    names = [m for m in res.g if protocol in res.g[m]]
    qi = res.case_query(protocol)
    keep = keep_query[qi] if len(qi) else np.zeros(0, dtype=bool)
    n = int(keep.sum())
    if n == 0:
        return {"n": 0, "users": 0, "methods": {}, "differences": {}}
    per_case = _per_case(res, protocol, names, keep)
    pairs = [(BASE, m) for m in names if m != BASE] if BASE in names else []
    for base in bases:
        if base in names:
            pairs += [(m, base) for m in names if m not in (base, BASE)
                      and not m.startswith(BASE + "-")]
    b = bootstrap(per_case, q.user[qi[keep]], n_boot=n_boot, seed=seed, pairs=pairs)
    methods: dict[str, dict] = {}
    ablation: dict[str, dict] = {}
    for m in names:
        d = b["methods"][m]
        (ablation if m.startswith(BASE + "-") else methods)[m] = {
            **{k: round(d[k]["mean"], 6) for k in METRICS}, "n": n,
            "ci95": {k: [round(x, 6) for x in d[k]["ci95"]] for k in METRICS}}
    diffs = {}
    for name, d in b["differences"].items():
        diffs[name] = {k: {"mean": round(v["mean"], 6), "ci95": [round(x, 6) for x in v["ci95"]],
                           "excludes_0": v["excludes_0"]} for k, v in d.items()}
    out = {"n": n, "users": b["users"], "methods": methods, "differences": diffs}
    if ablation:
        out["ablation"] = ablation
    return out


def curves(res: Result, q: Queries, protocol: str, keep_query: np.ndarray,
           kmax: int = 50) -> dict[str, list[float]]:
    qi = res.case_query(protocol)
    keep = keep_query[qi] if len(qi) else np.zeros(0, dtype=bool)
    out = {}
    for m in res.g:
        if protocol in res.g[m]:
            g, e = res.counts(m, protocol)
            out[m] = [round(float(x), 6) for x in recall_curve(g[keep], e[keep], kmax)]
    return out


def best_baseline(methods: dict[str, dict]) -> str | None:
    # hybrid variants (hybrid_multi of --interests) are not baselines
    cands = [(d["recall@20"], d["ndcg@20"], m) for m, d in methods.items()
             if not m.startswith(BASE)]
    return max(cands)[2] if cands else None


def evaluate(ev: EvalLog, vectors: dict[str, np.ndarray], params: ProfileParams,
             config: EvalConfig, quiet: bool = True) -> tuple[dict, dict[str, list[float]]]:
    """The whole evaluation: (the ``--json`` object, Recall@1..50 curves of the main run).

    BLAS and OpenMP run single-threaded (``single_threaded``): the replay multiplies one
    profile at a time, where threads only add overhead (5x slower on the 2-core dev box)."""
    with single_threaded():
        return _evaluate(ev, vectors, params, config, quiet)


def single_threaded() -> Any:
    """threadpoolctl's limit of 1 thread for every BLAS / OpenMP library, after loading the
    libraries the evaluation uses: a limit only reaches the libraries loaded when it is set
    (scipy's OpenBLAS, loaded later by scikit-learn, kept 2 spinning threads and made the
    first ranker fits 20-50x slower on the loaded 2-core box)."""
    import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS)
    import sklearn.ensemble  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _evaluate(ev: EvalLog, vectors: dict[str, np.ndarray], params: ProfileParams,
              config: EvalConfig, quiet: bool) -> tuple[dict, dict[str, list[float]]]:
    say = _say(quiet)
    t0 = time.monotonic()
    vis = Visibility.full(ev)
    if config.main_run:
        res, test, tuning = run_once("main", ev, vis, {"test": ev.part == TEST}, vectors,
                                     params, config, say)
    else:  # --cold-only: an empty main run (no test query), the cold run below
        test = make_queries(ev, vis, {})
        res, tuning = run_replay(ev, vis, test, StreamState(ev, vis), []), {}
    everything = np.ones(len(test), dtype=bool)
    main_new = summarise(res, test, "new", everything, config.n_boot, config.seed)
    out: dict[str, Any] = {
        "protocol": {
            "split": ev.split.describe(),
            "ties": "unordered",
            "state": "streaming: a query at ts t is scored from every event with ts < t (all "
                     "users); history = the user's events with ts < t; batch models (itemknn, "
                     "sasrec) train on the training part only; choices are made on validation",
            "metrics": "expected rank: ties in score count at their expected position (recall "
                       "= P(rank <= K) under a random order of the tie group)",
            "new_items": "targets the user never touched before; history excluded (top-level "
                         "methods)",
            "all_items": "every target; nothing excluded (repeats count)",
            "ci": f"95 % paired bootstrap over users, {config.n_boot} resamples, seed "
                  f"{config.seed}",
        },
        "n": main_new["n"],
        "users": main_new["users"],
        "methods": main_new["methods"],
        "differences": main_new["differences"],
        "ablation": main_new.get("ablation", {}),
        "new_session": summarise(res, test, "new", test.new_session, config.n_boot, config.seed),
        "all_items": summarise(res, test, "all", everything, config.n_boot, config.seed),
    }
    plot = curves(res, test, "new", everything)
    if config.cold is not None:
        cvis, masks, info = cold_visibility(ev, config.cold)
        say(f"cold run: {info['items_held_out']} items, {info['users_held_out']} users held out")
        cres, ctest, ctuning = run_once("cold", ev, cvis, masks, vectors, params, config, say)
        cold: dict[str, Any] = {"protocol": info}
        labels = np.array(ctest.label)
        for label in masks:
            cold[label] = summarise(cres, ctest, "new", labels == label, config.n_boot,
                                    config.seed, bases=config.cold_bases)
        out["cold"] = cold
        tuning = {"main": tuning, "cold": ctuning}
    else:
        out["cold"] = {}
        tuning = {"main": tuning}
    out["best_baseline"] = best_baseline(out["methods"])
    out["tuning"] = tuning
    for run_name, sections in config.reports.items():  # e.g. out["interests"]["main"]
        for key, value in sections.items():
            out.setdefault(key, {})[run_name] = value
    if not config.main_run:
        out["protocol"]["main_run"] = "skipped (--cold-only): the cold run's choices are made " \
                                      "on its own validation queries"
    out["data"] = {"events": ev.n_events, "items": ev.n_items, "users": len(ev.users),
                   "fingerprint": ev.fingerprint}
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out, plot


# ------------------------------------------------------------------------------ output

def format_table(res: dict) -> str:
    cols = ("recall@20", "ndcg@20", "recall@10", "mrr")
    lines = []

    def block(title: str, d: dict) -> None:
        if not d.get("methods"):
            lines.append(f"{title}: no cases")
            return
        lines.append(f"{title} (n = {d['n']} cases)")
        d = {**d, "methods": {**d["methods"], **d.get("ablation", {})}}
        head = f"  {'method':<20}" + "".join(f"{c:>26}" for c in cols)
        lines.append(head)
        for m, v in d["methods"].items():
            cells = "".join(f"{v[c]:.4f} [{v['ci95'][c][0]:.4f}, {v['ci95'][c][1]:.4f}]".rjust(26)
                            for c in cols)
            lines.append(f"  {m:<20}{cells}")
        for name, v in d.get("differences", {}).items():
            cells = "".join((f"{v[c]['mean']:+.4f} [{v[c]['ci95'][0]:+.4f}, "
                             f"{v[c]['ci95'][1]:+.4f}]").rjust(26) for c in cols)
            lines.append(f"  {'Δ ' + name:<20}"[:22] + cells)

    block("new items (history excluded)", {"n": res["n"], "methods": {**res["methods"],
                                                                       **res["ablation"]},
                                           "differences": res["differences"]})
    block("new session (> 1 h after the previous event)", res["new_session"])
    block("all items (nothing excluded)", res["all_items"])
    for label, d in res.get("cold", {}).items():
        if label != "protocol":
            block(f"cold: {label}", d)
    for run_name, rep in res.get("interests", {}).items():  # --interests
        lines.append(f"interests ({run_name} run, n = {rep.get('n', 0)} cases): ILD@20 "
                     "(mean pairwise 1 - cos of the served top 20)")
        for m, v in rep.get("methods", {}).items():
            if "ild@20" in v:
                d = v["ild@20"]
                lines.append(f"  {m:<20}{d['mean']:.4f} [{d['ci95'][0]:.4f}, {d['ci95'][1]:.4f}]")
        for name, v in rep.get("differences", {}).items():
            cells = "  ".join(f"{k} {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
                              for k, d in v.items())
            lines.append(f"  Δ {name}: {cells}")
        if "cost_per_event" in rep:
            c = rep["cost_per_event"]
            lines.append(f"  cost per event: interests {c['interests_us']} µs, profile "
                         f"{c['profile_us']} µs")
    lines.append(f"best baseline: {res['best_baseline']}; {res['seconds']:.0f}s")
    return "\n".join(lines)


def plot_curves(plot: dict[str, list[float]], path: str, title: str = "") -> None:
    """Recall@K, K = 1..50, one line per method (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, ys in plot.items():
        ax.plot(range(1, len(ys) + 1), ys, label=name, lw=2.2 if name == BASE else 1.3)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (new items, expected rank)")
    ax.set_title(title or "profiles eval")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------ CLI

def run_cli(args: Any, params: ProfileParams) -> int:
    """``profiles eval``: load, encode the texts once per encoder, evaluate, print."""
    import json

    from encoder import HashingEncoder, TransformerEncoder, load_encoder
    from encoder.training.logdata import load_log
    from stream.eval.data import build_log, read_categories

    say = _say(args.json and not getattr(args, "verbose", False))
    t0 = time.monotonic()
    log = load_log(args.events, args.items)
    ev = build_log(log, read_categories(str(args.items), log.item_ids), SplitParams())
    say(f"log: {ev.n_events} events, {len(ev.users)} users, {ev.n_items} items")
    vectors: dict[str, np.ndarray] = {}
    fingerprints: dict[str, str] = {}
    warning = None
    if args.encoder == "hashing":
        enc: Any = HashingEncoder()
    else:
        enc = TransformerEncoder(None, device=args.device)
    vectors["untuned"] = enc.encode(ev.texts)
    fingerprints["content_untuned"] = enc.fingerprint
    if args.model is not None:
        ft = load_encoder(str(args.model), device=args.device)
        vectors["finetuned"] = ft.encode(ev.texts)
        fingerprints["content_finetuned"] = ft.fingerprint
        td = (getattr(ft, "metadata", None) or {}).get("training_data", {})
        if td.get("fingerprint") != ev.fingerprint:
            warning = (f"{args.model} was trained on other data (fingerprint "
                       f"{str(td.get('fingerprint'))[:12]}…, this log {ev.fingerprint[:12]}…): its "
                       "training may have seen these test events")
            print(f"warning: {warning}", file=sys.stderr)
    say(f"encoded {len(ev.texts)} texts with {len(vectors)} encoder(s)")
    methods = ORDER if not args.methods else tuple(m.strip() for m in args.methods.split(","))
    config = EvalConfig(n_boot=args.bootstrap, seed=args.seed, methods=methods,
                        cold=None if args.no_cold else ColdParams(seed=args.seed),
                        sasrec_seconds=getattr(args, "sasrec_seconds", 360.0),
                        fresh_every=getattr(args, "fresh_every", None),
                        hybrid_sequence=not getattr(args, "no_sequence", False),
                        main_run=not getattr(args, "cold_only", False))
    if getattr(args, "interests", False):  # issue 13: single vector vs multi-interest
        from stream.eval import interests_eval

        interests_eval.configure(config, params, getattr(args, "interests_k", None),
                                 getattr(args, "interests_threshold", None))
    if getattr(args, "ablation", False):
        from stream.eval.hybrid_eval import ABLATIONS

        config.ablations = tuple(ABLATIONS)
    from stream.eval import hybrid_eval

    config.extra = {**hybrid_eval.builders(), **config.extra}  # the hybrid's first
    out, plot = evaluate(ev, vectors, params, config,
                         quiet=args.json and not getattr(args, "verbose", False))
    out["encoders"] = fingerprints
    out["profile"] = {"half_life_ms": params.half_life_ms, "event_weights": dict(params.weights)}
    out["warning"] = warning
    out["seconds"] = round(time.monotonic() - t0, 1)
    if args.plot is not None:
        plot_curves(plot, str(args.plot), title=f"{Path(args.events).name}: Recall@K, new items")
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(format_table(out))
    return 0
