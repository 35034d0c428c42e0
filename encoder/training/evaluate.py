"""Next-item retrieval on a time split: popularity vs profiles from an encoder's item vectors.

Every method scores the full catalogue for each case (a held-out item event); items the user
touched before the case are excluded (except the target), ties are broken by catalogue order,
and the target's rank gives Recall@10, Recall@20, NDCG@20 (one relevant item: 1/log2(1+rank))
and MRR (1/rank).  Profiles use the stream's formula (``stream.core.profile.ProfileTable``, the
worker's half-life and event weights): a case's profile is built from every event of the user
before it.  Confidence intervals: paired bootstrap over users (the same resampled users for
every method), 95 % percentile intervals of micro-averaged metrics and of their differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from encoder.training.logdata import LogData, Split
from stream.core.profile import ProfileParams, ProfileTable

METRICS = ("recall@10", "recall@20", "ndcg@20", "mrr")


@dataclass
class Cases:
    """Held-out item events: the target catalogue row, the user's index, the history rows."""

    targets: np.ndarray  # int64 [n]
    user_idx: np.ndarray  # int64 [n]
    history: list[np.ndarray]  # item rows seen before each case
    profiles: np.ndarray | None = None  # float32 [n, dim]


def _bounds(log: LogData, sp: Split, part: str, u) -> tuple[int, int]:
    if part == "val":
        return sp.val_start[u.user], sp.test_start[u.user]
    if part == "test":
        return sp.test_start[u.user], len(u.ids)
    raise ValueError(f"part must be val or test, got {part!r}")


def build_cases(log: LogData, sp: Split, part: str, vectors: np.ndarray | None,
                params: ProfileParams) -> Cases:
    """Cases of ``part``; with ``vectors`` (a row per text-table row) also their profiles."""
    dim = vectors.shape[1] if vectors is not None else 1
    table = ProfileTable(dim, params, capacity=len(log.users))
    targets, users, hist, profs = [], [], [], []
    for ui, u in enumerate(log.users):
        a, b = _bounds(log, sp, part, u)
        if a >= b:
            continue
        w = params.weight_array(u.types)
        if vectors is not None and a > 0:
            table.apply([u.user] * a, u.ts[:a], w[:a], vectors[u.rows[:a]])
        for j in range(a, b):
            if u.is_item[j]:
                targets.append(int(u.rows[j]))
                users.append(ui)
                hist.append(u.rows[:j][u.is_item[:j]])
                if vectors is not None:
                    v = table.vector(u.user)
                    profs.append(v if v is not None else np.zeros(dim, np.float32))
            if vectors is not None:
                table.apply([u.user], u.ts[j : j + 1], w[j : j + 1], vectors[u.rows[j : j + 1]])
    return Cases(np.array(targets, dtype=np.int64), np.array(users, dtype=np.int64), hist,
                 np.array(profs, dtype=np.float32).reshape(len(profs), dim) if vectors is not None else None)


def ranks(scores: np.ndarray, cases: Cases, chunk: int = 2048) -> np.ndarray:
    """1-based rank of each case's target; ``scores`` is [n_cases, n_items] or [n_items]."""
    n = len(cases.targets)
    out = np.empty(n, dtype=np.int64)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        sc = np.array(np.broadcast_to(scores if scores.ndim == 1 else scores[s:e],
                                      (e - s, scores.shape[-1])), dtype=np.float64)
        tgt = cases.targets[s:e]
        for r, h in enumerate(cases.history[s:e]):
            h = h[h != tgt[r]]
            sc[r, h] = -np.inf
        st = sc[np.arange(e - s), tgt][:, None]
        idx = np.arange(sc.shape[1])[None, :]
        out[s:e] = 1 + (sc > st).sum(1) + ((sc == st) & (idx < tgt[:, None])).sum(1)
    return out


def metrics_from_ranks(rk: np.ndarray) -> dict[str, np.ndarray]:
    """Per-case metric values."""
    rk = rk.astype(np.float64)
    return {"recall@10": (rk <= 10).astype(np.float64), "recall@20": (rk <= 20).astype(np.float64),
            "ndcg@20": np.where(rk <= 20, 1.0 / np.log2(rk + 1.0), 0.0), "mrr": 1.0 / rk}


def profile_scores(cases: Cases, item_vectors: np.ndarray) -> np.ndarray:
    return cases.profiles @ item_vectors.T


def popularity(log: LogData, sp: Split, upto: str) -> np.ndarray:
    """Item event counts of train (upto="train") or train + validation (upto="val")."""
    counts = np.zeros(log.n_items, dtype=np.float64)
    for u in log.users:
        end = sp.val_start[u.user] if upto == "train" else sp.test_start[u.user]
        rows = u.rows[:end][u.is_item[:end]]
        np.add.at(counts, rows, 1.0)
    return counts


