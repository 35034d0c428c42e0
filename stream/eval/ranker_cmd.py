"""``profiles ranker train`` and ``profiles ranker eval`` on a behaviour log (MovieLens).

Train: the hybrid's candidates (``stream.core.hybrid.generate``, co-visitation settings chosen
on validation as in ``profiles eval``) for the *validation* queries of the per-user time split,
label = the candidate is one of the query's targets (new-items protocol); logistic regression
and HistGradientBoosting compared by 2-fold cross-validation over users (Recall@20, with
logloss and AUC beside it); the winner refitted on every validation row and saved as a
self-describing ranker directory (``stream.core.ranker.Ranker.save``: kind, features, what it
was trained on, the validation report, the signal and hybrid settings it expects).

Eval: the same candidates for the *test* queries, scored by the saved ranker: logloss and AUC
over the candidates (number of rows and positives beside them), the Recall@20 / NDCG@20 of the
ranked lists (expected rank; a target that is not a candidate ranks below them), and the same
figures for the untrained default ranker and for co-visitation score alone.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np

from stream.core.hybrid import FEATURES, HybridParams
from stream.core.profile import ProfileParams
from stream.core.ranker import Ranker, default_ranker
from stream.core.signals import SignalParams
from stream.eval.data import TEST, VAL, EvalLog, SplitParams, Visibility, build_log, make_queries
from stream.eval.hybrid_eval import GenSettings, collect, fit_sequence, sample_queries, tune_covis
from stream.eval.rankers import CandidateSet, choose_ranker, logloss_auc, query_recall


def _load(args: Any) -> tuple[EvalLog, dict[str, np.ndarray], dict[str, str]]:
    from encoder import HashingEncoder, TransformerEncoder, load_encoder
    from encoder.training.logdata import load_log
    from stream.eval.data import read_categories

    log = load_log(args.events, args.items)
    ev = build_log(log, read_categories(str(args.items), log.item_ids), SplitParams())
    if args.model is not None:
        enc: Any = load_encoder(str(args.model), device=args.device)
        name = "finetuned"
    elif args.encoder == "hashing":
        enc, name = HashingEncoder(), "untuned"
    else:
        enc, name = TransformerEncoder(None, device=args.device), "untuned"
    return ev, {name: enc.encode(ev.texts)}, {name: enc.fingerprint}


def _say(quiet: bool):
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


def run_train(args: Any, params: ProfileParams) -> int:
    from stream.eval.run import single_threaded

    say = _say(False)
    t0 = time.monotonic()
    with single_threaded():
        ev, vectors, fps = _load(args)
        vis = Visibility.full(ev)
        val = make_queries(ev, vis, {"val": ev.part == VAL})
        sp, hp, curve = tune_covis(ev, vis, val, params, seed=args.seed, say=say)
        sequence: Any = None
        seq_info: dict[str, Any] = {}
        if args.sequence_seconds > 0:  # the sequence source: SASRec on the training part
            from encoder.sequence import SequenceModel

            model, seq_info = fit_sequence(ev, vis, val, args.seed, args.sequence_seconds,
                                           say=say)
            if model is not None:
                sequence = SequenceModel(model, ev.item_ids[: ev.n_items], meta={
                    "best_epoch": model.best_epoch,
                    "best_val_recall@20": model.best_val_recall,
                    "trained_on": {"events": str(args.events), "fingerprint": ev.fingerprint,
                                   "part": "training part of the per-user time split"},
                    "training": seq_info})
        gs = GenSettings(sp, hp, next(iter(vectors)), sequence)
        q = sample_queries(val, args.max_queries, args.seed)
        cs = collect(ev, vis, q, vectors, params, gs, {"new": ["hybrid"]})[("new", "hybrid")]
        say(f"validation candidates: {len(cs.y)} rows, {int(cs.y.sum())} positives, "
            f"{cs.n_queries} queries")
        kinds = ("linear", "trees") if args.kind == "auto" else (args.kind,)
        choice = choose_ranker(cs, kinds=kinds, seed=args.seed)
    for r in choice.report:
        say(f"{r['kind']} {r['setting']}: val Recall@20 {r['val_recall@20']:.4f}, logloss "
            f"{r['val_logloss']:.5f}, AUC {r['val_auc']:.4f}")
    meta = choice.ranker.save(
        args.out,
        trained_on={"events": str(args.events), "items": str(args.items),
                    "fingerprint": ev.fingerprint, "part": "validation queries of the per-user "
                    "time split (new-items protocol)", "split": ev.split.describe(),
                    "queries": cs.n_queries, "rows": int(len(cs.y)),
                    "positives": int(cs.y.sum()), "encoder": fps},
        metrics={"validation": choice.report,
                 "chosen": {"kind": choice.kind, "setting": choice.setting}},
        signals=_plain(sp), hybrid=_plain(hp), covis_validation=curve,
        profile={"half_life_ms": params.half_life_ms, "event_weights": dict(params.weights)},
        sequence=None if sequence is None else {"best_epoch": seq_info.get("best_epoch"),
                                                 "files": ["sequence.json", "sequence.npz"]},
        attach=None if sequence is None else sequence.save_into,
        seconds=round(time.monotonic() - t0, 1))
    print(f"ranker: {args.out} ({meta['kind']}, {len(meta['features'])} features); chosen "
          f"{choice.kind} {choice.setting} by validation Recall@20 "
          f"(see {args.out}/ranker.json for logloss/AUC of every candidate model)")
    return 0


def _plain(obj: Any) -> dict:
    from dataclasses import asdict

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(obj).items()}


def _settings_from(meta: dict) -> tuple[SignalParams, HybridParams]:
    s = dict(meta.get("signals") or {})
    h = dict(meta.get("hybrid") or {})
    if "sources" in h:
        h["sources"] = tuple(h["sources"])
    return SignalParams(**s), HybridParams(**h)


def figures(cs: CandidateSet, p: np.ndarray, probabilities: bool = True) -> dict[str, Any]:
    ll, auc = logloss_auc(cs.y, p)
    rec = query_recall(cs, p)
    return {"logloss": round(ll, 6) if probabilities else None, "auc": round(auc, 6),
            "recall@20": round(float(rec.mean()), 6)}


def run_eval(args: Any, params: ProfileParams) -> int:
    from stream.eval.run import single_threaded

    say = _say(args.json)
    ranker = Ranker.load(args.ranker)
    sp, hp = _settings_from(ranker.meta)
    sequence = None
    if ranker.meta.get("sequence"):
        from encoder.sequence import SequenceModel

        sequence = SequenceModel.load(args.ranker)
    with single_threaded():
        ev, vectors, _ = _load(args)
        trained = (ranker.meta.get("trained_on") or {}).get("fingerprint")
        if trained is not None and trained != ev.fingerprint:
            print(f"warning: {args.ranker} was trained on other data; its validation queries "
                  "may overlap these test queries", file=sys.stderr)
        vis = Visibility.full(ev)
        test = make_queries(ev, vis, {"test": ev.part == TEST})
        gs = GenSettings(sp, hp, next(iter(vectors)), sequence)
        cs = collect(ev, vis, test, vectors, params, gs, {"new": ["hybrid"]})[("new", "hybrid")]
        say(f"test candidates: {len(cs.y)} rows, {int(cs.y.sum())} positives")
    out: dict[str, Any] = {
        "ranker": str(args.ranker), "kind": ranker.kind,
        "test": {"queries": cs.n_queries, "rows": int(len(cs.y)), "positives": int(cs.y.sum()),
                 "targets": int(cs.n_targets.sum())},
        "ranker_metrics": figures(cs, ranker.score(cs.x, FEATURES)),
        "default_ranker": figures(cs, default_ranker().score(cs.x, FEATURES)),
        "covis_score_only": figures(cs, cs.x[:, FEATURES.index("covis_score")],
                                    probabilities=False),
    }
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        t = out["test"]
        print(f"test: {t['queries']} queries, {t['rows']} candidates, {t['positives']} positives "
              f"(of {t['targets']} targets)")
        for name in ("ranker_metrics", "default_ranker", "covis_score_only"):
            f = out[name]
            ll = "-" if f["logloss"] is None else f"{f['logloss']:.5f}"
            print(f"  {name:<18} logloss {ll:>8}  AUC {f['auc']:.4f}  "
                  f"Recall@20 {f['recall@20']:.4f}")
    return 0