def bootstrap(per_case: dict[str, dict[str, np.ndarray]], user_idx: np.ndarray, n_boot: int = 1000,
              seed: int = 0, pairs: list[tuple[str, str]] | None = None) -> dict:
    """Means and 95 % CIs per method and of paired differences (users resampled together)."""
    users, inv = np.unique(user_idx, return_inverse=True)
    n_users = len(users)
    counts = np.bincount(inv, minlength=n_users).astype(np.float64)
    sums = {m: {k: np.bincount(inv, weights=v, minlength=n_users) for k, v in d.items()}
            for m, d in per_case.items()}
    rng = np.random.default_rng(seed)
    # Resample users with replacement: weight of each user = how often it was drawn.
    draws = np.stack([np.bincount(rng.integers(0, n_users, n_users), minlength=n_users)
                      for _ in range(n_boot)]).astype(np.float64)  # [B, U]
    denom = draws @ counts
    boot = {m: {k: (draws @ s) / denom for k, s in d.items()} for m, d in sums.items()}

    def ci(x: np.ndarray) -> list[float]:
        return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))]

    out: dict = {"cases": int(counts.sum()), "users": n_users, "bootstrap": n_boot, "methods": {},
                 "differences": {}}
    for m, d in sums.items():
        out["methods"][m] = {k: {"mean": float(s.sum() / counts.sum()), "ci95": ci(boot[m][k])}
                             for k, s in d.items()}
    for a, b in pairs or []:
        out["differences"][f"{a} - {b}"] = {
            k: {"mean": out["methods"][a][k]["mean"] - out["methods"][b][k]["mean"],
                "ci95": ci(boot[a][k] - boot[b][k]),
                "excludes_0": bool(np.percentile(boot[a][k] - boot[b][k], 2.5) > 0
                                   or np.percentile(boot[a][k] - boot[b][k], 97.5) < 0)}
            for k in sums[a]}
    return out


def val_recall(log: LogData, sp: Split, vectors: np.ndarray, params: ProfileParams, k: int = 20) -> float:
    """Recall@k on the validation split (early stopping)."""
    cases = build_cases(log, sp, "val", vectors, params)
    if len(cases.targets) == 0:
        raise ValueError("no validation item events: the log is too small to fine-tune on")
    rk = ranks(profile_scores(cases, vectors[: log.n_items]), cases)
    return float((rk <= k).mean())


def evaluate(log: LogData, sp: Split, methods: dict[str, np.ndarray | None], params: ProfileParams,
             n_boot: int = 1000, seed: int = 0) -> dict:
    """``methods``: name -> text-table vectors (None = popularity). Returns the bootstrap dict."""
    base = build_cases(log, sp, "test", None, params)
    per_case = {}
    for name, vec in methods.items():
        if vec is None:
            rk = ranks(popularity(log, sp, "val"), base)
        else:
            cases = build_cases(log, sp, "test", vec, params)
            rk = ranks(profile_scores(cases, vec[: log.n_items]), cases)
        per_case[name] = metrics_from_ranks(rk)
    names = list(methods)
    # Later methods minus earlier ones, newest first: fine-tuned - untuned, ... - popularity.
    pairs = [(names[i], names[j]) for i in range(len(names) - 1, 0, -1) for j in range(i - 1, -1, -1)]
    return bootstrap(per_case, base.user_idx, n_boot, seed, pairs)


def format_table(res: dict) -> str:
    head = f"{'method':<26}" + "".join(f"{m:>27}" for m in METRICS)
    lines = [f"test cases {res['cases']} from {res['users']} users; 95 % CI: paired bootstrap over "
             f"users, {res['bootstrap']} resamples", head, "-" * len(head)]

    def row(name: str, d: dict, signed: bool = False) -> str:
        fmt = "{:+.4f}" if signed else "{:.4f}"
        cells = "".join(f"{(fmt.format(d[m]['mean']) + ' [' + fmt.format(d[m]['ci95'][0]) + ', ' + fmt.format(d[m]['ci95'][1]) + ']'):>27}"
                        for m in METRICS)
        return f"{name:<26}{cells}"

    for name, d in res["methods"].items():
        lines.append(row(name, d))
    for name, d in res["differences"].items():
        lines.append(row("Δ " + name, d, signed=True))
    return "\n".join(lines)


def run_eval(args: Any, params: ProfileParams) -> int:
    """``profiles encoder eval``: popularity, untuned and (with --model) fine-tuned profiles,
    with the worker's profile parameters (``Settings.profile_params()``)."""
    import json
    import sys
    import time

    from encoder import TransformerEncoder, load_encoder
    from encoder.training.logdata import load_log

    t0 = time.monotonic()
    log = load_log(args.events, args.items)
    val_frac = test_frac = 0.1
    ft = None
    note = None
    if args.model is not None:
        ft = load_encoder(str(args.model), device=args.device)
        td = (getattr(ft, "metadata", None) or {}).get("training_data", {})
        split = td.get("split", {})
        val_frac, test_frac = split.get("val_frac", val_frac), split.get("test_frac", test_frac)
        if td.get("fingerprint") != log.fingerprint:
            note = (f"warning: {args.model} was trained on other data (fingerprint "
                    f"{str(td.get('fingerprint'))[:12]}…, this log {log.fingerprint[:12]}…); its "
                    "training may have seen these test events")
            print(note, file=sys.stderr)
    sp = log.split(val_frac, test_frac)
    methods: dict[str, np.ndarray | None] = {"popularity": None}
    untuned = TransformerEncoder(None, device=args.device)
    methods["untuned"] = untuned.encode(log.texts)
    fps = {"untuned": untuned.fingerprint}
    if ft is not None:
        methods["fine-tuned"] = ft.encode(log.texts)
        fps["fine-tuned"] = ft.fingerprint
    res = evaluate(log, sp, methods, params, n_boot=args.bootstrap, seed=args.seed)
    res.update(fingerprints=fps, data_fingerprint=log.fingerprint, split=sp.params(),
               half_life_ms=params.half_life_ms, event_weights=dict(params.weights),
               seconds=round(time.monotonic() - t0, 1), warning=note)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(format_table(res))
        print(f"({res['seconds']:.0f}s)")
    return 0
